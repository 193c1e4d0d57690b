package server

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/sag-gateway/sag/identity"
	"github.com/sag-gateway/sag/pipeline"
	"github.com/sag-gateway/sag/store"
	"github.com/sag-gateway/sag/upstreams"
)

// adminRoutes mounts the admin API. Every route needs the admin token or an
// access token with AdminScope (requireAdmin).
func (g *Gateway) adminRoutes(mux *http.ServeMux) {
	h := func(route string, f func(http.ResponseWriter, *http.Request) error) http.Handler {
		return g.metrics.instrument(route, g.requireAdmin(func(w http.ResponseWriter, r *http.Request) {
			if err := f(w, r); err != nil {
				writeAdminError(w, err)
			}
		}))
	}
	mux.Handle("GET /admin/upstreams", h("/admin/upstreams", g.listUpstreams))
	mux.Handle("POST /admin/upstreams", h("/admin/upstreams", g.addUpstream))
	mux.Handle("DELETE /admin/upstreams/{name}", h("/admin/upstreams/{name}", g.removeUpstream))
	mux.Handle("GET /admin/audit", h("/admin/audit", g.queryAudit))
	mux.Handle("GET /admin/sessions/{id}", h("/admin/sessions/{id}", g.getSession))
	mux.Handle("DELETE /admin/sessions/{id}/risk", h("/admin/sessions/{id}/risk", g.clearRisk))
	mux.Handle("POST /admin/kill", h("/admin/kill", g.killHandler))
	mux.Handle("POST /admin/keys/rotate", h("/admin/keys/rotate", g.rotateKeys))
	mux.Handle("PUT /admin/upstreams/{name}/allowlist", h("/admin/upstreams/{name}/allowlist", g.putAllowList))
	mux.Handle("DELETE /admin/upstreams/{name}/allowlist", h("/admin/upstreams/{name}/allowlist", g.deleteAllowList))
	mux.Handle("POST /admin/policy/reload", h("/admin/policy/reload", g.reloadPolicyHandler))
	mux.Handle("GET /admin/policy", h("/admin/policy", g.getPolicy))
	mux.Handle("GET /admin/upstreams/{name}/tools", h("/admin/upstreams/{name}/tools", g.listPins))
	mux.Handle("POST /admin/upstreams/{name}/tools/{tool}/approve", h("/admin/upstreams/{name}/tools/{tool}/approve", g.approvePin))
}

// adminError is the admin API's one error type: an HTTP status, a stable
// code and a description safe to show.
type adminError struct {
	Status      int    `json:"-"`
	Code        string `json:"error"`
	Description string `json:"error_description"`
}

func (e *adminError) Error() string { return e.Code + ": " + e.Description }

func badRequest(format string, args ...any) error {
	return &adminError{Status: http.StatusBadRequest, Code: "invalid_request", Description: fmt.Sprintf(format, args...)}
}

func writeAdminError(w http.ResponseWriter, err error) {
	var ae *adminError
	if !errors.As(err, &ae) {
		ae = &adminError{Status: http.StatusInternalServerError, Code: "server_error", Description: "internal error"}
	}
	writeJSON(w, ae.Status, ae)
}

// hasAdminToken reports whether r carries the admin token as its bearer
// token (compared in constant time).
func (g *Gateway) hasAdminToken(r *http.Request) bool {
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return ok && subtle.ConstantTimeCompare([]byte(got), []byte(g.admin)) == 1
}

// AdminScope is the scope an access token needs to use the admin API.
const AdminScope = "sag:admin"

// requireAdmin lets through requests with the admin token (for bootstrap and
// operators) or, unless auth is open, with an access token carrying
// AdminScope.
func (g *Gateway) requireAdmin(next http.HandlerFunc) http.HandlerFunc {
	return g.requireToken(AdminScope, next)
}

// requireToken lets through requests with the admin token or, unless auth is
// open, with an access token carrying scope, authenticated like any other
// request (DPoP, mTLS or bearer).
func (g *Gateway) requireToken(scope string, next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if g.hasAdminToken(r) {
			next(w, r)
			return
		}
		if g.auth.check != nil && r.Header.Get("Authorization") != "" {
			p, err := g.auth.check.Authenticate(r)
			if err == nil {
				err = identity.RequireScopes(p, []string{scope})
			}
			if err != nil {
				g.log.Info("request refused", "path", r.URL.Path, "reason", err.Error())
				g.metrics.authFailures.Inc()
				g.auth.check.WriteError(w, err)
				return
			}
			next(w, r)
			return
		}
		w.Header().Set("WWW-Authenticate", `Bearer realm="sag-admin"`)
		writeJSON(w, http.StatusUnauthorized, &adminError{Code: "invalid_token", Description: "admin token missing or wrong"})
	}
}

// UpstreamRequest is the body of POST /admin/upstreams.
type UpstreamRequest struct {
	Name string `json:"name"`
	// Kind is "mcp" (default), "a2a" (an A2A agent at URL, its base URL)
	// or "agui" (an AG-UI agent's run endpoint).
	Kind string `json:"kind,omitempty"`
	// AgentKey is an AG-UI agent's DPoP key thumbprint (RFC 7638).
	AgentKey string `json:"agent_key,omitempty"`
	// CardJWKS are the public keys an A2A agent's card is signed with.
	CardJWKS json.RawMessage `json:"card_jwks,omitempty"`
	URL      string          `json:"url"`
	Prefix   string          `json:"prefix,omitempty"`
	Env      []string        `json:"env,omitempty"`
	Timeout  string          `json:"timeout,omitempty"` // Go duration, e.g. "30s"
	// ProtocolVersion pins the MCP revision spoken to the upstream.
	ProtocolVersion string `json:"protocol_version,omitempty"`
	// WithdrawWhenDown takes the upstream's entries out of the catalog while
	// it is unreachable.
	WithdrawWhenDown bool `json:"withdraw_when_down,omitempty"`
	// Auth is how SAG authenticates to the upstream: dpop (default), mtls
	// or none.
	Auth string `json:"auth,omitempty"`
	// RateLimit caps the calls sent to the upstream, all callers together.
	RateLimit *upstreams.RateLimit `json:"rate_limit,omitempty"`
}

// UpstreamResponse describes a registered upstream.
type UpstreamResponse struct {
	upstreams.Status
	Source string `json:"source"` // "config" or "api"
	upstreams.Report
}

func (g *Gateway) listUpstreams(w http.ResponseWriter, r *http.Request) error {
	out := []UpstreamResponse{}
	for _, s := range g.upstreams.Statuses() {
		out = append(out, UpstreamResponse{Status: s, Source: g.source(s.Name)})
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (g *Gateway) source(name string) string {
	if g.configured[name] {
		return "config"
	}
	return "api"
}

func (g *Gateway) addUpstream(w http.ResponseWriter, r *http.Request) error {
	var req UpstreamRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return badRequest("body: %v", err)
	}
	naming, err := upstreams.ParseNaming(req.Prefix)
	if err != nil {
		return badRequest("%v", err)
	}
	spec := upstreams.Spec{Name: req.Name, Kind: req.Kind, AgentKey: req.AgentKey, CardJWKS: req.CardJWKS, URL: req.URL, Prefix: naming, Env: req.Env, ProtocolVersion: req.ProtocolVersion, WithdrawWhenDown: req.WithdrawWhenDown, Auth: req.Auth, RateLimit: req.RateLimit}
	if req.Timeout != "" {
		if spec.Timeout, err = time.ParseDuration(req.Timeout); err != nil || spec.Timeout <= 0 {
			return badRequest("timeout %q: want a positive Go duration such as 30s", req.Timeout)
		}
	}
	if err := spec.Validate(); err != nil {
		return badRequest("%v", err)
	}
	if spec.Transport() == upstreams.TransportStdio && !g.cfg.AllowStdioRegistration {
		// A stdio upstream is a command run on the gateway's host: only the
		// operator who starts the gateway may let the admin API name one.
		return &adminError{Status: http.StatusForbidden, Code: "forbidden", Description: "stdio: upstreams run a command on the gateway's host and cannot be registered through the admin API unless the operator starts the gateway with --allow-stdio-registration (allow_stdio_registration: true in the config file); config files and --upstream flags may name them"}
	}
	if g.configured[spec.Name] {
		return &adminError{Status: http.StatusConflict, Code: "conflict", Description: "upstream " + spec.Name + " is defined in the config file"}
	}
	// Registry changes are serialised, so that the name check, the stored
	// record and the live registry agree.
	g.registry.Lock()
	defer g.registry.Unlock()
	if _, taken := g.upstreams.Spec(spec.Name); taken {
		return &adminError{Status: http.StatusConflict, Code: "conflict", Description: "upstream " + spec.Name + " is already registered"}
	}
	opts, _ := json.Marshal(spec)
	// Persist first: an upstream that is served is one that survives a restart.
	if err := g.store.PutUpstream(r.Context(), store.Upstream{Name: spec.Name, URL: spec.URL, Prefix: string(spec.Prefix), Options: opts, Created: time.Now()}); err != nil {
		return fmt.Errorf("persist upstream: %w", err)
	}
	rep, err := g.upstreams.Add(r.Context(), spec)
	if errors.Is(err, upstreams.ErrExists) {
		return &adminError{Status: http.StatusConflict, Code: "conflict", Description: "upstream " + spec.Name + " is already registered"}
	}
	if err != nil {
		_ = g.store.DeleteUpstream(r.Context(), spec.Name)
		return badRequest("%v", err)
	}
	g.logReport(spec.Name, rep)
	g.log.Info("upstream registered", "upstream", spec.Name, "conflicts", len(rep.Conflicts))
	for _, s := range g.upstreams.Statuses() {
		if s.Name == spec.Name {
			writeJSON(w, http.StatusCreated, UpstreamResponse{Status: s, Source: "api", Report: rep})
			return nil
		}
	}
	return &adminError{Status: http.StatusConflict, Code: "conflict", Description: "upstream " + spec.Name + " was removed while registering"}
}

func (g *Gateway) removeUpstream(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("name")
	if g.configured[name] {
		return &adminError{Status: http.StatusConflict, Code: "conflict", Description: "upstream " + name + " is defined in the config file; remove it there"}
	}
	g.registry.Lock()
	defer g.registry.Unlock()
	if err := g.upstreams.Remove(name); errors.Is(err, upstreams.ErrUnknown) {
		return &adminError{Status: http.StatusNotFound, Code: "not_found", Description: "no upstream named " + name}
	}
	if err := g.store.DeleteUpstream(r.Context(), name); err != nil && !errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("unpersist upstream: %w", err)
	}
	g.log.Info("upstream removed", "upstream", name)
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// queryAudit streams audit records as JSON lines, newest first.
func (g *Gateway) queryAudit(w http.ResponseWriter, r *http.Request) error {
	q := store.AuditQuery{Session: r.URL.Query().Get("session")}
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 || n > 10000 {
			return badRequest("limit %q: want 1..10000", v)
		}
		q.Limit = n
	}
	if v := r.URL.Query().Get("before"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n <= 0 {
			return badRequest("before %q: want a record id", v)
		}
		q.BeforeID = n
	}
	recs, err := g.store.QueryAudit(r.Context(), q)
	if err != nil {
		return fmt.Errorf("query audit: %w", err)
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	enc := json.NewEncoder(w)
	for _, rec := range recs {
		enc.Encode(rec)
	}
	return nil
}

func (g *Gateway) getSession(w http.ResponseWriter, r *http.Request) error {
	s, err := g.store.GetSession(r.Context(), r.PathValue("id"))
	if errors.Is(err, store.ErrNotFound) {
		return &adminError{Status: http.StatusNotFound, Code: "not_found", Description: "no such session"}
	}
	if err != nil {
		return fmt.Errorf("get session: %w", err)
	}
	// The stored score is as of the node's last update; show it decayed
	// to now.
	s.Risk, _ = g.sessions.risk.snapshot(r.Context(), s.ID)
	writeJSON(w, http.StatusOK, s)
	return nil
}

// clearRisk serves DELETE /admin/sessions/{id}/risk: an operator resets a
// node's risk score and counters (audited).
func (g *Gateway) clearRisk(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	start := time.Now()
	if err := g.sessions.risk.clear(r.Context(), id); errors.Is(err, store.ErrNotFound) {
		return &adminError{Status: http.StatusNotFound, Code: "not_found", Description: "no such session"}
	} else if err != nil {
		return fmt.Errorf("clear risk: %w", err)
	}
	rec := store.AuditRecord{Method: "admin/clear-risk", MSID: id, PolicyID: "admin", Decision: pipeline.DecisionAllow, Reason: "session risk cleared"}
	if err := g.audit(r.Context(), &rec, start); err != nil {
		g.log.Error("risk clear not audited", "error", err)
	}
	g.log.Warn("session risk cleared", "session", id)
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// KeysResponse is the answer of POST /admin/keys/rotate.
type KeysResponse struct {
	// Active is the id of the key that signs from now on.
	Active string `json:"active"`
	// Published are the ids of every key in the JWKS.
	Published []string `json:"published"`
}

// rotateKeys makes a new signing key active. Tokens signed with the previous
// keys keep verifying: those keys stay in the JWKS (identity.KeepKeys).
func (g *Gateway) rotateKeys(w http.ResponseWriter, r *http.Request) error {
	kid, err := g.auth.keys.Rotate()
	if err != nil {
		return err
	}
	res := KeysResponse{Active: kid}
	set := g.auth.keys.PublicSet()
	for i := 0; i < set.Len(); i++ {
		k, _ := set.Key(i)
		if id, ok := k.KeyID(); ok {
			res.Published = append(res.Published, id)
		}
	}
	g.log.Info("signing key rotated", "kid", kid)
	// The other gateways sharing the store (and the keys directory) load
	// it too.
	if err := g.store.Announce(r.Context(), store.Event{Kind: store.EventKeys, IDs: []string{kid}}); err != nil {
		return fmt.Errorf("rotated here (active key %s), but the other gateways were not told: %w", kid, err)
	}
	writeJSON(w, http.StatusOK, res)
	return nil
}
