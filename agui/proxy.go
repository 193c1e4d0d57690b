package agui

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/sag-gateway/sag/consent"
	"github.com/sag-gateway/sag/identity"
)

// The agent proxy: POST /agui/agents/{name} runs an upstream AG-UI agent for
// the authenticated user. The gateway starts the run (a new agent session
// in the thread's workflow, a token for the agent's own calls back to the
// gateway), forwards the RunAgentInput and relays the agent's events, each
// checked against the AG-UI event schema. When a call the agent makes
// through the gateway needs the user's consent, the run ends with it as an
// interrupt while the agent waits; the user's resume (a run on the same
// thread) decides it and the agent's run goes on in that run.

// Runs starts agent runs; the gateway implements it.
type Runs interface {
	// Start begins a run of the agent name for p on the workflow threadID.
	// ErrUnknownAgent when there is no such agent.
	Start(ctx context.Context, p identity.Principal, name, threadID string) (*AgentRun, error)
}

// ErrUnknownAgent is Start's error for a name no AG-UI agent has.
var ErrUnknownAgent = errors.New("no such AG-UI agent")

// AgentRun is one run of an upstream agent.
type AgentRun struct {
	// URL and Client reach the agent (Client authenticates the gateway to
	// it on the user's behalf).
	URL    string
	Client *http.Client
	// Agent is the agent's identity in the session graph (consent
	// requests of its calls name it).
	Agent string
	// Props go into the RunAgentInput's forwardedProps as "sag": how the
	// agent calls the gateway back.
	Props any
	// Ctx ends when the run's sessions are killed; End ends the run (and
	// the agent's token).
	Ctx context.Context
	End func()
}

// Bounds of a proxied run.
const (
	maxAgentEvent = 1 << 20
	// parkedFor is how long a run waits for its user's resume.
	parkedFor = 15 * time.Minute
	// eventBuffer is how many of the agent's events wait while the run is
	// parked before the agent is slowed down.
	eventBuffer = 256
	// agentStart bounds the wait for the agent's answer to a run.
	agentStart = 30 * time.Second
	// agentQuiet is how long the agent's stream must have been quiet
	// before a consent request of its call interrupts the run: the events
	// it sent before the call, still on their way, come first.
	agentQuiet = 100 * time.Millisecond
)

// agentEvent is one event of the agent's stream, or why it ended.
type agentEvent struct {
	raw json.RawMessage
	typ string
	err error
}

// proxied is a running agent run: its event stream and what it waits for.
type proxied struct {
	run    *AgentRun
	events chan agentEvent
	body   io.Closer
	cancel context.CancelFunc // ends the request to the agent
	done   chan struct{}      // closed when the run ends
	once   sync.Once
	// open counts the text messages and tool calls the agent started and
	// has not ended: an interrupt waits until none is open.
	open map[string]bool
}

func (pr *proxied) end() {
	pr.once.Do(func() {
		close(pr.done)
		pr.cancel()
		pr.body.Close()
		pr.run.End()
	})
}

// emit hands the reader's next event to the run, unless the run ended.
func (pr *proxied) emit(ev agentEvent) bool {
	select {
	case pr.events <- ev:
		return true
	case <-pr.done:
		return false
	}
}

// ServeAgent serves POST /agui/agents/{name}.
func (s *Stream) ServeAgent(w http.ResponseWriter, r *http.Request) {
	p, ok := s.o.Principal(r)
	if !ok {
		httpError(w, http.StatusUnauthorized, "not authenticated")
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxInput))
	var in runInput
	if err != nil || json.Unmarshal(body, &in) != nil || in.ThreadID == "" || in.RunID == "" || in.Messages == nil {
		httpError(w, http.StatusBadRequest, "the body must be a RunAgentInput with threadId, runId and messages")
		return
	}
	name := r.PathValue("name")
	th, err := s.thread(p, in.ThreadID)
	if err != nil || th.wsid == "" {
		httpError(w, http.StatusBadRequest, "threadId must be a workflow id (1-128 visible ASCII characters)")
		return
	}
	key := p.Key() + "\x00" + name + "\x00" + in.ThreadID
	ctx := r.Context()
	// The user follows their consent requests while the run is open, from
	// before the agent starts (its first call may need consent at once);
	// a start refused before that is not listening.
	var stopListening func()
	defer func() {
		if stopListening != nil {
			stopListening()
		}
	}()
	var pr *proxied
	if len(in.Resume) == 0 {
		// One run of an agent per user and thread: the key is taken before
		// the run starts, so that two starts cannot both get it.
		switch s.runs.claim(key, p.Key()) {
		case errRunOpen:
			httpError(w, http.StatusConflict, "a run of this agent on this thread is open: answer its interrupts with resume")
			return
		case errTooManyRuns:
			httpError(w, http.StatusTooManyRequests, fmt.Sprintf("at most %d agent runs of one user are open at once", maxUserRuns))
			return
		}
		stopListening = s.o.Listening(p)
		if pr, err = s.startAgent(ctx, p, name, in.ThreadID, body); err != nil {
			s.runs.release(key, nil)
			var he *httpErr
			if errors.As(err, &he) {
				httpError(w, he.status, he.msg)
			} else {
				s.o.Log.Error("agent run not started", "agent", name, "error", err)
				httpError(w, http.StatusBadGateway, "the agent run could not start")
			}
			return
		}
		s.runs.attach(key, pr)
	}
	// Every way out parks the run for a resume or ends it.
	parked := false
	defer func() {
		if pr == nil {
			return
		}
		if parked {
			s.runs.park(key, pr)
		} else {
			s.runs.release(key, pr)
		}
	}()
	out, err := newSSE(w)
	if err != nil {
		httpError(w, http.StatusInternalServerError, "streaming unavailable")
		return
	}
	if out.send(runStarted{Type: "RUN_STARTED", ThreadID: in.ThreadID, RunID: in.RunID}) != nil {
		return
	}
	if pr == nil {
		if pr = s.runs.take(key); pr == nil {
			_ = out.send(runError{Type: "RUN_ERROR", Code: "NO_WAITING_RUN", Message: "no run of this agent waits on this thread"})
			return
		}
		open, err := s.open(ctx, p, th)
		if err == nil {
			_, err = s.resume(ctx, p, open, in.Resume)
		}
		if err != nil {
			parked = true // the interrupts stay open
			s.sendError(out, err)
			return
		}
	}
	if stopListening == nil {
		stopListening = s.o.Listening(p)
	}
	parked = s.relay(ctx, out, p, th, in, pr)
}

// httpErr is a refusal before the stream starts.
type httpErr struct {
	status int
	msg    string
}

func (e *httpErr) Error() string { return e.msg }

// startAgent starts the agent's run and its event reader.
func (s *Stream) startAgent(ctx context.Context, p identity.Principal, name, thread string, body []byte) (*proxied, error) {
	run, err := s.o.Runs.Start(ctx, p, name, thread)
	switch {
	case errors.Is(err, ErrUnknownAgent):
		return nil, &httpErr{http.StatusNotFound, "no AG-UI agent " + name}
	case err != nil:
		return nil, &httpErr{http.StatusForbidden, err.Error()}
	}
	fwd, err := withForwardedProps(body, run.Props)
	if err != nil {
		run.End()
		return nil, &httpErr{http.StatusBadRequest, "the RunAgentInput cannot be forwarded: " + err.Error()}
	}
	reqCtx, cancel := context.WithCancel(run.Ctx)
	fail := func(e error) (*proxied, error) {
		cancel()
		run.End()
		return nil, e
	}
	req, err := http.NewRequestWithContext(reqCtx, http.MethodPost, run.URL, bytes.NewReader(fwd))
	if err != nil {
		return fail(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "text/event-stream")
	slow := time.AfterFunc(agentStart, cancel) // no answer: the run does not start
	resp, err := run.Client.Do(req)
	if !slow.Stop() || err != nil {
		if err == nil {
			resp.Body.Close()
		}
		return fail(&httpErr{http.StatusBadGateway, "the agent " + name + " did not answer"})
	}
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		resp.Body.Close()
		return fail(&httpErr{http.StatusBadGateway, fmt.Sprintf("the agent %s answered HTTP %d, not an event stream", name, resp.StatusCode)})
	}
	pr := &proxied{run: run, events: make(chan agentEvent, eventBuffer), body: resp.Body, cancel: cancel, done: make(chan struct{}), open: map[string]bool{}}
	go s.read(pr, resp.Body)
	return pr, nil
}

// withForwardedProps adds props to the input's forwardedProps as "sag".
func withForwardedProps(body []byte, props any) ([]byte, error) {
	var in map[string]json.RawMessage
	if err := json.Unmarshal(body, &in); err != nil {
		return nil, err
	}
	fp := map[string]any{}
	if raw, ok := in["forwardedProps"]; ok && string(raw) != "null" {
		if err := json.Unmarshal(raw, &fp); err != nil {
			return nil, errors.New("forwardedProps must be an object")
		}
	}
	fp["sag"] = props
	b, err := json.Marshal(fp)
	if err != nil {
		return nil, err
	}
	in["forwardedProps"] = b
	return json.Marshal(in)
}

// read parses the agent's SSE stream into pr.events, checking each event
// against the AG-UI schema; it closes pr.events at the end.
func (s *Stream) read(pr *proxied, body io.Reader) {
	defer close(pr.events)
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 64<<10), maxAgentEvent)
	var data bytes.Buffer
	emit := func() bool {
		defer data.Reset()
		if data.Len() == 0 {
			return true
		}
		raw := json.RawMessage(bytes.Clone(data.Bytes()))
		if err := s.o.CheckEvent(raw); err != nil {
			pr.emit(agentEvent{err: err})
			return false
		}
		var head struct {
			Type string `json:"type"`
		}
		_ = json.Unmarshal(raw, &head) // checked above
		return pr.emit(agentEvent{raw: raw, typ: head.Type})
	}
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if !emit() {
				return
			}
		case strings.HasPrefix(line, "data:"):
			if data.Len() > 0 {
				data.WriteByte('\n')
			}
			data.WriteString(strings.TrimPrefix(strings.TrimPrefix(line, "data:"), " "))
		}
	}
	if !emit() {
		return
	}
	if err := sc.Err(); err != nil {
		pr.emit(agentEvent{err: fmt.Errorf("the agent's stream broke: %w", err)})
	}
}

// relay relays the agent's events to out until the agent's run ends, the
// user goes away, the run's sessions are killed, or a call of the agent
// needs the user's consent; it reports whether the run was parked for a
// resume.
func (s *Stream) relay(ctx context.Context, out emitter, p identity.Principal, th thread, in runInput, pr *proxied) (parked bool) {
	beat := time.NewTicker(s.o.Heartbeat)
	defer beat.Stop()
	last := time.Now() // when the agent last sent an event
	check := true      // the consent requests may have changed since read
	var changed <-chan struct{}
	for {
		// An interrupt comes between the agent's events: after those it
		// sent before its call (the agent is quiet while the call waits),
		// outside any message or tool call.
		var settle <-chan time.Time
		if check && len(pr.open) == 0 && len(pr.events) == 0 {
			// A change after this read closes changed, which is kept
			// until the next read: none is missed while events flow.
			changed = s.o.Consents.Changed()
			open, err := s.open(ctx, p, th)
			if err != nil {
				s.sendError(out, err)
				return false
			}
			mine := agentRequests(open, pr.run.Agent)
			check = len(mine) > 0
			if check {
				if wait := agentQuiet - time.Since(last); wait > 0 {
					settle = time.After(wait)
				} else {
					_ = s.interrupt(out, in, mine, nil)
					return true
				}
			}
		}
		var wake <-chan struct{} // nil (never) while a read is due anyway
		if !check {
			wake = changed
		}
		select {
		case ev, ok := <-pr.events:
			switch {
			case !ok:
				_ = out.send(runError{Type: "RUN_ERROR", Code: "AGENT_STREAM_ENDED", Message: "the agent's stream ended before its run finished"})
				return false
			case ev.err != nil:
				_ = out.send(runError{Type: "RUN_ERROR", Code: "INVALID_AGENT_EVENT", Message: ev.err.Error()})
				return false
			}
			last = time.Now()
			if done, err := s.relayEvent(out, in, pr, ev); err != nil || done {
				return false
			}
		case <-settle:
		case <-wake:
			check = true
		case <-beat.C:
			if out.comment() != nil {
				return false
			}
		case <-pr.run.Ctx.Done():
			_ = out.send(runError{Type: "RUN_ERROR", Code: "SESSION_KILLED", Message: "the run's session was killed"})
			return false
		case <-ctx.Done():
			return false // the user went away: the run ends with its stream
		}
	}
}

// relayEvent sends one of the agent's events on, in the user's run's
// terms; done is true once the agent's run ended.
func (s *Stream) relayEvent(out emitter, in runInput, pr *proxied, ev agentEvent) (done bool, err error) {
	var ids struct {
		MessageID  string `json:"messageId"`
		ToolCallID string `json:"toolCallId"`
	}
	_ = json.Unmarshal(ev.raw, &ids) // checked against the schema
	switch ev.typ {
	case "RUN_STARTED":
		return false, nil // the user's run started already
	case "RUN_FINISHED", "RUN_ERROR":
		// The agent's run ends the user's run, under the user's ids.
		var m map[string]json.RawMessage
		_ = json.Unmarshal(ev.raw, &m)
		if ev.typ == "RUN_FINISHED" {
			m["threadId"], _ = json.Marshal(in.ThreadID)
			m["runId"], _ = json.Marshal(in.RunID)
		}
		return true, out.send(m)
	case "TEXT_MESSAGE_START":
		pr.open["m:"+ids.MessageID] = true
	case "TEXT_MESSAGE_END":
		delete(pr.open, "m:"+ids.MessageID)
	case "TOOL_CALL_START":
		pr.open["t:"+ids.ToolCallID] = true
	case "TOOL_CALL_END":
		delete(pr.open, "t:"+ids.ToolCallID)
	}
	return false, out.send(ev.raw)
}

// agentRequests are the requests of calls the run's agent made.
func agentRequests(open []consent.Request, agent string) []consent.Request {
	var out []consent.Request
	for _, r := range open {
		if r.Agent == agent {
			out = append(out, r)
		}
	}
	return out
}

// sendError ends a run with err as RUN_ERROR.
func (s *Stream) sendError(out emitter, err error) {
	var re *runError
	if !errors.As(err, &re) {
		s.o.Log.Error("agent run failed", "error", err)
		re = &runError{Message: "the agent run failed"}
	}
	re.Type = "RUN_ERROR"
	_ = out.send(re)
}

// agentRuns are the open agent runs, by (principal, agent, thread): one
// at a time on a thread, either served by a request or parked for the
// user's resume.
type agentRuns struct {
	mu   sync.Mutex
	runs map[string]*runSlot
	// open counts each principal's open runs.
	open map[string]int
}

// maxUserRuns bounds the open (running or parked) agent runs of one
// principal: each holds a connection to its agent and buffered events.
const maxUserRuns = 16

// Refusals of claim.
var (
	errRunOpen     = errors.New("a run is open on this thread")
	errTooManyRuns = errors.New("too many open runs")
)

type runSlot struct {
	owner  string
	pr     *proxied // nil while the run starts
	served bool     // a request serves it (it is not parked)
	timer  *time.Timer
	stop   func() bool // stops the kill watch of a parked run
}

// claim takes key for a new run of owner's.
func (a *agentRuns) claim(key, owner string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, taken := a.runs[key]; taken {
		return errRunOpen
	}
	if a.open[owner] >= maxUserRuns {
		return errTooManyRuns
	}
	if a.runs == nil {
		a.runs, a.open = map[string]*runSlot{}, map[string]int{}
	}
	a.runs[key] = &runSlot{owner: owner, served: true}
	a.open[owner]++
	return nil
}

// free drops key's slot; a.mu is held.
func (a *agentRuns) free(key string, r *runSlot) {
	delete(a.runs, key)
	if a.open[r.owner]--; a.open[r.owner] <= 0 {
		delete(a.open, r.owner)
	}
}

// attach gives a claimed key its started run.
func (a *agentRuns) attach(key string, pr *proxied) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.runs[key].pr = pr
}

// release frees key and ends pr (nil: a run that did not start).
func (a *agentRuns) release(key string, pr *proxied) {
	a.mu.Lock()
	if r, ok := a.runs[key]; ok && r.pr == pr {
		a.free(key, r)
	}
	a.mu.Unlock()
	if pr != nil {
		pr.end()
	}
}

// park keeps pr for its user's resume: it ends if the resume does not come
// within parkedFor, or when the run's sessions are killed.
func (a *agentRuns) park(key string, pr *proxied) {
	a.mu.Lock()
	defer a.mu.Unlock()
	r, ok := a.runs[key]
	if !ok || r.pr != pr {
		go pr.end() // not this key's run any more: nobody could resume it
		return
	}
	drop := func() {
		a.mu.Lock()
		r, ok := a.runs[key]
		mine := ok && r.pr == pr && !r.served
		if mine {
			a.free(key, r)
		}
		a.mu.Unlock()
		if mine {
			pr.end()
		}
	}
	r.served = false
	r.timer, r.stop = time.AfterFunc(parkedFor, drop), context.AfterFunc(pr.run.Ctx, drop)
}

// take returns the run parked under key for a request to serve, nil when
// none waits there.
func (a *agentRuns) take(key string) *proxied {
	a.mu.Lock()
	defer a.mu.Unlock()
	r, ok := a.runs[key]
	if !ok || r.served || r.pr == nil {
		return nil
	}
	r.served = true
	r.timer.Stop()
	r.stop()
	return r.pr
}
