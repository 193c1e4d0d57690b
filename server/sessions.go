package server

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/sag-gateway/sag/identity"
	"github.com/sag-gateway/sag/store"
)

// WorkflowHeader names the workflow a request belongs to (the WSID source for
// MCP clients).
const WorkflowHeader = "Sag-Workflow-Id"

var errSessionRevoked = errors.New("session revoked")

// sessionIDs are the session-graph nodes a request belongs to (DESIGN.md,
// "Sessions"): user, workflow (optional), agent and protocol session.
type sessionIDs struct {
	USID, WSID, ASID, MSID string
}

func (s sessionIDs) fill(rec *store.AuditRecord, p identity.Principal) {
	rec.USID, rec.WSID, rec.ASID, rec.MSID = s.USID, s.WSID, s.ASID, s.MSID
	rec.Sub, rec.SpiffeID, rec.Act = p.User, p.Agent, p.Act.String()
	if pr := p.Proof; pr != nil {
		rec.DPoPJTI, rec.DPoPHTU, rec.DPoPHTM, rec.DPoPATH = pr.JTI, pr.HTU, pr.HTM, pr.ATH
	}
	rec.MTLSThumbprint = p.CertThumbprint
}

// sessionCache remembers the graph nodes already written, so the store is
// touched once per node, not once per call. It is only a cache: past
// maxCachedSessions entries it starts over, and the store answers again.
type sessionCache struct {
	known sync.Map // id → store.SessionState
	size  atomic.Int64
}

const maxCachedSessions = 100_000

// revoked reports whether id is known to be revoked.
func (c *sessionCache) revoked(id string) bool {
	st, ok := c.known.Load(id)
	return ok && st.(store.SessionState) == store.StateRevoked
}

func (c *sessionCache) remember(id string, st store.SessionState) {
	if _, loaded := c.known.Swap(id, st); loaded {
		return
	}
	if c.size.Add(1) > maxCachedSessions {
		c.known.Clear()
		c.size.Store(0)
	}
}

func (c *sessionCache) forget(id string) {
	if _, loaded := c.known.LoadAndDelete(id); loaded {
		c.size.Add(-1)
	}
}

// validWorkflowID accepts 1-128 visible ASCII characters: the header names
// a node that is stored, so it is bounded.
func validWorkflowID(s string) bool {
	if len(s) > 128 {
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

// userSession is the USID: the token's sid, else derived from (iss, sub).
func userSession(p identity.Principal) string {
	if p.SessionID != "" {
		return derive("u_", p.Issuer, "sid", p.SessionID)
	}
	return derive("u_", p.Issuer, p.User)
}

// agentSession is the ASID: (agent identity, USID).
func agentSession(p identity.Principal) string { return agentSessionOf(p.Agent, userSession(p)) }

func agentSessionOf(agent, usid string) string { return derive("a_", agent, usid) }

// protocolSession is the MSID: the MCP session, or for stateless requests
// the ASID. Tokens minted for upstreams hang off it.
func protocolSession(p identity.Principal, ss *mcp.ServerSession) string {
	if ss != nil && ss.ID() != "" {
		return ss.ID()
	}
	return agentSession(p)
}

// session resolves a request's place in the session graph and refuses it if
// any node on its path has been revoked.
func (g *Gateway) session(ctx context.Context, p identity.Principal, ss *mcp.ServerSession, extra *mcp.RequestExtra) (sessionIDs, error) {
	var ids sessionIDs
	ids.USID = userSession(p)
	ids.ASID = agentSessionOf(p.Agent, ids.USID)
	// WSID: the workflow header, scoped to the user so that another user's
	// workflow id never joins their graph.
	if wf := header(extra).Get(WorkflowHeader); wf != "" {
		if !validWorkflowID(wf) {
			return ids, &jsonrpc.Error{Code: jsonrpc.CodeInvalidRequest, Message: WorkflowHeader + " must be 1-128 visible ASCII characters"}
		}
		ids.WSID = derive("w_", ids.USID, wf)
	}
	ids.MSID = protocolSession(p, ss)

	nodes := []store.Session{
		{ID: ids.USID, Kind: store.KindUser, Subject: p.User},
		{ID: ids.ASID, Kind: store.KindAgent, Parent: ids.USID, Subject: p.User, Agent: p.Agent},
	}
	if ids.WSID != "" {
		nodes = append(nodes, store.Session{ID: ids.WSID, Kind: store.KindWorkflow, Parent: ids.USID, Subject: p.User})
	}
	if ids.MSID != ids.ASID {
		nodes = append(nodes, store.Session{ID: ids.MSID, Kind: store.KindMCP, Parent: ids.ASID, Subject: p.User, Agent: p.Agent})
	}
	for _, n := range nodes {
		if err := g.ensureSession(ctx, n); err != nil {
			return ids, err
		}
	}
	return ids, nil
}

// ensureSession makes sure a node exists and is active.
func (g *Gateway) ensureSession(ctx context.Context, n store.Session) error {
	if st, ok := g.sessions.known.Load(n.ID); ok {
		if st.(store.SessionState) != store.StateActive {
			return fmt.Errorf("%w: %s", errSessionRevoked, n.ID)
		}
		return nil
	}
	existing, err := g.store.GetSession(ctx, n.ID)
	switch {
	case err == nil:
		if existing.State == store.StateRevoked {
			g.sessions.remember(n.ID, existing.State)
			return fmt.Errorf("%w: %s", errSessionRevoked, n.ID)
		}
		if existing.State != store.StateActive {
			existing.State = store.StateActive
			if err := g.store.PutSession(ctx, existing); err != nil {
				return fmt.Errorf("store session: %w", err)
			}
		}
	case errors.Is(err, store.ErrNotFound):
		now := time.Now()
		n.State, n.Created, n.Updated = store.StateActive, now, now
		if err := g.store.PutSession(ctx, n); err != nil {
			return fmt.Errorf("store session: %w", err)
		}
	default:
		return fmt.Errorf("load session: %w", err)
	}
	g.sessions.remember(n.ID, store.StateActive)
	return nil
}

// sessionOpened records a new MCP session in the graph.
func (g *Gateway) sessionOpened(ctx context.Context, p identity.Principal, ss *mcp.ServerSession, extra *mcp.RequestExtra) {
	if _, err := g.session(ctx, p, ss, extra); err != nil {
		g.log.Warn("session not recorded", "error", err)
	}
	g.metrics.sessions.Inc()
}

// sessionClosed marks an MCP session closed and releases its upstream
// connections.
func (g *Gateway) sessionClosed(id string) {
	g.metrics.sessions.Dec()
	g.upstreams.Release(id)
	if id == "" {
		return
	}
	g.sessions.forget(id)
	if err := g.store.SetSessionState(context.Background(), id, store.StateClosed); err != nil && !errors.Is(err, store.ErrNotFound) && !errors.Is(err, store.ErrClosed) {
		g.log.Warn("session close not recorded", "msid", id, "error", err)
	}
}
