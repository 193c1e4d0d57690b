package server_test

import (
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/sag-gateway/sag/agui"
	"github.com/sag-gateway/sag/identity"
)

// urlClient connects a go-sdk client that declares URL-mode elicitation
// (and only that), speaking version; asked answers each elicitation with
// action and records it; completed records notifications/elicitation/complete.
type urlClient struct {
	cs        *mcp.ClientSession
	mu        sync.Mutex
	asked     []*mcp.ElicitParams
	completed []string
	askedCh   chan *mcp.ElicitParams
}

func connectURLClient(t *testing.T, a *agent, url, version, action string, mrtr *mcp.MultiRoundTripOptions) *urlClient {
	t.Helper()
	u := &urlClient{askedCh: make(chan *mcp.ElicitParams, 8)}
	opts := &mcp.ClientOptions{
		Capabilities: &mcp.ClientCapabilities{Elicitation: &mcp.ElicitationCapabilities{URL: &mcp.URLElicitationCapabilities{}}},
		ElicitationHandler: func(_ context.Context, req *mcp.ElicitRequest) (*mcp.ElicitResult, error) {
			u.mu.Lock()
			u.asked = append(u.asked, req.Params)
			u.mu.Unlock()
			u.askedCh <- req.Params
			return &mcp.ElicitResult{Action: action}, nil
		},
		ElicitationCompleteHandler: func(_ context.Context, n *mcp.ElicitationCompleteNotificationRequest) {
			u.mu.Lock()
			u.completed = append(u.completed, n.Params.ElicitationID)
			u.mu.Unlock()
		},
		MultiRoundTrip: mrtr,
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "url-client", Version: "1"}, opts).Connect(ctx,
		&mcp.StreamableClientTransport{Endpoint: url, HTTPClient: a.client()}, &mcp.ClientSessionOptions{ProtocolVersion: version})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cs.Close() })
	u.cs = cs
	return u
}

// answerAs resumes the one open interrupt id as a (on its own thread) and
// checks that the answer was taken.
func answerAs(t *testing.T, ctx context.Context, tg *testGateway, a *agent, id string, approved bool) {
	t.Helper()
	payload := `{"approved":false}`
	if approved {
		payload = `{"approved":true}`
	}
	run := startRun(t, ctx, tg, a, runInput(agui.RequestThreadPrefix+id, "answer-"+id, "[]", `[{"interruptId":"`+id+`","status":"resolved","payload":`+payload+`}]`))
	for {
		ev := run.next(t)
		switch ev["type"] {
		case "RUN_ERROR":
			t.Fatalf("the answer to %s was refused: %v", id, ev)
		case "RUN_FINISHED":
			return
		}
	}
}

// TestConsentURLElicitation: a 2025-11-25 client that declares URL-mode
// elicitation is sent to the request's console page while its call waits
// (no consent stream needs to be open); the user decides there, the call
// completes and the client hears that the elicitation is complete. Its
// user declining the page denies the call.
func TestConsentURLElicitation(t *testing.T) {
	tg, _ := startPolicyGateway(t, consentPolicy)
	ctx, cancel := context.WithTimeout(context.Background(), 3*waitFor)
	defer cancel()
	alice := newAgent(t, tg, identity.Claims{Subject: "alice"})

	u := connectURLClient(t, alice, tg.MCP, legacy, "accept", nil)
	done := make(chan *mcp.CallToolResult, 1)
	go func() {
		res, err := u.cs.CallTool(ctx, &mcp.CallToolParams{Name: "fx__echo", Arguments: map[string]any{"text": "by url"}})
		if err != nil {
			res = toolError(err.Error())
		}
		done <- res
	}()
	var asked *mcp.ElicitParams
	select {
	case asked = <-u.askedCh:
	case <-ctx.Done():
		t.Fatal("no elicitation")
	}
	if asked.Mode != "url" || asked.ElicitationID == "" || asked.URL != tg.Base+"/console/#"+asked.ElicitationID || asked.RequestedSchema != nil ||
		!strings.Contains(asked.Message, "alice's approval") {
		t.Fatalf("elicitation %+v", asked)
	}
	answerAs(t, ctx, tg, alice, asked.ElicitationID, true)
	if res := <-done; res.IsError || toolText(res) != "by url" {
		t.Fatalf("approved call: %s", toolText(res))
	}
	eventually(t, "notifications/elicitation/complete", func() bool {
		u.mu.Lock()
		defer u.mu.Unlock()
		return len(u.completed) == 1 && u.completed[0] == asked.ElicitationID
	})

	// Declining the page denies the call: nothing reaches the upstream.
	d := connectURLClient(t, alice, tg.MCP, legacy, "decline", nil)
	res, err := d.cs.CallTool(ctx, &mcp.CallToolParams{Name: "fx__echo", Arguments: map[string]any{"text": "declined"}})
	if err != nil || !res.IsError || !strings.Contains(toolText(res), "denied by the caller's client") {
		t.Fatalf("declined call: %v %s", err, toolText(res))
	}
	found := false
	for _, r := range auditRecords(t, tg, "echo") {
		found = found || r.Method == "consent.decided" && r.Decision == "deny" && strings.Contains(r.Reason, "mcp-url-elicitation")
	}
	if !found {
		t.Error("the decline is not audited as consent.decided")
	}
}

// TestConsentMultiRoundTrip: a 2026-07-28 client gets the multi-round-trip
// form: the call answers at once with input_required (a URL-mode
// elicitation of the request's page, the request as its state) and nothing
// is sent. A retry after a gateway restart finds the stored request, waits
// for its decision and completes; the approval is used once; a retry whose
// user accepted the page is not an approval; a declined retry is denied.
func TestConsentMultiRoundTrip(t *testing.T) {
	tg, _ := startPolicyGateway(t, consentPolicy)
	ctx, cancel := context.WithTimeout(context.Background(), 3*waitFor)
	defer cancel()
	alice := newAgent(t, tg, identity.Claims{Subject: "alice"})
	manual := &mcp.MultiRoundTripOptions{Disabled: true}
	u := connectURLClient(t, alice, tg.MCP, "", "accept", manual)
	args := map[string]any{"text": "later"}
	first, err := u.cs.CallTool(ctx, &mcp.CallToolParams{Name: "fx__echo", Arguments: args})
	if err != nil || !first.NeedsInput() || first.RequestState == "" || len(first.InputRequests) != 1 {
		t.Fatalf("first answer: %v %+v", err, first)
	}
	ep, ok := first.InputRequests[first.RequestState].(*mcp.ElicitParams)
	if !ok || ep.Mode != "url" || ep.URL != tg.Base+"/console/#"+first.RequestState {
		t.Fatalf("input request %+v", first.InputRequests)
	}
	var calls []string
	for _, r := range auditRecords(t, tg, "fx__echo") {
		if r.Method == "tools/call" {
			calls = append(calls, r.Decision+" "+r.ConsentID)
		}
	}
	if len(calls) != 1 || calls[0] != "pending "+first.RequestState {
		t.Errorf("the call's records %v, want one pending on %s", calls, first.RequestState)
	}

	tg = restartGateway(t, tg)
	alice = newAgent(t, tg, identity.Claims{Subject: "alice"})
	retry := func(state string, action string, args map[string]any) <-chan *mcp.CallToolResult {
		out := make(chan *mcp.CallToolResult, 1)
		c := connectURLClient(t, alice, tg.MCP, "", "accept", manual)
		go func() {
			res, err := c.cs.CallTool(ctx, &mcp.CallToolParams{Name: "fx__echo", Arguments: args, RequestState: state,
				InputResponses: mcp.InputResponseMap{state: &mcp.ElicitResult{Action: action, Content: map[string]any{"approved": true}}}})
			if err != nil {
				res = toolError(err.Error())
			}
			out <- res
		}()
		return out
	}
	// The user opened the page (accept, even with content saying
	// approved): that decides nothing, the retry waits.
	waiting := retry(first.RequestState, "accept", args)
	eventually(t, "the retry waiting on the stored request", func() bool {
		rs, _ := tg.GW.PendingConsents(ctx)
		return len(rs) == 1 && rs[0].ID == first.RequestState
	})
	select {
	case res := <-waiting:
		t.Fatalf("the retry returned before a decision: %s", toolText(res))
	default:
	}
	answerAs(t, ctx, tg, alice, first.RequestState, true)
	if res := <-waiting; res.IsError || res.NeedsInput() || toolText(res) != "later" {
		t.Fatalf("retry after the approval: %s", toolText(res))
	}
	// Used once: the same retry again is refused.
	if res := <-retry(first.RequestState, "accept", args); !res.IsError || !strings.Contains(toolText(res), "used") {
		t.Errorf("a second retry: %s", toolText(res))
	}
	// Another agent session of alice's (another sign-in) naming this
	// request makes a new one: a request belongs to its agent session.
	other := newAgent(t, tg, identity.Claims{Subject: "alice", SessionID: "another-sign-in"})
	oc := connectURLClient(t, other, tg.MCP, "", "accept", manual)
	if res, err := oc.cs.CallTool(ctx, &mcp.CallToolParams{Name: "fx__echo", Arguments: args, RequestState: first.RequestState,
		InputResponses: mcp.InputResponseMap{first.RequestState: &mcp.ElicitResult{Action: "accept"}}}); err != nil || !res.NeedsInput() || res.RequestState == first.RequestState {
		t.Errorf("another agent session's retry: %v %+v", err, res)
	}
	// Other arguments make a new request, not a use of this one.
	if res := <-retry(first.RequestState, "accept", map[string]any{"text": "other"}); !res.NeedsInput() || res.RequestState == first.RequestState {
		t.Errorf("a retry with other arguments: %+v", res)
	}
	// A declined page denies (u, a stateless client, connected before the
	// restart, goes on on the same address).
	second, err := u.cs.CallTool(ctx, &mcp.CallToolParams{Name: "fx__echo", Arguments: map[string]any{"text": "no"}})
	if err != nil || !second.NeedsInput() {
		t.Fatalf("second call: %v %+v", err, second)
	}
	if res := <-retry(second.RequestState, "decline", map[string]any{"text": "no"}); !res.IsError || !strings.Contains(toolText(res), "denied by the caller's client") {
		t.Errorf("a declined retry: %s", toolText(res))
	}
}
