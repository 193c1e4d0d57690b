package identity

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/lestrrat-go/httprc/v3"
	"github.com/lestrrat-go/jwx/v3/jwk"
)

// Issuer mints JWT access tokens (RFC 9068) signed with the gateway's keys:
// development tokens (sag token), token-exchange results and per-upstream
// on-behalf-of tokens.
type Issuer struct {
	// URL is the iss value: the gateway's public URL.
	URL  string
	Keys *Keys
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

func (i *Issuer) now() time.Time {
	if i.Now != nil {
		return i.Now()
	}
	return time.Now()
}

// Mint signs c as an at+jwt after filling iss, iat, exp (from ttl) and a
// random jti. It returns the token and the claims as signed.
func (i *Issuer) Mint(c Claims, ttl time.Duration) (string, *Claims, error) {
	if c.Subject == "" || len(c.Audience) == 0 {
		return "", nil, errors.New("identity: mint: sub and aud are required")
	}
	if ttl <= 0 {
		return "", nil, errors.New("identity: mint: lifetime must be positive")
	}
	now := i.now()
	c.Issuer = i.URL
	c.IssuedAt = now.Unix()
	c.Expiry = now.Add(ttl).Unix()
	c.JTI = NewID()
	tok, err := i.Keys.Sign("at+jwt", c)
	if err != nil {
		return "", nil, err
	}
	return tok, &c, nil
}

// NewID returns 128 random bits, base64url: token and proof identifiers.
func NewID() string {
	var b [16]byte
	rand.Read(b[:])
	return b64.EncodeToString(b[:])
}

// FileKeys reads a JWKS file once; the set is refused if it holds private
// or symmetric keys.
func FileKeys(path string) (StaticKeys, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return StaticKeys{}, fmt.Errorf("identity: jwks file: %w", err)
	}
	set, err := jwk.Parse(b)
	if err != nil {
		return StaticKeys{}, fmt.Errorf("identity: jwks file %s: %w", path, err)
	}
	for i := 0; i < set.Len(); i++ {
		k, _ := set.Key(i)
		if priv, err := jwk.IsPrivateKey(k); err != nil || priv {
			return StaticKeys{}, fmt.Errorf("identity: jwks file %s: key %d is not a public asymmetric key", path, i)
		}
	}
	return StaticKeys{Set: func() jwk.Set { return set }}, nil
}

// minRefresh is the least time between two forced JWKS refreshes of one
// issuer, so that tokens with made-up key ids cannot make SAG hammer it.
const minRefresh = 10 * time.Second

// RemoteKeys fetches an issuer's JWKS over HTTP and keeps it fresh in the
// background (jwx's cache, honouring Cache-Control within bounds). An
// unknown kid forces a refresh at most once per minRefresh.
type RemoteKeys struct {
	url   string
	cache *jwk.Cache

	mu   sync.Mutex
	last time.Time
}

// NewRemoteKeys registers url with a background cache that lives until ctx
// ends. The first fetch does not block: a token met before the keys arrived
// triggers one.
func NewRemoteKeys(ctx context.Context, url string, client *http.Client) (*RemoteKeys, error) {
	cache, err := jwk.NewCache(ctx, httprc.NewClient())
	if err != nil {
		return nil, fmt.Errorf("identity: jwks cache: %w", err)
	}
	opts := []jwk.RegisterOption{jwk.WithWaitReady(false), jwk.WithMinInterval(time.Minute), jwk.WithMaxInterval(time.Hour)}
	if client != nil {
		opts = append(opts, jwk.WithHTTPClient(client))
	}
	if err := cache.Register(ctx, url, opts...); err != nil {
		return nil, fmt.Errorf("identity: jwks %s: %w", url, err)
	}
	return &RemoteKeys{url: url, cache: cache}, nil
}

// Keys returns the cached set, fetching it when refresh is asked for (and
// allowed by the rate limit) or when it never arrived.
func (r *RemoteKeys) Keys(ctx context.Context, refresh bool) (jwk.Set, error) {
	set, err := r.cache.Lookup(ctx, r.url)
	if err == nil && !refresh {
		return set, nil
	}
	// Until the first fetch succeeds, retry at most once a second (the
	// first requests must not use up the refresh budget); after it, at most
	// once per minRefresh.
	r.mu.Lock()
	every := minRefresh
	if err != nil {
		every = time.Second
	}
	allowed := time.Since(r.last) >= every
	if allowed {
		r.last = time.Now()
	}
	r.mu.Unlock()
	if !allowed {
		if err != nil {
			return nil, fmt.Errorf("jwks %s not available", r.url)
		}
		return set, nil
	}
	fresh, ferr := r.cache.Refresh(ctx, r.url)
	if ferr != nil {
		if err == nil {
			return set, nil // keep serving the old set
		}
		return nil, fmt.Errorf("jwks %s: %w", r.url, ferr)
	}
	return fresh, nil
}
