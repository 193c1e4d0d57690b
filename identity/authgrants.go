package identity

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"golang.org/x/time/rate"

	"github.com/sag-gateway/sag/store"
)

// TokenEndpoint answers POST /oauth/token for every grant the gateway runs:
// it reads the form once (RFC 6749 §3.2) and hands it to the grant's owner.
type TokenEndpoint struct {
	// Exchange runs token exchange (RFC 8693) for agents; nil when it is
	// off.
	Exchange *Exchange
	// Legacy exchanges legacy tokens (token exchange without an actor, of
	// a subject token not the gateway's); nil when it is off.
	Legacy *Legacy
	// Server runs the authorization_code and refresh_token grants; nil
	// when the authorization server is off.
	Server *AuthServer
	Nonces *Nonces
	Log    *slog.Logger
}

func (t *TokenEndpoint) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	log := t.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	form, err := readTokenForm(w, r)
	if err != nil {
		writeTokenError(w, log, t.Nonces, err)
		return
	}
	switch gt := form.get("grant_type"); {
	case gt == GrantTypeTokenExchange && t.Legacy != nil && t.Legacy.takes(form):
		t.Legacy.serve(w, r, form)
	case gt == GrantTypeTokenExchange && t.Exchange != nil:
		t.Exchange.serve(w, r, form)
	case (gt == GrantTypeAuthorizationCode || gt == GrantTypeRefreshToken) && t.Server != nil:
		t.Server.serveToken(w, r, form)
	case gt == "":
		writeTokenError(w, log, t.Nonces, invalidRequest("missing grant_type"))
	default:
		writeTokenError(w, log, t.Nonces, badRequest(ErrCodeUnsupportedGrantType, "grant_type "+gt+" is not supported here"))
	}
}

// tokenGrant is what a refresh token grants, stored with it as JSON.
type tokenGrant struct {
	Subject string   `json:"sub"`
	Groups  []string `json:"groups,omitempty"`
	SID     string   `json:"sid"`
	// SignedIn is when the sign-in happened (Unix seconds).
	SignedIn int64    `json:"signed_in"`
	Scope    []string `json:"scope,omitempty"`
	Resource string   `json:"resource"`
	// JKT binds the refresh token of a public client to its DPoP key
	// (RFC 9449 §5).
	JKT string `json:"jkt,omitempty"`
}

// grantResponse is the RFC 6749 §5.1 success response.
type grantResponse struct {
	AccessToken  string `json:"access_token"`
	TokenType    string `json:"token_type"`
	ExpiresIn    int64  `json:"expires_in"`
	RefreshToken string `json:"refresh_token,omitempty"`
	Scope        string `json:"scope,omitempty"`
}

func (s *AuthServer) serveToken(w http.ResponseWriter, r *http.Request, form tokenForm) {
	resp, err := s.grant(r, form)
	if err != nil {
		writeTokenError(w, s.log, s.o.Nonces, err)
		return
	}
	writeTokenJSON(w, s.o.Nonces, http.StatusOK, resp)
}

func (s *AuthServer) grant(r *http.Request, form tokenForm) (*grantResponse, error) {
	ctx := r.Context()
	client, err := s.authenticateClient(ctx, r, form)
	if err != nil {
		return nil, err
	}
	gt := form.get("grant_type")
	if len(client.GrantTypes) > 0 && !slices.Contains(client.GrantTypes, gt) {
		return nil, badRequest(ErrCodeUnauthorizedClient, "the client did not register the "+gt+" grant")
	}
	// A proof is optional here: where bearer tokens are allowed, a client
	// without a DPoP key gets one.
	var proof *DPoPProof
	if len(r.Header.Values("DPoP")) > 0 {
		if proof, err = tokenProof(ctx, s.o.DPoP, s.o.Nonces, r, s.o.Issuer.URL+TokenPath); err != nil {
			return nil, err
		}
	}
	if gt == GrantTypeAuthorizationCode {
		return s.codeGrant(ctx, client, form, proof)
	}
	return s.refreshGrant(ctx, client, form, proof)
}

// authenticateClient identifies the client (RFC 6749 §2.3.1, §3.2.1): a
// confidential one by its secret (HTTP Basic or the form), a public one by
// client_id alone.
func (s *AuthServer) authenticateClient(ctx context.Context, r *http.Request, form tokenForm) (*OAuthClient, error) {
	id, secret, basic := r.BasicAuth()
	if basic {
		// RFC 6749 §2.3.1: both are form-urlencoded before Basic.
		var e1, e2 error
		id, e1 = url.QueryUnescape(id)
		secret, e2 = url.QueryUnescape(secret)
		if e1 != nil || e2 != nil {
			return nil, &OAuthError{Status: http.StatusUnauthorized, Code: ErrCodeInvalidClient, Description: "malformed client credentials", Scheme: "Basic"}
		}
		if form.get("client_secret") != "" || (form.get("client_id") != "" && form.get("client_id") != id) {
			return nil, invalidRequest("client credentials given twice")
		}
	} else if authz := r.Header.Values("Authorization"); len(authz) > 0 {
		return nil, &OAuthError{Status: http.StatusUnauthorized, Code: ErrCodeInvalidClient, Description: "client authentication must use Basic", Scheme: schemeOf(authz[0])}
	} else {
		id, secret = form.get("client_id"), form.get("client_secret")
	}
	if id == "" {
		return nil, invalidRequest("client_id is required")
	}
	client, err := s.client(ctx, id)
	if err != nil {
		s.log.Info("token request: unknown client", "error", err.Error())
		return nil, &OAuthError{Status: http.StatusUnauthorized, Code: ErrCodeInvalidClient, Description: "unknown client", Scheme: "Basic"}
	}
	switch {
	case client.public() && secret != "":
		return nil, &OAuthError{Status: http.StatusUnauthorized, Code: ErrCodeInvalidClient, Description: "the client is public: it has no secret", Scheme: "Basic"}
	case !client.public() && (secret == "" || !client.checkSecret(secret)):
		return nil, &OAuthError{Status: http.StatusUnauthorized, Code: ErrCodeInvalidClient, Description: "client authentication failed", Scheme: "Basic"}
	}
	return client, nil
}

// codeGrant redeems an authorization code (RFC 6749 §4.1.3, RFC 7636
// §4.6).
func (s *AuthServer) codeGrant(ctx context.Context, client *OAuthClient, form tokenForm, proof *DPoPProof) (*grantResponse, error) {
	code := form.get("code")
	if code == "" {
		return nil, invalidRequest("code is required")
	}
	var rec pendingRecord
	f, err := s.getFlow(ctx, flowCode, code, &rec)
	switch {
	case errors.Is(err, errFlowGone):
		return nil, badRequest(ErrCodeInvalidGrant, "unknown or expired code")
	case err != nil:
		return nil, serverError(http.StatusServiceUnavailable, ErrCodeTemporarilyUnavailable, "the code could not be checked", err)
	case f.Spent != nil:
		// RFC 6749 §4.1.2: a code used twice is refused, and what it
		// issued is revoked.
		s.replayedCode(ctx, client, rec, f.Spent)
		return nil, badRequest(ErrCodeInvalidGrant, "the code was already used")
	case rec.SignIn == nil:
		return nil, badRequest(ErrCodeInvalidGrant, "unknown or expired code")
	}
	p, err := s.pendingOf(ctx, rec)
	if err != nil {
		return nil, badRequest(ErrCodeInvalidGrant, "the code's client is no longer known")
	}
	si := p.signIn
	switch {
	case p.client.ID != client.ID:
		return nil, badRequest(ErrCodeInvalidGrant, "the code was issued to another client")
	case form.get("redirect_uri") != p.redirect:
		// RFC 6749 §4.1.3: identical to the authorization request's.
		return nil, badRequest(ErrCodeInvalidGrant, "redirect_uri does not match the authorization request")
	}
	verifier := form.get("code_verifier")
	if verifier == "" {
		return nil, invalidRequest("code_verifier is required (PKCE)")
	}
	if len(verifier) < 43 || len(verifier) > 128 || !pkceValue(verifier) {
		return nil, badRequest(ErrCodeInvalidGrant, "malformed code_verifier")
	}
	sum := sha256.Sum256([]byte(verifier))
	if subtle.ConstantTimeCompare([]byte(base64.RawURLEncoding.EncodeToString(sum[:])), []byte(p.challenge)) != 1 {
		return nil, badRequest(ErrCodeInvalidGrant, "code_verifier does not match the code_challenge")
	}
	if res := form.get("resource"); res != "" && res != p.resource {
		return nil, badRequest(ErrCodeInvalidTarget, "resource does not match the authorization request")
	}
	// RFC 9449 §10: a code requested with dpop_jkt is redeemed with that
	// key only.
	if p.jkt != "" && (proof == nil || proof.JKT != p.jkt) {
		return nil, badRequest(ErrCodeInvalidDPoPProof, "the DPoP key is not the one the authorization request named (dpop_jkt)")
	}
	if proof == nil && !s.o.AllowBearer {
		return nil, invalidRequest("this server issues DPoP-bound tokens only: send a DPoP proof (RFC 9449)")
	}
	if s.revoked(ctx, si.subject, si.sid, si.at) {
		return nil, badRequest(ErrCodeInvalidGrant, "the sign-in this code came from was ended")
	}
	// The code is spent from here on, whatever happens next: one
	// redemption wins, on whichever gateway.
	spent := &issued{family: randomToken()}
	mark, _ := json.Marshal(spent.record())
	switch prior, err := s.o.Store.SpendFlow(ctx, flowCode, code, mark); {
	case errors.Is(err, store.ErrNotFound):
		return nil, badRequest(ErrCodeInvalidGrant, "unknown or expired code")
	case err != nil:
		return nil, serverError(http.StatusServiceUnavailable, ErrCodeTemporarilyUnavailable, "the code could not be redeemed", err)
	case prior != nil:
		return nil, badRequest(ErrCodeInvalidGrant, "the code was already used")
	}
	g := tokenGrant{Subject: si.subject, Groups: si.groups, SID: si.sid, SignedIn: si.at.Unix(), Scope: p.scope, Resource: p.resource}
	if proof != nil && client.public() {
		g.JKT = proof.JKT
	}
	resp, err := s.issue(ctx, client, g, proof, spent, s.now().Add(s.o.RefreshTTL))
	if err != nil {
		return nil, err
	}
	// What the code issued, for a replay to revoke.
	mark, _ = json.Marshal(spent.record())
	if err := s.o.Store.SetFlowSpent(ctx, flowCode, code, mark); err != nil {
		s.log.Error("redeemed code: its access token is not recorded for a replay to revoke", "error", err)
	}
	s.log.Info("tokens issued", "grant", GrantTypeAuthorizationCode, "sub", g.Subject, "client", client.ID, "token_type", resp.TokenType)
	return resp, nil
}

// refreshGrant rotates a refresh token (OAuth 2.1 §4.3.1): the old one is
// spent, and presenting it again revokes its whole family.
func (s *AuthServer) refreshGrant(ctx context.Context, client *OAuthClient, form tokenForm, proof *DPoPProof) (*grantResponse, error) {
	raw := form.get("refresh_token")
	if raw == "" {
		return nil, invalidRequest("refresh_token is required")
	}
	hash := tokenHash(raw)
	rec, err := s.o.Store.GetRefreshToken(ctx, hash)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return nil, badRequest(ErrCodeInvalidGrant, "unknown refresh token")
	case err != nil:
		return nil, serverError(http.StatusServiceUnavailable, ErrCodeTemporarilyUnavailable, "the refresh token could not be checked", err)
	case rec.Client != client.ID:
		return nil, badRequest(ErrCodeInvalidGrant, "the refresh token was issued to another client")
	case rec.State == store.RefreshUsed:
		s.log.Warn("refresh token reused: its family is revoked", "client", client.ID, "sub", rec.Subject)
		if err := s.o.Store.RevokeRefreshFamily(ctx, rec.Family); err != nil {
			return nil, serverError(http.StatusServiceUnavailable, ErrCodeTemporarilyUnavailable, "the refresh token family could not be revoked", err)
		}
		return nil, badRequest(ErrCodeInvalidGrant, "the refresh token was already used; every token of its sign-in for this client is revoked")
	case rec.State != store.RefreshActive:
		return nil, badRequest(ErrCodeInvalidGrant, "the refresh token was revoked")
	case !s.now().Before(rec.Expires):
		return nil, badRequest(ErrCodeInvalidGrant, "the refresh token expired")
	}
	var g tokenGrant
	if err := json.Unmarshal(rec.Grant, &g); err != nil {
		return nil, serverError(http.StatusInternalServerError, ErrCodeServerError, "the refresh token could not be read", err)
	}
	// RFC 9449 §5: a refresh token bound to a key is good with that key
	// only.
	if g.JKT != "" && (proof == nil || proof.JKT != g.JKT) {
		return nil, badRequest(ErrCodeInvalidGrant, "the refresh token is bound to another DPoP key")
	}
	if proof == nil && !s.o.AllowBearer {
		return nil, invalidRequest("this server issues DPoP-bound tokens only: send a DPoP proof (RFC 9449)")
	}
	if sc := form.get("scope"); sc != "" {
		// RFC 6749 §6: the scope may only narrow.
		want, ok := parseScope(sc)
		if !ok || !covers(strings.Join(g.Scope, " "), want) {
			return nil, badRequest(ErrCodeInvalidScope, "the scope may only narrow what was granted")
		}
		g.Scope = want
	}
	if s.revoked(ctx, g.Subject, g.SID, time.Unix(g.SignedIn, 0)) {
		return nil, badRequest(ErrCodeInvalidGrant, "the sign-in this refresh token came from was ended")
	}
	if err := s.o.Store.UseRefreshToken(ctx, hash); err != nil {
		if errors.Is(err, store.ErrRefreshReused) {
			s.log.Warn("refresh token reused: its family is revoked", "client", client.ID, "sub", rec.Subject)
			return nil, badRequest(ErrCodeInvalidGrant, "the refresh token was already used; every token of its sign-in for this client is revoked")
		}
		return nil, serverError(http.StatusServiceUnavailable, ErrCodeTemporarilyUnavailable, "the refresh token could not be rotated", err)
	}
	resp, err := s.issue(ctx, client, g, proof, &issued{family: rec.Family}, rec.Expires)
	if err != nil {
		return nil, err
	}
	s.log.Info("tokens issued", "grant", GrantTypeRefreshToken, "sub", g.Subject, "client", client.ID, "token_type", resp.TokenType)
	return resp, nil
}

// issue mints the access token (RFC 9068, DPoP-bound when proof is set)
// and a refresh token of into's family that lasts until refreshUntil.
func (s *AuthServer) issue(ctx context.Context, client *OAuthClient, g tokenGrant, proof *DPoPProof, into *issued, refreshUntil time.Time) (*grantResponse, error) {
	c := Claims{Subject: g.Subject, Audience: Audience{s.o.Issuer.URL}, ClientID: client.ID, Scope: strings.Join(g.Scope, " "),
		SessionID: g.SID, Groups: g.Groups}
	tokenType := "Bearer"
	if proof != nil {
		// RFC 9449 §6.1.
		c.Cnf, tokenType = &Confirmation{JKT: proof.JKT}, "DPoP"
	}
	tok, minted, err := s.o.Issuer.Mint(c, s.o.AccessTTL)
	if err != nil {
		return nil, serverError(http.StatusInternalServerError, ErrCodeServerError, "could not issue a token", err)
	}
	into.accessJTI, into.accessExp = minted.JTI, time.Unix(minted.Expiry, 0)
	resp := &grantResponse{AccessToken: tok, TokenType: tokenType, ExpiresIn: minted.Expiry - minted.IssuedAt, Scope: minted.Scope}
	if len(client.GrantTypes) > 0 && !slices.Contains(client.GrantTypes, GrantTypeRefreshToken) {
		return resp, nil
	}
	grant, _ := json.Marshal(g)
	refresh := randomToken()
	if err := s.o.Store.PutRefreshToken(ctx, store.RefreshToken{Hash: tokenHash(refresh), Family: into.family, Client: client.ID,
		Subject: g.Subject, Expires: refreshUntil, Grant: grant}); err != nil {
		return nil, serverError(http.StatusServiceUnavailable, ErrCodeTemporarilyUnavailable, "could not record the refresh token", err)
	}
	resp.RefreshToken = refresh
	return resp, nil
}

// replayedCode revokes what the first redemption of a code issued (spent,
// as kept).
func (s *AuthServer) replayedCode(ctx context.Context, client *OAuthClient, rec pendingRecord, spent []byte) {
	sub := ""
	if rec.SignIn != nil {
		sub = rec.SignIn.Subject
	}
	s.log.Warn("authorization code replayed: its tokens are revoked", "client", client.ID, "sub", sub)
	var i issuedRecord
	if err := json.Unmarshal(spent, &i); err != nil {
		s.log.Error("replayed code: what it issued is unreadable", "error", err)
		return
	}
	s.revokeIssued(ctx, issued{family: i.Family, accessJTI: i.AccessJTI, accessExp: i.AccessExp})
}

// revokeIssued revokes what a replayed code issued: its refresh token
// family and its access token.
func (s *AuthServer) revokeIssued(ctx context.Context, i issued) {
	if i.family != "" {
		if err := s.o.Store.RevokeRefreshFamily(ctx, i.family); err != nil {
			s.log.Error("replayed code: refresh tokens not revoked", "error", err)
		}
	}
	if i.accessJTI != "" {
		if err := s.o.RevokeToken(ctx, s.o.Issuer.URL, i.accessJTI, i.accessExp); err != nil {
			s.log.Error("replayed code: access token not revoked", "error", err)
		}
	}
}

// ---- dynamic client registration (RFC 7591) ----

// maxRegistrationBytes bounds a registration request.
const maxRegistrationBytes = 16 << 10

// registrations limits RFC 7591 registrations, an unauthenticated write:
// 5 a second, bursts of 20.
var registrationRate = rate.Limit(5)

// ServeRegister answers POST /oauth/register (RFC 7591 §3).
func (s *AuthServer) ServeRegister(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		writeRegistrationError(w, http.StatusMethodNotAllowed, ErrCodeInvalidRequest, "use POST")
		return
	}
	if !s.registrations.Allow() {
		w.Header().Set("Retry-After", "1")
		writeRegistrationError(w, http.StatusTooManyRequests, "temporarily_unavailable", "too many registrations; try again")
		return
	}
	var req struct {
		RedirectURIs  []string `json:"redirect_uris"`
		AuthMethod    string   `json:"token_endpoint_auth_method"`
		GrantTypes    []string `json:"grant_types"`
		ResponseTypes []string `json:"response_types"`
		Name          string   `json:"client_name"`
		URI           string   `json:"client_uri"`
		Scope         string   `json:"scope"`
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxRegistrationBytes))
	if err := dec.Decode(&req); err != nil {
		writeRegistrationError(w, http.StatusBadRequest, "invalid_client_metadata", "the body must be a JSON object of client metadata")
		return
	}
	c := OAuthClient{ID: NewID(), Name: req.Name, URI: req.URI, RedirectURIs: req.RedirectURIs, AuthMethod: req.AuthMethod, GrantTypes: req.GrantTypes}
	if len(c.GrantTypes) == 0 {
		c.GrantTypes = []string{GrantTypeAuthorizationCode}
	}
	for _, rt := range req.ResponseTypes {
		if rt != "code" {
			writeRegistrationError(w, http.StatusBadRequest, "invalid_client_metadata", "response type "+rt+" is not supported (code)")
			return
		}
	}
	if err := checkClient(&c); err != nil {
		code := "invalid_client_metadata"
		if strings.Contains(err.Error(), "redirect") {
			code = "invalid_redirect_uri"
		}
		writeRegistrationError(w, http.StatusBadRequest, code, err.Error())
		return
	}
	var secret string
	if !c.public() {
		secret = randomToken()
		c.SecretHash = HashClientSecret(secret)
	}
	meta, _ := json.Marshal(c)
	now := s.now()
	if err := s.o.Store.PutOAuthClient(r.Context(), store.OAuthClient{ID: c.ID, Metadata: meta, Created: now}); err != nil {
		s.log.Error("client registration not recorded", "error", err)
		writeRegistrationError(w, http.StatusServiceUnavailable, "temporarily_unavailable", "the registration could not be recorded")
		return
	}
	s.log.Info("client registered", "client", c.ID, "name", c.Name, "auth_method", c.AuthMethod)
	out := map[string]any{
		"client_id": c.ID, "client_id_issued_at": now.Unix(), "redirect_uris": c.RedirectURIs,
		"token_endpoint_auth_method": c.AuthMethod, "grant_types": c.GrantTypes, "response_types": []string{"code"},
	}
	if c.Name != "" {
		out["client_name"] = c.Name
	}
	if c.URI != "" {
		out["client_uri"] = c.URI
	}
	if secret != "" {
		out["client_secret"], out["client_secret_expires_at"] = secret, 0
	}
	writeTokenJSON(w, nil, http.StatusCreated, out)
}

// writeRegistrationError writes an RFC 7591 §3.2.2 error.
func writeRegistrationError(w http.ResponseWriter, status int, code, desc string) {
	writeTokenJSON(w, nil, status, map[string]string{"error": code, "error_description": errorDescription(desc)})
}
