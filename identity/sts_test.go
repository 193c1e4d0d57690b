package identity_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sag-gateway/sag/identity"
	"github.com/sag-gateway/sag/store"
)

const (
	stsGateway  = "https://gw.example"
	stsTokenURL = "https://gw.example/oauth/token"
	stsUpstream = "https://upstream.example/mcp"
	stsLogical  = "billing"
	stsIdP      = "https://idp.example"
	stsAgent    = "spiffe://example.org/agent/worker"
	stsOrch     = "spiffe://example.org/agent/orchestrator"
	// stsActorToken stands for the worker's JWT-SVID: the fake ActorVerifier
	// knows it.
	stsActorToken = "actor-token-worker"
	// stsSubjectScope is the user token's scope; the exchange's cap lets
	// tools:write through, which the user does not have, and holds back
	// admin:write, which the user has.
	stsSubjectScope = "tools:read tools:call admin:write"
)

var stsCap = []string{"tools:read", "tools:call", "tools:write"}

// stsActors is a fake ActorVerifier: a table of known actor tokens.
type stsActors map[string]string

func (a stsActors) VerifyActor(_ context.Context, token, tokenType string) (string, error) {
	if tokenType != identity.TokenTypeJWT {
		return "", errors.New("unsupported actor token type")
	}
	id, ok := a[token]
	if !ok {
		return "", errors.New("unknown actor token")
	}
	return id, nil
}

// stsAgents is a fake AgentAuthenticator: the agent of every request (as an
// mTLS peer would be).
type stsAgents struct {
	id  string
	err error
}

func (a stsAgents) Agent(context.Context, *http.Request) (string, error) { return a.id, a.err }

// stsRevoked is a fake RevocationChecker revoking every token of one issuer.
type stsRevoked string

func (s stsRevoked) TokenRevoked(_ context.Context, iss, _ string) (bool, error) {
	return iss == string(s), nil
}

// stsSmuggled is an actor token that claims an act chain and a may_act of
// its own; the fake verifier maps it to the worker, as a real JWT-SVID
// verifier would map the token's verified sub.
var stsSmuggled = func() string {
	enc := func(v any) string {
		b, _ := json.Marshal(v)
		return base64.RawURLEncoding.EncodeToString(b)
	}
	return enc(map[string]any{"alg": "ES256", "typ": "JWT", "kid": "k"}) + "." + enc(map[string]any{
		"sub":     stsAgent,
		"aud":     []string{stsGateway},
		"act":     map[string]any{"sub": "spiffe://example.org/evil", "act": map[string]any{"sub": "spiffe://example.org/evil2"}},
		"may_act": map[string]any{"sub": "spiffe://example.org/evil"},
	}) + ".c2lnbmF0dXJl"
}()

// stsEnv is a gateway token endpoint with a user IdP, both with real keys.
type stsEnv struct {
	now            time.Time
	idpKeys        *identity.Keys
	gwKeys         *identity.Keys
	idp, gw        *identity.Issuer
	ex             *identity.Exchange
	log            *bytes.Buffer
	mu             sync.Mutex
	issued         []*identity.Claims
	exchangeTokens map[string]bool
}

func (e *stsEnv) clock() time.Time { return e.now }

func newSTSEnv(t testing.TB, mod func(*identity.ExchangeOptions)) *stsEnv {
	t.Helper()
	env := &stsEnv{now: time.Now().Truncate(time.Second), log: &bytes.Buffer{}}
	var err error
	if env.idpKeys, err = identity.LoadKeys(t.TempDir()); err != nil {
		t.Fatal(err)
	}
	if env.gwKeys, err = identity.LoadKeys(t.TempDir()); err != nil {
		t.Fatal(err)
	}
	env.idp = &identity.Issuer{URL: stsIdP, Keys: env.idpKeys, Now: env.clock}
	env.gw = &identity.Issuer{URL: stsGateway, Keys: env.gwKeys, Now: env.clock}
	subjects, err := identity.NewTokenVerifier(identity.TokenOptions{
		Audience: stsGateway,
		Issuers: map[string]identity.KeySource{
			stsIdP:     identity.StaticKeys{Set: env.idpKeys.PublicSet},
			stsGateway: identity.StaticKeys{Set: env.gwKeys.PublicSet},
		},
		Now: env.clock,
	})
	if err != nil {
		t.Fatal(err)
	}
	// Proofs carry the real time (DPoPKey.Proof), so the DPoP verifier
	// keeps the real clock.
	dpop, err := identity.NewDPoPVerifier(identity.DPoPOptions{Replay: store.NewMemoryReplay(1<<22, nil)})
	if err != nil {
		t.Fatal(err)
	}
	o := identity.ExchangeOptions{
		Issuer:    env.gw,
		Subjects:  subjects,
		DPoP:      dpop,
		TokenURL:  stsTokenURL,
		Actors:    stsActors{stsActorToken: stsAgent, stsSmuggled: stsAgent, "actor-token-other": "spiffe://example.org/agent/other"},
		Audiences: []string{stsUpstream, stsLogical},
		Scopes:    stsCap,
		TTL:       10 * time.Minute,
		Now:       env.clock,
		OnIssue: func(_ context.Context, c *identity.Claims) error {
			env.mu.Lock()
			defer env.mu.Unlock()
			env.issued = append(env.issued, c)
			return nil
		},
		Log: slog.New(slog.NewTextHandler(env.log, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	if mod != nil {
		mod(&o)
	}
	if env.ex, err = identity.NewExchange(o); err != nil {
		t.Fatal(err)
	}
	return env
}

// subjectClaims are the claims of a user's access token for the gateway.
func (e *stsEnv) subjectClaims() identity.Claims {
	return identity.Claims{Subject: "alice", Audience: identity.Audience{stsGateway}, Scope: stsSubjectScope, SessionID: "sess-1", ClientID: "user-app"}
}

// mint signs c with iss (nil: the IdP) for ttl.
func (e *stsEnv) mint(t testing.TB, iss *identity.Issuer, c identity.Claims, ttl time.Duration) (string, *identity.Claims) {
	t.Helper()
	if iss == nil {
		iss = e.idp
	}
	tok, claims, err := iss.Mint(c, ttl)
	if err != nil {
		t.Fatal(err)
	}
	return tok, claims
}

// subject mints a user token with the IdP after mod.
func (e *stsEnv) subject(t testing.TB, mod func(*identity.Claims)) string {
	t.Helper()
	c := e.subjectClaims()
	if mod != nil {
		mod(&c)
	}
	tok, _ := e.mint(t, nil, c, time.Hour)
	return tok
}

// stsReq is one request to the token endpoint.
type stsReq struct {
	method      string
	contentType string
	form        url.Values
	body        string // replaces the encoded form when set
	key         *identity.DPoPKey
	proofs      []string // nil: one fresh proof by key for POST TokenURL
	noProof     bool
	header      http.Header
	tls         *tls.ConnectionState
	// unknownLength sends the body without a Content-Length (chunked).
	unknownLength bool
}

// baseReq is a valid request: the worker exchanges alice's token for the
// upstream, with its JWT-SVID as actor token.
func (e *stsEnv) baseReq(t testing.TB) *stsReq {
	t.Helper()
	key, err := identity.NewDPoPKey()
	if err != nil {
		t.Fatal(err)
	}
	return &stsReq{
		method:      http.MethodPost,
		contentType: "application/x-www-form-urlencoded",
		form: url.Values{
			"grant_type":         {identity.GrantTypeTokenExchange},
			"subject_token":      {e.subject(t, nil)},
			"subject_token_type": {identity.TokenTypeAccessToken},
			"actor_token":        {stsActorToken},
			"actor_token_type":   {identity.TokenTypeJWT},
			"audience":           {stsUpstream},
		},
		key:    key,
		header: http.Header{},
	}
}

func (q *stsReq) do(t testing.TB, e *stsEnv) *httptest.ResponseRecorder {
	t.Helper()
	body := q.body
	if body == "" {
		body = q.form.Encode()
	}
	r := httptest.NewRequest(q.method, stsTokenURL, strings.NewReader(body))
	if q.unknownLength {
		r.Body, r.ContentLength = io.NopCloser(strings.NewReader(body)), -1
	}
	for k, vs := range q.header {
		r.Header[k] = vs
	}
	if q.contentType != "" {
		r.Header.Set("Content-Type", q.contentType)
	}
	if !q.noProof {
		if q.proofs == nil {
			p, err := q.key.Proof(http.MethodPost, stsTokenURL, "", "")
			if err != nil {
				t.Fatal(err)
			}
			q.proofs = []string{p}
		}
		r.Header["Dpop"] = q.proofs
	}
	r.TLS = q.tls
	w := httptest.NewRecorder()
	e.ex.ServeHTTP(w, r)
	return w
}

// secrets are the request values that must never come back in an error
// body or go to the log.
func (q *stsReq) secrets() []string {
	var s []string
	for _, name := range []string{"subject_token", "actor_token"} {
		for _, v := range q.form[name] {
			if len(v) > 8 {
				s = append(s, v)
			}
		}
	}
	return append(s, q.proofs...)
}

type stsResponse struct {
	AccessToken     string `json:"access_token"`
	IssuedTokenType string `json:"issued_token_type"`
	TokenType       string `json:"token_type"`
	ExpiresIn       int64  `json:"expires_in"`
	Scope           string `json:"scope"`
}

// verifyIssued verifies an issued token as a resource server for aud would.
func (e *stsEnv) verifyIssued(t testing.TB, tok, aud string) *identity.Claims {
	t.Helper()
	v, err := identity.NewTokenVerifier(identity.TokenOptions{
		Audience: aud,
		Issuers:  map[string]identity.KeySource{stsGateway: identity.StaticKeys{Set: e.gwKeys.PublicSet}},
		Now:      e.clock,
	})
	if err != nil {
		t.Fatal(err)
	}
	c, err := v.Verify(context.Background(), tok)
	if err != nil {
		t.Fatalf("issued token does not verify for %s: %v", aud, err)
	}
	return c
}

func stsChain(subs ...string) *identity.Actor {
	var a *identity.Actor
	for i := len(subs) - 1; i >= 0; i-- {
		a = &identity.Actor{Sub: subs[i], Act: a}
	}
	return a
}

// stsTamper changes the scope of a signed token without re-signing it.
func stsTamper(t testing.TB, tok string) string {
	t.Helper()
	parts := strings.Split(tok, ".")
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(payload, &m); err != nil {
		t.Fatal(err)
	}
	m["scope"] = "tools:read tools:call tools:write admin:write"
	b, _ := json.Marshal(m)
	parts[1] = base64.RawURLEncoding.EncodeToString(b)
	return strings.Join(parts, ".")
}

type stsCase struct {
	name string
	opts func(*identity.ExchangeOptions)
	mod  func(t *testing.T, e *stsEnv, q *stsReq)
	// For refusals: status, error code and a part of error_description.
	status     int
	code, desc string
	header     [2]string // a response header it must carry
	// For successes: checks on the response and the verified token.
	check func(t *testing.T, e *stsEnv, q *stsReq, resp stsResponse)
}

func setSubject(mod func(*identity.Claims)) func(*testing.T, *stsEnv, *stsReq) {
	return func(t *testing.T, e *stsEnv, q *stsReq) { q.form.Set("subject_token", e.subject(t, mod)) }
}

func setForm(kv ...string) func(*testing.T, *stsEnv, *stsReq) {
	return func(_ *testing.T, _ *stsEnv, q *stsReq) {
		for i := 0; i < len(kv); i += 2 {
			if kv[i+1] == "" {
				q.form.Del(kv[i])
			} else {
				q.form.Set(kv[i], kv[i+1])
			}
		}
	}
}

func addForm(kv ...string) func(*testing.T, *stsEnv, *stsReq) {
	return func(_ *testing.T, _ *stsEnv, q *stsReq) {
		for i := 0; i < len(kv); i += 2 {
			q.form.Add(kv[i], kv[i+1])
		}
	}
}

func withProof(method, htu, ath string) func(*testing.T, *stsEnv, *stsReq) {
	return func(t *testing.T, _ *stsEnv, q *stsReq) {
		p, err := q.key.Proof(method, htu, ath, "")
		if err != nil {
			t.Fatal(err)
		}
		q.proofs = []string{p}
	}
}

func noActorToken(_ *testing.T, _ *stsEnv, q *stsReq) {
	q.form.Del("actor_token")
	q.form.Del("actor_token_type")
}

func wantAct(want *identity.Actor) func(*testing.T, *stsEnv, *stsReq, stsResponse) {
	return func(t *testing.T, e *stsEnv, _ *stsReq, resp stsResponse) {
		c := e.verifyIssued(t, resp.AccessToken, stsUpstream)
		if c.Act.String() != want.String() {
			t.Errorf("act = %s, want %s", c.Act, want)
		}
		if c.MayAct != nil {
			t.Errorf("issued token carries may_act %s", c.MayAct)
		}
	}
}

func stsCases() []stsCase {
	return []stsCase{
		// Successes.
		{
			name: "happy path: actor token, upstream audience, prior chain",
			mod:  setSubject(func(c *identity.Claims) { c.Act = stsChain(stsOrch) }),
			check: func(t *testing.T, e *stsEnv, q *stsReq, resp stsResponse) {
				c := e.verifyIssued(t, resp.AccessToken, stsUpstream)
				switch {
				case c.Issuer != stsGateway:
					t.Errorf("iss = %q", c.Issuer)
				case c.Subject != "alice":
					t.Errorf("sub = %q", c.Subject)
				case len(c.Audience) != 1 || c.Audience[0] != stsUpstream:
					t.Errorf("aud = %v", c.Audience)
				case c.Cnf == nil || c.Cnf.JKT != q.key.Thumbprint():
					t.Errorf("cnf = %+v, want jkt %s", c.Cnf, q.key.Thumbprint())
				case c.Act.String() != stsChain(stsAgent, stsOrch).String():
					t.Errorf("act = %s", c.Act)
				case c.ClientID != stsAgent:
					t.Errorf("client_id = %q", c.ClientID)
				case c.SessionID != "sess-1":
					t.Errorf("sid = %q", c.SessionID)
				case c.Scope != "tools:read tools:call":
					// admin:write is the user's but beyond the cap.
					t.Errorf("scope = %q", c.Scope)
				case c.Expiry > e.now.Add(time.Hour).Unix() || c.Expiry != e.now.Add(10*time.Minute).Unix():
					t.Errorf("exp = %d, want now+10m and not after the subject token", c.Expiry)
				case resp.TokenType != "DPoP" || resp.IssuedTokenType != identity.TokenTypeAccessToken:
					t.Errorf("token_type %q, issued_token_type %q", resp.TokenType, resp.IssuedTokenType)
				case resp.ExpiresIn != 600 || resp.Scope != c.Scope:
					t.Errorf("expires_in %d, scope %q", resp.ExpiresIn, resp.Scope)
				}
				// The lineage hook saw exactly the token that was issued.
				e.mu.Lock()
				defer e.mu.Unlock()
				if len(e.issued) != 1 || e.issued[0].JTI != c.JTI || e.issued[0].Act.String() != c.Act.String() {
					t.Errorf("OnIssue saw %v, want the issued token %s", e.issued, c.JTI)
				}
			},
		},
		{
			name: "no audience: the gateway",
			mod:  setForm("audience", ""),
			check: func(t *testing.T, e *stsEnv, _ *stsReq, resp stsResponse) {
				e.verifyIssued(t, resp.AccessToken, stsGateway)
			},
		},
		{
			name: "logical audience",
			mod:  setForm("audience", stsLogical),
			check: func(t *testing.T, e *stsEnv, _ *stsReq, resp stsResponse) {
				e.verifyIssued(t, resp.AccessToken, stsLogical)
			},
		},
		{
			name: "resource selects the audience (RFC 8707)",
			mod:  setForm("audience", "", "resource", stsUpstream),
			check: func(t *testing.T, e *stsEnv, _ *stsReq, resp stsResponse) {
				e.verifyIssued(t, resp.AccessToken, stsUpstream)
			},
		},
		{
			name: "audience and resource naming the same target",
			mod:  addForm("resource", stsUpstream, "audience", stsUpstream),
			check: func(t *testing.T, e *stsEnv, _ *stsReq, resp stsResponse) {
				e.verifyIssued(t, resp.AccessToken, stsUpstream)
			},
		},
		{
			name: "requested scope within subject and cap",
			mod:  setForm("scope", "tools:call"),
			check: func(t *testing.T, e *stsEnv, _ *stsReq, resp stsResponse) {
				if c := e.verifyIssued(t, resp.AccessToken, stsUpstream); c.Scope != "tools:call" || resp.Scope != "tools:call" {
					t.Errorf("scope = %q, response %q", c.Scope, resp.Scope)
				}
			},
		},
		{
			name: "no cap: every scope of the subject token",
			opts: func(o *identity.ExchangeOptions) { o.Scopes = nil },
			check: func(t *testing.T, e *stsEnv, _ *stsReq, resp stsResponse) {
				if c := e.verifyIssued(t, resp.AccessToken, stsUpstream); c.Scope != stsSubjectScope {
					t.Errorf("scope = %q", c.Scope)
				}
			},
		},
		{
			name:  "act smuggled in the actor token is ignored",
			mod:   setForm("actor_token", stsSmuggled),
			check: wantAct(stsChain(stsAgent)),
		},
		{
			name: "act smuggled in the actor token is ignored (with a prior chain)",
			mod: func(t *testing.T, e *stsEnv, q *stsReq) {
				setSubject(func(c *identity.Claims) { c.Act = stsChain(stsOrch) })(t, e, q)
				q.form.Set("actor_token", stsSmuggled)
			},
			check: wantAct(stsChain(stsAgent, stsOrch)),
		},
		{
			name:  "may_act names the actor",
			mod:   setSubject(func(c *identity.Claims) { c.MayAct = &identity.Actor{Sub: stsAgent} }),
			check: wantAct(stsChain(stsAgent)),
		},
		{
			name:  "may_act names the actor and its trust domain",
			mod:   setSubject(func(c *identity.Claims) { c.MayAct = &identity.Actor{Sub: stsAgent, Iss: "spiffe://example.org"} }),
			check: wantAct(stsChain(stsAgent)),
		},
		{
			name:  "mTLS agent is the actor",
			opts:  func(o *identity.ExchangeOptions) { o.Agents = stsAgents{id: stsAgent} },
			mod:   noActorToken,
			check: wantAct(stsChain(stsAgent)),
		},
		{
			name:  "actor token and mTLS agent agree",
			opts:  func(o *identity.ExchangeOptions) { o.Agents = stsAgents{id: stsAgent} },
			check: wantAct(stsChain(stsAgent)),
		},
		{
			name: "DPoP-bound subject token with a proof of its key",
			mod: func(t *testing.T, e *stsEnv, q *stsReq) {
				setSubject(func(c *identity.Claims) { c.Cnf = &identity.Confirmation{JKT: q.key.Thumbprint()} })(t, e, q)
			},
			check: wantAct(stsChain(stsAgent)),
		},
		{
			name:  "the current actor re-exchanging adds no link",
			mod:   setSubject(func(c *identity.Claims) { c.Act = stsChain(stsAgent, stsOrch) }),
			check: wantAct(stsChain(stsAgent, stsOrch)),
		},
		{
			name: "lifetime capped by the subject token",
			mod: func(t *testing.T, e *stsEnv, q *stsReq) {
				tok, _ := e.mint(t, nil, e.subjectClaims(), 2*time.Minute)
				q.form.Set("subject_token", tok)
			},
			check: func(t *testing.T, e *stsEnv, _ *stsReq, resp stsResponse) {
				c := e.verifyIssued(t, resp.AccessToken, stsUpstream)
				if c.Expiry != e.now.Add(2*time.Minute).Unix() || resp.ExpiresIn != 120 {
					t.Errorf("exp = %d (expires_in %d), want the subject's %d", c.Expiry, resp.ExpiresIn, e.now.Add(2*time.Minute).Unix())
				}
			},
		},
		{
			name: "requested_token_type jwt",
			mod:  setForm("requested_token_type", identity.TokenTypeJWT, "subject_token_type", identity.TokenTypeJWT),
			check: func(t *testing.T, _ *stsEnv, _ *stsReq, resp stsResponse) {
				if resp.IssuedTokenType != identity.TokenTypeJWT {
					t.Errorf("issued_token_type = %q", resp.IssuedTokenType)
				}
			},
		},

		// Transport and form.
		{name: "GET", mod: func(_ *testing.T, _ *stsEnv, q *stsReq) { q.method = http.MethodGet }, status: 405, code: "invalid_request", desc: "POST", header: [2]string{"Allow", "POST"}},
		{name: "an agent run's token as subject", mod: setSubject(func(c *identity.Claims) { c.RunAgent, c.RunWorkflow = stsAgent, "wf" }),
			status: 400, code: "invalid_request", desc: "agent run's token"},
		{name: "JSON body", mod: func(_ *testing.T, _ *stsEnv, q *stsReq) { q.contentType = "application/json" }, status: 400, code: "invalid_request", desc: "content type"},
		{name: "no content type", mod: func(_ *testing.T, _ *stsEnv, q *stsReq) { q.contentType = "" }, status: 400, code: "invalid_request", desc: "content type"},
		{name: "form in another charset", mod: func(_ *testing.T, _ *stsEnv, q *stsReq) { q.contentType += "; charset=iso-8859-1" }, status: 400, code: "invalid_request", desc: "UTF-8"},
		{name: "oversized body", mod: addForm("padding", strings.Repeat("x", 64<<10)), status: 413, code: "invalid_request", desc: "too large"},
		{
			name: "oversized body of unknown length",
			mod: func(t *testing.T, e *stsEnv, q *stsReq) {
				addForm("padding", strings.Repeat("x", 64<<10))(t, e, q)
				q.unknownLength = true
			},
			status: 413, code: "invalid_request", desc: "too large",
		},
		{name: "oversized parameter", mod: setForm("subject_token", strings.Repeat("x", 17<<10)), status: 400, code: "invalid_request", desc: "subject_token too long"},
		{name: "malformed form", mod: func(_ *testing.T, _ *stsEnv, q *stsReq) { q.body = q.form.Encode() + "&scope=%zz" }, status: 400, code: "invalid_request", desc: "malformed form"},
		{name: "parameter not UTF-8", mod: setForm("scope", "tools:read\xff"), status: 400, code: "invalid_request", desc: "not UTF-8"},
		{name: "duplicate scope", mod: addForm("scope", "tools:read", "scope", "tools:read"), status: 400, code: "invalid_request", desc: "scope given more than once"},
		{name: "duplicate subject_token", mod: func(t *testing.T, e *stsEnv, q *stsReq) { q.form.Add("subject_token", e.subject(t, nil)) }, status: 400, code: "invalid_request", desc: "subject_token given more than once"},
		{name: "duplicate grant_type", mod: addForm("grant_type", identity.GrantTypeTokenExchange), status: 400, code: "invalid_request", desc: "grant_type given more than once"},
		{name: "missing grant_type", mod: setForm("grant_type", ""), status: 400, code: "invalid_request", desc: "missing grant_type"},
		{name: "wrong grant_type", mod: setForm("grant_type", "client_credentials"), status: 400, code: "unsupported_grant_type"},
		{name: "client authentication by header", mod: func(_ *testing.T, _ *stsEnv, q *stsReq) { q.header.Set("Authorization", "Basic dXNlcjpwYXNz") }, status: 401, code: "invalid_client", header: [2]string{"WWW-Authenticate", `Basic realm="token"`}},
		{name: "client authentication by DPoP header", mod: func(_ *testing.T, _ *stsEnv, q *stsReq) { q.header.Set("Authorization", "DPoP some-token") }, status: 401, code: "invalid_client", header: [2]string{"WWW-Authenticate", `DPoP realm="token"`}},
		{name: "client secret in the body", mod: setForm("client_id", "app", "client_secret", "hunter2"), status: 400, code: "invalid_client"},

		// Parameters.
		{name: "missing subject_token", mod: setForm("subject_token", ""), status: 400, code: "invalid_request", desc: "missing subject_token"},
		{name: "missing subject_token_type", mod: setForm("subject_token_type", ""), status: 400, code: "invalid_request", desc: "missing subject_token_type"},
		{name: "unsupported subject_token_type", mod: setForm("subject_token_type", "urn:ietf:params:oauth:token-type:id_token"), status: 400, code: "invalid_request", desc: "unsupported subject_token_type"},
		{name: "actor_token without type", mod: setForm("actor_token_type", ""), status: 400, code: "invalid_request", desc: "actor_token_type required"},
		{name: "actor_token_type without token", mod: setForm("actor_token", ""), status: 400, code: "invalid_request", desc: "actor_token_type without actor_token"},
		{name: "unsupported requested_token_type", mod: setForm("requested_token_type", "urn:ietf:params:oauth:token-type:refresh_token"), status: 400, code: "invalid_request", desc: "requested_token_type"},
		{name: "relative resource", mod: setForm("audience", "", "resource", "/mcp"), status: 400, code: "invalid_target", desc: "absolute URI"},
		{name: "resource with fragment", mod: setForm("audience", "", "resource", stsUpstream+"#x"), status: 400, code: "invalid_target", desc: "fragment"},
		{name: "malformed scope", mod: setForm("scope", "tools:read  tools:call"), status: 400, code: "invalid_scope", desc: "malformed scope"},

		// DPoP (RFC 9449 §5).
		{name: "missing DPoP proof", mod: func(_ *testing.T, _ *stsEnv, q *stsReq) { q.noProof = true }, status: 400, code: "invalid_dpop_proof", desc: "missing DPoP header"},
		{name: "DPoP proof for another htu", mod: withProof(http.MethodPost, stsGateway+"/mcp", ""), status: 400, code: "invalid_dpop_proof", desc: "htu"},
		{name: "DPoP proof for another method", mod: withProof(http.MethodGet, stsTokenURL, ""), status: 400, code: "invalid_dpop_proof", desc: "htm"},
		{name: "DPoP proof with ath", mod: withProof(http.MethodPost, stsTokenURL, "some-token"), status: 400, code: "invalid_dpop_proof", desc: "ath"},
		{
			name: "replayed DPoP proof",
			mod: func(t *testing.T, e *stsEnv, q *stsReq) {
				withProof(http.MethodPost, stsTokenURL, "")(t, e, q)
				if w := q.do(t, e); w.Code != http.StatusOK {
					t.Fatalf("first use: %d %s", w.Code, w.Body)
				}
			},
			status: 400, code: "invalid_dpop_proof", desc: "replayed",
		},

		// Subject token (RFC 8693 §2.2.2: invalid_request).
		{
			name: "expired subject token",
			mod: func(t *testing.T, e *stsEnv, q *stsReq) {
				old := &identity.Issuer{URL: stsIdP, Keys: e.idpKeys, Now: func() time.Time { return e.now.Add(-2 * time.Hour) }}
				tok, _ := e.mint(t, old, e.subjectClaims(), time.Minute)
				q.form.Set("subject_token", tok)
			},
			status: 400, code: "invalid_request", desc: "token expired",
		},
		{
			name: "subject token expiring within the skew",
			mod: func(t *testing.T, e *stsEnv, q *stsReq) {
				old := &identity.Issuer{URL: stsIdP, Keys: e.idpKeys, Now: func() time.Time { return e.now.Add(-time.Minute) }}
				tok, _ := e.mint(t, old, e.subjectClaims(), 50*time.Second)
				q.form.Set("subject_token", tok)
			},
			status: 400, code: "invalid_request", desc: "expires too soon",
		},
		{name: "subject token for another audience", mod: setSubject(func(c *identity.Claims) { c.Audience = identity.Audience{stsUpstream} }), status: 400, code: "invalid_request", desc: "(aud)"},
		{
			name: "subject token with a bad signature",
			mod: func(t *testing.T, e *stsEnv, q *stsReq) {
				q.form.Set("subject_token", stsTamper(t, e.subject(t, nil)))
			},
			status: 400, code: "invalid_request", desc: "invalid signature",
		},
		{
			name: "subject token from an untrusted issuer",
			mod: func(t *testing.T, e *stsEnv, q *stsReq) {
				keys, err := identity.LoadKeys(t.TempDir())
				if err != nil {
					t.Fatal(err)
				}
				tok, _ := e.mint(t, &identity.Issuer{URL: "https://evil.example", Keys: keys, Now: e.clock}, e.subjectClaims(), time.Hour)
				q.form.Set("subject_token", tok)
			},
			status: 400, code: "invalid_request", desc: "untrusted issuer",
		},
		{name: "actor token as subject token", mod: setForm("subject_token", stsSmuggled), status: 400, code: "invalid_request", desc: "invalid subject_token"},
		{
			name: "DPoP-bound subject token with another key's proof",
			mod: setSubject(func(c *identity.Claims) {
				other, _ := identity.NewDPoPKey()
				c.Cnf = &identity.Confirmation{JKT: other.Thumbprint()}
			}),
			status: 400, code: "invalid_request", desc: "bound to another DPoP key",
		},
		{
			name: "certificate-bound subject token without the certificate",
			mod: setSubject(func(c *identity.Claims) {
				c.Cnf = &identity.Confirmation{X5T: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}
			}),
			status: 400, code: "invalid_request", desc: "another client certificate",
		},
		{name: "revoked subject token", opts: func(o *identity.ExchangeOptions) { o.Revocations = stsRevoked(stsIdP) }, status: 400, code: "invalid_request", desc: "revoked"},

		// Actor.
		{name: "missing actor", mod: noActorToken, status: 400, code: "invalid_request", desc: "actor required"},
		{name: "missing actor, no mTLS agent", opts: func(o *identity.ExchangeOptions) { o.Agents = stsAgents{} }, mod: noActorToken, status: 400, code: "invalid_request", desc: "actor required"},
		{name: "unknown actor token", mod: setForm("actor_token", "actor-token-forged"), status: 400, code: "invalid_request", desc: "invalid actor_token"},
		{name: "actor token of an unsupported type", mod: setForm("actor_token_type", identity.TokenTypeAccessToken), status: 400, code: "invalid_request", desc: "invalid actor_token"},
		{
			name:   "actor token when only mTLS is accepted",
			opts:   func(o *identity.ExchangeOptions) { o.Actors, o.Agents = nil, stsAgents{id: stsAgent} },
			status: 400, code: "invalid_request", desc: "actor_token is not accepted",
		},
		{
			name: "bad agent credential",
			opts: func(o *identity.ExchangeOptions) {
				o.Agents = stsAgents{err: &identity.OAuthError{Status: 401, Code: "invalid_token"}}
			},
			mod:    noActorToken,
			status: 400, code: "invalid_request", desc: "invalid agent credential",
		},
		{
			name:   "actor token and mTLS agent disagree",
			opts:   func(o *identity.ExchangeOptions) { o.Agents = stsAgents{id: stsAgent} },
			mod:    setForm("actor_token", "actor-token-other"),
			status: 400, code: "invalid_request", desc: "different agents",
		},
		{name: "may_act names another agent", mod: setSubject(func(c *identity.Claims) { c.MayAct = &identity.Actor{Sub: stsOrch} }), status: 400, code: "invalid_request", desc: "may_act"},
		{name: "may_act names another trust domain", mod: setSubject(func(c *identity.Claims) { c.MayAct = &identity.Actor{Sub: stsAgent, Iss: "spiffe://other.org"} }), status: 400, code: "invalid_request", desc: "may_act"},
		{name: "may_act names no one", mod: setSubject(func(c *identity.Claims) { c.MayAct = &identity.Actor{} }), status: 400, code: "invalid_request", desc: "may_act"},
		{
			name: "delegation chain too long",
			mod: setSubject(func(c *identity.Claims) {
				c.Act = stsChain("spiffe://example.org/1", "spiffe://example.org/2", "spiffe://example.org/3", "spiffe://example.org/4",
					"spiffe://example.org/5", "spiffe://example.org/6", "spiffe://example.org/7", "spiffe://example.org/8")
			}),
			status: 400, code: "invalid_request", desc: "chain too long",
		},

		// Audience (RFC 8693 §2.2.2: invalid_target).
		{name: "audience not allowed", mod: setForm("audience", "https://elsewhere.example"), status: 400, code: "invalid_target", desc: "not allowed"},
		{name: "resource not allowed", mod: setForm("audience", "", "resource", "https://elsewhere.example/mcp"), status: 400, code: "invalid_target", desc: "not allowed"},
		{name: "two audiences", mod: addForm("audience", stsLogical), status: 400, code: "invalid_target", desc: "one audience"},
		{name: "audience and another resource", mod: addForm("resource", stsGateway), status: 400, code: "invalid_target", desc: "one audience"},

		// Scope (RFC 6749 §5.2: invalid_scope).
		{name: "scope escalation", mod: setForm("scope", "tools:read tools:write"), status: 400, code: "invalid_scope", desc: "exceeds the subject_token"},
		{name: "scope beyond the cap", mod: setForm("scope", "admin:write"), status: 400, code: "invalid_scope", desc: "not allowed for delegation"},
		{name: "no delegable scope", mod: setSubject(func(c *identity.Claims) { c.Scope = "admin:write" }), status: 400, code: "invalid_scope", desc: "no scope"},

		// Lineage.
		{
			name: "lineage not recorded",
			opts: func(o *identity.ExchangeOptions) {
				o.OnIssue = func(context.Context, *identity.Claims) error { return errors.New("store down") }
			},
			status: 500, code: "server_error", desc: "record",
		},
	}
}

func TestExchange(t *testing.T) {
	for _, tc := range stsCases() {
		t.Run(tc.name, func(t *testing.T) {
			env := newSTSEnv(t, tc.opts)
			q := env.baseReq(t)
			if tc.mod != nil {
				tc.mod(t, env, q)
			}
			w := q.do(t, env)
			body := w.Body.String()
			for k, v := range map[string]string{"Cache-Control": "no-store", "Pragma": "no-cache", "Content-Type": "application/json"} {
				if got := w.Header().Get(k); got != v {
					t.Errorf("%s = %q, want %q", k, got, v)
				}
			}
			if tc.header[0] != "" && w.Header().Get(tc.header[0]) != tc.header[1] {
				t.Errorf("%s = %q, want %q", tc.header[0], w.Header().Get(tc.header[0]), tc.header[1])
			}
			logged := env.log.String()
			for _, s := range q.secrets() {
				if strings.Contains(logged, s) {
					t.Errorf("the log holds a request token or proof:\n%s", logged)
				}
			}
			if tc.check != nil {
				if w.Code != http.StatusOK {
					t.Fatalf("status %d: %s", w.Code, body)
				}
				var resp stsResponse
				if err := json.Unmarshal(w.Body.Bytes(), &resp); err != nil {
					t.Fatal(err)
				}
				if resp.TokenType != "DPoP" || resp.AccessToken == "" {
					t.Fatalf("response %s", body)
				}
				if strings.Contains(logged, resp.AccessToken) {
					t.Error("the log holds the issued token")
				}
				tc.check(t, env, q, resp)
				return
			}
			if w.Code != tc.status {
				t.Errorf("status %d, want %d: %s", w.Code, tc.status, body)
			}
			var e map[string]any
			if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil {
				t.Fatalf("error body %q: %v", body, err)
			}
			if e["error"] != tc.code {
				t.Errorf("error = %v, want %s (%s)", e["error"], tc.code, body)
			}
			if desc, _ := e["error_description"].(string); !strings.Contains(desc, tc.desc) {
				t.Errorf("error_description = %q, want it to mention %q", desc, tc.desc)
			}
			if _, ok := e["access_token"]; ok {
				t.Error("an error response carries an access token")
			}
			for _, s := range q.secrets() {
				if strings.Contains(body, s) {
					t.Errorf("error body echoes a request token or proof: %s", body)
				}
			}
			env.mu.Lock()
			defer env.mu.Unlock()
			if n := len(env.issued); n > 0 && tc.name != "replayed DPoP proof" {
				t.Errorf("OnIssue recorded %d tokens for a refused request", n)
			}
		})
	}
}

// TestExchangeTokenAcceptedByGateway shows the issued token doing its job:
// with a proof of the same key, the gateway's Authenticator accepts it and
// establishes the user, the agent and the chain; with another key it does
// not.
func TestExchangeTokenAcceptedByGateway(t *testing.T) {
	env := newSTSEnv(t, nil)
	q := env.baseReq(t)
	q.form.Del("audience")
	w := q.do(t, env)
	if w.Code != http.StatusOK {
		t.Fatalf("exchange: %d %s", w.Code, w.Body)
	}
	var resp stsResponse
	if err := json.Unmarshal(w.Body.Bytes(), &resp); err != nil {
		t.Fatal(err)
	}
	tokens, err := identity.NewTokenVerifier(identity.TokenOptions{
		Audience: stsGateway,
		Issuers:  map[string]identity.KeySource{stsGateway: identity.StaticKeys{Set: env.gwKeys.PublicSet}},
		Now:      env.clock,
	})
	if err != nil {
		t.Fatal(err)
	}
	dpop, err := identity.NewDPoPVerifier(identity.DPoPOptions{Replay: store.NewMemoryReplay(100, nil)})
	if err != nil {
		t.Fatal(err)
	}
	authn, err := identity.NewAuthenticator(identity.AuthOptions{
		Mode: identity.ModeDPoP, PublicURL: stsGateway, Tokens: tokens, DPoP: dpop, Agents: stsAgents{id: stsAgent},
	})
	if err != nil {
		t.Fatal(err)
	}
	call := func(key *identity.DPoPKey) (identity.Principal, error) {
		proof, err := key.Proof(http.MethodPost, stsGateway+"/mcp", resp.AccessToken, "")
		if err != nil {
			t.Fatal(err)
		}
		r := httptest.NewRequest(http.MethodPost, stsGateway+"/mcp", nil)
		r.Header.Set("Authorization", "DPoP "+resp.AccessToken)
		r.Header.Set("DPoP", proof)
		return authn.Authenticate(r)
	}
	p, err := call(q.key)
	if err != nil {
		t.Fatalf("gateway refused the exchanged token: %v", err)
	}
	if p.User != "alice" || p.Agent != stsAgent || p.Act.String() != stsChain(stsAgent).String() ||
		p.ClientID != stsAgent || p.Method != identity.MethodDPoP || p.KeyThumbprint != q.key.Thumbprint() {
		t.Errorf("principal = %+v", p)
	}
	other, err := identity.NewDPoPKey()
	if err != nil {
		t.Fatal(err)
	}
	var ae *identity.OAuthError
	if _, err := call(other); !errors.As(err, &ae) || ae.Code != identity.ErrCodeInvalidDPoPProof {
		t.Errorf("token used with another key: %v", err)
	}
}

// TestExchangeDPoPNonce checks RFC 9449 §8 at the token endpoint: a proof
// without the nonce gets use_dpop_nonce (400) and the nonce; with it, the
// request succeeds and a fresh nonce comes back.
func TestExchangeDPoPNonce(t *testing.T) {
	nonces := identity.NewNonces(time.Minute, nil)
	env := newSTSEnv(t, func(o *identity.ExchangeOptions) { o.Nonces = nonces })
	q := env.baseReq(t)
	w := q.do(t, env)
	if w.Code != http.StatusBadRequest || !strings.Contains(w.Body.String(), "use_dpop_nonce") || w.Header().Get("DPoP-Nonce") == "" {
		t.Fatalf("without nonce: %d %v %s", w.Code, w.Header(), w.Body)
	}
	proof, err := q.key.Proof(http.MethodPost, stsTokenURL, "", w.Header().Get("DPoP-Nonce"))
	if err != nil {
		t.Fatal(err)
	}
	q.proofs = []string{proof}
	if w = q.do(t, env); w.Code != http.StatusOK || w.Header().Get("DPoP-Nonce") == "" {
		t.Fatalf("with nonce: %d %v %s", w.Code, w.Header(), w.Body)
	}
}

func TestExchangeMetadata(t *testing.T) {
	env := newSTSEnv(t, nil)
	m := env.ex.Metadata()
	want := map[string]any{
		"issuer":                                stsGateway,
		"token_endpoint":                        stsTokenURL,
		"jwks_uri":                              stsGateway + "/.well-known/jwks.json",
		"grant_types_supported":                 []string{identity.GrantTypeTokenExchange},
		"token_endpoint_auth_methods_supported": []string{"none"},
		"introspection_endpoint":                stsGateway + "/oauth/introspect",
		"revocation_endpoint":                   stsGateway + "/oauth/revoke",
		"scopes_supported":                      stsCap,
		"response_types_supported":              []string{},
		"dpop_signing_alg_values_supported":     identity.DefaultDPoPAlgs(),
	}
	for k, v := range want {
		got, _ := json.Marshal(m[k])
		exp, _ := json.Marshal(v)
		if !bytes.Equal(got, exp) {
			t.Errorf("%s = %s, want %s", k, got, exp)
		}
	}
	if env2 := newSTSEnv(t, func(o *identity.ExchangeOptions) { o.Scopes = nil }); env2.ex.Metadata()["scopes_supported"] != nil {
		t.Error("scopes_supported without a cap")
	}
	m["scopes_supported"].([]string)[0] = "changed"
	if !slices.Equal(env.ex.Metadata()["scopes_supported"].([]string), stsCap) {
		t.Error("Metadata hands out its own slice")
	}
}

func TestNewExchangeRefuses(t *testing.T) {
	for name, mod := range map[string]func(*identity.ExchangeOptions){
		"no issuer":               func(o *identity.ExchangeOptions) { o.Issuer = nil },
		"issuer without URL":      func(o *identity.ExchangeOptions) { o.Issuer = &identity.Issuer{Keys: o.Issuer.Keys} },
		"no subject verifier":     func(o *identity.ExchangeOptions) { o.Subjects = nil },
		"no DPoP verifier":        func(o *identity.ExchangeOptions) { o.DPoP = nil },
		"no way to find an actor": func(o *identity.ExchangeOptions) { o.Actors, o.Agents = nil, nil },
		"relative token URL":      func(o *identity.ExchangeOptions) { o.TokenURL = "/oauth/token" },
		"negative lifetime":       func(o *identity.ExchangeOptions) { o.TTL = -time.Second },
		"empty audience":          func(o *identity.ExchangeOptions) { o.Audiences = []string{""} },
		"bad scope in cap":        func(o *identity.ExchangeOptions) { o.Scopes = []string{"a b"} },
	} {
		t.Run(name, func(t *testing.T) {
			var o identity.ExchangeOptions // a valid set of options to break
			newSTSEnv(t, func(v *identity.ExchangeOptions) { o = *v })
			mod(&o)
			if _, err := identity.NewExchange(o); err == nil {
				t.Error("accepted")
			}
		})
	}
}
