package pipeline

import (
	"context"
	"encoding/json"
	"time"

	"github.com/sag-gateway/sag/identity"
	"github.com/sag-gateway/sag/policy"
	"github.com/sag-gateway/sag/schemas"
	"github.com/sag-gateway/sag/store"
)

// Kind is what a call does.
type Kind uint8

// Kinds of calls.
const (
	ToolCall Kind = iota + 1
	ResourceRead
	Subscribe
	Unsubscribe
	PromptGet
	Completion
	List
)

// Method is the MCP method of the kind, which audit records name.
func (k Kind) Method() string {
	switch k {
	case ToolCall:
		return "tools/call"
	case ResourceRead:
		return "resources/read"
	case Subscribe:
		return "resources/subscribe"
	case Unsubscribe:
		return "resources/unsubscribe"
	case PromptGet:
		return "prompts/get"
	case Completion:
		return "completion/complete"
	}
	return "list"
}

// Channel is the protocol a call came in on.
type Channel string

// Channels.
const (
	MCP  Channel = "mcp"
	A2A  Channel = "a2a"
	AGUI Channel = "ag-ui"
)

// Sessions are the session-graph nodes a call belongs to (DESIGN.md,
// "Sessions"): user, workflow (optional), agent and protocol session.
type Sessions struct {
	USID, WSID, ASID, MSID string
}

// Nodes are the call's session-graph ids, those it has.
func (s Sessions) Nodes() []string {
	var out []string
	for _, id := range []string{s.USID, s.WSID, s.ASID, s.MSID} {
		if id != "" {
			out = append(out, id)
		}
	}
	return out
}

// Call is one request on its way to an upstream: who, from where, what.
type Call struct {
	Principal identity.Principal
	// Workflow is the caller's workflow id (Sag-Workflow-Id, AG-UI
	// threadId, A2A contextId), "" for none; ProtocolSession is the
	// channel's session id (Mcp-Session-Id), "" for stateless requests.
	// The sessions step derives Sessions from them and the principal.
	Workflow, ProtocolSession string
	Sessions                  Sessions
	Channel                   Channel
	Kind                      Kind
	// Names is the kind of catalog entry Name names; set only for
	// completions (a prompt or a resource template), derived from Kind
	// otherwise.
	Names policy.TargetKind
	// Name is what the caller named: a tool or prompt as the gateway
	// exposes it, a resource URI; for a list, the list method.
	Name string
	// Args are the raw JSON arguments (a tool's or a prompt's arguments
	// object, a completion's argument), nil for none.
	Args json.RawMessage
	// Origin is the channel's own request. Only the channel's forwarder
	// reads it; the pipeline never looks inside.
	Origin any
	// Progress, when the caller asked for progress, tells it why its call
	// is still waiting (a consent request) or how the upstream's work goes
	// (an A2A agent's status); nil otherwise. It may be called from
	// another goroutine than Run's.
	Progress func(message string)
	// Asker, when the channel can send the caller's user to a page (MCP
	// URL-mode elicitation), points them at the consent request's page;
	// nil otherwise.
	Asker Asker
	// Resume is the consent request a retried call names (the state of a
	// multi-round-trip retry), "" for none; Declined says that the
	// caller's user declined or cancelled the page it was sent to.
	Resume   string
	Declined bool
}

// Asker is how a channel points the user of a call waiting for consent at
// the page where they decide.
type Asker interface {
	// Later reports that the channel answers at once with the page and
	// takes a retry of the call (MCP 2026-07-28 multi-round-trip) instead
	// of holding the call open.
	Later() bool
	// Ask shows the user the page (id names the request) and returns when
	// their client has answered; declined reports that they declined or
	// cancelled it.
	Ask(ctx context.Context, id, url, message string) (declined bool, err error)
	// Done tells the client that the request id has been decided.
	Done(id string)
}

// InputRequired is the consent step's answer to a call whose Asker
// answers Later: the call is neither refused nor sent; the caller is to
// retry it, naming ID (Call.Resume), once its user has been to URL.
type InputRequired struct{ ID, URL, Message string }

func (e *InputRequired) Error() string { return e.Message }

// TargetKind is the kind of catalog entry the call names.
func (c *Call) TargetKind() policy.TargetKind {
	switch c.Kind {
	case Completion:
		return c.Names
	case PromptGet:
		return policy.KindPrompt
	case ResourceRead, Subscribe, Unsubscribe:
		return policy.KindResource
	}
	return policy.KindTool
}

// Target is a catalog entry a call resolved to.
type Target struct {
	policy.Target
	// Entry is the catalog's own entry, for the validator and the
	// forwarder.
	Entry any
}

// Outcome is how a call ended: a result, a tool error (tool calls only) or
// a protocol error, and the audit record committed for it.
type Outcome struct {
	// Result is the upstream's answer after the output checks (raw JSON of
	// the method's result object); when no step needed the JSON, Value is
	// the channel's own form of it instead and Result is nil.
	Result json.RawMessage
	Value  any
	// IsError says that Result or Value is a tool error the upstream
	// returned.
	IsError bool
	// ToolError is set when a tool call is answered with a tool execution
	// error (isError) that the gateway wrote: a denial, invalid arguments
	// or output, an upstream that did not answer.
	ToolError string
	// Err is a protocol error.
	Err *Error
	// Input, when set, is the page the caller's user must visit before
	// the call is retried (see InputRequired); nothing was sent.
	Input *InputRequired
	// Record is the audit record committed for the call.
	Record store.AuditRecord
}

// The steps' interfaces, in pipeline order. Each is declared here, kept to
// what Run needs, and implemented by the package that owns the step
// (server wires them; tests use fakes).

// SessionGraph is step 2: the one sessions component.
type SessionGraph interface {
	// Admit fills c.Sessions, refuses a call any of whose session-graph
	// nodes is revoked (an *Error with CodeRevoked or CodeInvalidRequest)
	// and otherwise records the nodes. It returns ctx made cancellable by the
	// kill-switch and a func to call when the call is over.
	Admit(ctx context.Context, c *Call) (context.Context, func(), error)
	// Risk is the risk state of the call's node, for the authorizer.
	Risk(ctx context.Context, c *Call) policy.Session
	// Count raises the risk of the call's node.
	Count(ctx context.Context, c *Call, counter string, n int64)
}

// Catalog resolves what a call names; ok is false for an entry the
// gateway does not offer (unknown, or quarantined).
type Catalog interface {
	Resolve(c *Call) (t Target, ok bool)
}

// Authorizer is step 3 (policy): a decision with its obligations; for a
// list, which entries the caller may see at all and the input schema of
// the rule that shows each (out has one slot per entry), decided by one
// policy snapshot.
type Authorizer interface {
	Authorize(ctx context.Context, req policy.Request) policy.Decision
	Visible(p identity.Principal, entries []policy.Target, out []Visibility)
}

// Validator is steps 4 and 9 (schemas): it returns "" or the problems,
// each with its JSON pointer, for a model to correct.
type Validator interface {
	Arguments(t Target, rule *schemas.Schema, args map[string]any) string
	Output(t Target, rule *schemas.Schema, res Result) string
}

// Consent is step 6: Await returns once the call may go on, with the
// approval, or an error saying why not (denied, expired, cancelled, or no
// way to ask); args are the arguments as the approver may see them.
// Finished tells it how an approved call ended, for whoever approved it.
type Consent interface {
	Await(ctx context.Context, c *Call, t Target, d policy.Decision, args json.RawMessage) (Approval, error)
	Finished(approvalID string, out Outcome)
}

// Approval is a user's approval of a call. EditedArgs, when set, replace
// the arguments wholly; the pipeline checks them again (policy, schema,
// DLP) before anything is sent.
type Approval struct {
	ID         string
	EditedArgs json.RawMessage
}

// Credentials is step 7 (identity): the token minted for this call's
// upstream, nil when the upstream takes none.
type Credentials interface {
	For(ctx context.Context, c *Call, t Target) (*identity.Credential, error)
}

// Result is an upstream's answer. Value is the channel's own form of it,
// passed back as is when no step needs to read it; JSON is its encoding
// (the method's result object), made only when a step needs it (output
// checks, DLP), and what goes back once a step changed it. IsError says,
// for a tool call, whether it is a tool error.
type Result struct {
	Value   any
	JSON    json.RawMessage
	IsError bool
}

// Encoded returns r with its JSON made from Value if it has none.
func (r Result) Encoded() (Result, error) {
	if r.JSON != nil {
		return r, nil
	}
	b, err := json.Marshal(r.Value)
	r.JSON = b
	return r, err
}

// Forwarder is step 8: it sends the call, with args (after DLP) and the
// credential of step 7, to the upstream and returns its result. An
// *Error it returns is passed on as is (CodeUpstream for an upstream that
// did not answer, CodeRateLimited, CodePassThrough for the upstream's own
// protocol error).
type Forwarder interface {
	Forward(ctx context.Context, c *Call, t Target, args json.RawMessage, cred *identity.Credential) (Result, error)
}

// Auditor is step 10: a call is not answered before its record is
// committed.
type Auditor interface {
	Append(ctx context.Context, rec store.AuditRecord) error
}

// Clock is the time source.
type Clock interface{ Now() time.Time }
