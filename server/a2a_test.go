package server_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strings"
	"testing"

	spec "github.com/a2aproject/a2a-go/v2/a2a"
	"github.com/a2aproject/a2a-go/v2/a2aclient"
	"github.com/a2aproject/a2a-go/v2/a2aclient/agentcard"
	"github.com/a2aproject/a2a-go/v2/a2acompat/a2av0"

	"github.com/sag-gateway/sag/consent"
	"github.com/sag-gateway/sag/identity"
	"github.com/sag-gateway/sag/server"
)

// a2aClient resolves SAG's agent card and returns an a2a-go client that
// speaks JSON-RPC with a's credentials (DPoP).
func a2aClient(t *testing.T, ctx context.Context, tg *testGateway, a *agent) (*spec.AgentCard, *a2aclient.Client) {
	t.Helper()
	card, err := agentcard.DefaultResolver.Resolve(ctx, tg.Base)
	if err != nil {
		t.Fatalf("agent card: %v", err)
	}
	c, err := a2aclient.NewFromCard(ctx, card, a2aclient.WithJSONRPCTransport(a.client()))
	if err != nil {
		t.Fatal(err)
	}
	return card, c
}

func send(t *testing.T, ctx context.Context, c *a2aclient.Client, msg *spec.Message) *spec.Task {
	t.Helper()
	res, err := c.SendMessage(ctx, &spec.SendMessageRequest{Message: msg})
	if err != nil {
		t.Fatalf("SendMessage: %v", err)
	}
	task, ok := res.(*spec.Task)
	if !ok {
		t.Fatalf("SendMessage answered %T, want a task", res)
	}
	return task
}

func toolMessage(tool string, args map[string]any) *spec.Message {
	return spec.NewMessage(spec.MessageRoleUser, spec.NewDataPart(map[string]any{"tool": tool, "arguments": args}))
}

// partsText is the text and the JSON of the data in parts.
func partsText(parts spec.ContentParts) string {
	var out []string
	for _, p := range parts {
		if p.Text() != "" {
			out = append(out, p.Text())
		}
		if d := p.Data(); d != nil {
			b, _ := json.Marshal(d)
			out = append(out, string(b))
		}
	}
	return strings.Join(out, " ")
}

// TestA2ASendMessage: the a2a-go client finds SAG's agent card and calls
// tools with SendMessage: an allowed call completes with the result as an
// artifact; a tool no rule allows is rejected; a call that needs consent
// waits in INPUT_REQUIRED with the request to decide, and once alice
// approves it, the task's next message completes it.
func TestA2ASendMessage(t *testing.T) {
	tg, _ := startPolicyGateway(t, consentPolicy)
	ctx, cancel := context.WithTimeout(context.Background(), 3*waitFor)
	defer cancel()
	alice := newAgent(t, tg, identity.Claims{Subject: "alice"})
	card, c := a2aClient(t, ctx, tg, alice)
	if card.Name != "SAG" || len(card.SupportedInterfaces) != 3 || card.SupportedInterfaces[0].URL != tg.Base+"/a2a" || len(card.Skills) == 0 {
		t.Fatalf("agent card %+v", card)
	}

	done := send(t, ctx, c, toolMessage("fx__add", map[string]any{"a": 2, "b": 40}))
	if done.Status.State != spec.TaskStateCompleted || len(done.Artifacts) != 1 || !strings.Contains(partsText(done.Artifacts[0].Parts), `42`) {
		t.Errorf("allowed call: %s %+v", done.Status.State, done.Artifacts)
	}

	rejected := send(t, ctx, c, toolMessage("fx__whoami", nil))
	if rejected.Status.State != spec.TaskStateRejected || !strings.Contains(partsText(rejected.Status.Message.Parts), "unknown tool") {
		t.Errorf("a tool no rule allows: %s %+v", rejected.Status.State, rejected.Status.Message)
	}

	waiting := send(t, ctx, c, toolMessage("fx__echo", map[string]any{"text": "by a2a"}))
	if waiting.Status.State != spec.TaskStateInputRequired || waiting.Status.Message == nil {
		t.Fatalf("a call needing consent: %s", waiting.Status.State)
	}
	var pending struct {
		Consent struct{ ID, URL string }
		Tool    string
	}
	for _, p := range waiting.Status.Message.Parts {
		if d := p.Data(); d != nil {
			b, _ := json.Marshal(d)
			json.Unmarshal(b, &pending)
		}
	}
	if pending.Consent.ID == "" || pending.Consent.URL != tg.Base+"/console/#"+pending.Consent.ID || pending.Tool != "fx__echo" {
		t.Fatalf("INPUT_REQUIRED data %+v", pending)
	}
	answerAs(t, ctx, tg, alice, pending.Consent.ID, true)
	resumed := send(t, ctx, c, spec.NewMessageForTask(spec.MessageRoleUser, waiting, spec.NewTextPart("approved")))
	if resumed.ID != waiting.ID || resumed.Status.State != spec.TaskStateCompleted || len(resumed.Artifacts) == 0 || !strings.Contains(partsText(resumed.Artifacts[0].Parts), "by a2a") {
		t.Errorf("after the approval: %s %s %+v", resumed.ID, resumed.Status.State, resumed.Artifacts)
	}

	// A message without a tool call is refused with InvalidParams.
	if _, err := c.SendMessage(ctx, &spec.SendMessageRequest{Message: spec.NewMessage(spec.MessageRoleUser, spec.NewTextPart("hello"))}); err == nil {
		t.Error("a message without a data part was accepted")
	}
	// The calls are audited as the pipeline's, on the a2a channel's sessions.
	if recs := auditRecords(t, tg, "fx__add"); len(recs) != 1 || recs[0].Decision != "allow" || recs[0].Sub != "alice" {
		t.Errorf("audit of the A2A call: %+v", recs)
	}
}

// consentIDOf is the consent request an INPUT_REQUIRED task waits for.
func consentIDOf(t *testing.T, task *spec.Task) string {
	t.Helper()
	if task.Status.State != spec.TaskStateInputRequired || task.Status.Message == nil {
		t.Fatalf("task %s is %s, want INPUT_REQUIRED", task.ID, task.Status.State)
	}
	for _, p := range task.Status.Message.Parts {
		var d struct{ Consent struct{ ID string } }
		if b, err := json.Marshal(p.Data()); err == nil && json.Unmarshal(b, &d) == nil && d.Consent.ID != "" {
			return d.Consent.ID
		}
	}
	t.Fatalf("INPUT_REQUIRED task %s names no consent request", task.ID)
	return ""
}

// TestA2ATasks: tasks are stored and each is its caller's alone (another
// principal's is not found, lists hold only the caller's); CancelTask on a
// task waiting for consent withdraws the request; a kill of the task's
// workflow cancels it; streaming, the HTTP+JSON binding and 0.3 clients
// reach the same pipeline; the extended card lists the caller's tools.
func TestA2ATasks(t *testing.T) {
	tg, _ := startPolicyGateway(t, consentPolicy)
	ctx, cancel := context.WithTimeout(context.Background(), 3*waitFor)
	defer cancel()
	alice := newAgent(t, tg, identity.Claims{Subject: "alice"})
	bob := newAgent(t, tg, identity.Claims{Subject: "bob"})
	card, ca := a2aClient(t, ctx, tg, alice)
	_, cb := a2aClient(t, ctx, tg, bob)
	if len(card.SecurityRequirements) == 0 || card.SecuritySchemes["dpop"] == nil {
		t.Errorf("the card's security: %+v %+v, want the DPoP scheme", card.SecurityRequirements, card.SecuritySchemes)
	}

	done := send(t, ctx, ca, toolMessage("fx__add", map[string]any{"a": 1, "b": 2}))
	got, err := ca.GetTask(ctx, &spec.GetTaskRequest{ID: done.ID})
	if err != nil || got.Status.State != spec.TaskStateCompleted || len(got.Artifacts) != 1 {
		t.Errorf("alice's GetTask: %+v, %v", got, err)
	}
	if _, err := cb.GetTask(ctx, &spec.GetTaskRequest{ID: done.ID}); !errors.Is(err, spec.ErrTaskNotFound) {
		t.Errorf("bob's GetTask of alice's task: %v, want TaskNotFound", err)
	}
	if _, err := ca.GetTask(ctx, &spec.GetTaskRequest{ID: "no-such-task"}); !errors.Is(err, spec.ErrTaskNotFound) {
		t.Errorf("GetTask of an unknown id: %v, want TaskNotFound", err)
	}
	if _, err := cb.CancelTask(ctx, &spec.CancelTaskRequest{ID: done.ID}); !errors.Is(err, spec.ErrTaskNotFound) {
		t.Errorf("bob's CancelTask of alice's task: %v, want TaskNotFound", err)
	}

	// CancelTask withdraws the consent request the task waits for.
	waiting := send(t, ctx, ca, toolMessage("fx__echo", map[string]any{"text": "never"}))
	id := consentIDOf(t, waiting)
	// Another principal cannot go on with it either.
	if _, err := cb.SendMessage(ctx, &spec.SendMessageRequest{Message: spec.NewMessageForTask(spec.MessageRoleUser, waiting, spec.NewTextPart("mine now"))}); !errors.Is(err, spec.ErrTaskNotFound) {
		t.Errorf("bob's message on alice's task: %v, want TaskNotFound", err)
	}
	cancelled, err := ca.CancelTask(ctx, &spec.CancelTaskRequest{ID: waiting.ID})
	if err != nil || cancelled.Status.State != spec.TaskStateCanceled {
		t.Fatalf("CancelTask: %+v, %v", cancelled, err)
	}
	if r, err := tg.GW.ConsentRequest(ctx, id); err != nil || r.State != consent.Cancelled {
		t.Errorf("the consent request of a cancelled task: %+v, %v; want cancelled", r.State, err)
	}

	list, err := ca.ListTasks(ctx, &spec.ListTasksRequest{})
	if err != nil || list.TotalSize != 2 || len(list.Tasks) != 2 {
		t.Fatalf("alice's ListTasks: %+v, %v; want her 2 tasks", list, err)
	}
	if page, err := ca.ListTasks(ctx, &spec.ListTasksRequest{PageSize: 1}); err != nil || len(page.Tasks) != 1 || page.NextPageToken == "" {
		t.Errorf("a page of 1: %+v, %v", page, err)
	} else if next, err := ca.ListTasks(ctx, &spec.ListTasksRequest{PageSize: 1, PageToken: page.NextPageToken}); err != nil || len(next.Tasks) != 1 || next.Tasks[0].ID == page.Tasks[0].ID {
		t.Errorf("the next page: %+v, %v", next, err)
	}
	if _, err := ca.ListTasks(ctx, &spec.ListTasksRequest{Status: "BOGUS"}); !errors.Is(err, spec.ErrInvalidParams) {
		t.Errorf("an unknown status filter: %v, want InvalidParams", err)
	}
	if _, err := ca.ListTasks(ctx, &spec.ListTasksRequest{PageToken: "forged"}); !errors.Is(err, spec.ErrInvalidParams) {
		t.Errorf("a forged page token: %v, want InvalidParams", err)
	}
	if list, err := cb.ListTasks(ctx, &spec.ListTasksRequest{}); err != nil || len(list.Tasks) != 0 {
		t.Errorf("bob's ListTasks: %+v, %v; want none of alice's", list, err)
	}

	// A kill of the workflow cancels the task waiting in it.
	msg := toolMessage("fx__echo", map[string]any{"text": "killed"})
	msg.ContextID = "wf-kill"
	waiting = send(t, ctx, ca, msg)
	id = consentIDOf(t, waiting)
	var wsid string
	for _, r := range auditRecords(t, tg, "fx__echo") {
		if r.Method == "consent.requested" && r.ConsentID == id {
			wsid = r.WSID
		}
	}
	code, body := tg.adminDo(t, http.MethodPost, "/admin/kill", server.KillRequest{Session: wsid})
	var killed server.KillResult
	if json.Unmarshal(body, &killed); code != http.StatusOK || killed.CancelledTasks != 1 {
		t.Fatalf("kill %q: %d %s", wsid, code, body)
	}
	if got, err := ca.GetTask(ctx, &spec.GetTaskRequest{ID: waiting.ID}); err != nil || got.Status.State != spec.TaskStateCanceled {
		t.Errorf("a task of a killed workflow: %+v, %v; want CANCELED", got, err)
	}

	// Streaming: the submitted task, the artifact, then COMPLETED.
	var states []spec.TaskState
	for ev, err := range ca.SendStreamingMessage(ctx, &spec.SendMessageRequest{Message: toolMessage("fx__add", map[string]any{"a": 20, "b": 22})}) {
		if err != nil {
			t.Fatalf("stream: %v", err)
		}
		switch e := ev.(type) {
		case *spec.Task:
			states = append(states, e.Status.State)
		case *spec.TaskStatusUpdateEvent:
			states = append(states, e.Status.State)
		case *spec.TaskArtifactUpdateEvent:
			if !strings.Contains(partsText(e.Artifact.Parts), "42") {
				t.Errorf("streamed artifact %+v", e.Artifact)
			}
		}
	}
	if len(states) == 0 || states[len(states)-1] != spec.TaskStateCompleted {
		t.Errorf("streamed states %v, want to end COMPLETED", states)
	}

	// The HTTP+JSON binding and a 0.3 client reach the same tasks.
	rest, err := a2aclient.NewFromCard(ctx, card, a2aclient.WithDefaultsDisabled(), a2aclient.WithRESTTransport(alice.client()))
	if err != nil {
		t.Fatal(err)
	}
	if task := send(t, ctx, rest, toolMessage("fx__add", map[string]any{"a": 3, "b": 4})); task.Status.State != spec.TaskStateCompleted {
		t.Errorf("HTTP+JSON: %s", task.Status.State)
	}
	old, err := a2aclient.NewFromEndpoints(ctx, []*spec.AgentInterface{{URL: tg.Base + "/a2a", ProtocolBinding: spec.TransportProtocolJSONRPC, ProtocolVersion: a2av0.Version}},
		a2av0.WithJSONRPCTransport(a2av0.JSONRPCTransportConfig{Client: alice.client()}))
	if err != nil {
		t.Fatal(err)
	}
	if task := send(t, ctx, old, toolMessage("fx__add", map[string]any{"a": 5, "b": 6})); task.Status.State != spec.TaskStateCompleted || !strings.Contains(partsText(task.Artifacts[0].Parts), "11") {
		t.Errorf("A2A 0.3 client: %s %+v", task.Status.State, task.Artifacts)
	}

	// The extended card: alice's tools as skills; bob may use none.
	ext, err := ca.GetExtendedAgentCard(ctx, &spec.GetExtendedAgentCardRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var skills []string
	for _, s := range ext.Skills {
		skills = append(skills, s.ID)
	}
	if !slices.Equal(skills, []string{"call-tool", "fx__add", "fx__echo"}) {
		t.Errorf("alice's extended card skills %v", skills)
	}
	if ext, err := cb.GetExtendedAgentCard(ctx, &spec.GetExtendedAgentCardRequest{}); err != nil || len(ext.Skills) != 1 {
		t.Errorf("bob's extended card: %+v, %v", ext, err)
	}
	// A skill id names the tool as well.
	if task := send(t, ctx, ca, spec.NewMessage(spec.MessageRoleUser, spec.NewDataPart(map[string]any{"skill": "fx__add", "arguments": map[string]any{"a": 1, "b": 1}}))); task.Status.State != spec.TaskStateCompleted {
		t.Errorf("by skill id: %s", task.Status.State)
	}
}

// TestA2ABadRequests: malformed JSON-RPC, unknown methods, an unsupported
// A2A-Version and an unauthenticated caller get their codes.
func TestA2ABadRequests(t *testing.T) {
	tg, _ := startPolicyGateway(t, consentPolicy)
	alice := newAgent(t, tg, identity.Claims{Subject: "alice"})
	post := func(c *http.Client, version, body string) (int, map[string]any) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, tg.Base+"/a2a", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		if version != "" {
			req.Header.Set("A2A-Version", version)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out map[string]any
		json.NewDecoder(resp.Body).Decode(&out)
		return resp.StatusCode, out
	}
	code := func(out map[string]any) float64 {
		e, _ := out["error"].(map[string]any)
		c, _ := e["code"].(float64)
		return c
	}
	for _, c := range []struct {
		name, version, body string
		want                float64
	}{
		{"not JSON", "1.0", `{"jsonrpc":`, -32700},
		{"unknown method", "1.0", `{"jsonrpc":"2.0","id":1,"method":"NoSuchMethod","params":{}}`, -32601},
		{"unknown task", "1.0", `{"jsonrpc":"2.0","id":1,"method":"GetTask","params":{"id":"nope"}}`, -32001},
		{"unknown task, 0.3", "", `{"jsonrpc":"2.0","id":1,"method":"tasks/get","params":{"id":"nope"}}`, -32001},
		{"unsupported version", "9.9", `{"jsonrpc":"2.0","id":1,"method":"GetTask","params":{"id":"nope"}}`, -32009},
	} {
		if _, out := post(alice.client(), c.version, c.body); code(out) != c.want {
			t.Errorf("%s: %v, want code %v", c.name, out, c.want)
		}
	}
	if status, _ := post(http.DefaultClient, "1.0", `{"jsonrpc":"2.0","id":1,"method":"GetTask","params":{"id":"nope"}}`); status != http.StatusUnauthorized {
		t.Errorf("without a token: %d, want 401", status)
	}
	// A body past limits.max_request_bytes is not read into memory.
	huge := `{"jsonrpc":"2.0","id":1,"method":"SendMessage","params":{"message":{"parts":[{"text":"` + strings.Repeat("x", int(tg.Cfg.Limits.MaxRequestBytes)) + `"}]}}}`
	if _, out := post(alice.client(), "1.0", huge); code(out) == 0 {
		t.Errorf("an oversized body: %v, want a JSON-RPC error", out)
	}
}
