package server

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sag-gateway/sag/a2a"
	"github.com/sag-gateway/sag/agui"
	"github.com/sag-gateway/sag/consent"
	"github.com/sag-gateway/sag/identity"
	"github.com/sag-gateway/sag/internal/lru"
	"github.com/sag-gateway/sag/pipeline"
	"github.com/sag-gateway/sag/policy"
	"github.com/sag-gateway/sag/schemas"
	"github.com/sag-gateway/sag/server/config"
	"github.com/sag-gateway/sag/store"
	"github.com/sag-gateway/sag/upstreams"
)

// Store is what the gateway keeps in its database. *store.DB implements it.
type Store interface {
	Append(ctx context.Context, rec store.AuditRecord) error
	QueryAudit(ctx context.Context, q store.AuditQuery) ([]store.AuditRecord, error)
	PutSession(ctx context.Context, s store.Session) error
	GetSession(ctx context.Context, id string) (store.Session, error)
	SetSessionState(ctx context.Context, id string, st store.SessionState) error
	SetSessionRisk(ctx context.Context, id string, risk float64, counters map[string]int64) error
	PutMCPClient(ctx context.Context, c store.MCPClient) error
	GetMCPClient(ctx context.Context, id string) (store.MCPClient, error)
	// SharedLimiter is the rate limits gateways sharing the store share
	// (false: none, SQLite).
	SharedLimiter() (*store.RateLimits, bool)
	ForgetMCPClient(ctx context.Context, id string) error
	PutUpstream(ctx context.Context, u store.Upstream) error
	DeleteUpstream(ctx context.Context, name string) error
	ListUpstreams(ctx context.Context) ([]store.Upstream, error)
	PutAllowList(ctx context.Context, upstream string, doc []byte) error
	DeleteAllowList(ctx context.Context, upstream string) error
	ListToolPins(ctx context.Context) ([]store.ToolPin, error)
	PutToolPin(ctx context.Context, p store.ToolPin) error
	ListAllowLists(ctx context.Context) ([]store.AllowList, error)
	PutMinted(ctx context.Context, m store.MintedToken) error
	MintedStatus(ctx context.Context, jti string) (store.MintedToken, bool, error)
	RevokeTree(ctx context.Context, id string) ([]string, error)
	FindSessions(ctx context.Context, kind store.SessionKind, who string, byAgent bool) ([]string, error)
	UserSessions(ctx context.Context, issuer, subject string, limit int) ([]store.Session, error)
	RevokeToken(ctx context.Context, issuer, jti string, expiry time.Time) error
	RevokedTokens(ctx context.Context) ([]store.RevokedToken, error)
	RevokedSessions(ctx context.Context) ([]string, error)
	PutUserKill(ctx context.Context, k store.UserKill) error
	UserKills(ctx context.Context) ([]store.UserKill, error)
	// Listen calls fn with what other gateways sharing the store commit
	// (returning at once when none can), Listening whether it hears them.
	Listen(ctx context.Context, fn func(store.Event))
	Listening() bool
	Announce(ctx context.Context, ev store.Event) error
	// Replay is the DPoP replay cache (shared on PostgreSQL).
	Replay(max int) store.ReplayCache
	consent.Store
	a2a.TaskStore
	identity.AuthStore
	DeleteClientConsent(ctx context.Context, subject, client string) error
	Close() error
}

var _ Store = (*store.DB)(nil)

// maxRateBuckets bounds the rate-limit buckets one gateway keeps in memory;
// past it the least recently used is dropped (a flood of new callers
// cannot reset the others').
const maxRateBuckets = 200_000

// Gateway is one running SAG: the MCP front, the upstreams, the store and the
// HTTP routes, built from one config in New and torn down in Close.
type Gateway struct {
	cfg       *config.Config
	log       *slog.Logger
	version   string
	store     Store
	upstreams *upstreams.Manager
	front     *front
	metrics   *metrics
	sessions  *sessionGraph
	pipeline  *pipeline.Pipeline
	consent   *consent.Engine
	listeners listeners // who follows their consent requests
	// consentResults hands approved calls' results to consent streams.
	consentResults consentResults
	// activity is each user's recent calls, for the consent stream.
	activity activity
	// consentStream serves POST /agui.
	consentStream *agui.Stream
	// a2a serves A2A at /a2a and the public agent card.
	a2a     *a2a.Server
	admin   string // admin API token
	auth    *authn
	tracing *tracing
	// liveRuns are the running AG-UI agent runs' tokens (jti → the user
	// the run is for).
	liveRuns sync.Map
	revoked  *revocations
	policy   atomic.Pointer[loadedPolicy] // swapped whole on reload
	policyMu sync.Mutex                   // serialises reloads
	pins     *policy.Pins                 // tool pinning
	limiter  policy.Limiter               // rate limits: the rules' and the upstreams'
	// toolSchemas holds the compiled input schema of each catalog tool
	// definition (*mcp.Tool → *schemas.Schema).
	toolSchemas *lru.Cache[toolSchemaKey, *schemas.Schema]

	configured map[string]bool // upstreams from the config file or flags (not removable at run time)
	registry   sync.Mutex      // serialises admin changes to the upstream registry
	inflight   *tracker        // requests and calls in flight
	handler    http.Handler
	stopListen context.CancelFunc // ends listen (other gateways' events)
	listening  chan struct{}      // closed when listen has returned
	closeOnce  sync.Once
	closeErr   error
}

// Deps are what a gateway is built from besides its config. Each may be
// left zero for its default; tests inject their own (a store that fails on
// demand, a fake clock).
type Deps struct {
	// Log receives the gateway's logs; nil means slog.Default().
	Log *slog.Logger
	// Version is the gateway's version, reported to MCP clients.
	Version string
	// Store is the gateway's database; nil opens SQLite in the config's
	// data directory. The gateway closes it either way.
	Store Store
	// Keys are the gateway's signing keys; nil loads (or generates) them
	// in the data directory.
	Keys *identity.Keys
	// Now is the clock of the session graph, session risk and the
	// pipeline; nil means time.Now. (Token and proof verification keep the
	// wall clock: clients sign with it.)
	Now func() time.Time
}

// New builds a gateway from a validated config and its dependencies: it
// opens the store, registers the configured and persisted upstreams and
// mounts the routes. It starts no listener; call Serve.
func New(ctx context.Context, cfg *config.Config, deps Deps) (g *Gateway, err error) {
	if deps.Log == nil {
		deps.Log = slog.Default()
	}
	if deps.Now == nil {
		deps.Now = time.Now
	}
	log := deps.Log
	gw := &Gateway{cfg: cfg, log: log, version: deps.Version, configured: map[string]bool{}, inflight: newTracker(),
		toolSchemas: lru.New[toolSchemaKey, *schemas.Schema](maxToolSchemas)}
	g = gw
	defer func() {
		if err != nil {
			gw.Close() // g is nil by now
		}
	}()

	st := deps.Store
	if st == nil {
		if st, err = store.Open(ctx, cfg.DataDir, store.Options{Postgres: cfg.Store}); err != nil {
			return nil, fmt.Errorf("open store: %w", err)
		}
	}
	g.store = st
	// Rate limits: the gateways sharing a store share them; one alone
	// keeps them here, across policy reloads.
	g.limiter = policy.NewMemoryLimiter(maxRateBuckets)
	if shared, ok := st.SharedLimiter(); ok {
		g.limiter = shared
	}

	if g.admin, err = adminToken(cfg); err != nil {
		return nil, err
	}
	if g.revoked, err = loadRevocations(ctx, g.store); err != nil {
		return nil, err
	}
	if g.tracing, err = newTracing(ctx, cfg, deps.Version); err != nil {
		return nil, fmt.Errorf("traces: %w", err)
	}
	if g.auth, err = newAuthn(ctx, cfg, log, g.store, deps.Keys, g.revoked); err != nil {
		return nil, err
	}

	if g.pins, err = policy.LoadPins(ctx, st); err != nil {
		return nil, err
	}
	if g.sessions, err = newSessionGraph(ctx, st, log, newRisk(riskModel(cfg), time.Duration(cfg.Policy.Risk.HalfLife), st, deps.Now), g.inflight,
		sessionOptions{MaxWorkflows: cfg.Limits.MaxWorkflows, WorkflowIdle: time.Duration(cfg.Limits.WorkflowIdleTimeout), Now: deps.Now}); err != nil {
		return nil, err
	}
	if g.auth.server, err = newAuthServer(cfg, log, st, g.auth, g.signInRevoked, g.revoked.revoke); err != nil {
		return nil, err
	}
	if g.auth.legacy, err = newLegacy(cfg, log, g.auth, g.userRevoked, g.revoked); err != nil {
		return nil, err
	}
	g.consent = consent.NewEngine(st, deps.Now, approves)
	g.listeners.now = deps.Now
	g.listeners.announce = func(issuer, subject string) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := st.Announce(ctx, store.Event{Kind: store.EventFollowing, Issuer: issuer, Subject: subject}); err != nil {
			log.Warn("replicas: could not tell the other gateways a user follows here", "error", err)
		}
	}
	g.metrics = newMetrics()
	g.front = newFront(g, deps.Version)
	naming, err := upstreams.ParseNaming(cfg.Prefix)
	if err != nil {
		return nil, err
	}
	g.upstreams = upstreams.New(upstreams.Options{
		Naming:            naming,
		CallTimeout:       time.Duration(cfg.Limits.CallTimeout),
		IdleTimeout:       time.Duration(cfg.Limits.UpstreamIdleTimeout),
		MaxSessions:       cfg.Limits.MaxUpstreamSessions,
		Logger:            log,
		OnChange:          g.front.sync,
		OnResourceUpdated: g.front.resourceUpdated,
		Credentials:       g.auth.minter,
		MTLS:              g.auth.clientTLS(),
		Version:           deps.Version,
	})
	g.metrics.watch(g.upstreams)

	if err := g.registerUpstreams(ctx); err != nil {
		return nil, err
	}
	if len(g.upstreams.Specs()) == 0 {
		log.Warn("no upstreams yet: add one with --upstream NAME=URL, the config file, or 'sag upstreams add'")
	}
	lp, err := g.loadPolicy(ctx)
	if err != nil {
		return nil, err
	}
	g.policy.Store(lp)
	g.logPolicy(len(lp.Documents))
	s := steps{g}
	g.pipeline = &pipeline.Pipeline{
		Sessions: g.sessions, Catalog: s, Authorizer: s, Validator: s, Consent: consentStep{g},
		Credentials: s, Forwarder: mcpForwarder{g}, Auditor: g.store, Clock: clock(deps.Now), Log: log, Watch: g.activity.watch,
		Tracer: g.tracing.tracer(),
	}
	g.consentStream = agui.NewStream(agui.Options{
		Consents:  auditedConsents{g},
		Activity:  &g.activity,
		Principal: principalOf,
		Workflow: func(p identity.Principal, thread string) (string, bool) {
			return workflowSession(g.sessions.userSession(p), thread), validWorkflowID(thread)
		},
		Listening:  g.listeners.listen,
		Runs:       agentRuns{g},
		CheckEvent: agui.CheckEvent,
		Log:        log,
	})
	g.a2a = a2a.New(a2a.Options{
		Pipeline: g.pipeline,
		Tasks:    g.store,
		Principal: func(ctx context.Context) (identity.Principal, bool) {
			p, ok := ctx.Value(principalCtxKey{}).(identity.Principal)
			return p, ok
		},
		Tools:         g.toolsFor,
		CancelConsent: g.consent.Cancel,
		URL:           cfg.ResolvedPublicURL() + "/a2a", Version: deps.Version,
		Auth: cfg.Auth, MTLS: g.auth.serverTLS() != nil,
		Now: g.sessions.now, Log: log,
	})
	g.handler = bodyDeadline(time.Duration(cfg.Limits.RequestReadTimeout), g.tracing.headerContext(g.routes()))
	lctx, stop := context.WithCancel(context.Background())
	g.stopListen, g.listening = stop, make(chan struct{})
	go func() {
		defer close(g.listening)
		g.listen(lctx)
	}()
	// On a shared store, calls are refused until this gateway hears the
	// others (Admit): start serving once it does.
	for deadline := time.Now().Add(10 * time.Second); !st.Listening(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			return nil, errors.New("store: not listening to the other gateways' events after 10s")
		}
	}
	return g, nil
}

// riskModel is the configured session risk model.
func riskModel(cfg *config.Config) policy.Risk {
	model := policy.DefaultRisk()
	model.StepUp, model.Block = cfg.Policy.Risk.StepUp, cfg.Policy.Risk.Block
	maps.Copy(model.Weights, cfg.Policy.Risk.Weights)
	return model
}

// registerUpstreams adds the config's upstreams, then those tool owners
// registered through the admin API (the config wins a name clash). They
// connect concurrently; startup waits for each first attempt, bounded.
func (g *Gateway) registerUpstreams(ctx context.Context) error {
	var specs []upstreams.Spec
	for _, u := range g.cfg.Upstreams {
		spec, err := specFromConfig(u)
		if err != nil {
			return err
		}
		g.configured[spec.Name] = true
		specs = append(specs, spec)
	}
	stored, err := g.store.ListUpstreams(ctx)
	if err != nil {
		return fmt.Errorf("list registered upstreams: %w", err)
	}
	for _, su := range stored {
		if g.configured[su.Name] {
			g.log.Warn("registered upstream shadowed by the config file", "upstream", su.Name)
			continue
		}
		var spec upstreams.Spec
		if err := json.Unmarshal(su.Options, &spec); err != nil || spec.Name != su.Name {
			g.log.Error("registered upstream unreadable; skipped", "upstream", su.Name)
			continue
		}
		if spec.Transport() == upstreams.TransportStdio && !g.cfg.AllowStdioRegistration {
			// Registered through the admin API while it was allowed: it
			// runs a command on this host, which the operator no longer
			// allows.
			g.log.Error("registered stdio upstream not started: start the gateway with --allow-stdio-registration to run it", "upstream", su.Name)
			continue
		}
		specs = append(specs, spec)
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for _, spec := range specs {
		rep, err := g.upstreams.Add(ctx, spec)
		if err != nil {
			return fmt.Errorf("upstream %s: %w", spec.Name, err)
		}
		g.logReport(spec.Name, rep)
	}
	return nil
}

func (g *Gateway) logReport(name string, rep upstreams.Report) {
	if rep.ConnectError != "" {
		g.log.Warn("upstream not reachable yet; retrying in the background", "upstream", name, "error", rep.ConnectError)
	}
	for _, c := range rep.Conflicts {
		g.log.Warn("upstream conflict", "upstream", name, "detail", c)
	}
}

func specFromConfig(u config.Upstream) (upstreams.Spec, error) {
	naming, err := upstreams.ParseNaming(u.Prefix)
	if err != nil {
		return upstreams.Spec{}, fmt.Errorf("upstream %s: %w", u.Name, err)
	}
	spec := upstreams.Spec{Name: u.Name, Kind: u.Kind, AgentKey: u.AgentKey, URL: u.URL, Prefix: naming, Env: u.Env, Timeout: time.Duration(u.Timeout), ProtocolVersion: u.ProtocolVersion, WithdrawWhenDown: u.WithdrawWhenDown, Auth: u.Auth}
	if u.RateLimit != nil {
		spec.RateLimit = &upstreams.RateLimit{PerMinute: u.RateLimit.PerMinute, Burst: u.RateLimit.Burst}
	}
	if u.CardJWKSFile != "" {
		if spec.CardJWKS, err = os.ReadFile(u.CardJWKSFile); err != nil {
			return upstreams.Spec{}, fmt.Errorf("upstream %s: card_jwks_file: %w", u.Name, err)
		}
	}
	return spec, spec.Validate()
}

// adminToken returns the configured admin token, or the one kept in the data
// directory, generating it on first start.
func adminToken(cfg *config.Config) (string, error) {
	tok, err := cfg.ResolvedAdminToken()
	if err != nil || tok != "" {
		return tok, err
	}
	path := filepath.Join(cfg.DataDir, AdminTokenFile)
	if b, err := os.ReadFile(path); err == nil && len(strings.TrimSpace(string(b))) > 0 {
		return strings.TrimSpace(string(b)), nil
	}
	buf := make([]byte, 32)
	if _, err := rand.Read(buf); err != nil {
		return "", err
	}
	tok = hex.EncodeToString(buf)
	if err := os.WriteFile(path, []byte(tok+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("write admin token: %w", err)
	}
	return tok, nil
}

// AdminTokenFile is the file in the data directory that holds the generated
// admin token when the config names none.
const AdminTokenFile = "admin.token"

// Handler returns the gateway's HTTP handler (all routes).
func (g *Gateway) Handler() http.Handler { return g.handler }

// Serve serves HTTP on ln until ctx is cancelled, then shuts down in order:
// stop accepting, drain in-flight tool calls (bounded by grace), close the
// downstream sessions and upstream connections, flush and close the store.
func (g *Gateway) Serve(ctx context.Context, ln net.Listener, grace time.Duration) error {
	srv := &http.Server{
		Handler:           g.handler,
		ReadHeaderTimeout: time.Duration(g.cfg.Limits.RequestReadTimeout),
		ErrorLog:          slog.NewLogLogger(g.log.Handler(), slog.LevelWarn),
	}
	if tc := g.auth.serverTLS(); tc != nil {
		ln = tls.NewListener(ln, tc)
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	go g.watchPolicy(ctx, 2*time.Second)
	// Housekeeping: idle workflows close, consent requests past their
	// expiry (whose callers are gone, say after a restart) expire.
	go every(ctx, time.Minute, func() {
		g.sessions.collectWorkflows(ctx, g.sessions.now())
		if _, err := g.consent.ExpireDue(ctx); err != nil && ctx.Err() == nil {
			g.log.Warn("expiring consent requests failed", "error", err)
		}
	})
	select {
	case err := <-errc:
		g.Close()
		return err
	case <-ctx.Done():
	}
	g.log.Info("shutting down: draining in-flight calls")
	shutdownCtx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	go srv.Shutdown(shutdownCtx) // stops accepting; long-lived streams end below
	if g.inflight.wait(shutdownCtx) != nil {
		g.log.Warn("shutdown grace elapsed with calls in flight; cancelling them")
		// Closing a downstream session waits for its handlers, and closing
		// an upstream for its calls: cancel what is left, let it answer.
		g.inflight.cancel("", errShuttingDown)
		answered, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = g.inflight.wait(answered)
	}
	// The sessions end here, not for their clients: they stay open in the
	// store, for this gateway's next start or another gateway to continue.
	g.front.draining.Store(true)
	g.closeSessions(5 * time.Second)
	srv.Close()
	return g.Close()
}

// closeSessions closes every downstream session, concurrently: the SDK waits
// for a session's handlers, and one stuck upstream must not hold the others
// (or the exit) forever. After limit it gives up on the rest.
func (g *Gateway) closeSessions(limit time.Duration) {
	var wg sync.WaitGroup
	for ss := range g.front.srv.Sessions() {
		wg.Go(func() { ss.Close() })
	}
	closed := make(chan struct{})
	go func() { wg.Wait(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(limit):
		g.log.Warn("some sessions did not close in time; stopping anyway")
	}
}

// Close releases everything New acquired. It is safe after a partial New.
func (g *Gateway) Close() error {
	g.closeOnce.Do(func() {
		var errs []error
		if g.stopListen != nil {
			g.stopListen()
			<-g.listening
		}
		if g.upstreams != nil {
			errs = append(errs, g.upstreams.Close())
		}
		if g.store != nil {
			errs = append(errs, g.store.Close())
		}
		errs = append(errs, g.auth.close())
		if g.tracing != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			errs = append(errs, g.tracing.close(ctx))
			cancel()
		}
		g.closeErr = errors.Join(errs...)
	})
	return g.closeErr
}
