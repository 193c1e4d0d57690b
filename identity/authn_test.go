package identity

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"math/big"
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sag-gateway/sag/store"

	"github.com/sag-gateway/sag/internal/testutil"
)

const (
	authPublicURL = "http://127.0.0.1:8080"
	authResource  = authPublicURL + "/mcp"
	authMetadata  = authPublicURL + "/.well-known/oauth-protected-resource/mcp"
	authAlgs      = "ES256 EdDSA Ed25519 PS256 RS256"
)

// fakeAgents is an AgentAuthenticator returning a fixed identity or error.
type fakeAgents struct {
	id  string
	err error
}

var _ AgentAuthenticator = fakeAgents{}

func (f fakeAgents) Agent(context.Context, *http.Request) (string, error) { return f.id, f.err }

// fakeRevocations is a RevocationChecker over a set of "iss jti" entries.
type fakeRevocations struct {
	mu      sync.Mutex
	revoked map[string]bool
	err     error
	asked   []string
}

var _ RevocationChecker = (*fakeRevocations)(nil)

func (f *fakeRevocations) TokenRevoked(_ context.Context, iss, jti string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.asked = append(f.asked, iss+" "+jti)
	return f.revoked[iss+" "+jti], f.err
}

// authEnv is an Authenticator over real components (Keys in a temp dir, an
// Issuer, a TokenVerifier, a DPoPVerifier with a memory replay cache) on a
// fake clock. Options may be changed until the first call of auth.
type authEnv struct {
	clock      *testutil.Clock
	keys       *Keys
	issuer     *Issuer
	key, other *DPoPKey
	opts       AuthOptions
	a          *Authenticator
}

func newAuthEnv(t testing.TB, mode string) *authEnv {
	t.Helper()
	clock := testutil.NewClock(testNow, 0)
	keys, err := LoadKeys(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	tokens, err := NewTokenVerifier(TokenOptions{
		Audience: authResource,
		Issuers:  map[string]KeySource{authPublicURL: StaticKeys{Set: keys.PublicSet}},
		Now:      clock.Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	dpop, err := NewDPoPVerifier(DPoPOptions{Replay: store.NewMemoryReplay(1024, clock.Now), Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	return &authEnv{
		clock:  clock,
		keys:   keys,
		issuer: &Issuer{URL: authPublicURL, Keys: keys, Now: clock.Now},
		key:    newDPoPKeyAt(t, clock.Now),
		other:  newDPoPKeyAt(t, clock.Now),
		opts: AuthOptions{
			Mode: mode, PublicURL: authPublicURL + "/", ResourceMetadataURL: authMetadata,
			Tokens: tokens, DPoP: dpop,
		},
	}
}

func newDPoPKeyAt(t testing.TB, now func() time.Time) *DPoPKey {
	t.Helper()
	k, err := NewDPoPKey()
	if err != nil {
		t.Fatal(err)
	}
	k.now = now
	return k
}

// shifted returns a copy of k whose proofs carry iat now+d.
func (e *authEnv) shifted(k *DPoPKey, d time.Duration) *DPoPKey {
	c := *k
	c.now = func() time.Time { return e.clock.Now().Add(d) }
	return &c
}

func (e *authEnv) auth(t testing.TB) *Authenticator {
	t.Helper()
	if e.a == nil {
		a, err := NewAuthenticator(e.opts)
		if err != nil {
			t.Fatal(err)
		}
		e.a = a
	}
	return e.a
}

// mint returns a token for authResource bound to e.key, changed by mod.
func (e *authEnv) mint(t testing.TB, mod func(*Claims)) (string, *Claims) {
	t.Helper()
	c := Claims{
		Subject: "alice", Audience: Audience{authResource}, ClientID: "client-1",
		Scope: "tools:call tools:list", SessionID: "sess-1",
		Cnf: &Confirmation{JKT: e.key.Thumbprint()},
	}
	if mod != nil {
		mod(&c)
	}
	tok, claims, err := e.issuer.Mint(c, 5*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	return tok, claims
}

func (e *authEnv) bound(t testing.TB) string {
	tok, _ := e.mint(t, nil)
	return tok
}

func (e *authEnv) unbound(t testing.TB) string {
	tok, _ := e.mint(t, func(c *Claims) { c.Cnf = nil })
	return tok
}

func (e *authEnv) proof(t testing.TB, k *DPoPKey, method, url, token, nonce string) string {
	t.Helper()
	p, err := k.Proof(method, url, token, nonce)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// request builds a request to authPublicURL+path with header name/value
// pairs (added, so names may repeat).
func request(method, path string, hdr ...string) *http.Request {
	r := httptest.NewRequest(method, authPublicURL+path, strings.NewReader(`{"jsonrpc":"2.0"}`))
	for i := 0; i < len(hdr); i += 2 {
		r.Header.Add(hdr[i], hdr[i+1])
	}
	return r
}

// dpopRequest is POST /mcp with a bound token and a fresh proof by e.key.
func (e *authEnv) dpopRequest(t testing.TB, tok string) *http.Request {
	return request("POST", "/mcp", "Authorization", "DPoP "+tok, "DPoP", e.proof(t, e.key, "POST", authResource, tok, ""))
}

func (e *authEnv) mustAccept(t testing.TB, r *http.Request) Principal {
	t.Helper()
	p, err := e.auth(t).Authenticate(r)
	if err != nil {
		t.Fatalf("request refused: %v", err)
	}
	return p
}

// proofClaims are the claims of a valid hand-made proof for POST /mcp.
func (e *authEnv) proofClaims(t testing.TB, tok string, kv ...any) map[string]any {
	return with(map[string]any{
		"jti": randJTI(t), "htm": "POST", "htu": authResource, "iat": e.clock.Now().Unix(), "ath": athOf(tok),
	}, kv...)
}

// selfSigned returns a fresh self-signed client certificate.
func selfSigned(t testing.TB) *x509.Certificate {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "agent"},
		NotBefore:    testNow.Add(-time.Hour),
		NotAfter:     testNow.Add(time.Hour),
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, k.Public(), k)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func withCert(r *http.Request, c *x509.Certificate) *http.Request {
	r.TLS = &tls.ConnectionState{HandshakeComplete: true}
	if c != nil {
		r.TLS.PeerCertificates = []*x509.Certificate{c}
	}
	return r
}

// secretsOf lists the credentials a request carries: none may appear in a
// response.
func secretsOf(r *http.Request) []string {
	var out []string
	for _, v := range r.Header.Values("Authorization") {
		if _, tok, ok := strings.Cut(v, " "); ok && len(tok) >= 16 {
			out = append(out, tok)
		}
	}
	for _, v := range r.Header.Values("DPoP") {
		if len(v) >= 16 {
			out = append(out, v)
		}
	}
	return out
}

type authRefusal struct {
	name   string
	mode   string // ModeDPoP unless set
	req    func(t *testing.T, e *authEnv) *http.Request
	status int
	code   string
	desc   string
}

func authRefusals() []authRefusal {
	const (
		badProof = ErrCodeInvalidDPoPProof
		badToken = ErrCodeInvalidToken
		badReq   = ErrCodeInvalidRequest
	)
	htuCase := func(htu string) func(t *testing.T, e *authEnv) *http.Request {
		return func(t *testing.T, e *authEnv) *http.Request {
			tok := e.bound(t)
			return request("POST", "/mcp", "Authorization", "DPoP "+tok, "DPoP", e.proof(t, e.key, "POST", htu, tok, ""))
		}
	}
	handMade := func(header map[string]any, kv ...any) func(t *testing.T, e *authEnv) *http.Request {
		return func(t *testing.T, e *authEnv) *http.Request {
			s := newSigner(t, "ES256")
			tok := e.bound(t)
			return request("POST", "/mcp", "Authorization", "DPoP "+tok, "DPoP", s.sign(t, header, e.proofClaims(t, tok, kv...)))
		}
	}
	return []authRefusal{
		{name: "no credentials", req: func(*testing.T, *authEnv) *http.Request { return request("POST", "/mcp") },
			status: 401},
		{name: "no credentials, bearer mode", mode: ModeBearer, req: func(*testing.T, *authEnv) *http.Request { return request("POST", "/mcp") },
			status: 401},
		// Replays.
		{name: "proof replayed", req: func(t *testing.T, e *authEnv) *http.Request {
			r := e.dpopRequest(t, e.bound(t))
			e.mustAccept(t, r)
			return r
		}, status: 401, code: badProof, desc: "proof replayed"},
		{name: "proof replayed with htm in lower case", req: func(t *testing.T, e *authEnv) *http.Request {
			r := e.dpopRequest(t, e.bound(t))
			e.mustAccept(t, r)
			return request("post", "/mcp", "Authorization", r.Header.Get("Authorization"), "DPoP", r.Header.Get("DPoP"))
		}, status: 401, code: badProof, desc: "htm does not match the request method"},
		{name: "proof replayed with a query string", req: func(t *testing.T, e *authEnv) *http.Request {
			r := e.dpopRequest(t, e.bound(t))
			e.mustAccept(t, r)
			return request("POST", "/mcp?x=1", "Authorization", r.Header.Get("Authorization"), "DPoP", r.Header.Get("DPoP"))
		}, status: 401, code: badProof, desc: "proof replayed"},
		{name: "proof replayed to another Host", req: func(t *testing.T, e *authEnv) *http.Request {
			r := e.dpopRequest(t, e.bound(t))
			e.mustAccept(t, r)
			r2 := httptest.NewRequest("POST", "http://LOCALHOST:9999/mcp", nil)
			r2.Header = r.Header.Clone()
			return r2
		}, status: 401, code: badProof, desc: "proof replayed"},
		{name: "proof replayed with another token of the same key", req: func(t *testing.T, e *authEnv) *http.Request {
			r := e.dpopRequest(t, e.bound(t))
			e.mustAccept(t, r)
			return request("POST", "/mcp", "Authorization", "DPoP "+e.bound(t), "DPoP", r.Header.Get("DPoP"))
		}, status: 401, code: badProof, desc: "ath does not match the access token"},
		// htu and htm.
		{name: "htu scheme mismatch", req: htuCase("https://127.0.0.1:8080/mcp"), status: 401, code: badProof, desc: "htu does not match the request URI"},
		{name: "htu host mismatch", req: htuCase("http://localhost:8080/mcp"), status: 401, code: badProof, desc: "htu does not match the request URI"},
		{name: "htu port mismatch", req: htuCase("http://127.0.0.1:8081/mcp"), status: 401, code: badProof, desc: "htu does not match the request URI"},
		{name: "htu default port", req: htuCase("http://127.0.0.1/mcp"), status: 401, code: badProof, desc: "htu does not match the request URI"},
		{name: "htu path mismatch", req: htuCase("http://127.0.0.1:8080/admin"), status: 401, code: badProof, desc: "htu does not match the request URI"},
		{name: "htu built from a spoofed Host header", req: func(t *testing.T, e *authEnv) *http.Request {
			tok := e.bound(t)
			r := httptest.NewRequest("POST", "http://evil.example.com/mcp", nil)
			r.Header.Set("Authorization", "DPoP "+tok)
			r.Header.Set("X-Forwarded-Host", "evil.example.com")
			r.Header.Set("DPoP", e.proof(t, e.key, "POST", "http://evil.example.com/mcp", tok, ""))
			return r
		}, status: 401, code: badProof, desc: "htu does not match the request URI"},
		{name: "htm mismatch", req: func(t *testing.T, e *authEnv) *http.Request {
			tok := e.bound(t)
			return request("POST", "/mcp", "Authorization", "DPoP "+tok, "DPoP", e.proof(t, e.key, "GET", authResource, tok, ""))
		}, status: 401, code: badProof, desc: "htm does not match the request method"},
		// iat.
		{name: "stale iat", req: func(t *testing.T, e *authEnv) *http.Request {
			tok := e.bound(t)
			return request("POST", "/mcp", "Authorization", "DPoP "+tok, "DPoP", e.proof(t, e.shifted(e.key, -DefaultDPoPWindow-time.Second), "POST", authResource, tok, ""))
		}, status: 401, code: badProof, desc: "proof too old"},
		{name: "future iat", req: func(t *testing.T, e *authEnv) *http.Request {
			tok := e.bound(t)
			return request("POST", "/mcp", "Authorization", "DPoP "+tok, "DPoP", e.proof(t, e.shifted(e.key, DefaultDPoPSkew+time.Second), "POST", authResource, tok, ""))
		}, status: 401, code: badProof, desc: "proof issued in the future"},
		// ath and key binding.
		{name: "missing ath", req: func(t *testing.T, e *authEnv) *http.Request {
			tok := e.bound(t)
			return request("POST", "/mcp", "Authorization", "DPoP "+tok, "DPoP", e.proof(t, e.key, "POST", authResource, "", ""))
		}, status: 401, code: badProof, desc: "missing ath"},
		{name: "ath of another token", req: func(t *testing.T, e *authEnv) *http.Request {
			tok := e.bound(t)
			return request("POST", "/mcp", "Authorization", "DPoP "+tok, "DPoP", e.proof(t, e.key, "POST", authResource, e.bound(t), ""))
		}, status: 401, code: badProof, desc: "ath does not match the access token"},
		{name: "stolen token: proof by another key", req: func(t *testing.T, e *authEnv) *http.Request {
			tok := e.bound(t)
			return request("POST", "/mcp", "Authorization", "DPoP "+tok, "DPoP", e.proof(t, e.other, "POST", authResource, tok, ""))
		}, status: 401, code: badProof, desc: "proof key does not match the token's cnf.jkt"},
		{name: "stolen token in bearer mode", mode: ModeBearer, req: func(t *testing.T, e *authEnv) *http.Request {
			tok := e.bound(t)
			return request("POST", "/mcp", "Authorization", "DPoP "+tok, "DPoP", e.proof(t, e.other, "POST", authResource, tok, ""))
		}, status: 401, code: badProof, desc: "proof key does not match the token's cnf.jkt"},
		// Scheme downgrades and mix-ups.
		{name: "DPoP-bound token sent as Bearer", req: func(t *testing.T, e *authEnv) *http.Request {
			return request("POST", "/mcp", "Authorization", "Bearer "+e.bound(t))
		}, status: 401, code: badToken, desc: "DPoP-bound token sent with the Bearer scheme"},
		{name: "DPoP-bound token sent as Bearer, bearer mode", mode: ModeBearer, req: func(t *testing.T, e *authEnv) *http.Request {
			return request("POST", "/mcp", "Authorization", "Bearer "+e.bound(t))
		}, status: 401, code: badToken, desc: "DPoP-bound token sent with the Bearer scheme"},
		{name: "DPoP-bound token sent as bearer (lower case)", mode: ModeBearer, req: func(t *testing.T, e *authEnv) *http.Request {
			return request("POST", "/mcp", "Authorization", "bearer "+e.bound(t))
		}, status: 401, code: badToken, desc: "DPoP-bound token sent with the Bearer scheme"},
		{name: "DPoP- and certificate-bound token sent as Bearer over mTLS", mode: ModeBearer, req: func(t *testing.T, e *authEnv) *http.Request {
			cert := selfSigned(t)
			tok, _ := e.mint(t, func(c *Claims) { c.Cnf.X5T = CertThumbprint(cert.Raw) })
			return withCert(request("POST", "/mcp", "Authorization", "Bearer "+tok), cert)
		}, status: 401, code: badToken, desc: "DPoP-bound token sent with the Bearer scheme"},
		{name: "unbound token as Bearer in dpop mode", req: func(t *testing.T, e *authEnv) *http.Request {
			return request("POST", "/mcp", "Authorization", "Bearer "+e.unbound(t))
		}, status: 401, code: badToken, desc: "sender-constrained token required (DPoP or mTLS)"},
		{name: "unbound token with the DPoP scheme", req: func(t *testing.T, e *authEnv) *http.Request {
			tok := e.unbound(t)
			return request("POST", "/mcp", "Authorization", "DPoP "+tok, "DPoP", e.proof(t, e.key, "POST", authResource, tok, ""))
		}, status: 401, code: badToken, desc: "token is not DPoP-bound"},
		{name: "unbound token with the DPoP scheme, bearer mode", mode: ModeBearer, req: func(t *testing.T, e *authEnv) *http.Request {
			tok := e.unbound(t)
			return request("POST", "/mcp", "Authorization", "DPoP "+tok, "DPoP", e.proof(t, e.key, "POST", authResource, tok, ""))
		}, status: 401, code: badToken, desc: "token is not DPoP-bound"},
		{name: "certificate-bound token with the DPoP scheme", req: func(t *testing.T, e *authEnv) *http.Request {
			cert := selfSigned(t)
			tok, _ := e.mint(t, func(c *Claims) { c.Cnf = &Confirmation{X5T: CertThumbprint(cert.Raw)} })
			return withCert(request("POST", "/mcp", "Authorization", "DPoP "+tok, "DPoP", e.proof(t, e.key, "POST", authResource, tok, "")), cert)
		}, status: 401, code: badToken, desc: "token is not DPoP-bound"},
		{name: "two DPoP headers", req: func(t *testing.T, e *authEnv) *http.Request {
			tok := e.bound(t)
			return request("POST", "/mcp", "Authorization", "DPoP "+tok,
				"DPoP", e.proof(t, e.key, "POST", authResource, tok, ""), "DPoP", e.proof(t, e.key, "POST", authResource, tok, ""))
		}, status: 401, code: badProof, desc: "more than one DPoP header"},
		{name: "no DPoP header", req: func(t *testing.T, e *authEnv) *http.Request {
			return request("POST", "/mcp", "Authorization", "DPoP "+e.bound(t))
		}, status: 401, code: badProof, desc: "missing DPoP header"},
		{name: "two Authorization headers", req: func(t *testing.T, e *authEnv) *http.Request {
			tok := e.bound(t)
			return request("POST", "/mcp", "Authorization", "DPoP "+tok, "Authorization", "DPoP "+tok, "DPoP", e.proof(t, e.key, "POST", authResource, tok, ""))
		}, status: 400, code: badReq, desc: "more than one Authorization header"},
		{name: "DPoP header with the Bearer scheme", req: func(t *testing.T, e *authEnv) *http.Request {
			tok := e.bound(t)
			return request("POST", "/mcp", "Authorization", "Bearer "+tok, "DPoP", e.proof(t, e.key, "POST", authResource, tok, ""))
		}, status: 400, code: badReq, desc: "a DPoP proof goes with the DPoP scheme, not Bearer"},
		{name: "DPoP header with the Bearer scheme and an unbound token, bearer mode", mode: ModeBearer, req: func(t *testing.T, e *authEnv) *http.Request {
			tok := e.unbound(t)
			return request("POST", "/mcp", "Authorization", "Bearer "+tok, "DPoP", e.proof(t, e.key, "POST", authResource, tok, ""))
		}, status: 400, code: badReq, desc: "a DPoP proof goes with the DPoP scheme, not Bearer"},
		// Malformed Authorization.
		{name: "scheme without a token", req: func(*testing.T, *authEnv) *http.Request {
			return request("POST", "/mcp", "Authorization", "DPoP")
		}, status: 400, code: badReq, desc: "malformed Authorization header"},
		{name: "empty Authorization", req: func(*testing.T, *authEnv) *http.Request {
			return request("POST", "/mcp", "Authorization", "")
		}, status: 400, code: badReq, desc: "malformed Authorization header"},
		{name: "token with characters outside token68", req: func(t *testing.T, e *authEnv) *http.Request {
			return request("POST", "/mcp", "Authorization", "DPoP "+e.bound(t)+",x")
		}, status: 400, code: badReq, desc: "malformed Authorization header"},
		{name: "token with a space", req: func(t *testing.T, e *authEnv) *http.Request {
			return request("POST", "/mcp", "Authorization", "DPoP abc def")
		}, status: 400, code: badReq, desc: "malformed Authorization header"},
		{name: "two spaces after the scheme", req: func(t *testing.T, e *authEnv) *http.Request {
			return request("POST", "/mcp", "Authorization", "DPoP  "+e.bound(t))
		}, status: 400, code: badReq, desc: "malformed Authorization header"},
		{name: "token of padding only", req: func(*testing.T, *authEnv) *http.Request {
			return request("POST", "/mcp", "Authorization", "DPoP ==")
		}, status: 400, code: badReq, desc: "malformed Authorization header"},
		{name: "padding inside the token", req: func(*testing.T, *authEnv) *http.Request {
			return request("POST", "/mcp", "Authorization", "Bearer abc=def")
		}, status: 400, code: badReq, desc: "malformed Authorization header"},
		{name: "unknown scheme", req: func(*testing.T, *authEnv) *http.Request {
			return request("POST", "/mcp", "Authorization", "Basic YWxpY2U6c2VjcmV0LXBhc3N3b3Jk")
		}, status: 401},
		{name: "unknown scheme, bearer mode", mode: ModeBearer, req: func(*testing.T, *authEnv) *http.Request {
			return request("POST", "/mcp", "Authorization", "Basic YWxpY2U6c2VjcmV0LXBhc3N3b3Jk")
		}, status: 401},
		{name: "oversized token", req: func(t *testing.T, e *authEnv) *http.Request {
			tok := strings.Repeat("a", DefaultMaxTokenBytes+1)
			return request("POST", "/mcp", "Authorization", "DPoP "+tok, "DPoP", e.proof(t, e.key, "POST", authResource, tok, ""))
		}, status: 401, code: badToken, desc: "token too large"},
		{name: "oversized Bearer token", mode: ModeBearer, req: func(t *testing.T, e *authEnv) *http.Request {
			return request("POST", "/mcp", "Authorization", "Bearer "+strings.Repeat("a", DefaultMaxTokenBytes+1))
		}, status: 401, code: badToken, desc: "token too large"},
		// Token failures surface as invalid_token.
		{name: "expired token", req: func(t *testing.T, e *authEnv) *http.Request {
			tok := e.bound(t)
			e.clock.Add(5*time.Minute + DefaultTokenSkew)
			return e.dpopRequest(t, tok)
		}, status: 401, code: badToken, desc: "token expired"},
		{name: "token for another resource", req: func(t *testing.T, e *authEnv) *http.Request {
			tok, _ := e.mint(t, func(c *Claims) { c.Audience = Audience{authPublicURL + "/admin"} })
			return e.dpopRequest(t, tok)
		}, status: 401, code: badToken, desc: "token is not for this resource (aud)"},
		{name: "token from an untrusted issuer", req: func(t *testing.T, e *authEnv) *http.Request {
			iss := &Issuer{URL: "https://evil.example.com", Keys: e.keys, Now: e.clock.Now}
			tok, _, err := iss.Mint(Claims{Subject: "alice", Audience: Audience{authResource}, Cnf: &Confirmation{JKT: e.key.Thumbprint()}}, time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			return e.dpopRequest(t, tok)
		}, status: 401, code: badToken, desc: "untrusted issuer"},
		{name: "a DPoP proof as the access token", req: func(t *testing.T, e *authEnv) *http.Request {
			tok := e.proof(t, e.key, "POST", authResource, "", "")
			return request("POST", "/mcp", "Authorization", "DPoP "+tok, "DPoP", e.proof(t, e.key, "POST", authResource, tok, ""))
		}, status: 401, code: badToken, desc: "typ must be at+jwt"},
		// Bad proofs.
		{name: "proof jwk carries the private key", req: func(t *testing.T, e *authEnv) *http.Request {
			s := newSigner(t, "ES256")
			tok := e.bound(t)
			return request("POST", "/mcp", "Authorization", "DPoP "+tok, "DPoP", s.sign(t, map[string]any{"jwk": publicJWKWithPrivate(t, s)}, e.proofClaims(t, tok)))
		}, status: 401, code: badProof, desc: "jwk contains a private key"},
		{name: "proof with alg none", req: func(t *testing.T, e *authEnv) *http.Request {
			s := newSigner(t, "ES256")
			tok := e.bound(t)
			return request("POST", "/mcp", "Authorization", "DPoP "+tok, "DPoP",
				b64url(mustJSON(t, map[string]any{"typ": "dpop+jwt", "alg": "none", "jwk": s.jwk}))+"."+b64url(mustJSON(t, e.proofClaims(t, tok)))+".AAAA")
		}, status: 401, code: badProof, desc: "unsupported alg"},
		{name: "proof with HS256 and an oct jwk", req: func(t *testing.T, e *authEnv) *http.Request {
			secret := []byte("0123456789abcdef0123456789abcdef")
			tok := e.bound(t)
			return request("POST", "/mcp", "Authorization", "DPoP "+tok, "DPoP",
				hs256(t, map[string]any{"typ": "dpop+jwt", "alg": "HS256", "jwk": map[string]any{"kty": "oct", "k": b64url(secret)}}, e.proofClaims(t, tok), secret))
		}, status: 401, code: badProof, desc: "unsupported alg"},
		{name: "JSON-serialized proof", req: func(t *testing.T, e *authEnv) *http.Request {
			tok := e.bound(t)
			p := strings.Split(e.proof(t, e.key, "POST", authResource, tok, ""), ".")
			return request("POST", "/mcp", "Authorization", "DPoP "+tok, "DPoP",
				string(mustJSON(t, map[string]string{"protected": p[0], "payload": p[1], "signature": p[2]})))
		}, status: 401, code: badProof, desc: "proof must use JWS compact serialization"},
		{name: "proof re-encoded with non-zero unused bits", req: func(t *testing.T, e *authEnv) *http.Request {
			tok := e.bound(t)
			p := e.proof(t, e.key, "POST", authResource, tok, "")
			const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
			p = p[:len(p)-1] + string(alphabet[strings.IndexByte(alphabet, p[len(p)-1])|1])
			return request("POST", "/mcp", "Authorization", "DPoP "+tok, "DPoP", p)
		}, status: 401, code: badProof, desc: "malformed proof signature"},
		{name: "proof with an oversized jti", req: handMade(nil, "jti", strings.Repeat("j", DefaultDPoPMaxJTI+1)),
			status: 401, code: badProof, desc: "jti too long"},
		{name: "proof typed as an access token", req: handMade(map[string]any{"typ": "at+jwt"}),
			status: 401, code: badProof, desc: "typ must be dpop+jwt"},
		// Actors and agents.
		{name: "actor without an agent authenticator", req: func(t *testing.T, e *authEnv) *http.Request {
			tok, _ := e.mint(t, func(c *Claims) { c.Act = &Actor{Sub: "spiffe://example.org/agent"} })
			return e.dpopRequest(t, tok)
		}, status: 401, code: badToken, desc: "token names an actor; authenticate as that agent (mTLS or Sag-Agent-Token)"},
		{name: "actor, agent presented no credential", req: func(t *testing.T, e *authEnv) *http.Request {
			e.opts.Agents = fakeAgents{}
			tok, _ := e.mint(t, func(c *Claims) { c.Act = &Actor{Sub: "spiffe://example.org/agent"} })
			return e.dpopRequest(t, tok)
		}, status: 401, code: badToken, desc: "token names an actor; authenticate as that agent (mTLS or Sag-Agent-Token)"},
		{name: "actor is not the authenticated agent", req: func(t *testing.T, e *authEnv) *http.Request {
			e.opts.Agents = fakeAgents{id: "spiffe://example.org/other-agent"}
			tok, _ := e.mint(t, func(c *Claims) { c.Act = &Actor{Sub: "spiffe://example.org/agent"} })
			return e.dpopRequest(t, tok)
		}, status: 401, code: badToken, desc: "authenticated agent is not the token's actor"},
		{name: "prior actor is the authenticated agent, current actor is not", req: func(t *testing.T, e *authEnv) *http.Request {
			e.opts.Agents = fakeAgents{id: "spiffe://example.org/agent"}
			tok, _ := e.mint(t, func(c *Claims) {
				c.Act = &Actor{Sub: "spiffe://example.org/other-agent", Act: &Actor{Sub: "spiffe://example.org/agent"}}
			})
			return e.dpopRequest(t, tok)
		}, status: 401, code: badToken, desc: "authenticated agent is not the token's actor"},
		{name: "bad agent credential", req: func(t *testing.T, e *authEnv) *http.Request {
			e.opts.Agents = fakeAgents{err: &OAuthError{Status: 401, Code: ErrCodeInvalidToken, Description: "invalid agent token", Scheme: "DPoP"}}
			return e.dpopRequest(t, e.bound(t))
		}, status: 401, code: badToken, desc: "invalid agent token"},
		// Revocation.
		{name: "revoked token", req: func(t *testing.T, e *authEnv) *http.Request {
			tok, c := e.mint(t, nil)
			e.opts.Revocations = &fakeRevocations{revoked: map[string]bool{c.Issuer + " " + c.JTI: true}}
			return e.dpopRequest(t, tok)
		}, status: 401, code: badToken, desc: "token revoked"},
		{name: "revoked Bearer token, bearer mode", mode: ModeBearer, req: func(t *testing.T, e *authEnv) *http.Request {
			tok, c := e.mint(t, func(c *Claims) { c.Cnf = nil })
			e.opts.Revocations = &fakeRevocations{revoked: map[string]bool{c.Issuer + " " + c.JTI: true}}
			return request("POST", "/mcp", "Authorization", "Bearer "+tok)
		}, status: 401, code: badToken, desc: "token revoked"},
		// RFC 7235 §2.1: the scheme is case-insensitive; the challenge must
		// still carry the error.
		{name: "revoked token, scheme in lower case", req: func(t *testing.T, e *authEnv) *http.Request {
			tok, c := e.mint(t, nil)
			e.opts.Revocations = &fakeRevocations{revoked: map[string]bool{c.Issuer + " " + c.JTI: true}}
			r := e.dpopRequest(t, tok)
			r.Header.Set("Authorization", "dpop "+tok)
			return r
		}, status: 401, code: badToken, desc: "token revoked"},
		{name: "revoked Bearer token, scheme in lower case, bearer mode", mode: ModeBearer, req: func(t *testing.T, e *authEnv) *http.Request {
			tok, c := e.mint(t, func(c *Claims) { c.Cnf = nil })
			e.opts.Revocations = &fakeRevocations{revoked: map[string]bool{c.Issuer + " " + c.JTI: true}}
			return request("POST", "/mcp", "Authorization", "bearer "+tok)
		}, status: 401, code: badToken, desc: "token revoked"},
		{name: "oversized token, scheme in lower case", req: func(t *testing.T, e *authEnv) *http.Request {
			return request("POST", "/mcp", "Authorization", "dpop "+strings.Repeat("a", DefaultMaxTokenBytes+1))
		}, status: 401, code: badToken, desc: "token too large"},
		// Nonces.
		{name: "nonce required, proof has none", req: func(t *testing.T, e *authEnv) *http.Request {
			e.opts.Nonces = NewNonces(time.Minute, e.clock.Now)
			return e.dpopRequest(t, e.bound(t))
		}, status: 401, code: ErrCodeUseDPoPNonce, desc: "nonce required"},
		{name: "nonce two steps old", req: func(t *testing.T, e *authEnv) *http.Request {
			e.opts.Nonces = NewNonces(time.Minute, e.clock.Now)
			nonce := e.opts.Nonces.Current()
			e.clock.Add(2 * time.Minute)
			tok := e.bound(t)
			return request("POST", "/mcp", "Authorization", "DPoP "+tok, "DPoP", e.proof(t, e.key, "POST", authResource, tok, nonce))
		}, status: 401, code: ErrCodeUseDPoPNonce, desc: "nonce invalid or expired"},
		{name: "nonce from another server", req: func(t *testing.T, e *authEnv) *http.Request {
			e.opts.Nonces = NewNonces(time.Minute, e.clock.Now)
			tok := e.bound(t)
			nonce := NewNonces(time.Minute, e.clock.Now).Current()
			return request("POST", "/mcp", "Authorization", "DPoP "+tok, "DPoP", e.proof(t, e.key, "POST", authResource, tok, nonce))
		}, status: 401, code: ErrCodeUseDPoPNonce, desc: "nonce invalid or expired"},
		// Certificate binding.
		{name: "certificate-bound token, another certificate", req: func(t *testing.T, e *authEnv) *http.Request {
			tok, _ := e.mint(t, func(c *Claims) { c.Cnf = &Confirmation{X5T: CertThumbprint(selfSigned(t).Raw)} })
			return withCert(request("POST", "/mcp", "Authorization", "Bearer "+tok), selfSigned(t))
		}, status: 401, code: badToken, desc: "client certificate does not match the token's cnf"},
		{name: "certificate-bound token without TLS", req: func(t *testing.T, e *authEnv) *http.Request {
			tok, _ := e.mint(t, func(c *Claims) { c.Cnf = &Confirmation{X5T: CertThumbprint(selfSigned(t).Raw)} })
			return request("POST", "/mcp", "Authorization", "Bearer "+tok)
		}, status: 401, code: badToken, desc: "certificate-bound token used without a client certificate"},
		{name: "certificate-bound token over TLS without a client certificate", req: func(t *testing.T, e *authEnv) *http.Request {
			tok, _ := e.mint(t, func(c *Claims) { c.Cnf = &Confirmation{X5T: CertThumbprint(selfSigned(t).Raw)} })
			return withCert(request("POST", "/mcp", "Authorization", "Bearer "+tok), nil)
		}, status: 401, code: badToken, desc: "certificate-bound token used without a client certificate"},
		{name: "DPoP- and certificate-bound token with the DPoP scheme, no certificate", req: func(t *testing.T, e *authEnv) *http.Request {
			tok, _ := e.mint(t, func(c *Claims) { c.Cnf.X5T = CertThumbprint(selfSigned(t).Raw) })
			return e.dpopRequest(t, tok)
		}, status: 401, code: badToken, desc: "certificate-bound token used without a client certificate"},
		{name: "DPoP- and certificate-bound token with the DPoP scheme, another certificate", req: func(t *testing.T, e *authEnv) *http.Request {
			tok, _ := e.mint(t, func(c *Claims) { c.Cnf.X5T = CertThumbprint(selfSigned(t).Raw) })
			return withCert(e.dpopRequest(t, tok), selfSigned(t))
		}, status: 401, code: badToken, desc: "client certificate does not match the token's cnf"},
	}
}

func TestAuthenticateRefuses(t *testing.T) {
	for _, tc := range authRefusals() {
		t.Run(tc.name, func(t *testing.T) {
			mode := tc.mode
			if mode == "" {
				mode = ModeDPoP
			}
			e := newAuthEnv(t, mode)
			r := tc.req(t, e)
			p, err := e.auth(t).Authenticate(r)
			if err == nil {
				t.Fatalf("accepted: %+v", p)
			}
			var ae *OAuthError
			if !errors.As(err, &ae) {
				t.Fatalf("err = %T %v, want *OAuthError", err, err)
			}
			if ae.Status != tc.status || ae.Code != tc.code || ae.Description != tc.desc {
				t.Fatalf("err = %d %q %q, want %d %q %q", ae.Status, ae.Code, ae.Description, tc.status, tc.code, tc.desc)
			}
			checkErrorResponse(t, e, err, tc.status, tc.code, tc.desc, secretsOf(r))
		})
	}
}

// checkErrorResponse renders err with WriteError and checks the status, the
// JSON body, that the challenge names the error, and that no credential of
// the request leaks into the response.
func checkErrorResponse(t *testing.T, e *authEnv, err error, status int, code, desc string, secrets []string) {
	t.Helper()
	rec := httptest.NewRecorder()
	e.auth(t).WriteError(rec, err)
	res := rec.Result()
	if res.StatusCode != status {
		t.Errorf("status = %d, want %d", res.StatusCode, status)
	}
	if got := res.Header.Get("Cache-Control"); got != "no-store" {
		t.Errorf("Cache-Control = %q", got)
	}
	var body map[string]string
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
		t.Fatalf("body %q: %v", rec.Body.String(), err)
	}
	wantCode, wantDesc := code, desc
	if code == "" {
		wantCode, wantDesc = "unauthorized", "authentication required"
	}
	if body["error"] != wantCode || body["error_description"] != wantDesc {
		t.Errorf("body = %v", body)
	}
	challenges := res.Header.Values("WWW-Authenticate")
	if len(challenges) == 0 {
		t.Errorf("no WWW-Authenticate challenge")
	}
	withError := 0
	for _, c := range challenges {
		if strings.Contains(c, "error=") {
			withError++
		}
		if !strings.Contains(c, `resource_metadata="`+authMetadata+`"`) {
			t.Errorf("challenge %q lacks resource_metadata", c)
		}
	}
	switch {
	case code == "" && withError != 0:
		t.Errorf("challenges %q carry an error code for a request without credentials", challenges)
	case code != "" && withError != 1:
		t.Errorf("challenges %q: want exactly one carrying error=%q", challenges, code)
	case code != "" && !slices.ContainsFunc(challenges, func(c string) bool { return strings.Contains(c, `error="`+code+`"`) }):
		t.Errorf("challenges %q do not carry error=%q", challenges, code)
	}
	if nonce := res.Header.Get("DPoP-Nonce"); (nonce != "") != (code == ErrCodeUseDPoPNonce) {
		t.Errorf("DPoP-Nonce = %q for %q", nonce, code)
	} else if nonce != "" && !e.opts.Nonces.Valid(nonce) {
		t.Errorf("DPoP-Nonce %q is not valid", nonce)
	}
	for _, s := range secrets {
		for name, vals := range res.Header {
			for _, v := range vals {
				if strings.Contains(v, s) {
					t.Errorf("header %s leaks a credential", name)
				}
			}
		}
		if strings.Contains(rec.Body.String(), s) {
			t.Errorf("body leaks a credential")
		}
		if strings.Contains(err.Error(), s) {
			t.Errorf("error leaks a credential")
		}
	}
}

func TestAuthenticateDPoP(t *testing.T) {
	for _, mode := range []string{ModeDPoP, ModeBearer} {
		t.Run(mode, func(t *testing.T) {
			e := newAuthEnv(t, mode)
			tok, c := e.mint(t, nil)
			p := e.mustAccept(t, e.dpopRequest(t, tok))
			want := Principal{
				Issuer: authPublicURL, User: "alice", TokenID: c.JTI, SessionID: "sess-1", ClientID: "client-1",
				Scopes: []string{"tools:call", "tools:list"}, IssuedAt: testNow, Expiry: testNow.Add(5 * time.Minute),
				Method: MethodDPoP, KeyThumbprint: e.key.Thumbprint(),
			}
			if p.Proof == nil {
				t.Fatal("no proof in the principal")
			}
			proof := *p.Proof
			p.Proof = nil
			if p.Claims["sub"] != "alice" || p.Claims["sid"] != "sess-1" {
				t.Errorf("claims = %v", p.Claims)
			}
			p.Claims = nil
			if !reflect.DeepEqual(p, want) {
				t.Errorf("principal = %+v\nwant        %+v", p, want)
			}
			if proof.JKT != e.key.Thumbprint() || proof.HTM != "POST" || proof.HTU != authResource || proof.ATH != athOf(tok) || proof.JTI == "" || !proof.IAT.Equal(testNow) {
				t.Errorf("proof = %+v", proof)
			}
		})
	}
}

func TestAuthenticateAccepts(t *testing.T) {
	cases := []struct {
		name  string
		mode  string
		req   func(t *testing.T, e *authEnv) *http.Request
		check func(t *testing.T, e *authEnv, r *http.Request, p Principal)
	}{
		{name: "DPoP scheme in lower case", req: func(t *testing.T, e *authEnv) *http.Request {
			tok := e.bound(t)
			r := e.dpopRequest(t, tok)
			r.Header.Set("Authorization", "dpop "+tok)
			return r
		}, check: func(t *testing.T, e *authEnv, r *http.Request, p Principal) {
			if p.Method != MethodDPoP {
				t.Errorf("method = %q", p.Method)
			}
		}},
		{name: "request with a query string, proof without", req: func(t *testing.T, e *authEnv) *http.Request {
			tok := e.bound(t)
			return request("POST", "/mcp?session=1", "Authorization", "DPoP "+tok, "DPoP", e.proof(t, e.key, "POST", authResource+"?session=1", tok, ""))
		}},
		{name: "proof iat at the edges of the window", req: func(t *testing.T, e *authEnv) *http.Request {
			tok := e.bound(t)
			e.mustAccept(t, request("POST", "/mcp", "Authorization", "DPoP "+tok, "DPoP", e.proof(t, e.shifted(e.key, -DefaultDPoPWindow), "POST", authResource, tok, "")))
			return request("POST", "/mcp", "Authorization", "DPoP "+tok, "DPoP", e.proof(t, e.shifted(e.key, DefaultDPoPSkew), "POST", authResource, tok, ""))
		}},
		{name: "same token, fresh proof each request", req: func(t *testing.T, e *authEnv) *http.Request {
			tok := e.bound(t)
			e.mustAccept(t, e.dpopRequest(t, tok))
			return e.dpopRequest(t, tok)
		}},
		{name: "unbound Bearer token, bearer mode", mode: ModeBearer, req: func(t *testing.T, e *authEnv) *http.Request {
			return request("POST", "/mcp", "Authorization", "Bearer "+e.unbound(t))
		}, check: func(t *testing.T, e *authEnv, r *http.Request, p Principal) {
			if p.Method != MethodBearer || p.KeyThumbprint != "" || p.Proof != nil || p.User != "alice" {
				t.Errorf("principal = %+v", p)
			}
		}},
		{name: "actor is the authenticated agent", req: func(t *testing.T, e *authEnv) *http.Request {
			e.opts.Agents = fakeAgents{id: "spiffe://example.org/agent"}
			tok, _ := e.mint(t, func(c *Claims) {
				c.Act = &Actor{Sub: "spiffe://example.org/agent", Act: &Actor{Sub: "spiffe://example.org/older"}}
			})
			return e.dpopRequest(t, tok)
		}, check: func(t *testing.T, e *authEnv, r *http.Request, p Principal) {
			if p.Agent != "spiffe://example.org/agent" || p.Act == nil || p.Act.Sub != p.Agent || p.Act.Act == nil || p.Act.Act.Sub != "spiffe://example.org/older" {
				t.Errorf("principal agent %q act %v", p.Agent, p.Act)
			}
		}},
		{name: "agent without an actor in the token", req: func(t *testing.T, e *authEnv) *http.Request {
			e.opts.Agents = fakeAgents{id: "spiffe://example.org/agent"}
			return e.dpopRequest(t, e.bound(t))
		}, check: func(t *testing.T, e *authEnv, r *http.Request, p Principal) {
			if p.Agent != "spiffe://example.org/agent" || p.Act != nil {
				t.Errorf("principal agent %q act %v", p.Agent, p.Act)
			}
		}},
		{name: "revocation checked and not revoked", req: func(t *testing.T, e *authEnv) *http.Request {
			e.opts.Revocations = &fakeRevocations{revoked: map[string]bool{authPublicURL + " other-jti": true}}
			return e.dpopRequest(t, e.bound(t))
		}, check: func(t *testing.T, e *authEnv, r *http.Request, p Principal) {
			f := e.opts.Revocations.(*fakeRevocations)
			if want := []string{authPublicURL + " " + p.TokenID}; !reflect.DeepEqual(f.asked, want) {
				t.Errorf("revocation asked %v, want %v", f.asked, want)
			}
		}},
		{name: "current nonce", req: func(t *testing.T, e *authEnv) *http.Request {
			e.opts.Nonces = NewNonces(time.Minute, e.clock.Now)
			tok := e.bound(t)
			return request("POST", "/mcp", "Authorization", "DPoP "+tok, "DPoP", e.proof(t, e.key, "POST", authResource, tok, e.opts.Nonces.Current()))
		}},
		{name: "nonce of the previous step", req: func(t *testing.T, e *authEnv) *http.Request {
			e.opts.Nonces = NewNonces(time.Minute, e.clock.Now)
			nonce := e.opts.Nonces.Current()
			e.clock.Add(time.Minute)
			tok := e.bound(t)
			return request("POST", "/mcp", "Authorization", "DPoP "+tok, "DPoP", e.proof(t, e.key, "POST", authResource, tok, nonce))
		}},
		{name: "certificate-bound token over mTLS", req: func(t *testing.T, e *authEnv) *http.Request {
			cert := selfSigned(t)
			tok, _ := e.mint(t, func(c *Claims) { c.Cnf = &Confirmation{X5T: CertThumbprint(cert.Raw)} })
			return withCert(request("POST", "/mcp", "Authorization", "Bearer "+tok), cert)
		}, check: func(t *testing.T, e *authEnv, r *http.Request, p Principal) {
			x5t := CertThumbprint(r.TLS.PeerCertificates[0].Raw)
			if p.Method != MethodMTLS || p.KeyThumbprint != x5t || p.CertThumbprint != x5t || p.Proof != nil {
				t.Errorf("principal = %+v", p)
			}
		}},
		{name: "DPoP- and certificate-bound token over mTLS", req: func(t *testing.T, e *authEnv) *http.Request {
			cert := selfSigned(t)
			tok, _ := e.mint(t, func(c *Claims) { c.Cnf.X5T = CertThumbprint(cert.Raw) })
			return withCert(e.dpopRequest(t, tok), cert)
		}, check: func(t *testing.T, e *authEnv, r *http.Request, p Principal) {
			if p.Method != MethodDPoP || p.KeyThumbprint != e.key.Thumbprint() || p.CertThumbprint == "" {
				t.Errorf("principal = %+v", p)
			}
		}},
		{name: "DPoP over TLS records the client certificate", req: func(t *testing.T, e *authEnv) *http.Request {
			return withCert(e.dpopRequest(t, e.bound(t)), selfSigned(t))
		}, check: func(t *testing.T, e *authEnv, r *http.Request, p Principal) {
			if p.Method != MethodDPoP || p.CertThumbprint == "" {
				t.Errorf("principal = %+v", p)
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			mode := tc.mode
			if mode == "" {
				mode = ModeDPoP
			}
			e := newAuthEnv(t, mode)
			r := tc.req(t, e)
			p := e.mustAccept(t, r)
			if p.User != "alice" || p.Issuer != authPublicURL || p.TokenID == "" {
				t.Errorf("principal = %+v", p)
			}
			if tc.check != nil {
				tc.check(t, e, r, p)
			}
		})
	}
}

func TestAuthenticateRevocationFailureFailsClosed(t *testing.T) {
	e := newAuthEnv(t, ModeDPoP)
	e.opts.Revocations = &fakeRevocations{err: errors.New("store down")}
	tok := e.bound(t)
	_, err := e.auth(t).Authenticate(e.dpopRequest(t, tok))
	if err == nil {
		t.Fatal("accepted while the revocation store is down")
	}
	rec := httptest.NewRecorder()
	e.a.WriteError(rec, err)
	if rec.Code != http.StatusServiceUnavailable || strings.Contains(rec.Body.String(), "store down") || strings.Contains(rec.Body.String(), tok) {
		t.Errorf("response %d %q", rec.Code, rec.Body.String())
	}
}

func TestAuthenticateIssuerKeysUnavailable(t *testing.T) {
	e := newAuthEnv(t, ModeDPoP)
	tokens, err := NewTokenVerifier(TokenOptions{
		Audience: authResource,
		Issuers:  map[string]KeySource{authPublicURL: &countingKeys{err: errors.New("dial tcp: refused")}},
		Now:      e.clock.Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	e.opts.Tokens = tokens
	tok := e.bound(t)
	_, err = e.auth(t).Authenticate(e.dpopRequest(t, tok))
	var ae *OAuthError
	if !errors.As(err, &ae) || ae.Status != http.StatusServiceUnavailable {
		t.Fatalf("err = %v, want 503", err)
	}
	rec := httptest.NewRecorder()
	e.a.WriteError(rec, err)
	if rec.Code != http.StatusServiceUnavailable || strings.Contains(rec.Body.String(), "dial tcp") {
		t.Errorf("response %d %q", rec.Code, rec.Body.String())
	}
}

func TestNewAuthenticatorRefuses(t *testing.T) {
	e := newAuthEnv(t, ModeDPoP)
	for name, mod := range map[string]func(*AuthOptions){
		"unknown mode":  func(o *AuthOptions) { o.Mode = "open" },
		"empty mode":    func(o *AuthOptions) { o.Mode = "" },
		"no tokens":     func(o *AuthOptions) { o.Tokens = nil },
		"no DPoP":       func(o *AuthOptions) { o.DPoP = nil },
		"no public URL": func(o *AuthOptions) { o.PublicURL = "" },
	} {
		o := e.opts
		mod(&o)
		if _, err := NewAuthenticator(o); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// challengeOf is one WWW-Authenticate value, built by hand.
func challengeOf(scheme string, params ...string) string {
	var parts []string
	for i := 0; i < len(params); i += 2 {
		parts = append(parts, params[i]+`="`+params[i+1]+`"`)
	}
	return scheme + " " + strings.Join(parts, ", ")
}

func TestWriteErrorChallenges(t *testing.T) {
	rm := []string{"resource_metadata", authMetadata}
	dpopPlain := challengeOf("DPoP", append([]string{"algs", authAlgs}, rm...)...)
	bearerPlain := challengeOf("Bearer", rm...)
	cases := []struct {
		name    string
		mode    string
		err     func(t *testing.T, e *authEnv) error
		status  int
		want    []string
		wantErr string
	}{
		{name: "no credentials, dpop mode", mode: ModeDPoP, err: func(t *testing.T, e *authEnv) error {
			_, err := e.auth(t).Authenticate(request("GET", "/mcp"))
			return err
		}, status: 401, want: []string{dpopPlain}},
		{name: "invalid_dpop_proof", mode: ModeDPoP, err: func(t *testing.T, e *authEnv) error {
			r := e.dpopRequest(t, e.bound(t))
			e.mustAccept(t, r)
			_, err := e.auth(t).Authenticate(r)
			return err
		}, status: 401, want: []string{
			challengeOf("DPoP", append([]string{"error", "invalid_dpop_proof", "error_description", "proof replayed", "algs", authAlgs}, rm...)...),
		}},
		{name: "use_dpop_nonce", mode: ModeDPoP, err: func(t *testing.T, e *authEnv) error {
			e.opts.Nonces = NewNonces(time.Minute, e.clock.Now)
			_, err := e.auth(t).Authenticate(e.dpopRequest(t, e.bound(t)))
			return err
		}, status: 401, want: []string{
			challengeOf("DPoP", append([]string{"error", "use_dpop_nonce", "error_description", "nonce required", "algs", authAlgs}, rm...)...),
		}},
		{name: "downgrade, dpop mode", mode: ModeDPoP, err: func(t *testing.T, e *authEnv) error {
			_, err := e.auth(t).Authenticate(request("GET", "/mcp", "Authorization", "Bearer "+e.bound(t)))
			return err
		}, status: 401, want: []string{
			dpopPlain,
			challengeOf("Bearer", append([]string{"error", "invalid_token", "error_description", "DPoP-bound token sent with the Bearer scheme"}, rm...)...),
		}},
		{name: "no credentials, bearer mode", mode: ModeBearer, err: func(t *testing.T, e *authEnv) error {
			_, err := e.auth(t).Authenticate(request("GET", "/mcp"))
			return err
		}, status: 401, want: []string{dpopPlain, bearerPlain}},
		{name: "Bearer error, bearer mode", mode: ModeBearer, err: func(t *testing.T, e *authEnv) error {
			_, err := e.auth(t).Authenticate(request("GET", "/mcp", "Authorization", "Bearer "+e.bound(t)))
			return err
		}, status: 401, want: []string{
			dpopPlain,
			challengeOf("Bearer", append([]string{"error", "invalid_token", "error_description", "DPoP-bound token sent with the Bearer scheme"}, rm...)...),
		}},
		{name: "DPoP error, bearer mode", mode: ModeBearer, err: func(t *testing.T, e *authEnv) error {
			tok := e.bound(t)
			_, err := e.auth(t).Authenticate(request("POST", "/mcp", "Authorization", "DPoP "+tok, "DPoP", e.proof(t, e.other, "POST", authResource, tok, "")))
			return err
		}, status: 401, want: []string{
			challengeOf("DPoP", append([]string{"error", "invalid_dpop_proof", "error_description", "proof key does not match the token's cnf.jkt", "algs", authAlgs}, rm...)...),
			bearerPlain,
		}},
		{name: "invalid_request", mode: ModeDPoP, err: func(t *testing.T, e *authEnv) error {
			_, err := e.auth(t).Authenticate(request("GET", "/mcp", "Authorization", "DPoP a", "Authorization", "DPoP b"))
			return err
		}, status: 400, want: []string{
			challengeOf("DPoP", append([]string{"error", "invalid_request", "error_description", "more than one Authorization header", "algs", authAlgs}, rm...)...),
		}},
		{name: "insufficient_scope", mode: ModeDPoP, err: func(t *testing.T, e *authEnv) error {
			p := e.mustAccept(t, e.dpopRequest(t, e.bound(t)))
			return RequireScopes(p, []string{"tools:call", "admin"})
		}, status: 403, want: []string{
			challengeOf("DPoP", append([]string{"error", "insufficient_scope", "error_description", "the token lacks a required scope", "scope", "tools:call admin", "algs", authAlgs}, rm...)...),
		}, wantErr: ErrCodeInsufficientScope},
		{name: "insufficient_scope, bearer mode", mode: ModeBearer, err: func(t *testing.T, e *authEnv) error {
			p := e.mustAccept(t, request("GET", "/mcp", "Authorization", "Bearer "+e.unbound(t)))
			return RequireScopes(p, []string{"admin"})
		}, status: 403, want: []string{
			dpopPlain,
			challengeOf("Bearer", append([]string{"error", "insufficient_scope", "error_description", "the token lacks a required scope", "scope", "admin"}, rm...)...),
		}, wantErr: ErrCodeInsufficientScope},
		{name: "not an OAuthError", mode: ModeDPoP, err: func(*testing.T, *authEnv) error {
			return errors.New("secret internal detail")
		}, status: 503, wantErr: "temporarily_unavailable"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newAuthEnv(t, tc.mode)
			err := tc.err(t, e)
			if err == nil {
				t.Fatal("no error")
			}
			rec := httptest.NewRecorder()
			e.auth(t).WriteError(rec, err)
			if rec.Code != tc.status {
				t.Errorf("status = %d, want %d", rec.Code, tc.status)
			}
			if got := rec.Header().Values("WWW-Authenticate"); !slices.Equal(got, tc.want) {
				t.Errorf("WWW-Authenticate =\n  %q\nwant\n  %q", got, tc.want)
			}
			if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type = %q", ct)
			}
			var body map[string]string
			if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
				t.Fatal(err)
			}
			if body["error"] == "" || body["error_description"] == "" {
				t.Errorf("body = %v", body)
			}
			if tc.wantErr != "" && body["error"] != tc.wantErr {
				t.Errorf("body error = %q, want %q", body["error"], tc.wantErr)
			}
			if strings.Contains(rec.Body.String(), "secret internal detail") {
				t.Error("internal error text in the body")
			}
		})
	}
}

func TestWriteErrorWithoutResourceMetadata(t *testing.T) {
	e := newAuthEnv(t, ModeDPoP)
	e.opts.ResourceMetadataURL = ""
	rec := httptest.NewRecorder()
	e.auth(t).WriteError(rec, &OAuthError{Status: http.StatusUnauthorized})
	if got, want := rec.Header().Values("WWW-Authenticate"), []string{`DPoP algs="` + authAlgs + `"`}; !slices.Equal(got, want) {
		t.Errorf("WWW-Authenticate = %q, want %q", got, want)
	}
}

func TestWriteErrorQuotesSafely(t *testing.T) {
	e := newAuthEnv(t, ModeDPoP)
	rec := httptest.NewRecorder()
	e.auth(t).WriteError(rec, &OAuthError{Status: 401, Code: ErrCodeInvalidToken, Description: "bad \"quote\" \\ and\r\nnewline"})
	got := rec.Header().Get("WWW-Authenticate")
	if strings.ContainsAny(got, "\r\n\\") || strings.Count(got, `"`)%2 != 0 || !strings.Contains(got, `error_description="bad quote  andnewline"`) {
		t.Errorf("WWW-Authenticate = %q", got)
	}
}

func TestRequireScopes(t *testing.T) {
	p := Principal{Scopes: []string{"tools:call", "tools:list"}}
	if err := RequireScopes(p, nil); err != nil {
		t.Errorf("no scopes needed: %v", err)
	}
	if err := RequireScopes(p, []string{"tools:list", "tools:call"}); err != nil {
		t.Errorf("held scopes: %v", err)
	}
	err := RequireScopes(p, []string{"tools:call", "admin"})
	var ae *OAuthError
	if !errors.As(err, &ae) || ae.Status != http.StatusForbidden || ae.Code != ErrCodeInsufficientScope || !slices.Equal(ae.Scope, []string{"tools:call", "admin"}) {
		t.Errorf("err = %+v", err)
	}
	if err := RequireScopes(Principal{Scopes: []string{"tools:call:extra"}}, []string{"tools:call"}); err == nil {
		t.Error("scope prefix accepted")
	}
}

func TestValidToken68(t *testing.T) {
	for s, want := range map[string]bool{
		"abc":                      true,
		"a-b.c_d~e+f/g":            true,
		"abc==":                    true,
		"":                         false,
		"=":                        false,
		"a=b":                      false,
		"a b":                      false,
		"a,b":                      false,
		"a\"b":                     false,
		"a\tb":                     false,
		"caf\u00e9":                false,
		"eyJ.eyJ.sig":              true,
		"abc=\x00":                 false,
		strings.Repeat("a", 1<<10): true,
	} {
		if got := validToken68(s); got != want {
			t.Errorf("validToken68(%q) = %v, want %v", s, got, want)
		}
	}
}

func BenchmarkAuthenticateDPoP(b *testing.B) {
	e := newAuthEnv(b, ModeDPoP)
	dpop, err := NewDPoPVerifier(DPoPOptions{Replay: store.NewMemoryReplay(1<<18, e.clock.Now), Now: e.clock.Now})
	if err != nil {
		b.Fatal(err)
	}
	e.opts.DPoP = dpop
	a := e.auth(b)
	tok, minted := "", 0
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		// The fake clock moves 1ms a request, so replay entries expire
		// (60k live at most) and the token is renewed before it does.
		e.clock.Add(time.Millisecond)
		if tok == "" || i-minted >= 100_000 {
			tok, minted = e.bound(b), i
		}
		if _, err := a.Authenticate(e.dpopRequest(b, tok)); err != nil {
			b.Fatal(err)
		}
	}
}

// TestRunTokenAgent: a DPoP-bound token the gateway itself minted for an
// agent's run names that agent (sag_agent = act.sub) and binds its
// workflow; the same claims from another issuer, sent as bearer, or with
// an agent other than the actor are refused as an unauthenticated actor.
func TestRunTokenAgent(t *testing.T) {
	run := func(c *Claims) {
		c.Act = &Actor{Sub: "agui-agent:helper"}
		c.RunAgent, c.RunWorkflow, c.RunIssuer = "agui-agent:helper", "wf-1", "https://idp.example"
	}
	e := newAuthEnv(t, ModeBearer)
	e.opts.SelfIssuer = authPublicURL
	tok, _ := e.mint(t, run)
	p := e.mustAccept(t, e.dpopRequest(t, tok))
	if p.Agent != "agui-agent:helper" || p.Workflow != "wf-1" || p.Issuer != "https://idp.example" || p.User != "alice" {
		t.Errorf("run token: agent %q workflow %q user %q of %q", p.Agent, p.Workflow, p.User, p.Issuer)
	}

	dpop := func(e *authEnv, tok string) *http.Request { return e.dpopRequest(t, tok) }
	for name, c := range map[string]struct {
		self string
		mod  func(*Claims)
		req  func(e *authEnv, tok string) *http.Request
	}{
		"agent is not the actor": {authPublicURL, func(c *Claims) { run(c); c.RunAgent = "agui-agent:other" }, dpop},
		"not the gateway's own":  {"https://other.example", run, dpop},
		"bearer": {authPublicURL, func(c *Claims) { run(c); c.Cnf = nil }, func(_ *authEnv, tok string) *http.Request {
			return request("POST", "/mcp", "Authorization", "Bearer "+tok)
		}},
	} {
		e := newAuthEnv(t, ModeBearer)
		e.opts.SelfIssuer = c.self
		tok, _ := e.mint(t, c.mod)
		if p, err := e.auth(t).Authenticate(c.req(e, tok)); err == nil || !strings.Contains(err.Error(), "actor") {
			t.Errorf("%s: %+v, %v; want the actor refused", name, p.Agent, err)
		}
	}
}
