package upstreams

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/sag-gateway/sag/identity"
)

// Error is a failure to get an answer from an upstream: not connected, timed
// out, or the connection broke. The front turns it into a tool error; its
// text is safe to show a client (no URLs, no credentials).
type Error struct {
	Upstream string
	Msg      string
}

func (e *Error) Error() string { return "upstream " + e.Upstream + ": " + e.Msg }

// progressRoute sends an upstream's progress for one forwarded request to the
// downstream client that asked for it, under the client's own token.
type progressRoute struct {
	upstream *upstream
	ctx      context.Context
	down     *mcp.ServerSession
	token    any
}

// codeRejectedByTransport is the code of the go-sdk's jsonrpc2.ErrRejected,
// which its client transports wrap around failures to deliver a request
// (connection refused or reset, an HTTP error status): no answer from the
// upstream, not one to pass on.
const codeRejectedByTransport = -32005

// progressGrace keeps a route after its call returns: the last progress
// notification can arrive after the result.
const progressGrace = 2 * time.Second

// request is the plumbing of one forwarded request.
type request struct {
	id uint64
	// down is the downstream request's context (bounded by the upstream's
	// timeout): notifications and server-to-client requests sent under it
	// travel back on the client's own response stream.
	down context.Context
	// up carries the same deadline and cancellation but none of down's
	// values: the go-sdk keys the protocol version by context value, so a
	// downstream request's version would otherwise leak into the upstream's.
	up    context.Context
	meta  mcp.Meta
	level mcp.LoggingLevel // the client's log level, "" if none
	// caller is who the request is made for (WithCaller), nil for none.
	caller *caller
	end    func()
}

// begin prepares a request to u on behalf of down: timeout, progress token
// re-mapping, the session's log level for stateless upstreams.
func (m *Manager) begin(ctx context.Context, u *upstream, down *mcp.ServerSession, meta mcp.Meta) *request {
	downCtx, cancel := context.WithTimeout(ctx, u.timeout())
	up, stop := isolate(downCtx)
	r := &request{id: m.seq.Add(1), down: downCtx, up: up, meta: upstreamMeta(meta), caller: callerOf(ctx)}
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		// The upstream continues the gateway's trace (W3C trace context in
		// _meta, as MCP carries it), not the caller's.
		carrier := propagation.MapCarrier{}
		propagation.TraceContext{}.Inject(ctx, carrier)
		for k, v := range carrier {
			r.meta[k] = v
		}
	}
	var upTok string
	if tok, ok := meta["progressToken"]; ok && down != nil {
		upTok = "sag-" + strconv.FormatUint(r.id, 36)
		m.progress.Store(upTok, &progressRoute{upstream: u, ctx: downCtx, down: down, token: tok})
		r.meta["progressToken"] = upTok
	}
	// The log level the client asked for: per request (stateless clients)
	// or per session (logging/setLevel). Stateless upstreams take it per
	// request; session-based ones per session (applyLevel).
	if l, ok := m.levels.Load(sessionID(down)); ok {
		r.level = l.(mcp.LoggingLevel)
	} else if l, ok := meta[mcp.MetaKeyLogLevel].(string); ok {
		r.level = mcp.LoggingLevel(l)
	}
	delete(r.meta, mcp.MetaKeyLogLevel)
	if r.level != "" && u.stateless() {
		r.meta[mcp.MetaKeyLogLevel] = r.level
	}
	r.end = func() {
		stop()
		cancel()
		if upTok != "" {
			time.AfterFunc(progressGrace, func() { m.progress.Delete(upTok) })
		}
	}
	return r
}

// isolate returns a context that is cancelled when ctx ends and carries
// none of its values. It has no deadline of its own, so that a timeout is
// always seen first on ctx, which classifies errors.
func isolate(ctx context.Context) (context.Context, context.CancelFunc) {
	up, cancel := context.WithCancel(context.Background())
	stop := context.AfterFunc(ctx, cancel)
	return up, func() { stop(); cancel() }
}

func sessionID(down *mcp.ServerSession) string {
	if down == nil {
		return ""
	}
	return down.ID()
}

// forward runs one request against the upstream named by name on the
// connection for down, with the upstream's timeout, progress re-mapping,
// in-flight tracking and one reconnect when the upstream lost the session.
// do sends it on c, under ctx (r.up), with r.meta as its _meta.
func forward[R any](ctx context.Context, m *Manager, name string, down *mcp.ServerSession, meta mcp.Meta,
	do func(ctx context.Context, r *request, c *conn) (R, error)) (R, error) {
	var zero R
	u, ok := m.lookup(name)
	if !ok {
		return zero, &Error{Upstream: name, Msg: "not registered"}
	}
	r := m.begin(ctx, u, down, meta)
	defer r.end()

	for attempt := 0; ; attempt++ {
		c, done, err := u.acquire(r, down)
		if err != nil {
			u.recheckSoon()
			return zero, u.failure(r.down, err)
		}
		res, err := do(r.up, r, c)
		if err == nil {
			done(true)
			return res, nil
		}
		var rpcErr *jsonrpc.Error
		if errors.As(err, &rpcErr) && rpcErr.Code != codeRejectedByTransport {
			done(true)
			return zero, boundedRPCError(rpcErr) // the upstream's own answer: pass it on
		}
		if r.down.Err() != nil {
			// The caller gave up or the call timed out: the connection is
			// not at fault, and it may be shared with other sessions.
			done(true)
			return zero, u.failure(r.down, err)
		}
		done(false)
		// A 404 means the upstream forgot the session before handling the
		// request, so one retry on a fresh session cannot run it twice.
		if attempt == 0 && errors.Is(err, mcp.ErrSessionMissing) {
			continue
		}
		return zero, u.failure(r.down, err)
	}
}

// maxErrorData bounds the data of an upstream's JSON-RPC error passed on to
// a client; larger data is dropped.
const maxErrorData = 8 << 10

// boundedRPCError copies an upstream's JSON-RPC error for the client: its
// code, its message cut to one short line with URLs redacted (it also goes
// into the audit log), and its data when small.
func boundedRPCError(e *jsonrpc.Error) *jsonrpc.Error {
	out := &jsonrpc.Error{Code: e.Code, Message: safeError(errors.New(e.Message))}
	if len(e.Data) <= maxErrorData {
		out.Data = e.Data
	}
	return out
}

// failure turns a transport-level error into an *Error with a clear message.
func (u *upstream) failure(ctx context.Context, err error) error {
	switch {
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return &Error{Upstream: u.spec.Name, Msg: fmt.Sprintf("no answer within %s", u.timeout())}
	case errors.Is(ctx.Err(), context.Canceled):
		return context.Canceled
	}
	return &Error{Upstream: u.spec.Name, Msg: "unavailable: " + safeError(err)}
}

// CallTool forwards a tools/call for a catalog tool.
func (m *Manager) CallTool(ctx context.Context, down *mcp.ServerSession, t *Tool, p *mcp.CallToolParamsRaw) (*mcp.CallToolResult, error) {
	if p.RequestState != "" {
		if _, ok := m.parked.Load(p.RequestState); ok {
			return m.resumeBridged(ctx, t, p)
		}
	}
	if u, ok := m.lookup(t.Upstream); ok && u.spec.Kind == KindA2A {
		return m.callAgent(ctx, u, down, t, p)
	} else if ok && u.bridges(down) {
		return m.callBridged(ctx, u, down, t, p)
	}
	res, err := forward(ctx, m, t.Upstream, down, p.Meta, func(ctx context.Context, r *request, c *conn) (*mcp.CallToolResult, error) {
		return c.cs.CallTool(ctx, &mcp.CallToolParams{
			Meta:           r.meta,
			Name:           t.Original,
			Arguments:      p.Arguments,
			InputResponses: p.InputResponses,
			RequestState:   p.RequestState,
		})
	})
	if err != nil {
		return nil, err
	}
	return cleanResult(res), nil
}

// cleanResult copies an upstream's tool result without what belongs to the
// upstream's connection: reserved _meta keys and the result type, which the
// front sets for each client's protocol generation.
func cleanResult(res *mcp.CallToolResult) *mcp.CallToolResult {
	stripReserved(res.Meta)
	return &mcp.CallToolResult{
		Meta: res.Meta, Content: res.Content, StructuredContent: res.StructuredContent, IsError: res.IsError,
		InputRequests: res.InputRequests, RequestState: res.RequestState,
	}
}

// GetPrompt forwards a prompts/get for a catalog prompt.
func (m *Manager) GetPrompt(ctx context.Context, down *mcp.ServerSession, p *Prompt, params *mcp.GetPromptParams) (*mcp.GetPromptResult, error) {
	res, err := forward(ctx, m, p.Upstream, down, params.Meta, func(ctx context.Context, r *request, c *conn) (*mcp.GetPromptResult, error) {
		q := *params
		q.Meta, q.Name = r.meta, p.Original
		return c.cs.GetPrompt(ctx, &q)
	})
	if err != nil {
		return nil, err
	}
	stripReserved(res.Meta)
	return res, nil
}

// ReadResource forwards a resources/read to the upstream serving the URI.
func (m *Manager) ReadResource(ctx context.Context, down *mcp.ServerSession, upstream string, params *mcp.ReadResourceParams) (*mcp.ReadResourceResult, error) {
	res, err := forward(ctx, m, upstream, down, params.Meta, func(ctx context.Context, r *request, c *conn) (*mcp.ReadResourceResult, error) {
		q := *params
		q.Meta = r.meta
		return c.cs.ReadResource(ctx, &q)
	})
	if err != nil {
		return nil, err
	}
	stripReserved(res.Meta)
	return res, nil
}

// Complete forwards a completion/complete for a prompt or resource template.
func (m *Manager) Complete(ctx context.Context, down *mcp.ServerSession, upstream string, params *mcp.CompleteParams) (*mcp.CompleteResult, error) {
	return forward(ctx, m, upstream, down, params.Meta, func(ctx context.Context, r *request, c *conn) (*mcp.CompleteResult, error) {
		q := *params
		q.Meta = r.meta
		return c.cs.Complete(ctx, &q)
	})
}

// Subscribe forwards resources/subscribe on down's connection.
func (m *Manager) Subscribe(ctx context.Context, down *mcp.ServerSession, upstream, uri string) error {
	_, err := forward(ctx, m, upstream, down, nil, func(ctx context.Context, _ *request, c *conn) (struct{}, error) {
		return struct{}{}, c.cs.Subscribe(ctx, &mcp.SubscribeParams{URI: uri})
	})
	return err
}

// Unsubscribe forwards resources/unsubscribe on down's connection.
func (m *Manager) Unsubscribe(ctx context.Context, down *mcp.ServerSession, upstream, uri string) error {
	_, err := forward(ctx, m, upstream, down, nil, func(ctx context.Context, _ *request, c *conn) (struct{}, error) {
		return struct{}{}, c.cs.Unsubscribe(ctx, &mcp.UnsubscribeParams{URI: uri})
	})
	return err
}

// SetLoggingLevel forwards logging/setLevel for down: session-based
// upstreams get it on down's connections (now, or when one opens); stateless
// ones get the level in the _meta of each later request.
func (m *Manager) SetLoggingLevel(ctx context.Context, down *mcp.ServerSession, level mcp.LoggingLevel) {
	id := sessionID(down)
	if id == "" {
		return // a stateless client sends its level with each request
	}
	m.levels.Store(id, level)
	for _, u := range m.snapshot() {
		u.mu.Lock()
		c, ok := u.sessions[id]
		u.mu.Unlock()
		if ok {
			r := m.begin(ctx, u, down, nil)
			release := c.track(r.down, r.id)
			u.setLevel(r.up, c, level)
			release()
			r.end()
		}
	}
}

// forwardProgress returns the progress handler of a connection to u: it
// delivers a notification to the client that made the call, under the
// client's token. Routes are per upstream, so no upstream can send progress
// into another's calls.
func (m *Manager) forwardProgress(u *upstream) func(context.Context, *mcp.ProgressNotificationClientRequest) {
	return func(_ context.Context, req *mcp.ProgressNotificationClientRequest) {
		tok, ok := req.Params.ProgressToken.(string)
		if !ok {
			return
		}
		v, ok := m.progress.Load(tok)
		if !ok || v.(*progressRoute).upstream != u {
			return
		}
		r := v.(*progressRoute)
		p := *req.Params
		p.ProgressToken = r.token
		ctx := r.ctx
		if ctx.Err() != nil {
			ctx = context.Background() // the call ended: use the session's own stream
		}
		_ = r.down.NotifyProgress(ctx, &p)
	}
}

// bindHandlers routes a per-session connection's server-to-client traffic to
// its downstream session. Requests are sent under the context of the latest
// in-flight call, so they travel on that call's response stream, and are
// cancelled when either side gives up.
func (c *conn) bindHandlers(opts *mcp.ClientOptions) {
	down := c.down
	caps := &mcp.ClientCapabilities{}
	if ip := down.InitializeParams(); ip != nil && ip.Capabilities != nil {
		caps.Elicitation = ip.Capabilities.Elicitation
		caps.Sampling = ip.Capabilities.Sampling
	}
	opts.Capabilities = caps
	if caps.Sampling != nil {
		opts.CreateMessageHandler = func(ctx context.Context, req *mcp.CreateMessageRequest) (*mcp.CreateMessageResult, error) {
			ctx, cancel := c.downstreamContext(ctx)
			defer cancel()
			return down.CreateMessage(ctx, req.Params)
		}
	}
	opts.LoggingMessageHandler = func(ctx context.Context, req *mcp.LoggingMessageRequest) {
		ctx, cancel := c.downstreamContext(ctx)
		defer cancel()
		if err := down.Log(ctx, req.Params); err != nil && ctx.Err() == nil {
			_ = down.Log(context.Background(), req.Params) // the call ended: the session's own stream
		}
	}
}

// bindPooled installs the handlers of a pooled connection, which serves one
// stateless client's request at a time: logging goes to that request, input
// requests to its parked call (bridge.go).
func (c *conn) bindPooled(opts *mcp.ClientOptions) {
	opts.Capabilities = &mcp.ClientCapabilities{Elicitation: &mcp.ElicitationCapabilities{}, Sampling: &mcp.SamplingCapabilities{}}
	opts.LoggingMessageHandler = func(_ context.Context, req *mcp.LoggingMessageRequest) {
		if h := c.holder.Load(); h != nil && h.down != nil && h.ctx.Err() == nil {
			_ = h.down.Log(h.ctx, req.Params)
		}
	}
	opts.CreateMessageHandler = func(ctx context.Context, req *mcp.CreateMessageRequest) (*mcp.CreateMessageResult, error) {
		b, err := c.parkable(func(caps *mcp.ClientCapabilities) bool { return caps.Sampling != nil }, "sampling")
		if err != nil {
			return nil, err
		}
		r, err := b.ask(ctx, req.Params)
		if err != nil {
			return nil, err
		}
		return samplingResult(r)
	}
}

// elicitPassThrough forwards elicitation/create to the downstream client
// untouched: the client that answers validates it, and the SDK's own check
// refuses some valid 2025-11-25 schema forms.
func (c *conn) elicitPassThrough(next mcp.MethodHandler) mcp.MethodHandler {
	return func(ctx context.Context, method string, req mcp.Request) (mcp.Result, error) {
		p, ok := req.GetParams().(*mcp.ElicitParams)
		if method != "elicitation/create" || !ok {
			return next(ctx, method, req)
		}
		ctx, cancel := c.downstreamContext(ctx)
		defer cancel()
		return c.down.Elicit(ctx, p)
	}
}

// downstreamContext derives a context for a request to the downstream client:
// it carries the latest in-flight call (to reach its response stream) and is
// cancelled when the upstream cancels its request or the call ends.
func (c *conn) downstreamContext(upCtx context.Context) (context.Context, context.CancelFunc) {
	base, ok := c.latestCall()
	if !ok {
		base = context.Background()
	}
	ctx, cancel := context.WithCancel(base)
	stop := context.AfterFunc(upCtx, cancel)
	return ctx, func() { stop(); cancel() }
}

// setLevel sets a session-based upstream connection's log level, unless it
// is already that level.
func (u *upstream) setLevel(ctx context.Context, c *conn, level mcp.LoggingLevel) {
	if level == "" || u.stateless() {
		return
	}
	c.mu.Lock()
	same := c.level == level
	c.level = level
	c.mu.Unlock()
	if same {
		return
	}
	if caps := c.cs.InitializeResult().Capabilities; caps == nil || caps.Logging == nil {
		return
	}
	if err := c.cs.SetLoggingLevel(ctx, &mcp.SetLoggingLevelParams{Level: level}); err != nil {
		u.log.Debug("logging/setLevel failed", "error", safeError(err))
	}
}

// upstreamMeta copies a downstream request's _meta for the upstream, without
// the protocol's reserved keys: they describe the client's connection (its
// protocol version, its capabilities), not the gateway's. The log level is
// kept; begin decides whether the upstream gets it.
func upstreamMeta(m mcp.Meta) mcp.Meta {
	out := make(mcp.Meta, len(m))
	for k, v := range m {
		if !strings.HasPrefix(k, reservedMeta) || k == mcp.MetaKeyLogLevel {
			out[k] = v
		}
	}
	return out
}

// reservedMeta prefixes the _meta keys the MCP specification reserves.
const reservedMeta = "io.modelcontextprotocol/"

// stripReserved removes the protocol's reserved _meta keys from an upstream
// result: they describe the upstream's connection, not the gateway's.
func stripReserved(m mcp.Meta) {
	for k := range m {
		if strings.HasPrefix(k, reservedMeta) {
			delete(m, k)
		}
	}
}

// urlRE matches URLs, which may carry credentials in their query, and
// addrRE the network addresses that dial and lookup errors name.
var (
	urlRE  = regexp.MustCompile(`[A-Za-z][A-Za-z0-9+.-]*://[^\s"'<>]+`)
	addrRE = regexp.MustCompile(`(\b(?:dial|read|write) (?:tcp[46]?|udp[46]?|unix)|\blookup) \S+?(:? |:?$)`)
)

// maxErrorText bounds the text of an error passed on to logs and clients.
const maxErrorText = 300

// safeError shortens an error for logs and clients: one line (line breaks,
// runs of white space and control characters become one space, so that a
// pretty-printed JSON body keeps its content), URLs and upstream addresses
// redacted, at most maxErrorText bytes and an ellipsis.
func safeError(err error) string {
	s := strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, err.Error())
	s = strings.Join(strings.Fields(s), " ")
	s = urlRE.ReplaceAllString(s, "<url>")
	s = addrRE.ReplaceAllString(s, "$1 <address>$2")
	if len(s) > maxErrorText {
		n := maxErrorText
		for n > 0 && !utf8.RuneStart(s[n]) {
			n--
		}
		s = s[:n] + "…"
	}
	return s
}

// OnBehalfOf describes requests to the upstream name for minting their
// credentials: its name, its URL (the token's audience) and the token
// binding it takes. ok is false for an unknown upstream or one whose
// requests carry no minted token.
func (m *Manager) OnBehalfOf(name string) (o identity.OnBehalfOf, ok bool) {
	u, ok := m.lookup(name)
	if !ok || m.opts.Credentials == nil || u.spec.Auth == AuthNone {
		return identity.OnBehalfOf{}, false
	}
	return u.onBehalfOf(), true
}

func (u *upstream) onBehalfOf() identity.OnBehalfOf {
	return identity.OnBehalfOf{Upstream: u.spec.Name, Audience: u.tgt.endpoint, Binding: u.spec.Auth}
}

// httpClient returns the HTTP client of one connection: the shared
// transport, credentials for the connection's caller on every request, and
// the cancellation shim.
func (m *Manager) httpClient(u *upstream, c *conn) *http.Client {
	hc := m.baseClient(u)
	base := hc.Transport
	if u.credentialed() {
		base = &credentialTransport{base: base, u: u, caller: c.caller.Load}
	}
	hc.Transport = &cancelShim{base: base}
	return &hc
}

// baseClient is the HTTP client requests to u go out on, before
// credentials: the shared transport, or the mTLS one.
func (m *Manager) baseClient(u *upstream) http.Client {
	hc := *m.opts.HTTPClient
	if u.spec.Auth == AuthMTLS && m.mtls != nil {
		hc = *m.mtls
	}
	if hc.Transport == nil {
		hc.Transport = http.DefaultTransport
	}
	return hc
}

// credentialed reports whether requests to u carry minted credentials.
func (u *upstream) credentialed() bool {
	return u.m.opts.Credentials != nil && u.spec.Auth != AuthNone
}

// cancelShim answers the go-sdk client's notifications/cancelled on
// 2026-07-28 connections itself (202) instead of sending it. In 2026-07-28
// a request is cancelled by closing its response stream, which the client
// does as well; the notification it sends lacks the _meta every 2026-07-28
// message needs, so upstreams refuse it with 400, and the go-sdk client then
// closes the whole upstream session.
type cancelShim struct{ base http.RoundTripper }

func (t *cancelShim) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Header.Get("Mcp-Method") == "notifications/cancelled" && req.Header.Get("Mcp-Protocol-Version") >= stateless {
		if req.Body != nil {
			req.Body.Close()
		}
		return &http.Response{
			Status: "202 Accepted", StatusCode: http.StatusAccepted,
			Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
			Header: http.Header{}, Body: http.NoBody, ContentLength: 0, Request: req,
		}, nil
	}
	return t.base.RoundTrip(req)
}

// credentialTransport authenticates each request of one connection for the
// caller the connection currently serves.
type credentialTransport struct {
	base   http.RoundTripper
	u      *upstream
	caller func() *caller
}

func (t *credentialTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	req = req.Clone(req.Context())
	if err := t.u.authorize(req, t.caller()); err != nil {
		if req.Body != nil {
			req.Body.Close()
		}
		return nil, err
	}
	return t.base.RoundTrip(req)
}

// authorize sets the credentials of one request to u made for cl: the
// credential the pipeline minted for the call, or one minted now for cl
// (or for the gateway itself when cl is nil).
func (u *upstream) authorize(req *http.Request, cl *caller) error {
	var err error
	if cl != nil && cl.cred != nil {
		err = cl.cred.Apply(req) // minted by the pipeline for this call
	} else {
		o := u.onBehalfOf()
		if cl != nil {
			o.Principal, o.Session = &cl.p, cl.session
		}
		err = u.m.opts.Credentials.Apply(req, o)
	}
	if err != nil {
		return fmt.Errorf("credentials for upstream %s: %w", u.spec.Name, err)
	}
	return nil
}
