package server_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	spec "github.com/a2aproject/a2a-go/v2/a2a"
	"github.com/a2aproject/a2a-go/v2/a2aclient"
	"github.com/a2aproject/a2a-go/v2/a2aclient/agentcard"
	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jwk"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/sag-gateway/sag/a2a"
	"github.com/sag-gateway/sag/fixtures"
	"github.com/sag-gateway/sag/identity"
	"github.com/sag-gateway/sag/server"
	"github.com/sag-gateway/sag/server/config"
)

// startAgentUpstream starts the A2A fixture agent as a strict resource
// server of tg's tokens and registers it as the upstream "helper".
func startAgentUpstream(t *testing.T, tg *testGateway, o fixtures.AgentOptions) (*fixtures.Agent, server.UpstreamResponse) {
	t.Helper()
	o.Verify = &fixtures.Verify{JWKSURL: tg.Base + "/.well-known/jwks.json", Issuer: tg.Base, Actor: tg.Base}
	a := fixtures.NewAgent(o)
	url, stop, err := a.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	return a, tg.addUpstream(t, server.UpstreamRequest{Name: "helper", Kind: "a2a", URL: url})
}

// TestAgentUpstream: an A2A agent registered as an upstream offers its
// skills as tools to MCP and A2A callers; every request it gets carries a
// token minted for it (never the caller's); its questions reach the caller
// and the answer continues its task; AUTH_REQUIRED is refused; a call that
// ends early cancels the agent's task.
func TestAgentUpstream(t *testing.T) {
	tg := startGateway(t, func(c *config.Config) { c.Auth = config.AuthDPoP; allowAll(t, c) })
	ag, reg := startAgentUpstream(t, tg, fixtures.AgentOptions{Name: "helper"})
	if !reg.Connected || reg.Tools != 4 || reg.Transport != "a2a" {
		t.Fatalf("registered agent: %+v", reg)
	}
	alice := newAgent(t, tg, identity.Claims{Subject: "alice"})
	cs := alice.connect(t, tg.MCP)
	tools := toolNames(t, cs)
	for _, name := range []string{"helper__echo", "helper__ask", "helper__auth", "helper__slow"} {
		if tools[name] == nil {
			t.Fatalf("tools/list lacks %s: %v", name, tools)
		}
	}

	if res := callTool(t, cs, "helper__echo", map[string]any{"message": "hi"}); res.IsError || toolText(res) != "echo: hi" {
		t.Errorf("helper__echo: %q (isError %v)", toolText(res), res.IsError)
	}
	if ag.Verified().Accepted.Load() == 0 || ag.Verified().Refused.Load() != 0 {
		t.Errorf("the agent accepted %d and refused %d requests (%v)", ag.Verified().Accepted.Load(), ag.Verified().Refused.Load(), ag.Verified().Reasons())
	}
	for _, c := range ag.Verified().Claims() {
		if c.Subject != "alice" || c.Act == nil || c.Act.Sub != tg.Base {
			t.Errorf("a token the agent got: sub %q act %+v; want alice, acted for by the gateway", c.Subject, c.Act)
		}
	}
	for _, h := range ag.Authorizations() {
		if strings.Contains(h, alice.token) {
			t.Fatal("the agent received the caller's own token")
		}
	}

	// The agent asks; the answer on its task completes it.
	res := callTool(t, cs, "helper__ask", map[string]any{"message": "start"})
	var st struct {
		A2A struct{ State, TaskID, ContextID string } `json:"a2a"`
	}
	b, _ := json.Marshal(res.StructuredContent)
	json.Unmarshal(b, &st)
	if res.IsError || st.A2A.State != "input-required" || st.A2A.TaskID == "" || !strings.Contains(toolText(res), "What is your name?") {
		t.Fatalf("helper__ask: %q %s", toolText(res), b)
	}
	// Another principal cannot go on with alice's task or context.
	mallory := newAgent(t, tg, identity.Claims{Subject: "mallory"}).connect(t, tg.MCP)
	for _, args := range []map[string]any{{"message": "mine now", "taskId": st.A2A.TaskID}, {"message": "mine now", "contextId": st.A2A.ContextID}} {
		if res := callTool(t, mallory, "helper__ask", args); !res.IsError || !strings.Contains(toolText(res), "of yours") {
			t.Errorf("mallory on alice's agent task %v: %q (isError %v)", args, toolText(res), res.IsError)
		}
	}
	if res := callTool(t, cs, "helper__ask", map[string]any{"message": "Alice", "taskId": st.A2A.TaskID, "contextId": st.A2A.ContextID}); res.IsError || toolText(res) != "hello, Alice" {
		t.Errorf("the answer: %q (isError %v)", toolText(res), res.IsError)
	}
	if res := callTool(t, cs, "helper__auth", map[string]any{"message": "x"}); !res.IsError || !strings.Contains(toolText(res), "AUTH_REQUIRED") {
		t.Errorf("helper__auth: %q (isError %v), want a refusal", toolText(res), res.IsError)
	}
	if res := callTool(t, cs, "helper__echo", map[string]any{}); !res.IsError {
		t.Errorf("helper__echo without a message: %q, want a tool error", toolText(res))
	}

	// A call given up early cancels the agent's task.
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	_, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "helper__slow", Arguments: map[string]any{"message": "go"}})
	cancel()
	if err == nil {
		t.Error("helper__slow returned before it was cancelled")
	}
	eventually(t, "the agent's task cancelled", func() bool { return ag.Cancelled() > 0 })

	// A2A callers reach the same skills; the agent's question becomes the
	// task's INPUT_REQUIRED and the next message answers it.
	actx, acancel := context.WithTimeout(context.Background(), 3*waitFor)
	defer acancel()
	_, c := a2aClient(t, actx, tg, alice)
	if task := send(t, actx, c, toolMessage("helper__echo", map[string]any{"message": "via a2a"})); task.Status.State != spec.TaskStateCompleted || !strings.Contains(partsText(task.Artifacts[0].Parts), "echo: via a2a") {
		t.Errorf("A2A → agent: %s %+v", task.Status.State, task.Artifacts)
	}
	// Streamed, the agent's own status reaches the caller as WORKING.
	var working []string
	var final spec.TaskState
	for ev, err := range c.SendStreamingMessage(actx, &spec.SendMessageRequest{Message: toolMessage("helper__echo", map[string]any{"message": "streamed"})}) {
		if err != nil {
			t.Fatalf("stream: %v", err)
		}
		if st, ok := ev.(*spec.TaskStatusUpdateEvent); ok {
			if final = st.Status.State; final == spec.TaskStateWorking && st.Status.Message != nil {
				working = append(working, partsText(st.Status.Message.Parts))
			}
		}
	}
	if final != spec.TaskStateCompleted || !slices.Contains(working, "echoing") {
		t.Errorf("A2A stream → agent: WORKING %q, last %s", working, final)
	}
	asking := send(t, actx, c, toolMessage("helper__ask", map[string]any{"message": "start"}))
	if asking.Status.State != spec.TaskStateInputRequired || !strings.Contains(partsText(asking.Status.Message.Parts), "What is your name?") {
		t.Fatalf("A2A → agent asking: %s %+v", asking.Status.State, asking.Status.Message)
	}
	answered := send(t, actx, c, spec.NewMessageForTask(spec.MessageRoleUser, asking, spec.NewTextPart("Bob")))
	if answered.Status.State != spec.TaskStateCompleted || !strings.Contains(partsText(answered.Artifacts[0].Parts), "hello, Bob") {
		t.Errorf("A2A answer to the agent: %s %+v", answered.Status.State, answered.Artifacts)
	}
}

// TestAgentCardOffOrigin: a card whose interface points off its own origin
// (at a private address here) is refused, and none of its skills listed.
func TestAgentCardOffOrigin(t *testing.T) {
	tg := startGateway(t, func(c *config.Config) { c.Auth = config.AuthDPoP; allowAll(t, c) })
	_, reg := startAgentUpstream(t, tg, fixtures.AgentOptions{InterfaceURL: "http://10.1.2.3/rpc"})
	if reg.Connected || reg.Tools != 0 || !strings.Contains(reg.ConnectError, "private address") {
		t.Errorf("an agent card pointing at a private address: %+v", reg)
	}
}

// TestAgentUpstreamCard: SAG offers an upstream agent's card with its own
// URLs and security in place of the agent's, skills named as SAG's tools;
// a generic A2A client of that card reaches the agent through SAG by the
// skill id and the message text.
func TestAgentUpstreamCard(t *testing.T) {
	tg, _ := startPolicyGateway(t, `id: cards
rules:
  - {id: alice-helper, upstream: helper, tools: ["*"], principals: {users: [alice]}, consent: never}
  - {id: bob-echo, upstream: helper, tools: [echo], principals: {users: [bob]}, consent: never}
`)
	startAgentUpstream(t, tg, fixtures.AgentOptions{Name: "helper"})
	ctx, cancel := context.WithTimeout(context.Background(), 3*waitFor)
	defer cancel()
	if _, err := agentcard.DefaultResolver.Resolve(ctx, tg.Base+"/a2a/agents/helper"); err == nil {
		t.Error("an upstream agent's card without authentication")
	}
	alice := newAgent(t, tg, identity.Claims{Subject: "alice"})
	card, err := agentcard.NewResolver(alice.client()).Resolve(ctx, tg.Base+"/a2a/agents/helper")
	if err != nil {
		t.Fatal(err)
	}
	var skills []string
	for _, s := range card.Skills {
		skills = append(skills, s.ID)
	}
	if card.Name != "helper" || card.SupportedInterfaces[0].URL != tg.Base+"/a2a" || card.SecuritySchemes["dpop"] == nil ||
		strings.Join(skills, ",") != "helper__echo,helper__ask,helper__auth,helper__slow" {
		t.Fatalf("the agent's card as SAG offers it: %+v (skills %v)", card, skills)
	}
	// Each caller's card lists the skills it may use.
	bob := newAgent(t, tg, identity.Claims{Subject: "bob"})
	if bobs, err := agentcard.NewResolver(bob.client()).Resolve(ctx, tg.Base+"/a2a/agents/helper"); err != nil || len(bobs.Skills) != 1 || bobs.Skills[0].ID != "helper__echo" {
		t.Errorf("bob's card of the agent: %+v, %v; want helper__echo alone", bobs, err)
	}
	if resp, err := alice.client().Get(tg.Base + "/a2a/agents/nobody" + a2a.CardPath); err != nil || resp.StatusCode != http.StatusNotFound {
		t.Errorf("the card of no agent: %v %v", resp.StatusCode, err)
	}
	c, err := a2aclient.NewFromCard(ctx, card, a2aclient.WithJSONRPCTransport(alice.client()))
	if err != nil {
		t.Fatal(err)
	}
	msg := spec.NewMessage(spec.MessageRoleUser, spec.NewTextPart("by skill"))
	msg.Metadata = map[string]any{"skillId": "helper__echo"}
	if task := send(t, ctx, c, msg); task.Status.State != spec.TaskStateCompleted || !strings.Contains(partsText(task.Artifacts[0].Parts), "echo: by skill") {
		t.Errorf("a message to the agent's skill through SAG: %s %+v", task.Status.State, task.Artifacts)
	}
}

// TestAgentCardSignatures: a card signed with a key its registration names
// is read; one signed with another key, a signed card registered without
// keys and an unsigned card registered with keys are refused.
func TestAgentCardSignatures(t *testing.T) {
	newKey := func(kid string) (jwk.Key, json.RawMessage) {
		priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		k, err := jwk.Import(priv)
		if err != nil {
			t.Fatal(err)
		}
		k.Set(jwk.KeyIDKey, kid)
		k.Set(jwk.AlgorithmKey, jwa.ES256())
		pub, _ := k.PublicKey()
		set := jwk.NewSet()
		set.AddKey(pub)
		b, _ := json.Marshal(set)
		return k, b
	}
	signer, signerSet := newKey("card-1")
	_, otherSet := newKey("card-1")
	for _, c := range []struct {
		name  string
		key   jwk.Key
		keys  json.RawMessage
		error string // "" when the card is read
	}{
		{"signed, verified", signer, signerSet, ""},
		{"signed with another key", signer, otherSet, "no signature of the agent card verifies"},
		{"signed, no keys registered", signer, nil, "register the agent with card_jwks"},
		{"unsigned, keys registered", nil, signerSet, "is not signed"},
	} {
		t.Run(c.name, func(t *testing.T) {
			tg := startGateway(t, func(cfg *config.Config) { cfg.Auth = config.AuthDPoP; allowAll(t, cfg) })
			a := fixtures.NewAgent(fixtures.AgentOptions{Name: "signed", CardKey: c.key})
			url, stop, err := a.Start()
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(stop)
			reg := tg.addUpstream(t, server.UpstreamRequest{Name: "signed", Kind: "a2a", URL: url, CardJWKS: c.keys})
			if c.error == "" && (!reg.Connected || reg.Tools != 4) {
				t.Errorf("a card signed with its registered key: %+v", reg)
			}
			if c.error != "" && (reg.Connected || reg.Tools != 0 || !strings.Contains(reg.ConnectError, c.error)) {
				t.Errorf("%+v, want refused with %q", reg, c.error)
			}
		})
	}
}

// TestA2ACancelRunningCall: CancelTask of a task whose call is running
// cancels the call and the upstream agent's own task; the task ends
// CANCELED.
func TestA2ACancelRunningCall(t *testing.T) {
	tg := startGateway(t, func(c *config.Config) { c.Auth = config.AuthDPoP; allowAll(t, c) })
	ag, _ := startAgentUpstream(t, tg, fixtures.AgentOptions{Name: "helper"})
	alice := newAgent(t, tg, identity.Claims{Subject: "alice"})
	ctx, cancel := context.WithTimeout(context.Background(), 3*waitFor)
	defer cancel()
	_, c := a2aClient(t, ctx, tg, alice)
	var id spec.TaskID
	for ev, err := range c.SendStreamingMessage(ctx, &spec.SendMessageRequest{Message: toolMessage("helper__slow", map[string]any{"message": "go"})}) {
		if err != nil {
			t.Fatalf("stream: %v", err)
		}
		if task, ok := ev.(*spec.Task); ok {
			id = task.ID
			break // the call runs on
		}
	}
	if id == "" {
		t.Fatal("the stream named no task")
	}
	// The call reaches the agent before the cancel does.
	eventually(t, "the agent got the call", func() bool { return len(ag.Authorizations()) >= 1 })
	// Another principal cannot follow the task; its owner can, and sees
	// it end.
	bob := newAgent(t, tg, identity.Claims{Subject: "bob"})
	_, cb := a2aClient(t, ctx, tg, bob)
	for _, err := range cb.SubscribeToTask(ctx, &spec.SubscribeToTaskRequest{ID: id}) {
		if !errors.Is(err, spec.ErrTaskNotFound) {
			t.Errorf("bob's SubscribeToTask of alice's task: %v, want TaskNotFound", err)
		}
		break
	}
	followed := make(chan spec.TaskState, 1)
	go func() {
		var last spec.TaskState
		for ev, err := range c.SubscribeToTask(ctx, &spec.SubscribeToTaskRequest{ID: id}) {
			if err != nil {
				break
			}
			switch e := ev.(type) {
			case *spec.Task:
				last = e.Status.State
			case *spec.TaskStatusUpdateEvent:
				last = e.Status.State
			}
		}
		followed <- last
	}()
	time.Sleep(100 * time.Millisecond) // the subscription is open
	got, err := c.CancelTask(ctx, &spec.CancelTaskRequest{ID: id})
	if err != nil || got.Status.State != spec.TaskStateCanceled {
		t.Fatalf("CancelTask of a running call: %+v, %v", got, err)
	}
	eventually(t, "the agent's task cancelled", func() bool { return ag.Cancelled() > 0 })
	select {
	case st := <-followed:
		if st != spec.TaskStateCanceled {
			t.Errorf("the subscription's last state: %s, want CANCELED", st)
		}
	case <-time.After(waitFor):
		t.Error("the subscription did not end with the task")
	}
	if task, err := c.GetTask(ctx, &spec.GetTaskRequest{ID: id}); err != nil || task.Status.State != spec.TaskStateCanceled {
		t.Errorf("the task after the cancel: %+v, %v", task, err)
	}
}
