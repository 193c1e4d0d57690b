package identity

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sag-gateway/sag/store"

	"github.com/sag-gateway/sag/internal/testutil"
)

func TestDPoPKeyProof(t *testing.T) {
	clock := testutil.NewClock(testNow, 0)
	k := newDPoPKeyAt(t, clock.Now)
	v := newTestVerifier(t, clock, nil)
	const tok = "access-token"
	proof, err := k.Proof("POST", testURL+"?q=1#frag", tok, "server-nonce")
	if err != nil {
		t.Fatal(err)
	}
	p, err := v.Verify(context.Background(), DPoPRequest{
		Proofs: []string{proof}, Method: "POST", URL: testURL, AccessToken: tok, Nonce: "server-nonce",
	})
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if p.JKT != k.Thumbprint() || p.HTM != "POST" || p.HTU != testURL || p.ATH != athOf(tok) || !p.IAT.Equal(testNow) {
		t.Errorf("proof = %+v", p)
	}
	// The signed htu has no query or fragment (RFC 9449 §4.2).
	var claims map[string]any
	payload, _ := b64.DecodeString(strings.Split(proof, ".")[1])
	if err := json.Unmarshal(payload, &claims); err != nil {
		t.Fatal(err)
	}
	if claims["htu"] != testURL || claims["nonce"] != "server-nonce" {
		t.Errorf("claims = %v", claims)
	}
	// The header carries typ, alg and the public key only.
	h := tokenHeaderOf(t, proof)
	jwkHdr, _ := h["jwk"].(map[string]any)
	if h["typ"] != "dpop+jwt" || h["alg"] != "ES256" || jwkHdr == nil {
		t.Errorf("header = %v", h)
	}
	for _, m := range privateJWKMembers {
		if _, ok := jwkHdr[m]; ok {
			t.Errorf("proof jwk carries %q", m)
		}
	}
	// Without a token there is no ath; every proof has a fresh jti.
	p1, _ := k.Proof("GET", testURL, "", "")
	p2, _ := k.Proof("GET", testURL, "", "")
	c1, c2 := proofClaimsOf(t, p1), proofClaimsOf(t, p2)
	if _, ok := c1["ath"]; ok {
		t.Error("ath without a token")
	}
	if _, ok := c1["nonce"]; ok {
		t.Error("nonce without a nonce")
	}
	if c1["jti"] == c2["jti"] {
		t.Error("two proofs share a jti")
	}
}

func proofClaimsOf(t *testing.T, proof string) map[string]any {
	t.Helper()
	payload, err := b64.DecodeString(strings.Split(proof, ".")[1])
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(payload, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func TestLoadOrCreateDPoPKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), "dpop.jwk")
	k1, err := LoadOrCreateDPoPKey(path)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode = %v", fi.Mode().Perm())
	}
	k2, err := LoadOrCreateDPoPKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if k1.Thumbprint() != k2.Thumbprint() {
		t.Error("reload gave another key")
	}
	// A key file with kid, alg and use (as Keys writes them) loads too.
	keysDir := t.TempDir()
	if _, err := LoadKeys(keysDir); err != nil {
		t.Fatal(err)
	}
	names, _ := filepath.Glob(filepath.Join(keysDir, "*.jwk"))
	if _, err := LoadOrCreateDPoPKey(names[0]); err != nil {
		t.Errorf("key file with kid/alg/use: %v", err)
	}
	for name, content := range map[string]string{
		"garbage":   "not a jwk",
		"public":    string(mustJSON(t, newSigner(t, "ES256").jwk)),
		"Ed25519":   string(mustJSON(t, publicJWKWithPrivate(t, newSigner(t, "Ed25519")))),
		"symmetric": `{"kty":"oct","k":"c2VjcmV0"}`,
	} {
		p := filepath.Join(t.TempDir(), "k.jwk")
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadOrCreateDPoPKey(p); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestDPoPKeyFromRefusesOtherCurves(t *testing.T) {
	k, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := DPoPKeyFrom(k); err == nil {
		t.Error("P-384 key accepted")
	}
}

// nonceServer is a resource server that demands a DPoP nonce: a request
// without the current nonce gets 401 use_dpop_nonce and a DPoP-Nonce. It
// checks proofs with a real DPoPVerifier and records what it saw.
type nonceServer struct {
	*httptest.Server
	v     *DPoPVerifier
	token string
	// rotate makes every response carry a new nonce, so no proof ever
	// has the current one.
	rotate bool

	mu       sync.Mutex
	nonce    string
	n        int
	requests int
	bodies   []string
	proofs   []*DPoPProof
	refusals []string
}

func newNonceServer(t *testing.T, token string) *nonceServer {
	t.Helper()
	v, err := NewDPoPVerifier(DPoPOptions{Replay: store.NewMemoryReplay(1024, nil)})
	if err != nil {
		t.Fatal(err)
	}
	s := &nonceServer{v: v, token: token, nonce: "nonce-0"}
	s.Server = httptest.NewServer(s)
	t.Cleanup(s.Close)
	return s
}

func (s *nonceServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.requests++
	s.bodies = append(s.bodies, string(body))
	if r.Header.Get("Authorization") != "DPoP "+s.token {
		s.refusals = append(s.refusals, "bad Authorization")
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	if s.rotate {
		s.n++
		s.nonce = "nonce-" + string(rune('a'+s.n%26))
	}
	p, err := s.v.Verify(r.Context(), DPoPRequest{
		Proofs: r.Header.Values("DPoP"), Method: r.Method, URL: s.URL + r.URL.Path,
		AccessToken: s.token, Nonce: s.nonce,
	})
	w.Header().Set("DPoP-Nonce", s.nonce)
	if err != nil {
		var de *OAuthError
		if !errors.As(err, &de) {
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		s.refusals = append(s.refusals, de.Description)
		w.Header().Set("WWW-Authenticate", de.Challenge(s.v.Algs()))
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	s.proofs = append(s.proofs, p)
	w.Write(body)
}

func (s *nonceServer) snapshot() (requests int, bodies []string, proofs []*DPoPProof, refusals []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.requests, append([]string(nil), s.bodies...), append([]*DPoPProof(nil), s.proofs...), append([]string(nil), s.refusals...)
}

func dpopClient(t *testing.T, k *DPoPKey, token string) *http.Client {
	t.Helper()
	return &http.Client{Transport: &DPoPTransport{
		Key:   k,
		Token: func(context.Context) (string, error) { return token, nil },
	}}
}

func TestDPoPTransportNonceRetry(t *testing.T) {
	const tok = "opaque-access-token"
	srv := newNonceServer(t, tok)
	k, err := NewDPoPKey()
	if err != nil {
		t.Fatal(err)
	}
	client := dpopClient(t, k, tok)
	payload := `{"jsonrpc":"2.0","id":1,"method":"tools/list"}`
	res, err := client.Post(srv.URL+"/mcp?session=1", "application/json", strings.NewReader(payload))
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusOK || string(got) != payload {
		t.Fatalf("response %d %q", res.StatusCode, got)
	}
	requests, bodies, proofs, refusals := srv.snapshot()
	if requests != 2 {
		t.Fatalf("%d requests, want 2 (one retry with the nonce)", requests)
	}
	if len(refusals) != 1 || refusals[0] != "nonce required" {
		t.Errorf("refusals = %q", refusals)
	}
	for i, b := range bodies {
		if b != payload {
			t.Errorf("request %d body = %q, want it intact", i, b)
		}
	}
	p := proofs[0]
	if p.HTM != "POST" || p.HTU != srv.URL+"/mcp" || p.ATH != athOf(tok) || p.JKT != k.Thumbprint() {
		t.Errorf("proof = %+v", p)
	}

	// The nonce is remembered for the origin: the next request needs no
	// retry.
	res, err = client.Get(srv.URL + "/mcp")
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
	requests, _, proofs, _ = srv.snapshot()
	if res.StatusCode != http.StatusOK || requests != 3 {
		t.Errorf("second request: status %d after %d requests, want 200 after 3", res.StatusCode, requests)
	}
	if p := proofs[len(proofs)-1]; p.HTM != "GET" || p.HTU != srv.URL+"/mcp" {
		t.Errorf("proof = %+v", p)
	}
}

func TestDPoPTransportRetriesOnce(t *testing.T) {
	const tok = "opaque-access-token"
	srv := newNonceServer(t, tok)
	srv.rotate = true
	k, err := NewDPoPKey()
	if err != nil {
		t.Fatal(err)
	}
	res, err := dpopClient(t, k, tok).Post(srv.URL+"/mcp", "application/json", bytes.NewReader([]byte(`{}`)))
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	requests, _, _, _ := srv.snapshot()
	if res.StatusCode != http.StatusUnauthorized || requests != 2 {
		t.Errorf("status %d after %d requests, want 401 after 2", res.StatusCode, requests)
	}
}

func TestDPoPTransportBodyNotReplayable(t *testing.T) {
	const tok = "opaque-access-token"
	srv := newNonceServer(t, tok)
	k, err := NewDPoPKey()
	if err != nil {
		t.Fatal(err)
	}
	// An io.Reader the client cannot rewind: no GetBody.
	req, err := http.NewRequest("POST", srv.URL+"/mcp", io.NopCloser(strings.NewReader(`{"once":true}`)))
	if err != nil {
		t.Fatal(err)
	}
	if req.GetBody != nil {
		t.Fatal("request has GetBody")
	}
	res, err := dpopClient(t, k, tok).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	requests, _, _, _ := srv.snapshot()
	if res.StatusCode != http.StatusUnauthorized || requests != 1 {
		t.Errorf("status %d after %d requests, want the 401 after 1", res.StatusCode, requests)
	}
	if res.Header.Get("DPoP-Nonce") == "" {
		t.Error("the 401 lost its DPoP-Nonce")
	}
}

func TestDPoPTransportTokenError(t *testing.T) {
	k, err := NewDPoPKey()
	if err != nil {
		t.Fatal(err)
	}
	tr := &DPoPTransport{Key: k, Token: func(context.Context) (string, error) { return "", errors.New("no token") }}
	req := httptest.NewRequest("GET", "http://127.0.0.1:1/mcp", nil)
	if _, err := tr.RoundTrip(req); err == nil || !strings.Contains(err.Error(), "no token") {
		t.Errorf("err = %v", err)
	}
}

// TestDPoPTransportAgainstAuthenticator runs the client transport against
// the gateway's Authenticator with server nonces, end to end.
func TestDPoPTransportAgainstAuthenticator(t *testing.T) {
	keys, err := LoadKeys(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu     sync.Mutex
		a      *Authenticator
		seen   []Principal
		status []int
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		p, err := a.Authenticate(r)
		if err != nil {
			var ae *OAuthError
			if errors.As(err, &ae) {
				status = append(status, ae.Status)
			} else {
				status = append(status, 500)
			}
			a.WriteError(w, err)
			return
		}
		status = append(status, 200)
		seen = append(seen, p)
		io.Copy(w, r.Body)
	}))
	defer srv.Close()
	tokens, err := NewTokenVerifier(TokenOptions{Audience: srv.URL + "/mcp", Issuers: map[string]KeySource{srv.URL: StaticKeys{Set: keys.PublicSet}}})
	if err != nil {
		t.Fatal(err)
	}
	dpop, err := NewDPoPVerifier(DPoPOptions{Replay: store.NewMemoryReplay(1024, nil)})
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	a, err = NewAuthenticator(AuthOptions{Mode: ModeBearer, PublicURL: srv.URL, Tokens: tokens, DPoP: dpop, Nonces: NewNonces(time.Minute, nil)})
	mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	k, err := NewDPoPKey()
	if err != nil {
		t.Fatal(err)
	}
	iss := &Issuer{URL: srv.URL, Keys: keys}
	tok, _, err := iss.Mint(Claims{Subject: "alice", Audience: Audience{srv.URL + "/mcp"}, Cnf: &Confirmation{JKT: k.Thumbprint()}}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	res, err := dpopClient(t, k, tok).Post(srv.URL+"/mcp", "application/json", strings.NewReader(`{"a":1}`))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	mu.Lock()
	defer mu.Unlock()
	if res.StatusCode != http.StatusOK || string(body) != `{"a":1}` {
		t.Fatalf("response %d %q (statuses %v)", res.StatusCode, body, status)
	}
	if len(status) != 2 || status[0] != 401 {
		t.Errorf("statuses = %v, want a 401 use_dpop_nonce then 200", status)
	}
	if p := seen[0]; p.Method != MethodDPoP || p.KeyThumbprint != k.Thumbprint() || p.User != "alice" {
		t.Errorf("principal = %+v", p)
	}
}

// scriptedTransport is a fake http.RoundTripper: it reads and records each
// request body and answers from a script, with no network in between (so
// net/http cannot rewind a body on the transport's behalf).
type scriptedTransport struct {
	mu       sync.Mutex
	answers  []*http.Response
	requests []*http.Request
	bodies   []string
}

func (s *scriptedTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	var body []byte
	if r.Body != nil {
		body, _ = io.ReadAll(r.Body)
		r.Body.Close()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.requests = append(s.requests, r)
	s.bodies = append(s.bodies, string(body))
	res := s.answers[0]
	s.answers = s.answers[1:]
	res.Request = r
	return res, nil
}

func scriptedResponse(status int, hdr ...string) *http.Response {
	res := &http.Response{StatusCode: status, Header: http.Header{}, Body: io.NopCloser(strings.NewReader("{}"))}
	for i := 0; i < len(hdr); i += 2 {
		res.Header.Add(hdr[i], hdr[i+1])
	}
	return res
}

func TestDPoPTransportResendsBody(t *testing.T) {
	const tok = "opaque-access-token"
	clock := testutil.NewClock(testNow, 0)
	k := newDPoPKeyAt(t, clock.Now)
	base := &scriptedTransport{answers: []*http.Response{
		scriptedResponse(401, "WWW-Authenticate", `DPoP error="use_dpop_nonce", error_description="nonce required"`, "DPoP-Nonce", "n-1"),
		scriptedResponse(200),
	}}
	tr := &DPoPTransport{Base: base, Key: k, Token: func(context.Context) (string, error) { return tok, nil }}
	const payload = `{"jsonrpc":"2.0","id":7}`
	req, err := http.NewRequest("POST", testURL+"?a=b", strings.NewReader(payload))
	if err != nil {
		t.Fatal(err)
	}
	res, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 200 || len(base.requests) != 2 {
		t.Fatalf("status %d after %d requests", res.StatusCode, len(base.requests))
	}
	if base.bodies[0] != payload || base.bodies[1] != payload {
		t.Errorf("bodies = %q, want the payload twice", base.bodies)
	}
	// The caller's request is not modified (http.RoundTripper contract).
	if req.Header.Get("Authorization") != "" || req.Header.Get("DPoP") != "" {
		t.Errorf("caller's request changed: %v", req.Header)
	}
	// Each try has its own proof; the retry carries the nonce; both verify.
	v := newTestVerifier(t, clock, nil)
	for i, r := range base.requests {
		if r.Header.Get("Authorization") != "DPoP "+tok {
			t.Errorf("try %d: Authorization = %q", i, r.Header.Get("Authorization"))
		}
		nonce := ""
		if i == 1 {
			nonce = "n-1"
		}
		p, err := v.Verify(context.Background(), DPoPRequest{Proofs: r.Header.Values("DPoP"), Method: "POST", URL: testURL, AccessToken: tok, Nonce: nonce})
		if err != nil {
			t.Errorf("try %d: proof: %v", i, err)
			continue
		}
		if p.HTM != "POST" || p.HTU != testURL || p.ATH != athOf(tok) || p.JKT != k.Thumbprint() {
			t.Errorf("try %d: proof = %+v", i, p)
		}
	}
}

func TestDPoPTransportNoRetryOnOtherErrors(t *testing.T) {
	k, err := NewDPoPKey()
	if err != nil {
		t.Fatal(err)
	}
	base := &scriptedTransport{answers: []*http.Response{
		scriptedResponse(401, "WWW-Authenticate", `DPoP error="invalid_dpop_proof", error_description="proof replayed"`, "DPoP-Nonce", "n-1"),
	}}
	tr := &DPoPTransport{Base: base, Key: k, Token: func(context.Context) (string, error) { return "tok", nil }}
	res, err := tr.RoundTrip(httptest.NewRequest("GET", testURL, nil))
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 401 || len(base.requests) != 1 {
		t.Errorf("status %d after %d requests, want 401 after 1", res.StatusCode, len(base.requests))
	}
}
