package pipeline

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/sag-gateway/sag/policy"
	"github.com/sag-gateway/sag/store"
)

// Audit decisions.
const (
	DecisionAllow = "allow"
	DecisionDeny  = "deny"
	DecisionError = "error"
	// DecisionPending records a call answered for now with the page where
	// its consent is given, to be retried (InputRequired).
	DecisionPending = "pending"
)

// Pipeline takes every call through the steps of DESIGN.md. Build it once;
// it is safe for concurrent use, and each step reads its own current state
// (a policy reload swaps what the Authorizer decides with).
type Pipeline struct {
	Sessions    SessionGraph
	Catalog     Catalog
	Authorizer  Authorizer
	Validator   Validator
	Consent     Consent
	Credentials Credentials
	Forwarder   Forwarder
	Auditor     Auditor
	Clock       Clock
	Log         *slog.Logger
	// Tracer records a span per call and per step; nil records none.
	Tracer trace.Tracer
	// Watch, when set, sees every committed record with its call (the
	// user's live activity in the consent stream).
	Watch func(c *Call, rec store.AuditRecord)

	// auditDown is set while the last audit write failed: no call reaches
	// an upstream until a record commits again.
	auditDown atomic.Bool
}

// Run takes one call through the pipeline, top to bottom, and returns how
// it ended. Every outcome, refusals included, is audited before Run returns;
// if the record cannot be committed the call fails closed.
func (p *Pipeline) Run(ctx context.Context, c *Call) Outcome {
	r := &run{p: p, c: c, start: p.Clock.Now()}
	r.rec = newRecord(c)
	ctx = r.startCall(ctx)

	// 1. authenticate: done at the channel's edge (identity); c.Principal
	// is the verified caller.

	// 2. session: the call's place in the session graph; a revoked node
	// stops it. From here the kill-switch can cancel it.
	r.step(ctx, "session")
	ctx, done, err := p.Sessions.Admit(ctx, c)
	if err != nil {
		return r.refuse(ctx, err)
	}
	defer done()

	// 3. authorize: the first rule naming this principal and target whose
	// condition holds allows the call, within its rate limit and the
	// session's risk. What no rule shows the caller does not exist for it.
	r.step(ctx, "authorize")
	t, ok := p.Catalog.Resolve(c)
	if !ok {
		return r.refuse(ctx, notFound(c))
	}
	r.rec.Upstream = t.Upstream
	args, err := decodeArgs(c)
	if err != nil {
		return r.refuse(ctx, err)
	}
	d := p.Authorizer.Authorize(ctx, policy.Request{Principal: c.Principal, Target: t.Target, Args: args, Session: p.Sessions.Risk(ctx, c)})
	r.rec.PolicyID, r.rec.AllowListMatch = policyID(d), d.RuleID
	switch {
	case d.Allow:
	case !d.Known:
		r.rec.Reason = d.Reason
		p.Sessions.Count(ctx, c, policy.CountDenials, 1)
		return r.refuse(ctx, notFound(c))
	case d.RetryAfter > 0:
		return r.deny(ctx, policy.CountRateLimited, CodeRateLimited,
			fmt.Sprintf("%s; retry after %d s", d.Reason, int(math.Ceil(d.RetryAfter.Seconds()))))
	default:
		return r.deny(ctx, policy.CountDenials, CodeDenied, "denied by policy: "+d.Reason)
	}

	// 4. validate: the arguments against the upstream's schema and the
	// rule's; failures are tool errors a model can correct.
	r.step(ctx, "validate")
	if msg := p.Validator.Arguments(t, d.Input, args); msg != "" {
		return r.deny(ctx, policy.CountValidationFailure, CodeInvalidParams, msg)
	}

	// 5. DLP on arguments: secrets in them reach neither the approver nor
	// the upstream.
	sent := c.Args
	if d.DLP != nil && len(sent) > 0 {
		r.step(ctx, "dlp")
		red, acts, err := d.DLP.RedactJSON(sent)
		if err != nil {
			return r.deny(ctx, "", CodeDenied, "arguments withheld: they could not be checked for secrets")
		}
		sent = red
		r.dlp(ctx, acts, argsPointer(c.Kind))
	}

	// 6. consent: a call the decision says needs the user's approval waits
	// for it here, and only here.
	if d.Consent {
		ap, err := p.Consent.Await(r.step(ctx, "consent"), c, t, d, sent)
		r.rec.ConsentID = ap.ID
		if ir, ok := err.(*InputRequired); ok {
			r.rec.Decision, r.rec.Reason = DecisionPending, ir.Message
			return r.commit(ctx, Outcome{Input: ir})
		}
		if err != nil {
			return r.deny(ctx, policy.CountConsentDenied, CodeConsent, err.Error())
		}
		if len(ap.EditedArgs) > 0 {
			// An edit replaces the arguments wholly and passes steps 3 to
			// 5 again; what was approved is not asked again.
			if sent, err = r.edited(ctx, t, ap.EditedArgs); err != nil {
				return r.deny(ctx, policy.CountValidationFailure, CodeInvalidParams, err.Error())
			}
		}
	}

	// Nothing reaches an upstream while calls cannot be recorded (fail
	// closed until an audit record commits again).
	if p.auditDown.Load() {
		return r.refuse(ctx, errAuditDown)
	}

	// 7. credentials: the token minted for this upstream on the caller's
	// behalf (never the caller's own), handed to the forwarder.
	cred, err := p.Credentials.For(r.step(ctx, "credentials"), c, t)
	if err != nil {
		p.Log.Error("no credentials for the upstream; call refused", "upstream", t.Upstream, "error", err)
		return r.finish(ctx, Result{}, &Error{Code: CodeUpstream, Message: "upstream " + t.Upstream + ": no credentials could be minted for it", Cause: err})
	}

	// 8. forward.
	res, err := p.Forwarder.Forward(r.step(ctx, "forward"), c, t, sent, cred)

	// 9. check output: structured content against the output schemas,
	// then DLP on everything that goes back.
	if err == nil {
		r.step(ctx, "output")
		res, err = r.checkOutput(ctx, t, d, res)
	}

	// 10. audit, committed before the answer leaves.
	return r.finish(ctx, res, err)
}

// edited checks an approver's edited arguments as the call's own were:
// policy (conditions see them), schema, DLP. It returns what to send.
func (r *run) edited(ctx context.Context, t Target, edits json.RawMessage) (json.RawMessage, error) {
	c := *r.c
	c.Args = edits
	args, err := decodeArgs(&c)
	if err != nil {
		return nil, errors.New("edited arguments: must be a JSON object")
	}
	d := r.p.Authorizer.Authorize(ctx, policy.Request{Principal: c.Principal, Target: t.Target, Args: args, Session: r.p.Sessions.Risk(ctx, &c)})
	if !d.Allow {
		return nil, errors.New("edited arguments: denied by policy: " + d.Reason)
	}
	if msg := r.p.Validator.Arguments(t, d.Input, args); msg != "" {
		return nil, errors.New("edited arguments: " + msg)
	}
	if d.DLP == nil {
		return edits, nil
	}
	red, acts, err := d.DLP.RedactJSON(edits)
	if err != nil {
		return nil, errors.New("edited arguments withheld: they could not be checked for secrets")
	}
	r.dlp(ctx, acts, argsPointer(c.Kind))
	return red, nil
}

// Visibility is what a list shows of one entry: whether it is shown, and
// the input schema of the rule that shows it (tools/list tightens the
// tool's schema with it).
type Visibility struct {
	Shown bool
	Input json.RawMessage
}

// List runs a list request (c.Kind List, c.Name the list method) through
// steps 1-3: the session check, then each entry is shown only if a rule
// lets the caller use it (the same rules that decide calls). The list is
// audited once.
func (p *Pipeline) List(ctx context.Context, c *Call, entries []policy.Target) ([]Visibility, *Error) {
	r := &run{p: p, c: c, start: p.Clock.Now()}
	r.rec = newRecord(c)
	ctx = r.startCall(ctx)
	r.step(ctx, "session")
	ctx, done, err := p.Sessions.Admit(ctx, c)
	if err != nil {
		return nil, r.refuse(ctx, err).Err
	}
	r.step(ctx, "authorize")
	defer done()
	vis := make([]Visibility, len(entries))
	p.Authorizer.Visible(c.Principal, entries, vis)
	shown := 0
	for _, v := range vis {
		if v.Shown {
			shown++
		}
	}
	r.rec.Decision, r.rec.Reason = DecisionAllow, fmt.Sprintf("%d of %d shown", shown, len(entries))
	if out := r.commit(ctx, Outcome{}); out.Err != nil {
		return nil, out.Err
	}
	return vis, nil
}

// run is the state of one Run: the call and its audit record.
type run struct {
	p     *Pipeline
	c     *Call
	start time.Time
	rec   store.AuditRecord
	// span is the call's; cur the current step's.
	span, cur trace.Span
}

func newRecord(c *Call) store.AuditRecord {
	rec := store.AuditRecord{Method: c.Kind.Method(), Tool: c.Name}
	if c.Kind == List {
		rec.Method = c.Name
	}
	p := c.Principal
	rec.Sub, rec.SpiffeID, rec.Act = p.User, p.Agent, p.Act.String()
	if pr := p.Proof; pr != nil {
		rec.DPoPJTI, rec.DPoPHTU, rec.DPoPHTM, rec.DPoPATH = pr.JTI, pr.HTU, pr.HTM, pr.ATH
	}
	rec.MTLSThumbprint = p.CertThumbprint
	return rec
}

// policyID is the audit form of the deciding document: id@version.
func policyID(d policy.Decision) string {
	if d.Version == "" {
		return d.PolicyID
	}
	return d.PolicyID + "@" + d.Version
}

// checkOutput applies step 9 to a result.
func (r *run) checkOutput(ctx context.Context, t Target, d policy.Decision, res Result) (Result, error) {
	if r.c.Kind == ToolCall && !res.IsError {
		if msg := r.p.Validator.Output(t, d.Output, res); msg != "" {
			r.p.Sessions.Count(ctx, r.c, policy.CountValidationFailure, 1)
			return Result{}, &toolFailure{msg: msg}
		}
	}
	if d.DLP == nil {
		return res, nil
	}
	res, err := res.Encoded()
	if err != nil {
		return Result{}, &Error{Code: CodeInternal, Message: "result withheld: it could not be checked for secrets", Cause: err}
	}
	red, acts, err := d.DLP.RedactJSON(res.JSON)
	if err != nil {
		return Result{}, &Error{Code: CodeInternal, Message: "result withheld: it could not be checked for secrets", Cause: err}
	}
	r.dlp(ctx, acts, "")
	return Result{JSON: red, IsError: res.IsError}, nil // the redacted JSON is what goes back
}

// errAuditDown refuses calls while the audit store fails.
var errAuditDown = &Error{Code: CodeUnavailable, Message: "audit unavailable; call refused"}

// toolFailure is a tool call that ends in a tool error the gateway writes
// (decision "error"): an invalid result.
type toolFailure struct{ msg string }

func (e *toolFailure) Error() string { return e.msg }

func (r *run) dlp(ctx context.Context, acts []policy.DLPAction, prefix string) {
	for _, a := range acts {
		r.rec.DLPActions = append(r.rec.DLPActions, a.Rule+"@"+prefix+a.Pointer)
	}
	r.p.Sessions.Count(ctx, r.c, policy.CountDLPHits, int64(len(acts)))
}

func argsPointer(k Kind) string {
	if k == Completion {
		return "/argument"
	}
	return "/arguments"
}

// deny refuses a call the caller may know about: a tool call gets a tool
// error the model can read, other calls a protocol error. It counts against
// the session's risk.
func (r *run) deny(ctx context.Context, counter string, code Code, msg string) Outcome {
	if counter != "" {
		r.p.Sessions.Count(ctx, r.c, counter, 1)
	}
	r.rec.Decision, r.rec.Reason = DecisionDeny, msg
	out := Outcome{}
	if r.c.Kind == ToolCall {
		out.ToolError = msg
	} else {
		out.Err = &Error{Code: code, Message: msg}
	}
	return r.commit(ctx, out)
}

// refuse refuses a call with a protocol error.
func (r *run) refuse(ctx context.Context, err error) Outcome {
	e := AsError(ctx, err)
	r.rec.Decision = DecisionDeny
	if r.rec.Reason == "" {
		r.rec.Reason = e.Message
	}
	return r.commit(ctx, Outcome{Err: e})
}

// finish records how a forwarded call ended.
func (r *run) finish(ctx context.Context, res Result, err error) Outcome {
	r.rec.Decision = DecisionAllow
	if err == nil {
		if res.IsError {
			r.rec.Reason = "upstream returned a tool error"
		}
		if res.JSON != nil {
			return r.commit(ctx, Outcome{Result: res.JSON, IsError: res.IsError})
		}
		return r.commit(ctx, Outcome{Value: res.Value, IsError: res.IsError})
	}
	r.rec.Decision = DecisionError
	if tf, ok := err.(*toolFailure); ok {
		r.rec.Reason = tf.msg
		return r.commit(ctx, Outcome{ToolError: tf.msg})
	}
	e := AsError(ctx, err)
	r.rec.Reason = e.Message
	switch {
	case r.c.Kind == ToolCall && (e.Code == CodeUpstream || e.Code == CodeRateLimited):
		// Not the caller's fault, and something a model can read.
		if e.Code == CodeRateLimited {
			r.rec.Decision = DecisionDeny
		}
		return r.commit(ctx, Outcome{ToolError: e.Message})
	case e.Code == CodeRateLimited:
		r.rec.Decision = DecisionDeny
	}
	return r.commit(ctx, Outcome{Err: e})
}

// commit audits the outcome; a record that cannot be committed turns any
// outcome into a refusal (fail closed).
func (r *run) commit(ctx context.Context, out Outcome) (final Outcome) {
	r.step(ctx, "audit")
	if r.span != nil {
		defer func() { r.endCall(final) }()
	}
	now := r.p.Clock.Now()
	ids := r.c.Sessions
	r.rec.USID, r.rec.WSID, r.rec.ASID, r.rec.MSID = ids.USID, ids.WSID, ids.ASID, ids.MSID
	r.rec.Time = r.start.UTC()
	r.rec.LatencyUS = now.Sub(r.start).Microseconds()
	if r.rec.ConsentID != "" && out.Input == nil {
		// How a call that was asked about ended, whatever ended it (an
		// approved call's edits refused, its upstream's answer, the
		// audit), goes to the channel that decided it.
		defer func() { r.p.Consent.Finished(r.rec.ConsentID, out) }()
	}
	// The record must be committed even if the caller gave up.
	if err := r.p.Auditor.Append(context.WithoutCancel(ctx), r.rec); err != nil {
		r.p.auditDown.Store(true)
		r.p.Log.Error("audit append failed; refusing calls until a record commits", "method", r.rec.Method, "error", err)
		out = Outcome{Err: &Error{Code: CodeUnavailable, Message: errAuditDown.Message, Cause: err}, Record: r.rec}
		return out
	}
	r.p.auditDown.Store(false)
	if r.p.Watch != nil {
		r.p.Watch(r.c, r.rec)
	}
	out.Record = r.rec
	if r.rec.Decision != DecisionAllow || r.p.Log.Enabled(ctx, slog.LevelDebug) {
		level := slog.LevelInfo
		if r.rec.Decision == DecisionAllow {
			level = slog.LevelDebug
		}
		r.p.Log.Log(ctx, level, "decision", "decision", r.rec.Decision, "method", r.rec.Method, "name", r.rec.Tool,
			"upstream", r.rec.Upstream, "sub", r.rec.Sub, "agent", r.rec.SpiffeID, "policy", r.rec.PolicyID,
			"rule", r.rec.AllowListMatch, "reason", r.rec.Reason, "msid", r.rec.MSID)
	}
	return out
}

// notFound is the refusal of a target the caller cannot see: the same as
// for one that does not exist.
func notFound(c *Call) *Error {
	what := c.TargetKind().String()
	return &Error{Code: CodeNotFound, Message: fmt.Sprintf("unknown %s %q: no such %s is available to this caller", what, c.Name, what)}
}

// decodeArgs decodes the arguments conditions and validation see: a JSON
// object, or nothing. A completion's argument is not an object of the
// target's arguments, so conditions see none.
func decodeArgs(c *Call) (map[string]any, error) {
	if c.Kind == Completion || len(c.Args) == 0 || string(c.Args) == "null" {
		return nil, nil
	}
	var args map[string]any
	if err := json.Unmarshal(c.Args, &args); err != nil {
		return nil, &Error{Code: CodeInvalidParams, Message: "arguments must be a JSON object"}
	}
	return args, nil
}
