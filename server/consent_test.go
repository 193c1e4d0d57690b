package server_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/sag-gateway/sag/consent"
	"github.com/sag-gateway/sag/identity"
	"github.com/sag-gateway/sag/server"
)

// consentPolicy makes every echo of alice's need her consent, with edits
// allowed.
const consentPolicy = `id: consent
rules:
  - {id: echo-with-consent, upstream: fx, tools: [echo], principals: {users: [alice]}, consent: always, consent_edits: true,
     input_schema: {type: object, properties: {text: {type: string, maxLength: 20}}}}
  - {id: add-without, upstream: fx, tools: [add], principals: {users: [alice]}, consent: never}
`

// waitingCall is an MCP call in flight, and the progress its client heard.
type waitingCall struct {
	res      chan *mcp.CallToolResult
	err      chan error
	mu       sync.Mutex
	progress []string
}

func (w *waitingCall) heard() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.progress...)
}

// startCall connects alice and calls fx__echo with a progress token.
func startCall(t *testing.T, ctx context.Context, tg *testGateway, a *agent, text string) *waitingCall {
	t.Helper()
	w := &waitingCall{res: make(chan *mcp.CallToolResult, 1), err: make(chan error, 1)}
	c := mcp.NewClient(&mcp.Implementation{Name: "waiting", Version: "1"}, &mcp.ClientOptions{
		ProgressNotificationHandler: func(_ context.Context, req *mcp.ProgressNotificationClientRequest) {
			w.mu.Lock()
			w.progress = append(w.progress, req.Params.Message)
			w.mu.Unlock()
		},
	})
	cs, err := c.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: tg.MCP, HTTPClient: a.client()}, &mcp.ClientSessionOptions{ProtocolVersion: legacy})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cs.Close() })
	go func() {
		res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "fx__echo", Arguments: map[string]any{"text": text}, Meta: mcp.Meta{"progressToken": "p1"}})
		w.res <- res
		w.err <- err
	}()
	return w
}

// pendingFor waits until a consent request for text is pending.
func pendingFor(t *testing.T, ctx context.Context, pending func(context.Context) ([]consent.Request, error), text string) consent.Request {
	t.Helper()
	var found consent.Request
	eventually(t, "a pending consent request for "+text, func() bool {
		rs, err := pending(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rs {
			if strings.Contains(string(r.Args), text) {
				found = r
				return true
			}
		}
		return false
	})
	return found
}

// TestConsentOverMCP: a call that needs consent waits, its client hearing
// why; the user's approval (with edits, checked again), denial, a kill or
// the client's cancellation ends the wait; an agent cannot decide.
func TestConsentOverMCP(t *testing.T) {
	tg, _ := startPolicyGateway(t, consentPolicy)
	user := identity.Principal{Issuer: tg.Base, User: "alice"}
	pending, decide := server.ConsentChannel(t, tg.GW, user)
	ctx, cancel := context.WithTimeout(context.Background(), 3*waitFor)
	defer cancel()
	alice := newAgent(t, tg, identity.Claims{Subject: "alice"})

	t.Run("approved with edits", func(t *testing.T) {
		w := startCall(t, ctx, tg, alice, "first")
		r := pendingFor(t, ctx, pending, "first")
		if r.User != "alice" || r.Tool != "echo" || r.Upstream != "fx" || r.RuleID != "echo-with-consent" || !r.AllowEdits {
			t.Errorf("request %+v", r)
		}
		// An agent, or the user's token with an actor, cannot decide.
		for _, p := range []identity.Principal{{Issuer: tg.Base, User: "alice", Agent: "spiffe://example.org/agent"},
			{Issuer: tg.Base, User: "alice", Act: &identity.Actor{Sub: "spiffe://example.org/agent"}}, {Issuer: tg.Base, User: "bob"}} {
			if _, err := decide(ctx, r.ID, consent.Decision{Approved: true, By: p}); !errors.Is(err, consent.ErrNotAllowed) {
				t.Errorf("%+v decided: %v", p, err)
			}
		}
		eventually(t, "a progress message saying why the call waits", func() bool {
			for _, m := range w.heard() {
				if strings.Contains(m, "waiting for alice's approval") {
					return true
				}
			}
			return false
		})
		if _, err := decide(ctx, r.ID, consent.Decision{Approved: true, EditedArgs: []byte(`{"text":"edited"}`), By: user, Channel: "test"}); err != nil {
			t.Fatal(err)
		}
		if res := <-w.res; <-w.err != nil || res == nil || toolText(res) != "edited" {
			t.Errorf("after approval with edits: %+v", res)
		}
		if recs := auditMethod(t, tg, "tools/call"); len(recs) == 0 || recs[0]["consent_id"] != r.ID {
			t.Errorf("the call's audit record does not name its consent: %v", recs)
		}
	})

	t.Run("edits that break the schema", func(t *testing.T) {
		w := startCall(t, ctx, tg, alice, "second")
		r := pendingFor(t, ctx, pending, "second")
		if _, err := decide(ctx, r.ID, consent.Decision{Approved: true, EditedArgs: []byte(`{"text":"far more than twenty characters"}`), By: user}); err != nil {
			t.Fatal(err)
		}
		if res := <-w.res; <-w.err != nil || res == nil || !res.IsError || !strings.Contains(toolText(res), "edited arguments: invalid arguments") {
			t.Errorf("after edits breaking the schema: %+v", res)
		}
	})

	t.Run("denied", func(t *testing.T) {
		w := startCall(t, ctx, tg, alice, "third")
		r := pendingFor(t, ctx, pending, "third")
		if _, err := decide(ctx, r.ID, consent.Decision{Approved: false, By: user}); err != nil {
			t.Fatal(err)
		}
		if res := <-w.res; <-w.err != nil || res == nil || !res.IsError || !strings.Contains(toolText(res), "denied by alice") {
			t.Errorf("after denial: %+v", res)
		}
	})

	t.Run("the client cancels", func(t *testing.T) {
		cctx, ccancel := context.WithCancel(ctx)
		w := startCall(t, cctx, tg, alice, "fourth")
		r := pendingFor(t, ctx, pending, "fourth")
		ccancel()
		<-w.err
		eventually(t, "the request to vanish from the pending ones", func() bool {
			got, err := tg.GW.ConsentRequest(ctx, r.ID)
			return err == nil && got.State == consent.Cancelled
		})
	})

	t.Run("a kill cancels", func(t *testing.T) {
		w := startCall(t, ctx, tg, alice, "fifth")
		r := pendingFor(t, ctx, pending, "fifth")
		code, body := tg.adminDo(t, http.MethodPost, "/admin/kill", server.KillRequest{Session: r.ASID})
		var res server.KillResult
		if code != http.StatusOK || json.Unmarshal(body, &res) != nil || res.CancelledConsents != 1 {
			t.Fatalf("kill: %d %s", code, body)
		}
		select {
		case res := <-w.res:
			if err := <-w.err; err == nil && (res == nil || !res.IsError) {
				t.Errorf("the killed call succeeded: %+v", res)
			}
		case <-time.After(waitFor):
			t.Fatal("the killed call still waits")
		}
		if got, err := tg.GW.ConsentRequest(ctx, r.ID); err != nil || got.State != consent.Cancelled {
			t.Errorf("the request after the kill: %s %v", got.State, err)
		}
	})
}
