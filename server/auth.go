package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/modelcontextprotocol/go-sdk/auth"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/sag-gateway/sag/identity"
	"github.com/sag-gateway/sag/server/config"
	"github.com/sag-gateway/sag/store"
	"github.com/sag-gateway/sag/upstreams"
)

// principalKey is where authenticated requests carry their principal in
// the SDK's TokenInfo.Extra.
const principalKey = "sag.principal"

// KeysDir is the data directory's folder of signing keys.
const KeysDir = "keys"

// authn holds the identity parts the gateway is composed of.
type authn struct {
	keys   *identity.Keys
	issuer *identity.Issuer
	// minter mints the tokens sent to upstreams (pipeline step 6).
	minter *identity.Minter
	// own verifies the gateway's own tokens whatever their audience
	// (introspection, revocation).
	own *identity.TokenVerifier
	// check is nil under --auth open, and so are dpop and nonces (nonces
	// also when identity.dpop_nonce is off).
	check  *identity.Authenticator
	dpop   *identity.DPoPVerifier
	nonces *identity.Nonces
	// spiffe is nil unless identity.spiffe is configured.
	spiffe *identity.SPIFFE
	// exchange is the token service (RFC 8693); nil without SPIFFE, the
	// only way it can know the actor.
	exchange *identity.Exchange
	// server is the authorization server (sign-in); nil unless
	// identity.authorization_server is enabled.
	server *identity.AuthServer
	// legacy is the legacy-token shim; nil unless identity.legacy is
	// enabled.
	legacy *identity.Legacy
	// tokens verifies access tokens for the gateway (its own and those of
	// identity.issuers); nil under --auth open.
	tokens *identity.TokenVerifier
	// stop ends the background JWKS refreshes.
	stop context.CancelFunc
}

// DPoPKeyFile is the gateway's own DPoP key in the data directory: the key
// the tokens it mints for upstreams are bound to.
const DPoPKeyFile = "dpop.jwk"

// newAuthn builds token verification, DPoP and the gateway's own issuer from
// the configuration. ctx bounds the background JWKS refreshes.
func newAuthn(ctx context.Context, cfg *config.Config, log *slog.Logger, st Store, keys *identity.Keys, revocations identity.RevocationChecker) (_ *authn, err error) {
	if keys == nil {
		if keys, err = identity.LoadKeys(filepath.Join(cfg.DataDir, KeysDir)); err != nil {
			return nil, err
		}
	}
	base := cfg.ResolvedPublicURL()
	// Background work lives as long as the gateway (until close), not as
	// long as ctx, which may only bound the start.
	bg, stop := context.WithCancel(context.WithoutCancel(ctx))
	a := &authn{keys: keys, issuer: &identity.Issuer{URL: base, Keys: keys}, stop: stop}
	defer func() {
		if err != nil {
			a.close() // the Workload API watchers, if they started
		}
	}()
	dpopKey, err := identity.LoadOrCreateDPoPKey(filepath.Join(cfg.DataDir, DPoPKeyFile))
	if err != nil {
		return nil, err
	}
	self := base // the gateway's identity: its SPIFFE ID when it has one
	var certThumbprint func() (string, error)
	if sp := cfg.Identity.SPIFFE; sp.TrustDomain != "" {
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		a.spiffe, err = identity.NewSPIFFE(wctx, identity.SPIFFEOptions{
			TrustDomain: sp.TrustDomain, BundleFile: sp.BundleFile, JWTBundleFile: sp.JWTBundleFile,
			WorkloadAPI: sp.WorkloadAPI, CertFile: sp.CertFile, KeyFile: sp.KeyFile, Audience: base,
		})
		cancel()
		if err != nil {
			return nil, err
		}
		if id := a.spiffe.ID(); id != "" {
			self, certThumbprint = id, a.spiffe.CertThumbprint
		}
	}
	a.minter, err = identity.NewMinter(identity.MinterOptions{
		Issuer:         a.issuer,
		Key:            dpopKey,
		Self:           self,
		CertThumbprint: certThumbprint,
		TTL:            time.Duration(cfg.Identity.UpstreamTokenTTL),
		Record: func(ctx context.Context, m identity.Minted) error {
			return st.PutMinted(ctx, store.MintedToken{JTI: m.JTI, Session: m.Session, Upstream: m.Upstream, Subject: m.Subject, Expiry: m.Expiry})
		},
	})
	if err != nil {
		return nil, err
	}
	ownKeys := identity.StaticKeys{Set: keys.PublicSet}
	if a.own, err = identity.NewTokenVerifier(identity.TokenOptions{AnyAudience: true, Issuers: map[string]identity.KeySource{base: ownKeys}}); err != nil {
		return nil, err
	}
	if cfg.Auth == config.AuthOpen {
		return a, nil
	}
	issuers := map[string]identity.KeySource{base: ownKeys}
	for _, is := range cfg.Identity.Issuers {
		var src identity.KeySource
		if is.JWKSFile != "" {
			if src, err = identity.FileKeys(is.JWKSFile); err != nil {
				return nil, err
			}
		} else if src, err = identity.NewRemoteKeys(bg, is.JWKSURL, nil); err != nil {
			return nil, err
		}
		issuers[is.Issuer] = src
	}
	tokens, err := identity.NewTokenVerifier(identity.TokenOptions{
		Audience: base,
		Issuers:  issuers,
		Skew:     time.Duration(cfg.Identity.TokenSkew),
	})
	if err != nil {
		return nil, err
	}
	a.tokens = tokens
	window := time.Duration(cfg.Identity.DPoPWindow)
	// One replay cache for every endpoint, sized for a busy node and
	// shared with the other gateways on a PostgreSQL store; when it is
	// full new proofs are refused rather than replays let through.
	dpop, err := identity.NewDPoPVerifier(identity.DPoPOptions{Window: window, Replay: st.Replay(1_000_000),
		IssuedAfter: time.Now().Truncate(time.Second)})
	if err != nil {
		return nil, err
	}
	var nonces *identity.Nonces
	if cfg.Identity.DPoPNonce {
		nonces = identity.NewNonces(window, nil)
	}
	a.dpop, a.nonces = dpop, nonces
	a.check, err = identity.NewAuthenticator(identity.AuthOptions{
		Mode:                cfg.Auth,
		PublicURL:           base,
		ResourceMetadataURL: base + resourceMetadataPath,
		Tokens:              tokens,
		DPoP:                dpop,
		Nonces:              nonces,
		Revocations:         revocations,
		Agents:              agents(a.spiffe),
		SelfIssuer:          base,
	})
	if err != nil {
		return nil, fmt.Errorf("identity: %w", err)
	}
	if a.spiffe != nil {
		a.exchange, err = identity.NewExchange(identity.ExchangeOptions{
			Issuer: a.issuer, Subjects: tokens, DPoP: dpop, Nonces: nonces, TokenURL: base + "/oauth/token",
			Actors: a.spiffe, Agents: a.spiffe, Revocations: revocations,
			Audiences: cfg.Identity.Exchange.Audiences, Scopes: cfg.Identity.Exchange.Scopes, TTL: time.Duration(cfg.Identity.Exchange.TTL),
			Log: log,
		})
		if err != nil {
			return nil, err
		}
	}
	return a, nil
}

// requireAuth authenticates every request before next sees it and hands the
// principal to the SDK as its TokenInfo, which binds each MCP session to the
// principal that opened it. The caller's Authorization header does not go
// further: the SDK and everything after it see a placeholder.
func (g *Gateway) requireAuth(scopes []string, next http.Handler) http.Handler {
	sdk := auth.RequireBearerToken(func(ctx context.Context, _ string, _ *http.Request) (*auth.TokenInfo, error) {
		p, _ := ctx.Value(principalCtxKey{}).(identity.Principal)
		exp := p.Expiry
		if exp.IsZero() { // --auth open
			exp = time.Now().Add(24 * time.Hour)
		}
		return &auth.TokenInfo{UserID: p.Key(), Scopes: p.Scopes, Expiration: exp, Extra: map[string]any{principalKey: p}}, nil
	}, nil)(next)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r = g.admit(w, r, scopes); r != nil {
			sdk.ServeHTTP(w, r)
		}
	})
}

// admit authenticates r for requireAuth and returns it carrying the
// principal, or answers the refusal and returns nil. It is a function of its
// own, kept out of line, so that its locals are not on the stack of the
// long-lived stream handlers that run after it (a deeper stack there costs
// every open session a larger goroutine stack).
//
//go:noinline
func (g *Gateway) admit(w http.ResponseWriter, r *http.Request, scopes []string) *http.Request {
	p := identity.Anonymous()
	if g.auth.check != nil {
		var err error
		if p, err = g.auth.check.Authenticate(r); err == nil {
			err = identity.RequireScopes(p, scopes)
		}
		if err != nil {
			g.log.Info("request refused", "method", r.Method, "path", r.URL.Path, "mcp_method", r.Header.Get("Mcp-Method"), "reason", err.Error())
			g.metrics.authFailures.Inc()
			g.auth.check.WriteError(w, err)
			return nil
		}
		if p.Method == identity.MethodBearer {
			g.log.Debug("bearer token accepted (not sender-constrained)", "sub", p.User)
		}
		if p.Workflow != "" {
			// A run token: good only while its run lives in this gateway,
			// and its holder is judged as the user it runs for (the user's
			// own claims, groups and scopes, not the token's).
			user, ok := g.liveRuns.Load(p.TokenID)
			if ok {
				// ... and while the agent is registered with the key the
				// token is bound to.
				spec, registered := g.upstreams.Spec(strings.TrimPrefix(p.Agent, g.cfg.ResolvedPublicURL()+"/agui/agents/"))
				ok = registered && spec.Kind == upstreams.KindAGUI && spec.AgentKey == p.KeyThumbprint
			}
			if !ok {
				g.metrics.authFailures.Inc()
				g.auth.check.WriteError(w, &identity.OAuthError{Status: http.StatusUnauthorized, Code: "invalid_token",
					Description: "the agent run this token was given for has ended", Scheme: "DPoP"})
				return nil
			}
			u := user.(identity.Principal)
			p.Claims, p.Groups, p.Scopes, p.ClientID = u.Claims, u.Groups, u.Scopes, u.ClientID
		}
	}
	// A killed user or agent session stops here, before the SDK opens a new
	// MCP session for it (the pipeline checks every node again).
	if !g.sessions.admitted(p) {
		g.metrics.authFailures.Inc()
		writeJSON(w, http.StatusForbidden, map[string]string{"error": "session_revoked", "error_description": "this user or agent session was revoked"})
		return nil
	}
	// A session belongs to the principal that opened it; to anyone else it
	// does not exist (DESIGN.md, Sessions).
	if id := r.Header.Get("Mcp-Session-Id"); id != "" {
		if owner, ok := g.front.owner(id); ok && owner != p.Key() {
			http.Error(w, "session not found", http.StatusNotFound)
			return nil
		}
	}
	// The request is the server's to change: the caller's credentials go no
	// further than here (nor stay in memory for a stream's whole life).
	r.Header.Set("Authorization", "Bearer authenticated")
	r.Header.Del("DPoP")
	r.Header.Del(identity.AgentTokenHeader)
	return r.WithContext(context.WithValue(r.Context(), principalCtxKey{}, p))
}

// agents returns sp as an AgentAuthenticator, or nil (no agent identities)
// when SPIFFE is not configured.
func agents(sp *identity.SPIFFE) identity.AgentAuthenticator {
	if sp == nil {
		return nil
	}
	return sp
}

type principalCtxKey struct{}

// principalOf returns the principal admit attached to an HTTP request.
func principalOf(r *http.Request) (identity.Principal, bool) {
	p, ok := r.Context().Value(principalCtxKey{}).(identity.Principal)
	return p, ok
}

// principal returns the principal that requireAuth attached to a request.
// A request without one (which requireAuth never lets through) is treated
// as anonymous only under --auth open; otherwise ok is false.
func (g *Gateway) principal(extra *mcp.RequestExtra) (identity.Principal, bool) {
	if extra != nil && extra.TokenInfo != nil {
		if p, ok := extra.TokenInfo.Extra[principalKey].(identity.Principal); ok {
			return p, true
		}
	}
	if g.cfg.Auth == config.AuthOpen {
		return identity.Anonymous(), true
	}
	return identity.Principal{}, false
}

// resourceMetadataPath serves RFC 9728 protected resource metadata.
const resourceMetadataPath = "/.well-known/oauth-protected-resource"

// resourceMetadata serves RFC 9728 §3 metadata: the resource identifier is the
// gateway's public URL; the configured issuers, and the gateway itself when
// it runs the token service, are its authorization servers.
func (g *Gateway) resourceMetadata(w http.ResponseWriter, _ *http.Request) {
	base := g.cfg.ResolvedPublicURL()
	// The gateway is an authorization server for clients only where it
	// runs the token service (it then serves RFC 8414 metadata too).
	servers := []string{}
	if g.auth.exchange != nil || g.auth.server != nil || g.auth.legacy != nil {
		servers = append(servers, base)
	}
	for _, is := range g.cfg.Identity.Issuers {
		servers = append(servers, is.Issuer)
	}
	algs := identity.DefaultDPoPAlgs()
	w.Header().Set("Access-Control-Allow-Origin", "*")
	writeJSON(w, http.StatusOK, map[string]any{
		"resource":                                   base,
		"authorization_servers":                      servers,
		"bearer_methods_supported":                   []string{"header"},
		"dpop_signing_alg_values_supported":          algs,
		"dpop_bound_access_tokens_required":          g.cfg.Auth == config.AuthDPoP,
		"tls_client_certificate_bound_access_tokens": true,
		"resource_name":                              "SAG gateway",
	})
}

// jwks publishes the gateway's signing keys (RFC 7517 §5), which verify the
// tokens it issues and mints for upstreams.
func (g *Gateway) jwks(w http.ResponseWriter, _ *http.Request) {
	b, err := g.auth.keys.JWKS()
	if err != nil {
		http.Error(w, "keys unavailable", http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "application/jwk-set+json")
	w.Header().Set("Cache-Control", "max-age=300")
	w.Header().Set("Access-Control-Allow-Origin", "*")
	w.Write(b)
}

// serverTLS is the TLS configuration of the listener: the gateway's SVID,
// with optional agent client certificates. Nil serves plain HTTP.
func (a *authn) serverTLS() *tls.Config {
	if a.spiffe == nil {
		return nil
	}
	return a.spiffe.ServerTLS()
}

// clientTLS is the TLS configuration towards mTLS upstreams, nil without an
// SVID.
func (a *authn) clientTLS() *tls.Config {
	if a.spiffe == nil {
		return nil
	}
	return a.spiffe.ClientTLS()
}

// close stops the JWKS refreshes and the SPIFFE Workload API watchers.
func (a *authn) close() error {
	if a == nil {
		return nil
	}
	a.stop()
	if a.spiffe == nil {
		return nil
	}
	return a.spiffe.Close()
}

// authorizationServerMetadata serves the RFC 8414 metadata of the gateway's
// authorization server and token service.
func (g *Gateway) authorizationServerMetadata(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Access-Control-Allow-Origin", "*")
	var m map[string]any
	switch {
	case g.auth.server != nil:
		m = g.auth.server.Metadata()
		if g.auth.exchange != nil || g.auth.legacy != nil {
			m["grant_types_supported"] = append(m["grant_types_supported"].([]string), identity.GrantTypeTokenExchange)
		}
	case g.auth.exchange != nil:
		m = g.auth.exchange.Metadata()
	default:
		m = g.auth.legacy.Metadata()
	}
	writeJSON(w, http.StatusOK, m)
}

// ConsoleClientID is the console's client at the authorization server: a
// first-party public client whose redirect URI is PUBLIC_URL/console/.
const ConsoleClientID = "sag-console"

// newAuthServer builds the authorization server when the configuration
// turns it on (nil otherwise).
func newAuthServer(cfg *config.Config, log *slog.Logger, st Store, a *authn, revoked func(context.Context, string, string, time.Time) (bool, error),
	revoke func(ctx context.Context, issuer, jti string, exp time.Time) error) (*identity.AuthServer, error) {
	ac := cfg.Identity.AuthorizationServer
	if !ac.Enabled {
		return nil, nil
	}
	users := make([]identity.LocalUser, len(ac.Users))
	for i, u := range ac.Users {
		users[i] = identity.LocalUser{Name: u.Name, PasswordHash: u.PasswordHash, Groups: u.Groups}
	}
	us, err := identity.NewUsers(users)
	if err != nil {
		return nil, err
	}
	clients := make([]identity.OAuthClient, len(ac.Clients), len(ac.Clients)+1)
	for i, c := range ac.Clients {
		clients[i] = identity.OAuthClient{ID: c.ID, Name: c.Name, RedirectURIs: c.RedirectURIs, AuthMethod: identity.AuthMethodNone}
		if c.SecretFile != "" {
			secret, err := os.ReadFile(c.SecretFile)
			if err != nil {
				return nil, fmt.Errorf("identity.authorization_server.clients[%d]: %w", i, err)
			}
			clients[i].AuthMethod = identity.AuthMethodClientSecretBasic
			clients[i].SecretHash = identity.HashClientSecret(strings.TrimSpace(string(secret)))
		}
	}
	feds := make([]identity.FederatedProvider, len(ac.Federation))
	for i, f := range ac.Federation {
		feds[i] = identity.FederatedProvider{Name: f.Name, Label: f.Label, Issuer: f.Issuer, ClientID: f.ClientID, Scopes: f.Scopes,
			SubjectClaim: f.SubjectClaim, GroupsClaim: f.GroupsClaim, GroupMap: f.GroupMap}
		if f.ClientSecretFile != "" {
			secret, err := os.ReadFile(f.ClientSecretFile)
			if err != nil {
				return nil, fmt.Errorf("identity.authorization_server.federation[%d]: %w", i, err)
			}
			feds[i].ClientSecret = strings.TrimSpace(string(secret))
		}
	}
	clients = append(clients, identity.OAuthClient{ID: ConsoleClientID, Name: "SAG console", RedirectURIs: []string{cfg.ResolvedPublicURL() + "/console/"},
		AuthMethod: identity.AuthMethodNone, GrantTypes: []string{identity.GrantTypeAuthorizationCode, identity.GrantTypeRefreshToken}, FirstParty: true})
	var docs *identity.MetadataDocuments
	if ac.ClientMetadataDocuments {
		o := identity.MetadataDocumentOptions{AllowPrivate: ac.MetadataAllowPrivate}
		if ac.MetadataCAFile != "" {
			pem, err := os.ReadFile(ac.MetadataCAFile)
			if err != nil {
				return nil, fmt.Errorf("identity.authorization_server.metadata_ca_file: %w", err)
			}
			roots := x509.NewCertPool()
			if !roots.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("identity.authorization_server.metadata_ca_file: no PEM certificates in %s", ac.MetadataCAFile)
			}
			o.TLS = &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
		}
		docs = identity.NewMetadataDocuments(o)
	}
	return identity.NewAuthServer(identity.AuthServerOptions{
		Issuer: a.issuer, DPoP: a.dpop, Nonces: a.nonces, Store: st, Users: us, Federation: feds, Clients: clients,
		AllowBearer:         cfg.Auth == config.AuthBearer,
		DynamicRegistration: ac.DynamicRegistration,
		Documents:           docs,
		Scopes:              ac.Scopes,
		DefaultScopes:       cfg.Identity.RequiredScopes,
		AccessTTL:           time.Duration(ac.AccessTokenTTL),
		RefreshTTL:          time.Duration(ac.RefreshTokenTTL),
		SignInTTL:           time.Duration(ac.SignInTTL),
		SessionRevoked:      revoked,
		RevokeToken:         revoke,
		Log:                 log,
	})
}

// signInRevoked reports whether a sign-in at the authorization server was
// ended: its user session killed, or its user killed since.
func (g *Gateway) signInRevoked(ctx context.Context, subject, sid string, at time.Time) (bool, error) {
	return g.userRevoked(ctx, g.cfg.ResolvedPublicURL(), subject, sid, at)
}

// userRevoked reports whether the user (issuer, subject) was killed since
// at, or their user session sid was.
func (g *Gateway) userRevoked(_ context.Context, issuer, subject, sid string, at time.Time) (bool, error) {
	p := identity.Principal{Issuer: issuer, User: subject, SessionID: sid, IssuedAt: at}
	return !g.sessions.admitted(p), nil
}

// newLegacy builds the legacy-token shim when the configuration turns it on
// (nil otherwise).
func newLegacy(cfg *config.Config, log *slog.Logger, a *authn, revoked func(context.Context, string, string, string, time.Time) (bool, error),
	revocations identity.RevocationChecker) (*identity.Legacy, error) {
	lc := cfg.Identity.Legacy
	if !lc.Enabled {
		return nil, nil
	}
	o := identity.LegacyOptions{Issuer: a.issuer, DPoP: a.dpop, Nonces: a.nonces, Revocations: revocations, UserRevoked: revoked,
		TTL: time.Duration(lc.TTL), Log: log}
	if len(cfg.Identity.Issuers) > 0 {
		o.JWTs = a.tokens
	}
	if in := lc.Introspection; in.URL != "" {
		o.Introspection = &identity.IntrospectionOptions{URL: in.URL, ClientID: in.ClientID, Issuer: in.Issuer, Audience: in.Audience}
		if in.ClientSecretFile != "" {
			secret, err := os.ReadFile(in.ClientSecretFile)
			if err != nil {
				return nil, fmt.Errorf("identity.legacy.introspection.client_secret_file: %w", err)
			}
			o.Introspection.ClientSecret = strings.TrimSpace(string(secret))
		}
	}
	return identity.NewLegacy(o)
}
