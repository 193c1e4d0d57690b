package identity

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jwk"
	"github.com/lestrrat-go/jwx/v3/jws"
)

// OAuth error codes of RFC 6750 §3.1, used in WWW-Authenticate challenges.
const (
	ErrCodeInvalidRequest    = "invalid_request"
	ErrCodeInvalidToken      = "invalid_token"
	ErrCodeInsufficientScope = "insufficient_scope"
)

// Defaults of TokenOptions.
const (
	DefaultTokenSkew     = 30 * time.Second
	DefaultMaxTokenBytes = 16 << 10
	// maxCachedTokens bounds the verified-token cache; past it the cache
	// starts over.
	maxCachedTokens = 50_000
	// cacheFor is how long a verified token is trusted without checking
	// its signature again, so that a key withdrawn by its issuer stops
	// working within this time.
	cacheFor = 5 * time.Minute
)

// Actor is one link of an RFC 8693 §4.1 actor chain: the outermost is the
// current actor, Act the one before it.
type Actor struct {
	Sub string `json:"sub"`
	Iss string `json:"iss,omitempty"`
	Act *Actor `json:"act,omitempty"`
}

// String returns the chain as compact JSON ("" for nil), the form kept in
// audit records.
func (a *Actor) String() string {
	if a == nil {
		return ""
	}
	b, _ := json.Marshal(a)
	return string(b)
}

// Confirmation is the cnf claim (RFC 7800): the key a token is bound to.
type Confirmation struct {
	// JKT is the RFC 7638 thumbprint of a DPoP key (RFC 9449 §6.1).
	JKT string `json:"jkt,omitempty"`
	// X5T is the SHA-256 thumbprint of a client certificate (RFC 8705 §3.1).
	X5T string `json:"x5t#S256,omitempty"`
}

// Claims are the claims of a JWT access token (RFC 9068 §2.2) that SAG
// reads or writes.
type Claims struct {
	Issuer    string        `json:"iss"`
	Subject   string        `json:"sub"`
	Audience  Audience      `json:"aud"`
	ClientID  string        `json:"client_id,omitempty"`
	Scope     string        `json:"scope,omitempty"`
	JTI       string        `json:"jti"`
	SessionID string        `json:"sid,omitempty"`
	IssuedAt  int64         `json:"iat"`
	NotBefore int64         `json:"nbf,omitempty"`
	Expiry    int64         `json:"exp"`
	Cnf       *Confirmation `json:"cnf,omitempty"`
	Act       *Actor        `json:"act,omitempty"`
	MayAct    *Actor        `json:"may_act,omitempty"`
	// Groups is the user's groups, a common claim of identity providers
	// that allow-list rules can name.
	Groups []string `json:"groups,omitempty"`
	// RunAgent, RunWorkflow and RunIssuer are set only in the tokens the
	// gateway mints for an agent it runs for a user (the AG-UI agent
	// proxy): the agent (also act.sub), the workflow its calls belong to,
	// and the issuer of the user's own token (sub is the user there).
	// RunIssuer alone marks a token exchanged for a legacy one (Legacy).
	RunAgent    string `json:"sag_agent,omitempty"`
	RunWorkflow string `json:"sag_workflow,omitempty"`
	RunIssuer   string `json:"sag_iss,omitempty"`
	// All holds every claim of a verified token as decoded JSON, for
	// allow-list rules that name other claims. It is never encoded.
	All map[string]any `json:"-"`
}

// Scopes returns the space-separated scope claim as a list.
func (c *Claims) Scopes() []string { return strings.Fields(c.Scope) }

// Audience is the aud claim: one string or an array of strings (RFC 7519 §4.1.3).
type Audience []string

// UnmarshalJSON accepts a string or an array of strings.
func (a *Audience) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		*a = Audience{s}
		return nil
	}
	var l []string
	if err := json.Unmarshal(b, &l); err != nil {
		return errors.New("aud must be a string or an array of strings")
	}
	*a = l
	return nil
}

// MarshalJSON writes a single audience as a string.
func (a Audience) MarshalJSON() ([]byte, error) {
	if len(a) == 1 {
		return json.Marshal(a[0])
	}
	return json.Marshal([]string(a))
}

// Contains reports whether aud is one of the audiences.
func (a Audience) Contains(aud string) bool {
	for _, s := range a {
		if s == aud {
			return true
		}
	}
	return false
}

// KeySource supplies an issuer's verification keys.
type KeySource interface {
	// Keys returns the issuer's current key set. When refresh is true the
	// caller met an unknown key id and asks for a fresh copy; sources may
	// rate-limit that.
	Keys(ctx context.Context, refresh bool) (jwk.Set, error)
}

// StaticKeys is a fixed key set (a JWKS file, or the gateway's own keys).
type StaticKeys struct{ Set func() jwk.Set }

// Keys returns the set.
func (s StaticKeys) Keys(context.Context, bool) (jwk.Set, error) { return s.Set(), nil }

// TokenOptions configure a TokenVerifier.
type TokenOptions struct {
	// Audience is the resource URL every token must name in aud.
	Audience string
	// AnyAudience skips the audience check instead: only for token
	// introspection and revocation, which look at tokens meant for others.
	AnyAudience bool
	// Issuers maps each trusted issuer (exact iss value) to its keys.
	Issuers map[string]KeySource
	// Algs are the accepted signature algorithms. Default ES256, ES384,
	// EdDSA, Ed25519, RS256, PS256: asymmetric only.
	Algs []string
	// Skew is the clock skew allowed on exp, nbf and iat. Default 30s.
	Skew time.Duration
	// MaxTokenBytes is the largest token parsed. Default 16 KiB.
	MaxTokenBytes int
	// Now is the clock. Default time.Now.
	Now func() time.Time
}

// TokenVerifier verifies JWT access tokens (RFC 9068) against the key sets
// of configured issuers. Each verified token is cached by its SHA-256 until it
// expires, so a token's signature is checked once. Safe for concurrent use.
type TokenVerifier struct {
	aud     string
	anyAud  bool
	issuers map[string]KeySource
	algs    map[string]jwa.SignatureAlgorithm
	skew    time.Duration
	max     int
	now     func() time.Time

	mu    sync.Mutex
	cache map[[32]byte]cachedToken
}

type cachedToken struct {
	c     *Claims
	until time.Time // verify again from then on
}

// NewTokenVerifier validates o and returns a verifier.
func NewTokenVerifier(o TokenOptions) (*TokenVerifier, error) {
	if o.Audience == "" && !o.AnyAudience {
		return nil, errors.New("identity: token verifier needs an audience")
	}
	if len(o.Issuers) == 0 {
		return nil, errors.New("identity: token verifier needs at least one issuer")
	}
	v := &TokenVerifier{
		aud:     o.Audience,
		anyAud:  o.AnyAudience,
		issuers: o.Issuers,
		algs:    map[string]jwa.SignatureAlgorithm{},
		skew:    o.Skew,
		max:     o.MaxTokenBytes,
		now:     o.Now,
		cache:   map[[32]byte]cachedToken{},
	}
	if v.skew == 0 {
		v.skew = DefaultTokenSkew
	}
	if v.max == 0 {
		v.max = DefaultMaxTokenBytes
	}
	if v.now == nil {
		v.now = time.Now
	}
	algs := o.Algs
	if len(algs) == 0 {
		algs = []string{"ES256", "ES384", "EdDSA", "Ed25519", "RS256", "PS256"}
	}
	for _, name := range algs {
		a, ok := jwa.LookupSignatureAlgorithm(name)
		if !ok || a.IsSymmetric() || dpopAlgKeys[name] == nil {
			return nil, fmt.Errorf("identity: token algorithm %q is not an accepted asymmetric algorithm", name)
		}
		v.algs[name] = a
	}
	return v, nil
}

// tokenHeader is the JOSE header of an access token.
type tokenHeader struct {
	Typ  *string         `json:"typ"`
	Alg  string          `json:"alg"`
	Kid  string          `json:"kid"`
	JWK  json.RawMessage `json:"jwk"`
	JKU  json.RawMessage `json:"jku"`
	X5U  json.RawMessage `json:"x5u"`
	X5C  json.RawMessage `json:"x5c"`
	Crit json.RawMessage `json:"crit"`
}

// Verify checks token and returns its claims. Errors are *OAuthError
// (invalid_token) unless the issuer's keys cannot be fetched.
func (v *TokenVerifier) Verify(ctx context.Context, token string) (*Claims, error) {
	// Bound the input before any parsing (RFC 9449 §11.1 in spirit: no
	// unbounded work for the caller).
	if len(token) > v.max {
		return nil, invalidToken("token too large")
	}
	sum := sha256.Sum256([]byte(token))
	now := v.now()
	v.mu.Lock()
	hit, ok := v.cache[sum]
	v.mu.Unlock()
	if ok && now.Before(hit.until) {
		if err := v.checkTimes(hit.c, now); err != nil {
			return nil, err
		}
		return hit.c, nil
	}
	c, err := v.verify(ctx, token, now)
	if err != nil {
		return nil, err
	}
	v.mu.Lock()
	if len(v.cache) >= maxCachedTokens {
		clear(v.cache)
	}
	v.cache[sum] = cachedToken{c: c, until: now.Add(cacheFor)}
	v.mu.Unlock()
	return c, nil
}

func (v *TokenVerifier) verify(ctx context.Context, token string, now time.Time) (*Claims, error) {
	// RFC 9068 §4 and RFC 7519 §7.2: a JWT is the JWS compact
	// serialization; the JSON serialization is refused.
	if strings.HasPrefix(strings.TrimSpace(token), "{") || !isCompactJWS(token) {
		return nil, invalidToken("malformed token: want a compact JWS")
	}
	parts := strings.SplitN(token, ".", 3)
	// Each segment has exactly one spelling (RFC 7515 §2, base64url
	// without padding, unused bits zero), so one signed token is one
	// string: cache keys, hashes and ath values agree.
	if _, err := b64.DecodeString(parts[2]); err != nil {
		return nil, invalidToken("malformed token signature")
	}
	hdrJSON, err := b64.DecodeString(parts[0])
	if err != nil || uniqueMembers(hdrJSON) != nil {
		return nil, invalidToken("malformed token header")
	}
	var hdr tokenHeader
	if err := json.Unmarshal(hdrJSON, &hdr); err != nil {
		return nil, invalidToken("malformed token header")
	}
	// RFC 9068 §4: typ is at+jwt ("application/at+jwt" is the same media
	// type); other JWTs (ID tokens, DPoP proofs, JWT-SVIDs) are refused.
	if hdr.Typ == nil || !(strings.EqualFold(*hdr.Typ, "at+jwt") || strings.EqualFold(*hdr.Typ, "application/at+jwt")) {
		return nil, invalidToken("typ must be at+jwt")
	}
	alg, ok := v.algs[hdr.Alg]
	if !ok {
		return nil, invalidToken("unsupported alg")
	}
	// Keys come only from the configured issuer's key set: a key or key
	// URL embedded in the token is never trusted, so such a token is
	// refused outright (RFC 8725 §3.10 spirit).
	if hdr.JWK != nil || hdr.JKU != nil || hdr.X5U != nil || hdr.X5C != nil {
		return nil, invalidToken("token must not carry its own key")
	}
	if hdr.Crit != nil {
		return nil, invalidToken("crit not supported")
	}
	// The issuer is read before the signature is checked only to choose the
	// key set; nothing else in the payload is used before verification.
	payload, err := b64.DecodeString(parts[1])
	if err != nil {
		return nil, invalidToken("malformed token payload")
	}
	var pre struct {
		Iss string `json:"iss"`
	}
	if err := json.Unmarshal(payload, &pre); err != nil {
		return nil, invalidToken("malformed token payload")
	}
	src, ok := v.issuers[pre.Iss]
	if !ok {
		return nil, invalidToken("untrusted issuer")
	}
	key, err := v.key(ctx, src, hdr.Kid, alg)
	if err != nil {
		return nil, err
	}
	if _, err := jws.VerifyCompactFast(key, []byte(token), alg); err != nil {
		return nil, invalidToken("invalid signature")
	}
	if uniqueMembers(payload) != nil {
		return nil, invalidToken("malformed token claims")
	}
	var c Claims
	dec := json.NewDecoder(bytes.NewReader(payload))
	if err := dec.Decode(&c); err != nil {
		return nil, invalidToken("malformed token claims")
	}
	if err := json.Unmarshal(payload, &c.All); err != nil {
		return nil, invalidToken("malformed token claims")
	}
	// RFC 9068 §4: iss exactly matches (it chose the keys), aud contains
	// this resource, and exp is present and not passed.
	switch {
	case c.Issuer != pre.Iss:
		return nil, invalidToken("untrusted issuer")
	case c.Subject == "":
		return nil, invalidToken("missing sub")
	case c.JTI == "":
		// RFC 9068 §2.2: jti is required; without it a token cannot be
		// revoked on its own.
		return nil, invalidToken("missing jti")
	case c.Expiry == 0:
		return nil, invalidToken("missing exp")
	case c.IssuedAt == 0:
		return nil, invalidToken("missing iat")
	case len(c.Audience) == 0 || !v.anyAud && !c.Audience.Contains(v.aud):
		return nil, invalidToken("token is not for this resource (aud)")
	}
	if err := v.checkTimes(&c, now); err != nil {
		return nil, err
	}
	if c.Cnf != nil && c.Cnf.JKT == "" && c.Cnf.X5T == "" {
		return nil, invalidToken("cnf names no key")
	}
	// RFC 8693 §4.1: every actor in the chain is identified by sub.
	for a := c.Act; a != nil; a = a.Act {
		if a.Sub == "" {
			return nil, invalidToken("act without sub")
		}
	}
	return &c, nil
}

// checkTimes checks exp, nbf and iat (RFC 7519 §4.1.4-6) with the skew.
func (v *TokenVerifier) checkTimes(c *Claims, now time.Time) *OAuthError {
	switch {
	case !now.Before(time.Unix(c.Expiry, 0).Add(v.skew)):
		return invalidToken("token expired")
	case c.NotBefore != 0 && now.Add(v.skew).Before(time.Unix(c.NotBefore, 0)):
		return invalidToken("token not yet valid")
	case now.Add(v.skew).Before(time.Unix(c.IssuedAt, 0)):
		return invalidToken("token issued in the future")
	}
	return nil
}

// key finds the verification key kid of src, refreshing the set once when the
// kid is unknown (the issuer may have rotated).
func (v *TokenVerifier) key(ctx context.Context, src KeySource, kid string, alg jwa.SignatureAlgorithm) (any, error) {
	if kid == "" {
		return nil, invalidToken("missing kid")
	}
	for _, refresh := range []bool{false, true} {
		set, err := src.Keys(ctx, refresh)
		if err != nil {
			return nil, fmt.Errorf("identity: issuer keys: %w", err)
		}
		k, ok := set.LookupKeyID(kid)
		if !ok {
			continue
		}
		// A key that declares its algorithm is only used with it.
		if ka, ok := k.Algorithm(); ok && ka.String() != alg.String() {
			return nil, invalidToken("alg does not match the key")
		}
		var raw any
		if err := jwk.Export(k, &raw); err != nil {
			return nil, invalidToken("unusable key")
		}
		if check := dpopAlgKeys[alg.String()]; check == nil || !check(raw) {
			return nil, invalidToken("alg does not match the key")
		}
		return raw, nil
	}
	return nil, invalidToken("unknown key id")
}
