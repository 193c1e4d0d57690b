package identity

import (
	"cmp"
	"context"
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
)

// IntrospectionOptions configure RFC 7662 introspection of an existing
// authorization server's opaque tokens.
type IntrospectionOptions struct {
	// URL is the introspection endpoint.
	URL string
	// ClientID and ClientSecret authenticate SAG there (HTTP Basic).
	ClientID, ClientSecret string
	// Issuer names the tokens' issuer when a response has no iss: the
	// users become (Issuer, sub) at SAG.
	Issuer string
	// Audience, when set, must be among a response's aud.
	Audience string
}

// LegacyOptions configure the legacy-token shim.
type LegacyOptions struct {
	// Issuer signs the exchanged tokens. Required.
	Issuer *Issuer
	// DPoP verifies the proofs; every exchanged token is bound to the
	// caller's key. Required.
	DPoP   *DPoPVerifier
	Nonces *Nonces
	// JWTs verifies external JWT access tokens (the configured issuers);
	// nil takes none.
	JWTs *TokenVerifier
	// Introspection, when set, takes opaque tokens of that server.
	Introspection *IntrospectionOptions
	// Revocations refuses revoked external tokens (by issuer and jti).
	Revocations RevocationChecker
	// UserRevoked reports whether the user (issuer, subject) or their
	// session sid was killed since issuedAt.
	UserRevoked func(ctx context.Context, issuer, subject, sid string, issuedAt time.Time) (bool, error)
	// TTL is the longest life of an exchanged token; it never outlives
	// the legacy token. Default 10 minutes.
	TTL time.Duration
	// HTTP is the client for introspection; default one with a 5 s
	// timeout.
	HTTP *http.Client
	Log  *slog.Logger
}

// Legacy is the legacy-token shim: a client of an existing identity
// provider exchanges its token (opaque, introspected per RFC 7662, or a JWT
// of a configured issuer) at SAG's token endpoint (RFC 8693, no actor) for
// a short-lived RFC 9068 token bound to its DPoP key. The exchanged token
// stands for the user as their own issuer named them, so they join the
// session graph without changing identity provider.
type Legacy struct {
	o   LegacyOptions
	log *slog.Logger
}

// maxIntrospectionResponse bounds an introspection response.
const maxIntrospectionResponse = 64 << 10

// NewLegacy checks o and returns the shim.
func NewLegacy(o LegacyOptions) (*Legacy, error) {
	switch {
	case o.Issuer == nil || o.Issuer.Keys == nil || o.DPoP == nil:
		return nil, errors.New("identity: the legacy-token shim needs an issuer and a DPoP verifier")
	case o.JWTs == nil && o.Introspection == nil:
		return nil, errors.New("identity: the legacy-token shim needs external issuers or an introspection endpoint")
	case o.Introspection != nil && (o.Introspection.URL == "" || o.Introspection.Issuer == ""):
		return nil, errors.New("identity: introspection needs a URL and an issuer name")
	}
	o.TTL = cmp.Or(o.TTL, DefaultExchangeTTL)
	if o.HTTP == nil {
		o.HTTP = &http.Client{Timeout: 5 * time.Second}
	}
	l := &Legacy{o: o, log: o.Log}
	if l.log == nil {
		l.log = slog.New(slog.DiscardHandler)
	}
	return l, nil
}

// Metadata returns the RFC 8414 metadata of the token endpoint when the
// shim is its only grant.
func (l *Legacy) Metadata() map[string]any {
	base := l.o.Issuer.URL
	return map[string]any{
		"issuer": base, "token_endpoint": base + TokenPath, "jwks_uri": base + "/.well-known/jwks.json",
		"response_types_supported": []string{}, "grant_types_supported": []string{GrantTypeTokenExchange},
		"token_endpoint_auth_methods_supported": []string{AuthMethodNone}, "dpop_signing_alg_values_supported": l.o.DPoP.Algs(),
	}
}

// takes reports whether a token exchange request is the shim's: no actor,
// and a subject token that is not the gateway's own.
func (l *Legacy) takes(form tokenForm) bool {
	if form.get("actor_token") != "" {
		return false
	}
	if iss, ok := unverifiedIssuer(form.get("subject_token")); ok && iss == l.o.Issuer.URL {
		return false
	}
	return true
}

// unverifiedIssuer reads the iss of a compact JWS without verifying it:
// only to route the request.
func unverifiedIssuer(tok string) (string, bool) {
	if !isCompactJWS(tok) {
		return "", false
	}
	payload, err := b64.DecodeString(strings.Split(tok, ".")[1])
	if err != nil {
		return "", false
	}
	var c struct {
		Iss string `json:"iss"`
	}
	if json.Unmarshal(payload, &c) != nil {
		return "", false
	}
	return c.Iss, true
}

// legacySubject is what the shim learned about a legacy token.
type legacySubject struct {
	issuer, subject, sid, clientID, jti string
	scope, groups                       []string
	issuedAt, expiry                    time.Time
	jkt                                 string // a DPoP-bound external JWT's key
}

func (l *Legacy) serve(w http.ResponseWriter, r *http.Request, form tokenForm) {
	resp, err := l.exchange(r, form)
	if err != nil {
		writeTokenError(w, l.log, l.o.Nonces, err)
		return
	}
	writeTokenJSON(w, l.o.Nonces, http.StatusOK, resp)
}

func (l *Legacy) exchange(r *http.Request, form tokenForm) (*tokenResponse, error) {
	ctx := r.Context()
	// RFC 8693 §2.1.
	tok, typ := form.get("subject_token"), form.get("subject_token_type")
	switch {
	case tok == "":
		return nil, invalidRequest("missing subject_token")
	case typ != TokenTypeAccessToken && typ != TokenTypeJWT:
		return nil, invalidRequest("subject_token_type must be an access token or a JWT")
	case form.get("actor_token_type") != "":
		return nil, invalidRequest("actor_token_type without actor_token")
	}
	for _, name := range []string{"audience", "resource"} {
		for _, v := range form[name] {
			if v != "" && strings.TrimSuffix(v, "/") != l.o.Issuer.URL {
				return nil, badRequest(ErrCodeInvalidTarget, "legacy tokens are exchanged for this gateway only")
			}
		}
	}
	// RFC 9449 §5: the issued token is bound to the proof's key.
	proof, err := tokenProof(ctx, l.o.DPoP, l.o.Nonces, r, l.o.Issuer.URL+TokenPath)
	if err != nil {
		return nil, err
	}
	subj, err := l.subject(ctx, tok)
	if err != nil {
		return nil, err
	}
	if subj.jkt != "" && subj.jkt != proof.JKT {
		return nil, invalidRequest("the subject token is bound to another DPoP key")
	}
	if l.o.Revocations != nil && subj.jti != "" {
		if revoked, err := l.o.Revocations.TokenRevoked(ctx, subj.issuer, subj.jti); err != nil || revoked {
			return nil, invalidRequest("the subject token was revoked")
		}
	}
	if l.o.UserRevoked != nil {
		if dead, err := l.o.UserRevoked(ctx, subj.issuer, subj.subject, subj.sid, subj.issuedAt); err != nil || dead {
			return nil, invalidRequest("the subject token's user or session was killed")
		}
	}
	scope := subj.scope
	if s := form.get("scope"); s != "" {
		want, ok := parseScope(s)
		if !ok || !covers(strings.Join(subj.scope, " "), want) {
			return nil, badRequest(ErrCodeInvalidScope, "the scope may only narrow the subject token's")
		}
		scope = want
	}
	now := l.o.Issuer.now()
	ttl := min(l.o.TTL, subj.expiry.Sub(now))
	if ttl < time.Second {
		return nil, invalidRequest("the subject token expires too soon")
	}
	minted, c, err := l.o.Issuer.Mint(Claims{Subject: subj.subject, Audience: Audience{l.o.Issuer.URL}, ClientID: subj.clientID,
		Scope: strings.Join(scope, " "), SessionID: subj.sid, Groups: subj.groups, Cnf: &Confirmation{JKT: proof.JKT}, RunIssuer: subj.issuer}, ttl)
	if err != nil {
		return nil, serverError(http.StatusInternalServerError, ErrCodeServerError, "could not issue a token", err)
	}
	l.log.Info("legacy token exchanged", "iss", subj.issuer, "sub", subj.subject, "jti", c.JTI)
	issued := TokenTypeAccessToken
	if form.get("requested_token_type") == TokenTypeJWT {
		issued = TokenTypeJWT
	}
	return &tokenResponse{AccessToken: minted, IssuedTokenType: issued, TokenType: "DPoP", ExpiresIn: c.Expiry - c.IssuedAt, Scope: c.Scope}, nil
}

// subject verifies a legacy token: a JWT of a configured issuer, else (an
// opaque token, or a JWT of the introspecting server) by introspection.
func (l *Legacy) subject(ctx context.Context, tok string) (*legacySubject, error) {
	var jwtErr error
	if l.o.JWTs != nil && isCompactJWS(tok) {
		c, err := l.o.JWTs.Verify(ctx, tok)
		if err == nil && c.Issuer == l.o.Issuer.URL {
			return nil, invalidRequest("the subject token is the gateway's own: nothing to exchange")
		}
		if err == nil {
			if c.Act != nil {
				return nil, invalidRequest("the subject token names an actor: exchange the user's own token")
			}
			s := &legacySubject{issuer: c.Issuer, subject: c.Subject, sid: c.SessionID, clientID: c.ClientID, jti: c.JTI, scope: c.Scopes(),
				groups: c.Groups, issuedAt: time.Unix(c.IssuedAt, 0), expiry: time.Unix(c.Expiry, 0)}
			if c.Cnf != nil {
				s.jkt = c.Cnf.JKT
			}
			return s, nil
		}
		jwtErr = err
	}
	if l.o.Introspection == nil {
		var oe *OAuthError
		if errors.As(jwtErr, &oe) {
			return nil, invalidRequest("invalid subject_token: " + oe.Description)
		}
		return nil, invalidRequest("invalid subject_token")
	}
	return l.introspect(ctx, tok)
}

// introspect asks the legacy server about tok (RFC 7662 §2).
func (l *Legacy) introspect(ctx context.Context, tok string) (*legacySubject, error) {
	in := l.o.Introspection
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, in.URL, strings.NewReader(url.Values{"token": {tok}, "token_type_hint": {"access_token"}}.Encode()))
	if err != nil {
		return nil, serverError(http.StatusInternalServerError, ErrCodeServerError, "introspection unavailable", err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	if in.ClientID != "" {
		req.SetBasicAuth(url.QueryEscape(in.ClientID), url.QueryEscape(in.ClientSecret))
	}
	resp, err := l.o.HTTP.Do(req)
	if err != nil {
		return nil, serverError(http.StatusServiceUnavailable, ErrCodeTemporarilyUnavailable, "the token's server cannot be reached", err)
	}
	defer resp.Body.Close()
	mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if resp.StatusCode != http.StatusOK || mt != "application/json" {
		return nil, serverError(http.StatusServiceUnavailable, ErrCodeTemporarilyUnavailable, "the token's server did not introspect it",
			fmt.Errorf("introspection answered %d %s", resp.StatusCode, mt))
	}
	var ir struct {
		Active   bool     `json:"active"`
		Sub      string   `json:"sub"`
		Iss      string   `json:"iss"`
		Aud      Audience `json:"aud"`
		Scope    string   `json:"scope"`
		ClientID string   `json:"client_id"`
		Exp      int64    `json:"exp"`
		Iat      int64    `json:"iat"`
		JTI      string   `json:"jti"`
		SID      string   `json:"sid"`
		Groups   []string `json:"groups"`
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxIntrospectionResponse+1))
	if err != nil || len(body) > maxIntrospectionResponse || json.Unmarshal(body, &ir) != nil {
		return nil, serverError(http.StatusServiceUnavailable, ErrCodeTemporarilyUnavailable, "the token's server gave an unreadable introspection", err)
	}
	now := l.o.Issuer.now()
	switch {
	case !ir.Active:
		// RFC 7662 §2.2: nothing else of an inactive answer counts.
		return nil, invalidRequest("invalid subject_token: not active")
	case ir.Sub == "":
		return nil, invalidRequest("invalid subject_token: its introspection names no sub")
	case ir.Exp == 0 || !now.Before(time.Unix(ir.Exp, 0)):
		// No exp means no bound on the exchanged token's life: refused.
		return nil, invalidRequest("invalid subject_token: expired or without exp")
	case ir.Iss != "" && ir.Iss != in.Issuer:
		return nil, invalidRequest("invalid subject_token: issued by another server")
	case in.Audience != "" && !slices.Contains(ir.Aud, in.Audience):
		return nil, invalidRequest("invalid subject_token: not for this gateway")
	}
	s := &legacySubject{issuer: in.Issuer, subject: ir.Sub, sid: ir.SID, clientID: ir.ClientID, jti: ir.JTI,
		scope: strings.Fields(ir.Scope), groups: ir.Groups, expiry: time.Unix(ir.Exp, 0)}
	if ir.Iat != 0 {
		// Without iat the token counts as issued at the epoch: a kill of
		// its user refuses it for good.
		s.issuedAt = time.Unix(ir.Iat, 0)
	}
	return s, nil
}
