package upstreams

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/sag-gateway/sag/identity"
)

// The bridge joins two ways of asking a client for input. A 2026-07-28 client
// is stateless: it cannot receive server-to-client requests, and answers an
// input_required result by retrying the call with inputResponses and the
// requestState it was given (multi round-trip requests). A session-based
// upstream asks with elicitation/create or sampling/createMessage on its
// session. So a stateless client's call to a session-based upstream runs on
// an upstream session of its own, checked out of a pool for the call's whole
// life; an input request from the upstream parks the call and becomes an
// input_required result; the client's retry resumes the parked call.

// parkTimeout is how long a parked call waits for the client's retry.
const parkTimeout = 5 * time.Minute

type callerKey struct{}

// WithCaller marks ctx with the principal a downstream request comes from
// and the session-graph node it belongs to. Upstream requests made for it
// carry cred, the credential the pipeline minted for the call (nil: the
// connection's credentials mint one for that principal when it needs one,
// as for a session's initialize), and a parked call resumes only for a
// retry from the same principal.
func WithCaller(ctx context.Context, p identity.Principal, session string, cred *identity.Credential) context.Context {
	return context.WithValue(ctx, callerKey{}, &caller{p: p, session: session, cred: cred})
}

// caller is what WithCaller records.
type caller struct {
	p       identity.Principal
	session string
	cred    *identity.Credential
}

func callerOf(ctx context.Context) *caller {
	c, _ := ctx.Value(callerKey{}).(*caller)
	return c
}

// callerKeyOf is the principal key of ctx's caller, "" without one.
func callerKeyOf(ctx context.Context) string {
	if c := callerOf(ctx); c != nil {
		return c.p.Key()
	}
	return ""
}

// bridged is one call in flight on a bridge connection.
type bridged struct {
	m      *Manager
	u      *upstream
	c      *conn
	caller string                  // only this caller may resume the call
	tool   string                  // and only for this tool
	caps   *mcp.ClientCapabilities // what the client can answer

	events  chan bridgeEvent // input requests from the upstream, then the result
	pending *inputRequest    // the input request the client must answer next
	stateID string           // requestState while parked
	expiry  *time.Timer
	cancel  context.CancelFunc // cancels the upstream call
	done    chan struct{}      // closed when the call is over, either way
	once    sync.Once
	broken  atomic.Bool // the connection failed: close it instead of pooling it
}

type bridgeEvent struct {
	input *inputRequest
	res   *mcp.CallToolResult
	err   error
}

type inputRequest struct {
	key   string
	req   mcp.InputRequest
	reply chan mcp.InputResponse
}

// callBridged runs or resumes a stateless client's call to a session-based
// upstream.
func (m *Manager) callBridged(ctx context.Context, u *upstream, down *mcp.ServerSession, t *Tool, p *mcp.CallToolParamsRaw) (*mcp.CallToolResult, error) {
	r := m.begin(ctx, u, down, p.Meta)
	c, err := u.checkout(r.up, r.caller)
	if err != nil {
		r.end()
		return nil, u.failure(r.down, err)
	}
	c.caller.Store(r.caller)
	if ctx.Err() != nil {
		r.end()
		u.checkin(c, true)
		return nil, ctx.Err()
	}
	// The upstream call outlives this request when it asks for input, so
	// it runs under its own timeout.
	upCtx, cancel := context.WithTimeout(context.Background(), u.timeout())
	b := &bridged{
		m: m, u: u, c: c, caller: callerKeyOf(ctx), tool: t.Name, caps: clientCaps(down),
		events: make(chan bridgeEvent), cancel: cancel, done: make(chan struct{}),
	}
	c.holder.Store(&holder{down: down, ctx: r.down, b: b})
	u.setLevel(r.up, c, r.level)
	go func() {
		defer r.end()
		release := c.track(r.down, r.id)
		res, err := c.cs.CallTool(upCtx, &mcp.CallToolParams{Meta: r.meta, Name: t.Original, Arguments: p.Arguments})
		release()
		var rpcErr *jsonrpc.Error
		switch {
		case err == nil:
		case errors.As(err, &rpcErr) && rpcErr.Code != codeRejectedByTransport:
			err = boundedRPCError(rpcErr) // the upstream's own answer
		default:
			b.broken.Store(upCtx.Err() == nil)
			err = u.failure(upCtx, err)
		}
		select {
		case b.events <- bridgeEvent{res: res, err: err}:
		case <-b.done:
		}
	}()
	return b.await(ctx)
}

// resumeBridged resumes a parked call with the client's answer. The
// requestState is an unguessable id, and it resumes only for the caller and
// the tool it was issued to.
func (m *Manager) resumeBridged(ctx context.Context, t *Tool, p *mcp.CallToolParamsRaw) (*mcp.CallToolResult, error) {
	v, ok := m.parked.LoadAndDelete(p.RequestState)
	if !ok {
		return nil, &jsonrpc.Error{Code: jsonrpc.CodeInvalidParams, Message: "requestState is unknown or expired; call the tool again without it"}
	}
	b := v.(*bridged)
	if b.caller != callerKeyOf(ctx) || b.tool != t.Name {
		m.parked.Store(p.RequestState, b) // not theirs: leave it for its owner
		return nil, &jsonrpc.Error{Code: jsonrpc.CodeInvalidParams, Message: "requestState is unknown or expired; call the tool again without it"}
	}
	b.expiry.Stop()
	in := b.pending
	resp, ok := p.InputResponses[in.key]
	if !ok {
		b.finish()
		return nil, &jsonrpc.Error{Code: jsonrpc.CodeInvalidParams, Message: fmt.Sprintf("inputResponses must answer input request %q", in.key)}
	}
	in.reply <- resp // buffered: the upstream's handler takes it
	return b.await(ctx)
}

// await waits for the upstream's next step: an input request parks the call
// and is returned to the client; a result ends it.
func (b *bridged) await(ctx context.Context) (*mcp.CallToolResult, error) {
	select {
	case ev := <-b.events:
		if ev.input == nil {
			b.finish()
			if ev.err != nil {
				return nil, ev.err
			}
			return cleanResult(ev.res), nil
		}
		b.pending = ev.input
		id := randomID()
		b.stateID = id
		b.expiry = time.AfterFunc(parkTimeout, func() {
			if b.m.parked.CompareAndDelete(id, b) {
				b.finish()
			}
		})
		b.m.parked.Store(id, b)
		return &mcp.CallToolResult{InputRequests: mcp.InputRequestMap{ev.input.key: ev.input.req}, RequestState: b.stateID}, nil
	case <-ctx.Done():
		b.finish() // the client gave up: cancel upstream
		return nil, ctx.Err()
	}
}

// ask is called by the bridge connection's handlers: it hands an input
// request to the call and waits for the client's answer.
func (b *bridged) ask(ctx context.Context, req mcp.InputRequest) (mcp.InputResponse, error) {
	in := &inputRequest{key: "sag-input-" + randomID()[:8], req: req, reply: make(chan mcp.InputResponse, 1)}
	select {
	case b.events <- bridgeEvent{input: in}:
	case <-b.done:
		return nil, errors.New("the client abandoned the call")
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	select {
	case r := <-in.reply:
		return r, nil
	case <-b.done:
		return nil, errors.New("the client abandoned the call")
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// finish ends the call: the upstream call is cancelled if still running and
// the connection goes back to the pool, or is closed if the call did not end
// cleanly.
func (b *bridged) finish() {
	b.once.Do(func() {
		close(b.done)
		b.cancel()
		b.c.holder.Store(nil)
		b.u.checkin(b.c, !b.broken.Load())
	})
}

// parkable returns the call that may park for an input request on this
// pooled connection, if its client can answer the kind of request.
func (c *conn) parkable(can func(*mcp.ClientCapabilities) bool, what string) (*bridged, error) {
	h := c.holder.Load()
	if h == nil || h.b == nil || !can(h.b.caps) {
		return nil, &jsonrpc.Error{Code: jsonrpc.CodeInvalidParams, Message: "client does not support " + what}
	}
	return h.b, nil
}

// pooledElicit is a pooled connection's receiving middleware for
// elicitation/create (it bypasses the SDK's own schema check, as for
// per-session connections).
func (c *conn) pooledElicit(next mcp.MethodHandler) mcp.MethodHandler {
	return func(ctx context.Context, method string, req mcp.Request) (mcp.Result, error) {
		p, ok := req.GetParams().(*mcp.ElicitParams)
		if method != "elicitation/create" || !ok {
			return next(ctx, method, req)
		}
		b, err := c.parkable(func(caps *mcp.ClientCapabilities) bool { return caps.Elicitation != nil }, "elicitation")
		if err != nil {
			return nil, err
		}
		r, err := b.ask(ctx, p)
		if err != nil {
			return nil, err
		}
		er, ok := r.(*mcp.ElicitResult)
		if !ok {
			return nil, &jsonrpc.Error{Code: jsonrpc.CodeInvalidParams, Message: "the client's input response is not an elicitation result"}
		}
		return er, nil
	}
}

// samplingResult converts a 2026-07-28 sampling answer to the 2025 form.
func samplingResult(r mcp.InputResponse) (*mcp.CreateMessageResult, error) {
	switch v := r.(type) {
	case *mcp.CreateMessageResult:
		return v, nil
	case *mcp.CreateMessageWithToolsResult:
		if len(v.Content) != 1 {
			return nil, &jsonrpc.Error{Code: jsonrpc.CodeInvalidParams, Message: "sampling answer must hold exactly one content block"}
		}
		return &mcp.CreateMessageResult{Meta: v.Meta, Content: v.Content[0], Model: v.Model, Role: v.Role, StopReason: v.StopReason}, nil
	}
	return nil, &jsonrpc.Error{Code: jsonrpc.CodeInvalidParams, Message: "the client's input response is not a sampling result"}
}

// clientCaps returns what a downstream client declared it can answer.
func clientCaps(down *mcp.ServerSession) *mcp.ClientCapabilities {
	caps := &mcp.ClientCapabilities{}
	if down == nil {
		return caps
	}
	if ip := down.InitializeParams(); ip != nil && ip.Capabilities != nil {
		caps.Elicitation, caps.Sampling = ip.Capabilities.Elicitation, ip.Capabilities.Sampling
	}
	return caps
}

// checkout takes an idle pooled connection or dials one.
func (u *upstream) checkout(ctx context.Context, cl *caller) (*conn, error) {
	u.mu.Lock()
	if u.closed {
		u.mu.Unlock()
		return nil, errors.New("upstream removed")
	}
	if n := len(u.pool); n > 0 {
		c := u.pool[n-1]
		u.pool = u.pool[:n-1]
		u.busy++
		u.mu.Unlock()
		return c, nil
	}
	if u.busy >= u.m.opts.MaxSessions {
		u.mu.Unlock()
		return nil, errors.New("too many concurrent calls from stateless clients")
	}
	u.busy++
	u.mu.Unlock()
	c, err := u.dial(ctx, nil, true, cl)
	if err != nil {
		u.mu.Lock()
		u.busy--
		u.mu.Unlock()
		return nil, err
	}
	return c, nil
}

// checkin returns a pooled connection; an unhealthy one, or one of a
// removed upstream, is closed instead.
func (u *upstream) checkin(c *conn, healthy bool) {
	c.caller.Store(nil) // the next checkout sets its own
	u.mu.Lock()
	u.busy--
	if u.closed || !healthy {
		u.mu.Unlock()
		u.drop(c)
		return
	}
	u.pool = append(u.pool, c)
	u.mu.Unlock()
}

// randomID returns an unguessable identifier (128 random bits).
func randomID() string { return rand.Text() }

// bridges reports whether a call from down needs the bridge: a stateless
// client that can answer input requests, calling a session-based upstream.
func (u *upstream) bridges(down *mcp.ServerSession) bool {
	if down == nil || down.ID() != "" {
		return false
	}
	caps := clientCaps(down)
	return !u.stateless() && (caps.Elicitation != nil || caps.Sampling != nil)
}
