package identity

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"sync"
	"testing"

	"github.com/lestrrat-go/jwx/v3/jwk"
)

// testSigner signs proofs in the tests with the standard library only, so
// the verifier is checked against an implementation other than jwx.
type testSigner struct {
	alg  string
	priv crypto.Signer
	jwk  map[string]any // public JWK members
}

var (
	rsaKeyOnce sync.Once
	rsaKey     *rsa.PrivateKey
)

func testRSAKey(t testing.TB) *rsa.PrivateKey {
	t.Helper()
	rsaKeyOnce.Do(func() {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			panic(err)
		}
		rsaKey = k
	})
	return rsaKey
}

func newSigner(t testing.TB, alg string) *testSigner {
	t.Helper()
	var priv crypto.Signer
	switch alg {
	case "ES256":
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		priv = k
	case "EdDSA", "Ed25519":
		_, k, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		priv = k
	case "RS256", "PS256":
		priv = testRSAKey(t)
	default:
		t.Fatalf("no signer for %s", alg)
	}
	return &testSigner{alg: alg, priv: priv, jwk: publicJWK(t, priv.Public())}
}

func publicJWK(t testing.TB, pub crypto.PublicKey) map[string]any {
	t.Helper()
	k, err := jwk.Import(pub)
	if err != nil {
		t.Fatal(err)
	}
	buf, err := json.Marshal(k)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(buf, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func b64url(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func mustJSON(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// sign returns the compact JWS of header and claims signed with s. The
// header gets typ, alg and jwk unless the caller set them.
func (s *testSigner) sign(t testing.TB, header, claims map[string]any) string {
	t.Helper()
	h := map[string]any{"typ": "dpop+jwt", "alg": s.alg, "jwk": s.jwk}
	for k, v := range header {
		if v == nil {
			delete(h, k)
		} else {
			h[k] = v
		}
	}
	input := b64url(mustJSON(t, h)) + "." + b64url(mustJSON(t, claims))
	return input + "." + b64url(s.rawSign(t, h["alg"], []byte(input)))
}

func (s *testSigner) rawSign(t testing.TB, alg any, input []byte) []byte {
	t.Helper()
	sum := sha256.Sum256(input)
	switch k := s.priv.(type) {
	case *ecdsa.PrivateKey:
		r, ss, err := ecdsa.Sign(rand.Reader, k, sum[:])
		if err != nil {
			t.Fatal(err)
		}
		out := make([]byte, 64)
		r.FillBytes(out[:32])
		ss.FillBytes(out[32:])
		return out
	case ed25519.PrivateKey:
		return ed25519.Sign(k, input)
	case *rsa.PrivateKey:
		if alg == "PS256" {
			sig, err := rsa.SignPSS(rand.Reader, k, crypto.SHA256, sum[:], &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash})
			if err != nil {
				t.Fatal(err)
			}
			return sig
		}
		sig, err := rsa.SignPKCS1v15(rand.Reader, k, crypto.SHA256, sum[:])
		if err != nil {
			t.Fatal(err)
		}
		return sig
	}
	t.Fatalf("unsupported key %T", s.priv)
	return nil
}

// hs256 returns a compact JWS MAC'd with secret under HS256.
func hs256(t testing.TB, header, claims map[string]any, secret []byte) string {
	t.Helper()
	input := b64url(mustJSON(t, header)) + "." + b64url(mustJSON(t, claims))
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(input))
	return input + "." + b64url(m.Sum(nil))
}
