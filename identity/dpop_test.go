package identity

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"errors"
	"math/big"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwk"

	"github.com/sag-gateway/sag/store"

	"github.com/sag-gateway/sag/internal/testutil"
)

const (
	testURL   = "https://gw.example.com/mcp"
	testToken = "eyJhbGciOiJFUzI1NiJ9.test-access-token.sig"
)

var testNow = time.Unix(1_800_000_000, 0)

func athOf(token string) string {
	sum := sha256.Sum256([]byte(token))
	return b64url(sum[:])
}

func newTestVerifier(t testing.TB, clock *testutil.Clock, mod func(*DPoPOptions)) *DPoPVerifier {
	t.Helper()
	o := DPoPOptions{Replay: store.NewMemoryReplay(1024, clock.Now), Now: clock.Now}
	if mod != nil {
		mod(&o)
	}
	v, err := NewDPoPVerifier(o)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func randJTI(t testing.TB) string {
	t.Helper()
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b64url(b)
}

// validClaims are the claims of a proof for POST testURL with testToken.
func validClaims(t testing.TB) map[string]any {
	return map[string]any{
		"jti": randJTI(t),
		"htm": "POST",
		"htu": testURL,
		"iat": testNow.Unix(),
		"ath": athOf(testToken),
	}
}

func validRequest(proof string) DPoPRequest {
	return DPoPRequest{Proofs: []string{proof}, Method: "POST", URL: testURL, AccessToken: testToken}
}

func with(m map[string]any, kv ...any) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = v
	}
	for i := 0; i < len(kv); i += 2 {
		if kv[i+1] == nil {
			delete(out, kv[i].(string))
		} else {
			out[kv[i].(string)] = kv[i+1]
		}
	}
	return out
}

// rfc9449JKT is the thumbprint of the key of the RFC 9449 example proofs (figure 9).
const rfc9449JKT = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"

func TestDPoPRFC9449Examples(t *testing.T) {
	// The proofs of RFC 9449 figures 5, 7 and 13, unwrapped (RFC 8792).
	// Figure 9 gives the cnf.jkt of their key; figure 14 the ath of the
	// access token of figure 13.
	const hdr = "eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6IkVTMjU2IiwiandrIjp7Imt0eSI6IkVDIiwieCI6Imw4dEZyaHgtMzR0VjNoUklDUkRZOXpDa0RscEJoRjQyVVFVZldWQVdCRnMiLCJ5IjoiOVZFNGpmX09rX282NHpiVFRsY3VOSmFqSG10NnY5VERWclUwQ2R2R1JEQSIsImNydiI6IlAtMjU2In19"
	cases := []struct {
		name, proof, method, url, token string
		iat                             int64
		ath                             string
	}{
		{
			name:   "figure 5 token request",
			proof:  hdr + ".eyJqdGkiOiItQndDM0VTYzZhY2MybFRjIiwiaHRtIjoiUE9TVCIsImh0dSI6Imh0dHBzOi8vc2VydmVyLmV4YW1wbGUuY29tL3Rva2VuIiwiaWF0IjoxNTYyMjYyNjE2fQ.2-GxA6T8lP4vfrg8v-FdWP0A0zdrj8igiMLvqRMUvwnQg4PtFLbdLXiOSsX0x7NVY-FNyJK70nfbV37xRZT3Lg",
			method: "POST", url: "https://server.example.com/token", iat: 1562262616,
		},
		{
			name:   "figure 7 refresh request",
			proof:  hdr + ".eyJqdGkiOiItQndDM0VTYzZhY2MybFRjIiwiaHRtIjoiUE9TVCIsImh0dSI6Imh0dHBzOi8vc2VydmVyLmV4YW1wbGUuY29tL3Rva2VuIiwiaWF0IjoxNTYyMjY1Mjk2fQ.pAqut2IRDm_De6PR93SYmGBPXpwrAk90e8cP2hjiaG5QsGSuKDYW7_X620BxqhvYC8ynrrvZLTk41mSRroapUA",
			method: "POST", url: "https://server.example.com/token", iat: 1562265296,
		},
		{
			name:   "figure 13 protected resource request",
			proof:  hdr + ".eyJqdGkiOiJlMWozVl9iS2ljOC1MQUVCIiwiaHRtIjoiR0VUIiwiaHR1IjoiaHR0cHM6Ly9yZXNvdXJjZS5leGFtcGxlLm9yZy9wcm90ZWN0ZWRyZXNvdXJjZSIsImlhdCI6MTU2MjI2MjYxOCwiYXRoIjoiZlVIeU8ycjJaM0RaNTNFc05yV0JiMHhXWG9hTnk1OUlpS0NBcWtzbVFFbyJ9.2oW9RP35yRqzhrtNP86L-Ey71EOptxRimPPToA1plemAgR6pxHF8y6-yqyVnmcw6Fy1dqd-jfxSYoMxhAJpLjA",
			method: "GET", url: "https://resource.example.org/protectedresource", iat: 1562262618,
			token: "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU", ath: "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			clock := testutil.NewClock(time.Unix(tc.iat, 0), 0)
			v := newTestVerifier(t, clock, nil)
			req := DPoPRequest{Proofs: []string{tc.proof}, Method: tc.method, URL: tc.url, AccessToken: tc.token}
			p, err := v.Verify(context.Background(), req)
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			if p.JKT != rfc9449JKT {
				t.Errorf("JKT = %s, want %s (RFC 9449 figure 9)", p.JKT, rfc9449JKT)
			}
			if p.ATH != tc.ath {
				t.Errorf("ATH = %q, want %q", p.ATH, tc.ath)
			}
			if !p.IAT.Equal(time.Unix(tc.iat, 0)) || p.HTM != tc.method || p.HTU != tc.url {
				t.Errorf("proof = %+v", p)
			}
			// The same proof again is a replay.
			if _, err := v.Verify(context.Background(), req); !isDPoPError(err, ErrCodeInvalidDPoPProof, "proof replayed") {
				t.Errorf("replay: err = %v", err)
			}
			// And it is too old a minute later.
			clock.Add(61 * time.Second)
			v2 := newTestVerifier(t, clock, nil)
			if _, err := v2.Verify(context.Background(), req); !isDPoPError(err, ErrCodeInvalidDPoPProof, "proof too old") {
				t.Errorf("late: err = %v", err)
			}
		})
	}
}

func isDPoPError(err error, code, desc string) bool {
	var de *OAuthError
	return errors.As(err, &de) && de.Code == code && de.Description == desc
}

func TestDPoPAcceptsAlgs(t *testing.T) {
	for _, alg := range []string{"ES256", "EdDSA", "Ed25519", "RS256", "PS256"} {
		t.Run(alg, func(t *testing.T) {
			clock := testutil.NewClock(testNow, 0)
			v := newTestVerifier(t, clock, nil)
			s := newSigner(t, alg)
			claims := validClaims(t)
			p, err := v.Verify(context.Background(), validRequest(s.sign(t, nil, claims)))
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			k, err := jwk.Import(s.priv.Public())
			if err != nil {
				t.Fatal(err)
			}
			want, err := JWKThumbprint(k)
			if err != nil {
				t.Fatal(err)
			}
			if p.JKT != want || p.JTI != claims["jti"] || p.ATH != athOf(testToken) || p.HTU != testURL || p.HTM != "POST" {
				t.Errorf("proof = %+v, want jkt %s", p, want)
			}
		})
	}
}

func TestDPoPOnlyConfiguredAlgs(t *testing.T) {
	clock := testutil.NewClock(testNow, 0)
	v := newTestVerifier(t, clock, func(o *DPoPOptions) { o.Algs = []string{"ES256"} })
	s := newSigner(t, "RS256")
	_, err := v.Verify(context.Background(), validRequest(s.sign(t, nil, validClaims(t))))
	if !isDPoPError(err, ErrCodeInvalidDPoPProof, "unsupported alg") {
		t.Fatalf("err = %v", err)
	}
	// EdDSA brings its RFC 9864 name along.
	v = newTestVerifier(t, clock, func(o *DPoPOptions) { o.Algs = []string{"EdDSA"} })
	if got := strings.Join(v.Algs(), " "); got != "EdDSA Ed25519" {
		t.Errorf("Algs = %q", got)
	}
	if _, err := v.Verify(context.Background(), validRequest(newSigner(t, "Ed25519").sign(t, nil, validClaims(t)))); err != nil {
		t.Errorf("Ed25519: %v", err)
	}
}

func TestNewDPoPVerifierRefuses(t *testing.T) {
	clock := testutil.NewClock(testNow, 0)
	replay := store.NewMemoryReplay(10, clock.Now)
	for _, o := range []DPoPOptions{
		{},
		{Replay: replay, Algs: []string{"HS256"}},
		{Replay: replay, Algs: []string{"none"}},
		{Replay: replay, Algs: []string{"ES256", "RSA-OAEP"}},
		{Replay: replay, Window: -time.Second},
	} {
		if _, err := NewDPoPVerifier(o); err == nil {
			t.Errorf("NewDPoPVerifier(%+v) accepted", o)
		}
	}
	v, err := NewDPoPVerifier(DPoPOptions{Replay: replay})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(v.Algs(), " "); got != "ES256 EdDSA Ed25519 PS256 RS256" {
		t.Errorf("default Algs = %q", got)
	}
}

func TestDPoPHTUNormalisation(t *testing.T) {
	cases := []struct{ htu, url string }{
		{"HTTPS://GW.Example.COM/mcp", testURL},
		{"https://gw.example.com:443/mcp", testURL},
		{"https://gw.example.com/mcp?x=1#frag", testURL}, // §4.3 point 9: query and fragment ignored
		{testURL, "https://gw.example.com:443/mcp?session=abc"},
		{"https://gw.example.com/m%63p", testURL}, // unreserved percent-encoding decoded
		{"http://gw.example.com:80/a%2fb", "http://gw.example.com/a%2Fb"},
		{"https://[2001:DB8::1]:443/mcp", "https://[2001:db8::1]/mcp"},
		{"https://gw.example.com", "https://gw.example.com/"},
	}
	for _, tc := range cases {
		clock := testutil.NewClock(testNow, 0)
		v := newTestVerifier(t, clock, nil)
		s := newSigner(t, "ES256")
		req := validRequest(s.sign(t, nil, with(validClaims(t), "htu", tc.htu)))
		req.URL = tc.url
		if _, err := v.Verify(context.Background(), req); err != nil {
			t.Errorf("htu %q at %q: %v", tc.htu, tc.url, err)
		}
	}
}

func TestDPoPNonceAccepted(t *testing.T) {
	clock := testutil.NewClock(testNow, 0)
	v := newTestVerifier(t, clock, nil)
	s := newSigner(t, "ES256")
	req := validRequest(s.sign(t, nil, with(validClaims(t), "nonce", "n-1")))
	req.Nonce = "n-1"
	if _, err := v.Verify(context.Background(), req); err != nil {
		t.Fatal(err)
	}
}

func TestDPoPWindowEdges(t *testing.T) {
	s := newSigner(t, "ES256")
	for _, d := range []time.Duration{-60 * time.Second, 5 * time.Second} {
		clock := testutil.NewClock(testNow, 0)
		v := newTestVerifier(t, clock, nil)
		claims := with(validClaims(t), "iat", testNow.Add(d).Unix())
		if _, err := v.Verify(context.Background(), validRequest(s.sign(t, nil, claims))); err != nil {
			t.Errorf("iat now%+v: %v", d, err)
		}
	}
}

func TestDPoPReplayCacheFailureRefuses(t *testing.T) {
	clock := testutil.NewClock(testNow, 0)
	v := newTestVerifier(t, clock, func(o *DPoPOptions) { o.Replay = store.NewMemoryReplay(1, clock.Now) })
	s := newSigner(t, "ES256")
	if _, err := v.Verify(context.Background(), validRequest(s.sign(t, nil, validClaims(t)))); err != nil {
		t.Fatal(err)
	}
	_, err := v.Verify(context.Background(), validRequest(s.sign(t, nil, validClaims(t))))
	var de *OAuthError
	if err == nil || errors.As(err, &de) || !errors.Is(err, store.ErrReplayCacheFull) {
		t.Fatalf("err = %v, want a server-side store.ErrReplayCacheFull", err)
	}
}

func TestDPoPChallenge(t *testing.T) {
	e := &OAuthError{Code: ErrCodeInvalidDPoPProof, Description: `bad "proof"\` + "\n"}
	got := e.Challenge([]string{"ES256", "EdDSA"})
	want := `DPoP error="invalid_dpop_proof", error_description="bad proof", algs="ES256 EdDSA"`
	if got != want {
		t.Errorf("Challenge = %s\nwant        %s", got, want)
	}
	e = &OAuthError{Code: ErrCodeUseDPoPNonce}
	if got := e.Challenge(nil); got != `DPoP error="use_dpop_nonce"` {
		t.Errorf("Challenge = %s", got)
	}
}

// TestDPoPErrorsDoNotLeak checks that no refusal repeats the proof or token.
func TestDPoPErrorsDoNotLeak(t *testing.T) {
	clock := testutil.NewClock(testNow, 0)
	v := newTestVerifier(t, clock, nil)
	s := newSigner(t, "ES256")
	proof := s.sign(t, nil, with(validClaims(t), "ath", "wrong"))
	_, err := v.Verify(context.Background(), validRequest(proof))
	var de *OAuthError
	if !errors.As(err, &de) {
		t.Fatalf("err = %v", err)
	}
	for _, s := range []string{de.Description, de.Error(), de.Challenge(v.Algs())} {
		if strings.Contains(s, testToken) || strings.Contains(s, proof) || strings.Contains(s, "wrong") {
			t.Errorf("leak in %q", s)
		}
	}
}

type attack struct {
	name string
	// prime, if set, is a request that must be accepted first.
	prime func(t *testing.T, s *testSigner) DPoPRequest
	// req builds the attacking request; prime's request is passed in.
	req  func(t *testing.T, s *testSigner, primed DPoPRequest) DPoPRequest
	code string
	desc string
}

func proofReq(f func(t *testing.T, s *testSigner) string) func(*testing.T, *testSigner, DPoPRequest) DPoPRequest {
	return func(t *testing.T, s *testSigner, _ DPoPRequest) DPoPRequest { return validRequest(f(t, s)) }
}

func claimsReq(kv ...any) func(*testing.T, *testSigner, DPoPRequest) DPoPRequest {
	return proofReq(func(t *testing.T, s *testSigner) string { return s.sign(t, nil, with(validClaims(t), kv...)) })
}

func headerReq(kv ...any) func(*testing.T, *testSigner, DPoPRequest) DPoPRequest {
	return proofReq(func(t *testing.T, s *testSigner) string {
		h := map[string]any{}
		for i := 0; i < len(kv); i += 2 {
			h[kv[i].(string)] = kv[i+1]
		}
		return s.sign(t, h, validClaims(t))
	})
}

func primeValid(t *testing.T, s *testSigner) DPoPRequest {
	return validRequest(s.sign(t, nil, validClaims(t)))
}

func replayWith(mod func(*DPoPRequest)) func(*testing.T, *testSigner, DPoPRequest) DPoPRequest {
	return func(_ *testing.T, _ *testSigner, r DPoPRequest) DPoPRequest {
		mod(&r)
		return r
	}
}

func attacks() []attack {
	const bad = ErrCodeInvalidDPoPProof
	return []attack{
		{name: "replay", prime: primeValid, req: replayWith(func(*DPoPRequest) {}), code: bad, desc: "proof replayed"},
		// The method is compared exactly, so a lowercase replay fails on htm;
		// the replay key leaves the method out, so it would fail on jti too.
		{name: "replay with htm case change", prime: primeValid, req: replayWith(func(r *DPoPRequest) { r.Method = "post" }), code: bad, desc: "htm does not match the request method"},
		{name: "replay with query added to the URL", prime: primeValid, req: replayWith(func(r *DPoPRequest) { r.URL = testURL + "?x=1" }), code: bad, desc: "proof replayed"},
		{name: "replay with fragment and host case", prime: primeValid, req: replayWith(func(r *DPoPRequest) { r.URL = "https://GW.example.com:443/mcp#f" }), code: bad, desc: "proof replayed"},
		{name: "replay with query in htu", prime: func(t *testing.T, s *testSigner) DPoPRequest {
			return validRequest(s.sign(t, nil, with(validClaims(t), "htu", testURL+"?a=1")))
		}, req: replayWith(func(r *DPoPRequest) { r.URL = testURL + "?a=2" }), code: bad, desc: "proof replayed"},
		{name: "htu scheme mismatch", req: claimsReq("htu", "http://gw.example.com/mcp"), code: bad, desc: "htu does not match the request URI"},
		{name: "htu host mismatch", req: claimsReq("htu", "https://evil.example.com/mcp"), code: bad, desc: "htu does not match the request URI"},
		{name: "htu port mismatch", req: claimsReq("htu", "https://gw.example.com:8443/mcp"), code: bad, desc: "htu does not match the request URI"},
		{name: "htu path mismatch", req: claimsReq("htu", "https://gw.example.com/admin"), code: bad, desc: "htu does not match the request URI"},
		{name: "htu path case", req: claimsReq("htu", "https://gw.example.com/MCP"), code: bad, desc: "htu does not match the request URI"},
		{name: "htu with userinfo", req: claimsReq("htu", "https://u@gw.example.com/mcp"), code: bad, desc: "malformed htu"},
		{name: "htu relative", req: claimsReq("htu", "/mcp"), code: bad, desc: "malformed htu"},
		{name: "htm mismatch", req: claimsReq("htm", "GET"), code: bad, desc: "htm does not match the request method"},
		{name: "stale iat", req: claimsReq("iat", testNow.Add(-61*time.Second).Unix()), code: bad, desc: "proof too old"},
		{name: "future iat", req: claimsReq("iat", testNow.Add(6*time.Second).Unix()), code: bad, desc: "proof issued in the future"},
		{name: "iat as string", req: claimsReq("iat", "1800000000"), code: bad, desc: "malformed iat"},
		{name: "missing ath", req: claimsReq("ath", nil), code: bad, desc: "missing ath"},
		{name: "wrong ath", req: claimsReq("ath", athOf("another-token")), code: bad, desc: "ath does not match the access token"},
		{name: "ath without token", req: func(t *testing.T, s *testSigner, _ DPoPRequest) DPoPRequest {
			r := validRequest(s.sign(t, nil, validClaims(t)))
			r.AccessToken = ""
			return r
		}, code: bad, desc: "ath without an access token"},
		{name: "alg none", req: proofReq(func(t *testing.T, s *testSigner) string {
			return b64url(mustJSON(t, map[string]any{"typ": "dpop+jwt", "alg": "none", "jwk": s.jwk})) + "." + b64url(mustJSON(t, validClaims(t))) + ".AAAA"
		}), code: bad, desc: "unsupported alg"},
		{name: "alg none with empty signature", req: proofReq(func(t *testing.T, s *testSigner) string {
			return b64url(mustJSON(t, map[string]any{"typ": "dpop+jwt", "alg": "none", "jwk": s.jwk})) + "." + b64url(mustJSON(t, validClaims(t))) + "."
		}), code: bad, desc: "malformed proof"},
		{name: "missing alg", req: headerReq("alg", nil), code: bad, desc: "missing alg"},
		{name: "HS256 with oct jwk", req: proofReq(func(t *testing.T, s *testSigner) string {
			secret := []byte("0123456789abcdef0123456789abcdef")
			return hs256(t, map[string]any{"typ": "dpop+jwt", "alg": "HS256", "jwk": map[string]any{"kty": "oct", "k": b64url(secret)}}, validClaims(t), secret)
		}), code: bad, desc: "unsupported alg"},
		{name: "oct jwk under an asymmetric alg", req: headerReq("jwk", map[string]any{"kty": "oct", "k": "c2VjcmV0"}), code: bad, desc: "symmetric jwk not allowed"},
		{name: "HS256 signed with the public key", req: proofReq(func(t *testing.T, s *testSigner) string {
			der, err := x509.MarshalPKIXPublicKey(s.priv.Public())
			if err != nil {
				t.Fatal(err)
			}
			return hs256(t, map[string]any{"typ": "dpop+jwt", "alg": "HS256", "jwk": s.jwk}, validClaims(t), der)
		}), code: bad, desc: "unsupported alg"},
		{name: "HS256 keyed with the jwk JSON", req: proofReq(func(t *testing.T, s *testSigner) string {
			return hs256(t, map[string]any{"typ": "dpop+jwt", "alg": "HS256", "jwk": s.jwk}, validClaims(t), mustJSON(t, s.jwk))
		}), code: bad, desc: "unsupported alg"},
		{name: "jwk with private key", req: proofReq(func(t *testing.T, s *testSigner) string {
			return s.sign(t, map[string]any{"jwk": publicJWKWithPrivate(t, s)}, validClaims(t))
		}), code: bad, desc: "jwk contains a private key"},
		{name: "jwk of another type than alg", req: proofReq(func(t *testing.T, s *testSigner) string {
			ed := newSigner(t, "Ed25519")
			return s.sign(t, map[string]any{"jwk": ed.jwk}, validClaims(t))
		}), code: bad, desc: "jwk does not suit alg"},
		{name: "RSA key under 2048 bits", req: proofReq(func(t *testing.T, _ *testSigner) string {
			k, err := rsa.GenerateKey(rand.Reader, 1024)
			if err != nil {
				t.Fatal(err)
			}
			e := big.NewInt(int64(k.E))
			rs := &testSigner{alg: "RS256", priv: k, jwk: map[string]any{"kty": "RSA", "n": b64url(k.N.Bytes()), "e": b64url(e.Bytes())}}
			return rs.sign(t, nil, validClaims(t))
		}), code: bad, desc: "malformed jwk"}, // jwx refuses it at parse; isRSA would too
		{name: "typ jwt", req: headerReq("typ", "JWT"), code: bad, desc: "typ must be dpop+jwt"},
		{name: "typ at+jwt", req: headerReq("typ", "at+jwt"), code: bad, desc: "typ must be dpop+jwt"},
		{name: "missing typ", req: headerReq("typ", nil), code: bad, desc: "typ must be dpop+jwt"},
		{name: "crit header", req: headerReq("crit", []string{"exp"}), code: bad, desc: "crit not supported"},
		{name: "b64 header", req: headerReq("b64", true), code: bad, desc: "b64 not supported"},
		// JOSE names are case-sensitive: a proof without "alg" has no alg,
		// whatever encoding/json would make of "ALG".
		{name: "alg spelled ALG", req: headerReq("alg", nil, "ALG", "ES256"), code: bad, desc: "malformed proof header"},
		{name: "htm spelled HTM", req: claimsReq("htm", nil, "HTM", "POST"), code: bad, desc: "malformed proof claims"},
		{name: "two DPoP headers", req: func(t *testing.T, s *testSigner, _ DPoPRequest) DPoPRequest {
			r := validRequest(s.sign(t, nil, validClaims(t)))
			r.Proofs = append(r.Proofs, s.sign(t, nil, validClaims(t)))
			return r
		}, code: bad, desc: "more than one DPoP header"},
		{name: "two proofs folded into one header", req: func(t *testing.T, s *testSigner, _ DPoPRequest) DPoPRequest {
			return validRequest(s.sign(t, nil, validClaims(t)) + ", " + s.sign(t, nil, validClaims(t)))
		}, code: bad, desc: "malformed proof"},
		{name: "no DPoP header", req: func(t *testing.T, s *testSigner, _ DPoPRequest) DPoPRequest {
			r := validRequest("")
			r.Proofs = nil
			return r
		}, code: bad, desc: "missing DPoP header"},
		{name: "oversized proof", req: claimsReq("pad", strings.Repeat("x", 8<<10)), code: bad, desc: "proof too large"},
		{name: "oversized jti", req: claimsReq("jti", strings.Repeat("j", 257)), code: bad, desc: "jti too long"},
		{name: "missing jti", req: claimsReq("jti", nil), code: bad, desc: "missing jti"},
		{name: "empty jti", req: claimsReq("jti", ""), code: bad, desc: "missing jti"},
		{name: "missing htm", req: claimsReq("htm", nil), code: bad, desc: "missing htm"},
		{name: "missing htu", req: claimsReq("htu", nil), code: bad, desc: "missing htu"},
		{name: "missing iat", req: claimsReq("iat", nil), code: bad, desc: "missing iat"},
		{name: "JSON-serialized JWS", req: proofReq(func(t *testing.T, s *testSigner) string {
			parts := strings.Split(s.sign(t, nil, validClaims(t)), ".")
			return string(mustJSON(t, map[string]string{"protected": parts[0], "payload": parts[1], "signature": parts[2]}))
		}), code: bad, desc: "proof must use JWS compact serialization"},
		{name: "JSON-serialized JWS general", req: proofReq(func(t *testing.T, s *testSigner) string {
			parts := strings.Split(s.sign(t, nil, validClaims(t)), ".")
			return string(mustJSON(t, map[string]any{"payload": parts[1], "signatures": []map[string]string{{"protected": parts[0], "signature": parts[2]}}}))
		}), code: bad, desc: "proof must use JWS compact serialization"},
		{name: "malformed: two segments", req: proofReq(func(*testing.T, *testSigner) string { return "eyJhIjoxfQ.eyJhIjoxfQ" }), code: bad, desc: "malformed proof"},
		{name: "malformed: four segments", req: proofReq(func(t *testing.T, s *testSigner) string { return s.sign(t, nil, validClaims(t)) + ".AAAA" }), code: bad, desc: "malformed proof"},
		{name: "malformed: whitespace", req: proofReq(func(t *testing.T, s *testSigner) string {
			p := s.sign(t, nil, validClaims(t))
			return p[:10] + "\n" + p[10:]
		}), code: bad, desc: "malformed proof"},
		{name: "malformed: padding", req: proofReq(func(t *testing.T, s *testSigner) string { return s.sign(t, nil, validClaims(t)) + "==" }), code: bad, desc: "malformed proof"},
		{name: "malformed: header not JSON", req: proofReq(func(*testing.T, *testSigner) string { return b64url([]byte("not json")) + ".e30.AAAA" }), code: bad, desc: "malformed proof header"},
		{name: "malformed: duplicate header member", req: proofReq(func(t *testing.T, s *testSigner) string {
			h := `{"typ":"dpop+jwt","alg":"ES256","alg":"none","jwk":` + string(mustJSON(t, s.jwk)) + `}`
			return b64url([]byte(h)) + "." + b64url(mustJSON(t, validClaims(t))) + ".AAAA"
		}), code: bad, desc: "malformed proof header"},
		{name: "missing jwk", req: headerReq("jwk", nil), code: bad, desc: "missing jwk"},
		{name: "jwk not an object", req: headerReq("jwk", "key"), code: bad, desc: "malformed jwk"},
		{name: "tampered payload", req: proofReq(func(t *testing.T, s *testSigner) string {
			parts := strings.Split(s.sign(t, nil, validClaims(t)), ".")
			parts[1] = b64url(mustJSON(t, with(validClaims(t), "htm", "POST")))
			return strings.Join(parts, ".")
		}), code: bad, desc: "invalid signature"},
		{name: "signed by another key", req: proofReq(func(t *testing.T, s *testSigner) string {
			other := newSigner(t, "ES256")
			return other.sign(t, map[string]any{"jwk": s.jwk}, validClaims(t))
		}), code: bad, desc: "invalid signature"},
		{name: "nonce required but missing", req: func(t *testing.T, s *testSigner, _ DPoPRequest) DPoPRequest {
			r := validRequest(s.sign(t, nil, validClaims(t)))
			r.Nonce = "server-nonce"
			return r
		}, code: ErrCodeUseDPoPNonce, desc: "nonce required"},
		{name: "nonce wrong", req: func(t *testing.T, s *testSigner, _ DPoPRequest) DPoPRequest {
			r := validRequest(s.sign(t, nil, with(validClaims(t), "nonce", "old-nonce")))
			r.Nonce = "server-nonce"
			return r
		}, code: ErrCodeUseDPoPNonce, desc: "nonce invalid or expired"},
	}
}

// publicJWKWithPrivate returns the signer's JWK including the private "d".
func publicJWKWithPrivate(t *testing.T, s *testSigner) map[string]any {
	t.Helper()
	k, err := jwk.Import(s.priv)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(mustJSON(t, k), &m); err != nil {
		t.Fatal(err)
	}
	if _, ok := m["d"]; !ok {
		t.Fatal("private JWK has no d")
	}
	return m
}

func TestDPoPAttacks(t *testing.T) {
	for _, a := range attacks() {
		t.Run(a.name, func(t *testing.T) {
			clock := testutil.NewClock(testNow, 0)
			v := newTestVerifier(t, clock, nil)
			s := newSigner(t, "ES256")
			var primed DPoPRequest
			if a.prime != nil {
				primed = a.prime(t, s)
				if _, err := v.Verify(context.Background(), primed); err != nil {
					t.Fatalf("priming request refused: %v", err)
				}
			}
			req := a.req(t, s, primed)
			p, err := v.Verify(context.Background(), req)
			if err == nil {
				t.Fatalf("attack accepted: %+v", p)
			}
			if !isDPoPError(err, a.code, a.desc) {
				t.Fatalf("err = %v, want %s: %s", err, a.code, a.desc)
			}
		})
	}
}

func FuzzVerifyDPoP(f *testing.F) {
	clock := testutil.NewClock(testNow, 0)
	s := newSigner(f, "ES256")
	f.Add(s.sign(f, nil, validClaims(f)))
	f.Add(s.sign(f, map[string]any{"jwk": map[string]any{"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}}, validClaims(f)))
	f.Add(s.sign(f, nil, with(validClaims(f), "iat", 1e300)))
	f.Add(b64url([]byte(`{"typ":"dpop+jwt","alg":"ES256","jwk":{"kty":"RSA","n":"AQAB","e":"AQAB"}}`)) + ".e30.AAAA")
	f.Add(`{"protected":"e30","payload":"e30","signature":""}`)
	f.Add("a.b.c")
	f.Add("")
	f.Fuzz(func(t *testing.T, proof string) {
		v := newTestVerifier(t, clock, nil)
		req := validRequest(proof)
		p, err := v.Verify(context.Background(), req)
		if (p == nil) == (err == nil) {
			t.Fatalf("p = %v, err = %v", p, err)
		}
		if err != nil {
			var de *OAuthError
			if errors.As(err, &de) {
				_ = de.Challenge(v.Algs())
			}
		}
	})
}

// TestDPoPIssuedAfter: a verifier whose replay cache started empty refuses
// proofs issued before it started, which it cannot know it has seen.
func TestDPoPIssuedAfter(t *testing.T) {
	clock := testutil.NewClock(testNow, 0)
	s := newSigner(t, "ES256")
	proof := s.sign(t, nil, validClaims(t)) // iat = testNow
	v := newTestVerifier(t, clock, func(o *DPoPOptions) { o.IssuedAfter = testNow.Add(time.Second) })
	_, err := v.Verify(context.Background(), validRequest(proof))
	var de *OAuthError
	if !errors.As(err, &de) || de.Description != "proof issued before the server started" {
		t.Fatalf("proof from before the start: %v", err)
	}
	v = newTestVerifier(t, clock, func(o *DPoPOptions) { o.IssuedAfter = testNow })
	if _, err := v.Verify(context.Background(), validRequest(proof)); err != nil {
		t.Fatalf("proof from the start second: %v", err)
	}
}

// TestDPoPConcurrentReplay: of many concurrent uses of one proof, exactly
// one is accepted.
func TestDPoPConcurrentReplay(t *testing.T) {
	clock := testutil.NewClock(testNow, 0)
	v := newTestVerifier(t, clock, nil)
	s := newSigner(t, "ES256")
	req := validRequest(s.sign(t, nil, validClaims(t)))
	var ok atomic.Int64
	var wg sync.WaitGroup
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := v.Verify(context.Background(), req); err == nil {
				ok.Add(1)
			}
		}()
	}
	wg.Wait()
	if ok.Load() != 1 {
		t.Fatalf("%d accepted, want 1", ok.Load())
	}
}
