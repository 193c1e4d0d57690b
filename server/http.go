package server

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/sag-gateway/sag/a2a"
	"github.com/sag-gateway/sag/agui"
	"github.com/sag-gateway/sag/identity"
	"github.com/sag-gateway/sag/server/config"
)

// routes mounts every endpoint. The order of the wrappers around /mcp is the
// order checks run in: metrics, origin, authentication, then the MCP handler
// (which checks Host on loopback, the body limit and the protocol version
// itself).
func (g *Gateway) routes() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/mcp", g.metrics.instrument("/mcp", g.checkOrigin(g.requireAuth(g.cfg.Identity.RequiredScopes, g.front.handler()))))
	// The AG-UI consent stream, over SSE and WebSocket: the user
	// authenticates like any caller.
	mux.Handle("POST /agui", g.metrics.instrument("/agui", g.checkOrigin(g.authenticated(g.consentStream.ServeHTTP))))
	mux.Handle("POST /agui/agents/{name}", g.metrics.instrument("/agui/agents", g.checkOrigin(g.authenticated(g.consentStream.ServeAgent))))
	mux.Handle("GET /agui/ws", g.metrics.instrument("/agui/ws", g.checkOrigin(g.authenticated(g.consentStream.ServeWS))))
	// A2A: JSON-RPC for authenticated callers, the agent card for anyone.
	mux.Handle("/a2a", g.metrics.instrument("/a2a", g.checkOrigin(g.authenticated(g.bounded(g.a2a.RPC)))))
	mux.Handle("/a2a/rest/", g.metrics.instrument("/a2a/rest", g.checkOrigin(g.authenticated(g.bounded(http.StripPrefix("/a2a/rest", g.a2a.REST))))))
	mux.Handle("GET "+a2a.CardPath, g.metrics.instrument(a2a.CardPath, g.a2a.Card))
	mux.Handle("GET /a2a/agents/{name}"+a2a.CardPath, g.metrics.instrument("/a2a/agents/card", g.authenticated(g.upstreamAgentCard)))
	mux.Handle("GET "+agui.CapabilitiesPath, g.metrics.instrument(agui.CapabilitiesPath, agui.Capabilities(g.version)))
	mux.Handle("GET "+resourceMetadataPath, g.metrics.instrument(resourceMetadataPath, http.HandlerFunc(g.resourceMetadata)))
	mux.Handle("GET /.well-known/jwks.json", g.metrics.instrument("/.well-known/jwks.json", http.HandlerFunc(g.jwks)))
	if g.auth.exchange != nil || g.auth.server != nil || g.auth.legacy != nil {
		// Any method: the service answers a GET with its own 405.
		token := &identity.TokenEndpoint{Exchange: g.auth.exchange, Legacy: g.auth.legacy, Server: g.auth.server, Nonces: g.auth.nonces, Log: g.log}
		mux.Handle("/oauth/token", g.metrics.instrument("/oauth/token", oauthCORS(token)))
		mux.Handle("GET /.well-known/oauth-authorization-server", g.metrics.instrument("/.well-known/oauth-authorization-server", http.HandlerFunc(g.authorizationServerMetadata)))
	}
	if as := g.auth.server; as != nil {
		// The sign-in and consent pages and their forms; the forms check
		// their origin and CSRF token themselves.
		mux.Handle("GET "+identity.AuthorizePath, g.metrics.instrument(identity.AuthorizePath, http.HandlerFunc(as.ServeAuthorize)))
		mux.Handle("POST "+identity.AuthorizePath, g.metrics.instrument(identity.AuthorizePath, http.HandlerFunc(as.ServeAuthorizeForm)))
		mux.Handle("GET "+identity.CallbackPath, g.metrics.instrument(identity.CallbackPath, http.HandlerFunc(as.ServeCallback)))
		if g.cfg.Identity.AuthorizationServer.DynamicRegistration {
			mux.Handle(identity.RegisterPath, g.metrics.instrument(identity.RegisterPath, oauthCORS(http.HandlerFunc(as.ServeRegister))))
		}
	}
	mux.Handle("POST /oauth/introspect", g.metrics.instrument("/oauth/introspect", g.requireToken(IntrospectScope, g.introspect)))
	mux.Handle("POST /oauth/revoke", g.metrics.instrument("/oauth/revoke", g.requireToken(IntrospectScope, g.revoke)))
	mux.Handle("GET /healthz", g.metrics.instrument("/healthz", http.HandlerFunc(g.healthz)))
	mux.Handle("GET /readyz", g.metrics.instrument("/readyz", http.HandlerFunc(g.readyz)))
	// Metrics name upstreams and tools: behind authentication (the admin
	// token or a token with MetricsScope) unless the gateway is an open
	// loopback trial.
	metrics := g.metrics.handler()
	if g.cfg.Auth != config.AuthOpen {
		metrics = g.requireToken(MetricsScope, metrics.ServeHTTP)
	}
	mux.Handle("GET /metrics", metrics)
	g.consoleRoutes(mux)
	g.adminRoutes(mux)
	return mux
}

// authenticated runs next for requests admit lets through, carrying their
// principal.
func (g *Gateway) authenticated(next http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r = g.admit(w, r, nil); r != nil {
			next(w, r)
		}
	})
}

// bounded limits a request's body to limits.max_request_bytes (the SDK's
// handlers read whatever comes).
func (g *Gateway) bounded(next http.Handler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, g.cfg.Limits.MaxRequestBytes)
		next.ServeHTTP(w, r)
	}
}

// checkOrigin refuses, with 403, browser requests from foreign origins and,
// on a loopback listener, requests whose Host is not loopback (MCP Streamable
// HTTP: servers MUST validate Origin, against DNS rebinding and cross-site
// use). Requests without Origin are not from a browser page. The SDK repeats
// the Host check; it is done here too so that it comes before anything
// reads the body.
func (g *Gateway) checkOrigin(next http.Handler) http.Handler {
	allowed := map[string]bool{}
	for _, o := range g.cfg.AllowedOrigins {
		allowed[strings.ToLower(strings.TrimRight(o, "/"))] = true
	}
	if u, err := url.Parse(g.cfg.ResolvedPublicURL()); err == nil {
		allowed[strings.ToLower(u.Scheme+"://"+u.Host)] = true
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		origin := r.Header.Get("Origin")
		if origin != "" && !allowed[strings.ToLower(origin)] && !sameOrigin(origin, r) {
			http.Error(w, "Forbidden: origin not allowed", http.StatusForbidden)
			return
		}
		if local, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok && isLoopback(local.String()) && !isLoopback(r.Host) {
			http.Error(w, "Forbidden: Host is not a loopback name", http.StatusForbidden)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// isLoopback reports whether a host or host:port names the loopback
// interface.
func isLoopback(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(strings.Trim(host, "[]"))
	return ip != nil && ip.IsLoopback()
}

// sameOrigin reports whether origin names the host the request was sent to.
func sameOrigin(origin string, r *http.Request) bool {
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" {
		return false
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return strings.EqualFold(u.Scheme, scheme) && strings.EqualFold(u.Host, r.Host)
}

func (g *Gateway) healthz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Write([]byte("ok\n"))
}

// readyz reports ready when the store answers (and, shared, this gateway
// hears the others' events); upstream health is listed but
// a down upstream does not make the gateway unready (its tools answer with a
// clear error instead).
func (g *Gateway) readyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	type upstreamHealth struct {
		Name      string `json:"name"`
		Connected bool   `json:"connected"`
	}
	body := struct {
		Ready     bool             `json:"ready"`
		Store     string           `json:"store"`
		Upstreams []upstreamHealth `json:"upstreams"`
	}{Ready: true, Store: "ok", Upstreams: []upstreamHealth{}}
	switch _, err := g.store.ListUpstreams(ctx); {
	case err != nil:
		body.Ready, body.Store = false, "unavailable"
	case !g.store.Listening():
		// On a shared store: deaf to the other gateways' kills until
		// listening again (and reloaded).
		body.Ready, body.Store = false, "not hearing other gateways"
	}
	for _, s := range g.upstreams.Statuses() {
		body.Upstreams = append(body.Upstreams, upstreamHealth{Name: s.Name, Connected: s.Connected})
	}
	code := http.StatusOK
	if !body.Ready {
		code = http.StatusServiceUnavailable
	}
	writeJSON(w, code, body)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// oauthCORS lets browser-based clients call a token or registration
// endpoint from any origin: the endpoints take no cookies, so a foreign
// origin gains nothing it could not do without a browser. Preflights are
// answered here.
func oauthCORS(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Access-Control-Allow-Origin", "*")
		h.Set("Access-Control-Expose-Headers", "DPoP-Nonce, WWW-Authenticate")
		if r.Method == http.MethodOptions {
			h.Set("Access-Control-Allow-Methods", "POST")
			h.Set("Access-Control-Allow-Headers", "Authorization, Content-Type, DPoP")
			h.Set("Access-Control-Max-Age", "600")
			w.WriteHeader(http.StatusNoContent)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// bodyDeadline gives a request's body d to arrive (the server gives its
// headers as long, ReadHeaderTimeout): a client that trickles a body, or
// stops sending one, gets 408 and loses its connection instead of holding
// it. The deadline is lifted once the body is read, so that the server
// still notices a client that goes away during a long response.
func bodyDeadline(d time.Duration, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body != nil && r.Body != http.NoBody {
			rc := http.NewResponseController(w)
			if rc.SetReadDeadline(time.Now().Add(d)) == nil {
				r.Body = &deadlineBody{ReadCloser: r.Body, rc: rc}
			}
		}
		next.ServeHTTP(w, r)
	})
}

// deadlineBody lifts its connection's read deadline at the end of the body.
type deadlineBody struct {
	io.ReadCloser
	rc     *http.ResponseController
	lifted bool
}

func (b *deadlineBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF && !b.lifted {
		b.lifted = true
		_ = b.rc.SetReadDeadline(time.Time{})
	}
	return n, err
}

// bodyTimedOut reports whether err is a body read cut by bodyDeadline.
func bodyTimedOut(err error) bool { return errors.Is(err, os.ErrDeadlineExceeded) }
