package agui

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sag-gateway/sag/consent"
	"github.com/sag-gateway/sag/identity"
)

const fakeRunAgent = "https://gw/agui/agents/helper"

// fakeRunConsents: one pending request of the agent's call on workflow wf.
type fakeRunConsents struct{}

func (fakeRunConsents) Pending(context.Context) ([]consent.Request, error) {
	return []consent.Request{{ID: "c_1", Issuer: "https://idp", User: "alice", WSID: "w_wf", Agent: fakeRunAgent,
		Upstream: "fx", Tool: "echo", Expires: time.Now().Add(time.Hour), State: consent.Pending}}, nil
}
func (fakeRunConsents) Decide(context.Context, string, consent.Decision) (consent.Request, error) {
	return consent.Request{}, consent.ErrNotFound
}
func (fakeRunConsents) MayDecide(r consent.Request, p identity.Principal) bool {
	return p.Issuer == r.Issuer && p.User == r.User
}
func (fakeRunConsents) Changed() <-chan struct{}                       { return make(chan struct{}) }
func (fakeRunConsents) Result(context.Context, string) (string, error) { return "", errors.New("no") }

// fakeRuns starts runs against url; it counts the runs started and ended and
// keeps each run's cancel (a kill).
type fakeRuns struct {
	url            string
	started, ended atomic.Int32
	mu             sync.Mutex
	kills          []context.CancelFunc
}

func (r *fakeRuns) Start(ctx context.Context, p identity.Principal, name, thread string) (*AgentRun, error) {
	rctx, cancel := context.WithCancel(context.Background())
	r.mu.Lock()
	r.kills = append(r.kills, cancel)
	r.mu.Unlock()
	r.started.Add(1)
	var once sync.Once
	return &AgentRun{URL: r.url, Client: http.DefaultClient, Agent: fakeRunAgent, Props: map[string]any{}, Ctx: rctx,
		End: func() { once.Do(func() { r.ended.Add(1); cancel() }) }}, nil
}

func fakeRunStream(runs Runs) *Stream { return fakeRunStreamOf(runs, fakeRunConsents{}) }

func fakeRunStreamOf(runs Runs, consents Consents) *Stream {
	return NewStream(Options{
		Consents: consents,
		Activity: noActivity{},
		Principal: func(*http.Request) (identity.Principal, bool) {
			return identity.Principal{Issuer: "https://idp", User: "alice"}, true
		},
		Workflow:   func(_ identity.Principal, id string) (string, bool) { return "w_" + id, true },
		Listening:  func(identity.Principal) func() { return func() {} },
		Heartbeat:  time.Hour,
		Runs:       runs,
		CheckEvent: CheckEvent,
	})
}

func holdingAgent(t *testing.T, gate <-chan struct{}, extra int) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if gate != nil {
			<-gate
		}
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "data: {\"type\":\"RUN_STARTED\",\"threadId\":\"wf\",\"runId\":\"x\"}\n\n")
		w.(http.Flusher).Flush()
		if extra > 0 {
			time.Sleep(400 * time.Millisecond) // the run is parked by now
			for i := 0; i < extra; i++ {
				fmt.Fprintf(w, "data: {\"type\":\"CUSTOM\",\"name\":\"n\",\"value\":%d}\n\n", i)
			}
			w.(http.Flusher).Flush()
		}
		<-r.Context().Done()
	}))
	t.Cleanup(srv.Close)
	return srv
}

func postRun(s *Stream, w http.ResponseWriter) {
	body := `{"threadId":"wf","runId":"r","messages":[{"id":"u","role":"user","content":"hi"}]}`
	req := httptest.NewRequest(http.MethodPost, "/agui/agents/helper", strings.NewReader(body))
	req.SetPathValue("name", "helper")
	s.ServeAgent(w, req)
}

// TestAgentRunsOnePerThread: of two concurrent starts on one thread, one
// runs (and parks at its interrupt) and the other is refused with 409
// before anything reaches the agent; a kill of the parked run ends it and
// frees the thread.
func TestAgentRunsOnePerThread(t *testing.T) {
	gate := make(chan struct{})
	runs := &fakeRuns{}
	runs.url = holdingAgent(t, gate, 0).URL
	s := fakeRunStream(runs)
	var listens atomic.Int32 // how many times the user began to listen
	s.o.Listening = func(identity.Principal) func() {
		listens.Add(1)
		return func() {}
	}
	codes := make(chan int, 2)
	for range 2 {
		go func() {
			rec := httptest.NewRecorder()
			postRun(s, rec)
			codes <- rec.Code
		}()
	}
	eventually := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal(what)
			}
		}
	}
	// The refused start returns while the other waits for the agent; it
	// never listened for the user's consent requests.
	if code := <-codes; code != http.StatusConflict {
		t.Fatalf("the second start: %d, want 409", code)
	}
	if n := listens.Load(); n != 1 {
		t.Errorf("the user began to listen %d times, want once (the run that started)", n)
	}
	close(gate)
	if code := <-codes; code != http.StatusOK {
		t.Fatalf("the first start: %d, want 200 (its run parked)", code)
	}
	parked := func() int {
		s.runs.mu.Lock()
		defer s.runs.mu.Unlock()
		return len(s.runs.runs)
	}
	if runs.started.Load() != 1 || parked() != 1 {
		t.Fatalf("started %d runs, %d parked; want 1 and 1", runs.started.Load(), parked())
	}
	runs.mu.Lock()
	runs.kills[0]()
	runs.mu.Unlock()
	eventually("the killed run ended", func() bool { return runs.ended.Load() == 1 && parked() == 0 })
}

// failWriter fails every write (the user went away before RUN_STARTED).
type failWriter struct{ h http.Header }

func (f *failWriter) Header() http.Header       { return f.h }
func (f *failWriter) Write([]byte) (int, error) { return 0, io.ErrClosedPipe }
func (f *failWriter) WriteHeader(int)           {}
func (f *failWriter) Flush()                    {}

// TestAgentRunEndsWhenUserLeaves: a run whose user went away before its
// first event ends (its token, its request to the agent).
func TestAgentRunEndsWhenUserLeaves(t *testing.T) {
	runs := &fakeRuns{}
	runs.url = holdingAgent(t, nil, 0).URL
	s := fakeRunStream(runs)
	postRun(s, &failWriter{h: http.Header{}})
	time.Sleep(200 * time.Millisecond)
	if runs.started.Load() != 1 || runs.ended.Load() != 1 {
		t.Errorf("started %d, ended %d: a run whose user left before RUN_STARTED must end", runs.started.Load(), runs.ended.Load())
	}
}

// TestAgentReaderStopsWithRun: an agent streams more than eventBuffer
// events while its run is parked; when the run ends (a kill), its reader
// stops rather than waiting on the full buffer.
func TestAgentReaderStopsWithRun(t *testing.T) {
	runs := &fakeRuns{}
	runs.url = holdingAgent(t, nil, eventBuffer+10).URL
	s := fakeRunStream(runs)
	postRun(s, httptest.NewRecorder())
	time.Sleep(800 * time.Millisecond)
	s.runs.mu.Lock()
	var pr *proxied
	for _, r := range s.runs.runs {
		pr = r.pr
	}
	s.runs.mu.Unlock()
	if pr == nil {
		t.Fatal("not parked")
	}
	t.Logf("buffered while parked: %d", len(pr.events))
	runs.mu.Lock()
	runs.kills[0]()
	runs.mu.Unlock()
	time.Sleep(300 * time.Millisecond)
	if runs.ended.Load() != 1 {
		t.Fatalf("not ended")
	}
	buf := make([]byte, 1<<20)
	n := runtime.Stack(buf, true)
	if strings.Contains(string(buf[:n]), "agui.(*Stream).read") {
		t.Errorf("the reader of an ended run is still running (%d events held)", len(pr.events))
	}
}

// TestStreamsAreUsers: an agent (its own identity, or acting for the user)
// neither follows the user's consent stream nor runs an agent.
func TestStreamsAreUsers(t *testing.T) {
	for _, p := range []identity.Principal{
		{Issuer: "https://idp", User: "alice", Agent: "spiffe://example.org/robot"},
		{Issuer: "https://idp", User: "alice", Act: &identity.Actor{Sub: "https://gw/agui/agents/helper"}},
	} {
		runs := &fakeRuns{}
		s := fakeRunStream(runs)
		s.o.Principal = func(*http.Request) (identity.Principal, bool) { return p, true }
		for path, serve := range map[string]http.HandlerFunc{"/agui": s.ServeHTTP, "/agui/ws": s.ServeWS} {
			rec := httptest.NewRecorder()
			serve(rec, httptest.NewRequest(http.MethodPost, path, strings.NewReader(`{"threadId":"sag:all","runId":"r","messages":[]}`)))
			if rec.Code != http.StatusForbidden {
				t.Errorf("%+v on %s: %d, want 403", p, path, rec.Code)
			}
		}
	}
}

// TestAgentRunsPerUser: a principal holds at most maxUserRuns open runs;
// one that ends frees its place; another principal is not counted.
func TestAgentRunsPerUser(t *testing.T) {
	var a agentRuns
	for i := range maxUserRuns {
		if err := a.claim(fmt.Sprint("alice-", i), "alice"); err != nil {
			t.Fatalf("run %d: %v", i, err)
		}
	}
	if err := a.claim("alice-x", "alice"); err != errTooManyRuns {
		t.Errorf("one run too many: %v", err)
	}
	if err := a.claim("bob-0", "bob"); err != nil {
		t.Errorf("bob's first run: %v", err)
	}
	if err := a.claim("alice-0", "alice"); err != errRunOpen {
		t.Errorf("a run on an open thread: %v", err)
	}
	a.release("alice-0", nil)
	if err := a.claim("alice-x", "alice"); err != nil {
		t.Errorf("after one ended: %v", err)
	}
}

// lateConsents has no pending request until create; each Pending read is
// signalled on reads.
type lateConsents struct {
	fakeRunConsents
	mu      sync.Mutex
	created bool
	changed chan struct{}
	reads   chan struct{}
}

func (c *lateConsents) Pending(ctx context.Context) ([]consent.Request, error) {
	c.mu.Lock()
	created := c.created
	c.mu.Unlock()
	select {
	case c.reads <- struct{}{}:
	default:
	}
	if !created {
		return nil, nil
	}
	return c.fakeRunConsents.Pending(ctx)
}

func (c *lateConsents) Changed() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.changed
}

func (c *lateConsents) create() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.created = true
	close(c.changed)
	c.changed = make(chan struct{})
}

// stallWriter is a user's stream whose writes, once stall is set, wait
// until released (a slow user), saying so on stalled.
type stallWriter struct {
	h       http.Header
	mu      sync.Mutex
	buf     bytes.Buffer
	stall   atomic.Bool
	stalled chan struct{}
	release chan struct{}
}

func (w *stallWriter) Header() http.Header { return w.h }
func (w *stallWriter) WriteHeader(int)     {}
func (w *stallWriter) Flush()              {}
func (w *stallWriter) Write(b []byte) (int, error) {
	if w.stall.CompareAndSwap(true, false) {
		w.stalled <- struct{}{}
		<-w.release
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Write(b)
}

func (w *stallWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

// TestAgentRunHearsConsentWhileRelaying: the agent's call asks for consent
// while the proxy is busy relaying the agent's last event to a slow user;
// the run still ends with the interrupt (the change is not lost).
func TestAgentRunHearsConsentWhileRelaying(t *testing.T) {
	gate, quit := make(chan struct{}), make(chan struct{})
	agent := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "data: {\"type\":\"RUN_STARTED\",\"threadId\":\"wf\",\"runId\":\"x\"}\n\n")
		w.(http.Flusher).Flush()
		<-gate
		fmt.Fprint(w, "data: {\"type\":\"CUSTOM\",\"name\":\"calling\",\"value\":1}\n\n")
		w.(http.Flusher).Flush()
		select { // the agent's call waits for consent
		case <-r.Context().Done():
		case <-quit:
		}
	}))
	t.Cleanup(agent.Close)
	var opened sync.Once
	openGate := func() { opened.Do(func() { close(gate) }) }
	t.Cleanup(func() { openGate(); close(quit) }) // before agent.Close, which waits for the handler
	cs := &lateConsents{changed: make(chan struct{}), reads: make(chan struct{}, 1)}
	s := fakeRunStreamOf(&fakeRuns{url: agent.URL}, cs)
	w := &stallWriter{h: http.Header{}, stalled: make(chan struct{}), release: make(chan struct{})}
	done := make(chan struct{})
	go func() {
		defer close(done)
		postRun(s, w)
	}()
	wait := func(ch <-chan struct{}, what string) {
		select {
		case <-ch:
		case <-time.After(5 * time.Second):
			t.Fatalf("no %s within 5s; the user got:\n%s", what, w)
		}
	}
	wait(cs.reads, "read of the open requests") // none yet
	w.stall.Store(true)
	openGate()
	wait(w.stalled, "relay of the agent's event")
	cs.create() // the agent's call asks, while the proxy writes
	close(w.release)
	wait(done, "end of the run")
	if out := w.String(); !strings.Contains(out, `"interrupts":[{"id":"c_1"`) {
		t.Errorf("the run did not end with the interrupt:\n%s", out)
	}
}

// TestAgentRunListensFromStart: the user follows their consent requests
// from before the agent receives the run, since the agent's first tool
// call may need their consent at once (a call made while nobody listens
// is refused as unanswerable).
func TestAgentRunListensFromStart(t *testing.T) {
	var listening atomic.Int32
	heard := make(chan int32, 1)
	agent := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		heard <- listening.Load() // what a call made now would find
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "data: {\"type\":\"RUN_STARTED\",\"threadId\":\"wf\",\"runId\":\"x\"}\n\n")
		fmt.Fprint(w, "data: {\"type\":\"RUN_FINISHED\",\"threadId\":\"wf\",\"runId\":\"x\"}\n\n")
	}))
	t.Cleanup(agent.Close)
	s := fakeRunStream(&fakeRuns{url: agent.URL})
	s.o.Listening = func(identity.Principal) func() {
		listening.Add(1)
		return func() { listening.Add(-1) }
	}
	postRun(s, httptest.NewRecorder())
	if n := <-heard; n != 1 {
		t.Fatalf("the agent received the run while the user followed %d consent streams, want 1", n)
	}
	if n := listening.Load(); n != 0 {
		t.Errorf("after the run the user still follows %d consent streams", n)
	}
}
