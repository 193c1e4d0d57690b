package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/sag-gateway/sag/identity"
	"github.com/sag-gateway/sag/pipeline"
	"github.com/sag-gateway/sag/upstreams"
)

// front is the MCP server clients talk to: one go-sdk *mcp.Server whose tools,
// prompts and resources mirror the upstream catalog, served over Streamable
// HTTP for both protocol generations.
type front struct {
	srv *mcp.Server
	gw  *Gateway
	// serverInfo is the server's implementation as JSON, which stateless
	// fast-path results carry (statelessResult).
	serverInfo []byte

	mu        sync.Mutex // serialises catalog syncs
	tools     map[string][]byte
	prompts   map[string][]byte
	resources map[string][]byte
	templates map[string][]byte

	watched sync.Map     // id → *watched: the downstream sessions being watched (watch)
	open    atomic.Int64 // how many (limits.max_sessions caps new ones)

	// events keeps the session-based streams' events for resumption;
	// continued holds the sessions this gateway continues from the store
	// (continue.go), which its SDK handler does not know.
	events     mcp.EventStore
	continueMu sync.Mutex  // one continuation of a session at a time
	continued  sync.Map    // id → *continuedSession
	draining   atomic.Bool // the gateway is shutting down

	// updateMu and updateFor restrict one resource-update broadcast to the
	// downstream session whose upstream connection sent it.
	updateMu  sync.Mutex
	updateFor atomic.Pointer[mcp.ServerSession]
}

func newFront(gw *Gateway, version string) *front {
	f := &front{
		gw:        gw,
		tools:     map[string][]byte{},
		prompts:   map[string][]byte{},
		resources: map[string][]byte{},
		templates: map[string][]byte{},
	}
	impl := &mcp.Implementation{Name: "sag", Title: "SAG — Session-Aware Agent Gateway", Version: version}
	f.serverInfo, _ = json.Marshal(impl) // strings: always encodes
	f.srv = mcp.NewServer(impl, &mcp.ServerOptions{
		HasTools:           true,
		HasPrompts:         true,
		HasResources:       true,
		CompletionHandler:  f.complete,
		SubscribeHandler:   f.subscribe,
		UnsubscribeHandler: f.unsubscribe,
		Capabilities: &mcp.ServerCapabilities{
			Logging:     &mcp.LoggingCapabilities{},
			Completions: &mcp.CompletionCapabilities{},
		},
	})
	f.srv.AddReceivingMiddleware(f.receive)
	f.srv.AddSendingMiddleware(f.send)
	return f
}

// handler serves /mcp: requests of protocol 2026-07-28 and later go to a
// stateless handler, everything else to the session-based one, both over the
// same *mcp.Server.
func (f *front) handler() http.Handler {
	maxBody := f.gw.cfg.Limits.MaxRequestBytes
	get := func(*http.Request) *mcp.Server { return f.srv }
	// Idle sessions are closed by the front (watched's timer), which sees
	// the fast path's requests too; the SDK sees only its own.
	f.events = mcp.NewMemoryEventStore(nil)
	stateful := mcp.NewStreamableHTTPHandler(get, &mcp.StreamableHTTPOptions{
		EventStore:          f.events,
		MaxRequestBodyBytes: maxBody,
		Logger:              f.gw.log,
	})
	statelessH := mcp.NewStreamableHTTPHandler(get, &mcp.StreamableHTTPOptions{
		Stateless:                    true,
		MaxRequestBodyBytes:          maxBody,
		PropagateRequestCancellation: true,
		Logger:                       f.gw.log,
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.Method {
		case http.MethodPost:
			// A POST is in flight until its response is written: shutdown
			// waits for it. subscriptions/listen stays open for the
			// session's lifetime and is not waited for.
			if r.Header.Get("Mcp-Method") != "subscriptions/listen" {
				defer f.gw.inflight.request()()
			}
			msg, ok := checkJSONRPC(w, r, maxBody)
			if !ok {
				return
			}
			if ws, ok := f.watched.Load(r.Header.Get("Mcp-Session-Id")); ok {
				defer ws.(*watched).busy()()
			}
			if msg != nil && f.serveFast(w, r, msg) {
				return
			}
			if r.Header.Get("Mcp-Session-Id") == "" && r.Header.Get("Mcp-Protocol-Version") < statelessVersion &&
				f.open.Load() >= int64(f.gw.cfg.Limits.MaxSessions) {
				w.Header().Set("Retry-After", "10")
				http.Error(w, "too many open MCP sessions; try again later", http.StatusServiceUnavailable)
				return
			}
		case http.MethodDelete:
			// The SDK closes a session only once its handlers return.
			if id := r.Header.Get("Mcp-Session-Id"); id != "" {
				f.gw.inflight.cancel(id, errSessionClosed)
				if _, held := f.watched.Load(id); held { // and its caller's (admit)
					f.forget(r.Context(), id)
				}
			}
		}
		if v := r.Header.Get("Mcp-Protocol-Version"); v >= statelessVersion {
			statelessH.ServeHTTP(w, r)
			return
		}
		if f.serveContinued(w, r) {
			return
		}
		stateful.ServeHTTP(w, r)
	})
}

// methods are the JSON-RPC requests SAG serves; anything else is refused with
// -32601 before it reaches the SDK (which would answer a bare 400).
var methods = map[string]bool{
	"initialize": true, "ping": true, "server/discover": true, "subscriptions/listen": true,
	"tools/list": true, "tools/call": true, "prompts/list": true, "prompts/get": true,
	"resources/list": true, "resources/templates/list": true, "resources/read": true,
	"resources/subscribe": true, "resources/unsubscribe": true,
	"completion/complete": true, "logging/setLevel": true,
}

// checkJSONRPC reads a POST body and answers a malformed one with -32700 and
// an unknown method with -32601, as JSON-RPC errors. It restores the body for
// the SDK and reports whether the request goes on, with its envelope when it
// is a single request (nil for a batch, a notification or a response).
func checkJSONRPC(w http.ResponseWriter, r *http.Request, maxBody int64) (*envelope, bool) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			http.Error(w, "request body too large", http.StatusRequestEntityTooLarge)
		} else if bodyTimedOut(err) {
			http.Error(w, "request body not received in time", http.StatusRequestTimeout)
		} else {
			http.Error(w, "cannot read request body", http.StatusBadRequest)
		}
		return nil, false
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	msg := &envelope{body: body}
	if err := json.Unmarshal(body, msg); err != nil {
		var syntax *json.SyntaxError
		if errors.As(err, &syntax) {
			writeRPCError(w, http.StatusBadRequest, nil, jsonrpc.CodeParseError, "parse error: the body is not valid JSON")
			return nil, false
		}
		return nil, true // a batch: the SDK decides
	}
	if msg.Method == nil || len(msg.ID) == 0 {
		return nil, true // a notification or a response: the SDK decides
	}
	if !methods[*msg.Method] {
		// 2026-07-28 answers an unknown method with 404; before it, 404
		// means "session gone" and would make clients drop the session.
		status := http.StatusBadRequest
		if r.Header.Get("Mcp-Protocol-Version") >= statelessVersion {
			status = http.StatusNotFound
		}
		writeRPCError(w, status, msg.ID, jsonrpc.CodeMethodNotFound, "method not found: "+*msg.Method)
		return nil, false
	}
	return msg, true
}

func writeRPCError(w http.ResponseWriter, status int, id json.RawMessage, code int64, msg string) {
	if id == nil {
		id = json.RawMessage("null")
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(struct {
		JSONRPC string          `json:"jsonrpc"`
		ID      json.RawMessage `json:"id"`
		Error   jsonrpc.Error   `json:"error"`
	}{"2.0", id, jsonrpc.Error{Code: code, Message: msg}})
}

const statelessVersion = "2026-07-28"

// sync mirrors the current catalog into the MCP server. Only changed
// entries are re-added, so clients get list_changed only for real changes.
// It reads the catalog under its own lock rather than taking the one that
// triggered it, so that concurrent changes can never apply an older catalog
// last.
func (f *front) sync(*upstreams.Catalog) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.gw.upstreams.Catalog()

	seen := map[string]bool{}
	for i := range c.Tools {
		t := &c.Tools[i]
		if !f.gw.pinned(t) { // quarantined: hidden until approved
			continue
		}
		seen[t.Name] = true
		if changed(f.tools, t.Name, t.Def) {
			f.add("tool", t.Name, f.tools, func() { f.addTool(t) }, func() { f.srv.RemoveTools(t.Name) })
		}
	}
	f.srv.RemoveTools(gone(f.tools, seen)...)

	seen = map[string]bool{}
	for i := range c.Prompts {
		p := &c.Prompts[i]
		seen[p.Name] = true
		if changed(f.prompts, p.Name, p.Def) {
			name := p.Name
			f.add("prompt", name, f.prompts, func() {
				f.srv.AddPrompt(p.Def, f.getPrompt)
			}, func() { f.srv.RemovePrompts(name) })
		}
	}
	f.srv.RemovePrompts(gone(f.prompts, seen)...)

	seen = map[string]bool{}
	for i := range c.Resources {
		r := c.Resources[i]
		seen[r.Def.URI] = true
		if changed(f.resources, r.Def.URI, r.Def) {
			f.add("resource", r.Def.URI, f.resources, func() { f.srv.AddResource(r.Def, f.readResource) },
				func() { f.srv.RemoveResources(r.Def.URI) })
		}
	}
	f.srv.RemoveResources(gone(f.resources, seen)...)

	seen = map[string]bool{}
	for i := range c.Templates {
		t := c.Templates[i]
		seen[t.Def.URITemplate] = true
		if changed(f.templates, t.Def.URITemplate, t.Def) {
			f.add("resource template", t.Def.URITemplate, f.templates, func() { f.srv.AddResourceTemplate(t.Def, f.readResource) },
				func() { f.srv.RemoveResourceTemplates(t.Def.URITemplate) })
		}
	}
	f.srv.RemoveResourceTemplates(gone(f.templates, seen)...)
}

// add runs one of the SDK's Add calls for a catalog entry. The SDK panics on
// definitions it cannot serve (for example invalid x-mcp-header annotations
// in an input schema); an upstream's definition must never take the gateway
// down, so such an entry is left out (an earlier definition of it is
// removed), logged, and tried again at the next sync.
func (f *front) add(kind, name string, have map[string][]byte, add, remove func()) {
	defer func() {
		if r := recover(); r != nil {
			delete(have, name)
			remove()
			f.gw.log.Warn("catalog entry left out: the MCP server refused its definition", "kind", kind, "name", name, "error", fmt.Sprint(r))
		}
	}()
	add()
}

// changed records def's encoding under key and reports whether it differs
// from what was there.
func changed(have map[string][]byte, key string, def any) bool {
	b, err := json.Marshal(def)
	if err != nil {
		return true
	}
	if old, ok := have[key]; ok && string(old) == string(b) {
		return false
	}
	have[key] = b
	return true
}

// gone deletes and returns the keys of have that are not in seen.
func gone(have map[string][]byte, seen map[string]bool) []string {
	var out []string
	for k := range have {
		if !seen[k] {
			out = append(out, k)
			delete(have, k)
		}
	}
	return out
}

// addTool serves a catalog tool through the pipeline.
func (f *front) addTool(t *upstreams.Tool) {
	f.srv.AddTool(t.Def, f.callTool)
}

// policyChanged tells every client to list its tools again: a policy reload
// may change what each principal sees. The SDK sends
// notifications/tools/list_changed only when its tool set changes, so one
// served tool is added again, unchanged.
func (f *front) policyChanged() {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.gw.upstreams.Catalog()
	for i := range c.Tools {
		if _, served := f.tools[c.Tools[i].Name]; served {
			f.addTool(&c.Tools[i])
			return
		}
	}
}

// watched is an open downstream session and the principal it belongs to.
type watched struct {
	ss    *mcp.ServerSession
	owner string // identity.Principal.Key
	// logging is set once the client set a log level (logging/setLevel);
	// ended once the session has ended (the fast path leaves it to the
	// SDK, which answers 404).
	logging, ended atomic.Bool

	// The idle timer closes the session once no request of it has run
	// for the idle timeout; it is paused while any runs (the SDK's own
	// rule, kept here because the fast path's requests never reach it).
	mu       sync.Mutex
	requests int
	timer    *time.Timer
	timeout  time.Duration
}

// busy marks a request of the session as running until the returned func
// is called.
func (w *watched) busy() func() {
	w.mu.Lock()
	if w.requests == 0 {
		w.timer.Stop()
	}
	w.requests++
	w.mu.Unlock()
	return func() {
		w.mu.Lock()
		if w.requests--; w.requests == 0 && !w.ended.Load() {
			w.timer.Reset(w.timeout)
		}
		w.mu.Unlock()
	}
}

// watch runs on every request: the first request of a session-based
// downstream session (usually initialize) records the session and its owner,
// and its end releases the session's upstream connections. The SDK serves a
// session from initialize on, with or without notifications/initialized, so
// this cannot wait for that notification.
func (f *front) watch(ctx context.Context, ss *mcp.ServerSession, extra *mcp.RequestExtra) {
	if ss == nil || ss.ID() == "" {
		return
	}
	if _, seen := f.watched.Load(ss.ID()); seen {
		return
	}
	if p, ok := f.gw.principal(extra); ok {
		f.track(ctx, ss, p, header(extra).Get(WorkflowHeader), false)
	}
}

// track records ss, opened by p, as open until it ends, with its idle
// timer; logging tells whether its client set a log level.
func (f *front) track(ctx context.Context, ss *mcp.ServerSession, p identity.Principal, workflow string, logging bool) {
	w := &watched{ss: ss, owner: p.Key(), timeout: time.Duration(f.gw.cfg.Limits.SessionIdleTimeout)}
	w.logging.Store(logging)
	w.timer = time.AfterFunc(w.timeout, func() { _ = ss.Close() })
	if _, seen := f.watched.LoadOrStore(ss.ID(), w); seen {
		w.timer.Stop()
		return
	}
	f.open.Add(1)
	f.gw.sessionOpened(ctx, p, ss.ID(), workflow)
	go func() {
		_ = ss.Wait()
		w.ended.Store(true)
		w.mu.Lock()
		w.timer.Stop()
		w.mu.Unlock()
		// The session is recorded closed before it leaves watched: a
		// request that no longer finds it here must not continue it from
		// the store (continue.go) as if it were open.
		f.gw.sessionClosed(ss.ID())
		f.watched.Delete(ss.ID())
		f.open.Add(-1)
	}()
}

// owner returns the principal key of an open downstream session.
func (f *front) owner(id string) (string, bool) {
	w, ok := f.watched.Load(id)
	if !ok {
		return "", false
	}
	return w.(*watched).owner, true
}

// resourceUpdated delivers an upstream's resource update to the downstream
// session it belongs to (to every subscriber when down is nil).
func (f *front) resourceUpdated(down *mcp.ServerSession, p *mcp.ResourceUpdatedNotificationParams) {
	f.updateMu.Lock()
	defer f.updateMu.Unlock()
	f.updateFor.Store(down)
	defer f.updateFor.Store(nil)
	_ = f.srv.ResourceUpdated(context.Background(), p)
}

// receive sees every request before the SDK handles it: logging/setLevel is
// forwarded to the upstreams (it has no hook of its own); calls the SDK
// would refuse itself (a name it does not serve) and every prompts/get and
// resources/read go to the pipeline directly, so that each is audited and
// answered alike; lists are filtered per caller.
func (f *front) receive(next mcp.MethodHandler) mcp.MethodHandler {
	return func(ctx context.Context, method string, req mcp.Request) (mcp.Result, error) {
		ss, _ := req.GetSession().(*mcp.ServerSession)
		f.watch(ctx, ss, req.GetExtra())
		switch r := req.(type) {
		case *mcp.CallToolRequest:
			if _, known := f.gw.upstreams.Catalog().Tool(r.Params.Name); !known {
				return f.callTool(ctx, r)
			}
		case *mcp.GetPromptRequest:
			return f.getPrompt(ctx, r)
		case *mcp.ReadResourceRequest:
			return f.readResource(ctx, r)
		case *mcp.ServerRequest[*mcp.InitializeParams]:
			res, err := next(ctx, method, req)
			if err == nil {
				f.remember(ctx, ss, "")
			}
			return res, err
		case *mcp.ServerRequest[*mcp.SetLoggingLevelParams]:
			if w, ok := f.watched.Load(sessionID(ss)); ok {
				w.(*watched).logging.Store(true)
				f.remember(ctx, ss, r.Params.Level)
			}
			if p, ok := f.gw.principal(req.GetExtra()); ok {
				f.gw.upstreams.SetLoggingLevel(upstreams.WithCaller(ctx, p, f.gw.sessions.protocolSession(p, ss), nil), ss, r.Params.Level)
			}
		case *mcp.SubscriptionsListenRequest:
			// A 2026-07-28 notification stream lives as long as its
			// request: the sessions component admits it, and a kill of any
			// node on its path ends it.
			c, _, ok := f.newCall(ctx, req)
			if !ok {
				return nil, rpcError(errUnauthenticated, false)
			}
			ctx, done, err := f.gw.sessions.Admit(ctx, c)
			if err != nil {
				return nil, rpcError(pipeline.AsError(ctx, err), false)
			}
			defer done()
			// The resources/subscribe the SDK makes up for the stream
			// carries no extra: it belongs to this request.
			return next(context.WithValue(ctx, extraKey{}, req.GetExtra()), method, req)
		case *mcp.ListToolsRequest, *mcp.ListPromptsRequest, *mcp.ListResourcesRequest, *mcp.ListResourceTemplatesRequest:
			res, err := next(ctx, method, req)
			if err != nil {
				return res, err
			}
			return res, f.filter(ctx, method, req, res)
		}
		return next(ctx, method, req)
	}
}

// send drops resource updates meant for another downstream session.
func (f *front) send(next mcp.MethodHandler) mcp.MethodHandler {
	return func(ctx context.Context, method string, req mcp.Request) (mcp.Result, error) {
		if method == "notifications/resources/updated" && !f.allowUpdate(req.GetSession()) {
			return nil, nil
		}
		return next(ctx, method, req)
	}
}

func (f *front) allowUpdate(s mcp.Session) bool {
	target := f.updateFor.Load()
	return target == nil || s == mcp.Session(target)
}
