package upstreams

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/sag-gateway/sag/identity"
	"github.com/sag-gateway/sag/internal/lru"
)

// Credentials authenticate SAG to upstreams. Apply is called for every
// outgoing HTTP request with what it is for: the upstream, and the principal
// and session it is made for (none for the gateway's own control traffic).
// The identity package implements it; nil sends no credentials.
type Credentials interface {
	Apply(req *http.Request, o identity.OnBehalfOf) error
}

// Options configure a Manager.
type Options struct {
	// Naming is the default naming mode (NamingAlways when empty).
	Naming Naming
	// CallTimeout bounds each forwarded request unless a Spec overrides it.
	CallTimeout time.Duration
	// IdleTimeout closes per-session upstream connections unused this long.
	IdleTimeout time.Duration
	// MaxSessions caps the per-session connections of one upstream; past it
	// the least recently used idle one is closed, or the call shares the
	// upstream's common session.
	MaxSessions int
	// HTTPClient carries HTTP and SSE traffic; credentials are added per request.
	HTTPClient *http.Client
	// MTLS, when set, is the client TLS configuration (the gateway's
	// X.509-SVID, the upstream verified against the trust bundle) of
	// upstreams with Auth AuthMTLS.
	MTLS *tls.Config
	// Credentials may be nil.
	Credentials Credentials
	// Logger receives connection events; never tokens.
	Logger *slog.Logger
	// OnChange is called, outside any lock, after the catalog changed.
	OnChange func(*Catalog)
	// OnResourceUpdated delivers an upstream's notifications/resources/updated
	// to one downstream session (nil: to every subscriber).
	OnResourceUpdated func(down *mcp.ServerSession, p *mcp.ResourceUpdatedNotificationParams)
	// Version is reported to upstreams in clientInfo.
	Version string
}

// Manager owns the registered upstreams, their connections and the catalog.
// It is safe for concurrent use.
type Manager struct {
	opts Options
	mtls *http.Client // for AuthMTLS upstreams; nil without Options.MTLS

	mu    sync.Mutex
	ups   map[string]*upstream
	order []*upstream // registration order decides collisions

	catalog  atomic.Pointer[Catalog]
	progress sync.Map // upstream-facing token (string) → *progressRoute
	parked   sync.Map // requestState (string) → *bridged
	// agentTasks are the A2A agents' task and context ids, by agent, with
	// the principal each was given to.
	agentTasks *lru.Cache[string, string]
	levels     sync.Map // downstream session id → mcp.LoggingLevel
	// sessionMeta is the _meta of a raw call with nothing of the
	// caller's, per 2026-07-28-or-later revision (raw.go).
	sessionMeta sync.Map
	seq         atomic.Uint64

	closing chan struct{}
	wg      sync.WaitGroup
}

// New returns a Manager with no upstreams. Close releases everything it starts.
func New(opts Options) *Manager {
	if opts.Naming == "" {
		opts.Naming = NamingAlways
	}
	if opts.CallTimeout <= 0 {
		opts.CallTimeout = 60 * time.Second
	}
	if opts.IdleTimeout <= 0 {
		opts.IdleTimeout = 5 * time.Minute
	}
	if opts.MaxSessions <= 0 {
		opts.MaxSessions = 256
	}
	if opts.HTTPClient == nil {
		opts.HTTPClient = &http.Client{Transport: newTransport(opts.MaxSessions)}
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Version == "" {
		opts.Version = "dev"
	}
	m := &Manager{opts: opts, ups: map[string]*upstream{}, closing: make(chan struct{}), agentTasks: lru.New[string, string](maxAgentTasks)}
	if opts.MTLS != nil {
		t := newTransport(opts.MaxSessions)
		t.TLSClientConfig = opts.MTLS
		m.mtls = &http.Client{Transport: t}
	}
	m.catalog.Store(buildCatalog(nil, opts.Naming))
	m.wg.Add(1)
	go m.janitor()
	return m
}

// newTransport returns the default upstream transport. Every per-session
// connection to an upstream has its own requests in flight, all to the same
// host: the pool keeps an idle keep-alive connection for each of them
// (net/http keeps only 2 per host by default), so that concurrent calls reuse
// connections instead of dialing one per call. Idle ones close after
// IdleConnTimeout (90 s) as usual.
func newTransport(maxSessions int) *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConnsPerHost = maxSessions
	t.MaxIdleConns = 0 // no limit across upstreams; each host's is above
	return t
}

// Catalog returns the current catalog snapshot.
func (m *Manager) Catalog() *Catalog { return m.catalog.Load() }

// Report is what registering an upstream found.
type Report struct {
	// Conflicts lists this upstream's tools, prompts or resources left out of
	// the catalog, with the reason.
	Conflicts []string `json:"conflicts,omitempty"`
	// ConnectError is set when the upstream could not be reached yet; SAG keeps
	// retrying with backoff.
	ConnectError string `json:"connect_error,omitempty"`
}

// ErrExists is returned when registering a name that is taken.
var ErrExists = errors.New("upstream already registered")

// ErrUnknown is returned for an upstream name that is not registered.
var ErrUnknown = errors.New("upstream not registered")

// Add registers an upstream and waits (bounded by ctx) for its first
// connection attempt, so that collisions are reported at registration.
func (m *Manager) Add(ctx context.Context, spec Spec) (Report, error) {
	if err := spec.Validate(); err != nil {
		return Report{}, err
	}
	tgt, _ := parseTarget(spec.URL)
	supervise := (*upstream).supervise
	switch spec.Kind {
	case KindA2A:
		tgt.transport, tgt.endpoint = TransportA2A, strings.TrimRight(tgt.endpoint, "/")
		supervise = (*upstream).superviseAgent
	case KindAGUI:
		tgt.transport = TransportAGUI
		supervise = (*upstream).superviseRunEndpoint
	}
	u := newUpstream(m, spec, tgt)
	m.mu.Lock()
	select {
	case <-m.closing:
		m.mu.Unlock()
		return Report{}, errors.New("upstreams: manager closed")
	default:
	}
	if _, dup := m.ups[spec.Name]; dup {
		m.mu.Unlock()
		return Report{}, fmt.Errorf("%w: %s", ErrExists, spec.Name)
	}
	m.ups[spec.Name] = u
	m.order = append(m.order, u)
	m.wg.Add(1)
	m.mu.Unlock()
	go func() {
		defer m.wg.Done()
		supervise(u)
	}()

	select {
	case <-u.firstTry:
	case <-ctx.Done():
	}
	var rep Report
	st := u.status()
	if !st.Connected {
		rep.ConnectError = st.LastError
		if rep.ConnectError == "" {
			rep.ConnectError = "still connecting"
		}
	}
	for _, c := range m.Catalog().Conflicts {
		if strings.Contains(c, " from upstream "+spec.Name+" ") {
			rep.Conflicts = append(rep.Conflicts, c)
		}
	}
	return rep, nil
}

// Remove unregisters an upstream, closes its connections (and processes) and
// drops its entries from the catalog.
func (m *Manager) Remove(name string) error {
	m.mu.Lock()
	u, ok := m.ups[name]
	if ok {
		delete(m.ups, name)
		m.order = slices.DeleteFunc(m.order, func(x *upstream) bool { return x == u })
	}
	m.mu.Unlock()
	if !ok {
		return fmt.Errorf("%w: %s", ErrUnknown, name)
	}
	u.shutdown()
	m.rebuild()
	return nil
}

// Specs returns the registered upstreams in registration order.
func (m *Manager) Specs() []Spec {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Spec, len(m.order))
	for i, u := range m.order {
		out[i] = u.spec
	}
	return out
}

// Spec returns the spec of one registered upstream.
func (m *Manager) Spec(name string) (Spec, bool) {
	u, ok := m.lookup(name)
	if !ok {
		return Spec{}, false
	}
	return u.spec, true
}

// Status is an upstream's health as the admin API and /metrics report it.
type Status struct {
	Spec
	Transport Transport `json:"transport"`
	Connected bool      `json:"connected"`
	// Negotiated is the protocol version negotiated with the upstream.
	Negotiated string `json:"negotiated_protocol_version,omitempty"`
	LastError  string `json:"last_error,omitempty"`
	Tools      int    `json:"tools"`
	Sessions   int    `json:"sessions"`
}

// Statuses returns each upstream's status in registration order.
func (m *Manager) Statuses() []Status {
	m.mu.Lock()
	ups := slices.Clone(m.order)
	m.mu.Unlock()
	out := make([]Status, len(ups))
	for i, u := range ups {
		out[i] = u.status()
	}
	return out
}

// Release closes every upstream connection held for a downstream session; the
// front calls it when that session ends.
func (m *Manager) Release(downID string) {
	if downID == "" {
		return
	}
	m.levels.Delete(downID)
	for _, u := range m.snapshot() {
		u.release(downID)
	}
}

// Close stops all supervisors and closes every connection and child process.
func (m *Manager) Close() error {
	m.mu.Lock()
	select {
	case <-m.closing:
		m.mu.Unlock()
		return nil
	default:
	}
	close(m.closing)
	ups := m.order
	m.ups, m.order = map[string]*upstream{}, nil
	m.mu.Unlock()
	var wg sync.WaitGroup
	for _, u := range ups {
		wg.Go(u.shutdown)
	}
	wg.Wait()
	m.wg.Wait()
	return nil
}

func (m *Manager) snapshot() []*upstream {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.order)
}

func (m *Manager) lookup(name string) (*upstream, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	u, ok := m.ups[name]
	return u, ok
}

// rebuild recomputes the catalog from every upstream's last listing and
// reports a change.
func (m *Manager) rebuild() {
	m.mu.Lock()
	ls := make([]listing, 0, len(m.order))
	for _, u := range m.order {
		ls = append(ls, u.currentListing())
	}
	c := buildCatalog(ls, m.opts.Naming)
	m.catalog.Store(c)
	m.mu.Unlock()
	for _, conflict := range c.Conflicts {
		m.opts.Logger.Warn("catalog conflict", "detail", conflict)
	}
	if m.opts.OnChange != nil {
		m.opts.OnChange(c)
	}
}

// janitor closes idle per-session connections.
func (m *Manager) janitor() {
	defer m.wg.Done()
	every := min(m.opts.IdleTimeout/2, 30*time.Second)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-m.closing:
			return
		case now := <-t.C:
			for _, u := range m.snapshot() {
				u.evictIdle(now.Add(-m.opts.IdleTimeout))
			}
		}
	}
}
