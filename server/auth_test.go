package server_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/sag-gateway/sag/identity"
	"github.com/sag-gateway/sag/server"
	"github.com/sag-gateway/sag/server/config"
	"github.com/sag-gateway/sag/store"
)

// startSecureGateway serves a gateway with --auth mode in front of one
// session-based fixture ("fx").
func startSecureGateway(t *testing.T, mode string, mutate func(*config.Config)) *testGateway {
	t.Helper()
	up, _ := httpFixture(t, "fx", false)
	return startGateway(t, func(c *config.Config) {
		c.Auth = mode
		c.Upstreams = []config.Upstream{{Name: "fx", URL: up}}
		allowAll(t, c)
		if mutate != nil {
			mutate(c)
		}
	})
}

// allowAll gives an authenticated test gateway an allow-list that allows
// every tool to everyone (without one it denies everything).
func allowAll(t testing.TB, c *config.Config) {
	t.Helper()
	f := filepath.Join(t.TempDir(), "allow-all.yaml")
	if err := os.WriteFile(f, []byte("id: test-allow-all\nrules: [{id: all, tools: ['*'], prompts: ['*'], resources: ['*'], consent: never}]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c.Policy.Files = append(c.Policy.Files, f)
}

// agent is a test agent: a DPoP key and a token bound to it, minted by the
// gateway's development issuer.
type agent struct {
	key   *identity.DPoPKey
	token string
}

func newAgent(t testing.TB, tg *testGateway, claims identity.Claims) *agent {
	t.Helper()
	key, err := identity.NewDPoPKey()
	if err != nil {
		t.Fatal(err)
	}
	if claims.Cnf == nil {
		claims.Cnf = &identity.Confirmation{JKT: key.Thumbprint()}
	}
	return &agent{key: key, token: mint(t, tg, claims)}
}

// mint signs claims with the gateway's keys (what `sag token` does).
func mint(t testing.TB, tg *testGateway, c identity.Claims) string {
	t.Helper()
	keys, err := identity.LoadKeys(filepath.Join(tg.DataDir, server.KeysDir))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Audience) == 0 {
		c.Audience = identity.Audience{tg.Base}
	}
	tok, _, err := (&identity.Issuer{URL: tg.Base, Keys: keys}).Mint(c, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func (a *agent) client() *http.Client {
	return &http.Client{Transport: &identity.DPoPTransport{Key: a.key, Token: func(context.Context) (string, error) { return a.token, nil }}}
}

// connect opens a session with the newest protocol revision (stateless).
func (a *agent) connect(t *testing.T, url string) *mcp.ClientSession {
	t.Helper()
	return a.connectVersion(t, url, "")
}

// connectVersion opens a session speaking the given revision ("" newest).
func (a *agent) connectVersion(t *testing.T, url, version string) *mcp.ClientSession {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	c := mcp.NewClient(&mcp.Implementation{Name: "sag-test-agent", Version: "1"}, nil)
	cs, err := c.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: url, HTTPClient: a.client()}, &mcp.ClientSessionOptions{ProtocolVersion: version})
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { cs.Close() })
	return cs
}

// headers returns the Authorization and DPoP headers of one request.
func (a *agent) headers(t *testing.T, method, url string) http.Header {
	t.Helper()
	proof, err := a.key.Proof(method, url, a.token, "")
	if err != nil {
		t.Fatal(err)
	}
	return http.Header{"Authorization": {"DPoP " + a.token}, "Dpop": {proof}}
}

const initBody = `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"` + legacy + `","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}`

// TestDPoPEndToEnd: a go-sdk client with DPoP calls a tool; the audit record
// names the user and the proof.
func TestDPoPEndToEnd(t *testing.T) {
	tg := startSecureGateway(t, config.AuthDPoP, nil)
	a := newAgent(t, tg, identity.Claims{Subject: "alice"})
	cs := a.connect(t, tg.MCP)
	res := callTool(t, cs, "fx__echo", map[string]any{"text": "hi"})
	if res.IsError || res.Content[0].(*mcp.TextContent).Text != "hi" {
		t.Fatalf("echo: %+v", res)
	}
	recs := auditRecords(t, tg, "fx__echo")
	if len(recs) != 1 {
		t.Fatalf("audit: %d records, want 1", len(recs))
	}
	r := recs[0]
	if r.Sub != "alice" || r.DPoPJTI == "" || r.DPoPHTM != "POST" || r.DPoPHTU != tg.MCP || r.DPoPATH == "" {
		t.Errorf("audit record lacks the principal or the proof: %+v", r)
	}
}

func auditRecords(t *testing.T, tg *testGateway, tool string) []store.AuditRecord {
	t.Helper()
	code, body := tg.adminDo(t, http.MethodGet, "/admin/audit?limit=1000", nil)
	if code != http.StatusOK {
		t.Fatalf("audit: %d %s", code, body)
	}
	var out []store.AuditRecord
	for line := range strings.SplitSeq(strings.TrimSpace(string(body)), "\n") {
		if line == "" { // no records
			continue
		}
		var r store.AuditRecord
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("audit line %q: %v", line, err)
		}
		if r.Tool == tool {
			out = append(out, r)
		}
	}
	return out
}

// TestAuthChallenges: refused requests get the RFC's status, code and
// challenge, and never reach the MCP handler.
func TestAuthChallenges(t *testing.T) {
	tg := startSecureGateway(t, config.AuthDPoP, func(c *config.Config) { c.Identity.RequiredScopes = []string{"mcp"} })
	meta := `resource_metadata="` + tg.Base + `/.well-known/oauth-protected-resource"`
	scoped := newAgent(t, tg, identity.Claims{Subject: "alice", Scope: "mcp"})
	unscoped := newAgent(t, tg, identity.Claims{Subject: "alice"})
	bearerTok := mint(t, tg, identity.Claims{Subject: "bob", Scope: "mcp"})
	for _, tc := range []struct {
		name    string
		header  func() http.Header
		status  int
		contain []string
	}{
		{"no credentials", func() http.Header { return nil }, 401, []string{`DPoP algs="`, meta}},
		{"unbound bearer token in dpop mode", func() http.Header { return http.Header{"Authorization": {"Bearer " + bearerTok}} }, 401,
			[]string{`error="invalid_token"`, "sender-constrained token required"}},
		{"DPoP-bound token as Bearer", func() http.Header { return http.Header{"Authorization": {"Bearer " + scoped.token}} }, 401,
			[]string{`error="invalid_token"`, "DPoP-bound token sent with the Bearer scheme"}},
		{"DPoP token without proof", func() http.Header { return http.Header{"Authorization": {"DPoP " + scoped.token}} }, 401,
			[]string{`error="invalid_dpop_proof"`, "missing DPoP header"}},
		{"proof for another URL", func() http.Header { return scoped.headers(t, "POST", tg.Base+"/other") }, 401,
			[]string{`error="invalid_dpop_proof"`, "htu does not match"}},
		{"stolen token with another key", func() http.Header {
			h := scoped.headers(t, "POST", tg.MCP)
			thief := newAgent(t, tg, identity.Claims{Subject: "mallory"})
			proof, _ := thief.key.Proof("POST", tg.MCP, scoped.token, "")
			h.Set("DPoP", proof)
			return h
		}, 401, []string{`error="invalid_dpop_proof"`, "cnf.jkt"}},
		{"missing scope", func() http.Header { return unscoped.headers(t, "POST", tg.MCP) }, 403,
			[]string{`error="insufficient_scope"`, `scope="mcp"`}},
		{"token for another audience", func() http.Header {
			a := newAgent(t, tg, identity.Claims{Subject: "alice", Scope: "mcp", Audience: identity.Audience{"https://elsewhere.example"}})
			return a.headers(t, "POST", tg.MCP)
		}, 401, []string{`error="invalid_token"`, "aud"}},
		{"garbage token", func() http.Header { return http.Header{"Authorization": {"DPoP abc.def.ghi"}, "Dpop": {"x"}} }, 401,
			[]string{`error="invalid_token"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := rawPost(t, tg.MCP, initBody, tc.header())
			if r.Status != tc.status {
				t.Fatalf("status %d, want %d; body %s", r.Status, tc.status, r.Body)
			}
			www := strings.Join(r.Header.Values("WWW-Authenticate"), "\n")
			for _, c := range tc.contain {
				if !strings.Contains(www, c) {
					t.Errorf("WWW-Authenticate %q lacks %q", www, c)
				}
			}
			if h := tc.header(); h != nil {
				tok := strings.TrimPrefix(strings.TrimPrefix(h.Get("Authorization"), "DPoP "), "Bearer ")
				if len(tok) > 20 && (strings.Contains(string(r.Body), tok) || strings.Contains(www, tok)) {
					t.Error("the token leaks into the response")
				}
			}
		})
	}
	// The same proof twice: the second is a replay.
	h := scoped.headers(t, "POST", tg.MCP)
	if r := rawPost(t, tg.MCP, initBody, h); r.Status != http.StatusOK {
		t.Fatalf("first use: %d %s", r.Status, r.Body)
	}
	if r := rawPost(t, tg.MCP, initBody, h); r.Status != http.StatusUnauthorized || !strings.Contains(r.Header.Get("WWW-Authenticate"), "proof replayed") {
		t.Fatalf("replay: %d %v", r.Status, r.Header)
	}
}

// TestSessionBelongsToItsPrincipal: another user presenting a session id gets
// 404, as if it did not exist.
func TestSessionBelongsToItsPrincipal(t *testing.T) {
	tg := startSecureGateway(t, config.AuthDPoP, nil)
	alice := newAgent(t, tg, identity.Claims{Subject: "alice"})
	bob := newAgent(t, tg, identity.Claims{Subject: "bob"})
	r := rawPost(t, tg.MCP, initBody, alice.headers(t, "POST", tg.MCP))
	sid := r.Header.Get("Mcp-Session-Id")
	if r.Status != http.StatusOK || sid == "" {
		t.Fatalf("initialize: %d %s", r.Status, r.Body)
	}
	list := `{"jsonrpc":"2.0","id":2,"method":"tools/list"}`
	h := bob.headers(t, "POST", tg.MCP)
	h.Set("Mcp-Session-Id", sid)
	h.Set("Mcp-Protocol-Version", legacy)
	if r := rawPost(t, tg.MCP, list, h); r.Status != http.StatusNotFound {
		t.Fatalf("bob using alice's session: %d, want 404", r.Status)
	}
	h = alice.headers(t, "POST", tg.MCP)
	h.Set("Mcp-Session-Id", sid)
	h.Set("Mcp-Protocol-Version", legacy)
	if r := rawPost(t, tg.MCP, list, h); r.Status != http.StatusOK {
		t.Fatalf("alice using her session: %d %s", r.Status, r.Body)
	}
}

// TestBearerMode accepts plain bearer tokens but still refuses a DPoP-bound
// token sent as Bearer.
func TestBearerMode(t *testing.T) {
	tg := startSecureGateway(t, config.AuthBearer, nil)
	tok := mint(t, tg, identity.Claims{Subject: "legacy"})
	if r := rawPost(t, tg.MCP, initBody, http.Header{"Authorization": {"Bearer " + tok}}); r.Status != http.StatusOK {
		t.Fatalf("bearer: %d %s", r.Status, r.Body)
	}
	bound := newAgent(t, tg, identity.Claims{Subject: "alice"})
	r := rawPost(t, tg.MCP, initBody, http.Header{"Authorization": {"Bearer " + bound.token}})
	if r.Status != http.StatusUnauthorized {
		t.Fatalf("downgrade: %d, want 401", r.Status)
	}
	if www := strings.Join(r.Header.Values("WWW-Authenticate"), "\n"); !strings.Contains(www, "Bearer error=\"invalid_token\"") || !strings.Contains(www, "DPoP algs=") {
		t.Errorf("bearer mode challenges: %q", www)
	}
	// A DPoP client works in bearer mode too.
	cs := bound.connect(t, tg.MCP)
	if res := callTool(t, cs, "fx__echo", map[string]any{"text": "x"}); res.IsError {
		t.Fatalf("dpop in bearer mode: %+v", res)
	}
}

// TestAdminWithAccessToken: the admin API takes an access token with the
// admin scope, and refuses one without it with 403 insufficient_scope.
func TestAdminWithAccessToken(t *testing.T) {
	tg := startSecureGateway(t, config.AuthDPoP, nil)
	admin := newAgent(t, tg, identity.Claims{Subject: "ops", Scope: server.AdminScope})
	user := newAgent(t, tg, identity.Claims{Subject: "alice"})
	for _, tc := range []struct {
		a    *agent
		want int
	}{{admin, 200}, {user, 403}} {
		req, _ := http.NewRequest(http.MethodGet, tg.Base+"/admin/upstreams", nil)
		resp, err := tc.a.client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("%s: status %d, want %d", tc.a.token[:10], resp.StatusCode, tc.want)
		}
	}
}

// TestMetricsNeedAuth: with authentication on, /metrics (which names
// upstreams and tools) needs the admin token or a token with MetricsScope.
func TestMetricsNeedAuth(t *testing.T) {
	tg := startSecureGateway(t, config.AuthDPoP, nil)
	resp, err := http.Get(tg.Base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("anonymous scrape: %d, want 401", resp.StatusCode)
	}
	if code, _ := tg.adminDo(t, http.MethodGet, "/metrics", nil); code != http.StatusOK {
		t.Errorf("scrape with the admin token: %d", code)
	}
	for _, tc := range []struct {
		scope string
		want  int
	}{{server.MetricsScope, 200}, {"", 403}} {
		a := newAgent(t, tg, identity.Claims{Subject: "prometheus", Scope: tc.scope})
		resp, err := a.client().Get(tg.Base + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("scrape with scope %q: %d, want %d", tc.scope, resp.StatusCode, tc.want)
		}
	}
}

// TestResourceMetadata serves RFC 9728 metadata naming the gateway as the
// resource and its issuer.
func TestResourceMetadata(t *testing.T) {
	tg := startSecureGateway(t, config.AuthDPoP, nil)
	resp, err := http.Get(tg.Base + "/.well-known/oauth-protected-resource")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m struct {
		Resource string   `json:"resource"`
		Servers  []string `json:"authorization_servers"`
		DPoP     bool     `json:"dpop_bound_access_tokens_required"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
		t.Fatal(err)
	}
	// Without SPIFFE there is no token service: only configured issuers
	// (none here) are authorization servers.
	if m.Resource != tg.Base || len(m.Servers) != 0 || !m.DPoP {
		t.Errorf("metadata %+v", m)
	}
}

// TestKeyRotation: after a rotation new tokens are signed with the new key,
// and tokens signed before it keep working (the old key stays in the JWKS).
func TestKeyRotation(t *testing.T) {
	tg := startSecureGateway(t, config.AuthDPoP, nil)
	before := newAgent(t, tg, identity.Claims{Subject: "alice"})
	code, body := tg.adminDo(t, http.MethodPost, "/admin/keys/rotate", nil)
	var res server.KeysResponse
	if code != http.StatusOK || json.Unmarshal(body, &res) != nil || len(res.Published) != 2 {
		t.Fatalf("rotate: %d %s", code, body)
	}
	after := newAgent(t, tg, identity.Claims{Subject: "bob"})
	if kidOf(t, after.token) != res.Active || kidOf(t, before.token) == res.Active {
		t.Errorf("tokens not signed with the active key: before %s, after %s, active %s", kidOf(t, before.token), kidOf(t, after.token), res.Active)
	}
	for _, a := range []*agent{before, after} {
		if r := rawPost(t, tg.MCP, initBody, a.headers(t, "POST", tg.MCP)); r.Status != http.StatusOK {
			t.Errorf("token of kid %s after the rotation: %d %s", kidOf(t, a.token), r.Status, r.Body)
		}
	}
}

func kidOf(t *testing.T, tok string) string {
	t.Helper()
	b, err := base64.RawURLEncoding.DecodeString(strings.SplitN(tok, ".", 2)[0])
	if err != nil {
		t.Fatal(err)
	}
	var h struct {
		Kid string `json:"kid"`
	}
	json.Unmarshal(b, &h)
	return h.Kid
}

// TestExternalIssuer: tokens of an issuer configured with a JWKS URL are
// accepted (keys fetched in the background), including after the issuer
// rotates its key; a token of an issuer not configured is refused.
func TestExternalIssuer(t *testing.T) {
	idpKeys, err := identity.LoadKeys(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	jwks := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		b, _ := idpKeys.JWKS()
		w.Header().Set("Content-Type", "application/json")
		w.Write(b)
	}))
	t.Cleanup(jwks.Close)
	const idp = "https://idp.example.com"
	tg := startSecureGateway(t, config.AuthDPoP, func(c *config.Config) {
		c.Identity.Issuers = []config.Issuer{{Issuer: idp, JWKSURL: jwks.URL}}
	})
	external := func(keys *identity.Keys, iss string) *agent {
		key, _ := identity.NewDPoPKey()
		tok, _, err := (&identity.Issuer{URL: iss, Keys: keys}).Mint(identity.Claims{
			Subject: "carol", Audience: identity.Audience{tg.Base}, Cnf: &identity.Confirmation{JKT: key.Thumbprint()},
		}, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return &agent{key: key, token: tok}
	}
	if r := rawPost(t, tg.MCP, initBody, external(idpKeys, idp).headers(t, "POST", tg.MCP)); r.Status != http.StatusOK {
		t.Fatalf("token of the configured issuer: %d %s", r.Status, r.Body)
	}
	if _, err := idpKeys.Rotate(); err != nil {
		t.Fatal(err)
	}
	if r := rawPost(t, tg.MCP, initBody, external(idpKeys, idp).headers(t, "POST", tg.MCP)); r.Status != http.StatusOK {
		t.Fatalf("token signed with the issuer's new key: %d %s", r.Status, r.Body)
	}
	if r := rawPost(t, tg.MCP, initBody, external(idpKeys, "https://other.example.com").headers(t, "POST", tg.MCP)); r.Status != http.StatusUnauthorized {
		t.Fatalf("token of an unknown issuer: %d", r.Status)
	}
}
