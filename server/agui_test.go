package server_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/sag-gateway/sag/agui"
	"github.com/sag-gateway/sag/identity"
	"github.com/sag-gateway/sag/internal/testutil"
	"github.com/sag-gateway/sag/server"
	"github.com/sag-gateway/sag/server/config"
)

// aguiRun is one AG-UI run: its events as they arrive.
type aguiRun struct {
	events chan map[string]any
}

// startRun posts a RunAgentInput to /agui as a (nil: unauthenticated, for
// --auth open) and streams its events.
func startRun(t testing.TB, ctx context.Context, tg *testGateway, a *agent, input string) *aguiRun {
	t.Helper()
	return startRunAt(t, ctx, tg, a, "/agui", input)
}

// startRunAt is startRun on another AG-UI endpoint of the gateway.
func startRunAt(t testing.TB, ctx context.Context, tg *testGateway, a *agent, path, input string) *aguiRun {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, tg.Base+path, strings.NewReader(input))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "text/event-stream")
	hc := http.DefaultClient
	if a != nil {
		hc = a.client()
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		t.Fatalf("POST %s: %d", path, resp.StatusCode)
	}
	run := &aguiRun{events: make(chan map[string]any, 64)}
	go func() {
		defer resp.Body.Close()
		defer close(run.events)
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			data, ok := strings.CutPrefix(sc.Text(), "data: ")
			if !ok {
				continue
			}
			var ev map[string]any
			if json.Unmarshal([]byte(data), &ev) != nil {
				t.Errorf("an event that is not JSON: %s", data)
				return
			}
			run.events <- ev
		}
	}()
	return run
}

// next returns the run's next event, failing the test after waitFor.
func (r *aguiRun) next(t testing.TB) map[string]any {
	t.Helper()
	select {
	case ev, ok := <-r.events:
		if !ok {
			t.Fatal("the run ended early")
		}
		return ev
	case <-time.After(waitFor):
		t.Fatal("no event")
	}
	return nil
}

// expect reads the run's next events and checks their types.
func (r *aguiRun) expect(t testing.TB, types ...string) []map[string]any {
	t.Helper()
	var evs []map[string]any
	for _, want := range types {
		ev := r.next(t)
		if ev["type"] != want {
			t.Fatalf("event %v, want %s", ev, want)
		}
		evs = append(evs, ev)
	}
	return evs
}

func runInput(thread, run string, messages, resume string) string {
	in := `{"threadId":"` + thread + `","runId":"` + run + `","messages":` + messages
	if resume != "" {
		in += `,"resume":` + resume
	}
	return in + "}"
}

// workflowCall calls fx__echo as a in workflow wf and returns the result
// channel.
func workflowCall(t testing.TB, ctx context.Context, tg *testGateway, a *agent, wf, text string) <-chan *mcp.CallToolResult {
	t.Helper()
	cs := connectWorkflow(t, a, tg.MCP, wf)
	out := make(chan *mcp.CallToolResult, 1)
	go func() {
		res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "fx__echo", Arguments: map[string]any{"text": text}})
		if err != nil {
			res = toolError(err.Error())
		}
		out <- res
	}()
	return out
}

func toolError(msg string) *mcp.CallToolResult {
	return &mcp.CallToolResult{IsError: true, Content: []mcp.Content{&mcp.TextContent{Text: msg}}}
}

// TestConsentStream: the AG-UI 1.0 consent stream. A run on a workflow's
// thread waits until a call of that workflow needs the user's consent and
// ends with it as an interrupt; a resume approves it and the call goes on;
// AG-UI's rules hold (replay harmless, conflicting or unaddressed or
// foreign answers refused with RUN_ERROR); a user following no stream is
// refused at once.
func TestConsentStream(t *testing.T) {
	tg, _ := startPolicyGateway(t, consentPolicy+"  - {id: carol-echo, upstream: fx, tools: [echo], principals: {users: [carol]}, consent: always}\n")
	ctx, cancel := context.WithTimeout(context.Background(), 3*waitFor)
	defer cancel()
	alice := newAgent(t, tg, identity.Claims{Subject: "alice"})
	bob := newAgent(t, tg, identity.Claims{Subject: "bob"})

	run := startRun(t, ctx, tg, alice, runInput("wf-1", "r1", "[]", ""))
	run.expect(t, "RUN_STARTED", "STATE_SNAPSHOT")
	// The user's calls on the thread show as they happen (STATE_DELTA).
	cs := connectWorkflow(t, alice, tg.MCP, "wf-1")
	if res := callTool(t, cs, "fx__add", map[string]any{"a": 1, "b": 2}); res.IsError {
		t.Fatalf("add: %s", toolText(res))
	}
	delta := run.expect(t, "STATE_DELTA")[0]["delta"].([]any)[0].(map[string]any)
	if call, _ := delta["value"].(map[string]any); delta["op"] != "add" || delta["path"] != "/calls/-" || call["name"] != "fx__add" || call["decision"] != "allow" {
		t.Errorf("STATE_DELTA %v", delta)
	}
	result := workflowCall(t, ctx, tg, alice, "wf-1", "hello")
	evs := run.expect(t, "TOOL_CALL_START", "TOOL_CALL_ARGS", "TOOL_CALL_END", "STATE_SNAPSHOT", "MESSAGES_SNAPSHOT", "RUN_FINISHED")
	if args := evs[1]["delta"]; !strings.Contains(args.(string), "hello") {
		t.Errorf("tool call args %v", args)
	}
	outcome, _ := evs[5]["outcome"].(map[string]any)
	ints, _ := outcome["interrupts"].([]any)
	if outcome["type"] != "interrupt" || len(ints) != 1 {
		t.Fatalf("RUN_FINISHED %v", evs[5])
	}
	in := ints[0].(map[string]any)
	id := in["id"].(string)
	if in["reason"] != "tool_call" || in["toolCallId"] != evs[0]["toolCallId"] || in["expiresAt"] == "" || in["responseSchema"] == nil {
		t.Errorf("interrupt %v", in)
	}

	// Someone else cannot answer it, nor see it.
	other := startRun(t, ctx, tg, bob, runInput(agui.AllThreads, "b1", "[]", `[{"interruptId":"`+id+`","status":"resolved","payload":{"approved":true}}]`))
	other.expect(t, "RUN_STARTED")
	if ev := other.next(t); ev["type"] != "RUN_ERROR" || ev["code"] != "UNKNOWN_INTERRUPT" {
		t.Errorf("bob's answer: %v", ev)
	}
	// New input while the interrupt is open is refused.
	busy := startRun(t, ctx, tg, alice, runInput("wf-1", "r1b", `[{"id":"m1","role":"user","content":"hi"}]`, ""))
	busy.expect(t, "RUN_STARTED")
	if ev := busy.next(t); ev["type"] != "RUN_ERROR" || ev["code"] != "INTERRUPTS_PENDING" {
		t.Errorf("new input with an open interrupt: %v", ev)
	}
	// A client that sends back the conversation so far (the stream's own
	// messages) brings no new input: it is shown the open interrupt.
	history := `[{"id":"msg_` + id + `","role":"assistant","toolCalls":[{"id":"call_` + id + `","type":"function","function":{"name":"fx/echo","arguments":"{}"}}]}]`
	again := startRun(t, ctx, tg, alice, runInput("wf-1", "r1d", history, ""))
	again.expect(t, "RUN_STARTED", "STATE_SNAPSHOT", "TOOL_CALL_START", "TOOL_CALL_ARGS", "TOOL_CALL_END", "STATE_SNAPSHOT", "MESSAGES_SNAPSHOT", "RUN_FINISHED")
	// A resume that does not answer the open interrupt is refused.
	partial := startRun(t, ctx, tg, alice, runInput("wf-1", "r1c", "[]", `[{"interruptId":"c_other","status":"cancelled"}]`))
	partial.expect(t, "RUN_STARTED")
	if ev := partial.next(t); ev["type"] != "RUN_ERROR" || ev["code"] != "INTERRUPTS_UNADDRESSED" {
		t.Errorf("a resume missing the open interrupt: %v", ev)
	}

	approve := `[{"interruptId":"` + id + `","status":"resolved","payload":{"approved":true}}]`
	resumed := startRun(t, ctx, tg, alice, runInput("wf-1", "r2", "[]", approve))
	rev := resumed.expect(t, "RUN_STARTED", "TOOL_CALL_RESULT", "RUN_FINISHED")
	if rev[1]["toolCallId"] != evs[0]["toolCallId"] || rev[1]["content"] != "hello" || rev[2]["outcome"].(map[string]any)["type"] != "success" {
		t.Errorf("resumed run: %v", rev)
	}
	select {
	case res := <-result:
		if res.IsError || toolText(res) != "hello" {
			t.Errorf("the approved call: %q", toolText(res))
		}
	case <-time.After(waitFor):
		t.Fatal("the approved call still waits")
	}
	// An identical replay is harmless; a different answer is stale.
	replay := startRun(t, ctx, tg, alice, runInput("wf-1", "r3", "[]", approve))
	replay.expect(t, "RUN_STARTED", "RUN_FINISHED")
	stale := startRun(t, ctx, tg, alice, runInput("wf-1", "r4", "[]", `[{"interruptId":"`+id+`","status":"resolved","payload":{"approved":false}}]`))
	stale.expect(t, "RUN_STARTED")
	if ev := stale.next(t); ev["type"] != "RUN_ERROR" || ev["code"] != "STALE_INTERRUPT" {
		t.Errorf("a different answer after the first: %v", ev)
	}

	// Requests and decisions are audited, refused attempts too.
	req := auditMethod(t, tg, "consent.requested")
	if len(req) == 0 || req[len(req)-1]["consent_id"] != id || req[len(req)-1]["sub"] != "alice" || req[len(req)-1]["wsid"] == nil ||
		req[len(req)-1]["allow_list_match"] != "echo-with-consent" {
		t.Errorf("consent.requested records: %v", req)
	}
	decided := map[string]bool{}
	for _, rec := range auditMethod(t, tg, "consent.decided") {
		if rec["consent_id"] == id {
			decided[str(rec["sub"])+" "+str(rec["decision"])] = true
		}
	}
	if !decided["alice allow"] || !decided["bob deny"] {
		t.Errorf("consent.decided records of %s: %v", id, decided)
	}

	// Carol follows no consent stream: her call is refused at once.
	carol := newAgent(t, tg, identity.Claims{Subject: "carol"})
	select {
	case res := <-workflowCall(t, ctx, tg, carol, "wf-c", "x"):
		if !res.IsError || !strings.Contains(toolText(res), "follows no consent stream") {
			t.Errorf("carol's call: %q", toolText(res))
		}
	case <-time.After(waitFor):
		t.Fatal("carol's call waits though nobody can answer it")
	}
}

// TestConsentStreamWebSocket: the same stream over one WebSocket: a run
// per message, events one per message; a malformed message is a RUN_ERROR
// and the socket stays usable.
func TestConsentStreamWebSocket(t *testing.T) {
	tg, _ := startPolicyGateway(t, consentPolicy)
	ctx, cancel := context.WithTimeout(context.Background(), 3*waitFor)
	defer cancel()
	alice := newAgent(t, tg, identity.Claims{Subject: "alice"})
	wsURL := "ws" + strings.TrimPrefix(tg.Base, "http") + "/agui/ws"
	proof, err := alice.key.Proof(http.MethodGet, tg.Base+"/agui/ws", alice.token, "")
	if err != nil {
		t.Fatal(err)
	}
	conn, resp, err := websocket.DefaultDialer.DialContext(ctx, wsURL, http.Header{"Authorization": {"DPoP " + alice.token}, "DPoP": {proof}})
	if err != nil {
		t.Fatalf("dial: %v (%v)", err, resp)
	}
	defer conn.Close()
	next := func() map[string]any {
		t.Helper()
		conn.SetReadDeadline(time.Now().Add(waitFor))
		var ev map[string]any
		if err := conn.ReadJSON(&ev); err != nil {
			t.Fatalf("read: %v", err)
		}
		return ev
	}
	conn.WriteMessage(websocket.TextMessage, []byte(`{"not":"an input"}`))
	if ev := next(); ev["type"] != "RUN_ERROR" || ev["code"] != "INVALID_INPUT" {
		t.Errorf("a malformed message: %v", ev)
	}
	conn.WriteMessage(websocket.TextMessage, []byte(runInput("wf-ws", "w1", "[]", "")))
	for _, want := range []string{"RUN_STARTED", "STATE_SNAPSHOT"} {
		if ev := next(); ev["type"] != want {
			t.Fatalf("event %v, want %s", ev, want)
		}
	}
	result := workflowCall(t, ctx, tg, alice, "wf-ws", "over ws")
	var id string
	for _, want := range []string{"TOOL_CALL_START", "TOOL_CALL_ARGS", "TOOL_CALL_END", "STATE_SNAPSHOT", "MESSAGES_SNAPSHOT", "RUN_FINISHED"} {
		ev := next()
		if ev["type"] != want {
			t.Fatalf("event %v, want %s", ev, want)
		}
		if want == "RUN_FINISHED" {
			id = ev["outcome"].(map[string]any)["interrupts"].([]any)[0].(map[string]any)["id"].(string)
		}
	}
	conn.WriteMessage(websocket.TextMessage, []byte(runInput("wf-ws", "w2", "[]", `[{"interruptId":"`+id+`","status":"cancelled"}]`)))
	for _, want := range []string{"RUN_STARTED", "RUN_FINISHED"} {
		if ev := next(); ev["type"] != want {
			t.Fatalf("event %v, want %s", ev, want)
		}
	}
	select {
	case res := <-result:
		if !res.IsError || !strings.Contains(toolText(res), "denied by alice") {
			t.Errorf("the cancelled interrupt's call: %q", toolText(res))
		}
	case <-time.After(waitFor):
		t.Fatal("the call still waits")
	}
}

// BenchmarkConsentRoundTrip: a call that needs consent while its user's
// stream is connected. Reported: call arrival → the interrupt on the
// stream, and the user's decision (a resume) → the call's result on the
// resumed run (it includes the upstream call), each as its median.
func BenchmarkConsentRoundTrip(b *testing.B) {
	tg, _ := startPolicyGateway(b, consentPolicy)
	ctx := context.Background()
	alice := newAgent(b, tg, identity.Claims{Subject: "alice"})
	cs := connectWorkflow(b, alice, tg.MCP, "wf-b")
	var toInterrupt, toResult []time.Duration
	for i := 0; b.Loop(); i++ {
		run := startRun(b, ctx, tg, alice, runInput("wf-b", fmt.Sprint("a", i), "[]", ""))
		run.expect(b, "RUN_STARTED", "STATE_SNAPSHOT")
		start := time.Now()
		done := make(chan error, 1)
		go func() {
			_, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "fx__echo", Arguments: map[string]any{"text": "b"}})
			done <- err
		}()
		evs := run.expect(b, "TOOL_CALL_START", "TOOL_CALL_ARGS", "TOOL_CALL_END", "STATE_SNAPSHOT", "MESSAGES_SNAPSHOT", "RUN_FINISHED")
		toInterrupt = append(toInterrupt, time.Since(start))
		id := evs[5]["outcome"].(map[string]any)["interrupts"].([]any)[0].(map[string]any)["id"].(string)
		decided := time.Now()
		resumed := startRun(b, ctx, tg, alice, runInput("wf-b", fmt.Sprint("r", i), "[]", `[{"interruptId":"`+id+`","status":"resolved","payload":{"approved":true}}]`))
		resumed.expect(b, "RUN_STARTED", "TOOL_CALL_RESULT")
		toResult = append(toResult, time.Since(decided))
		resumed.expect(b, "RUN_FINISHED")
		if err := <-done; err != nil {
			b.Fatal(err)
		}
	}
	median := func(ds []time.Duration) float64 {
		slices.Sort(ds)
		return float64(ds[len(ds)/2].Microseconds()) / 1000
	}
	b.ReportMetric(median(toInterrupt), "arrival-to-interrupt-ms")
	b.ReportMetric(median(toResult), "decision-to-result-ms")
}

// TestConsentLeaksNothing: a consent stream, a waiting call, its approval
// and the end of it all leave no goroutine behind.
func TestConsentLeaksNothing(t *testing.T) {
	tg, _ := startPolicyGateway(t, consentPolicy)
	alice := newAgent(t, tg, identity.Claims{Subject: "alice"})
	ctx, cancel := context.WithTimeout(context.Background(), 3*waitFor)
	defer cancel()
	// Warm up: the gateway's own long-lived goroutines start now.
	warm := connectWorkflow(t, alice, tg.MCP, "wf-warm")
	callTool(t, warm, "fx__add", map[string]any{"a": 1, "b": 1})
	warm.Close()
	http.DefaultTransport.(*http.Transport).CloseIdleConnections()
	time.Sleep(200 * time.Millisecond)
	before := goroutineIDs()

	func() {
		rctx, rcancel := context.WithCancel(ctx)
		defer rcancel()
		run := startRun(t, rctx, tg, alice, runInput("wf-l", "l1", "[]", ""))
		run.expect(t, "RUN_STARTED", "STATE_SNAPSHOT")
		cs := connectWorkflow(t, alice, tg.MCP, "wf-l")
		done := make(chan error, 1)
		go func() {
			_, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "fx__echo", Arguments: map[string]any{"text": "x"}, Meta: mcp.Meta{"progressToken": "p"}})
			done <- err
		}()
		evs := run.expect(t, "TOOL_CALL_START", "TOOL_CALL_ARGS", "TOOL_CALL_END", "STATE_SNAPSHOT", "MESSAGES_SNAPSHOT", "RUN_FINISHED")
		id := evs[5]["outcome"].(map[string]any)["interrupts"].([]any)[0].(map[string]any)["id"].(string)
		resumed := startRun(t, rctx, tg, alice, runInput("wf-l", "l2", "[]", `[{"interruptId":"`+id+`","status":"resolved","payload":{"approved":true}}]`))
		resumed.expect(t, "RUN_STARTED", "TOOL_CALL_RESULT", "RUN_FINISHED")
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		// A stream left waiting, closed by its client.
		waiting := startRun(t, rctx, tg, alice, runInput("wf-l", "l3", "[]", ""))
		waiting.expect(t, "RUN_STARTED", "STATE_SNAPSHOT")
		cs.Close()
	}()
	http.DefaultTransport.(*http.Transport).CloseIdleConnections()
	// The gateway keeps idle keep-alive connections to its upstream for
	// reuse (both ends are in this process): those are a pool, not a leak.
	idle := func(stack string) bool {
		return strings.Contains(stack, "(*persistConn).readLoop") || strings.Contains(stack, "(*persistConn).writeLoop") ||
			strings.Contains(stack, "(*conn).serve") && strings.Contains(stack, "bufio.(*Reader).Peek")
	}
	var leaked []string
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		leaked = slices.DeleteFunc(newGoroutines(before), idle)
		if len(leaked) == 0 {
			break
		}
	}
	if len(leaked) > 0 {
		t.Errorf("%d goroutines left behind:\n\n%s", len(leaked), strings.Join(leaked, "\n\n"))
	}
}

// TestConcurrentConsents: many users, each with a stream and several calls
// waiting for consent at once: each user sees exactly their own requests,
// none is lost or shown to anyone else, and every call completes once
// answered.
func TestConcurrentConsents(t *testing.T) {
	const users, calls = 50, 2 // 100 requests pending at once across 50 streams
	doc := "id: many\nrules:\n  - {id: all-echo, upstream: fx, tools: [echo], consent: always}\n"
	tg, _ := startPolicyGateway(t, doc)
	ctx, cancel := context.WithTimeout(context.Background(), 6*waitFor)
	defer cancel()
	agents := make([]*agent, users)
	for u := range agents {
		agents[u] = newAgent(t, tg, identity.Claims{Subject: fmt.Sprint("user", u)})
		run := startRun(t, ctx, tg, agents[u], runInput(agui.AllThreads, "attach", "[]", ""))
		run.expect(t, "RUN_STARTED", "STATE_SNAPSHOT")
		go func() { // the run ends at the first interrupt; the listening grace keeps the user reachable
			for range run.events {
			}
		}()
	}
	results := make(chan string, users*calls)
	for u, a := range agents {
		for c := range calls {
			res := workflowCall(t, ctx, tg, a, fmt.Sprint("wf-", u), fmt.Sprintf("u%d-c%d", u, c))
			go func() { results <- toolText(<-res) }()
		}
	}
	// Each user collects their open interrupts until all of theirs are
	// there, then answers them in one resume.
	seen := map[string]int{}
	for u, a := range agents {
		var ids []string
		eventuallyWithin(t, 4*waitFor, fmt.Sprint("user", u, "'s interrupts"), func() bool {
			run := startRun(t, ctx, tg, a, runInput(agui.AllThreads, fmt.Sprint("collect-", u, "-", len(ids)), "[]", ""))
			var last map[string]any
			for ev := range run.events {
				last = ev
			}
			ids = ids[:0]
			if out, _ := last["outcome"].(map[string]any); out != nil {
				for _, in := range out["interrupts"].([]any) {
					m := in.(map[string]any)
					if md := m["metadata"].(map[string]any); md["user"] != fmt.Sprint("user", u) {
						t.Errorf("user%d was shown %v's request", u, md["user"])
					}
					ids = append(ids, m["id"].(string))
				}
			}
			return len(ids) == calls
		})
		var resume []string
		for _, id := range ids {
			seen[id]++
			resume = append(resume, `{"interruptId":"`+id+`","status":"resolved","payload":{"approved":true}}`)
		}
		run := startRun(t, ctx, tg, a, runInput(agui.AllThreads, fmt.Sprint("answer-", u), "[]", "["+strings.Join(resume, ",")+"]"))
		for ev := range run.events {
			if ev["type"] == "RUN_ERROR" {
				t.Errorf("user%d's resume: %v", u, ev)
			}
		}
	}
	if len(seen) != users*calls {
		t.Errorf("%d distinct requests seen, want %d", len(seen), users*calls)
	}
	got := map[string]bool{}
	for range users * calls {
		select {
		case text := <-results:
			if got[text] {
				t.Errorf("%q completed twice", text)
			}
			got[text] = true
		case <-ctx.Done():
			t.Fatalf("%d of %d calls completed", len(got), users*calls)
		}
	}
}

// TestConsentStreamBadInput: malformed input is refused with a clear error
// and decides nothing.
func TestConsentStreamBadInput(t *testing.T) {
	tg, _ := startPolicyGateway(t, consentPolicy)
	ctx, cancel := context.WithTimeout(context.Background(), 2*waitFor)
	defer cancel()
	alice := newAgent(t, tg, identity.Claims{Subject: "alice"})
	// An oversized edit (the RunAgentInput past 1 MiB) is refused whole.
	huge := runInput("t", "big", "[]", `[{"interruptId":"c_1","status":"resolved","payload":{"approved":true,"editedArgs":{"text":"`+strings.Repeat("x", 1<<20)+`"}}}]`)
	for _, body := range []string{`{`, `{"threadId":"t","messages":[]}`, `{"threadId":"t","runId":"r"}`, `[]`, huge} {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, tg.Base+"/agui", strings.NewReader(body))
		resp, err := alice.client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var e map[string]string
		json.NewDecoder(resp.Body).Decode(&e)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(e["error_description"], "RunAgentInput") {
			t.Errorf("%.60s: %d %v, want 400 naming RunAgentInput", body, resp.StatusCode, e)
		}
	}
	for _, tc := range []struct{ thread, resume, code string }{
		{"has space", "", "INVALID_THREAD"},
		{"t", `[{"interruptId":"c_1","status":"resolved","payload":{"approved":"yes"}}]`, "INVALID_RESUME"},
		{"t", `[{"interruptId":"c_1","status":"resolved","payload":{"approved":true,"extra":1}}]`, "INVALID_RESUME"},
		{"t", `[{"interruptId":"c_1","status":"maybe"}]`, "INVALID_RESUME"},
		{"t", `[{"interruptId":"c_1","status":"cancelled"},{"interruptId":"c_1","status":"cancelled"}]`, "INVALID_RESUME"},
		{"t", `[{"interruptId":"c_nosuch","status":"cancelled"}]`, "UNKNOWN_INTERRUPT"},
	} {
		run := startRun(t, ctx, tg, alice, runInput(tc.thread, "bad", "[]", tc.resume))
		run.expect(t, "RUN_STARTED")
		if ev := run.next(t); ev["type"] != "RUN_ERROR" || ev["code"] != tc.code {
			t.Errorf("thread %q resume %s: %v, want RUN_ERROR %s", tc.thread, tc.resume, ev, tc.code)
		}
	}
}

// TestConsentListenGrace: a user whose last stream closed still counts as
// following for five minutes of the gateway's clock (a UI resumes with a
// new run after each interrupt); after that, calls needing their consent
// are refused at once.
func TestConsentListenGrace(t *testing.T) {
	up, _ := httpFixture(t, "fx", false)
	file := filepath.Join(t.TempDir(), "allow.yaml")
	if err := os.WriteFile(file, []byte("id: anyone\nrules:\n  - {id: echo, upstream: fx, tools: [echo], consent: always}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	clk := testutil.NewClock(time.Now(), 0)
	tg := startGatewayDeps(t, server.Deps{Now: clk.Now}, func(c *config.Config) {
		c.Upstreams = []config.Upstream{{Name: "fx", URL: up}}
		c.Policy.Files = []string{file}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*waitFor)
	defer cancel()
	rctx, rcancel := context.WithCancel(ctx)
	run := startRun(t, rctx, tg, nil, runInput(agui.AllThreads, "g1", "[]", "")) // the anonymous user of --auth open
	run.expect(t, "RUN_STARTED", "STATE_SNAPSHOT")
	rcancel() // the UI goes away
	for range run.events {
	}
	eventually(t, "the gateway to see the stream close", func() bool { return !tg.GW.StreamsOpen(identity.Anonymous()) })
	clk.Add(4 * time.Minute)
	cs := connect(t, tg.MCP, legacy, nil)
	cctx, ccancel := context.WithCancel(ctx)
	waited := make(chan error, 1)
	go func() {
		_, err := cs.CallTool(cctx, &mcp.CallToolParams{Name: "fx__echo", Arguments: map[string]any{"text": "x"}})
		waited <- err
	}()
	eventually(t, "the call to wait for consent within the grace", func() bool {
		rs, _ := tg.GW.PendingConsents(ctx)
		return len(rs) == 1
	})
	ccancel()
	<-waited
	clk.Add(2 * time.Minute)
	if res := callTool(t, cs, "fx__echo", map[string]any{"text": "x"}); !res.IsError || !strings.Contains(toolText(res), "follows no consent stream") {
		t.Errorf("after the grace: %q", toolText(res))
	}
}

// finished reads a run's events up to RUN_FINISHED and returns its
// outcome and the ids of its interrupts.
func finished(t *testing.T, run *aguiRun) (outcome string, ids []string) {
	t.Helper()
	for {
		ev := run.next(t)
		switch ev["type"] {
		case "RUN_ERROR":
			t.Fatalf("RUN_ERROR %v", ev)
		case "RUN_FINISHED":
			o := ev["outcome"].(map[string]any)
			ints, _ := o["interrupts"].([]any)
			for _, in := range ints {
				ids = append(ids, in.(map[string]any)["id"].(string))
			}
			slices.Sort(ids)
			return o["type"].(string), ids
		}
	}
}

func attachKnowing(thread, run string, known []string) string {
	b, _ := json.Marshal(known)
	return `{"threadId":"` + thread + `","runId":"` + run + `","messages":[],"forwardedProps":{"knownInterrupts":` + string(b) + `}}`
}

// TestRequestThreadsAndKnownInterrupts: a UI that shows several open
// requests answers each on its own thread (sag:consent:<id>) without
// addressing the others, and a run that names the interrupts it already
// shows waits until that set changes (one answered elsewhere, a new one),
// then ends with what is open, or with success when nothing is.
func TestRequestThreadsAndKnownInterrupts(t *testing.T) {
	tg, _ := startPolicyGateway(t, consentPolicy)
	ctx, cancel := context.WithTimeout(context.Background(), 3*waitFor)
	defer cancel()
	alice := newAgent(t, tg, identity.Claims{Subject: "alice"})
	run := startRun(t, ctx, tg, alice, runInput(agui.AllThreads, "f1", "[]", ""))
	run.expect(t, "RUN_STARTED", "STATE_SNAPSHOT")
	one := workflowCall(t, ctx, tg, alice, "wf-a", "one")
	if _, ids := finished(t, run); len(ids) != 1 {
		t.Fatalf("interrupts %v, want one", ids)
	}
	two := workflowCall(t, ctx, tg, alice, "wf-b", "two")
	var both []string
	eventually(t, "two open interrupts", func() bool {
		r := startRun(t, ctx, tg, alice, runInput(agui.AllThreads, "f2", "[]", ""))
		r.expect(t, "RUN_STARTED", "STATE_SNAPSHOT")
		_, both = finished(t, r)
		return len(both) == 2
	})
	// Knowing both, a run waits; answering the first on its own thread
	// (the second left open) ends it with the second alone.
	waiting := startRun(t, ctx, tg, alice, attachKnowing(agui.AllThreads, "f3", both))
	waiting.expect(t, "RUN_STARTED", "STATE_SNAPSHOT")
	first, second := both[0], both[1]
	answer := startRun(t, ctx, tg, alice, runInput(agui.RequestThreadPrefix+first, "a1", "[]", `[{"interruptId":"`+first+`","status":"resolved","payload":{"approved":true}}]`))
	answer.expect(t, "RUN_STARTED", "TOOL_CALL_RESULT")
	if o, _ := finished(t, answer); o != "success" {
		t.Errorf("the answer's outcome %s", o)
	}
	if _, ids := finished(t, waiting); !slices.Equal(ids, []string{second}) {
		t.Errorf("after the first was answered: interrupts %v, want [%s]", ids, second)
	}
	// The request thread shows that request only, and resuming another
	// request on it is refused.
	own := startRun(t, ctx, tg, alice, runInput(agui.RequestThreadPrefix+second, "a2", "[]", ""))
	own.expect(t, "RUN_STARTED", "STATE_SNAPSHOT")
	if _, ids := finished(t, own); !slices.Equal(ids, []string{second}) {
		t.Errorf("request thread of %s: interrupts %v", second, ids)
	}
	wrong := startRun(t, ctx, tg, alice, runInput(agui.RequestThreadPrefix+second, "a3", "[]", `[{"interruptId":"`+first+`","status":"resolved","payload":{"approved":true}}]`))
	wrong.expect(t, "RUN_STARTED")
	if ev := wrong.next(t); ev["type"] != "RUN_ERROR" || ev["code"] != "INTERRUPTS_UNADDRESSED" {
		t.Errorf("another request's answer on a request thread: %v", ev)
	}
	// Knowing the second, a run waits; its denial leaves nothing open.
	waiting = startRun(t, ctx, tg, alice, attachKnowing(agui.AllThreads, "f4", []string{second}))
	waiting.expect(t, "RUN_STARTED", "STATE_SNAPSHOT")
	deny := startRun(t, ctx, tg, alice, runInput(agui.RequestThreadPrefix+second, "a4", "[]", `[{"interruptId":"`+second+`","status":"resolved","payload":{"approved":false}}]`))
	if o, _ := finished(t, deny); o != "success" {
		t.Errorf("the denial's outcome %s", o)
	}
	if o, ids := finished(t, waiting); o != "success" || len(ids) != 0 {
		t.Errorf("after the denial: %s %v, want success", o, ids)
	}
	results := map[string]bool{}
	for _, ch := range []<-chan *mcp.CallToolResult{one, two} {
		select {
		case res := <-ch:
			results[toolText(res)] = res.IsError
		case <-ctx.Done():
			t.Fatal("a call did not return")
		}
	}
	errs := 0
	for _, isErr := range results {
		if isErr {
			errs++
		}
	}
	if len(results) != 2 || errs != 1 {
		t.Errorf("results %v: want one approved, one denied", results)
	}
}
