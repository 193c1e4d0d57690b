package a2a

import (
	"context"
	"encoding/json"
	"errors"
	"iter"
	"log/slog"
	"net/http"

	spec "github.com/a2aproject/a2a-go/v2/a2a"
	"github.com/a2aproject/a2a-go/v2/a2asrv"

	"github.com/sag-gateway/sag/identity"
	"github.com/sag-gateway/sag/pipeline"
)

// Runner runs a call through the pipeline.
type Runner interface {
	Run(ctx context.Context, c *pipeline.Call) pipeline.Outcome
}

// Options configure the A2A endpoints.
type Options struct {
	Pipeline Runner
	// Principal returns the authenticated caller of a request's context
	// (the server authenticates before the A2A handler sees it).
	Principal func(ctx context.Context) (identity.Principal, bool)
	// URL is the public URL of the JSON-RPC endpoint.
	URL     string
	Version string
	Log     *slog.Logger
}

// CardPath is where the public agent card is served.
const CardPath = "/.well-known/agent-card.json"

// Handlers returns the JSON-RPC endpoint (SendMessage, GetTask, …) and the
// public agent card. A message's data part {"tool", "arguments"} is one
// tool call through the pipeline; the task ends COMPLETED with the result
// as an artifact, FAILED on a tool error, REJECTED when it is denied, and
// waits in INPUT_REQUIRED while its user's consent is asked (a message on
// the same task goes on once it is given).
func Handlers(o Options) (rpc, card http.Handler) {
	opts := []a2asrv.RequestHandlerOption{a2asrv.WithCallInterceptors(principalInterceptor{o.Principal})}
	if o.Log != nil {
		opts = append(opts, a2asrv.WithLogger(o.Log.With("channel", "a2a")))
	}
	h := a2asrv.NewHandler(&executor{o: o}, opts...)
	c := &spec.AgentCard{
		Name:        "SAG",
		Description: "Session-Aware Agent Gateway: the tools its upstream MCP servers offer, under the caller's allow-lists, consent and audit.",
		Version:     o.Version,
		SupportedInterfaces: []*spec.AgentInterface{
			spec.NewAgentInterface(o.URL, spec.TransportProtocolJSONRPC),
		},
		DefaultInputModes:  []string{"application/json"},
		DefaultOutputModes: []string{"application/json", "text/plain"},
		Skills: []spec.AgentSkill{{
			ID:          "call-tool",
			Name:        "Call a tool",
			Description: `Send a data part {"tool": NAME, "arguments": {...}}: one call of a tool the caller may use, as tools/list names it.`,
			Tags:        []string{"mcp", "tools"},
			InputModes:  []string{"application/json"},
		}},
	}
	return a2asrv.NewJSONRPCHandler(h), a2asrv.NewStaticAgentCardHandler(c)
}

// principalAttr carries the caller's principal in the A2A user's attributes.
const principalAttr = "sag.principal"

// principalInterceptor hands the authenticated principal to the executor.
type principalInterceptor struct {
	principal func(ctx context.Context) (identity.Principal, bool)
}

func (pi principalInterceptor) Before(ctx context.Context, cc *a2asrv.CallContext, _ *a2asrv.Request) (context.Context, any, error) {
	p, ok := pi.principal(ctx)
	if !ok {
		return ctx, nil, spec.ErrUnauthenticated
	}
	cc.User = a2asrv.NewAuthenticatedUser(p.Key(), map[string]any{principalAttr: p})
	return ctx, nil, nil
}

func (principalInterceptor) After(context.Context, *a2asrv.CallContext, *a2asrv.Response) error {
	return nil
}

// executor runs each task's tool call through the pipeline.
type executor struct{ o Options }

// toolCall is the data part of a message that calls a tool.
type toolCall struct {
	Tool      string          `json:"tool"`
	Arguments json.RawMessage `json:"arguments,omitempty"`
}

// pendingConsent is the data part of an INPUT_REQUIRED status: the consent
// request the call waits for, the page where it is decided, and the call.
type pendingConsent struct {
	Consent struct {
		ID      string `json:"id"`
		URL     string `json:"url"`
		Message string `json:"message"`
	} `json:"consent"`
	toolCall
}

func (e *executor) Execute(ctx context.Context, ec *a2asrv.ExecutorContext) iter.Seq2[spec.Event, error] {
	return func(yield func(spec.Event, error) bool) {
		p, ok := principalOf(ec)
		if !ok {
			yield(nil, spec.ErrUnauthenticated)
			return
		}
		call, resume, err := callOf(ec)
		if err != nil {
			yield(nil, err)
			return
		}
		if ec.StoredTask == nil {
			if !yield(spec.NewSubmittedTask(ec, ec.Message), nil) {
				return
			}
		}
		c := &pipeline.Call{Principal: p, Channel: pipeline.A2A, Kind: pipeline.ToolCall, Workflow: ec.ContextID,
			Name: call.Tool, Args: call.Arguments, Asker: later{}, Resume: resume}
		for _, ev := range events(ec, call, e.o.Pipeline.Run(ctx, c)) {
			if !yield(ev, nil) {
				return
			}
		}
	}
}

// events are the events a pipeline outcome ends the task's run with.
func events(ec *a2asrv.ExecutorContext, call toolCall, out pipeline.Outcome) []spec.Event {
	text := func(s string) *spec.Message {
		return spec.NewMessageForTask(spec.MessageRoleAgent, ec, spec.NewTextPart(s))
	}
	switch {
	case out.Input != nil:
		var pc pendingConsent
		pc.Consent.ID, pc.Consent.URL, pc.Consent.Message = out.Input.ID, out.Input.URL, out.Input.Message
		pc.toolCall = call
		return []spec.Event{spec.NewStatusUpdateEvent(ec, spec.TaskStateInputRequired, spec.NewMessageForTask(spec.MessageRoleAgent, ec, spec.NewDataPart(plain(pc)), spec.NewTextPart(out.Input.Message)))}
	case out.Err != nil:
		state := spec.TaskStateFailed
		if out.Record.Decision == pipeline.DecisionDeny {
			state = spec.TaskStateRejected
		}
		return []spec.Event{spec.NewStatusUpdateEvent(ec, state, text(out.Err.Message))}
	case out.ToolError != "":
		state := spec.TaskStateFailed
		if out.Record.Decision == pipeline.DecisionDeny {
			state = spec.TaskStateRejected
		}
		return []spec.Event{spec.NewStatusUpdateEvent(ec, state, text(out.ToolError))}
	}
	raw := out.Result
	if raw == nil {
		raw, _ = json.Marshal(out.Value) // a result always encodes
	}
	var res struct {
		Content []struct {
			Type string `json:"type"`
			Text string `json:"text"`
		} `json:"content"`
		StructuredContent any  `json:"structuredContent"`
		IsError           bool `json:"isError"`
	}
	_ = json.Unmarshal(raw, &res) // a tool result's JSON
	var parts []*spec.Part
	for _, c := range res.Content {
		if c.Type == "text" {
			parts = append(parts, spec.NewTextPart(c.Text))
		}
	}
	if res.StructuredContent != nil {
		parts = append(parts, spec.NewDataPart(res.StructuredContent))
	}
	if len(parts) == 0 {
		var all any
		_ = json.Unmarshal(raw, &all)
		parts = append(parts, spec.NewDataPart(all))
	}
	if res.IsError {
		return []spec.Event{spec.NewStatusUpdateEvent(ec, spec.TaskStateFailed, spec.NewMessageForTask(spec.MessageRoleAgent, ec, parts...))}
	}
	return []spec.Event{spec.NewArtifactEvent(ec, parts...), spec.NewStatusUpdateEvent(ec, spec.TaskStateCompleted, nil)}
}

func (e *executor) Cancel(_ context.Context, ec *a2asrv.ExecutorContext) iter.Seq2[spec.Event, error] {
	return func(yield func(spec.Event, error) bool) {
		yield(spec.NewStatusUpdateEvent(ec, spec.TaskStateCanceled, nil), nil)
	}
}

// principalOf returns the principal principalInterceptor attached.
func principalOf(ec *a2asrv.ExecutorContext) (identity.Principal, bool) {
	if ec.User == nil {
		return identity.Principal{}, false
	}
	p, ok := ec.User.Attributes[principalAttr].(identity.Principal)
	return p, ok
}

// callOf reads the tool call of a message: its data part, or for a message
// that goes on with a task waiting for consent, the task's own call and the
// consent request it waits for.
func callOf(ec *a2asrv.ExecutorContext) (call toolCall, resume string, err error) {
	if t := ec.StoredTask; t != nil && t.Status.State == spec.TaskStateInputRequired && t.Status.Message != nil {
		for _, part := range t.Status.Message.Parts {
			var pc pendingConsent
			if decodePart(part, &pc) && pc.Consent.ID != "" && pc.Tool != "" {
				return pc.toolCall, pc.Consent.ID, nil
			}
		}
	}
	if ec.Message != nil {
		for _, part := range ec.Message.Parts {
			if decodePart(part, &call) && call.Tool != "" {
				return call, "", nil
			}
		}
	}
	return call, "", errors.Join(spec.ErrInvalidParams, errors.New(`the message needs a data part {"tool": NAME, "arguments": {...}}`))
}

// plain is v as JSON's own values (maps, slices, strings, numbers): what a
// task store can copy.
func plain(v any) any {
	b, _ := json.Marshal(v) // plain data always encodes
	var out any
	_ = json.Unmarshal(b, &out)
	return out
}

// decodePart decodes a data part into v.
func decodePart(part *spec.Part, v any) bool {
	d := part.Data()
	if d == nil {
		return false
	}
	b, err := json.Marshal(d)
	return err == nil && json.Unmarshal(b, v) == nil
}

// later is the A2A channel's Asker: a call waiting for consent answers at
// once (INPUT_REQUIRED with the request's page) and goes on when the client
// sends the task its next message.
type later struct{}

func (later) Later() bool { return true }

func (later) Ask(context.Context, string, string, string) (bool, error) { return false, nil }

func (later) Done(string) {}
