package identity

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"
)

// AgentTokenHeader carries an agent's JWT-SVID on requests that do not come
// over mTLS. Its audience must be the gateway's public URL.
const AgentTokenHeader = "Sag-Agent-Token"

// Authentication modes (the --auth flag).
const (
	ModeDPoP   = "dpop"   // DPoP-bound (or mTLS-bound) tokens only
	ModeBearer = "bearer" // also unbound bearer tokens, for legacy clients
)

// AgentAuthenticator identifies the calling agent from its request: the
// SPIFFE ID of its X.509-SVID over mTLS, or of a JWT-SVID in
// AgentTokenHeader. It returns "" and no error when the request carries no
// agent credential, and a *OAuthError when it carries a bad one.
type AgentAuthenticator interface {
	Agent(ctx context.Context, r *http.Request) (string, error)
}

// RevocationChecker reports whether a token (by issuer and jti) has been
// revoked, for example by the kill-switch or RFC 7009 revocation.
type RevocationChecker interface {
	TokenRevoked(ctx context.Context, issuer, jti string) (bool, error)
}

// AuthOptions configure an Authenticator.
type AuthOptions struct {
	// Mode is ModeDPoP or ModeBearer.
	Mode string
	// PublicURL is the gateway's external base URL; a request's htu is
	// PublicURL + its path, never built from Host or X-Forwarded-*.
	PublicURL string
	// ResourceMetadataURL is announced in every challenge (RFC 9728 §5.1).
	ResourceMetadataURL string
	Tokens              *TokenVerifier
	DPoP                *DPoPVerifier
	// Nonces, when set, makes DPoP proofs carry a server nonce (RFC 9449 §8).
	Nonces *Nonces
	// Agents identifies agents; nil means no agent credential is accepted.
	Agents AgentAuthenticator
	// Revocations may be nil.
	Revocations RevocationChecker
	// SelfIssuer is the gateway's own issuer: a DPoP-bound token it minted
	// for an agent it runs (claim sag_agent equal to act.sub) names that
	// agent, proven by the key the token is bound to; its sag_workflow
	// binds the calls to their workflow.
	SelfIssuer string
}

// Authenticator authenticates HTTP requests to the gateway: access token,
// DPoP proof or mTLS binding, agent identity. Safe for concurrent use.
type Authenticator struct{ o AuthOptions }

// NewAuthenticator checks o and returns an Authenticator.
func NewAuthenticator(o AuthOptions) (*Authenticator, error) {
	if o.Mode != ModeDPoP && o.Mode != ModeBearer {
		return nil, fmt.Errorf("identity: unknown authentication mode %q", o.Mode)
	}
	if o.Tokens == nil || o.DPoP == nil || o.PublicURL == "" {
		return nil, errors.New("identity: authenticator needs a token verifier, a DPoP verifier and the public URL")
	}
	o.PublicURL = strings.TrimRight(o.PublicURL, "/")
	return &Authenticator{o: o}, nil
}

// Authenticate establishes the principal of r. Errors are *OAuthError, ready
// for WriteError.
func (a *Authenticator) Authenticate(r *http.Request) (Principal, error) {
	ctx := r.Context()
	authz := r.Header.Values("Authorization")
	switch len(authz) {
	case 0:
		return Principal{}, &OAuthError{Status: http.StatusUnauthorized}
	case 1:
	default:
		return Principal{}, oauthErr(http.StatusBadRequest, ErrCodeInvalidRequest, "more than one Authorization header")
	}
	scheme, token, ok := strings.Cut(authz[0], " ")
	if !ok || !validToken68(token) {
		return Principal{}, oauthErr(http.StatusBadRequest, ErrCodeInvalidRequest, "malformed Authorization header")
	}
	// Scheme names compare case-insensitively (RFC 9110 §11.1); errors
	// name them in their canonical spelling.
	switch {
	case strings.EqualFold(scheme, "DPoP"):
		scheme = "DPoP"
	case strings.EqualFold(scheme, "Bearer"):
		scheme = "Bearer"
	default:
		return Principal{}, &OAuthError{Status: http.StatusUnauthorized}
	}
	// Bound the token before parsing it.
	if len(token) > a.o.Tokens.max {
		return Principal{}, invalidTokenErr("token too large", scheme)
	}
	proofs := r.Header.Values("DPoP")
	var p Principal
	switch scheme {
	case "DPoP":
		c, err := a.token(ctx, token, "DPoP")
		if err != nil {
			return Principal{}, err
		}
		// RFC 9449 §7.1: the DPoP scheme carries DPoP-bound tokens.
		if c.Cnf == nil || c.Cnf.JKT == "" {
			return Principal{}, invalidTokenErr("token is not DPoP-bound", "DPoP")
		}
		req := DPoPRequest{Proofs: proofs, Method: r.Method, URL: a.o.PublicURL + r.URL.EscapedPath(), AccessToken: token}
		if a.o.Nonces != nil {
			req.CheckNonce = a.o.Nonces.Valid
		}
		proof, err := a.o.DPoP.Verify(ctx, req)
		if err != nil {
			var oe *OAuthError
			if errors.As(err, &oe) {
				return Principal{}, oe
			}
			return Principal{}, err
		}
		// RFC 9449 §4.3 point 12 and §6.1: the proof's key is the key the
		// token is bound to. A stolen token with another key fails here.
		if subtle.ConstantTimeCompare([]byte(proof.JKT), []byte(c.Cnf.JKT)) != 1 {
			return Principal{}, &OAuthError{Status: http.StatusUnauthorized, Code: ErrCodeInvalidDPoPProof, Description: "proof key does not match the token's cnf.jkt", Scheme: "DPoP"}
		}
		p = principalOf(c, MethodDPoP)
		p.Proof, p.KeyThumbprint = proof, proof.JKT
		if c.Cnf.X5T != "" {
			if err := checkCertBinding(r, c.Cnf.X5T, "DPoP"); err != nil {
				return Principal{}, err
			}
		}
	case "Bearer":
		if len(proofs) > 0 {
			return Principal{}, oauthErr(http.StatusBadRequest, ErrCodeInvalidRequest, "a DPoP proof goes with the DPoP scheme, not Bearer")
		}
		c, err := a.token(ctx, token, "Bearer")
		if err != nil {
			return Principal{}, err
		}
		switch {
		case c.Cnf != nil && c.Cnf.JKT != "":
			// RFC 9449 §7.2: a DPoP-bound token sent as a bearer token
			// MUST be rejected (downgrade).
			return Principal{}, invalidTokenErr("DPoP-bound token sent with the Bearer scheme", "Bearer")
		case c.Cnf != nil && c.Cnf.X5T != "":
			// RFC 8705 §3: certificate-bound tokens use the Bearer scheme
			// over mTLS with the bound certificate.
			if err := checkCertBinding(r, c.Cnf.X5T, "Bearer"); err != nil {
				return Principal{}, err
			}
			p = principalOf(c, MethodMTLS)
			p.KeyThumbprint = c.Cnf.X5T
		case a.o.Mode == ModeBearer:
			p = principalOf(c, MethodBearer)
		default:
			return Principal{}, invalidTokenErr("sender-constrained token required (DPoP or mTLS)", "DPoP")
		}
	}
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		p.CertThumbprint = certThumbprint(r.TLS.PeerCertificates[0].Raw)
	}
	if a.o.Revocations != nil && p.TokenID != "" {
		revoked, err := a.o.Revocations.TokenRevoked(ctx, p.Issuer, p.TokenID)
		if err != nil {
			return Principal{}, fmt.Errorf("identity: revocation check: %w", err)
		}
		if revoked {
			return Principal{}, invalidTokenErr("token revoked", scheme)
		}
	}
	// The agent: its own credential, which must equal the token's actor
	// when the token names one.
	if a.o.Agents != nil {
		agent, err := a.o.Agents.Agent(ctx, r)
		if err != nil {
			return Principal{}, err
		}
		p.Agent = agent
	}
	if run, ok := a.runAgent(p); ok && p.Agent == "" {
		// The gateway bound the token to the agent's registered key when
		// it minted it for the agent's run, and this request proved that
		// key (RFC 9449 §7.1): its holder is the agent.
		// The user is the one the agent runs for, as their own issuer
		// named them: the calls join the user's session graph (and a kill
		// of the user covers them).
		p.Agent, p.Workflow = run.agent, run.workflow
		if run.issuer != "" {
			p.Issuer = run.issuer
		}
	}
	// A token the gateway exchanged for a legacy one (Legacy) stands for
	// the user as their own issuer named them.
	if p.Issuer == a.o.SelfIssuer && p.Act == nil && p.Method == MethodDPoP {
		if iss, _ := p.Claims["sag_iss"].(string); iss != "" {
			p.Issuer = iss
		}
	}
	if p.Act != nil && p.Act.Sub != p.Agent {
		if p.Agent == "" {
			return Principal{}, invalidTokenErr("token names an actor; authenticate as that agent (mTLS or "+AgentTokenHeader+")", scheme)
		}
		return Principal{}, invalidTokenErr("authenticated agent is not the token's actor", scheme)
	}
	return p, nil
}

// runClaims are the run-token claims of a principal.
type runClaims struct{ agent, workflow, issuer string }

// runAgent returns the run-token claims of p: a token the gateway itself
// minted, DPoP-bound, whose sag_agent is its actor.
func (a *Authenticator) runAgent(p Principal) (runClaims, bool) {
	if a.o.SelfIssuer == "" || p.Issuer != a.o.SelfIssuer || p.Method != MethodDPoP || p.Act == nil {
		return runClaims{}, false
	}
	agent, _ := p.Claims["sag_agent"].(string)
	workflow, _ := p.Claims["sag_workflow"].(string)
	issuer, _ := p.Claims["sag_iss"].(string)
	if agent == "" || agent != p.Act.Sub {
		return runClaims{}, false
	}
	return runClaims{agent: agent, workflow: workflow, issuer: issuer}, true
}

// token verifies an access token, mapping failures to OAuthErrors.
func (a *Authenticator) token(ctx context.Context, token, scheme string) (*Claims, error) {
	c, err := a.o.Tokens.Verify(ctx, token)
	if err != nil {
		var oe *OAuthError
		if errors.As(err, &oe) {
			return nil, invalidTokenErr(oe.Description, scheme)
		}
		return nil, &OAuthError{Status: http.StatusServiceUnavailable, Code: "temporarily_unavailable", Description: "issuer keys unavailable", Scheme: scheme}
	}
	return c, nil
}

func invalidTokenErr(desc, scheme string) *OAuthError {
	return &OAuthError{Status: http.StatusUnauthorized, Code: ErrCodeInvalidToken, Description: desc, Scheme: scheme}
}

func principalOf(c *Claims, method string) Principal {
	return Principal{
		Issuer: c.Issuer, User: c.Subject, Act: c.Act, TokenID: c.JTI, SessionID: c.SessionID,
		ClientID: c.ClientID, Scopes: c.Scopes(), Groups: c.Groups, Claims: c.All, IssuedAt: time.Unix(c.IssuedAt, 0), Expiry: time.Unix(c.Expiry, 0), Method: method,
	}
}

// checkCertBinding checks an RFC 8705 §3.1 binding: the request came over
// mTLS with the certificate whose SHA-256 thumbprint the token names.
func checkCertBinding(r *http.Request, x5t, scheme string) error {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return invalidTokenErr("certificate-bound token used without a client certificate", scheme)
	}
	if subtle.ConstantTimeCompare([]byte(certThumbprint(r.TLS.PeerCertificates[0].Raw)), []byte(x5t)) != 1 {
		return invalidTokenErr("client certificate does not match the token's cnf", scheme)
	}
	return nil
}

// certThumbprint is the RFC 8705 §3.1 x5t#S256 of a DER certificate.
func certThumbprint(der []byte) string {
	sum := sha256.Sum256(der)
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// CertThumbprint returns the RFC 8705 §3.1 x5t#S256 value of a DER
// certificate.
func CertThumbprint(der []byte) string { return certThumbprint(der) }

// RequireScopes returns an insufficient_scope error (RFC 6750 §3.1) unless p
// holds every scope in need.
func RequireScopes(p Principal, need []string) error {
	for _, s := range need {
		if !slices.Contains(p.Scopes, s) {
			scheme := "Bearer" // bearer and mTLS-bound tokens
			if p.Method == MethodDPoP {
				scheme = "DPoP"
			}
			return &OAuthError{Status: http.StatusForbidden, Code: ErrCodeInsufficientScope, Description: "the token lacks a required scope", Scope: need, Scheme: scheme}
		}
	}
	return nil
}

// WriteError answers a refused request: status, WWW-Authenticate challenges
// (RFC 6750 §3, RFC 9449 §7.1, RFC 9728 §5.1), DPoP-Nonce when a nonce is
// needed, and a JSON body with error and error_description.
func (a *Authenticator) WriteError(w http.ResponseWriter, err error) {
	var ae *OAuthError
	if !errors.As(err, &ae) {
		// Not the caller's fault (a full replay cache, an unreachable
		// revocation list): try again later, never a 500.
		ae = &OAuthError{Status: http.StatusServiceUnavailable, Code: "temporarily_unavailable", Description: "authentication unavailable; try again"}
	}
	scheme := ae.Scheme
	if scheme == "" {
		scheme = "DPoP"
		if a.o.Mode == ModeBearer {
			scheme = "Bearer"
		}
	}
	if ae.Status == http.StatusUnauthorized || ae.Status == http.StatusForbidden || ae.Status == http.StatusBadRequest {
		// Both schemes are offered in bearer mode; DPoP always is (it is
		// the only one for DPoP-bound tokens, and mTLS-bound ones use
		// Bearer).
		for _, s := range []string{"DPoP", "Bearer"} {
			if s == "Bearer" && a.o.Mode != ModeBearer && scheme != "Bearer" {
				continue
			}
			w.Header().Add("WWW-Authenticate", a.challenge(s, ae, s == scheme))
		}
	}
	if ae.Code == ErrCodeUseDPoPNonce && a.o.Nonces != nil {
		w.Header().Set("DPoP-Nonce", a.o.Nonces.Current())
	}
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(ae.Status)
	body := map[string]string{}
	if ae.Code != "" {
		body["error"] = ae.Code
		body["error_description"] = ae.Description
	} else {
		body["error"] = "unauthorized"
		body["error_description"] = "authentication required"
	}
	json.NewEncoder(w).Encode(body)
}

// challenge builds one WWW-Authenticate value; withError attaches ae's code.
func (a *Authenticator) challenge(scheme string, ae *OAuthError, withError bool) string {
	var b strings.Builder
	b.WriteString(scheme)
	sep := " "
	param := func(k, v string) {
		b.WriteString(sep)
		b.WriteString(k)
		b.WriteByte('=')
		writeQuoted(&b, v)
		sep = ", "
	}
	if withError && ae.Code != "" {
		param("error", ae.Code)
		if ae.Description != "" {
			param("error_description", ae.Description)
		}
		if len(ae.Scope) > 0 {
			param("scope", strings.Join(ae.Scope, " "))
		}
	}
	if scheme == "DPoP" {
		param("algs", strings.Join(a.o.DPoP.Algs(), " "))
	}
	if a.o.ResourceMetadataURL != "" {
		param("resource_metadata", a.o.ResourceMetadataURL)
	}
	return b.String()
}

// validToken68 reports whether s is an RFC 7235 §2.1 token68 (the syntax of
// both Bearer and DPoP credentials).
func validToken68(s string) bool {
	if s == "" {
		return false
	}
	end := len(s)
	for end > 0 && s[end-1] == '=' {
		end--
	}
	if end == 0 {
		return false
	}
	for i := 0; i < end; i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("-._~+/", c) >= 0) {
			return false
		}
	}
	return true
}
