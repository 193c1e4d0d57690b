package identity

import (
	"cmp"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/sag-gateway/sag/internal/lru"
)

// Client authentication methods at the token endpoint (RFC 7591 §2).
const (
	AuthMethodNone              = "none"
	AuthMethodClientSecretBasic = "client_secret_basic"
	AuthMethodClientSecretPost  = "client_secret_post"
)

// OAuthClient is a client of the authorization server: pre-registered in
// the configuration, registered dynamically (RFC 7591), or described by a
// client ID metadata document (its client_id is the document's URL).
type OAuthClient struct {
	ID           string   `json:"client_id"`
	Name         string   `json:"client_name,omitempty"`
	URI          string   `json:"client_uri,omitempty"`
	RedirectURIs []string `json:"redirect_uris"`
	AuthMethod   string   `json:"token_endpoint_auth_method"`
	GrantTypes   []string `json:"grant_types,omitempty"`
	// SecretHash is the hex SHA-256 of a confidential client's secret.
	// The secret itself is kept nowhere.
	SecretHash string `json:"secret_hash,omitempty"`
	// FirstParty marks a client that is part of SAG itself (the console):
	// signing in to it is the consent, so no consent page is shown.
	FirstParty bool `json:"-"`
}

// public reports whether the client has no secret.
func (c *OAuthClient) public() bool { return c.AuthMethod == AuthMethodNone }

// checkSecret compares secret with the client's, in constant time.
func (c *OAuthClient) checkSecret(secret string) bool {
	sum := sha256.Sum256([]byte(secret))
	want, err := hex.DecodeString(c.SecretHash)
	return err == nil && len(want) == len(sum) && subtle.ConstantTimeCompare(sum[:], want) == 1
}

// HashClientSecret returns the SecretHash of secret.
func HashClientSecret(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}

// allowsRedirect reports whether uri is one of the client's redirect URIs:
// an exact string match, except that a loopback redirect URI matches at
// any port (RFC 8252 §7.3).
func (c *OAuthClient) allowsRedirect(uri string) bool {
	if slices.Contains(c.RedirectURIs, uri) {
		return true
	}
	given, err := url.Parse(uri)
	if err != nil || given.Scheme != "http" || !loopbackHost(given.Hostname()) {
		return false
	}
	for _, r := range c.RedirectURIs {
		reg, err := url.Parse(r)
		if err != nil || reg.Scheme != "http" || !loopbackHost(reg.Hostname()) {
			continue
		}
		if reg.Hostname() == given.Hostname() && reg.EscapedPath() == given.EscapedPath() && reg.RawQuery == given.RawQuery &&
			reg.User == nil && given.User == nil && given.Fragment == "" {
			return true
		}
	}
	return false
}

func loopbackHost(h string) bool {
	if h == "localhost" {
		return true
	}
	a, err := netip.ParseAddr(h)
	return err == nil && a.IsLoopback()
}

// checkRedirectURI accepts the redirect URIs of RFC 8252 and OAuth 2.1
// §2.3.1: absolute, without a fragment, and https, http on a loopback
// host, or a private-use scheme (a reverse domain name, §7.1).
func checkRedirectURI(s string) error {
	u, err := url.Parse(s)
	switch {
	case err != nil || !u.IsAbs() || u.Opaque != "" && !strings.Contains(u.Scheme, "."):
		return fmt.Errorf("redirect URI %q is not an absolute URI", s)
	case u.Fragment != "" || strings.Contains(s, "#"):
		return fmt.Errorf("redirect URI %q has a fragment", s)
	case u.User != nil:
		return fmt.Errorf("redirect URI %q has user information", s)
	case u.Scheme == "https" && u.Host != "":
		return nil
	case u.Scheme == "http" && loopbackHost(u.Hostname()):
		return nil
	case strings.Contains(u.Scheme, "."):
		return nil // a private-use scheme of a native app
	}
	return fmt.Errorf("redirect URI %q must be https, http on a loopback address, or a private-use scheme (com.example.app:/…)", s)
}

// checkClient validates a client's metadata (RFC 7591 §2) as SAG supports
// it: redirect URIs, the code and refresh grants only, and an
// authentication method it knows.
func checkClient(c *OAuthClient) error {
	if len(c.RedirectURIs) == 0 {
		return errors.New("redirect_uris is required")
	}
	if len(c.RedirectURIs) > 16 {
		return errors.New("at most 16 redirect_uris")
	}
	for _, r := range c.RedirectURIs {
		if err := checkRedirectURI(r); err != nil {
			return err
		}
	}
	switch c.AuthMethod {
	case "":
		c.AuthMethod = AuthMethodNone
	case AuthMethodNone, AuthMethodClientSecretBasic, AuthMethodClientSecretPost:
	default:
		return fmt.Errorf("token_endpoint_auth_method %q is not supported (none, client_secret_basic, client_secret_post)", c.AuthMethod)
	}
	for _, g := range c.GrantTypes {
		if g != GrantTypeAuthorizationCode && g != GrantTypeRefreshToken {
			return fmt.Errorf("grant type %q is not supported (authorization_code, refresh_token)", g)
		}
	}
	if len(c.Name) > 200 || len(c.URI) > 2000 {
		return errors.New("client_name or client_uri too long")
	}
	return nil
}

// isURLClientID reports whether id names a client ID metadata document: an
// https URL with a path.
func isURLClientID(id string) bool {
	u, err := url.Parse(id)
	return err == nil && u.Scheme == "https" && u.Host != "" && u.Path != "" && u.Path != "/"
}

// Limits of client ID metadata documents.
const (
	maxMetadataDocument   = 16 << 10
	metadataFetchTimeout  = 5 * time.Second
	minMetadataCache      = time.Minute
	maxMetadataCache      = 24 * time.Hour
	defaultMetadataCache  = 5 * time.Minute
	maxCachedMetadataDocs = 1024
)

// MetadataDocumentOptions configure the fetching of client ID metadata
// documents.
type MetadataDocumentOptions struct {
	// AllowPrivate lets documents be fetched from loopback, private and
	// link-local addresses (for clients inside the operator's network).
	AllowPrivate bool
	// RootCAs, when set, replaces the system roots for these fetches.
	TLS *tls.Config
	// Timeout bounds one fetch; default 5 s.
	Timeout time.Duration
}

// MetadataDocuments fetches and caches client ID metadata documents, with
// the limits a server fetching URLs chosen by strangers needs: https only,
// no redirects, no private addresses (checked on the address actually
// dialled, so DNS cannot smuggle one in), 16 KiB, 5 s.
type MetadataDocuments struct {
	http  *http.Client
	cache *lru.Cache[string, cachedDocument]
	now   func() time.Time
}

type cachedDocument struct {
	client  *OAuthClient
	expires time.Time
}

// NewMetadataDocuments returns a fetcher.
func NewMetadataDocuments(o MetadataDocumentOptions) *MetadataDocuments {
	dialer := &net.Dialer{Timeout: cmp.Or(o.Timeout, metadataFetchTimeout)}
	if !o.AllowPrivate {
		dialer.Control = func(_, address string, _ syscall.RawConn) error {
			ap, err := netip.ParseAddrPort(address)
			if err != nil {
				return err
			}
			if a := ap.Addr().Unmap(); !publicAddr(a) {
				return fmt.Errorf("address %s is not public", a)
			}
			return nil
		}
	}
	tr := &http.Transport{
		DialContext:           dialer.DialContext,
		TLSClientConfig:       o.TLS,
		TLSHandshakeTimeout:   metadataFetchTimeout,
		ResponseHeaderTimeout: metadataFetchTimeout,
		MaxIdleConns:          4,
		IdleConnTimeout:       30 * time.Second,
	}
	return &MetadataDocuments{
		http: &http.Client{
			Transport: tr,
			Timeout:   cmp.Or(o.Timeout, metadataFetchTimeout),
			CheckRedirect: func(*http.Request, []*http.Request) error {
				return errors.New("redirects are not followed")
			},
		},
		cache: lru.New[string, cachedDocument](maxCachedMetadataDocs),
		now:   time.Now,
	}
}

// publicAddr reports whether a is a global unicast address outside the
// private, shared (RFC 6598) and documentation ranges.
func publicAddr(a netip.Addr) bool {
	if !a.IsGlobalUnicast() || a.IsPrivate() {
		return false
	}
	for _, p := range nonPublic {
		if p.Contains(a) {
			return false
		}
	}
	return true
}

var nonPublic = []netip.Prefix{
	netip.MustParsePrefix("100.64.0.0/10"),   // shared address space (RFC 6598)
	netip.MustParsePrefix("192.0.0.0/24"),    // IETF protocol assignments
	netip.MustParsePrefix("192.0.2.0/24"),    // documentation
	netip.MustParsePrefix("198.18.0.0/15"),   // benchmarking
	netip.MustParsePrefix("198.51.100.0/24"), // documentation
	netip.MustParsePrefix("203.0.113.0/24"),  // documentation
	netip.MustParsePrefix("240.0.0.0/4"),     // reserved
	netip.MustParsePrefix("2001:db8::/32"),   // documentation
	netip.MustParsePrefix("64:ff9b::/96"),    // NAT64 (would reach IPv4 inside)
}

// Client returns the client a metadata document at id describes, from the
// cache while its HTTP caching lifetime lasts.
func (m *MetadataDocuments) Client(ctx context.Context, id string) (*OAuthClient, error) {
	if c, ok := m.cache.Get(id); ok && m.now().Before(c.expires) {
		return c.client, nil
	}
	c, ttl, err := m.fetch(ctx, id)
	if err != nil {
		return nil, err
	}
	if ttl > 0 {
		m.cache.Add(id, cachedDocument{client: c, expires: m.now().Add(ttl)})
	}
	return c, nil
}

func (m *MetadataDocuments) fetch(ctx context.Context, id string) (*OAuthClient, time.Duration, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, id, nil)
	if err != nil {
		return nil, 0, errors.New("the client_id is not a URL")
	}
	req.Header.Set("Accept", "application/json")
	resp, err := m.http.Do(req)
	if err != nil {
		return nil, 0, fmt.Errorf("the client's metadata document could not be fetched: %w", unwrapURLError(err))
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, 0, fmt.Errorf("the client's metadata document answered HTTP %d", resp.StatusCode)
	}
	if mt, _, err := mime.ParseMediaType(resp.Header.Get("Content-Type")); err != nil || (mt != "application/json" && !strings.HasSuffix(mt, "+json")) {
		return nil, 0, errors.New("the client's metadata document is not JSON")
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxMetadataDocument+1))
	if err != nil {
		return nil, 0, fmt.Errorf("the client's metadata document could not be read: %w", unwrapURLError(err))
	}
	if len(body) > maxMetadataDocument {
		return nil, 0, fmt.Errorf("the client's metadata document is larger than %d bytes", maxMetadataDocument)
	}
	c, err := parseMetadataDocument(id, body)
	if err != nil {
		return nil, 0, err
	}
	return c, cacheLifetime(resp.Header.Get("Cache-Control")), nil
}

// parseMetadataDocument checks a client ID metadata document fetched from
// id: a JSON object describing the client id names, public, with valid
// redirect URIs.
func parseMetadataDocument(id string, body []byte) (*OAuthClient, error) {
	var doc struct {
		OAuthClient
		Secret        string `json:"client_secret"`
		SecretExpires *int64 `json:"client_secret_expires_at"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return nil, errors.New("the client's metadata document is not a JSON object")
	}
	c := doc.OAuthClient
	switch {
	case c.ID != id:
		return nil, errors.New("the client's metadata document names another client_id")
	case doc.Secret != "" || doc.SecretExpires != nil || c.SecretHash != "":
		return nil, errors.New("a client metadata document must not carry a secret")
	case c.AuthMethod != "" && c.AuthMethod != AuthMethodNone:
		return nil, errors.New("a client metadata document's client must use token_endpoint_auth_method none")
	}
	if err := checkClient(&c); err != nil {
		return nil, fmt.Errorf("the client's metadata document: %w", err)
	}
	return &c, nil
}

// cacheLifetime reads max-age from a Cache-Control value, kept between a
// minute and a day; no-store (or no-cache) means not cached at all.
func cacheLifetime(cc string) time.Duration {
	ttl := defaultMetadataCache
	for d := range strings.SplitSeq(cc, ",") {
		d = strings.ToLower(strings.TrimSpace(d))
		switch {
		case d == "no-store" || d == "no-cache":
			return 0
		case strings.HasPrefix(d, "max-age="):
			var s int64
			if _, err := fmt.Sscanf(d, "max-age=%d", &s); err == nil && s >= 0 {
				ttl = time.Duration(s) * time.Second
			}
		}
	}
	return min(max(ttl, minMetadataCache), maxMetadataCache)
}

// unwrapURLError drops the URL from a client error: the caller knows it.
func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}
