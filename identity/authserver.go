package identity

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"golang.org/x/time/rate"

	"github.com/sag-gateway/sag/store"
)

// Grant types of the authorization server (RFC 6749 §4.1.3, §6).
const (
	GrantTypeAuthorizationCode = "authorization_code"
	GrantTypeRefreshToken      = "refresh_token"
)

// Error codes of the authorization endpoint and the code grant (RFC 6749
// §4.1.2.1, §5.2).
const (
	ErrCodeInvalidGrant            = "invalid_grant"
	ErrCodeUnauthorizedClient      = "unauthorized_client"
	ErrCodeAccessDenied            = "access_denied"
	ErrCodeUnsupportedResponseType = "unsupported_response_type"
)

// Paths of the authorization server's endpoints, below the issuer URL.
const (
	AuthorizePath = "/oauth/authorize"
	TokenPath     = "/oauth/token"
	RegisterPath  = "/oauth/register"
	// CallbackPath is where federated providers send people back.
	CallbackPath = "/oauth/callback"
)

// Defaults of AuthServerOptions.
const (
	DefaultAccessTokenTTL  = 10 * time.Minute
	DefaultRefreshTokenTTL = 30 * 24 * time.Hour
	DefaultSignInTTL       = 12 * time.Hour
	// codeTTL is the life of an authorization code (RFC 6749 §4.1.2: a
	// maximum of 10 minutes is RECOMMENDED; a client redeems it at once).
	codeTTL = time.Minute
	// pendingTTL is how long a person has to sign in and decide.
	pendingTTL = 10 * time.Minute
	// maxPending bounds each kind of sign-in in progress (pending
	// requests, codes, sign-ins, sign-ins at providers): past it new ones
	// are refused, not old ones forgotten.
	maxPending = 10_000
	// maxSignInFailures ends a pending request after this many wrong
	// passwords.
	maxSignInFailures = 5
)

// AuthStore is what the authorization server keeps across restarts (and
// shares with the gateways sharing the store): registered clients, refresh
// tokens, the consent users gave clients, and the sign-ins in progress.
type AuthStore interface {
	PutOAuthClient(ctx context.Context, c store.OAuthClient) error
	GetOAuthClient(ctx context.Context, id string) (store.OAuthClient, error)
	PutRefreshToken(ctx context.Context, t store.RefreshToken) error
	GetRefreshToken(ctx context.Context, hash string) (store.RefreshToken, error)
	UseRefreshToken(ctx context.Context, hash string) error
	RevokeRefreshFamily(ctx context.Context, family string) error
	PutClientConsent(ctx context.Context, subject, client, scope string) error
	ClientConsent(ctx context.Context, subject, client string) (string, error)
	FlowStore
}

// AuthServerOptions configure an AuthServer.
type AuthServerOptions struct {
	// Issuer signs the access tokens; Issuer.URL is the issuer identifier
	// and the one resource tokens are issued for. Required.
	Issuer *Issuer
	// DPoP verifies the proofs at the token endpoint. Required.
	DPoP   *DPoPVerifier
	Nonces *Nonces
	// Store keeps clients, refresh tokens and consents. Required.
	Store AuthStore
	// Users is the local user store; Federation the external OpenID
	// Providers people may sign in with. At least one of them is needed.
	Users      *Users
	Federation []FederatedProvider
	// Clients are pre-registered clients.
	Clients []OAuthClient
	// AllowBearer issues bearer tokens to clients that prove no DPoP key;
	// otherwise they are refused.
	AllowBearer bool
	// DynamicRegistration turns on RFC 7591 registration.
	DynamicRegistration bool
	// Documents fetches client ID metadata documents; nil turns them off.
	Documents *MetadataDocuments
	// Scopes are the scopes clients may ask for; DefaultScopes are
	// granted when a client asks for none.
	Scopes, DefaultScopes []string
	// Lifetimes; zero means the defaults above.
	AccessTTL, RefreshTTL, SignInTTL time.Duration
	// SessionRevoked reports whether the user session of a sign-in (the
	// sid of its tokens), or the user, was killed since the sign-in at
	// signedIn: its refresh tokens and its browser sign-in then stop
	// working.
	SessionRevoked func(ctx context.Context, subject, sid string, signedIn time.Time) (bool, error)
	// RevokeToken revokes an access token the server issued (a replayed
	// code's). Required.
	RevokeToken func(ctx context.Context, issuer, jti string, expiry time.Time) error
	// Now is the clock; nil means the Issuer's.
	Now func() time.Time
	// Log receives one record per decision, never a token or password.
	Log *slog.Logger
}

// AuthServer is SAG's OAuth 2.1 authorization server for MCP clients and
// people: the authorization endpoint with sign-in and consent pages, the
// authorization_code (PKCE S256) and refresh_token grants, dynamic client
// registration and client ID metadata documents. It issues RFC 9068 access
// tokens for the gateway alone, DPoP-bound whenever the client proves a
// key, each carrying the sid of the sign-in it came from.
type AuthServer struct {
	o       AuthServerOptions
	now     func() time.Time
	log     *slog.Logger
	scopes  map[string]bool
	clients map[string]*OAuthClient
	// secure marks cookies Secure: the issuer is https.
	secure bool

	// registrations limits dynamic registration.
	registrations *rate.Limiter

	// federations are the external providers, in configuration order.
	federations []*federation
}

// pendingAuthz is an authorization request waiting for its person: it was
// validated, and lives until they sign in and decide.
type pendingAuthz struct {
	client   *OAuthClient
	redirect string
	state    string
	scope    []string
	resource string
	// challenge is the PKCE S256 code challenge (RFC 7636 §4.2).
	challenge string
	// jkt is the dpop_jkt parameter (RFC 9449 §10), "" when not given.
	jkt string
	// browser ties the request to the browser that opened it (a cookie);
	// csrf is the token its forms carry.
	browser, csrf string
	signIn        *signIn
	expires       time.Time
}

// issued is what one grant issued.
type issued struct {
	family    string
	accessJTI string
	accessExp time.Time
}

// signIn is a person's sign-in at the authorization server: the browser
// cookie names it, and every token it leads to carries its sid.
type signIn struct {
	sid     string
	subject string
	groups  []string
	at      time.Time
	expires time.Time
}

// NewAuthServer checks o and returns the server.
func NewAuthServer(o AuthServerOptions) (*AuthServer, error) {
	switch {
	case o.Issuer == nil || o.Issuer.URL == "" || o.Issuer.Keys == nil:
		return nil, errors.New("identity: authorization server needs an issuer with a URL and keys")
	case o.DPoP == nil || o.Store == nil || o.RevokeToken == nil:
		return nil, errors.New("identity: authorization server needs a DPoP verifier, a store and token revocation")
	case (o.Users == nil || len(o.Users.users) == 0) && len(o.Federation) == 0:
		return nil, errors.New("identity: authorization server needs local users or a federated provider to sign people in")
	}
	s := &AuthServer{
		o:       o,
		now:     o.Now,
		log:     o.Log,
		scopes:  map[string]bool{},
		clients: map[string]*OAuthClient{},
		secure:  strings.HasPrefix(o.Issuer.URL, "https://"),

		registrations: rate.NewLimiter(registrationRate, 20),
	}
	if s.now == nil {
		s.now = o.Issuer.now
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.o.AccessTTL = cmp.Or(o.AccessTTL, DefaultAccessTokenTTL)
	s.o.RefreshTTL = cmp.Or(o.RefreshTTL, DefaultRefreshTokenTTL)
	s.o.SignInTTL = cmp.Or(o.SignInTTL, DefaultSignInTTL)
	for _, sc := range append(slices.Clone(o.Scopes), o.DefaultScopes...) {
		if !validScopeToken(sc) {
			return nil, fmt.Errorf("identity: %q is not a scope token (RFC 6749 §3.3)", sc)
		}
		s.scopes[sc] = true
	}
	for _, fp := range o.Federation {
		f, err := newFederation(fp, o.Issuer.URL+CallbackPath)
		if err != nil {
			return nil, fmt.Errorf("identity: %w", err)
		}
		for _, other := range s.federations {
			if other.cfg.Name == f.cfg.Name {
				return nil, fmt.Errorf("identity: federated provider %s listed twice", f.cfg.Name)
			}
		}
		s.federations = append(s.federations, f)
	}
	for i := range o.Clients {
		c := o.Clients[i]
		if c.ID == "" || isURLClientID(c.ID) {
			return nil, fmt.Errorf("identity: client %q: a pre-registered client_id is a name, not empty or an https URL", c.ID)
		}
		if _, dup := s.clients[c.ID]; dup {
			return nil, fmt.Errorf("identity: client %q listed twice", c.ID)
		}
		if err := checkClient(&c); err != nil {
			return nil, fmt.Errorf("identity: client %q: %w", c.ID, err)
		}
		if !c.public() && c.SecretHash == "" {
			return nil, fmt.Errorf("identity: client %q: %s needs a secret", c.ID, c.AuthMethod)
		}
		s.clients[c.ID] = &c
	}
	return s, nil
}

// Metadata returns the RFC 8414 §2 metadata of the authorization server.
func (s *AuthServer) Metadata() map[string]any {
	base := s.o.Issuer.URL
	authMethods := []string{AuthMethodNone, AuthMethodClientSecretBasic, AuthMethodClientSecretPost}
	m := map[string]any{
		"issuer":                                base,
		"authorization_endpoint":                base + AuthorizePath,
		"token_endpoint":                        base + TokenPath,
		"jwks_uri":                              base + "/.well-known/jwks.json",
		"response_types_supported":              []string{"code"},
		"response_modes_supported":              []string{"query"},
		"grant_types_supported":                 []string{GrantTypeAuthorizationCode, GrantTypeRefreshToken},
		"code_challenge_methods_supported":      []string{"S256"},
		"token_endpoint_auth_methods_supported": authMethods,
		"dpop_signing_alg_values_supported":     s.o.DPoP.Algs(),
		"scopes_supported":                      s.scopeList(),
		"introspection_endpoint":                base + "/oauth/introspect",
		"revocation_endpoint":                   base + "/oauth/revoke",
		// RFC 9207: the authorization response names its issuer.
		"authorization_response_iss_parameter_supported": true,
		"client_id_metadata_document_supported":          s.o.Documents != nil,
	}
	if s.o.DynamicRegistration {
		m["registration_endpoint"] = base + RegisterPath
	}
	return m
}

func (s *AuthServer) scopeList() []string {
	out := make([]string, 0, len(s.scopes))
	for sc := range s.scopes {
		out = append(out, sc)
	}
	slices.Sort(out)
	return out
}

// client finds a client by id: pre-registered, registered, or described by
// a metadata document.
func (s *AuthServer) client(ctx context.Context, id string) (*OAuthClient, error) {
	if c, ok := s.clients[id]; ok {
		return c, nil
	}
	if isURLClientID(id) {
		if s.o.Documents == nil {
			return nil, errors.New("client ID metadata documents are turned off")
		}
		return s.o.Documents.Client(ctx, id)
	}
	rec, err := s.o.Store.GetOAuthClient(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return nil, errors.New("unknown client_id")
	}
	if err != nil {
		return nil, err
	}
	var c OAuthClient
	if err := json.Unmarshal(rec.Metadata, &c); err != nil {
		return nil, fmt.Errorf("stored client: %w", err)
	}
	return &c, nil
}

// randomToken returns 256 random bits, base64url.
func randomToken() string {
	var b [32]byte
	rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// tokenHash is how a refresh token is stored: its SHA-256, base64url.
func tokenHash(t string) string {
	sum := sha256.Sum256([]byte(t))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// ---- the authorization endpoint (RFC 6749 §4.1.1, OAuth 2.1 §4.1.1) ----

// authzParams are the parameters the authorization endpoint reads; each may
// appear once (RFC 6749 §3.1).
var authzParams = []string{"response_type", "client_id", "redirect_uri", "scope", "state", "code_challenge", "code_challenge_method", "resource", "dpop_jkt"}

// ServeAuthorize answers GET /oauth/authorize: it validates the request,
// then shows the sign-in or consent page, or redirects with a code when
// the person is signed in and allowed this client before.
func (s *AuthServer) ServeAuthorize(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	for _, name := range authzParams {
		if len(q[name]) > 1 {
			s.errorPage(w, http.StatusBadRequest, "The parameter "+name+" was given more than once.")
			return
		}
	}
	// Until the client and its redirect URI are known good, errors are
	// shown here and never sent to the redirect URI (RFC 6749 §4.1.2.1).
	client, err := s.client(r.Context(), q.Get("client_id"))
	if err != nil {
		s.log.Info("authorization refused", "reason", "client", "error", err.Error())
		s.errorPage(w, http.StatusBadRequest, "The client is not known: "+err.Error()+".")
		return
	}
	redirect := q.Get("redirect_uri")
	if redirect == "" || !client.allowsRedirect(redirect) {
		s.log.Info("authorization refused", "reason", "redirect_uri", "client", client.ID)
		s.errorPage(w, http.StatusBadRequest, "The redirect_uri is missing or is not one of the client's.")
		return
	}
	p := &pendingAuthz{client: client, redirect: redirect, state: q.Get("state"), expires: s.now().Add(pendingTTL)}
	if err := s.checkAuthz(p, q); err != nil {
		s.log.Info("authorization refused", "client", client.ID, "error", err.Code, "description", err.Description)
		s.redirectError(w, r, p, err.Code, err.Description)
		return
	}
	p.browser = s.browserID(w, r)
	p.csrf = randomToken()
	if si := s.currentSignIn(r); si != nil {
		p.signIn = si
	}
	id, err := s.putFlow(r.Context(), flowPending, p.record(), p.expires)
	if err != nil {
		s.flowFailed(w, "authorization request", err)
		return
	}
	s.next(w, r, id, p, "")
}

// checkAuthz validates the request parameters that are errors for the
// client (RFC 6749 §4.1.2.1), filling p.
func (s *AuthServer) checkAuthz(p *pendingAuthz, q url.Values) *OAuthError {
	if rt := q.Get("response_type"); rt != "code" {
		return badRequest(ErrCodeUnsupportedResponseType, "response_type must be code")
	}
	if len(p.client.GrantTypes) > 0 && !slices.Contains(p.client.GrantTypes, GrantTypeAuthorizationCode) {
		return badRequest(ErrCodeUnauthorizedClient, "the client did not register the authorization_code grant")
	}
	// OAuth 2.1 §4.1.1 and the MCP authorization spec: PKCE is required,
	// and only S256 is supported (plain is refused).
	p.challenge = q.Get("code_challenge")
	switch {
	case p.challenge == "":
		return invalidRequest("code_challenge is required (PKCE)")
	case q.Get("code_challenge_method") != "S256":
		return invalidRequest("code_challenge_method must be S256")
	case !pkceValue(p.challenge) || len(p.challenge) != 43:
		return invalidRequest("code_challenge must be the base64url SHA-256 of the verifier (43 characters)")
	}
	// RFC 8707 and the MCP authorization spec: the resource is required,
	// and this server issues tokens for the gateway only.
	p.resource = q.Get("resource")
	switch {
	case p.resource == "":
		return invalidRequest("resource is required (RFC 8707)")
	case strings.TrimSuffix(p.resource, "/") != s.o.Issuer.URL && p.resource != s.o.Issuer.URL+"/mcp":
		return badRequest(ErrCodeInvalidTarget, "tokens are issued for this gateway only ("+s.o.Issuer.URL+")")
	}
	scope, err := s.grantScope(q.Get("scope"))
	if err != nil {
		return err
	}
	p.scope = scope
	if jkt := q.Get("dpop_jkt"); jkt != "" {
		if b, err := base64.RawURLEncoding.DecodeString(jkt); err != nil || len(b) != sha256.Size {
			return invalidRequest("dpop_jkt must be a base64url SHA-256 JWK thumbprint")
		}
		p.jkt = jkt
	}
	return nil
}

// grantScope parses the requested scope: each must be supported; none
// asked for means the defaults.
func (s *AuthServer) grantScope(raw string) ([]string, *OAuthError) {
	if raw == "" {
		return slices.Clone(s.o.DefaultScopes), nil
	}
	scope, ok := parseScope(raw)
	if !ok {
		return nil, badRequest(ErrCodeInvalidScope, "malformed scope")
	}
	for _, sc := range scope {
		if !s.scopes[sc] {
			return nil, badRequest(ErrCodeInvalidScope, "scope "+sc+" is not offered (scopes_supported)")
		}
	}
	return scope, nil
}

// pkceValue reports whether v is made of RFC 7636 §4.1's unreserved
// characters.
func pkceValue(v string) bool {
	for _, c := range []byte(v) {
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~') {
			return false
		}
	}
	return true
}

// next shows what the pending request needs now: the sign-in page, the
// consent page, or (signed in and allowed before) the redirect with a code.
func (s *AuthServer) next(w http.ResponseWriter, r *http.Request, id string, p *pendingAuthz, problem string) {
	if p.signIn == nil {
		d := pageData{Request: id, CSRF: p.csrf, Client: clientLabel(p.client), Problem: problem, Passwords: s.o.Users != nil && len(s.o.Users.users) > 0}
		for _, f := range s.federations {
			d.Providers = append(d.Providers, providerButton{Name: f.cfg.Name, Label: f.cfg.Label})
		}
		s.page(w, http.StatusOK, signInPage, d)
		return
	}
	if p.client.FirstParty {
		s.finish(w, r, id, p)
		return
	}
	allowed, err := s.o.Store.ClientConsent(r.Context(), p.signIn.subject, p.client.ID)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		s.log.Error("authorization: consent lookup failed", "error", err)
		s.errorPage(w, http.StatusServiceUnavailable, "The server could not check your earlier decisions; try again.")
		return
	}
	if err == nil && covers(allowed, p.scope) {
		s.finish(w, r, id, p)
		return
	}
	s.page(w, http.StatusOK, consentPage, pageData{Request: id, CSRF: p.csrf, Client: clientLabel(p.client), ClientID: p.client.ID,
		User: p.signIn.subject, Scopes: p.scope, Redirect: redirectHost(p.redirect)})
}

// flowFailed answers a sign-in step that could not be kept in the store.
func (s *AuthServer) flowFailed(w http.ResponseWriter, what string, err error) {
	if errors.Is(err, store.ErrFull) {
		s.errorPage(w, http.StatusServiceUnavailable, "Too many sign-ins are in progress; try again in a few minutes.")
		return
	}
	s.log.Error("authorization: "+what+" not recorded", "error", err)
	s.errorPage(w, http.StatusServiceUnavailable, "The sign-in could not be recorded; try again.")
}

// covers reports whether the remembered scope includes every wanted one.
func covers(allowed string, want []string) bool {
	have := strings.Fields(allowed)
	for _, sc := range want {
		if !slices.Contains(have, sc) {
			return false
		}
	}
	return true
}

// ServeAuthorizeForm answers POST /oauth/authorize: the sign-in and consent
// forms. Each must come from the browser that opened the request, with the
// request's CSRF token.
func (s *AuthServer) ServeAuthorizeForm(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 8<<10)
	if err := r.ParseForm(); err != nil {
		s.errorPage(w, http.StatusBadRequest, "The form could not be read.")
		return
	}
	if origin := r.Header.Get("Origin"); origin != "" && origin != originOf(s.o.Issuer.URL) {
		s.errorPage(w, http.StatusForbidden, "The form was sent from another site.")
		return
	}
	id := r.PostForm.Get("request")
	p, err := s.getPending(r.Context(), id)
	if err != nil && !errors.Is(err, errFlowGone) {
		s.log.Error("authorization: pending request unreadable", "error", err)
		s.errorPage(w, http.StatusServiceUnavailable, "The sign-in could not be read; try again.")
		return
	}
	browser, _ := r.Cookie(browserCookie)
	if err != nil || browser == nil || subtle.ConstantTimeCompare([]byte(browser.Value), []byte(p.browser)) != 1 ||
		subtle.ConstantTimeCompare([]byte(r.PostForm.Get("csrf")), []byte(p.csrf)) != 1 {
		s.log.Info("authorization form refused", "reason", "unknown request, other browser or bad CSRF token")
		s.errorPage(w, http.StatusForbidden, "This sign-in expired or was not started in this browser. Go back to the application and start again.")
		return
	}
	switch r.PostForm.Get("action") {
	case "signin":
		s.signInForm(w, r, id, p)
	case "federate":
		s.federate(w, r, id, p)
	case "approve":
		if p.signIn == nil {
			s.next(w, r, id, p, "")
			return
		}
		if err := s.o.Store.PutClientConsent(r.Context(), p.signIn.subject, p.client.ID, strings.Join(p.scope, " ")); err != nil {
			s.log.Error("authorization: consent not recorded", "error", err)
			s.errorPage(w, http.StatusServiceUnavailable, "Your decision could not be recorded; try again.")
			return
		}
		s.log.Info("client allowed", "sub", p.signIn.subject, "client", p.client.ID, "scope", strings.Join(p.scope, " "))
		s.finish(w, r, id, p)
	case "deny":
		s.drop(r.Context(), id)
		s.log.Info("authorization denied by the user", "client", p.client.ID)
		s.redirectError(w, r, p, ErrCodeAccessDenied, "the user denied the request")
	default:
		s.errorPage(w, http.StatusBadRequest, "Unknown action.")
	}
}

// signInForm checks a name and password against the local user store.
func (s *AuthServer) signInForm(w http.ResponseWriter, r *http.Request, id string, p *pendingAuthz) {
	name, password := r.PostForm.Get("username"), r.PostForm.Get("password")
	var groups []string
	ok := s.o.Users != nil
	if ok {
		groups, ok = s.o.Users.Check(name, password)
	}
	if !ok {
		failures, err := s.o.Store.BumpFlow(r.Context(), flowPending, id)
		if err != nil {
			failures = maxSignInFailures // cannot count: no more tries
		}
		if failures >= maxSignInFailures {
			s.drop(r.Context(), id)
		}
		s.log.Info("sign-in refused", "reason", "wrong name or password", "failures", failures)
		if failures >= maxSignInFailures {
			s.redirectError(w, r, p, ErrCodeAccessDenied, "too many failed sign-ins")
			return
		}
		s.next(w, r, id, p, "Wrong name or password.")
		return
	}
	s.signedIn(w, r, id, p, name, groups)
}

// signedIn starts a browser sign-in for subject and goes on with the
// pending request.
func (s *AuthServer) signedIn(w http.ResponseWriter, r *http.Request, id string, p *pendingAuthz, subject string, groups []string) {
	now := s.now()
	si := &signIn{sid: randomToken(), subject: subject, groups: groups, at: now, expires: now.Add(s.o.SignInTTL)}
	key, err := s.putFlow(r.Context(), flowSignIn, signInRecord{SID: si.sid, Subject: subject, Groups: groups, At: si.at, Expires: si.expires}, si.expires)
	if err == nil {
		p.signIn = si
		err = s.savePending(r.Context(), id, p)
	}
	if err != nil {
		s.flowFailed(w, "sign-in", err)
		return
	}
	http.SetCookie(w, &http.Cookie{Name: signInCookie, Value: key, Path: "/oauth/", Expires: si.expires,
		Secure: s.secure, HttpOnly: true, SameSite: http.SameSiteLaxMode})
	s.log.Info("signed in", "sub", subject)
	s.next(w, r, id, p, "")
}

// currentSignIn returns the live sign-in the request's cookie names.
func (s *AuthServer) currentSignIn(r *http.Request) *signIn {
	c, err := r.Cookie(signInCookie)
	if err != nil {
		return nil
	}
	var rec signInRecord
	if _, err := s.getFlow(r.Context(), flowSignIn, c.Value, &rec); err != nil {
		if !errors.Is(err, errFlowGone) {
			s.log.Error("authorization: sign-in unreadable", "error", err)
		}
		return nil
	}
	si := rec.signIn()
	if s.revoked(r.Context(), si.subject, si.sid, si.at) {
		return nil
	}
	return si
}

// revoked reports whether a sign-in's user session was killed; a failure
// to tell counts as killed.
func (s *AuthServer) revoked(ctx context.Context, subject, sid string, signedIn time.Time) bool {
	if s.o.SessionRevoked == nil {
		return false
	}
	dead, err := s.o.SessionRevoked(ctx, subject, sid, signedIn)
	if err != nil {
		s.log.Error("authorization: session state unknown", "error", err)
		return true
	}
	return dead
}

// Cookies of the authorization endpoint.
const (
	browserCookie = "sag_browser"
	signInCookie  = "sag_signin"
)

// browserID returns the request's browser cookie, setting a new one when
// it has none.
func (s *AuthServer) browserID(w http.ResponseWriter, r *http.Request) string {
	if c, err := r.Cookie(browserCookie); err == nil && len(c.Value) == 43 {
		return c.Value
	}
	v := randomToken()
	http.SetCookie(w, &http.Cookie{Name: browserCookie, Value: v, Path: "/oauth/", Secure: s.secure, HttpOnly: true, SameSite: http.SameSiteLaxMode})
	return v
}

// finish issues the code and redirects to the client (RFC 6749 §4.1.2,
// with iss per RFC 9207).
func (s *AuthServer) finish(w http.ResponseWriter, r *http.Request, id string, p *pendingAuthz) {
	// One code per request: whoever takes the request issues it.
	if _, err := s.o.Store.TakeFlow(r.Context(), flowPending, id); err != nil {
		s.errorPage(w, http.StatusForbidden, "This sign-in expired or was already completed. Go back to the application and start again.")
		return
	}
	code, err := s.putFlow(r.Context(), flowCode, p.record(), s.now().Add(codeTTL))
	if err != nil {
		s.log.Error("authorization code not issued", "error", err)
		s.redirectError(w, r, p, ErrCodeTemporarilyUnavailable, "the code could not be issued")
		return
	}
	s.log.Info("authorization code issued", "sub", p.signIn.subject, "client", p.client.ID)
	s.redirect(w, r, p, url.Values{"code": {code}})
}

// redirectError sends an error to the client's redirect URI.
func (s *AuthServer) redirectError(w http.ResponseWriter, r *http.Request, p *pendingAuthz, code, desc string) {
	s.redirect(w, r, p, url.Values{"error": {code}, "error_description": {errorDescription(desc)}})
}

func (s *AuthServer) redirect(w http.ResponseWriter, r *http.Request, p *pendingAuthz, v url.Values) {
	if p.state != "" {
		v.Set("state", p.state)
	}
	v.Set("iss", s.o.Issuer.URL)
	u, _ := url.Parse(p.redirect) // checked when the request came in
	q := u.Query()
	for k, vals := range v {
		q[k] = vals
	}
	u.RawQuery = q.Encode()
	w.Header().Set("Cache-Control", "no-store")
	http.Redirect(w, r, u.String(), http.StatusSeeOther)
}

// originOf returns scheme://host of a URL.
func originOf(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return ""
	}
	return u.Scheme + "://" + u.Host
}

// redirectHost is what the consent page says the person will be sent to.
func redirectHost(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return s
	}
	if u.Host == "" {
		return u.Scheme + ":"
	}
	return u.Host
}

func clientLabel(c *OAuthClient) string {
	if c.Name != "" {
		return c.Name
	}
	return c.ID
}
