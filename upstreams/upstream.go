package upstreams

import (
	"context"
	"errors"
	"fmt"
	spec "github.com/a2aproject/a2a-go/v2/a2a"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// stateless is the first protocol revision without sessions.
const stateless = "2026-07-28"

// upstream is one registered upstream: a supervisor keeps a control session
// (catalog discovery, list_changed, and calls that belong to no downstream
// session) and per-downstream-session connections are opened on demand.
type upstream struct {
	m    *Manager
	spec Spec
	tgt  target
	log  *slog.Logger

	mu       sync.Mutex
	control  *conn
	version  string // negotiated with the control session; pins later connects
	sessions map[string]*conn
	pool     []*conn // idle pooled connections for stateless clients (bridge.go)
	busy     int     // pooled connections checked out
	listing  listing
	card     *spec.AgentCard // an A2A upstream's, once read
	lastErr  string
	closed   bool

	raw        atomic.Pointer[http.Client] // the raw path's (raw.go), made on first use
	refreshing atomic.Bool
	recheck    chan struct{} // a connection failed: check the upstream now
	firstTry   chan struct{} // closed after the first connection attempt
	firstOnce  sync.Once
	stop       chan struct{}
	done       chan struct{}
}

// conn is one upstream client session. down is the downstream session it
// serves, nil for the control connection.
type conn struct {
	cs   *mcp.ClientSession
	down *mcp.ServerSession

	mu       sync.Mutex
	calls    map[uint64]context.Context // in-flight forwarded requests, by sequence
	lastUsed time.Time
	level    mcp.LoggingLevel // last level set on a pooled connection

	holder atomic.Pointer[holder] // the request holding a pooled connection
	// caller is who the connection's requests are made for: fixed for a
	// downstream session's connection, per checkout for a pooled one, nil
	// for the control connection (the gateway's own traffic).
	caller atomic.Pointer[caller]
}

// holder is the stateless client's request that holds a pooled connection.
type holder struct {
	down *mcp.ServerSession
	ctx  context.Context // the downstream request's: routes logging back
	b    *bridged        // set when the call may park for input
}

func newUpstream(m *Manager, spec Spec, tgt target) *upstream {
	return &upstream{
		m: m, spec: spec, tgt: tgt,
		log:      m.opts.Logger.With("upstream", spec.Name),
		sessions: map[string]*conn{},
		listing:  listing{upstream: spec.Name, naming: spec.Prefix},
		firstTry: make(chan struct{}),
		recheck:  make(chan struct{}, 1),
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
	}
}

func (u *upstream) timeout() time.Duration {
	if u.spec.Timeout > 0 {
		return u.spec.Timeout
	}
	return u.m.opts.CallTimeout
}

// supervise keeps the control session up: connect, list, wait for the
// session to end, reconnect with exponential backoff.
func (u *upstream) supervise() {
	defer close(u.done)
	base, cancelBase := context.WithCancel(context.Background())
	defer cancelBase()
	go func() {
		<-u.stop
		cancelBase()
	}()
	backoff := 100 * time.Millisecond
	for {
		ctx, cancel := context.WithTimeout(base, u.timeout())
		c, err := u.dial(ctx, nil, false, nil)
		if err == nil {
			if err = u.refresh(ctx, c); err != nil {
				c.cs.Close()
			}
		}
		cancel()
		if err == nil {
			u.mu.Lock()
			u.control, u.lastErr = c, ""
			u.version = c.cs.InitializeResult().ProtocolVersion
			u.mu.Unlock()
			u.log.Info("upstream connected", "protocol", c.cs.InitializeResult().ProtocolVersion)
			if u.spec.WithdrawWhenDown {
				u.m.rebuild() // refresh listed it while it was still down
			}
			u.firstOnce.Do(func() { close(u.firstTry) })
			backoff = 100 * time.Millisecond
			ended := make(chan struct{})
			go func() { c.cs.Wait(); close(ended) }()
			if !u.watch(c, ended) {
				return
			}
			u.mu.Lock()
			if u.control == c {
				u.control = nil
			}
			u.lastErr = "control session ended"
			u.mu.Unlock()
			u.log.Warn("upstream session ended; reconnecting")
			if u.spec.WithdrawWhenDown {
				u.m.rebuild() // its tools leave the catalog until it is back
			}
		} else {
			u.mu.Lock()
			u.lastErr = safeError(err)
			u.mu.Unlock()
			u.log.Warn("upstream connect failed", "error", safeError(err), "retry_in", backoff)
			u.firstOnce.Do(func() { close(u.firstTry) })
		}
		select {
		case <-u.stop:
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 30*time.Second)
	}
}

// probeEvery is how often the control session of a stateless upstream is
// pinged: with no stream open, nothing else would notice the upstream die.
const probeEvery = 15 * time.Second

// watch waits for the control session to end. Stateless upstreams are
// pinged now and then; any upstream is pinged at once when a connection to
// it failed. It
// returns false when the upstream is being shut down.
func (u *upstream) watch(c *conn, ended <-chan struct{}) bool {
	t := time.NewTicker(probeEvery)
	defer t.Stop()
	for {
		select {
		case <-u.stop:
			c.cs.Close()
			<-ended
			return false
		case <-ended:
			return true
		case <-t.C:
			if !u.stateless() {
				continue // session-based control sessions keep alive by themselves
			}
		case <-u.recheck:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := c.cs.Ping(ctx, nil)
		cancel()
		if unreachable(err) {
			u.log.Warn("upstream unreachable", "error", safeError(err))
			c.cs.Close()
		}
	}
}

// unreachable reports whether a probe's error means that nothing answered:
// a network error, a timeout, a closed connection. Any HTTP answer counts as
// alive; 2026-07-28 upstreams, for one, answer ping with an error (the
// revision removed it).
func unreachable(err error) bool {
	var netErr net.Error
	return err != nil && (errors.As(err, &netErr) || errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, mcp.ErrConnectionClosed) || errors.Is(err, mcp.ErrSessionMissing))
}

// dial opens a client session to the upstream. With down set, the session
// serves that downstream session: its server-to-client requests and
// notifications are forwarded there. A pooled session serves one stateless
// client's request at a time.
func (u *upstream) dial(ctx context.Context, down *mcp.ServerSession, pooled bool, cl *caller) (*conn, error) {
	c := &conn{down: down, calls: map[uint64]context.Context{}, lastUsed: time.Now()}
	c.caller.Store(cl)
	opts := &mcp.ClientOptions{
		Capabilities:                &mcp.ClientCapabilities{},
		ProgressNotificationHandler: u.m.forwardProgress(u),
		// Input requests of stateless upstreams pass through to the front,
		// which fulfils them for each client generation itself.
		MultiRoundTrip: &mcp.MultiRoundTripOptions{Disabled: true},
		// A change seen on any connection re-lists the upstream through the
		// control session, which defines the catalog.
		ToolListChangedHandler:     func(context.Context, *mcp.ToolListChangedRequest) { u.scheduleRefresh() },
		PromptListChangedHandler:   func(context.Context, *mcp.PromptListChangedRequest) { u.scheduleRefresh() },
		ResourceListChangedHandler: func(context.Context, *mcp.ResourceListChangedRequest) { u.scheduleRefresh() },
	}
	switch {
	case pooled:
		c.bindPooled(opts)
	case down == nil:
		opts.KeepAlive = 15 * time.Second
	default:
		c.bindHandlers(opts)
	}
	opts.ResourceUpdatedHandler = func(_ context.Context, req *mcp.ResourceUpdatedNotificationRequest) {
		if u.m.opts.OnResourceUpdated != nil {
			u.m.opts.OnResourceUpdated(c.down, req.Params)
		}
	}
	client := mcp.NewClient(&mcp.Implementation{Name: "sag", Version: u.m.opts.Version}, opts)
	switch {
	case pooled:
		client.AddReceivingMiddleware(c.pooledElicit)
	case down != nil && opts.Capabilities.Elicitation != nil:
		client.AddReceivingMiddleware(c.elicitPassThrough)
	}

	var (
		tr    mcp.Transport
		child *exec.Cmd
	)
	switch u.tgt.transport {
	case TransportHTTP:
		tr = &mcp.StreamableClientTransport{
			Endpoint:   u.tgt.endpoint,
			HTTPClient: u.m.httpClient(u, c),
			// Every connection keeps the standalone GET stream: upstreams
			// may send server-to-client requests and notifications there
			// rather than on a call's stream (mcp-go sends sampling and
			// logging only there), and a per-session connection without it
			// never sees them.
			MaxRetries: 1,
		}
	case TransportSSE:
		tr = &mcp.SSEClientTransport{Endpoint: u.tgt.endpoint, HTTPClient: u.m.httpClient(u, c)}
	case TransportStdio:
		cmd := exec.Command(u.tgt.argv[0], u.tgt.argv[1:]...)
		cmd.Env = childEnv(u.spec.Env)
		cmd.Stderr = &logWriter{log: u.log}
		setChildAttrs(cmd)
		tr = &mcp.CommandTransport{Command: cmd, TerminateDuration: 2 * time.Second}
		child = cmd
	}
	version := u.spec.ProtocolVersion
	if version == "" {
		u.mu.Lock()
		version = u.version
		u.mu.Unlock()
	}
	// The legacy SSE transport reads its event stream under the context it
	// connects with, so that context must outlive this call (ctx bounds only
	// the handshake); the stream ends with the session.
	connectCtx, endStream := ctx, context.CancelFunc(func() {})
	unbound := func() bool { return true }
	if u.tgt.transport == TransportSSE {
		connectCtx, endStream = context.WithCancel(context.WithoutCancel(ctx))
		unbound = context.AfterFunc(ctx, endStream)
	}
	cs, err := client.Connect(connectCtx, tr, &mcp.ClientSessionOptions{ProtocolVersion: version})
	if err == nil && !unbound() {
		cs.Close()
		err = ctx.Err()
	}
	if err != nil {
		endStream()
		killGroup(child)
		return nil, fmt.Errorf("connect: %w", err)
	}
	if u.tgt.transport != TransportHTTP {
		// When the session ends, so does what it started: the SSE event
		// stream, or whatever a stdio upstream left running in its process
		// group (the transport stops only the child itself).
		go func() {
			_ = cs.Wait()
			endStream()
			killGroup(child)
		}()
	}
	c.cs = cs
	return c, nil
}

// childEnv is the environment of a stdio upstream: PATH plus the allow-list.
func childEnv(allow []string) []string {
	env := []string{}
	for _, k := range append([]string{"PATH"}, allow...) {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	return env
}

// refresh lists everything the upstream offers and rebuilds the catalog.
func (u *upstream) refresh(ctx context.Context, c *conn) error {
	l := listing{upstream: u.spec.Name, naming: u.spec.Prefix}
	caps := c.cs.InitializeResult().Capabilities
	if caps == nil {
		caps = &mcp.ServerCapabilities{}
	}
	if caps.Tools != nil {
		for t, err := range c.cs.Tools(ctx, nil) {
			if err != nil {
				return fmt.Errorf("tools/list: %w", err)
			}
			l.tools = append(l.tools, t)
		}
	}
	if caps.Prompts != nil {
		for p, err := range c.cs.Prompts(ctx, nil) {
			if err != nil {
				return fmt.Errorf("prompts/list: %w", err)
			}
			l.prompts = append(l.prompts, p)
		}
	}
	if caps.Resources != nil {
		for r, err := range c.cs.Resources(ctx, nil) {
			if err != nil {
				return fmt.Errorf("resources/list: %w", err)
			}
			l.resources = append(l.resources, r)
		}
		for t, err := range c.cs.ResourceTemplates(ctx, nil) {
			if err != nil {
				return fmt.Errorf("resources/templates/list: %w", err)
			}
			l.templates = append(l.templates, t)
		}
	}
	u.mu.Lock()
	if u.closed {
		u.mu.Unlock()
		return errors.New("upstream removed")
	}
	u.listing = l
	u.mu.Unlock()
	u.m.rebuild()
	return nil
}

// scheduleRefresh re-lists the upstream after a list_changed notification;
// notifications arriving while a refresh runs coalesce into one more.
func (u *upstream) scheduleRefresh() {
	if !u.refreshing.CompareAndSwap(false, true) {
		return
	}
	go func() {
		defer u.refreshing.Store(false)
		u.mu.Lock()
		c := u.control
		u.mu.Unlock()
		if c == nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), u.timeout())
		defer cancel()
		if err := u.refresh(ctx, c); err != nil {
			u.log.Warn("upstream refresh failed", "error", safeError(err))
		}
	}()
}

// stateless reports whether the upstream speaks a sessionless revision.
func (u *upstream) stateless() bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.version >= stateless
}

// currentListing is what the upstream contributes to the catalog: its last
// listing, or nothing while it is down if its spec says to withdraw.
func (u *upstream) currentListing() listing {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.spec.WithdrawWhenDown && u.control == nil && u.card == nil {
		return listing{upstream: u.spec.Name, naming: u.spec.Prefix}
	}
	return u.listing
}

func (u *upstream) status() Status {
	u.mu.Lock()
	defer u.mu.Unlock()
	return Status{
		Spec:       u.spec,
		Transport:  u.tgt.transport,
		Connected:  u.control != nil || u.card != nil || u.spec.Kind == KindAGUI,
		Negotiated: u.version,
		LastError:  u.lastErr,
		Tools:      len(u.listing.tools),
		Sessions:   len(u.sessions),
	}
}

// acquire returns the connection a request from down uses and a func to
// call when the request is over (healthy false drops the connection). A
// downstream session has its own upstream session; a stateless client's
// request holds a pooled connection for its duration.
func (u *upstream) acquire(r *request, down *mcp.ServerSession) (*conn, func(healthy bool), error) {
	if sessionID(down) == "" {
		c, err := u.checkout(r.up, r.caller)
		if err != nil {
			return nil, nil, err
		}
		c.caller.Store(r.caller)
		c.holder.Store(&holder{down: down, ctx: r.down})
		u.setLevel(r.up, c, r.level)
		release := c.track(r.down, r.id)
		return c, func(healthy bool) {
			release()
			c.holder.Store(nil)
			u.checkin(c, healthy)
		}, nil
	}
	c, err := u.connFor(r.up, down, r.caller)
	if err != nil {
		return nil, nil, err
	}
	release := c.track(r.down, r.id)
	return c, func(healthy bool) {
		release()
		if !healthy {
			u.drop(c)
		}
	}, nil
}

// connFor returns down's own upstream session, opening it on first use. Past
// the cap, when no idle session can be closed, the request shares the
// control session.
func (u *upstream) connFor(ctx context.Context, down *mcp.ServerSession, cl *caller) (*conn, error) {
	u.mu.Lock()
	if u.closed {
		u.mu.Unlock()
		return nil, errors.New("upstream removed")
	}
	control := u.control
	if c, ok := u.sessions[down.ID()]; ok {
		u.mu.Unlock()
		return c, nil
	}
	if len(u.sessions) >= u.m.opts.MaxSessions && !u.evictLRULocked() {
		u.mu.Unlock()
		if control == nil {
			return nil, u.unavailable()
		}
		if u.m.opts.Credentials != nil && u.spec.Auth != AuthNone {
			// The control session carries the gateway's own credentials,
			// never a user's: calls cannot share it.
			return nil, errors.New("too many upstream sessions; try again later")
		}
		u.log.Warn("per-session connection cap reached; sharing the control session")
		return control, nil
	}
	u.mu.Unlock()

	c, err := u.dial(ctx, down, false, cl)
	if err != nil {
		return nil, err
	}
	u.mu.Lock()
	if prev, ok := u.sessions[down.ID()]; ok || u.closed {
		u.mu.Unlock()
		c.cs.Close()
		if !ok {
			return nil, errors.New("upstream removed")
		}
		return prev, nil
	}
	u.sessions[down.ID()] = c
	u.mu.Unlock()
	if l, ok := u.m.levels.Load(down.ID()); ok {
		u.setLevel(ctx, c, l.(mcp.LoggingLevel))
	}
	return c, nil
}

func (u *upstream) unavailable() error {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.lastErr != "" {
		return fmt.Errorf("not connected (%s)", u.lastErr)
	}
	return errors.New("not connected")
}

// drop forgets a connection that failed and closes it.
func (u *upstream) drop(c *conn) {
	u.mu.Lock()
	if c.down != nil && u.sessions[c.down.ID()] == c {
		delete(u.sessions, c.down.ID())
	}
	isControl := u.control == c
	u.mu.Unlock()
	c.cs.Close() // for the control session this wakes the supervisor
	if isControl {
		u.log.Warn("upstream control session failed; reconnecting")
	}
	u.recheckSoon()
}

// recheckSoon asks the supervisor to check the upstream now: a connection to
// it failed.
func (u *upstream) recheckSoon() {
	select {
	case u.recheck <- struct{}{}:
	default:
	}
}

func (u *upstream) release(downID string) {
	u.mu.Lock()
	c, ok := u.sessions[downID]
	delete(u.sessions, downID)
	u.mu.Unlock()
	if ok {
		c.cs.Close()
	}
}

// evictIdle closes per-session connections idle since before cutoff.
func (u *upstream) evictIdle(cutoff time.Time) {
	var idle []*conn
	u.mu.Lock()
	for id, c := range u.sessions {
		if c.idleSince(cutoff) {
			delete(u.sessions, id)
			idle = append(idle, c)
		}
	}
	u.pool = slices.DeleteFunc(u.pool, func(c *conn) bool {
		if c.idleSince(cutoff) {
			idle = append(idle, c)
			return true
		}
		return false
	})
	u.mu.Unlock()
	for _, c := range idle {
		go c.cs.Close() // a stuck upstream must not stall the janitor
	}
}

// evictLRULocked closes the least recently used idle per-session connection.
func (u *upstream) evictLRULocked() bool {
	var (
		victimID string
		victim   *conn
	)
	for id, c := range u.sessions {
		if c.idleSince(time.Now()) && (victim == nil || c.used().Before(victim.used())) {
			victimID, victim = id, c
		}
	}
	if victim == nil {
		return false
	}
	delete(u.sessions, victimID)
	go victim.cs.Close()
	return true
}

// shutdown stops the supervisor and closes every connection.
func (u *upstream) shutdown() {
	u.mu.Lock()
	if u.closed {
		u.mu.Unlock()
		return
	}
	u.closed = true
	conns := make([]*conn, 0, len(u.sessions))
	for _, c := range u.sessions {
		conns = append(conns, c)
	}
	conns = append(conns, u.pool...)
	u.sessions, u.pool = map[string]*conn{}, nil
	u.mu.Unlock()
	close(u.stop)
	<-u.done
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Go(func() { c.cs.Close() })
	}
	wg.Wait()
}

// track registers an in-flight request on c and returns its release func.
func (c *conn) track(ctx context.Context, id uint64) func() {
	c.mu.Lock()
	c.calls[id] = ctx
	c.lastUsed = time.Now()
	c.mu.Unlock()
	return func() {
		c.mu.Lock()
		delete(c.calls, id)
		c.lastUsed = time.Now()
		c.mu.Unlock()
	}
}

// latestCall returns the context of the most recent in-flight request, so a
// server-to-client request travels on that call's response stream.
func (c *conn) latestCall() (context.Context, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var (
		best uint64
		ctx  context.Context
	)
	for id, cctx := range c.calls {
		if ctx == nil || id > best {
			best, ctx = id, cctx
		}
	}
	return ctx, ctx != nil
}

func (c *conn) idleSince(cutoff time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.calls) == 0 && !c.lastUsed.After(cutoff)
}

func (c *conn) used() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lastUsed
}

// logWriter turns a stdio upstream's stderr into log lines.
type logWriter struct{ log *slog.Logger }

func (w *logWriter) Write(p []byte) (int, error) {
	w.log.Debug("upstream stderr", "line", string(p))
	return len(p), nil
}
