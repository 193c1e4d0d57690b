package server

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/sag-gateway/sag/store"
	"github.com/sag-gateway/sag/upstreams"
)

// A client of the session-based protocol (2025 revisions) keeps its MCP
// session however its requests are spread over gateways sharing a store,
// and across a restart of its gateway: what the client established at
// initialize is kept in the store (remember), and a gateway that receives a
// request for a session it does not hold continues it (serveContinued) when
// the store knows the session open (not idled out, killed or ended by its
// client) and it belongs to the caller's agent session. A gateway shutting
// down leaves its sessions open in the store. The upstream sessions are opened afresh, as for
// any session on its first call. Anything else gets the SDK's answer to an
// unknown session: 404, and the client starts a new one.

// continuedSession is a session this gateway continues from the store.
type continuedSession struct {
	ss        *mcp.ServerSession
	transport *mcp.StreamableServerTransport
}

// remember stores what the client of ss established at initialize, with
// the log level it set (level, "" until it sets one).
func (f *front) remember(ctx context.Context, ss *mcp.ServerSession, level mcp.LoggingLevel) {
	if ss == nil || ss.ID() == "" || ss.InitializeParams() == nil {
		return
	}
	init, err := json.Marshal(ss.InitializeParams())
	if err == nil {
		err = f.gw.store.PutMCPClient(ctx, store.MCPClient{Session: ss.ID(), Initialize: init, LogLevel: string(level)})
	}
	if err != nil {
		f.gw.log.Warn("MCP session not kept in the store: it cannot continue on another gateway", "msid", ss.ID(), "error", err)
	}
}

// forget drops what the store keeps of the MCP session id, which its client
// ended (DELETE): like the SDK's sessions, it is then unknown everywhere.
func (f *front) forget(ctx context.Context, id string) {
	if err := f.gw.store.ForgetMCPClient(ctx, id); err != nil {
		f.gw.log.Warn("ended MCP session not forgotten: another gateway may continue it", "msid", id, "error", err)
	}
}

// serveContinued serves r when it belongs to a session-based MCP session this
// gateway continues, or can continue from the store, and reports whether
// it did.
func (f *front) serveContinued(w http.ResponseWriter, r *http.Request) bool {
	id := r.Header.Get("Mcp-Session-Id")
	if id == "" {
		return false
	}
	var cs *continuedSession
	if c, ok := f.continued.Load(id); ok {
		cs = c.(*continuedSession)
	} else if _, held := f.watched.Load(id); !held { // else the SDK's own
		cs = f.continueSession(r, id)
	}
	if cs == nil {
		return false
	}
	if r.Method == http.MethodDelete {
		f.forget(r.Context(), id)
		f.continued.Delete(id)
		_ = cs.ss.Close()
		w.WriteHeader(http.StatusNoContent)
		return true
	}
	cs.transport.ServeHTTP(w, r)
	return true
}

// continueSession opens, on this gateway's MCP server, the session id the
// store knows for r's caller, in the state its client established, or
// returns nil.
func (f *front) continueSession(r *http.Request, id string) *continuedSession {
	p, ok := principalOf(r)
	if !ok {
		return nil
	}
	f.continueMu.Lock()
	defer f.continueMu.Unlock()
	if c, ok := f.continued.Load(id); ok {
		return c.(*continuedSession)
	}
	ctx := r.Context()
	node, err := f.gw.store.GetSession(ctx, id)
	if err != nil || node.Kind != store.KindMCP || node.State != store.StateActive ||
		node.Parent != agentSessionOf(p.Agent, f.gw.sessions.userSession(p)) {
		// Unknown, ended (closed: idled out; revoked: killed), or
		// another caller's: to this caller the session does not exist.
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			f.gw.log.Warn("MCP session not continued", "error", err)
		}
		return nil
	}
	client, err := f.gw.store.GetMCPClient(ctx, id)
	var init mcp.InitializeParams
	if err == nil {
		err = json.Unmarshal(client.Initialize, &init)
	}
	if err != nil {
		f.gw.log.Warn("MCP session not continued", "msid", id, "error", err)
		return nil
	}
	if f.open.Load() >= int64(f.gw.cfg.Limits.MaxSessions) {
		return nil
	}
	t := &mcp.StreamableServerTransport{SessionID: id, EventStore: f.events}
	ss, err := f.srv.Connect(context.WithoutCancel(ctx), t, &mcp.ServerSessionOptions{State: &mcp.ServerSessionState{
		InitializeParams:  &init,
		InitializedParams: &mcp.InitializedParams{},
		LogLevel:          mcp.LoggingLevel(client.LogLevel),
	}})
	if err != nil {
		f.gw.log.Warn("MCP session not continued", "msid", id, "error", err)
		return nil
	}
	c := &continuedSession{ss: ss, transport: t}
	f.continued.Store(id, c)
	f.track(ctx, ss, p, r.Header.Get(WorkflowHeader), client.LogLevel != "")
	if client.LogLevel != "" {
		// Upstream sessions opened for it start at this level.
		f.gw.upstreams.SetLoggingLevel(upstreams.WithCaller(ctx, p, id, nil), ss, mcp.LoggingLevel(client.LogLevel))
	}
	go func() {
		_ = ss.Wait()
		f.continued.Delete(id)
	}()
	f.gw.log.Info("MCP session continued from the store", "msid", id)
	return c
}
