package identity

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"errors"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwk"

	"github.com/sag-gateway/sag/internal/testutil"
)

const (
	tokIssuer   = "https://issuer.example.com"
	tokOther    = "https://other-issuer.example.com"
	tokAudience = "https://gw.example.com/mcp"
)

// countingKeys is a KeySource fake wrapping a real one; it counts calls and
// forced refreshes, and can fail.
type countingKeys struct {
	src KeySource
	err error

	mu               sync.Mutex
	calls, refreshes int
}

var _ KeySource = (*countingKeys)(nil)

func (c *countingKeys) Keys(ctx context.Context, refresh bool) (jwk.Set, error) {
	c.mu.Lock()
	c.calls++
	if refresh {
		c.refreshes++
	}
	c.mu.Unlock()
	if c.err != nil {
		return nil, c.err
	}
	return c.src.Keys(ctx, refresh)
}

func (c *countingKeys) counts() (calls, refreshes int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.calls, c.refreshes
}

// signerOf returns a test signer holding the active private key of keys, so
// tests can hand-craft tokens that the keys' JWKS verifies.
func signerOf(t testing.TB, keys *Keys) *testSigner {
	t.Helper()
	keys.mu.RLock()
	priv := keys.active
	keys.mu.RUnlock()
	var exported any
	if err := jwk.Export(priv, &exported); err != nil {
		t.Fatal(err)
	}
	raw, ok := exported.(*ecdsa.PrivateKey)
	if !ok {
		t.Fatalf("active key is %T", exported)
	}
	return &testSigner{alg: "ES256", priv: raw, jwk: publicJWK(t, raw.Public())}
}

// tokenEnv is a TokenVerifier trusting two issuers, each with its own Keys,
// on a fake clock.
type tokenEnv struct {
	clock       *testutil.Clock
	keys, other *Keys
	signer      *testSigner // active key of keys
	otherSigner *testSigner // active key of other
	kid         string
	src         *countingKeys // tokIssuer's key source
	opts        TokenOptions
	v           *TokenVerifier
}

func newTokenEnv(t testing.TB, mod func(e *tokenEnv, o *TokenOptions)) *tokenEnv {
	t.Helper()
	keys, err := LoadKeys(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	other, err := LoadKeys(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	e := &tokenEnv{
		clock:       testutil.NewClock(testNow, 0),
		keys:        keys,
		other:       other,
		signer:      signerOf(t, keys),
		otherSigner: signerOf(t, other),
		kid:         keys.KeyID(),
		src:         &countingKeys{src: StaticKeys{Set: keys.PublicSet}},
	}
	e.opts = TokenOptions{
		Audience: tokAudience,
		Issuers:  map[string]KeySource{tokIssuer: e.src, tokOther: StaticKeys{Set: other.PublicSet}},
		Now:      e.clock.Now,
	}
	if mod != nil {
		mod(e, &e.opts)
	}
	e.v, err = NewTokenVerifier(e.opts)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// claims are valid claims of a token from tokIssuer for tokAudience.
func (e *tokenEnv) claims(kv ...any) map[string]any {
	now := e.clock.Now()
	return with(map[string]any{
		"iss":       tokIssuer,
		"sub":       "alice",
		"aud":       tokAudience,
		"client_id": "client-1",
		"scope":     "tools:call tools:list",
		"jti":       "jti-1",
		"iat":       now.Unix(),
		"exp":       now.Add(5 * time.Minute).Unix(),
	}, kv...)
}

// sign signs claims with s as an at+jwt with kid; header entries override
// (nil deletes).
func (e *tokenEnv) sign(t testing.TB, s *testSigner, header, claims map[string]any) string {
	t.Helper()
	h := map[string]any{"typ": "at+jwt", "kid": e.kid, "jwk": nil}
	for k, v := range header {
		h[k] = v
	}
	return s.sign(t, h, claims)
}

// token is a valid token signed with keys' active key, with claim overrides.
func (e *tokenEnv) token(t testing.TB, kv ...any) string {
	t.Helper()
	return e.sign(t, e.signer, nil, e.claims(kv...))
}

// signRaw signs raw header and payload JSON (for duplicate members).
func signRaw(t testing.TB, s *testSigner, header, payload string) string {
	t.Helper()
	input := b64url([]byte(header)) + "." + b64url([]byte(payload))
	return input + "." + b64url(s.rawSign(t, "ES256", []byte(input)))
}

func isTokenError(err error, desc string) bool {
	var te *OAuthError
	return errors.As(err, &te) && te.Code == ErrCodeInvalidToken && te.Description == desc
}

func TestNewTokenVerifierRefuses(t *testing.T) {
	src := StaticKeys{Set: jwk.NewSet}
	for name, o := range map[string]TokenOptions{
		"no audience": {Issuers: map[string]KeySource{tokIssuer: src}},
		"no issuers":  {Audience: tokAudience},
		"HS256":       {Audience: tokAudience, Issuers: map[string]KeySource{tokIssuer: src}, Algs: []string{"HS256"}},
		"none":        {Audience: tokAudience, Issuers: map[string]KeySource{tokIssuer: src}, Algs: []string{"none"}},
		"RSA-OAEP":    {Audience: tokAudience, Issuers: map[string]KeySource{tokIssuer: src}, Algs: []string{"ES256", "RSA-OAEP"}},
		"unknown":     {Audience: tokAudience, Issuers: map[string]KeySource{tokIssuer: src}, Algs: []string{"XX999"}},
	} {
		if _, err := NewTokenVerifier(o); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestTokenVerifyAccepts(t *testing.T) {
	cases := []struct {
		name   string
		header map[string]any
		kv     []any
	}{
		{name: "valid"},
		{name: "expired but within skew", kv: []any{"exp", testNow.Add(-29 * time.Second).Unix()}},
		{name: "nbf in the future within skew", kv: []any{"nbf", testNow.Add(29 * time.Second).Unix()}},
		{name: "nbf passed", kv: []any{"nbf", testNow.Add(-time.Minute).Unix()}},
		{name: "iat in the future within skew", kv: []any{"iat", testNow.Add(29 * time.Second).Unix()}},
		{name: "aud array containing the resource", kv: []any{"aud", []string{"https://other.example.com", tokAudience}}},
		{name: "typ application/at+jwt", header: map[string]any{"typ": "application/at+jwt"}},
		{name: "typ in upper case", header: map[string]any{"typ": "AT+JWT"}},
		{name: "cnf jkt", kv: []any{"cnf", map[string]any{"jkt": rfc9449JKT}}},
		{name: "cnf x5t#S256", kv: []any{"cnf", map[string]any{"x5t#S256": "abc"}}},
		{name: "act chain", kv: []any{"act", map[string]any{"sub": "spiffe://example.org/agent", "act": map[string]any{"sub": "spiffe://example.org/older"}}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newTokenEnv(t, nil)
			c, err := e.v.Verify(context.Background(), e.sign(t, e.signer, tc.header, e.claims(tc.kv...)))
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			if c.Issuer != tokIssuer || c.Subject != "alice" || !c.Audience.Contains(tokAudience) || c.JTI != "jti-1" || c.ClientID != "client-1" {
				t.Errorf("claims = %+v", c)
			}
			if got := c.Scopes(); !reflect.DeepEqual(got, []string{"tools:call", "tools:list"}) {
				t.Errorf("Scopes = %v", got)
			}
		})
	}
}

func TestTokenVerifyFromOtherTrustedIssuer(t *testing.T) {
	e := newTokenEnv(t, nil)
	tok := e.sign(t, e.otherSigner, map[string]any{"kid": e.other.KeyID()}, e.claims("iss", tokOther))
	c, err := e.v.Verify(context.Background(), tok)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if c.Issuer != tokOther {
		t.Errorf("iss = %q", c.Issuer)
	}
}

func TestTokenVerifyRefuses(t *testing.T) {
	secret := []byte("0123456789abcdef0123456789abcdef")
	cases := []struct {
		name string
		mod  func(e *tokenEnv, o *TokenOptions)
		tok  func(t *testing.T, e *tokenEnv) string
		desc string
	}{
		// Times.
		{name: "expired beyond skew", tok: func(t *testing.T, e *tokenEnv) string {
			return e.token(t, "exp", testNow.Add(-31*time.Second).Unix())
		}, desc: "token expired"},
		{name: "expired exactly at the skew", tok: func(t *testing.T, e *tokenEnv) string {
			return e.token(t, "exp", testNow.Add(-DefaultTokenSkew).Unix())
		}, desc: "token expired"},
		{name: "expired with a smaller configured skew", mod: func(_ *tokenEnv, o *TokenOptions) { o.Skew = time.Second }, tok: func(t *testing.T, e *tokenEnv) string {
			return e.token(t, "exp", testNow.Add(-2*time.Second).Unix())
		}, desc: "token expired"},
		{name: "nbf in the future", tok: func(t *testing.T, e *tokenEnv) string {
			return e.token(t, "nbf", testNow.Add(31*time.Second).Unix())
		}, desc: "token not yet valid"},
		{name: "iat in the future", tok: func(t *testing.T, e *tokenEnv) string {
			return e.token(t, "iat", testNow.Add(31*time.Second).Unix())
		}, desc: "token issued in the future"},
		// Required claims.
		{name: "missing exp", tok: func(t *testing.T, e *tokenEnv) string { return e.token(t, "exp", nil) }, desc: "missing exp"},
		{name: "missing sub", tok: func(t *testing.T, e *tokenEnv) string { return e.token(t, "sub", nil) }, desc: "missing sub"},
		{name: "empty sub", tok: func(t *testing.T, e *tokenEnv) string { return e.token(t, "sub", "") }, desc: "missing sub"},
		{name: "missing iat", tok: func(t *testing.T, e *tokenEnv) string { return e.token(t, "iat", nil) }, desc: "missing iat"},
		{name: "missing jti", tok: func(t *testing.T, e *tokenEnv) string { return e.token(t, "jti", nil) }, desc: "missing jti"},
		{name: "actor without sub", tok: func(t *testing.T, e *tokenEnv) string { return e.token(t, "act", map[string]any{}) }, desc: "act without sub"},
		{name: "prior actor without sub", tok: func(t *testing.T, e *tokenEnv) string {
			return e.token(t, "act", map[string]any{"sub": "spiffe://td/a", "act": map[string]any{"iss": "x"}})
		}, desc: "act without sub"},
		{name: "exp as a string", tok: func(t *testing.T, e *tokenEnv) string {
			return e.token(t, "exp", "1800000300")
		}, desc: "malformed token claims"},
		// Audience.
		{name: "wrong audience", tok: func(t *testing.T, e *tokenEnv) string {
			return e.token(t, "aud", "https://gw.example.com/other")
		}, desc: "token is not for this resource (aud)"},
		{name: "aud array without the resource", tok: func(t *testing.T, e *tokenEnv) string {
			return e.token(t, "aud", []string{"https://a.example.com", "https://b.example.com"})
		}, desc: "token is not for this resource (aud)"},
		{name: "missing aud", tok: func(t *testing.T, e *tokenEnv) string { return e.token(t, "aud", nil) }, desc: "token is not for this resource (aud)"},
		{name: "aud not a string", tok: func(t *testing.T, e *tokenEnv) string { return e.token(t, "aud", 42) }, desc: "malformed token claims"},
		// Issuer and keys.
		{name: "untrusted issuer", tok: func(t *testing.T, e *tokenEnv) string {
			return e.token(t, "iss", "https://evil.example.com")
		}, desc: "untrusted issuer"},
		{name: "missing iss", tok: func(t *testing.T, e *tokenEnv) string { return e.token(t, "iss", nil) }, desc: "untrusted issuer"},
		{name: "trusted issuer, token signed with another issuer's key and kid", tok: func(t *testing.T, e *tokenEnv) string {
			return e.sign(t, e.otherSigner, map[string]any{"kid": e.other.KeyID()}, e.claims())
		}, desc: "unknown key id"},
		{name: "trusted issuer and kid, signed with another issuer's key", tok: func(t *testing.T, e *tokenEnv) string {
			return e.sign(t, e.otherSigner, nil, e.claims())
		}, desc: "invalid signature"},
		{name: "unknown kid", tok: func(t *testing.T, e *tokenEnv) string {
			return e.sign(t, e.signer, map[string]any{"kid": "no-such-key"}, e.claims())
		}, desc: "unknown key id"},
		{name: "missing kid", tok: func(t *testing.T, e *tokenEnv) string {
			return e.sign(t, e.signer, map[string]any{"kid": nil}, e.claims())
		}, desc: "missing kid"},
		{name: "tampered payload", tok: func(t *testing.T, e *tokenEnv) string {
			parts := strings.Split(e.token(t), ".")
			parts[1] = b64url(mustJSON(t, e.claims("sub", "admin")))
			return strings.Join(parts, ".")
		}, desc: "invalid signature"},
		{name: "signature of another token", tok: func(t *testing.T, e *tokenEnv) string {
			a, b := strings.Split(e.token(t), "."), strings.Split(e.token(t, "sub", "admin"), ".")
			return b[0] + "." + b[1] + "." + a[2]
		}, desc: "invalid signature"},
		// Algorithms.
		{name: "alg none with empty signature", tok: func(t *testing.T, e *tokenEnv) string {
			return b64url(mustJSON(t, map[string]any{"typ": "at+jwt", "alg": "none", "kid": e.kid})) + "." + b64url(mustJSON(t, e.claims())) + "."
		}, desc: "malformed token: want a compact JWS"},
		{name: "alg none with a signature", tok: func(t *testing.T, e *tokenEnv) string {
			return b64url(mustJSON(t, map[string]any{"typ": "at+jwt", "alg": "none", "kid": e.kid})) + "." + b64url(mustJSON(t, e.claims())) + ".AAAA"
		}, desc: "unsupported alg"},
		{name: "missing alg", tok: func(t *testing.T, e *tokenEnv) string {
			return e.sign(t, e.signer, map[string]any{"alg": nil}, e.claims())
		}, desc: "unsupported alg"},
		{name: "HS256 with an oct key in the issuer's set", mod: func(e *tokenEnv, o *TokenOptions) {
			set := jwk.NewSet()
			k, err := jwk.Import(secret)
			if err != nil {
				panic(err)
			}
			_ = k.Set(jwk.KeyIDKey, "hmac")
			_ = set.AddKey(k)
			o.Issuers[tokIssuer] = StaticKeys{Set: func() jwk.Set { return set }}
		}, tok: func(t *testing.T, e *tokenEnv) string {
			return hs256(t, map[string]any{"typ": "at+jwt", "alg": "HS256", "kid": "hmac"}, e.claims(), secret)
		}, desc: "unsupported alg"},
		{name: "HS256 keyed with the public key DER (alg confusion)", tok: func(t *testing.T, e *tokenEnv) string {
			der, err := x509.MarshalPKIXPublicKey(e.signer.priv.Public())
			if err != nil {
				t.Fatal(err)
			}
			return hs256(t, map[string]any{"typ": "at+jwt", "alg": "HS256", "kid": e.kid}, e.claims(), der)
		}, desc: "unsupported alg"},
		{name: "HS256 keyed with the JWKS document", tok: func(t *testing.T, e *tokenEnv) string {
			doc, err := e.keys.JWKS()
			if err != nil {
				t.Fatal(err)
			}
			return hs256(t, map[string]any{"typ": "at+jwt", "alg": "HS256", "kid": e.kid}, e.claims(), doc)
		}, desc: "unsupported alg"},
		{name: "PS256 header with an EC key declaring ES256", tok: func(t *testing.T, e *tokenEnv) string {
			return e.sign(t, e.signer, map[string]any{"alg": "PS256"}, e.claims())
		}, desc: "alg does not match the key"},
		{name: "ES384 header with a P-256 key declaring no alg", mod: func(e *tokenEnv, o *TokenOptions) {
			k, err := jwk.Import(e.signer.priv.Public())
			if err != nil {
				panic(err)
			}
			_ = k.Set(jwk.KeyIDKey, e.kid)
			set := jwk.NewSet()
			_ = set.AddKey(k)
			o.Issuers[tokIssuer] = StaticKeys{Set: func() jwk.Set { return set }}
		}, tok: func(t *testing.T, e *tokenEnv) string {
			return e.sign(t, e.signer, map[string]any{"alg": "ES384"}, e.claims())
		}, desc: "alg does not match the key"},
		{name: "PS256 header with an RSA key declaring RS256", tok: func(t *testing.T, e *tokenEnv) string {
			s := newSigner(t, "PS256")
			k, err := jwk.Import(s.priv.Public())
			if err != nil {
				t.Fatal(err)
			}
			for _, kv := range [][2]any{{jwk.KeyIDKey, "rsa-1"}, {jwk.AlgorithmKey, "RS256"}} {
				if err := k.Set(kv[0].(string), kv[1]); err != nil {
					t.Fatal(err)
				}
			}
			set := jwk.NewSet()
			_ = set.AddKey(k)
			e.opts.Issuers[tokIssuer] = StaticKeys{Set: func() jwk.Set { return set }}
			if e.v, err = NewTokenVerifier(e.opts); err != nil {
				t.Fatal(err)
			}
			return e.sign(t, s, map[string]any{"kid": "rsa-1"}, e.claims())
		}, desc: "alg does not match the key"},
		{name: "alg not in the configured list", mod: func(_ *tokenEnv, o *TokenOptions) { o.Algs = []string{"EdDSA"} }, tok: func(t *testing.T, e *tokenEnv) string {
			return e.token(t)
		}, desc: "unsupported alg"},
		// typ.
		{name: "typ missing", tok: func(t *testing.T, e *tokenEnv) string {
			return e.sign(t, e.signer, map[string]any{"typ": nil}, e.claims())
		}, desc: "typ must be at+jwt"},
		{name: "typ dpop+jwt", tok: func(t *testing.T, e *tokenEnv) string {
			return e.sign(t, e.signer, map[string]any{"typ": "dpop+jwt"}, e.claims())
		}, desc: "typ must be at+jwt"},
		{name: "typ JWT (ID token swap)", tok: func(t *testing.T, e *tokenEnv) string {
			return e.sign(t, e.signer, map[string]any{"typ": "JWT"}, e.claims())
		}, desc: "typ must be at+jwt"},
		{name: "typ not a string", tok: func(t *testing.T, e *tokenEnv) string {
			return e.sign(t, e.signer, map[string]any{"typ": 1}, e.claims())
		}, desc: "malformed token header"},
		// Keys carried by the token.
		{name: "embedded jwk", tok: func(t *testing.T, e *tokenEnv) string {
			return e.sign(t, e.signer, map[string]any{"jwk": e.signer.jwk}, e.claims())
		}, desc: "token must not carry its own key"},
		{name: "jku", tok: func(t *testing.T, e *tokenEnv) string {
			return e.sign(t, e.signer, map[string]any{"jku": "https://evil.example.com/jwks"}, e.claims())
		}, desc: "token must not carry its own key"},
		{name: "x5u", tok: func(t *testing.T, e *tokenEnv) string {
			return e.sign(t, e.signer, map[string]any{"x5u": "https://evil.example.com/cert"}, e.claims())
		}, desc: "token must not carry its own key"},
		{name: "x5c", tok: func(t *testing.T, e *tokenEnv) string {
			return e.sign(t, e.signer, map[string]any{"x5c": []string{"MIIBkTCB+wIJAL"}}, e.claims())
		}, desc: "token must not carry its own key"},
		{name: "crit header", tok: func(t *testing.T, e *tokenEnv) string {
			return e.sign(t, e.signer, map[string]any{"crit": []string{"exp"}, "exp": 1}, e.claims())
		}, desc: "crit not supported"},
		// Serialization.
		{name: "JSON serialization (flattened)", tok: func(t *testing.T, e *tokenEnv) string {
			p := strings.Split(e.token(t), ".")
			return string(mustJSON(t, map[string]string{"protected": p[0], "payload": p[1], "signature": p[2]}))
		}, desc: "malformed token: want a compact JWS"},
		{name: "JSON serialization (general)", tok: func(t *testing.T, e *tokenEnv) string {
			p := strings.Split(e.token(t), ".")
			return string(mustJSON(t, map[string]any{"payload": p[1], "signatures": []map[string]string{{"protected": p[0], "signature": p[2]}}}))
		}, desc: "malformed token: want a compact JWS"},
		{name: "two segments", tok: func(t *testing.T, e *tokenEnv) string {
			p := strings.Split(e.token(t), ".")
			return p[0] + "." + p[1]
		}, desc: "malformed token: want a compact JWS"},
		{name: "four segments", tok: func(t *testing.T, e *tokenEnv) string { return e.token(t) + ".AAAA" }, desc: "malformed token: want a compact JWS"},
		{name: "standard base64 characters", tok: func(t *testing.T, e *tokenEnv) string {
			p := strings.Split(e.token(t), ".")
			return p[0] + "+/." + p[1] + "." + p[2]
		}, desc: "malformed token: want a compact JWS"},
		{name: "padding", tok: func(t *testing.T, e *tokenEnv) string { return e.token(t) + "==" }, desc: "malformed token: want a compact JWS"},
		{name: "whitespace", tok: func(t *testing.T, e *tokenEnv) string { return " " + e.token(t) }, desc: "malformed token: want a compact JWS"},
		{name: "header not valid base64 (length)", tok: func(t *testing.T, e *tokenEnv) string {
			p := strings.Split(e.token(t), ".")
			return p[0] + "A." + p[1] + "." + p[2]
		}, desc: "malformed token header"},
		{name: "header not JSON", tok: func(t *testing.T, e *tokenEnv) string {
			return b64url([]byte("not json")) + "." + b64url(mustJSON(t, e.claims())) + ".AAAA"
		}, desc: "malformed token header"},
		{name: "header a JSON array", tok: func(t *testing.T, e *tokenEnv) string {
			return b64url([]byte(`["at+jwt"]`)) + "." + b64url(mustJSON(t, e.claims())) + ".AAAA"
		}, desc: "malformed token header"},
		{name: "payload not base64", tok: func(t *testing.T, e *tokenEnv) string {
			p := strings.Split(e.token(t), ".")
			return p[0] + ".A." + p[2]
		}, desc: "malformed token payload"},
		{name: "payload not JSON", tok: func(t *testing.T, e *tokenEnv) string {
			return signRaw(t, e.signer, string(mustJSON(t, map[string]any{"typ": "at+jwt", "alg": "ES256", "kid": e.kid})), "not json")
		}, desc: "malformed token payload"},
		{name: "duplicate alg in header", tok: func(t *testing.T, e *tokenEnv) string {
			return signRaw(t, e.signer, `{"typ":"at+jwt","alg":"ES256","kid":"`+e.kid+`","alg":"ES256"}`, string(mustJSON(t, e.claims())))
		}, desc: "malformed token header"},
		{name: "duplicate typ in header", tok: func(t *testing.T, e *tokenEnv) string {
			return signRaw(t, e.signer, `{"typ":"JWT","alg":"ES256","kid":"`+e.kid+`","typ":"at+jwt"}`, string(mustJSON(t, e.claims())))
		}, desc: "malformed token header"},
		{name: "duplicate sub in payload", tok: func(t *testing.T, e *tokenEnv) string {
			c := string(mustJSON(t, e.claims()))
			return signRaw(t, e.signer, string(mustJSON(t, map[string]any{"typ": "at+jwt", "alg": "ES256", "kid": e.kid})), c[:len(c)-1]+`,"sub":"admin"}`)
		}, desc: "malformed token claims"},
		{name: "duplicate iss in payload", tok: func(t *testing.T, e *tokenEnv) string {
			c := string(mustJSON(t, e.claims("iss", nil)))
			return signRaw(t, e.signer, string(mustJSON(t, map[string]any{"typ": "at+jwt", "alg": "ES256", "kid": e.kid})), `{"iss":"https://evil.example.com","iss":"`+tokIssuer+`",`+c[1:])
		}, desc: "malformed token claims"},
		// encoding/json matches member names case-insensitively, so names
		// differing only in case are duplicates to it.
		{name: "case-variant duplicate sub in payload", tok: func(t *testing.T, e *tokenEnv) string {
			c := string(mustJSON(t, e.claims()))
			return signRaw(t, e.signer, string(mustJSON(t, map[string]any{"typ": "at+jwt", "alg": "ES256", "kid": e.kid})), c[:len(c)-1]+`,"SUB":"admin"}`)
		}, desc: "malformed token claims"},
		{name: "case-variant duplicate typ in header", tok: func(t *testing.T, e *tokenEnv) string {
			return signRaw(t, e.signer, `{"typ":"JWT","alg":"ES256","kid":"`+e.kid+`","Typ":"at+jwt"}`, string(mustJSON(t, e.claims())))
		}, desc: "malformed token header"},
		{name: "trailing data after the claims", tok: func(t *testing.T, e *tokenEnv) string {
			return signRaw(t, e.signer, string(mustJSON(t, map[string]any{"typ": "at+jwt", "alg": "ES256", "kid": e.kid})), string(mustJSON(t, e.claims()))+`{}`)
		}, desc: "malformed token payload"},
		// Size and cnf.
		{name: "oversized token", mod: func(_ *tokenEnv, o *TokenOptions) { o.MaxTokenBytes = 1024 }, tok: func(t *testing.T, e *tokenEnv) string {
			return e.token(t, "pad", strings.Repeat("x", 1024))
		}, desc: "token too large"},
		{name: "oversized garbage refused before parsing", mod: func(_ *tokenEnv, o *TokenOptions) { o.MaxTokenBytes = 100 }, tok: func(t *testing.T, e *tokenEnv) string {
			return strings.Repeat("!", 101)
		}, desc: "token too large"},
		{name: "oversized at the default limit", tok: func(t *testing.T, e *tokenEnv) string {
			tok := e.token(t)
			return e.token(t, "pad", strings.Repeat("x", DefaultMaxTokenBytes-len(tok)))
		}, desc: "token too large"},
		{name: "cnf naming no key", tok: func(t *testing.T, e *tokenEnv) string {
			return e.token(t, "cnf", map[string]any{})
		}, desc: "cnf names no key"},
		{name: "cnf with empty jkt and x5t", tok: func(t *testing.T, e *tokenEnv) string {
			return e.token(t, "cnf", map[string]any{"jkt": "", "x5t#S256": ""})
		}, desc: "cnf names no key"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newTokenEnv(t, tc.mod)
			tok := tc.tok(t, e)
			c, err := e.v.Verify(context.Background(), tok)
			if err == nil {
				t.Fatalf("accepted: %+v", c)
			}
			if !isTokenError(err, tc.desc) {
				t.Fatalf("err = %v, want invalid_token: %s", err, tc.desc)
			}
			if strings.Contains(err.Error(), tok) {
				t.Errorf("error contains the token")
			}
		})
	}
}

func TestTokenVerifyOversizedNeverAsksForKeys(t *testing.T) {
	e := newTokenEnv(t, func(_ *tokenEnv, o *TokenOptions) { o.MaxTokenBytes = 512 })
	tok := e.token(t, "pad", strings.Repeat("x", 512))
	if _, err := e.v.Verify(context.Background(), tok); !isTokenError(err, "token too large") {
		t.Fatalf("err = %v", err)
	}
	if calls, _ := e.src.counts(); calls != 0 {
		t.Errorf("key source asked %d times for an oversized token", calls)
	}
}

func TestTokenVerifyUnknownKidRefreshesOnce(t *testing.T) {
	e := newTokenEnv(t, nil)
	tok := e.sign(t, e.signer, map[string]any{"kid": "rotated-away"}, e.claims())
	if _, err := e.v.Verify(context.Background(), tok); !isTokenError(err, "unknown key id") {
		t.Fatalf("err = %v", err)
	}
	calls, refreshes := e.src.counts()
	if calls != 2 || refreshes != 1 {
		t.Errorf("key source: %d calls, %d refreshes; want 2 calls, 1 refresh", calls, refreshes)
	}
	// A known kid needs no refresh.
	if _, err := e.v.Verify(context.Background(), e.token(t)); err != nil {
		t.Fatal(err)
	}
	if calls, refreshes := e.src.counts(); calls != 3 || refreshes != 1 {
		t.Errorf("key source: %d calls, %d refreshes; want 3 calls, 1 refresh", calls, refreshes)
	}
}

// rotatingKeys serves a set that changes only when refreshed, like a remote
// JWKS the issuer has rotated.
type rotatingKeys struct {
	mu            sync.Mutex
	current, next jwk.Set
}

func (r *rotatingKeys) Keys(_ context.Context, refresh bool) (jwk.Set, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if refresh && r.next != nil {
		r.current, r.next = r.next, nil
	}
	return r.current, nil
}

func TestTokenVerifyUnknownKidFoundAfterRefresh(t *testing.T) {
	var rk rotatingKeys
	e := newTokenEnv(t, func(e *tokenEnv, o *TokenOptions) {
		rk.current = jwk.NewSet()
		rk.next = e.keys.PublicSet()
		o.Issuers[tokIssuer] = &rk
	})
	if _, err := e.v.Verify(context.Background(), e.token(t)); err != nil {
		t.Fatalf("token with a kid only in the refreshed set: %v", err)
	}
}

func TestTokenVerifyKeySourceFailure(t *testing.T) {
	e := newTokenEnv(t, nil)
	e.src.err = errors.New("connection refused")
	_, err := e.v.Verify(context.Background(), e.token(t))
	var te *OAuthError
	if err == nil || errors.As(err, &te) {
		t.Fatalf("err = %v, want a non-OAuthError (server-side failure)", err)
	}
}

func TestTokenVerifyCache(t *testing.T) {
	e := newTokenEnv(t, nil)
	tok := e.token(t) // exp = now + 5m
	ctx := context.Background()
	c1, err := e.v.Verify(ctx, tok)
	if err != nil {
		t.Fatal(err)
	}
	c2, err := e.v.Verify(ctx, tok)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(c1, c2) {
		t.Errorf("cached claims differ: %+v vs %+v", c1, c2)
	}
	if calls, _ := e.src.counts(); calls != 1 {
		t.Errorf("second Verify asked for keys again (%d calls): not cached", calls)
	}
	// Past exp (and the skew) the cached token is refused.
	e.clock.Add(5*time.Minute + DefaultTokenSkew)
	if _, err := e.v.Verify(ctx, tok); !isTokenError(err, "token expired") {
		t.Fatalf("cached token after expiry: err = %v", err)
	}
}

func TestTokenVerifyCacheIsPerToken(t *testing.T) {
	e := newTokenEnv(t, nil)
	ctx := context.Background()
	good := e.token(t)
	if _, err := e.v.Verify(ctx, good); err != nil {
		t.Fatal(err)
	}
	// A tampered copy of a cached token is not served from the cache.
	p := strings.Split(good, ".")
	p[1] = b64url(mustJSON(t, e.claims("sub", "admin")))
	if _, err := e.v.Verify(ctx, strings.Join(p, ".")); !isTokenError(err, "invalid signature") {
		t.Fatalf("err = %v", err)
	}
}

// TestTokenVerifyRefusesNonCanonicalSignature: base64url has one canonical
// spelling per byte string; the signature segment's last character carries
// unused low bits. A verifier that accepts other spellings makes one signed
// token into several distinct token strings (cache keys, token hashes and
// ath values then disagree for the same signed token).
func TestTokenVerifyRefusesNonCanonicalSignature(t *testing.T) {
	e := newTokenEnv(t, nil)
	tok := e.token(t)
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	i := strings.IndexByte(alphabet, tok[len(tok)-1])
	// A 64-byte ES256 signature is 86 characters: the last holds 2 bits and
	// 4 unused ones, which must be zero.
	variant := tok[:len(tok)-1] + string(alphabet[i|1])
	if variant == tok {
		t.Fatal("variant equals the token")
	}
	if _, err := e.v.Verify(context.Background(), variant); !isTokenError(err, "malformed token signature") {
		t.Fatalf("non-canonical signature encoding: err = %v", err)
	}
	if _, err := e.v.Verify(context.Background(), tok); err != nil {
		t.Fatalf("canonical token: %v", err)
	}
}

// FuzzTokenVerify checks that Verify never panics and that whatever it
// accepts is one of the correctly signed seeds.
func FuzzTokenVerify(f *testing.F) {
	e := newTokenEnv(f, nil)
	signed := map[string]string{} // signing input → claims JSON of valid seeds
	valid := []string{
		e.token(f),
		e.token(f, "aud", []string{"x", tokAudience}, "cnf", map[string]any{"jkt": rfc9449JKT}),
		e.sign(f, e.otherSigner, map[string]any{"kid": e.other.KeyID()}, e.claims("iss", tokOther)),
	}
	for _, tok := range valid {
		c, err := e.v.Verify(context.Background(), tok)
		if err != nil {
			f.Fatalf("seed refused: %v", err)
		}
		signed[tok[:strings.LastIndexByte(tok, '.')]] = string(mustJSON(f, c))
		f.Add(tok)
	}
	f.Add(e.token(f, "exp", testNow.Add(-time.Hour).Unix()))
	f.Add(e.sign(f, e.signer, map[string]any{"typ": "dpop+jwt"}, e.claims()))
	f.Add(e.sign(f, e.signer, map[string]any{"jwk": e.signer.jwk}, e.claims()))
	f.Add(e.sign(f, e.signer, map[string]any{"kid": "unknown"}, e.claims()))
	f.Add(hs256(f, map[string]any{"typ": "at+jwt", "alg": "HS256", "kid": e.kid}, e.claims(), []byte("secret")))
	f.Add(b64url([]byte(`{"typ":"at+jwt","alg":"none"}`)) + "." + b64url(mustJSON(f, e.claims())) + ".")
	f.Add(signRaw(f, e.signer, `{"typ":"at+jwt","alg":"ES256","kid":"`+e.kid+`","kid":"x"}`, string(mustJSON(f, e.claims()))))
	f.Add(`{"protected":"e30","payload":"e30","signature":""}`)
	f.Add("a.b.c")
	f.Add("")
	f.Fuzz(func(t *testing.T, tok string) {
		v, err := NewTokenVerifier(e.opts)
		if err != nil {
			t.Fatal(err)
		}
		c, err := v.Verify(context.Background(), tok)
		if (c == nil) == (err == nil) {
			t.Fatalf("c = %v, err = %v", c, err)
		}
		if err != nil {
			return
		}
		i := strings.LastIndexByte(tok, '.')
		want, ok := signed[tok[:max(i, 0)]]
		if !ok {
			t.Fatalf("accepted a token that is not one of the signed seeds: %q", tok)
		}
		if got := string(mustJSON(t, c)); got != want {
			t.Fatalf("accepted claims %s, signed claims %s", got, want)
		}
	})
}
