package server

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/sag-gateway/sag/identity"
	"github.com/sag-gateway/sag/store"
)

// IntrospectScope is the scope a resource server's access token needs to
// use the introspection and revocation endpoints (RFC 7662 §2.1, RFC 7009
// §2.1: callers authenticate); the admin token also works.
const IntrospectScope = "sag:introspect"

// revocations is the in-memory list of revoked tokens (RFC 7009), loaded
// from the store at start and kept current by the revocation endpoint: the
// check on every request reads memory, never the disk.
type revocations struct {
	st Store
	mu sync.RWMutex
	m  map[[2]string]time.Time // (issuer, jti) → expiry
}

func loadRevocations(ctx context.Context, st Store) (*revocations, error) {
	list, err := st.RevokedTokens(ctx)
	if err != nil {
		return nil, err
	}
	r := &revocations{st: st, m: map[[2]string]time.Time{}}
	for _, t := range list {
		r.m[[2]string{t.Issuer, t.JTI}] = t.Expiry
	}
	return r, nil
}

// TokenRevoked implements identity.RevocationChecker.
func (r *revocations) TokenRevoked(_ context.Context, issuer, jti string) (bool, error) {
	r.mu.RLock()
	_, ok := r.m[[2]string{issuer, jti}]
	r.mu.RUnlock()
	return ok, nil
}

// revoke commits the revocation, then applies it in memory.
func (r *revocations) revoke(ctx context.Context, issuer, jti string, exp time.Time) error {
	if err := r.st.RevokeToken(ctx, issuer, jti, exp); err != nil {
		return err
	}
	r.note(issuer, jti, exp)
	return nil
}

// note applies a committed revocation in memory.
func (r *revocations) note(issuer, jti string, exp time.Time) {
	r.mu.Lock()
	now := time.Now()
	for k, e := range r.m { // expired entries go as new ones come
		if e.Before(now) {
			delete(r.m, k)
		}
	}
	r.m[[2]string{issuer, jti}] = exp
	r.mu.Unlock()
}

func writeOAuthError(w http.ResponseWriter, status int, code, desc string) {
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, status, map[string]string{"error": code, "error_description": desc})
}

// tokenParam reads the one token form parameter of an introspection or
// revocation request.
func tokenParam(w http.ResponseWriter, r *http.Request) (string, bool) {
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/x-www-form-urlencoded") {
		writeOAuthError(w, http.StatusBadRequest, "invalid_request", "want application/x-www-form-urlencoded")
		return "", false
	}
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	if err := r.ParseForm(); err != nil {
		writeOAuthError(w, http.StatusBadRequest, "invalid_request", "malformed form")
		return "", false
	}
	toks := r.PostForm["token"]
	if len(toks) != 1 || toks[0] == "" {
		writeOAuthError(w, http.StatusBadRequest, "invalid_request", "want exactly one token parameter")
		return "", false
	}
	return toks[0], true
}

// introspect serves RFC 7662 token introspection for the tokens the gateway
// issued (sag token, token exchange) or minted for upstreams. A token is
// active when its signature, lifetime and audience hold, it is not revoked,
// and, for a minted token, its session has not been killed. Anything else,
// including tokens of other issuers, is {"active": false} (§2.2).
func (g *Gateway) introspect(w http.ResponseWriter, r *http.Request) {
	tok, ok := tokenParam(w, r)
	if !ok {
		return
	}
	inactive := map[string]any{"active": false}
	w.Header().Set("Cache-Control", "no-store")
	c, err := g.auth.own.Verify(r.Context(), tok)
	if err != nil {
		writeJSON(w, http.StatusOK, inactive)
		return
	}
	if revoked, _ := g.revoked.TokenRevoked(r.Context(), c.Issuer, c.JTI); revoked {
		writeJSON(w, http.StatusOK, inactive)
		return
	}
	switch _, active, err := g.store.MintedStatus(r.Context(), c.JTI); {
	case errors.Is(err, store.ErrNotFound): // issued, not minted: its user session must be alive
		if !g.sessions.admitted(identity.Principal{Issuer: c.Issuer, User: c.Subject, SessionID: c.SessionID, IssuedAt: time.Unix(c.IssuedAt, 0)}) {
			writeJSON(w, http.StatusOK, inactive)
			return
		}
	case err != nil:
		writeOAuthError(w, http.StatusServiceUnavailable, "temporarily_unavailable", "store unavailable")
		return
	case !active:
		writeJSON(w, http.StatusOK, inactive)
		return
	}
	out := map[string]any{
		"active": true, "iss": c.Issuer, "sub": c.Subject, "aud": c.Audience, "exp": c.Expiry, "iat": c.IssuedAt,
		"jti": c.JTI, "token_type": "Bearer",
	}
	if c.Scope != "" {
		out["scope"] = c.Scope
	}
	if c.ClientID != "" {
		out["client_id"] = c.ClientID
	}
	if c.Cnf != nil {
		out["cnf"] = c.Cnf
		if c.Cnf.JKT != "" {
			out["token_type"] = "DPoP"
		}
	}
	if c.Act != nil {
		out["act"] = c.Act
	}
	if c.SessionID != "" {
		out["sid"] = c.SessionID
	}
	writeJSON(w, http.StatusOK, out)
}

// revoke serves RFC 7009 token revocation for the gateway's own tokens. The
// answer is 200 whether or not the token was valid (§2.2).
func (g *Gateway) revoke(w http.ResponseWriter, r *http.Request) {
	tok, ok := tokenParam(w, r)
	if !ok {
		return
	}
	if c, err := g.auth.own.Verify(r.Context(), tok); err == nil {
		if err := g.revoked.revoke(r.Context(), c.Issuer, c.JTI, time.Unix(c.Expiry, 0)); err != nil {
			writeOAuthError(w, http.StatusServiceUnavailable, "temporarily_unavailable", "revocation not recorded; try again")
			return
		}
		g.log.Info("token revoked", "jti", c.JTI, "sub", c.Subject)
	}
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
}
