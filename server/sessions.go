package server

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/sag-gateway/sag/identity"
	"github.com/sag-gateway/sag/internal/lru"
	"github.com/sag-gateway/sag/pipeline"
	"github.com/sag-gateway/sag/policy"
	"github.com/sag-gateway/sag/store"
)

// WorkflowHeader names the workflow a request belongs to (the WSID source for
// MCP clients).
const WorkflowHeader = "Sag-Workflow-Id"

var errSessionRevoked = errors.New("session revoked")

// sessionGraph is the one sessions component (pipeline step 2): it resolves
// a call's place in the session graph, refuses calls on revoked nodes,
// records the nodes of admitted calls, tracks calls in flight for the
// kill-switch and keeps each node's risk. Admission at the HTTP edge, the
// pipeline and the kill-switch all ask it.
//
// Revocations are never forgotten: every revoked node is in memory, loaded
// from the store at start and added by each kill. The nodes known to exist
// are a bounded LRU that evicts one entry at a time; a miss only costs a
// store read.
type sessionGraph struct {
	store    Store
	log      *slog.Logger
	risk     *risk
	inflight *tracker

	now          func() time.Time
	maxWorkflows int
	workflowIdle time.Duration

	known *lru.Cache[string, struct{}] // nodes known to exist and be active

	mu      sync.Mutex
	revoked map[string]struct{}
	kills   map[userKey]time.Time // user kills: tokens issued at or before are refused
	// workflows are the live workflow nodes of each user session (USID →
	// WSID → last use): at most maxWorkflows each, closed when idle.
	workflows map[string]map[string]time.Time
}

// userKey is a user of one issuer.
type userKey struct{ issuer, subject string }

var _ pipeline.SessionGraph = (*sessionGraph)(nil)

// maxKnownSessions bounds the nodes remembered as written (a variable for
// tests).
var maxKnownSessions = 100_000

// sessionOptions are the sessions component's limits and clock.
type sessionOptions struct {
	MaxWorkflows int
	WorkflowIdle time.Duration
	Now          func() time.Time
}

func newSessionGraph(ctx context.Context, st Store, log *slog.Logger, r *risk, inflight *tracker, o sessionOptions) (*sessionGraph, error) {
	ids, err := st.RevokedSessions(ctx)
	if err != nil {
		return nil, err
	}
	kills, err := st.UserKills(ctx)
	if err != nil {
		return nil, err
	}
	s := &sessionGraph{store: st, log: log, risk: r, inflight: inflight, now: o.Now, maxWorkflows: o.MaxWorkflows, workflowIdle: o.WorkflowIdle,
		revoked: make(map[string]struct{}, len(ids)), kills: make(map[userKey]time.Time, len(kills)), known: lru.New[string, struct{}](maxKnownSessions),
		workflows: map[string]map[string]time.Time{}}
	for _, id := range ids {
		s.revoked[id] = struct{}{}
	}
	for _, k := range kills {
		s.kills[userKey{k.Issuer, k.Subject}] = k.Killed
	}
	return s, nil
}

// resolve fills c.Sessions from its principal, workflow and protocol
// session: USID from the token's sid or (iss, sub), WSID from the workflow
// id scoped to the user, ASID from (agent, USID), MSID the protocol session
// or, for stateless requests, the ASID.
func (s *sessionGraph) resolve(c *pipeline.Call) error {
	p := c.Principal
	ids := &c.Sessions
	ids.USID = s.userSession(p)
	ids.ASID = agentSessionOf(p.Agent, ids.USID)
	ids.MSID = c.ProtocolSession
	if ids.MSID == "" {
		ids.MSID = ids.ASID
	}
	if bound := p.Workflow; bound != "" {
		// A run token binds the agent's calls to the run's workflow.
		if c.Workflow != "" && c.Workflow != bound {
			return &pipeline.Error{Code: pipeline.CodeInvalidRequest, Message: "this token is bound to workflow " + bound + "; " + WorkflowHeader + " names another"}
		}
		c.Workflow = bound
	}
	if wf := c.Workflow; wf != "" {
		if !validWorkflowID(wf) {
			return &pipeline.Error{Code: pipeline.CodeInvalidRequest, Message: WorkflowHeader + " must be 1-128 visible ASCII characters"}
		}
		ids.WSID = workflowSession(ids.USID, wf)
	}
	return nil
}

// workflowSession is the WSID: the workflow id, scoped to the user session
// so that another user's workflow of the same name never joins this graph.
func workflowSession(usid, workflow string) string { return derive("w_", usid, workflow) }

// Admit implements pipeline.SessionGraph.
func (s *sessionGraph) Admit(ctx context.Context, c *pipeline.Call) (context.Context, func(), error) {
	if err := s.resolve(c); err != nil {
		return ctx, nil, err
	}
	ids := c.Sessions
	if !s.store.Listening() {
		// On a shared store, a kill another gateway commits now would go
		// unheard: fail closed until listening again.
		return ctx, nil, &pipeline.Error{Code: pipeline.CodeUnavailable, Message: "the gateway cannot hear the other gateways' kills right now; retry shortly"}
	}
	if err := s.check(c.Principal, ids.USID, ids.WSID, ids.ASID, ids.MSID); err != nil {
		return ctx, nil, err
	}
	if err := s.useWorkflow(ids.USID, ids.WSID); err != nil {
		return ctx, nil, err
	}
	if err := s.record(ctx, c.Principal, ids); err != nil {
		return ctx, nil, err
	}
	ctx, done := s.inflight.call(ctx, ids.MSID)
	s.inflight.setNodes(ctx, ids.USID, ids.WSID, ids.ASID, ids.MSID) // the kill-switch finds it by any of them
	return ctx, done, nil
}

// check refuses a principal whose user was killed after its token was
// issued, or a request on a revoked node of ids.
//
// A user kill covers tokens issued at or before it (iat has a resolution of
// seconds: a token of the kill's second is refused; one without iat is
// refused once its user was killed).
func (s *sessionGraph) check(p identity.Principal, ids ...string) error {
	killed, wasKilled := s.killedAt(p)
	if wasKilled && !p.IssuedAt.After(killed) {
		return &pipeline.Error{Code: pipeline.CodeRevoked, Message: "session revoked", Cause: fmt.Errorf("%w: the user was killed after this token was issued", errSessionRevoked)}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range ids {
		if _, ok := s.revoked[id]; ok && id != "" {
			return &pipeline.Error{Code: pipeline.CodeRevoked, Message: "session revoked", Cause: fmt.Errorf("%w: %s", errSessionRevoked, id)}
		}
	}
	return nil
}

// killedAt returns when p's user was last killed.
func (s *sessionGraph) killedAt(p identity.Principal) (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.kills[userKey{p.Issuer, p.User}]
	return t, ok
}

// killUser records a kill of every token of (issuer, subject) issued up to
// now, in the store first.
func (s *sessionGraph) killUser(ctx context.Context, issuer, subject string, now time.Time) error {
	now = now.Truncate(time.Second)
	if err := s.store.PutUserKill(ctx, store.UserKill{Issuer: issuer, Subject: subject, Killed: now}); err != nil {
		return err
	}
	s.noteUserKill(issuer, subject, now)
	return nil
}

// noteUserKill applies a committed user kill in memory (the latest wins).
func (s *sessionGraph) noteUserKill(issuer, subject string, at time.Time) {
	s.mu.Lock()
	if at.After(s.kills[userKey{issuer, subject}]) {
		s.kills[userKey{issuer, subject}] = at
	}
	s.mu.Unlock()
}

// unknownRevoked returns the ids of ids not yet revoked in memory.
func (s *sessionGraph) unknownRevoked(ids []string) map[string]bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]bool{}
	for _, id := range ids {
		if _, ok := s.revoked[id]; !ok {
			out[id] = true
		}
	}
	return out
}

// userSession is the USID: the token's sid, else derived from (iss, sub)
// and, once the user was killed, the time of the kill, so that a token
// issued after a kill starts a new user session.
func (s *sessionGraph) userSession(p identity.Principal) string {
	if p.SessionID != "" {
		return derive("u_", p.Issuer, "sid", p.SessionID)
	}
	if killed, ok := s.killedAt(p); ok {
		return derive("u_", p.Issuer, p.User, "killed", killed.UTC().Format(time.RFC3339))
	}
	return derive("u_", p.Issuer, p.User)
}

// useWorkflow counts a request of workflow wsid of user session usid: a
// user session opens at most maxWorkflows live workflows, so no principal
// can grow the graph without bound.
func (s *sessionGraph) useWorkflow(usid, wsid string) error {
	if wsid == "" {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	live := s.workflows[usid]
	if _, ok := live[wsid]; !ok && len(live) >= s.maxWorkflows {
		return &pipeline.Error{Code: pipeline.CodeInvalidRequest, Message: fmt.Sprintf(
			"too many open workflows: this user session has %d (limits.max_workflows); reuse one, or wait until one has been idle for %s", len(live), s.workflowIdle)}
	}
	if live == nil {
		live = map[string]time.Time{}
		s.workflows[usid] = live
	}
	live[wsid] = s.now()
	return nil
}

// collectWorkflows closes the workflows idle since before now minus the
// idle timeout: they no longer count, and their nodes are marked closed
// (a later request reopens them; risk and audit stay).
func (s *sessionGraph) collectWorkflows(ctx context.Context, now time.Time) int {
	cutoff := now.Add(-s.workflowIdle)
	var idle []string
	s.mu.Lock()
	for usid, live := range s.workflows {
		for wsid, used := range live {
			if used.Before(cutoff) {
				delete(live, wsid)
				s.known.Remove(wsid)
				idle = append(idle, wsid)
			}
		}
		if len(live) == 0 {
			delete(s.workflows, usid)
		}
	}
	s.mu.Unlock()
	for _, id := range idle {
		if err := s.store.SetSessionState(ctx, id, store.StateClosed); err != nil && !errors.Is(err, store.ErrNotFound) {
			s.log.Warn("idle workflow not closed", "wsid", id, "error", err)
		}
	}
	return len(idle)
}

// every runs fn every interval until ctx ends.
func every(ctx context.Context, interval time.Duration, fn func()) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			fn()
		}
	}
}

// revoke records revoked nodes (the kill-switch, after the store committed
// them).
func (s *sessionGraph) revoke(ids ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range ids {
		s.revoked[id] = struct{}{}
		s.known.Remove(id)
	}
}

// record makes sure the call's nodes exist in the store and are active.
func (s *sessionGraph) record(ctx context.Context, p identity.Principal, ids pipeline.Sessions) error {
	nodes := [4]store.Session{
		{ID: ids.USID, Kind: store.KindUser, Subject: p.User, Issuer: p.Issuer},
		{ID: ids.ASID, Kind: store.KindAgent, Parent: ids.USID, Subject: p.User, Agent: p.Agent, Issuer: p.Issuer},
	}
	n := 2
	if ids.WSID != "" {
		nodes[n] = store.Session{ID: ids.WSID, Kind: store.KindWorkflow, Parent: ids.USID, Subject: p.User, Issuer: p.Issuer}
		n++
	}
	if ids.MSID != ids.ASID {
		nodes[n] = store.Session{ID: ids.MSID, Kind: store.KindMCP, Parent: ids.ASID, Subject: p.User, Agent: p.Agent, Issuer: p.Issuer}
		n++
	}
	for _, node := range nodes[:n] {
		if err := s.ensure(ctx, node); err != nil {
			return err
		}
	}
	return nil
}

// ensure makes sure a node exists and is active.
func (s *sessionGraph) ensure(ctx context.Context, n store.Session) error {
	if _, hit := s.known.Get(n.ID); hit {
		return nil
	}
	existing, err := s.store.GetSession(ctx, n.ID)
	switch {
	case err == nil:
		if existing.State == store.StateRevoked {
			s.revoke(n.ID)
			return &pipeline.Error{Code: pipeline.CodeRevoked, Message: "session revoked", Cause: fmt.Errorf("%w: %s", errSessionRevoked, n.ID)}
		}
		if existing.State != store.StateActive {
			existing.State = store.StateActive
			if err := s.store.PutSession(ctx, existing); err != nil {
				return fmt.Errorf("store session: %w", err)
			}
		}
	case errors.Is(err, store.ErrNotFound):
		now := s.now()
		n.State, n.Created, n.Updated = store.StateActive, now, now
		if err := s.store.PutSession(ctx, n); err != nil {
			return fmt.Errorf("store session: %w", err)
		}
	default:
		return fmt.Errorf("load session: %w", err)
	}
	s.known.Add(n.ID, struct{}{})
	return nil
}

// riskNode is the node a call's risk belongs to: its workflow, else its
// MCP session, else (a stateless request) its agent session: never one
// node shared by unrelated clients, so the anonymous stateless requests of
// --auth open, which share everything, earn no risk.
func riskNode(c *pipeline.Call) string {
	ids := c.Sessions
	switch {
	case ids.WSID != "":
		return ids.WSID
	case ids.MSID != ids.ASID:
		return ids.MSID
	case c.Principal.Method == identity.MethodOpen:
		return ""
	}
	return ids.ASID
}

// Risk implements pipeline.SessionGraph.
func (s *sessionGraph) Risk(ctx context.Context, c *pipeline.Call) policy.Session {
	ids := c.Sessions
	out := policy.Session{USID: ids.USID, WSID: ids.WSID, ASID: ids.ASID, MSID: ids.MSID}
	if node := riskNode(c); node != "" {
		out.Risk, out.Counters = s.risk.snapshot(ctx, node)
	}
	return out
}

// Count implements pipeline.SessionGraph: risk is recorded in memory and on
// the node.
func (s *sessionGraph) Count(ctx context.Context, c *pipeline.Call, counter string, n int64) {
	node := riskNode(c)
	if node == "" || counter == "" || n == 0 {
		return
	}
	if err := s.risk.count(ctx, node, counter, n); err != nil {
		s.log.Warn("session risk not recorded", "session", node, "error", err)
	}
}

// closed marks an MCP session closed.
func (s *sessionGraph) closed(id string) {
	s.known.Remove(id)
	// A killed session stays revoked (ErrConflict): nothing to record.
	if err := s.store.SetSessionState(context.Background(), id, store.StateClosed); err != nil &&
		!errors.Is(err, store.ErrNotFound) && !errors.Is(err, store.ErrClosed) && !errors.Is(err, store.ErrConflict) {
		s.log.Warn("session close not recorded", "msid", id, "error", err)
	}
}

// validWorkflowID accepts 1-128 visible ASCII characters: the header names
// a node that is stored, so it is bounded.
func validWorkflowID(s string) bool {
	if s == "" || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// derive returns a stable node id from its kind and parts.
func derive(prefix string, parts ...string) string {
	h := sha256.New()
	for _, p := range parts {
		h.Write([]byte(p))
		h.Write([]byte{0})
	}
	return prefix + hex.EncodeToString(h.Sum(nil)[:12])
}

func agentSessionOf(agent, usid string) string { return derive("a_", agent, usid) }

// protocolSession is the MSID: the MCP session, or for stateless requests
// the ASID. Tokens minted for upstreams hang off it.
func (s *sessionGraph) protocolSession(p identity.Principal, ss *mcp.ServerSession) string {
	if ss != nil && ss.ID() != "" {
		return ss.ID()
	}
	return agentSessionOf(p.Agent, s.userSession(p))
}

// admitted is the check at the HTTP edge, before the SDK opens a session:
// a killed user's token, or a revoked user or agent session, stops here.
func (s *sessionGraph) admitted(p identity.Principal) bool {
	usid := s.userSession(p)
	return s.check(p, usid, agentSessionOf(p.Agent, usid)) == nil
}

// sessionOpened records a new MCP session in the graph.
func (g *Gateway) sessionOpened(ctx context.Context, p identity.Principal, id, workflow string) {
	c := pipeline.Call{Principal: p, ProtocolSession: id, Workflow: workflow}
	err := g.sessions.resolve(&c)
	if err == nil {
		err = g.sessions.record(ctx, p, c.Sessions)
	}
	if err != nil {
		g.log.Warn("session not recorded", "error", err)
	}
	g.metrics.sessions.Inc()
}

// sessionClosed releases an MCP session's upstream connections and marks
// it closed, unless the gateway is shutting down (draining): then it stays
// open in the store, for a client to continue (continue.go).
func (g *Gateway) sessionClosed(id string) {
	g.metrics.sessions.Dec()
	g.upstreams.Release(id)
	if id != "" && !g.front.draining.Load() {
		g.sessions.closed(id)
	}
}
