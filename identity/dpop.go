package identity

import (
	"bytes"
	"cmp"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jwk"
	"github.com/lestrrat-go/jwx/v3/jws/jwsbb"

	"github.com/sag-gateway/sag/internal/jsonscan"
)

// DPoP error codes (RFC 9449 §7.1, §9, §12.2).
const (
	// ErrCodeInvalidDPoPProof: the DPoP proof failed a check of RFC 9449 §4.3.
	ErrCodeInvalidDPoPProof = "invalid_dpop_proof"
	// ErrCodeUseDPoPNonce: the proof lacks the server-provided nonce, or
	// carries a stale one (RFC 9449 §9).
	ErrCodeUseDPoPNonce = "use_dpop_nonce"
)

// Defaults of DPoPOptions.
const (
	DefaultDPoPWindow        = 60 * time.Second
	DefaultDPoPSkew          = 5 * time.Second
	DefaultDPoPMaxProofBytes = 8 << 10
	DefaultDPoPMaxJTI        = 256
)

// minRSABits is the smallest RSA modulus accepted for RS*/PS* proofs.
const minRSABits = 2048

// DefaultDPoPAlgs returns the proof algorithms accepted when DPoPOptions.Algs is
// empty. "Ed25519" is the RFC 9864 name of what older clients call "EdDSA".
func DefaultDPoPAlgs() []string { return []string{"ES256", "EdDSA", "Ed25519", "PS256", "RS256"} }

// dpopAlgKeys maps every asymmetric JWS algorithm the verifier can accept to
// the check that a public key suits it. Symmetric algorithms and "none" are
// absent on purpose: RFC 9449 §4.2 and §11.6 forbid them.
var dpopAlgKeys = map[string]func(pub any) bool{
	"ES256":   ecCurve(elliptic.P256()),
	"ES384":   ecCurve(elliptic.P384()),
	"ES512":   ecCurve(elliptic.P521()),
	"EdDSA":   isEd25519,
	"Ed25519": isEd25519,
	"RS256":   isRSA,
	"RS384":   isRSA,
	"RS512":   isRSA,
	"PS256":   isRSA,
	"PS384":   isRSA,
	"PS512":   isRSA,
}

func ecCurve(c elliptic.Curve) func(any) bool {
	return func(pub any) bool {
		k, ok := pub.(*ecdsa.PublicKey)
		return ok && k.Curve == c
	}
}

func isEd25519(pub any) bool {
	k, ok := pub.(ed25519.PublicKey)
	return ok && len(k) == ed25519.PublicKeySize
}

func isRSA(pub any) bool {
	k, ok := pub.(*rsa.PublicKey)
	return ok && k.N != nil && k.N.BitLen() >= minRSABits
}

// ReplayCache remembers DPoP proof identifiers for as long as the proofs
// could be accepted (RFC 9449 §11.1).
//
// Seen records key until expires and reports whether key was already
// recorded and has not yet expired. It must be atomic: of two concurrent
// calls with the same key, at most one reports false. An implementation
// that cannot record a key returns an error, and the caller refuses the
// proof (fail closed); it never forgets an unexpired key to make room.
type ReplayCache interface {
	Seen(ctx context.Context, key string, expires time.Time) (bool, error)
}

// DPoPOptions configures a DPoPVerifier. Zero fields take the documented
// defaults; Replay is required.
type DPoPOptions struct {
	// Algs are the accepted proof algorithms, advertised in the algs
	// parameter of challenges. Default DefaultDPoPAlgs. Listing "EdDSA" also
	// accepts its RFC 9864 name "Ed25519". Symmetric algorithms and "none"
	// are refused.
	Algs []string
	// Window is how long after its iat a proof is accepted. Default 60s.
	Window time.Duration
	// Skew is how far in the future an iat may be. Default 5s.
	Skew time.Duration
	// MaxProofBytes is the largest DPoP header value parsed. Default 8 KiB.
	MaxProofBytes int
	// MaxJTI is the longest jti accepted, in bytes. Default 256.
	MaxJTI int
	// Replay records proof identifiers. Required.
	Replay ReplayCache
	// IssuedAfter, when set, refuses proofs whose iat is before it. A
	// server whose replay cache starts empty sets it to its start time
	// (truncated to the second, iat's precision), so that a restart opens
	// no replay window for proofs issued before it, save those issued in
	// the same second.
	IssuedAfter time.Time
	// Now is the clock. Default time.Now.
	Now func() time.Time
}

// DPoPVerifier checks DPoP proofs (RFC 9449) presented to one server. It is
// safe for concurrent use. Build it with NewDPoPVerifier.
type DPoPVerifier struct {
	algs     []string
	allowed  map[string]jwa.SignatureAlgorithm
	window   time.Duration
	skew     time.Duration
	maxProof int
	maxJTI   int
	replay   ReplayCache
	after    time.Time
	now      func() time.Time

	// keys caches proofKey's result by the jwk header's exact bytes and the
	// alg: a client signs every proof with the same key, so it is parsed
	// and thumbprinted once. Only keys that passed every check are kept.
	keysMu sync.Mutex
	keys   map[string]proofKeyEntry
	// targets caches normalizeHTU of request URIs (a gateway has few
	// endpoints; past maxCachedTargets URIs are normalised every time).
	targets sync.Map
	ntarget atomic.Int32
}

// maxCachedTargets bounds DPoPVerifier.targets.
const maxCachedTargets = 1024

// target returns the normalised request URI.
func (v *DPoPVerifier) target(u string) (string, error) {
	if n, ok := v.targets.Load(u); ok {
		return n.(string), nil
	}
	n, err := normalizeHTU(u)
	if err == nil && v.ntarget.Load() < maxCachedTargets {
		v.ntarget.Add(1)
		v.targets.Store(u, n)
	}
	return n, err
}

type proofKeyEntry struct {
	pub any
	jkt string
}

// maxCachedProofKeys bounds DPoPVerifier.keys; past it the cache starts over.
const maxCachedProofKeys = 10_000

// NewDPoPVerifier validates o, fills in defaults and returns a verifier.
func NewDPoPVerifier(o DPoPOptions) (*DPoPVerifier, error) {
	if o.Replay == nil {
		return nil, errors.New("identity: dpop: a replay cache is required")
	}
	if o.Window < 0 || o.Skew < 0 || o.MaxProofBytes < 0 || o.MaxJTI < 0 {
		return nil, errors.New("identity: dpop: negative limit")
	}
	v := &DPoPVerifier{
		allowed:  make(map[string]jwa.SignatureAlgorithm),
		window:   cmp.Or(o.Window, DefaultDPoPWindow),
		skew:     cmp.Or(o.Skew, DefaultDPoPSkew),
		maxProof: cmp.Or(o.MaxProofBytes, DefaultDPoPMaxProofBytes),
		maxJTI:   cmp.Or(o.MaxJTI, DefaultDPoPMaxJTI),
		replay:   o.Replay,
		after:    o.IssuedAfter,
		now:      o.Now,
	}
	if v.now == nil {
		v.now = time.Now
	}
	algs := o.Algs
	if len(algs) == 0 {
		algs = DefaultDPoPAlgs()
	}
	add := func(name string) error {
		if _, dup := v.allowed[name]; dup {
			return nil
		}
		if dpopAlgKeys[name] == nil {
			return fmt.Errorf("identity: dpop: algorithm %q is not an accepted asymmetric signature algorithm", name)
		}
		a, ok := jwa.LookupSignatureAlgorithm(name)
		if !ok || a.IsSymmetric() {
			return fmt.Errorf("identity: dpop: algorithm %q is not supported", name)
		}
		v.allowed[name] = a
		v.algs = append(v.algs, name)
		return nil
	}
	for _, name := range algs {
		if err := add(name); err != nil {
			return nil, err
		}
	}
	if _, ok := v.allowed["EdDSA"]; ok {
		if err := add("Ed25519"); err != nil {
			return nil, err
		}
	}
	return v, nil
}

// Algs returns the accepted proof algorithms, for the algs parameter of a
// WWW-Authenticate challenge.
func (v *DPoPVerifier) Algs() []string { return append([]string(nil), v.algs...) }

// DPoPRequest is what Verify needs to know about one HTTP request.
type DPoPRequest struct {
	// Proofs holds every DPoP header value of the request.
	Proofs []string
	// Method is the request method.
	Method string
	// URL is the configured external URL of the endpoint, never one built
	// from Host or X-Forwarded-* headers.
	URL string
	// AccessToken is the token of "Authorization: DPoP", "" when none.
	AccessToken string
	// Nonce is the server nonce the proof must carry, "" when nonces are off.
	Nonce string
	// CheckNonce, when set, replaces Nonce: it reports whether a proof's
	// nonce is one the server currently accepts (for rotating nonces).
	CheckNonce func(nonce string) bool
}

// DPoPProof is a verified DPoP proof.
type DPoPProof struct {
	// JKT is the RFC 7638 SHA-256 thumbprint of the proof key, base64url;
	// compare it with the access token's cnf.jkt (RFC 9449 §6.1).
	JKT string
	// JTI is the proof identifier.
	JTI string
	// HTM is the proof method; HTU is its normalised target URI.
	HTM, HTU string
	// IAT is the proof creation time.
	IAT time.Time
	// ATH is the access token hash, "" when no token was presented.
	ATH string
}

// b64 is base64url without padding, refusing non-canonical trailing bits.
var b64 = base64.RawURLEncoding.Strict()

// dpopHeader is the JOSE header of a proof. Pointers tell absent from empty.
type dpopHeader struct {
	Typ  *string         `json:"typ"`
	Alg  *string         `json:"alg"`
	JWK  json.RawMessage `json:"jwk"`
	Crit json.RawMessage `json:"crit"`
	B64  json.RawMessage `json:"b64"`
}

// dpopHeaderMembers and dpopClaimMembers are the member names the
// decoders below read. encoding/json matches names case-insensitively, but
// JOSE names are case-sensitive (RFC 7515 §4, RFC 7519 §4): a member
// spelled otherwise is refused (uniqueMembers), not read.
var (
	dpopHeaderMembers = []string{"typ", "alg", "jwk", "crit", "b64"}
	dpopClaimMembers  = []string{"jti", "htm", "htu", "iat", "ath", "nonce"}
)

// dpopClaims are the proof claims (RFC 9449 §4.2).
type dpopClaims struct {
	JTI   *string         `json:"jti"`
	HTM   *string         `json:"htm"`
	HTU   *string         `json:"htu"`
	IAT   json.RawMessage `json:"iat"`
	ATH   *string         `json:"ath"`
	Nonce *string         `json:"nonce"`
}

// privateJWKMembers are the JWK members that carry private or symmetric key
// material (RFC 7518 §6.2.2, §6.3.2, §6.4.1; RFC 8037 §2).
var privateJWKMembers = []string{"d", "p", "q", "dp", "dq", "qi", "oth", "k"}

// Verify checks the DPoP proof of r against every rule of RFC 9449 §4.3
// and records its jti. It returns the verified proof, or an error:
// a *OAuthError when the request is at fault (render it with Challenge and
// status 401), any other error when the server could not complete the
// check (replay store failure, misconfigured URL); refuse the request in
// both cases. Binding the proof key to the access token (cnf.jkt) is the
// caller's job: compare it with DPoPProof.JKT.
func (v *DPoPVerifier) Verify(ctx context.Context, r DPoPRequest) (*DPoPProof, error) {
	// §4.3 point 1: not more than one DPoP header field; §7.1: a proof is
	// required, so exactly one.
	switch len(r.Proofs) {
	case 0:
		return nil, invalidProof("missing DPoP header", nil)
	case 1:
	default:
		return nil, invalidProof("more than one DPoP header", nil)
	}
	proof := r.Proofs[0]
	// §11.1 (memory exhaustion): bound the input before any parsing.
	if len(proof) > v.maxProof {
		return nil, invalidProof("proof too large", nil)
	}
	// §4.3 point 2: a single, well-formed JWT, which is the JWS compact
	// serialization only (RFC 7519 §1); the JSON serialization is refused.
	if strings.HasPrefix(strings.TrimSpace(proof), "{") {
		return nil, invalidProof("proof must use JWS compact serialization", nil)
	}
	if !isCompactJWS(proof) {
		return nil, invalidProof("malformed proof", nil)
	}
	// One spelling per signed proof (RFC 7515 §2): a proof re-encoded with
	// non-zero unused bits is not a new proof.
	dot1, dot2 := strings.IndexByte(proof, '.'), strings.LastIndexByte(proof, '.')
	sig, err := b64.DecodeString(proof[dot2+1:])
	if err != nil {
		return nil, invalidProof("malformed proof signature", err)
	}
	hdrJSON, err := b64.DecodeString(proof[:dot1])
	if err != nil {
		return nil, invalidProof("malformed proof header", err)
	}
	if err := uniqueMembers(hdrJSON, dpopHeaderMembers...); err != nil {
		return nil, invalidProof("malformed proof header", err)
	}
	var hdr dpopHeader
	if err := json.Unmarshal(hdrJSON, &hdr); err != nil {
		return nil, invalidProof("malformed proof header", err)
	}
	// §4.3 point 4 and §11.5: typ is dpop+jwt (media type names compare
	// case-insensitively and may carry the "application/" prefix, RFC 7515
	// §4.1.9).
	if hdr.Typ == nil || !(strings.EqualFold(*hdr.Typ, "dpop+jwt") || strings.EqualFold(*hdr.Typ, "application/dpop+jwt")) {
		return nil, invalidProof("typ must be dpop+jwt", nil)
	}
	// §4.3 point 5, §4.2 and §11.6: alg is an allow-listed asymmetric
	// algorithm, never none nor a MAC.
	if hdr.Alg == nil {
		return nil, invalidProof("missing alg", nil)
	}
	alg, ok := v.allowed[*hdr.Alg]
	if !ok {
		return nil, invalidProof("unsupported alg", nil)
	}
	// RFC 7515 §4.1.11: no extension is understood here, so crit is refused;
	// so is b64 (RFC 7797 §3): a proof's payload is always encoded.
	if hdr.Crit != nil {
		return nil, invalidProof("crit not supported", nil)
	}
	if hdr.B64 != nil {
		return nil, invalidProof("b64 not supported", nil)
	}
	// §4.2: the jwk header carries the public key.
	if len(hdr.JWK) == 0 || bytes.Equal(hdr.JWK, []byte("null")) {
		return nil, invalidProof("missing jwk", nil)
	}
	pub, jkt, derr := v.cachedProofKey(hdr.JWK, *hdr.Alg)
	if derr != nil {
		return nil, derr
	}
	// §4.3 point 6: the signature verifies with the jwk of the header, over
	// the JWS signing input (RFC 7515 §5.2 steps 7-8). The header is the one
	// read above, so its alg is the alg verified with, and the key suits it
	// (proofKey).
	if err := jwsbb.Verify(pub, alg.String(), []byte(proof[:dot2]), sig); err != nil {
		return nil, invalidProof("invalid signature", err)
	}
	payload, err := b64.DecodeString(proof[dot1+1 : dot2])
	if err != nil {
		return nil, invalidProof("malformed proof claims", err)
	}
	if err := uniqueMembers(payload, dpopClaimMembers...); err != nil {
		return nil, invalidProof("malformed proof claims", err)
	}
	var c dpopClaims
	if err := json.Unmarshal(payload, &c); err != nil {
		return nil, invalidProof("malformed proof claims", err)
	}
	// §4.3 point 3: the claims required by §4.2 are present.
	switch {
	case c.JTI == nil || *c.JTI == "":
		return nil, invalidProof("missing jti", nil)
	case c.HTM == nil || *c.HTM == "":
		return nil, invalidProof("missing htm", nil)
	case c.HTU == nil || *c.HTU == "":
		return nil, invalidProof("missing htu", nil)
	case len(c.IAT) == 0:
		return nil, invalidProof("missing iat", nil)
	}
	// §11.1: unnecessarily large jti values are refused.
	if len(*c.JTI) > v.maxJTI {
		return nil, invalidProof("jti too long", nil)
	}
	// §4.3 point 8: htm matches the method. Methods are case-sensitive
	// (RFC 9110 §9.1), so the comparison is exact.
	if *c.HTM != r.Method {
		return nil, invalidProof("htm does not match the request method", nil)
	}
	// §4.3 point 9: htu matches the target URI ignoring query and fragment,
	// after syntax- and scheme-based normalisation (RFC 3986 §6.2.2,
	// §6.2.3). A query or fragment in htu (which §4.2 says htu should not
	// have) is therefore ignored, as point 9 says, not refused.
	want, err := v.target(r.URL)
	if err != nil {
		return nil, fmt.Errorf("identity: dpop: endpoint URL: %w", err)
	}
	// A proof whose htu is the request URI as the gateway writes it (what
	// clients usually send) needs no normalisation.
	htu := want
	if *c.HTU != r.URL {
		if htu, err = normalizeHTU(*c.HTU); err != nil {
			return nil, invalidProof("malformed htu", err)
		}
		if htu != want {
			return nil, invalidProof("htu does not match the request URI", nil)
		}
	}
	// §4.3 point 11 and §11.1: iat is inside [now-Window, now+Skew].
	iat, err := parseNumericDate(c.IAT)
	if err != nil {
		return nil, invalidProof("malformed iat", err)
	}
	now := v.now()
	if iat.Before(now.Add(-v.window)) {
		return nil, invalidProof("proof too old", nil)
	}
	if iat.After(now.Add(v.skew)) {
		return nil, invalidProof("proof issued in the future", nil)
	}
	if iat.Before(v.after) {
		return nil, invalidProof("proof issued before the server started", nil)
	}
	// §4.3 point 12 and §7: with an access token, ath is the base64url
	// SHA-256 of it; a proof carrying ath is only usable with that token.
	var ath string
	if r.AccessToken != "" {
		if c.ATH == nil || *c.ATH == "" {
			return nil, invalidProof("missing ath", nil)
		}
		sum := sha256.Sum256([]byte(r.AccessToken))
		ath = base64.RawURLEncoding.EncodeToString(sum[:])
		if subtle.ConstantTimeCompare([]byte(*c.ATH), []byte(ath)) != 1 {
			return nil, invalidProof("ath does not match the access token", nil)
		}
	} else if c.ATH != nil {
		return nil, invalidProof("ath without an access token", nil)
	}
	// §4.3 point 10, §9 and §11.3: when the server issued a nonce, the proof
	// carries it; otherwise the client must retry with the current nonce.
	if r.Nonce != "" || r.CheckNonce != nil {
		if c.Nonce == nil {
			return nil, &OAuthError{Status: http.StatusUnauthorized, Code: ErrCodeUseDPoPNonce, Description: "nonce required", Scheme: "DPoP"}
		}
		valid := r.CheckNonce != nil && r.CheckNonce(*c.Nonce) ||
			r.CheckNonce == nil && subtle.ConstantTimeCompare([]byte(*c.Nonce), []byte(r.Nonce)) == 1
		if !valid {
			return nil, &OAuthError{Status: http.StatusUnauthorized, Code: ErrCodeUseDPoPNonce, Description: "nonce invalid or expired", Scheme: "DPoP"}
		}
	}
	// §11.1: the jti is single-use "in the context of the target URI" for as
	// long as the proof is acceptable (until iat+Window). The key is a hash
	// of the normalised htu, the key thumbprint and the jti: the method and
	// the query are not part of it, so changing their spelling cannot
	// replay a proof, and the thumbprint keeps one client from burning
	// another's jti. Checked last, so refused proofs use no cache space.
	h := sha256.New()
	for _, s := range []string{"sag-dpop-jti", htu, jkt, *c.JTI} {
		h.Write([]byte(s))
		h.Write([]byte{0})
	}
	seen, err := v.replay.Seen(ctx, hex.EncodeToString(h.Sum(nil)), iat.Add(v.window))
	if err != nil {
		return nil, fmt.Errorf("identity: dpop: replay cache: %w", err)
	}
	if seen {
		return nil, invalidProof("proof replayed", nil)
	}
	return &DPoPProof{JKT: jkt, JTI: *c.JTI, HTM: *c.HTM, HTU: htu, IAT: iat, ATH: ath}, nil
}

// cachedProofKey is proofKey, remembered per (jwk bytes, alg).
func (v *DPoPVerifier) cachedProofKey(raw json.RawMessage, alg string) (any, string, *OAuthError) {
	k := alg + "\x00" + string(raw)
	v.keysMu.Lock()
	e, ok := v.keys[k]
	v.keysMu.Unlock()
	if ok {
		return e.pub, e.jkt, nil
	}
	pub, jkt, derr := v.proofKey(raw, alg)
	if derr != nil {
		return nil, "", derr
	}
	v.keysMu.Lock()
	if v.keys == nil || len(v.keys) >= maxCachedProofKeys {
		v.keys = map[string]proofKeyEntry{}
	}
	v.keys[k] = proofKeyEntry{pub: pub, jkt: jkt}
	v.keysMu.Unlock()
	return pub, jkt, nil
}

// proofKey parses the jwk header and returns the raw public key and its
// thumbprint, refusing private and symmetric keys (§4.2, §4.3 point 7) and
// keys that do not suit alg.
func (v *DPoPVerifier) proofKey(raw json.RawMessage, alg string) (any, string, *OAuthError) {
	var members map[string]json.RawMessage
	if err := json.Unmarshal(raw, &members); err != nil || members == nil {
		return nil, "", invalidProof("malformed jwk", err)
	}
	if string(members["kty"]) == `"oct"` {
		return nil, "", invalidProof("symmetric jwk not allowed", nil)
	}
	for _, m := range privateJWKMembers {
		if _, ok := members[m]; ok {
			return nil, "", invalidProof("jwk contains a private key", nil)
		}
	}
	key, err := jwk.ParseKey(raw)
	if err != nil {
		return nil, "", invalidProof("malformed jwk", err)
	}
	if priv, err := jwk.IsPrivateKey(key); err != nil || priv {
		return nil, "", invalidProof("jwk must be a public asymmetric key", err)
	}
	var pub any
	if err := jwk.Export(key, &pub); err != nil {
		return nil, "", invalidProof("malformed jwk", err)
	}
	if fits := dpopAlgKeys[alg]; fits == nil || !fits(pub) {
		return nil, "", invalidProof("jwk does not suit alg", nil)
	}
	jkt, err := JWKThumbprint(key)
	if err != nil {
		return nil, "", invalidProof("malformed jwk", err)
	}
	return pub, jkt, nil
}

// isCompactJWS reports whether s is three non-empty base64url segments
// separated by dots, with no other character (no whitespace, padding or
// commas from folded header lines).
func isCompactJWS(s string) bool {
	dots := 0
	prev := byte('.')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '.':
			if prev == '.' {
				return false
			}
			dots++
		case c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-', c == '_':
		default:
			return false
		}
		prev = c
	}
	return dots == 2 && prev != '.'
}

// uniqueMembers checks that data is one JSON object whose members have
// distinct names, so that no two parsers can read different values, and
// that none is a known name spelled in another case.
func uniqueMembers(data []byte, known ...string) error {
	// RFC 7515 §2 and RFC 8259 §8.1: the JSON is UTF-8. (encoding/json
	// would read invalid bytes as U+FFFD, making distinct names equal.)
	if !utf8.Valid(data) || !json.Valid(data) {
		return errors.New("not UTF-8 JSON")
	}
	obj := bytes.TrimSpace(data)
	if obj[0] != '{' {
		return errors.New("not a JSON object")
	}
	// A proof or token has a handful of members: a list beats a map.
	var seen [16]string
	names, dup, miscased := seen[:0], false, false
	jsonscan.Members(obj, func(key string, _, _ []byte) {
		// encoding/json matches member names case-insensitively, so names
		// that differ only in case ("typ", "Typ") are as ambiguous as
		// exact duplicates: both are refused.
		for _, n := range names {
			if strings.EqualFold(n, key) {
				dup = true
			}
		}
		for _, k := range known {
			if key != k && strings.EqualFold(key, k) {
				miscased = true
			}
		}
		names = append(names, key)
	})
	switch {
	case dup:
		return errors.New("duplicate member")
	case miscased:
		return errors.New("member name in another case")
	}
	return nil
}

// parseNumericDate parses a JSON NumericDate (RFC 7519 §2): a number of
// seconds, possibly fractional. Strings and out-of-range values are refused.
func parseNumericDate(raw json.RawMessage) (time.Time, error) {
	s := string(raw)
	if s == "" || !(s[0] == '-' || (s[0] >= '0' && s[0] <= '9')) {
		return time.Time{}, errors.New("not a number")
	}
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		if n < 0 || n > 1<<40 {
			return time.Time{}, errors.New("out of range")
		}
		return time.Unix(n, 0), nil
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsNaN(f) || f < 0 || f > 1<<40 {
		return time.Time{}, errors.New("not a valid NumericDate")
	}
	sec, frac := math.Modf(f)
	return time.Unix(int64(sec), int64(frac*1e9)), nil
}

// normalizeHTU returns the comparison form of an http(s) URI: scheme and
// host lowercased, default port dropped, empty path as "/", percent-encoding
// normalised (RFC 3986 §6.2.2.1, §6.2.2.2), query and fragment removed
// (RFC 9449 §4.3 point 9). URIs with userinfo are refused.
func normalizeHTU(s string) (string, error) {
	u, err := url.Parse(s)
	if err != nil {
		return "", errors.New("not a URI")
	}
	if u.Opaque != "" || u.User != nil {
		return "", errors.New("not a plain http(s) URI")
	}
	scheme := strings.ToLower(u.Scheme)
	var defPort int
	switch scheme {
	case "https":
		defPort = 443
	case "http":
		defPort = 80
	default:
		return "", errors.New("scheme is not http or https")
	}
	host := strings.ToLower(u.Hostname())
	if host == "" {
		return "", errors.New("missing host")
	}
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	if p := u.Port(); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return "", errors.New("invalid port")
		}
		if n != defPort {
			host += ":" + strconv.Itoa(n)
		}
	}
	path := normalizePercent(u.EscapedPath())
	if path == "" {
		path = "/"
	}
	return scheme + "://" + host + path, nil
}

// normalizePercent uppercases percent-encodings and decodes those of
// unreserved characters (RFC 3986 §6.2.2.1, §6.2.2.2).
func normalizePercent(p string) string {
	if !strings.Contains(p, "%") {
		return p
	}
	const hexdig = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(p); i++ {
		if p[i] == '%' && i+2 < len(p) {
			hi, lo := unhex(p[i+1]), unhex(p[i+2])
			if hi >= 0 && lo >= 0 {
				c := byte(hi<<4 | lo)
				if isUnreserved(c) {
					b.WriteByte(c)
				} else {
					b.WriteByte('%')
					b.WriteByte(hexdig[hi])
					b.WriteByte(hexdig[lo])
				}
				i += 2
				continue
			}
		}
		b.WriteByte(p[i])
	}
	return b.String()
}

func unhex(c byte) int {
	switch {
	case c >= '0' && c <= '9':
		return int(c - '0')
	case c >= 'a' && c <= 'f':
		return int(c-'a') + 10
	case c >= 'A' && c <= 'F':
		return int(c-'A') + 10
	}
	return -1
}

func isUnreserved(c byte) bool {
	return c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' ||
		c == '-' || c == '.' || c == '_' || c == '~'
}
