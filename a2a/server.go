package a2a

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	spec "github.com/a2aproject/a2a-go/v2/a2a"
	"github.com/a2aproject/a2a-go/v2/a2acompat/a2av0"
	"github.com/a2aproject/a2a-go/v2/a2asrv"

	"github.com/sag-gateway/sag/identity"
	"github.com/sag-gateway/sag/pipeline"
	"github.com/sag-gateway/sag/store"
)

// Runner runs a call through the pipeline.
type Runner interface {
	Run(ctx context.Context, c *pipeline.Call) pipeline.Outcome
}

// Tool is a tool a caller may use, as its extended card lists it.
type Tool struct {
	Name, Description string
}

// Options configure the A2A endpoints.
type Options struct {
	Pipeline Runner
	Tasks    TaskStore
	// Principal returns the authenticated caller of a request's context
	// (the server authenticates before the A2A handler sees it).
	Principal func(ctx context.Context) (identity.Principal, bool)
	// Tools lists the tools p may call (the extended card's skills).
	Tools func(ctx context.Context, p identity.Principal) ([]Tool, error)
	// CancelConsent withdraws the consent request a cancelled task waits
	// for.
	CancelConsent func(ctx context.Context, id string) error
	// URL is the public URL of the JSON-RPC endpoint; the HTTP+JSON
	// binding is at URL + "/rest".
	URL     string
	Version string
	// Auth is the gateway's agent authentication ("open", "bearer",
	// "dpop"); MTLS says agents may present an X.509-SVID.
	Auth string
	MTLS bool
	Now  func() time.Time
	Log  *slog.Logger
}

// CardPath is where the public agent card is served.
const CardPath = "/.well-known/agent-card.json"

// Server is SAG's A2A agent: a message's data part {"tool", "arguments"}
// is one tool call through the pipeline; the task ends COMPLETED with the
// result as an artifact, FAILED on a tool error, REJECTED when it is
// denied, and waits in INPUT_REQUIRED while its user's consent is asked (a
// message on the same task goes on once it is given). Tasks are stored,
// each its caller's alone.
type Server struct {
	// RPC serves JSON-RPC (A2A 1.0, and 0.3 for clients that send no
	// A2A-Version or 0.3); REST the HTTP+JSON binding; Card the public
	// agent card.
	RPC, REST, Card http.Handler
	o               Options
	tasks           tasks
}

// New builds the A2A endpoints.
func New(o Options) *Server {
	if o.Now == nil {
		o.Now = time.Now
	}
	s := &Server{o: o, tasks: tasks{st: o.Tasks, now: o.Now}}
	card := s.card()
	opts := []a2asrv.RequestHandlerOption{
		a2asrv.WithCallInterceptors(principalInterceptor{o.Principal, s.tasks}),
		a2asrv.WithTaskStore(s.tasks),
		a2asrv.WithExtendedAgentCardProducer(a2asrv.ExtendedAgentCardProducerFn(s.extendedCard)),
		a2asrv.WithCapabilityChecks(&card.Capabilities),
	}
	if o.Log != nil {
		opts = append(opts, a2asrv.WithLogger(o.Log.With("channel", "a2a")))
	}
	h := a2asrv.NewHandler(&executor{s: s}, opts...)
	v1, v0 := a2asrv.NewJSONRPCHandler(h), a2av0.NewJSONRPCHandler(h)
	s.RPC = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch v := r.Header.Get(spec.SvcParamVersion); v {
		case string(spec.Version), "1":
			v1.ServeHTTP(w, r)
		case "", string(a2av0.Version):
			// A2A §3.6: no version header means 0.3.
			v0.ServeHTTP(w, r)
		default:
			writeVersionError(w, v)
		}
	})
	s.REST = a2asrv.NewRESTHandler(h)
	// The card is A2A 1.0's (the SDK's 0.3 union form writes security
	// schemes only as 0.3 has them, which 1.0 clients cannot read); it
	// lists the 0.3 JSON-RPC interface too.
	s.Card = a2asrv.NewStaticAgentCardHandler(card)
	return s
}

// writeVersionError answers a request for an A2A version SAG does not
// speak: JSON-RPC error -32009 (VersionNotSupportedError).
func writeVersionError(w http.ResponseWriter, v string) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"jsonrpc": "2.0", "id": nil, "error": map[string]any{
		"code": -32009, "message": fmt.Sprintf("A2A-Version %q is not supported: use %s or %s", v, spec.Version, a2av0.Version)}})
}

// card is the public agent card: what SAG is, its bindings, how to
// authenticate, and the generic skill. The caller's own tools are in the
// extended card.
func (s *Server) card() *spec.AgentCard {
	o := s.o
	c := &spec.AgentCard{
		Name:        "SAG",
		Description: "Session-Aware Agent Gateway: the tools its upstream MCP servers offer, under the caller's allow-lists, consent and audit.",
		Version:     o.Version,
		SupportedInterfaces: []*spec.AgentInterface{
			spec.NewAgentInterface(o.URL, spec.TransportProtocolJSONRPC),
			spec.NewAgentInterface(o.URL+"/rest", spec.TransportProtocolHTTPJSON),
			{URL: o.URL, ProtocolBinding: spec.TransportProtocolJSONRPC, ProtocolVersion: a2av0.Version},
		},
		Capabilities:       spec.AgentCapabilities{Streaming: true, ExtendedAgentCard: true},
		DefaultInputModes:  []string{"application/json"},
		DefaultOutputModes: []string{"application/json", "text/plain"},
		Skills: []spec.AgentSkill{{
			ID:          "call-tool",
			Name:        "Call a tool",
			Description: `Send a data part {"tool": NAME, "arguments": {...}}: one call of a tool the caller may use (the extended card lists them as skills).`,
			Tags:        []string{"mcp", "tools"},
			InputModes:  []string{"application/json"},
		}},
	}
	var scheme spec.SecuritySchemeName
	switch o.Auth {
	case "bearer":
		scheme = "bearer"
		c.SecuritySchemes = spec.NamedSecuritySchemes{scheme: spec.HTTPAuthSecurityScheme{Scheme: "Bearer", BearerFormat: "JWT",
			Description: "an access token from one of the gateway's trusted issuers (RFC 6750)"}}
	case "dpop":
		scheme = "dpop"
		c.SecuritySchemes = spec.NamedSecuritySchemes{scheme: spec.HTTPAuthSecurityScheme{Scheme: "DPoP", BearerFormat: "JWT",
			Description: "a DPoP-bound access token with a fresh DPoP proof on every request (RFC 9449)"}}
	}
	if scheme != "" {
		c.SecurityRequirements = spec.SecurityRequirementsOptions{{scheme: {}}}
		if o.MTLS {
			c.SecuritySchemes["mtls"] = spec.MutualTLSSecurityScheme{Description: "an X.509-SVID of the gateway's trust domain names the agent (SPIFFE)"}
			c.SecurityRequirements = append(spec.SecurityRequirementsOptions{{scheme: {}, "mtls": {}}}, c.SecurityRequirements...)
		}
	}
	return c
}

// UpstreamCard is the card of an upstream agent as SAG offers it: the
// agent's name, description and skills (named as SAG's tools, which is how
// callers name them), with SAG's interfaces and security schemes in place
// of the agent's own, and none of its signatures (SAG's card is not the
// agent's signed one). A message to SAG naming one of these skills in its
// metadata "skillId" calls it with the message's text.
func (s *Server) UpstreamCard(card *spec.AgentCard, tools map[string]string) *spec.AgentCard {
	c := s.card()
	c.Name, c.Description, c.Provider, c.DocumentationURL, c.IconURL = card.Name, card.Description, card.Provider, card.DocumentationURL, card.IconURL
	c.Capabilities.ExtendedAgentCard = false
	c.DefaultInputModes, c.DefaultOutputModes = []string{"text/plain", "application/json"}, []string{"text/plain", "application/json"}
	c.Skills = nil
	for _, sk := range card.Skills {
		if name, ok := tools[sk.ID]; ok {
			sk.ID = name
			sk.SecurityRequirements = nil
			c.Skills = append(c.Skills, sk)
		}
	}
	return c
}

// extendedCard is the card with the caller's own tools as skills.
func (s *Server) extendedCard(ctx context.Context, _ *spec.GetExtendedAgentCardRequest) (*spec.AgentCard, error) {
	cc, ok := a2asrv.CallContextFrom(ctx)
	if !ok {
		return nil, spec.ErrUnauthenticated
	}
	p, ok := userPrincipal(cc.User)
	if !ok {
		return nil, spec.ErrUnauthenticated
	}
	tools, err := s.o.Tools(ctx, p)
	if err != nil {
		return nil, err
	}
	c := s.card()
	for _, t := range tools {
		c.Skills = append(c.Skills, spec.AgentSkill{ID: t.Name, Name: t.Name, Description: t.Description, Tags: []string{"tool"},
			InputModes: []string{"application/json"}})
	}
	return c, nil
}

// principalAttr carries the caller's principal in the A2A user's
// attributes; blockingAttr marks a blocking SendMessage of a new task.
const (
	principalAttr = "sag.principal"
	blockingAttr  = "sag.blocking"
)

// principalInterceptor hands the authenticated principal to the executor.
type principalInterceptor struct {
	principal func(ctx context.Context) (identity.Principal, bool)
	tasks     tasks
}

func (pi principalInterceptor) Before(ctx context.Context, cc *a2asrv.CallContext, req *a2asrv.Request) (context.Context, any, error) {
	p, ok := pi.principal(ctx)
	if !ok {
		return ctx, nil, spec.ErrUnauthenticated
	}
	attrs := map[string]any{principalAttr: p}
	if send, ok := req.Payload.(*spec.SendMessageRequest); ok && cc.Method() == "SendMessage" && send.Message != nil && send.Message.TaskID == "" &&
		(send.Config == nil || !send.Config.ReturnImmediately) {
		// A blocking SendMessage of a new task: its caller learns of the
		// task only when it ends.
		attrs[blockingAttr] = true
	}
	cc.User = a2asrv.NewAuthenticatedUser(p.Key(), attrs)
	if sub, ok := req.Payload.(*spec.SubscribeToTaskRequest); ok {
		// The SDK follows a running task by its id alone: only its owner
		// may (another principal's task is not found, A2A §3.3.2).
		if _, err := pi.tasks.Get(ctx, sub.ID); err != nil {
			return ctx, nil, err
		}
	}
	return ctx, nil, nil
}

func (principalInterceptor) After(context.Context, *a2asrv.CallContext, *a2asrv.Response) error {
	return nil
}

// executor runs each task's tool call through the pipeline.
type executor struct{ s *Server }

// toolCall is the data part of a message that calls a tool (by its name as
// "tool", or as the extended card's skill id).
type toolCall struct {
	Tool      string          `json:"tool"`
	Skill     string          `json:"skill,omitempty"`
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

// pendingAgent is the data part of an INPUT_REQUIRED status whose upstream
// agent asks its caller something: the next message is the answer, sent on
// the agent's task.
type pendingAgent struct {
	Agent agentState `json:"agent"`
	toolCall
}

// agentState is what a tool result says of an upstream agent's task
// (structuredContent "a2a").
type agentState struct {
	State     string `json:"state"`
	TaskID    string `json:"taskId,omitempty"`
	ContextID string `json:"contextId,omitempty"`
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
		// A blocking SendMessage of a new task stores it once, when it
		// ends: nobody can ask for it before (its id is in the answer).
		blocking := ec.StoredTask == nil && ec.User != nil && ec.User.Attributes[blockingAttr] == true
		task := ec.StoredTask
		if task == nil {
			task = spec.NewSubmittedTask(ec, ec.Message)
			if !blocking && !yield(task, nil) {
				return
			}
		}
		c := &pipeline.Call{Principal: p, Channel: pipeline.A2A, Kind: pipeline.ToolCall, Workflow: workflowOf(ec),
			Name: call.Tool, Args: call.Arguments, Asker: later{}, Resume: resume}
		// An upstream agent's status updates reach a followed task as
		// WORKING while the call runs (yield is not called once Run
		// returned).
		var mu sync.Mutex
		running, progressed := true, false
		if !blocking {
			c.Progress = func(msg string) {
				mu.Lock()
				defer mu.Unlock()
				if running {
					progressed = true
					running = yield(spec.NewStatusUpdateEvent(ec, spec.TaskStateWorking, spec.NewMessageForTask(spec.MessageRoleAgent, ec, spec.NewTextPart(msg))), nil)
				}
			}
		}
		out := e.s.o.Pipeline.Run(ctx, c)
		mu.Lock()
		stopped := !running
		running = false
		mu.Unlock()
		if stopped {
			return
		}
		evs := events(ec, call, out)
		last, _ := evs[len(evs)-1].(*spec.TaskStatusUpdateEvent)
		if nodes := c.Sessions.Nodes(); len(nodes) > 0 && last != nil && !last.Status.State.Terminal() {
			// The task waits: a kill of any of these nodes cancels it.
			if err := e.s.o.Tasks.BindA2ATask(context.WithoutCancel(ctx), string(ec.TaskID), nodes); err != nil {
				yield(nil, err)
				return
			}
		}
		if !progressed {
			// The task as it ends, stored in one write (the SDK would
			// store each event).
			evs = []spec.Event{fold(task, evs)}
		}
		for _, ev := range evs {
			if !yield(ev, nil) {
				return
			}
		}
	}
}

// workflowOf is the workflow of a task's call: the context its client
// named, in this message or the one that started the task (one SAG made up
// for a task without it is no workflow of the client's: each such task
// would otherwise open a workflow of its own).
func workflowOf(ec *a2asrv.ExecutorContext) string {
	if ec.Message.ContextID != "" {
		return ec.Message.ContextID
	}
	if t := ec.StoredTask; t != nil && len(t.History) > 0 && t.History[0] != nil {
		return t.History[0].ContextID
	}
	return ""
}

// fold applies status and artifact events to a copy of task, as the SDK
// does when it stores them.
func fold(task *spec.Task, evs []spec.Event) *spec.Task {
	t := *task
	t.History, t.Artifacts = slices.Clone(task.History), slices.Clone(task.Artifacts)
	for _, ev := range evs {
		switch e := ev.(type) {
		case *spec.TaskArtifactUpdateEvent:
			t.Artifacts = append(t.Artifacts, e.Artifact)
		case *spec.TaskStatusUpdateEvent:
			if t.Status.Message != nil {
				t.History = append(t.History, t.Status.Message)
			}
			t.Status = e.Status
		}
	}
	return &t
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
		switch {
		case out.Err.Code == pipeline.CodeCancelled:
			state = spec.TaskStateCanceled
		case out.Record.Decision == pipeline.DecisionDeny:
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
	var upstream struct {
		A2A agentState `json:"a2a"`
	}
	if decodeAny(res.StructuredContent, &upstream) && upstream.A2A.State == "input-required" && upstream.A2A.TaskID != "" {
		// An upstream agent asks for input: the task waits for the answer.
		pa := pendingAgent{Agent: upstream.A2A, toolCall: call}
		var question []string
		for _, c := range res.Content {
			question = append(question, c.Text)
		}
		return []spec.Event{spec.NewStatusUpdateEvent(ec, spec.TaskStateInputRequired, spec.NewMessageForTask(spec.MessageRoleAgent, ec,
			spec.NewDataPart(plain(pa)), spec.NewTextPart(strings.Join(question, "\n"))))}
	}
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

// Cancel ends a task; a task waiting for consent withdraws its request
// (a running call is cancelled by the SDK, which ends its context).
func (e *executor) Cancel(ctx context.Context, ec *a2asrv.ExecutorContext) iter.Seq2[spec.Event, error] {
	return func(yield func(spec.Event, error) bool) {
		if id := waitingConsent(ec.StoredTask); id != "" {
			if err := e.s.o.CancelConsent(ctx, id); err != nil {
				yield(nil, err)
				return
			}
		}
		yield(spec.NewStatusUpdateEvent(ec, spec.TaskStateCanceled, nil), nil)
	}
}

// Killed cancels every live task whose calls ran under a killed
// session-graph node; it returns how many.
func (s *Server) Killed(ctx context.Context, killed map[string]bool) (int, error) {
	live, err := s.o.Tasks.LiveA2ATasks(ctx)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, r := range live {
		if !slices.ContainsFunc(r.Nodes, func(id string) bool { return killed[id] }) {
			continue
		}
		t, err := decodeTask(r.Task)
		if err != nil {
			return n, err
		}
		now := s.o.Now()
		t.Status = spec.TaskStatus{State: spec.TaskStateCanceled, Timestamp: &now,
			Message: spec.NewMessageForTask(spec.MessageRoleAgent, t, spec.NewTextPart("cancelled: its session was killed"))}
		up, err := s.tasks.record(r.Owner, t, r.Version+1)
		if err != nil {
			return n, err
		}
		switch err := s.o.Tasks.UpdateA2ATask(ctx, up, r.Version); {
		case errors.Is(err, store.ErrConflict):
			// It moved on meanwhile: its running call was cancelled too.
		case err != nil:
			return n, err
		default:
			n++
		}
	}
	return n, nil
}

// principalOf returns the principal principalInterceptor attached.
func principalOf(ec *a2asrv.ExecutorContext) (identity.Principal, bool) {
	return userPrincipal(ec.User)
}

// userPrincipal is the principal principalInterceptor gave u.
func userPrincipal(u *a2asrv.User) (identity.Principal, bool) {
	if u == nil {
		return identity.Principal{}, false
	}
	p, ok := u.Attributes[principalAttr].(identity.Principal)
	return p, ok
}

// waitingParts are the parts of the status of a task waiting in
// INPUT_REQUIRED (for consent, or for an upstream agent's answer); nil for
// any other.
func waitingParts(t *spec.Task) []*spec.Part {
	if t == nil || t.Status.State != spec.TaskStateInputRequired || t.Status.Message == nil {
		return nil
	}
	return t.Status.Message.Parts
}

// callOf reads the tool call of a message: its data part, or for a message
// that goes on with a task waiting for consent, the task's own call and the
// consent request it waits for.
func callOf(ec *a2asrv.ExecutorContext) (call toolCall, resume string, err error) {
	for _, part := range waitingParts(ec.StoredTask) {
		var pc pendingConsent
		if decodePart(part, &pc) && pc.Consent.ID != "" && pc.Tool != "" {
			return pc.toolCall, pc.Consent.ID, nil
		}
		var pa pendingAgent
		if decodePart(part, &pa) && pa.Agent.TaskID != "" && pa.Tool != "" {
			// The message answers the upstream agent's question.
			args, _ := json.Marshal(map[string]string{"message": messageText(ec.Message), "taskId": pa.Agent.TaskID, "contextId": pa.Agent.ContextID})
			return toolCall{Tool: pa.Tool, Arguments: args}, "", nil
		}
	}
	if ec.Message != nil {
		if skill, _ := ec.Message.Metadata["skillId"].(string); skill != "" {
			// A message to a skill of an upstream agent's card: its text is
			// the agent skill's message.
			if text := messageText(ec.Message); text != "" {
				args, _ := json.Marshal(map[string]string{"message": text})
				return toolCall{Tool: skill, Arguments: args}, "", nil
			}
		}
		for _, part := range ec.Message.Parts {
			if decodePart(part, &call) && (call.Tool != "" || call.Skill != "") {
				if call.Tool == "" {
					call.Tool = call.Skill
				}
				call.Skill = ""
				return call, "", nil
			}
		}
	}
	return call, "", errors.Join(spec.ErrInvalidParams, errors.New(`the message needs a data part {"tool": NAME, "arguments": {...}}`))
}

// waitingConsent is the consent request a task in INPUT_REQUIRED waits
// for, "" for none.
func waitingConsent(t *spec.Task) string {
	for _, part := range waitingParts(t) {
		var pc pendingConsent
		if decodePart(part, &pc) && pc.Consent.ID != "" {
			return pc.Consent.ID
		}
	}
	return ""
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
	return decodeAny(part.Data(), v)
}

// decodeAny decodes JSON values (maps, slices, …) into v.
func decodeAny(d, v any) bool {
	if d == nil {
		return false
	}
	b, err := json.Marshal(d)
	return err == nil && json.Unmarshal(b, v) == nil
}

// messageText is the text of a message's text parts.
func messageText(m *spec.Message) string {
	if m == nil {
		return ""
	}
	var out []string
	for _, p := range m.Parts {
		if t := p.Text(); t != "" {
			out = append(out, t)
		}
	}
	return strings.Join(out, " ")
}

// later is the A2A channel's Asker: a call waiting for consent answers at
// once (INPUT_REQUIRED with the request's page) and goes on when the client
// sends the task its next message.
type later struct{}

func (later) Later() bool { return true }

func (later) Ask(context.Context, string, string, string) (bool, error) { return false, nil }

func (later) Done(string) {}
