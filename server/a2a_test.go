package server_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	spec "github.com/a2aproject/a2a-go/v2/a2a"
	"github.com/a2aproject/a2a-go/v2/a2aclient"
	"github.com/a2aproject/a2a-go/v2/a2aclient/agentcard"

	"github.com/sag-gateway/sag/identity"
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
	if card.Name != "SAG" || len(card.SupportedInterfaces) != 1 || card.SupportedInterfaces[0].URL != tg.Base+"/a2a" || len(card.Skills) == 0 {
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
