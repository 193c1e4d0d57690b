package agui

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/sag-gateway/sag/consent"
	"github.com/sag-gateway/sag/identity"
)

// AllThreads is the reserved thread id whose runs follow every session of
// the user, not one workflow.
const AllThreads = "sag:all"

// RequestThreadPrefix, followed by a consent request id, is the reserved
// thread id of that one request: a UI that shows several open requests
// answers each on its own thread (AG-UI 1.0: a resume addresses every open
// interrupt of its thread).
const RequestThreadPrefix = "sag:consent:"

// Consents is what the stream needs of the consent engine.
type Consents interface {
	Pending(ctx context.Context) ([]consent.Request, error)
	Decide(ctx context.Context, id string, d consent.Decision) (consent.Request, error)
	MayDecide(r consent.Request, p identity.Principal) bool
	Changed() <-chan struct{}
	// Result waits for how an approved call ended (the text a tool result
	// shows).
	Result(ctx context.Context, id string) (string, error)
}

// Activity is a user's live activity: their recent calls.
type Activity interface {
	// Recent returns p's recent calls, oldest first, and a channel closed
	// at p's next call.
	Recent(p identity.Principal) ([]CallActivity, <-chan struct{})
}

// CallActivity is one call as the stream shows it (in its state, under
// calls).
type CallActivity struct {
	Seq       uint64    `json:"seq"`
	Time      time.Time `json:"time"`
	Method    string    `json:"method"`
	Name      string    `json:"name"`
	Upstream  string    `json:"upstream,omitempty"`
	Agent     string    `json:"agent,omitempty"`
	WSID      string    `json:"wsid,omitempty"`
	Decision  string    `json:"decision"`
	Reason    string    `json:"reason,omitempty"`
	ConsentID string    `json:"consentId,omitempty"`
}

// Options configure a Stream.
type Options struct {
	Consents Consents
	Activity Activity
	// Principal returns the authenticated caller of a request (the server
	// authenticates before the stream sees it).
	Principal func(*http.Request) (identity.Principal, bool)
	// Workflow returns the WSID of p's workflow named threadID (the
	// Sag-Workflow-Id value its agents send); ok is false for a thread id
	// no workflow can have.
	Workflow func(p identity.Principal, threadID string) (wsid string, ok bool)
	// Listening marks p as following its consent requests while a run is
	// open; the returned func ends that.
	Listening func(p identity.Principal) (done func())
	// Heartbeat is how often a waiting run sends a keep-alive comment.
	Heartbeat time.Duration
	// ResultWait bounds how long a resumed run waits for the calls it
	// approved to finish (default 2m).
	ResultWait time.Duration
	// Runs starts the runs of upstream AG-UI agents (ServeAgent), and
	// CheckEvent checks each of their events; nil Runs serves none.
	Runs       Runs
	CheckEvent func(raw []byte) error
	Log        *slog.Logger
}

// Stream serves POST /agui: the AG-UI 1.0 consent stream of the
// authenticated user. A run attached to a thread (a workflow id, or
// AllThreads) waits until calls of that thread need the user's consent and
// ends with them as interrupts; a run with resume entries answers them.
type Stream struct {
	o    Options
	runs agentRuns
}

// NewStream returns a Stream.
func NewStream(o Options) *Stream {
	if o.Heartbeat <= 0 {
		o.Heartbeat = 15 * time.Second
	}
	if o.ResultWait <= 0 {
		o.ResultWait = 2 * time.Minute
	}
	return &Stream{o: o}
}

// maxInput bounds a RunAgentInput.
const maxInput = 1 << 20

// runInput is the part of RunAgentInput the stream reads.
type runInput struct {
	ThreadID string            `json:"threadId"`
	RunID    string            `json:"runId"`
	Messages []json.RawMessage `json:"messages"`
	Resume   []resumeEntry     `json:"resume"`
	// ForwardedProps.knownInterrupts lists the open interrupts the client
	// already shows: an attached run waits until the thread's open set
	// differs from it, instead of ending at once with the same interrupts.
	ForwardedProps json.RawMessage `json:"forwardedProps"`
}

// known returns the interrupt ids of forwardedProps.knownInterrupts (none
// when forwardedProps is anything else).
func (in runInput) known() map[string]bool {
	var fp struct {
		Known []string `json:"knownInterrupts"`
	}
	_ = json.Unmarshal(in.ForwardedProps, &fp) // forwardedProps is free-form
	out := make(map[string]bool, len(fp.Known))
	for _, id := range fp.Known {
		out[id] = true
	}
	return out
}

// thread is what a run's threadId selects: one workflow, one consent
// request, or all of the user's sessions.
type thread struct {
	wsid, request string
}

func (t thread) has(r consent.Request) bool {
	return (t.wsid == "" || r.WSID == t.wsid) && (t.request == "" || r.ID == t.request)
}

func (t thread) hasCall(c CallActivity) bool {
	return (t.wsid == "" || c.WSID == t.wsid) && (t.request == "" || c.ConsentID == t.request)
}

// thread resolves a threadId for p.
func (s *Stream) thread(p identity.Principal, id string) (thread, error) {
	switch {
	case id == AllThreads:
		return thread{}, nil
	case strings.HasPrefix(id, RequestThreadPrefix) && len(id) > len(RequestThreadPrefix):
		return thread{request: strings.TrimPrefix(id, RequestThreadPrefix)}, nil
	}
	wsid, ok := s.o.Workflow(p, id)
	if !ok {
		return thread{}, &runError{Code: "INVALID_THREAD", Message: "threadId must be a workflow id (1-128 visible ASCII characters), " + AllThreads + " or " + RequestThreadPrefix + "<request id>"}
	}
	return thread{wsid: wsid}, nil
}

type resumeEntry struct {
	InterruptID string          `json:"interruptId"`
	Status      string          `json:"status"` // resolved or cancelled
	Payload     json.RawMessage `json:"payload"`
}

// answer is the payload of a resolved interrupt (its responseSchema).
type answer struct {
	Approved   *bool           `json:"approved"`
	EditedArgs json.RawMessage `json:"editedArgs"`
}

func (s *Stream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		httpError(w, http.StatusMethodNotAllowed, "use POST with a RunAgentInput")
		return
	}
	p, ok := s.user(w, r)
	if !ok {
		return
	}
	var in runInput
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxInput))
	err := dec.Decode(&in)
	if err == nil {
		// One JSON value, nothing after it.
		if _, extra := dec.Token(); extra != io.EOF {
			err = errors.New("data after the RunAgentInput")
		}
	}
	if err != nil || in.ThreadID == "" || in.RunID == "" || in.Messages == nil {
		httpError(w, http.StatusBadRequest, "the body must be a RunAgentInput with threadId, runId and messages")
		return
	}
	out, err := newSSE(w)
	if err != nil {
		httpError(w, http.StatusInternalServerError, "streaming unavailable")
		return
	}
	s.serveRun(r.Context(), out, p, in)
}

// user returns the user a consent stream request comes from, or answers
// it: the stream shows a user's calls and decides their consent, so it is
// the user's, not an agent's acting for them.
func (s *Stream) user(w http.ResponseWriter, r *http.Request) (identity.Principal, bool) {
	p, ok := s.o.Principal(r)
	switch {
	case !ok:
		httpError(w, http.StatusUnauthorized, "not authenticated")
	case p.Agent != "" || p.Act != nil:
		httpError(w, http.StatusForbidden, "the consent stream is for users, not agents")
		ok = false
	}
	return p, ok
}

// emitter is where a run's events go: an SSE response or a WebSocket.
type emitter interface {
	send(ev any) error
	comment() error // a keep-alive
}

// serveRun runs one run on out, from RUN_STARTED to RUN_FINISHED or
// RUN_ERROR.
func (s *Stream) serveRun(ctx context.Context, out emitter, p identity.Principal, in runInput) {
	if err := out.send(runStarted{Type: "RUN_STARTED", ThreadID: in.ThreadID, RunID: in.RunID}); err != nil {
		return
	}
	if err := s.run(ctx, out, p, in); err != nil {
		var re *runError
		if !errors.As(err, &re) {
			s.o.Log.Error("consent stream failed", "error", err)
			re = &runError{Message: "the consent stream failed"}
		}
		re.Type = "RUN_ERROR"
		_ = out.send(re)
	}
}

func (re *runError) Error() string { return re.Message }

// run answers one run: resume entries, or wait for interrupts.
func (s *Stream) run(ctx context.Context, out emitter, p identity.Principal, in runInput) error {
	th, err := s.thread(p, in.ThreadID)
	if err != nil {
		return err
	}
	open, err := s.open(ctx, p, th)
	if err != nil {
		return err
	}
	if len(in.Resume) > 0 {
		return s.resumed(ctx, out, p, in, open)
	}
	if newInput(in.Messages) && len(open) > 0 {
		return &runError{Code: "INTERRUPTS_PENDING", Message: fmt.Sprintf("%d interrupts are open on this thread; answer them with resume before sending new input", len(open))}
	}
	defer s.o.Listening(p)()
	// The state: the thread, its open consent requests, and the user's
	// recent calls on it, kept current with STATE_DELTA (JSON Patch).
	calls, actChanged := s.recent(p, th, 0)
	if err := out.send(stateSnapshot{Type: "STATE_SNAPSHOT", Snapshot: map[string]any{"thread": in.ThreadID, "pendingConsents": len(open), "calls": calls}}); err != nil {
		return nil // the client is gone
	}
	shown := len(calls)
	var last uint64
	if shown > 0 {
		last = calls[shown-1].Seq
	}
	beat := time.NewTicker(s.o.Heartbeat)
	defer beat.Stop()
	known := in.known()
	for sameIDs(open, known) {
		changed := s.o.Consents.Changed()
		if open, err = s.open(ctx, p, th); err != nil || !sameIDs(open, known) {
			break
		}
		select {
		case <-ctx.Done():
			return nil
		case <-beat.C:
			if out.comment() != nil {
				return nil
			}
		case <-changed:
		case <-actChanged:
			var fresh []CallActivity
			if fresh, actChanged = s.recent(p, th, last); len(fresh) == 0 {
				continue
			}
			last = fresh[len(fresh)-1].Seq
			if out.send(stateDelta{Type: "STATE_DELTA", Delta: addCalls(fresh, &shown)}) != nil {
				return nil
			}
		}
	}
	if err != nil {
		return err
	}
	calls, _ = s.recent(p, th, 0)
	if len(open) == 0 {
		// The requests the client showed were decided elsewhere, expired
		// or were cancelled: nothing is open any more.
		if out.send(stateSnapshot{Type: "STATE_SNAPSHOT", Snapshot: map[string]any{"thread": in.ThreadID, "pendingConsents": 0, "calls": calls}}) != nil {
			return nil
		}
		return out.send(runFinished{Type: "RUN_FINISHED", ThreadID: in.ThreadID, RunID: in.RunID, Outcome: &outcome{Type: "success"}})
	}
	return s.interrupt(out, in, open, calls)
}

// sameIDs reports whether open holds exactly the requests known names.
func sameIDs(open []consent.Request, known map[string]bool) bool {
	if len(open) != len(known) {
		return false
	}
	for _, r := range open {
		if !known[r.ID] {
			return false
		}
	}
	return true
}

// resumed answers a run with resume entries: the decisions, then how each
// call it approved ended, against the original tool call.
func (s *Stream) resumed(ctx context.Context, out emitter, p identity.Principal, in runInput, open []consent.Request) error {
	approved, err := s.resume(ctx, p, open, in.Resume)
	if err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, s.o.ResultWait)
	defer cancel()
	for _, id := range approved {
		text, err := s.o.Consents.Result(wctx, id)
		if err != nil {
			continue // the call did not finish while the run waited
		}
		if out.send(toolCallResult{Type: "TOOL_CALL_RESULT", MessageID: "res_" + id, ToolCallID: "call_" + id, Content: text, Role: "tool"}) != nil {
			return nil
		}
	}
	return out.send(runFinished{Type: "RUN_FINISHED", ThreadID: in.ThreadID, RunID: in.RunID, Outcome: &outcome{Type: "success"}})
}

// addCalls is the JSON Patch that appends calls to the state's calls,
// dropping the oldest past maxShownCalls; shown counts what the state holds.
func addCalls(calls []CallActivity, shown *int) []patchOp {
	var delta []patchOp
	for _, c := range calls {
		delta = append(delta, patchOp{Op: "add", Path: "/calls/-", Value: c})
		if *shown++; *shown > maxShownCalls {
			delta = append(delta, patchOp{Op: "remove", Path: "/calls/0"})
			*shown--
		}
	}
	return delta
}

// maxShownCalls is how many calls a run's state holds.
const maxShownCalls = 50

// recent returns p's calls on the thread newer than seq, and a channel
// closed at p's next call.
func (s *Stream) recent(p identity.Principal, th thread, after uint64) ([]CallActivity, <-chan struct{}) {
	all, changed := s.o.Activity.Recent(p)
	out := []CallActivity{}
	for _, c := range all {
		if c.Seq > after && th.hasCall(c) {
			out = append(out, c)
		}
	}
	return out, changed
}

// newInput reports whether a run brings new input: a user message last.
// Clients send the whole conversation, the stream's own earlier messages
// included, so those alone are not new input.
func newInput(msgs []json.RawMessage) bool {
	if len(msgs) == 0 {
		return false
	}
	var last struct {
		Role string `json:"role"`
	}
	return json.Unmarshal(msgs[len(msgs)-1], &last) != nil || last.Role == "user"
}

// open returns the pending requests of the thread that p may decide.
func (s *Stream) open(ctx context.Context, p identity.Principal, th thread) ([]consent.Request, error) {
	all, err := s.o.Consents.Pending(ctx)
	if err != nil {
		return nil, err
	}
	var out []consent.Request
	for _, r := range all {
		if s.o.Consents.MayDecide(r, p) && th.has(r) {
			out = append(out, r)
		}
	}
	return out, nil
}

// interrupt ends a run with the thread's open requests as interrupts, each
// first shown as the tool call it is.
func (s *Stream) interrupt(out emitter, in runInput, open []consent.Request, calls []CallActivity) error {
	var msgs []message
	var ints []interrupt
	for _, r := range open {
		callID, msgID := "call_"+r.ID, "msg_"+r.ID
		name := r.Upstream + "/" + r.Tool
		args := string(r.Args)
		if args == "" {
			args = "{}"
		}
		for _, ev := range []any{
			toolCallStart{Type: "TOOL_CALL_START", ToolCallID: callID, ToolCallName: name, ParentMessageID: msgID},
			toolCallArgs{Type: "TOOL_CALL_ARGS", ToolCallID: callID, Delta: args},
			toolCallEnd{Type: "TOOL_CALL_END", ToolCallID: callID},
		} {
			if err := out.send(ev); err != nil {
				return nil
			}
		}
		msgs = append(msgs, message{ID: msgID, Role: "assistant", ToolCalls: []toolCall{{ID: callID, Type: "function", Function: functionCall{Name: name, Arguments: args}}}})
		who := r.Agent
		if who == "" {
			who = "an agent"
		}
		ints = append(ints, interrupt{
			ID: r.ID, Reason: "tool_call", ToolCallID: callID, ResponseSchema: r.ResponseSchema,
			Message:   fmt.Sprintf("%s asks to call %s on %s for %s: %s", who, r.Tool, r.Upstream, r.User, r.Reason),
			ExpiresAt: r.Expires.UTC().Format(time.RFC3339Nano),
			Metadata:  map[string]any{"upstream": r.Upstream, "tool": r.Tool, "agent": r.Agent, "user": r.User, "rule": r.RuleID, "allowEdits": r.AllowEdits, "risk": r.Risk},
		})
	}
	for _, ev := range []any{
		stateSnapshot{Type: "STATE_SNAPSHOT", Snapshot: map[string]any{"thread": in.ThreadID, "pendingConsents": len(open), "calls": calls}},
		messagesSnapshot{Type: "MESSAGES_SNAPSHOT", Messages: msgs},
		runFinished{Type: "RUN_FINISHED", ThreadID: in.ThreadID, RunID: in.RunID, Outcome: &outcome{Type: "interrupt", Interrupts: ints}},
	} {
		if err := out.send(ev); err != nil {
			return nil
		}
	}
	return nil
}

// resume decides the interrupts a run answers and returns the ids it
// approved (not those a replay repeats). AG-UI 1.0: one resume addresses
// every open interrupt of the thread; an unknown, stale or expired one is
// an error; an identical replay is harmless.
func (s *Stream) resume(ctx context.Context, p identity.Principal, open []consent.Request, entries []resumeEntry) ([]string, error) {
	seen := map[string]bool{}
	for _, e := range entries {
		if e.InterruptID == "" || seen[e.InterruptID] {
			return nil, &runError{Code: "INVALID_RESUME", Message: "each resume entry names a different interrupt"}
		}
		seen[e.InterruptID] = true
	}
	for _, r := range open {
		if !seen[r.ID] {
			return nil, &runError{Code: "INTERRUPTS_UNADDRESSED", Message: "the resume must answer every open interrupt; missing " + r.ID}
		}
	}
	wasOpen := map[string]bool{}
	for _, r := range open {
		wasOpen[r.ID] = true
	}
	var approved []string
	for _, e := range entries {
		d := consent.Decision{By: p, Channel: "ag-ui"}
		switch e.Status {
		case "cancelled":
		case "resolved":
			var a answer
			dec := json.NewDecoder(bytes.NewReader(e.Payload))
			dec.DisallowUnknownFields()
			if len(e.Payload) == 0 || dec.Decode(&a) != nil || a.Approved == nil {
				return nil, &runError{Code: "INVALID_RESUME", Message: "the payload of " + e.InterruptID + " must be {approved, editedArgs?}"}
			}
			d.Approved, d.EditedArgs = *a.Approved, a.EditedArgs
		default:
			return nil, &runError{Code: "INVALID_RESUME", Message: "a resume status is resolved or cancelled"}
		}
		got, err := s.o.Consents.Decide(ctx, e.InterruptID, d)
		switch {
		case errors.Is(err, consent.ErrNotFound), errors.Is(err, consent.ErrNotAllowed):
			// The same answer whether it does not exist or is someone
			// else's: nothing is told about other users' requests.
			return nil, &runError{Code: "UNKNOWN_INTERRUPT", Message: "no open interrupt " + e.InterruptID + " of yours"}
		case errors.Is(err, consent.ErrDecided) && got.State == consent.Expired, err == nil && got.State == consent.Expired:
			return nil, &runError{Code: "INTERRUPT_EXPIRED", Message: "interrupt " + e.InterruptID + " expired"}
		case errors.Is(err, consent.ErrDecided) && got.State == consent.Cancelled:
			return nil, &runError{Code: "STALE_INTERRUPT", Message: "interrupt " + e.InterruptID + " was cancelled"}
		case errors.Is(err, consent.ErrDecided):
			return nil, &runError{Code: "STALE_INTERRUPT", Message: "interrupt " + e.InterruptID + " was already answered otherwise"}
		case errors.Is(err, consent.ErrNoEdits):
			return nil, &runError{Code: "INVALID_RESUME", Message: "interrupt " + e.InterruptID + " does not allow edited arguments"}
		case err != nil:
			return nil, err
		case wasOpen[got.ID] && !got.Later && (got.State == consent.Approved || got.State == consent.ApprovedWithEdits):
			// The waiting call goes on at once and the run shows how it
			// ends; one to be retried later is not waited for.
			approved = append(approved, got.ID)
		}
	}
	return approved, nil
}

// httpError answers a request refused before its stream started.
func httpError(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]string{"error": http.StatusText(status), "error_description": msg})
}
