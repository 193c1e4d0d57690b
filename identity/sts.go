package identity

import (
	"cmp"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"
	"unicode/utf8"
)

// Token exchange identifiers (RFC 8693 §2.1, §3).
const (
	GrantTypeTokenExchange = "urn:ietf:params:oauth:grant-type:token-exchange"
	TokenTypeAccessToken   = "urn:ietf:params:oauth:token-type:access_token"
	TokenTypeJWT           = "urn:ietf:params:oauth:token-type:jwt"
)

// Token endpoint error codes (RFC 6749 §5.2, RFC 8693 §2.2.2, RFC 8707 §2).
// ErrCodeInvalidRequest is shared with RFC 6750.
const (
	ErrCodeInvalidClient          = "invalid_client"
	ErrCodeUnsupportedGrantType   = "unsupported_grant_type"
	ErrCodeInvalidScope           = "invalid_scope"
	ErrCodeInvalidTarget          = "invalid_target"
	ErrCodeServerError            = "server_error"
	ErrCodeTemporarilyUnavailable = "temporarily_unavailable"
)

// Limits of the token endpoint.
const (
	// DefaultExchangeTTL is the lifetime of exchanged tokens when
	// ExchangeOptions.TTL is zero.
	DefaultExchangeTTL = 10 * time.Minute
	// MaxActorChain is the longest act chain (RFC 8693 §4.1) an exchanged
	// token may carry, counting the new actor.
	MaxActorChain = 8
	// maxTokenRequestBytes bounds the form body of a token request.
	maxTokenRequestBytes = 64 << 10
	// maxShortParam bounds every parameter that is not a token.
	maxShortParam = 2 << 10
)

// tokenParams are the parameters the token endpoint reads, with their
// length bound. RFC 6749 §3.2: any other parameter is ignored.
var tokenParams = map[string]int{
	"grant_type":            maxShortParam,
	"subject_token":         DefaultMaxTokenBytes,
	"subject_token_type":    maxShortParam,
	"actor_token":           DefaultMaxTokenBytes,
	"actor_token_type":      maxShortParam,
	"requested_token_type":  maxShortParam,
	"scope":                 maxShortParam,
	"audience":              maxShortParam,
	"resource":              maxShortParam,
	"client_secret":         DefaultMaxTokenBytes,
	"client_assertion":      DefaultMaxTokenBytes,
	"client_assertion_type": maxShortParam,
	// The authorization server's grants (authserver.go).
	"code":          maxShortParam,
	"code_verifier": maxShortParam,
	"redirect_uri":  maxShortParam,
	"client_id":     maxShortParam,
	"refresh_token": maxShortParam,
}

// multiParams may be repeated: RFC 8693 §2.1 allows several audience and
// resource parameters (SAG then refuses all but one distinct value).
var multiParams = map[string]bool{"audience": true, "resource": true}

// ActorVerifier authenticates an actor token presented at the token endpoint
// (for example a JWT-SVID, tokenType TokenTypeJWT) and returns the actor's
// SPIFFE ID. It refuses token types it does not know. Nothing else in the
// token is used: the act chain of an issued token is built from verified
// identities only.
type ActorVerifier interface {
	VerifyActor(ctx context.Context, token, tokenType string) (string, error)
}

// ExchangeOptions configure an Exchange.
type ExchangeOptions struct {
	// Issuer signs issued tokens; their iss is Issuer.URL. Required.
	Issuer *Issuer
	// Subjects verifies subject tokens (user access tokens whose audience
	// is the gateway). Required.
	Subjects *TokenVerifier
	// DPoP verifies the proof on each token request (RFC 9449 §5). Required.
	DPoP *DPoPVerifier
	// Nonces, when set, makes proofs carry a server nonce (RFC 9449 §8).
	Nonces *Nonces
	// TokenURL is the external URL of the token endpoint: the htu of
	// proofs. Required.
	TokenURL string
	// Actors verifies actor_token. Nil refuses actor tokens: then only an
	// agent identified by Agents can be the actor.
	Actors ActorVerifier
	// Agents identifies the agent from the request itself (mTLS
	// X.509-SVID, or AgentTokenHeader). It is consulted on every request:
	// when an actor_token is also given, both must name the same agent.
	// At least one of Actors and Agents is required.
	Agents AgentAuthenticator
	// Revocations, when set, refuses revoked subject tokens.
	Revocations RevocationChecker
	// Audiences are the audiences a token may be issued for besides
	// Issuer.URL, which is always allowed (and the default).
	Audiences []string
	// Scopes caps the scopes of issued tokens; empty allows any scope of
	// the subject token.
	Scopes []string
	// TTL is the longest lifetime of an issued token; it never outlives
	// its subject token. Default DefaultExchangeTTL.
	TTL time.Duration
	// Now is the clock for lifetimes. Default the Issuer's clock, which
	// stamps iat and exp: keep the two the same.
	Now func() time.Time
	// OnIssue records each issued token (its lineage) before the token is
	// returned. An error refuses the request with server_error.
	OnIssue func(ctx context.Context, c *Claims) error
	// Log receives one record per request, without token values. Nil
	// discards them.
	Log *slog.Logger
}

// Exchange is the gateway's RFC 8693 token endpoint for agents: an agent
// presents a user's access token (the subject), proves its own identity
// (actor token or mTLS) and a DPoP key, and receives a short-lived
// DPoP-bound token for one audience that records the delegation in act.
// Safe for concurrent use; build it with NewExchange.
type Exchange struct {
	o         ExchangeOptions
	ttl       time.Duration
	now       func() time.Time
	audiences map[string]bool
	scopes    map[string]bool // nil: no cap
	log       *slog.Logger
}

var _ http.Handler = (*Exchange)(nil)

// NewExchange checks o and returns the token endpoint.
func NewExchange(o ExchangeOptions) (*Exchange, error) {
	switch {
	case o.Issuer == nil || o.Issuer.URL == "" || o.Issuer.Keys == nil:
		return nil, errors.New("identity: exchange needs an issuer with a URL and keys")
	case o.Subjects == nil:
		return nil, errors.New("identity: exchange needs a subject token verifier")
	case o.DPoP == nil:
		return nil, errors.New("identity: exchange needs a DPoP verifier")
	case o.Actors == nil && o.Agents == nil:
		return nil, errors.New("identity: exchange needs an actor verifier or an agent authenticator")
	case o.TTL < 0:
		return nil, errors.New("identity: exchange lifetime must not be negative")
	}
	if _, err := normalizeHTU(o.TokenURL); err != nil {
		return nil, fmt.Errorf("identity: exchange token URL: %w", err)
	}
	e := &Exchange{
		o:         o,
		ttl:       o.TTL,
		now:       o.Now,
		audiences: map[string]bool{o.Issuer.URL: true},
		log:       o.Log,
	}
	if e.ttl == 0 {
		e.ttl = DefaultExchangeTTL
	}
	if e.now == nil {
		e.now = o.Issuer.now
	}
	if e.log == nil {
		e.log = slog.New(slog.DiscardHandler)
	}
	for _, a := range o.Audiences {
		if a == "" {
			return nil, errors.New("identity: exchange: empty audience")
		}
		e.audiences[a] = true
	}
	if len(o.Scopes) > 0 {
		e.scopes = map[string]bool{}
		for _, s := range o.Scopes {
			if !validScopeToken(s) {
				return nil, fmt.Errorf("identity: exchange: %q is not a scope token (RFC 6749 §3.3)", s)
			}
			e.scopes[s] = true
		}
	}
	return e, nil
}

// Metadata returns the RFC 8414 §2 authorization server metadata of the
// gateway's issuer, to be served at /.well-known/oauth-authorization-server.
func (e *Exchange) Metadata() map[string]any {
	base := strings.TrimRight(e.o.Issuer.URL, "/")
	m := map[string]any{
		"issuer":         e.o.Issuer.URL,
		"token_endpoint": e.o.TokenURL,
		"jwks_uri":       base + "/.well-known/jwks.json",
		// REQUIRED by RFC 8414 §2; SAG has no authorization endpoint, so
		// it supports no response type.
		"response_types_supported":              []string{},
		"grant_types_supported":                 []string{GrantTypeTokenExchange},
		"token_endpoint_auth_methods_supported": []string{"none"},
		"dpop_signing_alg_values_supported":     e.o.DPoP.Algs(),
		"introspection_endpoint":                base + "/oauth/introspect",
		"revocation_endpoint":                   base + "/oauth/revoke",
	}
	if len(e.o.Scopes) > 0 {
		m["scopes_supported"] = slices.Clone(e.o.Scopes)
	}
	return m
}

func badRequest(code, desc string) *OAuthError { return oauthErr(http.StatusBadRequest, code, desc) }

// invalidRequest is the RFC 8693 §2.2.2 error for a request that is not
// valid, or whose subject or actor token is invalid or unacceptable by
// policy.
func invalidRequest(desc string) *OAuthError { return badRequest(ErrCodeInvalidRequest, desc) }

func serverError(status int, code, desc string, cause error) *OAuthError {
	return &OAuthError{Status: status, Code: code, Description: desc, cause: cause}
}

// tokenRequest is a syntactically valid token exchange request.
type tokenRequest struct {
	subjectToken, subjectType string
	actorToken, actorType     string
	requestedType             string
	audiences                 []string // distinct audience and resource values
	scope                     []string
	scopeGiven                bool
}

// tokenResponse is the RFC 8693 §2.2.1 success response.
type tokenResponse struct {
	AccessToken     string `json:"access_token"`
	IssuedTokenType string `json:"issued_token_type"`
	TokenType       string `json:"token_type"`
	ExpiresIn       int64  `json:"expires_in"`
	Scope           string `json:"scope,omitempty"`
}

// ServeHTTP answers POST /oauth/token.
func (e *Exchange) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	form, err := readTokenForm(w, r)
	if err != nil {
		writeTokenError(w, e.log, e.o.Nonces, err)
		return
	}
	e.serve(w, r, form)
}

// serve answers a token request whose form was read.
func (e *Exchange) serve(w http.ResponseWriter, r *http.Request, form tokenForm) {
	resp, c, err := e.exchange(r, form)
	if err != nil {
		writeTokenError(w, e.log, e.o.Nonces, err)
		return
	}
	e.log.Info("token exchanged", "sub", c.Subject, "actor", c.ClientID, "aud", c.Audience[0], "jti", c.JTI, "scope", c.Scope)
	writeTokenJSON(w, e.o.Nonces, http.StatusOK, resp)
}

// exchange runs one request: decode, validate, authenticate (proof, subject,
// actor), authorize (may_act, audience, scope), then mint and record.
func (e *Exchange) exchange(r *http.Request, form tokenForm) (*tokenResponse, *Claims, error) {
	ctx := r.Context()
	req, err := e.decode(r, form)
	if err != nil {
		return nil, nil, err
	}
	proof, err := e.proof(ctx, r)
	if err != nil {
		return nil, nil, err
	}
	subj, err := e.subject(ctx, r, req, proof)
	if err != nil {
		return nil, nil, err
	}
	actor, err := e.actor(ctx, r, req)
	if err != nil {
		return nil, nil, err
	}
	act, err := actorChain(subj, actor)
	if err != nil {
		return nil, nil, err
	}
	aud, err := e.audience(req)
	if err != nil {
		return nil, nil, err
	}
	scope, err := e.scope(req, subj)
	if err != nil {
		return nil, nil, err
	}
	// RFC 9068 and DESIGN: short-lived, and never longer than the subject
	// token it was derived from.
	ttl := min(e.ttl, time.Unix(subj.Expiry, 0).Sub(e.now()))
	if ttl < time.Second {
		return nil, nil, invalidRequest("subject_token expires too soon")
	}
	tok, c, merr := e.o.Issuer.Mint(Claims{
		Subject:   subj.Subject,
		Audience:  Audience{aud},
		ClientID:  actor,
		Scope:     strings.Join(scope, " "),
		SessionID: subj.SessionID,
		// RFC 9449 §6.1: the token is bound to the proof's key.
		Cnf: &Confirmation{JKT: proof.JKT},
		Act: act,
	}, ttl)
	if merr != nil {
		return nil, nil, serverError(http.StatusInternalServerError, ErrCodeServerError, "could not issue a token", merr)
	}
	if c.Expiry > subj.Expiry { // the two clocks disagree: fail closed
		return nil, nil, serverError(http.StatusInternalServerError, ErrCodeServerError, "could not issue a token", errors.New("issued token would outlive its subject token (check the clocks)"))
	}
	if e.o.OnIssue != nil {
		if err := e.o.OnIssue(ctx, c); err != nil {
			return nil, nil, serverError(http.StatusInternalServerError, ErrCodeServerError, "could not record the issued token", err)
		}
	}
	issuedType := TokenTypeAccessToken
	if req.requestedType == TokenTypeJWT {
		issuedType = TokenTypeJWT // an at+jwt is both; answer in the client's terms
	}
	return &tokenResponse{
		AccessToken:     tok,
		IssuedTokenType: issuedType,
		TokenType:       "DPoP", // RFC 9449 §5.1
		ExpiresIn:       c.Expiry - c.IssuedAt,
		Scope:           c.Scope,
	}, c, nil
}

// tokenForm is a token request's parameters, as readTokenForm checked them.
type tokenForm url.Values

// get returns a parameter's value ("" when absent: RFC 6749 §3.2 treats an
// empty parameter as omitted).
func (f tokenForm) get(name string) string {
	if v := f[name]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// readTokenForm reads and checks the form of a token request (RFC 6749
// §3.2): POST, form-encoded UTF-8, bounded, each parameter once.
func readTokenForm(w http.ResponseWriter, r *http.Request) (tokenForm, error) {
	// RFC 6749 §3.2: the client MUST use POST.
	if r.Method != http.MethodPost {
		return nil, &OAuthError{Status: http.StatusMethodNotAllowed, Code: ErrCodeInvalidRequest, Description: "use POST"}
	}
	ct := r.Header.Values("Content-Type")
	if len(ct) != 1 {
		return nil, invalidRequest("content type must be application/x-www-form-urlencoded")
	}
	mt, params, err := mime.ParseMediaType(ct[0])
	if err != nil || mt != "application/x-www-form-urlencoded" {
		return nil, invalidRequest("content type must be application/x-www-form-urlencoded")
	}
	// RFC 6749 Appendix B: the form is UTF-8.
	if cs, ok := params["charset"]; ok && !strings.EqualFold(cs, "utf-8") {
		return nil, invalidRequest("form must be UTF-8")
	}
	// A declared length over the bound is refused before reading; the
	// MaxBytesReader below is the bound for bodies of unknown length.
	if r.ContentLength > maxTokenRequestBytes {
		return nil, &OAuthError{Status: http.StatusRequestEntityTooLarge, Code: ErrCodeInvalidRequest, Description: "request too large"}
	}
	var body []byte
	if r.Body != nil {
		body, err = io.ReadAll(http.MaxBytesReader(w, r.Body, maxTokenRequestBytes))
		if err != nil {
			var tooBig *http.MaxBytesError
			if errors.As(err, &tooBig) {
				return nil, &OAuthError{Status: http.StatusRequestEntityTooLarge, Code: ErrCodeInvalidRequest, Description: "request too large"}
			}
			return nil, invalidRequest("could not read the request body")
		}
	}
	// Parameters come from the body only, never from the URL query.
	form, err := url.ParseQuery(string(body))
	if err != nil {
		return nil, invalidRequest("malformed form body")
	}
	// RFC 6749 §3.2: "Request and response parameters MUST NOT be included
	// more than once" (except audience and resource, RFC 8693 §2.1);
	// "parameters sent without a value MUST be treated as if they were
	// omitted"; unrecognised parameters are ignored. An empty duplicate
	// still counts as a duplicate: ambiguity is refused.
	for name, limit := range tokenParams {
		vals := form[name]
		if len(vals) > 1 && !multiParams[name] {
			return nil, invalidRequest("parameter " + name + " given more than once")
		}
		for _, v := range vals {
			if len(v) > limit {
				return nil, invalidRequest("parameter " + name + " too long")
			}
			if !utf8.ValidString(v) {
				return nil, invalidRequest("parameter " + name + " is not UTF-8")
			}
		}
	}
	return tokenForm(form), nil
}

// decode validates a token exchange request's form (RFC 8693 §2.1).
func (e *Exchange) decode(r *http.Request, form tokenForm) (*tokenRequest, error) {
	get := form.get
	switch gt := get("grant_type"); gt {
	case "":
		return nil, invalidRequest("missing grant_type")
	case GrantTypeTokenExchange:
	default:
		return nil, badRequest(ErrCodeUnsupportedGrantType, "only token exchange (RFC 8693) is supported")
	}
	// The endpoint's only client authentication method is "none"
	// (metadata). RFC 6749 §5.2: an unsupported method is invalid_client,
	// with 401 and a matching challenge when the Authorization header was
	// used.
	if authz := r.Header.Values("Authorization"); len(authz) > 0 {
		return nil, &OAuthError{Status: http.StatusUnauthorized, Code: ErrCodeInvalidClient, Description: "client authentication is not supported (method none)", Scheme: schemeOf(authz[0])}
	}
	if get("client_secret") != "" || get("client_assertion") != "" || get("client_assertion_type") != "" {
		return nil, badRequest(ErrCodeInvalidClient, "client authentication is not supported (method none)")
	}
	req := &tokenRequest{
		subjectToken:  get("subject_token"),
		subjectType:   get("subject_token_type"),
		actorToken:    get("actor_token"),
		actorType:     get("actor_token_type"),
		requestedType: get("requested_token_type"),
	}
	// RFC 8693 §2.1: subject_token and subject_token_type are REQUIRED.
	// Subject tokens are SAG access tokens (at+jwt), which the jwt type
	// also describes.
	switch {
	case req.subjectToken == "":
		return nil, invalidRequest("missing subject_token")
	case req.subjectType == "":
		return nil, invalidRequest("missing subject_token_type")
	case req.subjectType != TokenTypeAccessToken && req.subjectType != TokenTypeJWT:
		return nil, invalidRequest("unsupported subject_token_type")
	}
	// RFC 8693 §2.1: actor_token_type is REQUIRED with actor_token and MUST
	// NOT be included otherwise. Which types are accepted is the
	// ActorVerifier's decision.
	switch {
	case req.actorToken != "" && req.actorType == "":
		return nil, invalidRequest("actor_token_type required with actor_token")
	case req.actorToken == "" && req.actorType != "":
		return nil, invalidRequest("actor_token_type without actor_token")
	}
	switch req.requestedType {
	case "", TokenTypeAccessToken, TokenTypeJWT:
	default:
		return nil, invalidRequest("unsupported requested_token_type")
	}
	// RFC 8707 §2: resource is an absolute URI without a fragment, else
	// invalid_target. audience is a logical name (RFC 8693 §2.1).
	for _, name := range []string{"audience", "resource"} {
		for _, v := range form[name] {
			if v == "" {
				continue
			}
			if name == "resource" {
				if u, err := url.Parse(v); err != nil || !u.IsAbs() || strings.Contains(v, "#") {
					return nil, badRequest(ErrCodeInvalidTarget, "resource must be an absolute URI without a fragment")
				}
			}
			if !slices.Contains(req.audiences, v) {
				req.audiences = append(req.audiences, v)
			}
		}
	}
	if s := get("scope"); s != "" {
		scope, ok := parseScope(s)
		if !ok {
			return nil, badRequest(ErrCodeInvalidScope, "malformed scope")
		}
		req.scope, req.scopeGiven = scope, true
	}
	return req, nil
}

// proof verifies the request's DPoP proof (RFC 9449 §5): htm POST, htu the
// token endpoint, no access token and so no ath. It is required: every
// issued token is DPoP-bound.
func (e *Exchange) proof(ctx context.Context, r *http.Request) (*DPoPProof, error) {
	return tokenProof(ctx, e.o.DPoP, e.o.Nonces, r, e.o.TokenURL)
}

// tokenProof verifies the DPoP proof of a token request (RFC 9449 §5): htm
// POST, htu the token endpoint, no access token and so no ath.
func tokenProof(ctx context.Context, v *DPoPVerifier, nonces *Nonces, r *http.Request, tokenURL string) (*DPoPProof, error) {
	req := DPoPRequest{Proofs: r.Header.Values("DPoP"), Method: r.Method, URL: tokenURL}
	if nonces != nil {
		req.CheckNonce = nonces.Valid
	}
	proof, err := v.Verify(ctx, req)
	if err != nil {
		var de *OAuthError
		if errors.As(err, &de) {
			// RFC 9449 §5 and §8: token endpoint errors are RFC 6749
			// §5.2 responses (400) with invalid_dpop_proof or
			// use_dpop_nonce.
			return nil, badRequest(de.Code, de.Description)
		}
		return nil, serverError(http.StatusServiceUnavailable, ErrCodeTemporarilyUnavailable, "could not check the DPoP proof", err)
	}
	return proof, nil
}

// subject verifies the subject token and its binding. RFC 8693 §2.2.2: an
// invalid or unacceptable subject token is invalid_request.
func (e *Exchange) subject(ctx context.Context, r *http.Request, req *tokenRequest, proof *DPoPProof) (*Claims, error) {
	c, err := e.o.Subjects.Verify(ctx, req.subjectToken)
	if err != nil {
		var te *OAuthError
		if errors.As(err, &te) {
			return nil, invalidRequest("invalid subject_token: " + te.Description)
		}
		return nil, serverError(http.StatusServiceUnavailable, ErrCodeTemporarilyUnavailable, "issuer keys unavailable", err)
	}
	if e.o.Revocations != nil {
		revoked, err := e.o.Revocations.TokenRevoked(ctx, c.Issuer, c.JTI)
		if err != nil {
			return nil, serverError(http.StatusServiceUnavailable, ErrCodeTemporarilyUnavailable, "revocation check unavailable", err)
		}
		if revoked {
			return nil, invalidRequest("invalid subject_token: token revoked")
		}
	}
	if c.RunAgent != "" {
		// A run token lives and dies with its run; an exchanged token
		// would outlive it.
		return nil, invalidRequest("subject_token is an agent run's token, which cannot be exchanged")
	}
	// A sender-constrained subject token is exchanged only by its holder:
	// otherwise a stolen bound token could be turned into a fresh one bound
	// to the thief's key (RFC 9449 §1, RFC 8705 §3).
	if c.Cnf != nil {
		if c.Cnf.JKT != "" && subtle.ConstantTimeCompare([]byte(c.Cnf.JKT), []byte(proof.JKT)) != 1 {
			return nil, invalidRequest("subject_token is bound to another DPoP key")
		}
		if c.Cnf.X5T != "" && checkCertBinding(r, c.Cnf.X5T, "") != nil {
			return nil, invalidRequest("subject_token is bound to another client certificate")
		}
	}
	return c, nil
}

// actor authenticates the actor: the actor_token through Actors, and the
// request's own agent credential through Agents. When both are present they
// must agree. No claim of the actor token other than the verified identity
// is used.
func (e *Exchange) actor(ctx context.Context, r *http.Request, req *tokenRequest) (string, error) {
	var fromToken, fromPeer string
	if req.actorToken != "" {
		if e.o.Actors == nil {
			return "", invalidRequest("actor_token is not accepted; authenticate the agent with mTLS")
		}
		id, err := e.o.Actors.VerifyActor(ctx, req.actorToken, req.actorType)
		if err != nil || id == "" {
			return "", &OAuthError{Status: http.StatusBadRequest, Code: ErrCodeInvalidRequest, Description: "invalid actor_token", cause: err}
		}
		fromToken = id
	}
	if e.o.Agents != nil {
		id, err := e.o.Agents.Agent(ctx, r)
		if err != nil {
			var ae *OAuthError
			if errors.As(err, &ae) {
				return "", invalidRequest("invalid agent credential")
			}
			return "", serverError(http.StatusServiceUnavailable, ErrCodeTemporarilyUnavailable, "agent authentication unavailable", err)
		}
		fromPeer = id
	}
	switch {
	case fromToken != "" && fromPeer != "" && fromToken != fromPeer:
		return "", invalidRequest("actor_token and the agent credential name different agents")
	case fromToken != "":
		return fromToken, nil
	case fromPeer != "":
		return fromPeer, nil
	}
	return "", invalidRequest("actor required: send an actor_token or authenticate the agent with mTLS")
}

// actorChain applies may_act and returns the act claim of the issued token:
// the verified actor, then the subject token's chain (RFC 8693 §4.1).
func actorChain(subj *Claims, actor string) (*Actor, error) {
	// RFC 8693 §4.4: may_act names who may act for the subject. A may_act
	// that names no one allows no one. Its iss is compared with the
	// actor's SPIFFE trust domain as "spiffe://<td>", the issuer of
	// SPIFFE identities; a non-SPIFFE actor never matches an iss.
	// RFC 8693 §2.2.2: a token unacceptable by policy is invalid_request.
	if m := subj.MayAct; m != nil {
		if m.Sub == "" || m.Sub != actor || (m.Iss != "" && m.Iss != spiffeIssuer(actor)) {
			return nil, invalidRequest("actor not allowed by may_act")
		}
	}
	// The subject's own chain is kept as verified; an actor exchanging a
	// token it already acts in (a refresh) adds no link.
	act := subj.Act
	if act == nil || act.Sub != actor {
		act = &Actor{Sub: actor, Act: subj.Act}
	}
	depth := 0
	for a := act; a != nil; a = a.Act {
		if depth++; depth > MaxActorChain {
			return nil, invalidRequest("delegation chain too long")
		}
	}
	return act, nil
}

// spiffeIssuer returns "spiffe://<trust domain>" of a SPIFFE ID, "" for
// anything else.
func spiffeIssuer(id string) string {
	rest, ok := strings.CutPrefix(id, "spiffe://")
	if !ok {
		return ""
	}
	td, _, _ := strings.Cut(rest, "/")
	if td == "" {
		return ""
	}
	return "spiffe://" + td
}

// audience returns the one audience of the issued token. RFC 8693 §2.2.2:
// a target the server will not issue for is invalid_target. SAG issues one
// audience per token, so two distinct targets are refused too.
func (e *Exchange) audience(req *tokenRequest) (string, error) {
	switch len(req.audiences) {
	case 0:
		return e.o.Issuer.URL, nil
	case 1:
		if !e.audiences[req.audiences[0]] {
			return "", badRequest(ErrCodeInvalidTarget, "audience not allowed")
		}
		return req.audiences[0], nil
	}
	return "", badRequest(ErrCodeInvalidTarget, "one audience per token")
}

// scope returns the issued scopes: the requested ones, or by default the
// subject token's, within the subject's scopes and the configured cap.
// RFC 6749 §5.2: a scope beyond those is invalid_scope.
func (e *Exchange) scope(req *tokenRequest, subj *Claims) ([]string, error) {
	have := subj.Scopes()
	allowed := func(s string) bool { return e.scopes == nil || e.scopes[s] }
	if !req.scopeGiven {
		var out []string
		for _, s := range have {
			if allowed(s) && !slices.Contains(out, s) {
				out = append(out, s)
			}
		}
		if len(out) == 0 && len(have) > 0 {
			return nil, badRequest(ErrCodeInvalidScope, "no scope of the subject_token may be delegated")
		}
		return out, nil
	}
	for _, s := range req.scope {
		if !slices.Contains(have, s) {
			return nil, badRequest(ErrCodeInvalidScope, "scope exceeds the subject_token's scope")
		}
		if !allowed(s) {
			return nil, badRequest(ErrCodeInvalidScope, "scope not allowed for delegation")
		}
	}
	return req.scope, nil
}

// parseScope splits a scope parameter (RFC 6749 §3.3: scope tokens
// separated by single spaces) and drops repeated tokens.
func parseScope(s string) ([]string, bool) {
	var out []string
	for _, tok := range strings.Split(s, " ") {
		if !validScopeToken(tok) {
			return nil, false
		}
		if !slices.Contains(out, tok) {
			out = append(out, tok)
		}
	}
	return out, true
}

// validScopeToken reports whether s is an RFC 6749 §3.3 scope-token:
// 1*( %x21 / %x23-5B / %x5D-7E ).
func validScopeToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x21 || c > 0x7e || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}

// schemeOf returns the scheme of an Authorization header value when it is
// an RFC 9110 §5.6.2 token of sensible length, else Basic.
func schemeOf(authz string) string {
	scheme, _, _ := strings.Cut(authz, " ")
	if scheme == "" || len(scheme) > 32 {
		return "Basic"
	}
	for i := 0; i < len(scheme); i++ {
		c := scheme[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return "Basic"
		}
	}
	return scheme
}

// writeTokenError renders err as an RFC 6749 §5.2 error response of the
// token endpoint; nonces, when set, gives the nonce a use_dpop_nonce error
// asks for.
func writeTokenError(w http.ResponseWriter, log *slog.Logger, nonces *Nonces, err error) {
	var xe *OAuthError
	if !errors.As(err, &xe) {
		xe = serverError(http.StatusInternalServerError, ErrCodeServerError, "the token request failed", err)
	}
	if xe.Status >= 500 {
		// The cause stays in the log; the client sees the code only.
		log.Error("token request failed", "error", xe.Code, "description", xe.Description, "cause", xe.cause)
	} else {
		// Client errors are logged without their cause, which may hold
		// request values (an actor verifier's message, say).
		log.Info("token request refused", "error", xe.Code, "description", xe.Description)
	}
	switch {
	case xe.Status == http.StatusMethodNotAllowed:
		w.Header().Set("Allow", http.MethodPost)
	case xe.Status == http.StatusUnauthorized:
		// RFC 6749 §5.2: a challenge matching the scheme the client used.
		w.Header().Set("WWW-Authenticate", cmp.Or(xe.Scheme, "Basic")+` realm="token"`)
	case xe.Code == ErrCodeUseDPoPNonce && nonces != nil:
		// RFC 9449 §8: the nonce to use comes with the error.
		w.Header().Set("DPoP-Nonce", nonces.Current())
	}
	writeTokenJSON(w, nil, xe.Status, map[string]string{"error": xe.Code, "error_description": errorDescription(xe.Description)})
}

// errorDescription keeps the characters RFC 6749 §5.2 allows in
// error_description (%x20-21 / %x23-5B / %x5D-7E).
func errorDescription(d string) string {
	var b strings.Builder
	for _, c := range []byte(d) {
		if c >= 0x20 && c <= 0x7e && c != '"' && c != '\\' {
			b.WriteByte(c)
		}
	}
	return b.String()
}

// writeTokenJSON writes a token endpoint response: RFC 6749 §5.1 forbids
// caching it (no-store, and Pragma for HTTP/1.0 caches). A success carries a
// fresh DPoP nonce when nonces is set (RFC 9449 §8.2).
func writeTokenJSON(w http.ResponseWriter, nonces *Nonces, status int, v any) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("Pragma", "no-cache")
	if status < 300 && nonces != nil {
		h.Set("DPoP-Nonce", nonces.Current())
	}
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}
