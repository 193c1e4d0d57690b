package identity

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwk"
)

// DPoPKey is a proof-of-possession key (ES256) that signs DPoP proofs
// (RFC 9449 §4.2). Safe for concurrent use.
type DPoPKey struct {
	priv  *ecdsa.PrivateKey
	hdr64 string // the protected header (typ, alg, public jwk), base64url, with the trailing "."
	jkt   string
	now   func() time.Time
}

// NewDPoPKey generates a fresh key.
func NewDPoPKey() (*DPoPKey, error) {
	raw, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	return DPoPKeyFrom(raw)
}

// LoadOrCreateDPoPKey reads a private JWK from path, or generates one and
// writes it there (mode 0600).
func LoadOrCreateDPoPKey(path string) (*DPoPKey, error) {
	if b, err := os.ReadFile(path); err == nil {
		k, err := jwk.ParseKey(b)
		if err != nil {
			return nil, fmt.Errorf("identity: dpop key %s: not a JWK", path)
		}
		var raw any
		err = jwk.Export(k, &raw)
		priv, ok := raw.(*ecdsa.PrivateKey)
		if err != nil || !ok {
			return nil, fmt.Errorf("identity: dpop key %s: not an EC private key", path)
		}
		return DPoPKeyFrom(priv)
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("identity: dpop key: %w", err)
	}
	raw, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	k, err := jwk.Import(raw)
	if err != nil {
		return nil, err
	}
	b, err := json.Marshal(k)
	if err != nil {
		return nil, err
	}
	if err := writeFileAtomic(path, b, 0o600); err != nil {
		return nil, fmt.Errorf("identity: dpop key: %w", err)
	}
	return DPoPKeyFrom(raw)
}

// DPoPKeyFrom wraps an existing P-256 private key.
func DPoPKeyFrom(raw *ecdsa.PrivateKey) (*DPoPKey, error) {
	if raw.Curve != elliptic.P256() {
		return nil, errors.New("identity: dpop key must be P-256 (ES256)")
	}
	pub, err := jwk.Import(raw.Public())
	if err != nil {
		return nil, err
	}
	jkt, err := JWKThumbprint(pub)
	if err != nil {
		return nil, err
	}
	hdr, err := json.Marshal(struct {
		Typ string  `json:"typ"`
		Alg string  `json:"alg"`
		JWK jwk.Key `json:"jwk"`
	}{"dpop+jwt", "ES256", pub})
	if err != nil {
		return nil, err
	}
	return &DPoPKey{priv: raw, hdr64: b64.EncodeToString(hdr) + ".", jkt: jkt, now: time.Now}, nil
}

// proofClaims are the claims of a DPoP proof (RFC 9449 §4.2).
type proofClaims struct {
	JTI   string `json:"jti"`
	HTM   string `json:"htm"`
	HTU   string `json:"htu"`
	IAT   int64  `json:"iat"`
	ATH   string `json:"ath,omitempty"`
	Nonce string `json:"nonce,omitempty"`
}

// Thumbprint returns the RFC 7638 thumbprint of the public key: the cnf.jkt
// of tokens bound to this key.
func (k *DPoPKey) Thumbprint() string { return k.jkt }

// Proof signs a proof for one request: htm, htu (query and fragment
// removed, RFC 9449 §4.2), a fresh jti, iat, and ath when accessToken is set,
// nonce when set.
func (k *DPoPKey) Proof(method, url, accessToken, nonce string) (string, error) {
	if i := strings.IndexAny(url, "?#"); i >= 0 {
		url = url[:i]
	}
	c := proofClaims{JTI: NewID(), HTM: method, HTU: url, IAT: k.now().Unix(), Nonce: nonce}
	if accessToken != "" {
		sum := sha256.Sum256([]byte(accessToken))
		c.ATH = base64.RawURLEncoding.EncodeToString(sum[:])
	}
	payload, err := json.Marshal(c)
	if err != nil {
		return "", err
	}
	// The JWS compact serialization (RFC 7515 §7.1) of an ES256 signature
	// (RFC 7518 §3.4: R and S as 32-byte big-endian integers), built from
	// the header serialised once per key: a proof is signed for every
	// request, and this takes 25 µs where jws.Sign took 37 µs
	// (BenchmarkProof). Verification stays with jwx.
	input := k.hdr64 + b64.EncodeToString(payload)
	digest := sha256.Sum256([]byte(input))
	r, s, err := ecdsa.Sign(rand.Reader, k.priv, digest[:])
	if err != nil {
		return "", fmt.Errorf("identity: sign dpop proof: %w", err)
	}
	var sig [64]byte
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return input + "." + b64.EncodeToString(sig[:]), nil
}

// DPoPTransport is an http.RoundTripper for agents: it sends the access token
// with the DPoP scheme and a fresh proof on every request, and retries once
// with the server's nonce when asked to (RFC 9449 §8).
type DPoPTransport struct {
	// Base carries the requests; nil means http.DefaultTransport.
	Base http.RoundTripper
	Key  *DPoPKey
	// Token returns the access token to send (bound to Key).
	Token func(ctx context.Context) (string, error)

	mu    sync.Mutex
	nonce map[string]string // by origin
}

// RoundTrip implements http.RoundTripper.
// CloseIdleConnections closes the idle connections of the base transport.
func (t *DPoPTransport) CloseIdleConnections() {
	base := t.Base
	if base == nil {
		base = http.DefaultTransport
	}
	if c, ok := base.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}

func (t *DPoPTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	base := t.Base
	if base == nil {
		base = http.DefaultTransport
	}
	tok, err := t.Token(req.Context())
	if err != nil {
		return nil, fmt.Errorf("dpop transport: access token: %w", err)
	}
	origin := req.URL.Scheme + "://" + req.URL.Host
	send := func(r *http.Request) (*http.Response, error) {
		t.mu.Lock()
		nonce := t.nonce[origin]
		t.mu.Unlock()
		proof, err := t.Key.Proof(r.Method, r.URL.String(), tok, nonce)
		if err != nil {
			return nil, err
		}
		r = r.Clone(r.Context())
		r.Header.Set("Authorization", "DPoP "+tok)
		r.Header.Set("DPoP", proof)
		resp, err := base.RoundTrip(r)
		if err == nil {
			if n := resp.Header.Get("DPoP-Nonce"); n != "" {
				t.mu.Lock()
				if t.nonce == nil {
					t.nonce = map[string]string{}
				}
				t.nonce[origin] = n
				t.mu.Unlock()
			}
		}
		return resp, err
	}
	resp, err := send(req)
	if err != nil || resp.StatusCode != http.StatusUnauthorized || !strings.Contains(resp.Header.Get("WWW-Authenticate"), ErrCodeUseDPoPNonce) {
		return resp, err
	}
	// Retry once with the nonce the server just sent, if the body can be
	// sent again.
	if req.Body != nil && req.GetBody == nil {
		return resp, nil
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	retry := req.Clone(req.Context())
	if req.GetBody != nil {
		if retry.Body, err = req.GetBody(); err != nil {
			return nil, err
		}
	}
	return send(retry)
}
