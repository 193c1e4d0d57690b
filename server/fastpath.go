package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"mime"
	"net/http"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"
	"go.opentelemetry.io/otel/propagation"

	"github.com/sag-gateway/sag/internal/jsonscan"
	"github.com/sag-gateway/sag/pipeline"
	"github.com/sag-gateway/sag/upstreams"
)

// The fast path: a tools/call that needs nothing of a stream is served
// here, from the HTTP request to the upstream's answer, without the go-sdk
// server or client. It reads the envelope and the few params the pipeline
// needs, runs the same pipeline, and answers with one JSON body; the
// upstream's result goes back as the upstream wrote it
// (upstreams.CallToolRaw).
//
// Two kinds of calls come this way: a call on an open session-based
// session (2025-11-25 and before), sent on that session's own upstream
// session; and a stateless 2026-07-28 request, sent on a pooled upstream
// connection, and answered as the SDK's stateless handler would (the
// result type, and the server's identity in _meta).
//
// A call needs a stream, and goes the go-sdk way, when something may have
// to reach the client while it runs: progress it asked for, elicitation or
// sampling it declared (an upstream's questions, and consent asked with
// URL-mode elicitation), or log messages at a level it set. Anything else
// unusual (other params, a missing protocol header, another media type, a
// 2026-07-28 request whose headers or _meta the SDK would refuse, a tool
// with parameter headers) goes that way too, so the SDK answers it as
// before.

// rawCall is the Origin of a fast-path call: the downstream session (nil
// for a stateless request) and the caller's _meta.
type rawCall struct {
	down *mcp.ServerSession
	meta upstreams.RawMeta
}

// envelope is what the front reads of every POSTed JSON-RPC request, and
// the request's body.
type envelope struct {
	ID     json.RawMessage `json:"id"`
	Method *string         `json:"method"`
	Params json.RawMessage `json:"params"`
	body   []byte
}

// exact reports whether the request is a JSON-RPC 2.0 request as the SDK
// reads it: encoding/json matched its member names regardless of case, the
// SDK reads them exactly, and refuses a version other than "2.0" and an id
// that is neither a string nor an integer. The fast path takes only
// requests both read alike.
func (e *envelope) exact() bool {
	seen, good := 0, true
	ok := jsonscan.Members(e.body, func(key string, _, value []byte) {
		var bit int
		switch key {
		case "jsonrpc":
			bit, good = 1, good && string(value) == `"2.0"`
		case "id":
			integer := (value[0] == '-' || '0' <= value[0] && value[0] <= '9') && bytes.IndexAny(value, ".eE") < 0
			bit, good = 2, good && (value[0] == '"' || integer)
		case "method":
			bit = 4
		case "params":
			bit = 8
		default:
			good = false
		}
		good = good && seen&bit == 0
		seen |= bit
	})
	return ok && good && seen&7 == 7
}

// serveFast serves msg if it is a tools/call the fast path can carry, and
// reports whether it did.
func (f *front) serveFast(w http.ResponseWriter, r *http.Request, msg *envelope) bool {
	if *msg.Method != "tools/call" || !sdkAccepts(r) || !msg.exact() {
		return false
	}
	p, ok := principalOf(r)
	if !ok {
		return false
	}
	name, args, meta, ok := fastParams(msg.Params)
	if !ok {
		return false
	}
	var origin *rawCall
	sid, v := r.Header.Get("Mcp-Session-Id"), r.Header.Get("Mcp-Protocol-Version")
	switch {
	case v == statelessVersion && sid == "":
		if !f.quietStateless(r.Header, name, meta) {
			return false
		}
		origin = &rawCall{meta: meta} // its protocol keys stay behind (rawMeta)
	case v != "" && v < statelessVersion && sid != "":
		wv, ok := f.watched.Load(sid)
		if !ok {
			return false
		}
		ws := wv.(*watched)
		if p.Key() != ws.owner || ws.logging.Load() || ws.ended.Load() || !quiet(ws.ss) {
			return false
		}
		origin = &rawCall{down: ws.ss, meta: meta}
	default:
		return false
	}
	start := time.Now()
	c := &pipeline.Call{Principal: p, Channel: pipeline.MCP, Origin: origin,
		Workflow: r.Header.Get(WorkflowHeader), ProtocolSession: sid, Kind: pipeline.ToolCall, Name: name, Args: args}
	ctx := f.gw.tracing.rawContext(r.Context(), meta, r.Header)
	out := f.gw.pipeline.Run(ctx, c)

	var res []byte
	var err error
	isError := false
	switch {
	case out.Err != nil:
		var rpc *jsonrpc.Error
		errors.As(rpcError(out.Err, false), &rpc)
		res, err = json.Marshal(struct {
			JSONRPC string          `json:"jsonrpc"`
			ID      json.RawMessage `json:"id"`
			Error   *jsonrpc.Error  `json:"error"`
		}{"2.0", msg.ID, rpc})
	case out.ToolError != "":
		isError = true
		res, err = json.Marshal(toolError(out.ToolError))
	case out.Result != nil:
		res, isError = out.Result, out.IsError
	default: // the raw forwarder answers with JSON; encode anything else
		res, err = json.Marshal(out.Value)
	}
	if err == nil && out.Err == nil && origin.down == nil {
		res, err = f.statelessResult(res)
	}
	f.gw.metrics.toolCall(out.Record.Upstream, name, out.Record.Decision, isError, time.Since(start))
	if err != nil {
		writeRPCError(w, http.StatusOK, msg.ID, jsonrpc.CodeInternalError, "the result could not be encoded")
		return true
	}
	if out.Err == nil {
		b := make([]byte, 0, len(res)+len(msg.ID)+36)
		b = append(b, `{"jsonrpc":"2.0","id":`...)
		b = append(b, msg.ID...)
		b = append(b, `,"result":`...)
		b = append(b, res...)
		res = append(b, '}')
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(res)
	return true
}

// quietStateless reports whether a 2026-07-28 tools/call (no session id,
// its params read by fastParams) is one the SDK's stateless handler would
// take and that needs no stream: its Mcp-Method and Mcp-Name headers match
// its body (compared as the SDK compares them), its tool asks
// for no parameter headers, its _meta names this revision as its header
// does and carries client capabilities, and valid client info if any
// (SEP-2575, decoded as the SDK decodes them), and the client declared
// neither elicitation nor sampling. Anything else the SDK answers, with
// its own errors.
func (f *front) quietStateless(h http.Header, name string, meta upstreams.RawMeta) bool {
	if h.Get("Mcp-Method") != "tools/call" || name == "" || h.Get("Mcp-Name") != name {
		return false
	}
	if t, known := f.gw.upstreams.Catalog().Tool(name); known && t.ParamHeaders {
		return false
	}
	var version string
	if json.Unmarshal(meta[mcp.MetaKeyProtocolVersion], &version) != nil || version != statelessVersion {
		return false
	}
	var caps struct {
		mcp.ClientCapabilities
		Roots *mcp.RootCapabilities `json:"roots,omitempty"`
	}
	raw := meta[mcp.MetaKeyClientCapabilities]
	if isNull(raw) || json.Unmarshal(raw, &caps) != nil || caps.Elicitation != nil || caps.Sampling != nil {
		return false
	}
	// The SDK reads member names exactly, encoding/json in any case: a
	// client that names either capability in any spelling is left to it.
	asks := false
	jsonscan.Members(bytes.TrimSpace(raw), func(key string, _, _ []byte) {
		asks = asks || strings.EqualFold(key, "elicitation") || strings.EqualFold(key, "sampling")
	})
	if asks {
		return false
	}
	if raw, ok := meta[mcp.MetaKeyClientInfo]; ok {
		var info mcp.Implementation
		if isNull(raw) || json.Unmarshal(raw, &info) != nil {
			return false
		}
	}
	return true
}

// hasMember reports whether the JSON object obj has a member named key.
func hasMember(obj []byte, key string) bool {
	found := false
	jsonscan.Members(obj, func(k string, _, _ []byte) { found = found || k == key })
	return found
}

// isNull reports whether a _meta value is absent or JSON null.
func isNull(raw json.RawMessage) bool {
	raw = bytes.TrimSpace(raw)
	return len(raw) == 0 || string(raw) == "null"
}

// statelessResult turns a tools/call result object into what the SDK
// answers a 2026-07-28 client: its result type set to complete, and the
// server's identity in its _meta (SEP-2575), unless the result names one.
func (f *front) statelessResult(res []byte) ([]byte, error) {
	res = bytes.TrimSpace(res)
	if len(res) < 2 || res[0] != '{' {
		return nil, errors.New("not a result object")
	}
	var meta []byte // the result's _meta value, if it has one
	var others [][]byte
	if !jsonscan.Members(res, func(key string, member, value []byte) {
		switch key {
		case "_meta":
			meta = value
		case "resultType":
		default:
			others = append(others, member)
		}
	}) {
		return nil, errors.New("not a result object")
	}
	out := make([]byte, 0, len(res)+len(f.serverInfo)+64)
	out = append(out, `{"resultType":"complete","_meta":`...)
	switch {
	case meta == nil || isNull(meta):
		out = append(out, `{"`+mcp.MetaKeyServerInfo+`":`...)
		out = append(out, f.serverInfo...)
		out = append(out, '}')
	case meta[0] != '{':
		return nil, errors.New("the result's _meta is not an object")
	case hasMember(meta, mcp.MetaKeyServerInfo):
		out = append(out, meta...)
	default:
		inner := bytes.TrimSpace(meta[1:])
		out = append(out, `{"`+mcp.MetaKeyServerInfo+`":`...)
		out = append(out, f.serverInfo...)
		if inner[0] != '}' {
			out = append(out, ',')
		}
		out = append(out, inner...)
	}
	for _, m := range others {
		out = append(out, ',')
		out = append(out, m...)
	}
	return append(out, '}'), nil
}

// sdkAccepts reports whether the SDK would take r's media types: a JSON
// body, and an Accept that names both JSON and event streams, read as the
// SDK reads it (media ranges, parameters ignored).
func sdkAccepts(r *http.Request) bool {
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
		return false
	}
	jsonOK, streamOK := false, false
	for _, value := range r.Header.Values("Accept") {
		for _, token := range strings.Split(value, ",") {
			base, _, _ := strings.Cut(token, ";")
			switch strings.ToLower(strings.TrimSpace(base)) {
			case "application/json", "application/*":
				jsonOK = true
			case "text/event-stream", "text/*":
				streamOK = true
			case "*/*":
				jsonOK, streamOK = true, true
			}
		}
	}
	return jsonOK && streamOK
}

// quiet reports whether a session's client declared nothing that could
// reach it in the middle of a call: neither elicitation nor sampling.
func quiet(ss *mcp.ServerSession) bool {
	ip := ss.InitializeParams()
	if ip == nil {
		return false
	}
	caps := ip.Capabilities
	return caps == nil || caps.Elicitation == nil && caps.Sampling == nil
}

// fastParams reads a tools/call's params: its name, arguments and _meta,
// and nothing else (a retry's requestState or inputResponses, a task, go
// the SDK's way). ok is false for anything the fast path leaves alone.
func fastParams(raw json.RawMessage) (name string, args json.RawMessage, meta upstreams.RawMeta, ok bool) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || raw[0] != '{' || !json.Valid(raw) {
		return "", nil, nil, false
	}
	// The members are read in place: name, arguments and _meta, each once,
	// and nothing else.
	var rawName, rawMeta []byte
	seen, good := 0, true
	jsonscan.Members(raw, func(key string, _, value []byte) {
		var bit int
		switch key {
		case "name":
			bit, rawName = 1, value
		case "arguments":
			bit, args = 2, value
		case "_meta":
			bit, rawMeta = 4, value
		default:
			good = false
		}
		good = good && seen&bit == 0
		seen |= bit
	})
	if !good || len(rawName) < 2 || rawName[0] != '"' {
		return "", nil, nil, false
	}
	// A plain name is taken as it is; one with escapes or bytes that are
	// not UTF-8 is decoded as encoding/json (and the SDK) would.
	if inner := rawName[1 : len(rawName)-1]; bytes.IndexByte(inner, '\\') < 0 && utf8.Valid(inner) {
		name = string(inner)
	} else if json.Unmarshal(rawName, &name) != nil {
		return "", nil, nil, false
	}
	if rawMeta != nil {
		if json.Unmarshal(rawMeta, &meta) != nil {
			return "", nil, nil, false
		}
		if _, has := meta["progressToken"]; has {
			return "", nil, nil, false
		}
		if _, has := meta[mcp.MetaKeyLogLevel]; has {
			return "", nil, nil, false
		}
	}
	return name, args, meta, true
}

// rawContext is mcpContext for a fast-path call: the trace context in its
// _meta, else in its HTTP headers.
func (t *tracing) rawContext(ctx context.Context, meta upstreams.RawMeta, h http.Header) context.Context {
	if t.provider == nil {
		return ctx
	}
	var tp, ts string
	if json.Unmarshal(meta["traceparent"], &tp) == nil && tp != "" {
		_ = json.Unmarshal(meta["tracestate"], &ts)
		return w3c.Extract(ctx, propagation.MapCarrier{"traceparent": tp, "tracestate": ts})
	}
	return w3c.Extract(ctx, propagation.HeaderCarrier(h))
}
