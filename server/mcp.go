package server

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/sag-gateway/sag/a2a"
	"github.com/sag-gateway/sag/identity"
	"github.com/sag-gateway/sag/pipeline"
	"github.com/sag-gateway/sag/policy"
	"github.com/sag-gateway/sag/store"
	"github.com/sag-gateway/sag/upstreams"
)

// The MCP channel's adapter: each method that reaches an upstream becomes a
// pipeline.Call, and the Outcome becomes the method's result or JSON-RPC
// error. Nothing here decides anything.

// newCall is the pipeline.Call of an MCP request: who (from the request,
// or for a request the SDK makes up itself, the one it came from), from
// which workflow and protocol session. ok is false without a principal.
func (f *front) newCall(ctx context.Context, req mcp.Request) (c *pipeline.Call, ss *mcp.ServerSession, ok bool) {
	extra := req.GetExtra()
	if extra == nil {
		extra, _ = ctx.Value(extraKey{}).(*mcp.RequestExtra)
	}
	p, ok := f.gw.principal(extra)
	if !ok {
		return nil, nil, false
	}
	ss, _ = req.GetSession().(*mcp.ServerSession)
	return &pipeline.Call{Principal: p, Channel: pipeline.MCP, Origin: req, Workflow: header(extra).Get(WorkflowHeader), ProtocolSession: sessionID(ss)}, ss, true
}

// run takes one MCP request through the pipeline.
func (f *front) run(ctx context.Context, req mcp.Request, kind pipeline.Kind, names policy.TargetKind, name string, args json.RawMessage) pipeline.Outcome {
	c, ss, ok := f.newCall(ctx, req)
	if !ok {
		return pipeline.Outcome{Err: errUnauthenticated}
	}
	ctx = f.gw.tracing.mcpContext(ctx, req)
	c.Kind, c.Names, c.Name, c.Args = kind, names, name, args
	if tp, ok := req.GetParams().(interface{ GetProgressToken() any }); ok && ss != nil {
		if tok := tp.GetProgressToken(); tok != nil {
			var n atomic.Int64
			c.Progress = func(msg string) {
				_ = ss.NotifyProgress(ctx, &mcp.ProgressNotificationParams{ProgressToken: tok, Progress: float64(n.Add(1)), Message: msg})
			}
		}
	}
	if p, ok := req.GetParams().(*mcp.CallToolParamsRaw); ok && ss != nil {
		c.Asker = urlAsker(ss)
		c.Resume = p.RequestState
		if r, ok := p.InputResponses[p.RequestState].(*mcp.ElicitResult); ok && r.Action != "accept" {
			c.Declined = true
		}
	}
	return f.gw.pipeline.Run(ctx, c)
}

// mcpAsker sends the user of a call waiting for consent to the request's
// page with URL-mode elicitation: an elicitation/create request on the
// session (2025-11-25), or for 2026-07-28 clients the input_required answer
// (Later) whose retry names the request.
type mcpAsker struct {
	ss    *mcp.ServerSession
	later bool
}

// urlAsker returns the asker of a client that declared URL-mode
// elicitation, nil for any other. Form-mode elicitation is never used for
// consent: the agent's own client could answer it.
func urlAsker(ss *mcp.ServerSession) pipeline.Asker {
	ip := ss.InitializeParams()
	if ip == nil || ip.Capabilities == nil || ip.Capabilities.Elicitation == nil || ip.Capabilities.Elicitation.URL == nil {
		return nil
	}
	return mcpAsker{ss: ss, later: ip.ProtocolVersion >= statelessVersion}
}

func (a mcpAsker) Later() bool { return a.later }

func (a mcpAsker) Ask(ctx context.Context, id, url, message string) (declined bool, err error) {
	res, err := a.ss.Elicit(ctx, &mcp.ElicitParams{Mode: "url", Message: message, URL: url, ElicitationID: id})
	if err != nil {
		return false, err
	}
	// accept only says the user opened the page; the decision is made
	// there.
	return res.Action != "accept", nil
}

func (a mcpAsker) Done(id string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = a.ss.NotifyElicitationComplete(ctx, &mcp.ElicitationCompleteParams{ElicitationID: id})
}

// inputRequired is the 2026-07-28 answer to a call waiting for consent:
// a URL-mode elicitation of the request's page, and the request as the
// state its retry names.
func inputRequired(ir *pipeline.InputRequired) (*mcp.CallToolResult, error) {
	wire, err := json.Marshal(map[string]any{
		"resultType":    "input_required",
		"inputRequests": map[string]any{ir.ID: map[string]any{"method": "elicitation/create", "params": &mcp.ElicitParams{Mode: "url", Message: ir.Message, URL: ir.URL, ElicitationID: ir.ID}}},
		"requestState":  ir.ID,
	})
	if err != nil {
		return nil, err
	}
	// The SDK sets a result's type only when it decodes one.
	var res mcp.CallToolResult
	if err := json.Unmarshal(wire, &res); err != nil {
		return nil, err
	}
	return &res, nil
}

func (f *front) callTool(ctx context.Context, req *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
	start := time.Now()
	out := f.run(ctx, req, pipeline.ToolCall, 0, req.Params.Name, req.Params.Arguments)
	res, err := decodeOutcome[mcp.CallToolResult](out, false)
	switch {
	case err != nil:
	case out.Input != nil:
		res, err = inputRequired(out.Input)
	case out.ToolError != "":
		res = toolError(out.ToolError)
	}
	f.gw.metrics.toolCall(out.Record.Upstream, req.Params.Name, out.Record.Decision, res != nil && res.IsError, time.Since(start))
	return res, err
}

func (f *front) getPrompt(ctx context.Context, req *mcp.GetPromptRequest) (*mcp.GetPromptResult, error) {
	var args json.RawMessage
	if len(req.Params.Arguments) > 0 {
		args, _ = json.Marshal(req.Params.Arguments) // a map of strings always encodes
	}
	return decodeOutcome[mcp.GetPromptResult](f.run(ctx, req, pipeline.PromptGet, 0, req.Params.Name, args), false)
}

func (f *front) readResource(ctx context.Context, req *mcp.ReadResourceRequest) (*mcp.ReadResourceResult, error) {
	return decodeOutcome[mcp.ReadResourceResult](f.run(ctx, req, pipeline.ResourceRead, 0, req.Params.URI, nil), true)
}

func (f *front) subscribe(ctx context.Context, req *mcp.SubscribeRequest) error {
	return rpcError(f.run(ctx, req, pipeline.Subscribe, 0, req.Params.URI, nil).Err, true)
}

func (f *front) unsubscribe(ctx context.Context, req *mcp.UnsubscribeRequest) error {
	return rpcError(f.run(ctx, req, pipeline.Unsubscribe, 0, req.Params.URI, nil).Err, true)
}

func (f *front) complete(ctx context.Context, req *mcp.CompleteRequest) (*mcp.CompleteResult, error) {
	ref := req.Params.Ref
	if ref == nil {
		return nil, rpcError(&pipeline.Error{Code: pipeline.CodeInvalidParams, Message: "completion/complete: missing ref"}, false)
	}
	arg, _ := json.Marshal(req.Params.Argument)
	var out pipeline.Outcome
	switch ref.Type {
	case "ref/prompt":
		out = f.run(ctx, req, pipeline.Completion, policy.KindPrompt, ref.Name, arg)
	case "ref/resource":
		out = f.run(ctx, req, pipeline.Completion, policy.KindResource, ref.URI, arg)
	default:
		return nil, rpcError(&pipeline.Error{Code: pipeline.CodeInvalidParams, Message: "unknown ref type " + ref.Type}, false)
	}
	return decodeOutcome[mcp.CompleteResult](out, ref.Type == "ref/resource")
}

// decodeOutcome turns an outcome into the method's result or its JSON-RPC
// error; resource says the call named a resource.
func decodeOutcome[R any](out pipeline.Outcome, resource bool) (*R, error) {
	if out.Err != nil {
		return nil, rpcError(out.Err, resource)
	}
	if v, ok := out.Value.(*R); ok { // no step needed the JSON
		return v, nil
	}
	if out.Result == nil {
		return nil, nil
	}
	res := new(R)
	if err := json.Unmarshal(out.Result, res); err != nil {
		return nil, rpcError(&pipeline.Error{Code: pipeline.CodeInternal, Message: "the upstream's result could not be read"}, false)
	}
	return res, nil
}

// errUnauthenticated fails closed a request that reached the MCP front
// without a principal, which requireAuth never lets happen.
var errUnauthenticated = &pipeline.Error{Code: pipeline.CodeInternal, Message: "request not authenticated"}

// rpcError is the one place errors of MCP methods become JSON-RPC errors
// (writeRPCError writes those refused before the SDK reads a request);
// resource says the call named a resource.
func rpcError(e *pipeline.Error, resource bool) error {
	if e == nil {
		return nil
	}
	var rpc *jsonrpc.Error
	switch e.Code {
	case pipeline.CodePassThrough:
		if errors.As(e.Cause, &rpc) {
			return rpc
		}
	case pipeline.CodeNotFound:
		if resource {
			// MCP's own code for an unknown resource (-32002).
			return &jsonrpc.Error{Code: mcp.CodeResourceNotFound, Message: e.Message}
		}
		return &jsonrpc.Error{Code: jsonrpc.CodeInvalidParams, Message: e.Message}
	case pipeline.CodeInvalidParams:
		return &jsonrpc.Error{Code: jsonrpc.CodeInvalidParams, Message: e.Message}
	case pipeline.CodeInvalidRequest, pipeline.CodeRevoked, pipeline.CodeDenied, pipeline.CodeRateLimited, pipeline.CodeConsent:
		return &jsonrpc.Error{Code: jsonrpc.CodeInvalidRequest, Message: e.Message}
	}
	return &jsonrpc.Error{Code: jsonrpc.CodeInternalError, Message: e.Message}
}

// toolError is a tool execution error the model can read.
func toolError(msg string) *mcp.CallToolResult {
	return &mcp.CallToolResult{IsError: true, Content: []mcp.Content{&mcp.TextContent{Text: msg}}}
}

// mcpForwarder is the MCP channel's pipeline step 8: it sends a call to its
// upstream on the connection of the downstream session it came from, so
// that progress, logging, elicitation and sampling find their way back.
type mcpForwarder struct{ g *Gateway }

var _ pipeline.Forwarder = mcpForwarder{}

// Forward implements pipeline.Forwarder.
func (fw mcpForwarder) Forward(ctx context.Context, c *pipeline.Call, t pipeline.Target, args json.RawMessage, cred *identity.Credential) (pipeline.Result, error) {
	g := fw.g
	if err := g.upstreamLimited(ctx, t.Upstream); err != nil {
		return pipeline.Result{}, err
	}
	ctx = upstreams.WithCaller(ctx, c.Principal, c.Sessions.MSID, cred)
	if rc, ok := c.Origin.(*rawCall); ok {
		res, isError, err := g.upstreams.CallToolRaw(ctx, rc.down, t.Entry.(*upstreams.Tool), args, rc.meta)
		if err != nil {
			return pipeline.Result{}, upstreamError(err)
		}
		return pipeline.Result{JSON: res, IsError: isError}, nil
	}
	req, _ := c.Origin.(mcp.Request)
	if req == nil && c.Kind == pipeline.ToolCall {
		// A tool call of another channel (A2A): on a pooled upstream
		// connection, with no MCP session to relay to; what the upstream
		// says of its progress goes to the channel's own.
		req = &mcp.CallToolRequest{Params: &mcp.CallToolParamsRaw{Name: c.Name}}
		if c.Progress != nil {
			ctx = upstreams.WithProgress(ctx, c.Progress)
		}
	}
	if req == nil {
		return pipeline.Result{}, errors.New("mcp forwarder: a call without its MCP request")
	}
	ss, _ := req.GetSession().(*mcp.ServerSession)
	var res any
	var err error
	isError := false
	switch r := req.(type) {
	case *mcp.CallToolRequest:
		p := *r.Params
		p.Arguments = args
		var tr *mcp.CallToolResult
		if tr, err = g.upstreams.CallTool(ctx, ss, t.Entry.(*upstreams.Tool), &p); err == nil {
			res, isError = tr, tr.IsError
		}
	case *mcp.GetPromptRequest:
		p := *r.Params
		p.Arguments = nil
		if len(args) > 0 {
			if err := json.Unmarshal(args, &p.Arguments); err != nil {
				return pipeline.Result{}, &pipeline.Error{Code: pipeline.CodeInvalidParams, Message: "prompt arguments must be strings"}
			}
		}
		res, err = g.upstreams.GetPrompt(ctx, ss, t.Entry.(*upstreams.Prompt), &p)
	case *mcp.ReadResourceRequest:
		res, err = g.upstreams.ReadResource(ctx, ss, t.Upstream, r.Params)
	case *mcp.SubscribeRequest:
		res, err = struct{}{}, g.upstreams.Subscribe(ctx, ss, t.Upstream, r.Params.URI)
	case *mcp.UnsubscribeRequest:
		res, err = struct{}{}, g.upstreams.Unsubscribe(ctx, ss, t.Upstream, r.Params.URI)
	case *mcp.CompleteRequest:
		p := *r.Params
		if err := json.Unmarshal(args, &p.Argument); err != nil {
			return pipeline.Result{}, &pipeline.Error{Code: pipeline.CodeInvalidParams, Message: "completion argument must be {name, value}"}
		}
		if pr, ok := t.Entry.(*upstreams.Prompt); ok {
			ref := *p.Ref
			ref.Name = pr.Original
			p.Ref = &ref
		}
		res, err = g.upstreams.Complete(ctx, ss, t.Upstream, &p)
	default:
		return pipeline.Result{}, errors.New("mcp forwarder: unexpected request type")
	}
	if err != nil {
		return pipeline.Result{}, upstreamError(err)
	}
	return pipeline.Result{Value: res, IsError: isError}, nil
}

// upstreamError classifies a forwarding failure for the pipeline.
func upstreamError(err error) error {
	var ue *upstreams.Error
	var rpc *jsonrpc.Error
	switch {
	case errors.As(err, &ue):
		return &pipeline.Error{Code: pipeline.CodeUpstream, Message: ue.Error(), Cause: err}
	case errors.As(err, &rpc):
		return &pipeline.Error{Code: pipeline.CodePassThrough, Message: rpc.Message, Cause: rpc}
	}
	return err
}

// sessionID is a downstream session's id, "" for stateless requests.
func sessionID(ss *mcp.ServerSession) string {
	if ss == nil {
		return ""
	}
	return ss.ID()
}

// filter narrows a list result to what the caller may use (pipeline steps
// 1-3, audited once per list), with each tool's input schema tightened by
// the rule that shows it. The SDK's slices are not ours to reuse.
func (f *front) filter(ctx context.Context, method string, req mcp.Request, res mcp.Result) error {
	c, _, ok := f.newCall(ctx, req)
	if !ok {
		return rpcError(errUnauthenticated, false)
	}
	c.Kind, c.Name = pipeline.List, method
	ctx = f.gw.tracing.mcpContext(ctx, req)
	pl, cat := f.gw.pipeline, f.gw.upstreams.Catalog()
	var err error
	switch lr := res.(type) {
	case *mcp.ListToolsResult:
		var vis []pipeline.Visibility
		if vis, err = visible(ctx, pl, c, lr.Tools, func(def *mcp.Tool) policy.Target {
			if t, ok := cat.Tool(def.Name); ok {
				return policyTool(t)
			}
			return policy.Target{}
		}); err != nil {
			return err
		}
		out := make([]*mcp.Tool, 0, len(lr.Tools))
		for i, def := range lr.Tools {
			if vis[i].Shown {
				if len(vis[i].Input) > 0 {
					def = tightenTool(def, vis[i].Input)
				}
				out = append(out, def)
			}
		}
		lr.Tools = out
	case *mcp.ListPromptsResult:
		lr.Prompts, err = keep(ctx, pl, c, lr.Prompts, func(def *mcp.Prompt) policy.Target {
			if pr, ok := cat.Prompt(def.Name); ok {
				return policy.Target{Kind: policy.KindPrompt, Upstream: pr.Upstream, Name: pr.Original}
			}
			return policy.Target{}
		})
	case *mcp.ListResourcesResult:
		lr.Resources, err = keep(ctx, pl, c, lr.Resources, func(def *mcp.Resource) policy.Target {
			up, _ := cat.ResourceUpstream(def.URI)
			return policy.Target{Kind: policy.KindResource, Upstream: up, Name: def.URI}
		})
	case *mcp.ListResourceTemplatesResult:
		ups := make(map[string]string, len(cat.Templates))
		for _, t := range cat.Templates {
			ups[t.Def.URITemplate] = t.Upstream
		}
		lr.ResourceTemplates, err = keep(ctx, pl, c, lr.ResourceTemplates, func(def *mcp.ResourceTemplate) policy.Target {
			return policy.Target{Kind: policy.KindResource, Upstream: ups[def.URITemplate], Name: def.URITemplate}
		})
	}
	return err
}

// visible asks the pipeline which items of a list the caller may see. An
// item the catalog no longer has (no upstream) is not shown.
func visible[T any](ctx context.Context, pl *pipeline.Pipeline, c *pipeline.Call, items []T, target func(T) policy.Target) ([]pipeline.Visibility, error) {
	entries := make([]policy.Target, len(items))
	for i, it := range items {
		entries[i] = target(it)
	}
	vis, perr := pl.List(ctx, c, entries)
	if perr != nil {
		return nil, rpcError(perr, false)
	}
	for i := range vis {
		vis[i].Shown = vis[i].Shown && entries[i].Upstream != ""
	}
	return vis, nil
}

// keep is the items of a list the caller may see.
func keep[T any](ctx context.Context, pl *pipeline.Pipeline, c *pipeline.Call, items []T, target func(T) policy.Target) ([]T, error) {
	vis, err := visible(ctx, pl, c, items, target)
	if err != nil {
		return nil, err
	}
	out := make([]T, 0, len(items))
	for i, it := range items {
		if vis[i].Shown {
			out = append(out, it)
		}
	}
	return out, nil
}

// extraKey carries the extra of the request being served (front.receive).
type extraKey struct{}

// header returns the HTTP header of a request, or an empty one.
func header(extra *mcp.RequestExtra) http.Header {
	if extra == nil || extra.Header == nil {
		return http.Header{}
	}
	return extra.Header
}

// audit commits an audit record of the gateway's own (admin actions,
// catalog quarantine); a failure is returned.
func (g *Gateway) audit(ctx context.Context, rec *store.AuditRecord, start time.Time) error {
	rec.Time = start.UTC()
	rec.LatencyUS = time.Since(start).Microseconds()
	return g.store.Append(context.WithoutCancel(ctx), *rec)
}

// toolsFor lists the tools p may call, as the A2A extended card shows them.
func (g *Gateway) toolsFor(ctx context.Context, p identity.Principal) ([]a2a.Tool, error) {
	cat := g.upstreams.Catalog()
	c := &pipeline.Call{Principal: p, Channel: pipeline.A2A, Kind: pipeline.List, Name: "tools/list"}
	vis, err := visible(ctx, g.pipeline, c, cat.Tools, func(t upstreams.Tool) policy.Target { return policyTool(&t) })
	if err != nil {
		return nil, err
	}
	var out []a2a.Tool
	for i, t := range cat.Tools {
		if vis[i].Shown {
			out = append(out, a2a.Tool{Name: t.Name, Description: t.Def.Description})
		}
	}
	return out, nil
}
