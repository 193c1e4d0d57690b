package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"time"

	"github.com/sag-gateway/sag/agui"
	"github.com/sag-gateway/sag/identity"
	"github.com/sag-gateway/sag/pipeline"
	"github.com/sag-gateway/sag/store"
)

// consoleRoutes mounts the consent console: its static files (embedded in
// agui), what the page needs to know to start (GET /console/config), the
// development sign-in when it is on, and the user's session graph with a
// kill per node. Everything but the files and the config needs the same
// authentication as any caller; the page sends DPoP proofs from a
// non-extractable WebCrypto key, and no cookie carries authority.
func (g *Gateway) consoleRoutes(mux *http.ServeMux) {
	files := agui.Console()
	mux.Handle("GET /console/", g.metrics.instrument("/console/", files))
	mux.Handle("GET /console", http.RedirectHandler("/console/", http.StatusMovedPermanently))
	mux.Handle("GET /console/config", g.metrics.instrument("/console/config", http.HandlerFunc(g.consoleConfig)))
	if g.cfg.Console.DevLogin && g.auth.dpop != nil {
		mux.Handle("POST /console/login", g.metrics.instrument("/console/login", g.checkOrigin(http.HandlerFunc(g.devLogin))))
	}
	mux.Handle("GET /console/api/graph", g.metrics.instrument("/console/api/graph", g.checkOrigin(g.authenticated(g.consoleGraph))))
	mux.Handle("POST /console/api/kill", g.metrics.instrument("/console/api/kill", g.checkOrigin(g.authenticated(g.consoleKill))))
	if g.auth.server != nil {
		mux.Handle("DELETE /console/api/clients/{client}", g.metrics.instrument("/console/api/clients", g.checkOrigin(g.authenticated(g.consoleForgetClient))))
	}
}

// consoleForgetClient serves DELETE /console/api/clients/{client}: a user
// withdraws what they allowed a client at sign-in; the client's refresh
// tokens for them are revoked with it, and its next authorization asks
// again.
func (g *Gateway) consoleForgetClient(w http.ResponseWriter, r *http.Request) {
	p, ok := consoleUser(w, r)
	if !ok {
		return
	}
	if p.Issuer != g.cfg.ResolvedPublicURL() {
		writeAdminError(w, &adminError{Status: http.StatusNotFound, Code: "not_found", Description: "you signed in elsewhere: this gateway holds no client decisions of yours"})
		return
	}
	client := r.PathValue("client")
	err := g.store.DeleteClientConsent(r.Context(), p.User, client)
	switch {
	case errors.Is(err, store.ErrNotFound):
		writeAdminError(w, &adminError{Status: http.StatusNotFound, Code: "not_found", Description: "you never allowed this client"})
	case err != nil:
		g.log.Error("client consent not withdrawn", "error", err)
		writeAdminError(w, &adminError{Status: http.StatusServiceUnavailable, Code: "unavailable", Description: "the store could not withdraw it; try again"})
	default:
		g.log.Info("client consent withdrawn", "sub", p.User, "client", client)
		w.WriteHeader(http.StatusNoContent)
	}
}

// ConsoleConfig is the answer of GET /console/config.
type ConsoleConfig struct {
	// Auth is the gateway's authentication mode: under "open" the console
	// acts as the anonymous user and needs no sign-in.
	Auth string `json:"auth"`
	// PublicURL is the gateway's public base URL, the base of DPoP
	// proofs' htu.
	PublicURL string `json:"publicURL"`
	// DevLogin is true when POST /console/login signs in anyone.
	DevLogin bool `json:"devLogin"`
	// AllThreads and RequestThreadPrefix are the reserved AG-UI thread
	// ids the console uses.
	AllThreads          string `json:"allThreads"`
	RequestThreadPrefix string `json:"requestThreadPrefix"`
	// SignIn is set when the gateway's authorization server is on: the
	// console signs in through it (code + PKCE, DPoP-bound tokens).
	SignIn *ConsoleSignIn `json:"signIn,omitempty"`
}

// ConsoleSignIn is where and as whom the console signs in.
type ConsoleSignIn struct {
	Authorize   string `json:"authorize"`
	Token       string `json:"token"`
	ClientID    string `json:"clientID"`
	RedirectURI string `json:"redirectURI"`
}

func (g *Gateway) consoleConfig(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	base := g.cfg.ResolvedPublicURL()
	c := ConsoleConfig{Auth: g.cfg.Auth, PublicURL: base, DevLogin: g.cfg.Console.DevLogin && g.auth.dpop != nil,
		AllThreads: agui.AllThreads, RequestThreadPrefix: agui.RequestThreadPrefix}
	if g.auth.server != nil {
		c.SignIn = &ConsoleSignIn{Authorize: base + identity.AuthorizePath, Token: base + identity.TokenPath, ClientID: ConsoleClientID, RedirectURI: base + "/console/"}
	}
	writeJSON(w, http.StatusOK, c)
}

// devLoginUser is what a development sign-in may call itself.
var devLoginUser = regexp.MustCompile(`^[A-Za-z0-9._@-]{1,64}$`)

// devLoginTTL is the lifetime of a development sign-in's token.
const devLoginTTL = time.Hour

// devLogin serves POST /console/login (console.dev_login only): the body
// names a user, the DPoP proof (RFC 9449 §4, no access token yet) names the
// key, and the answer is an access token of the gateway's own issuer for
// that user, bound to that key (cnf.jkt, §6), like a token endpoint's
// (§5). There is no password: this is for demos on loopback.
func (g *Gateway) devLogin(w http.ResponseWriter, r *http.Request) {
	var body struct {
		User string `json:"user"`
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&body); err != nil || !devLoginUser.MatchString(body.User) {
		writeAdminError(w, &adminError{Status: http.StatusBadRequest, Code: "invalid_request", Description: "the body must be {\"user\": NAME}, NAME 1-64 letters, digits or ._@-"})
		return
	}
	req := identity.DPoPRequest{Proofs: r.Header.Values("DPoP"), Method: r.Method, URL: g.cfg.ResolvedPublicURL() + "/console/login"}
	if g.auth.nonces != nil {
		req.CheckNonce = g.auth.nonces.Valid
	}
	proof, err := g.auth.dpop.Verify(r.Context(), req)
	if err != nil {
		g.auth.check.WriteError(w, err)
		return
	}
	tok, _, err := g.auth.issuer.Mint(identity.Claims{Subject: body.User, Audience: identity.Audience{g.cfg.ResolvedPublicURL()},
		ClientID: "sag-console", Cnf: &identity.Confirmation{JKT: proof.JKT}}, devLoginTTL)
	if err != nil {
		g.log.Error("development sign-in: token not minted", "error", err)
		writeAdminError(w, &adminError{Status: http.StatusInternalServerError, Code: "server_error", Description: "the token could not be minted"})
		return
	}
	g.log.Info("development sign-in to the console", "user", body.User)
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, map[string]any{"access_token": tok, "token_type": "DPoP", "expires_in": int(devLoginTTL.Seconds())})
}

// maxGraphNodes bounds the session graph the console shows.
const maxGraphNodes = 500

// consoleUser returns the principal of a console request, refusing agents:
// the console is the user's own, and an agent's token (or one naming an
// actor) acts for someone else.
func consoleUser(w http.ResponseWriter, r *http.Request) (identity.Principal, bool) {
	p, ok := principalOf(r)
	if !ok || p.Agent != "" || p.Act != nil || p.User == "" {
		writeAdminError(w, &adminError{Status: http.StatusForbidden, Code: "forbidden", Description: "the console is for users; an agent's token cannot use it"})
		return p, false
	}
	return p, true
}

// ConsoleGraph is the answer of GET /console/api/graph: the user's session
// graph (user sessions, their workflows and agent sessions, and the agents'
// MCP sessions), the most recently active first.
type ConsoleGraph struct {
	User string `json:"user"`
	// Self are the nodes the console's own requests stand on (its user
	// session and agent session): killing one signs the console out too.
	Self  []string        `json:"self"`
	Nodes []store.Session `json:"nodes"`
}

func (g *Gateway) consoleGraph(w http.ResponseWriter, r *http.Request) {
	p, ok := consoleUser(w, r)
	if !ok {
		return
	}
	nodes, err := g.store.UserSessions(r.Context(), p.Issuer, p.User, maxGraphNodes)
	if err != nil {
		g.log.Error("console graph", "error", err)
		writeAdminError(w, &adminError{Status: http.StatusServiceUnavailable, Code: "temporarily_unavailable", Description: "the session graph could not be read"})
		return
	}
	for i := range nodes {
		nodes[i].Risk, _ = g.sessions.risk.snapshot(r.Context(), nodes[i].ID)
		nodes[i].Counters = nil
	}
	if nodes == nil {
		nodes = []store.Session{}
	}
	w.Header().Set("Cache-Control", "no-store")
	usid := g.sessions.userSession(p)
	writeJSON(w, http.StatusOK, ConsoleGraph{User: p.User, Self: []string{usid, agentSessionOf(p.Agent, usid)}, Nodes: nodes})
}

// consoleKill serves POST /console/api/kill {"session": ID}: a user kills a
// node of their own session graph and everything under it, as the admin
// kill does. Another user's node does not exist for them.
func (g *Gateway) consoleKill(w http.ResponseWriter, r *http.Request) {
	p, ok := consoleUser(w, r)
	if !ok {
		return
	}
	var body struct {
		Session string `json:"session"`
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&body); err != nil || body.Session == "" {
		writeAdminError(w, &adminError{Status: http.StatusBadRequest, Code: "invalid_request", Description: "the body must be {\"session\": ID}"})
		return
	}
	nodes, err := g.store.UserSessions(r.Context(), p.Issuer, p.User, -1)
	if err != nil {
		g.log.Error("console kill", "error", err)
		writeAdminError(w, &adminError{Status: http.StatusServiceUnavailable, Code: "temporarily_unavailable", Description: "the session graph could not be read"})
		return
	}
	if !slices.ContainsFunc(nodes, func(n store.Session) bool { return n.ID == body.Session }) {
		writeAdminError(w, &adminError{Status: http.StatusNotFound, Code: "not_found", Description: "no such session of yours"})
		return
	}
	start := time.Now()
	res, err := g.Kill(r.Context(), KillRequest{Session: body.Session})
	if err != nil {
		g.log.Error("console kill", "error", err)
		writeAdminError(w, &adminError{Status: http.StatusServiceUnavailable, Code: "temporarily_unavailable", Description: "the session could not be killed"})
		return
	}
	rec := store.AuditRecord{Method: "console/kill", PolicyID: "console", Decision: pipeline.DecisionAllow, Sub: p.User, MSID: body.Session,
		Reason: fmt.Sprintf("killed by its user: %d nodes, %d calls, %d sessions, %d consent requests", len(res.Revoked), res.CancelledCalls, res.ClosedSessions, res.CancelledConsents)}
	if aerr := g.audit(r.Context(), &rec, start); aerr != nil {
		g.log.Error("console kill not audited", "error", aerr)
	}
	g.log.Warn("kill-switch (console)", "user", p.User, "session", body.Session, "revoked", len(res.Revoked))
	writeJSON(w, http.StatusOK, res)
}
