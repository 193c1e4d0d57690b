package identity

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/sag-gateway/sag/internal/lru"
)

// OnBehalfOf describes one outgoing request to an upstream: where it goes
// and whom it is for.
type OnBehalfOf struct {
	// Upstream is the upstream's name; Audience its URL, the aud of the
	// token minted for it.
	Upstream, Audience string
	// Binding is how the token is bound: "dpop" (default) or "mtls".
	Binding string
	// Principal is the caller, nil for the gateway's own traffic (catalog
	// discovery).
	Principal *Principal
	// Session is the session-graph node the minted token hangs off, so that
	// killing the session revokes the token.
	Session string
}

// Minted is the lineage record of one minted token.
type Minted struct {
	JTI, Session, Upstream, Subject string
	Expiry                          time.Time
}

// MinterOptions configure a Minter.
type MinterOptions struct {
	Issuer *Issuer
	// Key is the gateway's DPoP key: tokens are bound to it and every
	// request carries a fresh proof signed with it.
	Key *DPoPKey
	// CertThumbprint returns the x5t#S256 of the gateway's client
	// certificate, for mTLS-bound tokens; nil refuses Binding "mtls".
	CertThumbprint func() (string, error)
	// Self is the gateway's own identity: the current actor of every
	// minted token (its SPIFFE ID, or its public URL).
	Self string
	// TTL is the lifetime of minted tokens.
	TTL time.Duration
	// Record stores each minted token's lineage before it is used; an
	// error fails the request (fail closed).
	Record func(ctx context.Context, m Minted) error
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Minter mints the per-upstream on-behalf-of tokens (DESIGN.md pipeline step
// 6): aud = the upstream, sub = the user, act = the gateway with the agent as
// prior actor, a short lifetime, bound to the gateway's key. Tokens are cached
// per (session, upstream) until shortly before they expire. The caller's own
// token is never forwarded. Minter implements upstreams.Credentials.
type Minter struct {
	o     MinterOptions
	cache *lru.Cache[mintKey, *mintedToken]
}

type mintKey struct{ session, upstream, binding string }

type mintedToken struct {
	token   string
	refresh time.Time // mint a new one from here on
}

// NewMinter checks o and returns a Minter.
func NewMinter(o MinterOptions) (*Minter, error) {
	if o.Issuer == nil || o.Key == nil || o.Self == "" || o.TTL <= 0 {
		return nil, errors.New("identity: minter needs an issuer, a DPoP key, the gateway's identity and a lifetime")
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Minter{o: o, cache: lru.New[mintKey, *mintedToken](maxMinted)}, nil
}

// maxMinted bounds the token cache; past it the least recently used token
// is dropped.
const maxMinted = 100_000

// Apply sets the Authorization header (and, for DPoP, a fresh proof for this
// request's method and URL, RFC 9449 §7) of a request to an upstream.
func (m *Minter) Apply(req *http.Request, o OnBehalfOf) error {
	c, err := m.Credential(req.Context(), o)
	if err != nil {
		return err
	}
	return c.Apply(req)
}

// Credential returns the token for o (minted, or cached for its session and
// upstream): pipeline step 7 takes it here and hands it to the forwarder.
func (m *Minter) Credential(ctx context.Context, o OnBehalfOf) (*Credential, error) {
	binding := o.Binding
	if binding == "" {
		binding = "dpop"
	}
	tok, err := m.token(ctx, o, binding)
	if err != nil {
		return nil, err
	}
	return &Credential{token: tok, binding: binding, key: m.o.Key}, nil
}

// Credential is a token minted for one upstream: Apply authenticates each
// HTTP request sent with it. Its token never appears in its String form.
type Credential struct {
	token, binding string
	key            *DPoPKey
}

// Apply sets req's Authorization header and, for a DPoP-bound token, a
// fresh proof for req's method and URL (RFC 9449 §7: one proof per request).
func (c *Credential) Apply(req *http.Request) error {
	if c.binding == "mtls" {
		// RFC 8705 §3: certificate-bound tokens use the Bearer scheme; the
		// transport presents the certificate.
		req.Header.Set("Authorization", "Bearer "+c.token)
		return nil
	}
	proof, err := c.key.Proof(req.Method, req.URL.String(), c.token, "")
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "DPoP "+c.token)
	req.Header.Set("DPoP", proof)
	return nil
}

func (c *Credential) String() string { return "credential(" + c.binding + ")" }

// token returns the cached token for (session, upstream), minting one when
// there is none or it is close to expiry.
func (m *Minter) token(ctx context.Context, o OnBehalfOf, binding string) (string, error) {
	k := mintKey{session: o.Session, upstream: o.Upstream, binding: binding}
	if o.Principal == nil {
		k.session = ""
	}
	now := m.o.Now()
	t, ok := m.cache.Get(k)
	if ok && now.Before(t.refresh) {
		return t.token, nil
	}
	c := Claims{Audience: Audience{o.Audience}, ClientID: m.o.Self}
	switch binding {
	case "dpop":
		c.Cnf = &Confirmation{JKT: m.o.Key.Thumbprint()}
	case "mtls":
		if m.o.CertThumbprint == nil {
			return "", errors.New("mTLS binding needs the gateway's X.509-SVID")
		}
		x5t, err := m.o.CertThumbprint()
		if err != nil {
			return "", err
		}
		c.Cnf = &Confirmation{X5T: x5t}
	default:
		return "", fmt.Errorf("unknown token binding %q", binding)
	}
	if p := o.Principal; p != nil {
		// RFC 8693 §4.1: the outermost act is the current actor (the
		// gateway); the agent, and whoever acted before it, are prior
		// actors.
		c.Subject, c.SessionID = p.User, o.Session
		prior := p.Act
		if prior == nil && p.Agent != "" {
			prior = &Actor{Sub: p.Agent}
		}
		c.Act = &Actor{Sub: m.o.Self, Act: prior}
		c.Scope = strings.Join(p.Scopes, " ")
	} else {
		c.Subject = m.o.Self // the gateway acting as itself
	}
	tok, claims, err := m.o.Issuer.Mint(c, m.o.TTL)
	if err != nil {
		return "", err
	}
	if m.o.Record != nil && o.Principal != nil {
		if err := m.o.Record(context.WithoutCancel(ctx), Minted{JTI: claims.JTI, Session: o.Session, Upstream: o.Upstream, Subject: c.Subject, Expiry: time.Unix(claims.Expiry, 0)}); err != nil {
			return "", fmt.Errorf("record minted token: %w", err)
		}
	}
	// Renew once 80% of the lifetime has passed, so that a token never
	// expires in flight.
	refresh := now.Add(m.o.TTL * 4 / 5)
	m.cache.Add(k, &mintedToken{token: tok, refresh: refresh})
	return tok, nil
}

// Forget drops the cached tokens of sessions, so that the next request mints
// anew (after a kill, a revoked session's token must not be reused).
func (m *Minter) Forget(sessions ...string) {
	drop := map[string]bool{}
	for _, s := range sessions {
		drop[s] = true
	}
	m.cache.RemoveFunc(func(k mintKey) bool { return drop[k.session] })
}
