package server

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"time"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/sag-gateway/sag/identity"
	"github.com/sag-gateway/sag/policy"
	"github.com/sag-gateway/sag/store"
	"github.com/sag-gateway/sag/upstreams"
)

// Audit decisions.
const (
	decisionAllow = "allow"
	decisionDeny  = "deny"
	decisionError = "error"
)

// callTool is the tool-call pipeline (DESIGN.md), top to bottom. Each step
// is a call into the package that owns it; consent, which a later issue
// adds, slots in where its comment stands.
func (g *Gateway) callTool(ctx context.Context, name string, req *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
	ctx, done := g.inflight.call(ctx, req.Session.ID())
	defer done()
	start := time.Now()
	rec := store.AuditRecord{Method: "tools/call", Tool: name}

	// 1. authenticate and 2. session (identify): who is calling, and the
	// call's place in the session graph; revoked sessions stop here.
	p, ids, err := g.identify(ctx, &rec, start, req.Session, req.Extra)
	if err != nil {
		return nil, err
	}
	g.inflight.setNodes(ctx, ids.USID, ids.WSID, ids.ASID, ids.MSID) // the kill-switch finds it by any of them
	// A session whose risk passed its thresholds is blocked, or needs the
	// user's consent for every call (refused until consent exists).
	sess := g.policySession(ids)
	switch g.risk.model.Level(sess.Risk) {
	case policy.LevelBlock:
		return g.deny(ctx, &rec, start, ids.MSID, "", fmt.Sprintf("session blocked: its risk score %.1f passed the limit", sess.Risk))
	case policy.LevelStepUp:
		return g.deny(ctx, &rec, start, ids.MSID, policy.CountConsentDenied, fmt.Sprintf("step-up required: at risk score %.1f every call needs the user's consent, and no consent channel is available yet", sess.Risk))
	}
	// 3. authorize (policy): the first rule naming this principal and tool
	// whose condition holds allows the call, within its rate limit. A tool
	// no rule allows does not exist for this caller.
	t, ok := g.upstreams.Catalog().Tool(name)
	if !ok || g.pins.Quarantined(t.Upstream, t.Original) { // removed or quarantined since the SDK routed the call
		return nil, g.refuse(ctx, &rec, start, unknownTool(name))
	}
	rec.Upstream = t.Upstream
	args, err := decodeArguments(req.Params.Arguments)
	if err != nil {
		return nil, g.refuse(ctx, &rec, start, err)
	}
	d := g.policy.Load().engine.Authorize(ctx, policy.Request{Principal: p, Tool: policyTool(t), Args: args, Session: sess})
	rec.PolicyID, rec.AllowListMatch = d.PolicyID+"@"+d.Version, d.RuleID
	switch {
	case d.Allow:
	case d.RetryAfter > 0:
		return g.deny(ctx, &rec, start, ids.MSID, policy.CountRateLimited, fmt.Sprintf("%s; retry after %d s", d.Reason, int(math.Ceil(d.RetryAfter.Seconds()))))
	case d.RuleID != "": // the caller may see the tool; this call is refused
		return g.deny(ctx, &rec, start, ids.MSID, policy.CountDenials, "denied by policy: "+d.Reason)
	default:
		rec.Reason = d.Reason
		g.countRisk(ctx, ids.MSID, policy.CountDenials, 1)
		return nil, g.refuse(ctx, &rec, start, unknownTool(name))
	}
	// 4. validate (schemas): the arguments against the upstream's
	// inputSchema and the rule's; failures are tool errors a model can
	// correct.
	if msg := g.validateArguments(t, d.Input, args); msg != "" {
		return g.deny(ctx, &rec, start, ids.MSID, policy.CountValidationFailure, msg)
	}
	// 5. consent: until the consent channel exists, a call that needs the
	// user's consent is refused.
	if d.Consent {
		return g.deny(ctx, &rec, start, ids.MSID, policy.CountConsentDenied, "consent required: "+name+" needs the user's approval, and no consent channel is available yet")
	}
	// 6. credentials: the upstream connection asks identity's Minter for a
	// token minted for this caller and a fresh DPoP proof on every HTTP
	// request it sends (upstreams.Credentials).

	// 7. forward, within the upstream's own rate limit (all callers
	// together; not the caller's fault, so not counted against it). The
	// rule's DLP profile also keeps secrets in the arguments from reaching
	// the upstream.
	if wait := g.upstreamWait(t.Upstream); wait > 0 {
		return g.deny(ctx, &rec, start, ids.MSID, "", fmt.Sprintf("upstream %s is at its rate limit; retry after %d s", t.Upstream, int(math.Ceil(wait.Seconds()))))
	}
	params, acts, err := redactArguments(d.DLP, req.Params)
	if err != nil {
		return g.deny(ctx, &rec, start, ids.MSID, "", err.Error())
	}
	rec.DLPActions = acts
	g.countRisk(ctx, ids.MSID, policy.CountDLPHits, int64(len(acts)))
	res, err := g.upstreams.CallTool(ctx, req.Session, t, params)
	// 8. check output: structuredContent against the upstream's and the
	// rule's outputSchema, then DLP redaction of what goes back.
	if err == nil && !res.IsError {
		if msg := g.validateOutput(t, d.Output, res); msg != "" {
			rec.Decision, rec.Reason = decisionError, msg
			res = toolError(msg)
			g.countRisk(ctx, ids.MSID, policy.CountValidationFailure, 1)
		} else if d.DLP != nil {
			var acts []string
			res, acts = redactResult(d.DLP, res)
			rec.DLPActions = append(rec.DLPActions, acts...)
			g.countRisk(ctx, ids.MSID, policy.CountDLPHits, int64(len(acts)))
		}
	}
	// 9. audit, committed before the response leaves.
	if rec.Decision == "" {
		rec.Decision = decisionAllow
	}
	var ue *upstreams.Error
	switch {
	case rec.Decision == decisionError:
	case err == nil:
		if res.IsError {
			rec.Reason = "upstream returned a tool error"
		}
	case errors.As(err, &ue):
		rec.Decision, rec.Reason = decisionError, ue.Msg
		res, err = toolError(ue.Error()), nil
	case context.Cause(ctx) == errShuttingDown || context.Cause(ctx) == errSessionClosed || context.Cause(ctx) == errSessionKilled:
		rec.Decision, rec.Reason = decisionError, context.Cause(ctx).Error()
	default:
		rec.Decision, rec.Reason = decisionError, errorReason(err)
	}
	if aerr := g.audit(ctx, &rec, start); aerr != nil {
		return nil, aerr
	}
	g.metrics.toolCall(t.Upstream, name, rec.Decision, res, time.Since(start))
	if err != nil {
		return nil, protocolError(err)
	}
	return res, nil
}

// getPrompt runs prompts/get through the same first steps as a tool call.
func (g *Gateway) getPrompt(ctx context.Context, name string, req *mcp.GetPromptRequest) (*mcp.GetPromptResult, error) {
	ctx, done := g.inflight.call(ctx, req.Session.ID())
	defer done()
	start := time.Now()
	rec := store.AuditRecord{Method: "prompts/get", Tool: name, PolicyID: "open"}
	if _, _, err := g.identify(ctx, &rec, start, req.Session, req.Extra); err != nil {
		return nil, err
	}
	pr, ok := g.upstreams.Catalog().Prompt(name)
	if !ok {
		return nil, g.refuse(ctx, &rec, start, &jsonrpc.Error{Code: jsonrpc.CodeInvalidParams, Message: "unknown prompt " + name})
	}
	rec.Upstream = pr.Upstream
	res, err := g.upstreams.GetPrompt(ctx, req.Session, pr, req.Params)
	if err == nil {
		if r := g.policy.Load().engine.ContentDLP(pr.Upstream); r != nil {
			var redacted mcp.GetPromptResult
			if _, err = redactJSON(r, res, &redacted); err == nil {
				res = &redacted
			}
		}
	}
	rec.Decision = decisionAllow
	if err != nil {
		rec.Decision, rec.Reason = decisionError, errorReason(err)
	}
	if aerr := g.audit(ctx, &rec, start); aerr != nil {
		return nil, aerr
	}
	return res, protocolError(err)
}

// identify runs the first two pipeline steps for a request. 1. authenticate:
// requireAuth verified the request (token, DPoP proof or mTLS binding, agent
// identity) before the SDK read it; front.receive marked ctx with the caller,
// for whom upstream credentials are minted and to whom a parked call is
// bound. 2. session: the request's place in the session graph; revoked
// sessions stop here. rec gets the principal and the ids; a refusal is
// audited and returned as the client's error.
func (g *Gateway) identify(ctx context.Context, rec *store.AuditRecord, start time.Time, ss *mcp.ServerSession, extra *mcp.RequestExtra) (identity.Principal, sessionIDs, error) {
	p, ok := g.principal(extra)
	if !ok {
		return p, sessionIDs{}, g.refuse(ctx, rec, start, errUnauthenticated)
	}
	ids, err := g.session(ctx, p, ss, extra)
	ids.fill(rec, p)
	if err != nil {
		return p, ids, g.refuse(ctx, rec, start, err)
	}
	return p, ids, nil
}

// errUnauthenticated fails closed a request that reached the pipeline
// without a principal, which requireAuth never lets happen.
var errUnauthenticated = &jsonrpc.Error{Code: jsonrpc.CodeInternalError, Message: "request not authenticated"}

// auditUnknownTool records a call of a name the catalog does not have; the
// SDK then answers it with -32602, like any unknown tool.
func (g *Gateway) auditUnknownTool(ctx context.Context, ss *mcp.ServerSession, extra *mcp.RequestExtra, name string) {
	start := time.Now()
	rec := store.AuditRecord{Method: "tools/call", Tool: name, PolicyID: "open", Decision: decisionDeny, Reason: "unknown tool"}
	p, ok := g.principal(extra)
	if !ok {
		return
	}
	ids, _ := g.session(ctx, p, ss, extra)
	ids.fill(&rec, p)
	_ = g.audit(ctx, &rec, start)
	g.metrics.toolCall("", "", decisionDeny, nil, time.Since(start))
}

// deny audits a call the policy or validation refused, counts it against
// the session's risk, and answers it with a tool error the model can read
// (isError), naming the rule, never its content.
func (g *Gateway) deny(ctx context.Context, rec *store.AuditRecord, start time.Time, session, counter, msg string) (*mcp.CallToolResult, error) {
	g.countRisk(ctx, session, counter, 1)
	rec.Decision, rec.Reason = decisionDeny, msg
	if err := g.audit(ctx, rec, start); err != nil {
		return nil, err
	}
	g.metrics.toolCall(rec.Upstream, rec.Tool, decisionDeny, nil, time.Since(start))
	return toolError(msg), nil
}

// refuse audits a denied request and returns the error for the client.
func (g *Gateway) refuse(ctx context.Context, rec *store.AuditRecord, start time.Time, err error) error {
	rec.Decision = decisionDeny
	if rec.Reason == "" {
		rec.Reason = errorReason(err)
	}
	if aerr := g.audit(ctx, rec, start); aerr != nil {
		return aerr
	}
	return protocolError(err)
}

// audit commits rec. If it cannot be committed the call fails closed.
func (g *Gateway) audit(ctx context.Context, rec *store.AuditRecord, start time.Time) error {
	rec.Time = start.UTC()
	rec.LatencyUS = time.Since(start).Microseconds()
	// The record must be committed even if the client gave up on the call.
	if err := g.store.Append(context.WithoutCancel(ctx), *rec); err != nil {
		g.log.Error("audit append failed; refusing the call", "error", err)
		return &jsonrpc.Error{Code: jsonrpc.CodeInternalError, Message: "audit unavailable; call refused"}
	}
	return nil
}

func unknownTool(name string) error {
	return &jsonrpc.Error{Code: jsonrpc.CodeInvalidParams, Message: "unknown tool \"" + name + "\""}
}

// toolError is a tool execution error the model can read.
func toolError(msg string) *mcp.CallToolResult {
	return &mcp.CallToolResult{IsError: true, Content: []mcp.Content{&mcp.TextContent{Text: msg}}}
}

// errorReason is the audit text for an error: the JSON-RPC message, an
// upstream failure, or a generic word; never a token or URL.
func errorReason(err error) string {
	var rpc *jsonrpc.Error
	var ue *upstreams.Error
	switch {
	case errors.As(err, &rpc):
		return rpc.Message
	case errors.As(err, &ue):
		return ue.Msg
	case errors.Is(err, context.Canceled):
		return "cancelled by the client"
	case errors.Is(err, errSessionRevoked):
		return err.Error()
	}
	return "internal error"
}

// header returns the HTTP header of a request, or an empty one.
func header(extra *mcp.RequestExtra) http.Header {
	if extra == nil || extra.Header == nil {
		return http.Header{}
	}
	return extra.Header
}
