package server_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/sag-gateway/sag/agui"
	"github.com/sag-gateway/sag/fixtures"
	"github.com/sag-gateway/sag/identity"
	"github.com/sag-gateway/sag/server"
)

// startAGUIAgent starts the AG-UI fixture agent (calling tool through the
// gateway) as a strict resource server of tg's tokens and registers it as
// "helper".
func startAGUIAgent(t *testing.T, tg *testGateway, tool string) *fixtures.AGUIAgent {
	t.Helper()
	ag, err := fixtures.NewAGUIAgent(fixtures.AGUIAgentOptions{Tool: tool,
		Verify: &fixtures.Verify{JWKSURL: tg.Base + "/.well-known/jwks.json", Issuer: tg.Base, Actor: tg.Base}})
	if err != nil {
		t.Fatal(err)
	}
	url, stop, err := ag.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	if reg := tg.addUpstream(t, server.UpstreamRequest{Name: "helper", Kind: "agui", URL: url, AgentKey: ag.Key()}); !reg.Connected || reg.Tools != 0 {
		t.Fatalf("registered AG-UI agent: %+v", reg)
	}
	return ag
}

// interruptsOf returns the interrupt ids of the RUN_FINISHED event that
// ends seen.
func interruptsOf(t *testing.T, seen []map[string]any) []string {
	t.Helper()
	ev := seen[len(seen)-1]
	var fin struct {
		Outcome struct {
			Type       string
			Interrupts []struct{ ID string }
		}
	}
	b, _ := json.Marshal(ev)
	json.Unmarshal(b, &fin)
	if fin.Outcome.Type != "interrupt" {
		all, _ := json.Marshal(seen) // the agent's messages say why
		t.Fatalf("RUN_FINISHED %s, want an interrupt; the run's events: %s", b, all)
	}
	var ids []string
	for _, in := range fin.Outcome.Interrupts {
		ids = append(ids, in.ID)
	}
	return ids
}

// untilType reads a run's events up to the first of type typ.
func (r *aguiRun) untilType(t *testing.T, typ string) (seen []map[string]any) {
	t.Helper()
	var types []any
	for {
		select {
		case ev, ok := <-r.events:
			if !ok {
				t.Fatalf("the run ended before %s, after %v", typ, types)
			}
			seen, types = append(seen, ev), append(types, ev["type"])
			if ev["type"] == typ {
				return seen
			}
		case <-time.After(waitFor):
			t.Fatalf("no %s within %s; the run sent %v", typ, waitFor, types)
		}
	}
}

// TestAGUIAgentProxy: alice runs an AG-UI agent through the gateway. The
// agent gets a token minted for it (never alice's), and calls a tool
// through the gateway's MCP endpoint with the token the run gave it; the
// call needs alice's consent, so the run ends with the interrupt while the
// agent waits; alice's resume on the thread approves it and the same
// agent run goes on to its end in the resumed run.
func TestAGUIAgentProxy(t *testing.T) {
	tg, _ := startPolicyGateway(t, consentPolicy)
	ag := startAGUIAgent(t, tg, "fx__echo")
	alice := newAgent(t, tg, identity.Claims{Subject: "alice"})
	ctx, cancel := context.WithTimeout(context.Background(), 3*waitFor)
	defer cancel()
	msgs := `[{"id":"u1","role":"user","content":"hello"}]`

	run := startRunAt(t, ctx, tg, alice, "/agui/agents/helper", runInput("wf-agent", "r1", msgs, ""))
	if ev := run.next(t); ev["type"] != "RUN_STARTED" || ev["runId"] != "r1" {
		t.Fatalf("first event %v", ev)
	}
	seen := run.untilType(t, "RUN_FINISHED")
	all := seen
	var types []string
	for _, ev := range seen {
		types = append(types, ev["type"].(string))
	}
	ids := interruptsOf(t, seen)
	if len(ids) != 1 {
		t.Fatalf("interrupts %v, want the agent's call", ids)
	}
	r, err := tg.GW.ConsentRequest(ctx, ids[0])
	if err != nil || r.Agent != tg.Base+"/agui/agents/helper" || r.User != "alice" || r.Tool != "echo" {
		t.Fatalf("the consent request: %+v, %v", r, err)
	}

	// A new run while the interrupt is open is refused.
	req, _ := http.NewRequest(http.MethodPost, tg.Base+"/agui/agents/helper", strings.NewReader(runInput("wf-agent", "r1b", msgs, "")))
	if resp, err := alice.client().Do(req); err != nil || resp.StatusCode != http.StatusConflict {
		t.Errorf("a second run on the waiting thread: %v %v", resp.StatusCode, err)
	}

	resumed := startRunAt(t, ctx, tg, alice, "/agui/agents/helper", runInput("wf-agent", "r2", msgs, `[{"interruptId":"`+ids[0]+`","status":"resolved","payload":{"approved":true}}]`))
	if ev := resumed.next(t); ev["type"] != "RUN_STARTED" || ev["runId"] != "r2" {
		t.Fatalf("resumed run's first event %v", ev)
	}
	seen = resumed.untilType(t, "RUN_FINISHED")
	all = append(all, seen...)
	for _, ev := range seen {
		types = append(types, ev["type"].(string))
	}
	for _, ev := range all {
		if b, _ := json.Marshal(ev); agui.CheckEvent(b) != nil {
			t.Errorf("an event the user got is not AG-UI: %s (%v)", b, agui.CheckEvent(b))
		}
	}
	// The agent's events, in its order, around the interrupt (which comes
	// between two of them, wherever the agent was when it called).
	var agents []string
	for _, typ := range types {
		if strings.HasPrefix(typ, "TEXT_MESSAGE_") || typ == "TOOL_CALL_RESULT" {
			agents = append(agents, typ)
		}
	}
	if strings.Join(agents, " ") != "TEXT_MESSAGE_START TEXT_MESSAGE_CONTENT TEXT_MESSAGE_END TOOL_CALL_RESULT" {
		t.Errorf("relayed events %v", types)
	}
	if res := seen[len(seen)-2]; res["type"] != "TOOL_CALL_RESULT" || res["content"] != "hello" {
		t.Errorf("the agent's result %v", res)
	}
	if fin := seen[len(seen)-1]; fin["runId"] != "r2" || fin["threadId"] != "wf-agent" {
		t.Errorf("RUN_FINISHED %v, want the resumed run's ids", fin)
	}
	if got := ag.Results(); len(got) != 1 || got[0] != "hello" {
		t.Errorf("the agent's tool results %v", got)
	}
	if ag.Verified().Accepted.Load() != 1 || ag.Verified().Refused.Load() != 0 {
		t.Errorf("the agent accepted %d, refused %d runs (%v)", ag.Verified().Accepted.Load(), ag.Verified().Refused.Load(), ag.Verified().Reasons())
	}
	for _, h := range ag.Authorizations() {
		if strings.Contains(h, alice.token) {
			t.Fatal("the agent received alice's own token")
		}
	}
	// The token the run gave the agent ended with the run.
	if got := ag.CallAgain(ctx); !strings.Contains(got, "Unauthorized") {
		t.Errorf("the agent's token after its run: %q, want refused", got)
	}
	// The agent's call was alice's, made by the agent, in the run's
	// workflow and an agent session of its own.
	var call *struct{ WSID, ASID, SpiffeID string }
	for _, rec := range auditRecords(t, tg, "fx__echo") {
		if rec.Method == "tools/call" {
			call = &struct{ WSID, ASID, SpiffeID string }{rec.WSID, rec.ASID, rec.SpiffeID}
		}
	}
	if call == nil || call.WSID == "" || call.SpiffeID != tg.Base+"/agui/agents/helper" {
		t.Errorf("audit of the agent's call: %+v", call)
	}
}

// TestAGUIAgentProxyKill: killing the run's workflow while the run waits
// for consent ends it: the agent's call is refused, the run's token is
// revoked, and no resume finds the run.
func TestAGUIAgentProxyKill(t *testing.T) {
	tg, _ := startPolicyGateway(t, consentPolicy)
	ag := startAGUIAgent(t, tg, "fx__echo")
	alice := newAgent(t, tg, identity.Claims{Subject: "alice"})
	ctx, cancel := context.WithTimeout(context.Background(), 3*waitFor)
	defer cancel()
	msgs := `[{"id":"u1","role":"user","content":"doomed"}]`
	run := startRunAt(t, ctx, tg, alice, "/agui/agents/helper", runInput("wf-kill", "r1", msgs, ""))
	seen := run.untilType(t, "RUN_FINISHED")
	ids := interruptsOf(t, seen)
	r, err := tg.GW.ConsentRequest(ctx, ids[0])
	if err != nil {
		t.Fatal(err)
	}
	if code, body := tg.adminDo(t, http.MethodPost, "/admin/kill", server.KillRequest{Session: r.WSID}); code != http.StatusOK {
		t.Fatalf("kill: %d %s", code, body)
	}
	eventually(t, "the agent's call ended", func() bool { return len(ag.Results()) == 1 })
	if got := ag.Results()[0]; !strings.HasPrefix(got, "error:") {
		t.Errorf("the agent's call after the kill: %q, want an error", got)
	}
	resumed := startRunAt(t, ctx, tg, alice, "/agui/agents/helper", runInput("wf-kill", "r2", msgs, `[{"interruptId":"`+ids[0]+`","status":"resolved","payload":{"approved":true}}]`))
	resumed.expect(t, "RUN_STARTED")
	if ev := resumed.next(t); ev["type"] != "RUN_ERROR" || ev["code"] != "NO_WAITING_RUN" {
		t.Errorf("resume after the kill: %v", ev)
	}
}

// TestAGUIAgentProxyRefusals: unknown agents, bad threads and anonymous
// callers are refused before anything reaches an agent.
func TestAGUIAgentProxyRefusals(t *testing.T) {
	tg, _ := startPolicyGateway(t, consentPolicy)
	ag := startAGUIAgent(t, tg, "fx__echo")
	alice := newAgent(t, tg, identity.Claims{Subject: "alice"})
	post := func(c *http.Client, path, body string) int {
		req, _ := http.NewRequest(http.MethodPost, tg.Base+path, strings.NewReader(body))
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	msgs := `[{"id":"u1","role":"user","content":"x"}]`
	for _, c := range []struct {
		name, path, body string
		client           *http.Client
		want             int
	}{
		{"unknown agent", "/agui/agents/nobody", runInput("wf", "r", msgs, ""), alice.client(), http.StatusNotFound},
		{"an MCP upstream is no agent", "/agui/agents/fx", runInput("wf", "r", msgs, ""), alice.client(), http.StatusNotFound},
		{"not a workflow thread", "/agui/agents/helper", runInput("sag:all", "r", msgs, ""), alice.client(), http.StatusBadRequest},
		{"a request thread", "/agui/agents/helper", runInput("sag:consent:x", "r", msgs, ""), alice.client(), http.StatusBadRequest},
		{"not a RunAgentInput", "/agui/agents/helper", `{"threadId":1}`, alice.client(), http.StatusBadRequest},
		{"no token", "/agui/agents/helper", runInput("wf", "r", msgs, ""), http.DefaultClient, http.StatusUnauthorized},
	} {
		if got := post(c.client, c.path, c.body); got != c.want {
			t.Errorf("%s: %d, want %d", c.name, got, c.want)
		}
	}
	if n := ag.Verified().Accepted.Load() + ag.Verified().Refused.Load(); n != 0 {
		t.Errorf("%d requests reached the agent", n)
	}
}

// TestAGUIAgentProxyBadEvents: an agent whose event is not AG-UI ends the
// run with RUN_ERROR INVALID_AGENT_EVENT; nothing of it reaches the user.
func TestAGUIAgentProxyBadEvents(t *testing.T) {
	tg, _ := startPolicyGateway(t, consentPolicy)
	bad := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: {\"type\":\"RUN_STARTED\",\"threadId\":\"wf\",\"runId\":\"r\"}\n\n")
		io.WriteString(w, "data: {\"type\":\"TOOL_CALL_START\",\"toolCallId\":\"t1\"}\n\n")
	}))
	t.Cleanup(bad.Close)
	key, err := identity.NewDPoPKey()
	if err != nil {
		t.Fatal(err)
	}
	tg.addUpstream(t, server.UpstreamRequest{Name: "bad", Kind: "agui", URL: bad.URL, AgentKey: key.Thumbprint()})
	alice := newAgent(t, tg, identity.Claims{Subject: "alice"})
	ctx, cancel := context.WithTimeout(context.Background(), 3*waitFor)
	defer cancel()
	run := startRunAt(t, ctx, tg, alice, "/agui/agents/bad", runInput("wf", "r", `[{"id":"u1","role":"user","content":"x"}]`, ""))
	run.expect(t, "RUN_STARTED")
	if ev := run.next(t); ev["type"] != "RUN_ERROR" || ev["code"] != "INVALID_AGENT_EVENT" || !strings.Contains(ev["message"].(string), "toolCallName") {
		t.Errorf("an invalid agent event: %v", ev)
	}
}

// TestAGUIAgentProxyKillWhileRunning: a kill of the run's workflow while
// the agent is streaming ends the user's run (RUN_ERROR SESSION_KILLED)
// and the gateway's request to the agent.
func TestAGUIAgentProxyKillWhileRunning(t *testing.T) {
	tg, _ := startPolicyGateway(t, consentPolicy)
	gone := make(chan struct{})
	busy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: {\"type\":\"RUN_STARTED\",\"threadId\":\"wf-busy\",\"runId\":\"r\"}\n\n")
		io.WriteString(w, "data: {\"type\":\"TEXT_MESSAGE_START\",\"messageId\":\"m\",\"role\":\"assistant\"}\n\n")
		w.(http.Flusher).Flush()
		<-r.Context().Done() // works until the gateway hangs up
		close(gone)
	}))
	t.Cleanup(busy.Close)
	key, err := identity.NewDPoPKey()
	if err != nil {
		t.Fatal(err)
	}
	tg.addUpstream(t, server.UpstreamRequest{Name: "busy", Kind: "agui", URL: busy.URL, AgentKey: key.Thumbprint()})
	alice := newAgent(t, tg, identity.Claims{Subject: "alice"})
	ctx, cancel := context.WithTimeout(context.Background(), 3*waitFor)
	defer cancel()
	run := startRunAt(t, ctx, tg, alice, "/agui/agents/busy", runInput("wf-busy", "r", `[{"id":"u1","role":"user","content":"x"}]`, ""))
	run.expect(t, "RUN_STARTED", "TEXT_MESSAGE_START")
	wsid := tg.GW.WorkflowSession(identity.Principal{Issuer: tg.Base, User: "alice"}, "wf-busy")
	if code, body := tg.adminDo(t, http.MethodPost, "/admin/kill", server.KillRequest{Session: wsid}); code != http.StatusOK {
		t.Fatalf("kill: %d %s", code, body)
	}
	if ev := run.next(t); ev["type"] != "RUN_ERROR" || ev["code"] != "SESSION_KILLED" {
		t.Errorf("the run after the kill: %v", ev)
	}
	select {
	case <-gone:
	case <-time.After(waitFor):
		t.Error("the gateway's request to the agent outlived the kill")
	}
}

// TestAGUIAgentRunIsTheUsers: the agent's calls are judged with its
// user's own claims (a rule that names a claim of the user's token matches
// them).
func TestAGUIAgentRunIsTheUsers(t *testing.T) {
	tg, _ := startPolicyGateway(t, `id: by-claim
rules:
  - {id: users-app, upstream: fx, tools: [echo], principals: {claims: {client_id: users-app}}, consent: never}
`)
	ag := startAGUIAgent(t, tg, "fx__echo")
	alice := newAgent(t, tg, identity.Claims{Subject: "alice", ClientID: "users-app"})
	ctx, cancel := context.WithTimeout(context.Background(), 3*waitFor)
	defer cancel()
	run := startRunAt(t, ctx, tg, alice, "/agui/agents/helper", runInput("wf-claims", "r", `[{"id":"u1","role":"user","content":"mine"}]`, ""))
	seen := run.untilType(t, "RUN_FINISHED")
	if res := seen[len(seen)-2]; res["type"] != "TOOL_CALL_RESULT" || res["content"] != "mine" {
		t.Errorf("the agent's call under alice's claims: %v", res)
	}
	if got := ag.Results(); len(got) != 1 || got[0] != "mine" {
		t.Errorf("the agent's results %v", got)
	}
}

// TestAGUIRunTokenLife: the token a run gives its agent works while the
// run lives and the agent is registered with the key it is bound to; once
// the agent is removed, it is refused, though the run still streams.
func TestAGUIRunTokenLife(t *testing.T) {
	tg, _ := startPolicyGateway(t, consentPolicy)
	key, err := identity.NewDPoPKey()
	if err != nil {
		t.Fatal(err)
	}
	tokens := make(chan string, 1)
	holder := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var in struct {
			ForwardedProps struct {
				SAG struct{ Token string } `json:"sag"`
			} `json:"forwardedProps"`
		}
		json.NewDecoder(r.Body).Decode(&in)
		tokens <- in.ForwardedProps.SAG.Token
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: {\"type\":\"RUN_STARTED\",\"threadId\":\"wf-life\",\"runId\":\"r\"}\n\n")
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	}))
	t.Cleanup(holder.Close)
	tg.addUpstream(t, server.UpstreamRequest{Name: "holder", Kind: "agui", URL: holder.URL, AgentKey: key.Thumbprint()})
	alice := newAgent(t, tg, identity.Claims{Subject: "alice"})
	ctx, cancel := context.WithTimeout(context.Background(), 3*waitFor)
	defer cancel()
	startRunAt(t, ctx, tg, alice, "/agui/agents/holder", runInput("wf-life", "r", `[{"id":"u1","role":"user","content":"x"}]`, "")).expect(t, "RUN_STARTED")
	tok := <-tokens
	asAgent := &agent{key: key, token: tok}
	cs := asAgent.connect(t, tg.MCP)
	if _, err := cs.ListTools(ctx, nil); err != nil {
		t.Fatalf("the run's token while the run lives: %v", err)
	}
	cs.Close()
	if code, body := tg.adminDo(t, http.MethodDelete, "/admin/upstreams/holder", nil); code != http.StatusNoContent {
		t.Fatalf("remove the agent: %d %s", code, body)
	}
	c := mcp.NewClient(&mcp.Implementation{Name: "after", Version: "1"}, nil)
	if cs, err := c.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: tg.MCP, HTTPClient: asAgent.client()}, nil); err == nil {
		cs.Close()
		t.Error("the run's token of a removed agent still works")
	}
}
