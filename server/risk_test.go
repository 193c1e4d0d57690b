package server_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/sag-gateway/sag/identity"
	"github.com/sag-gateway/sag/server"
	"github.com/sag-gateway/sag/server/config"
	"github.com/sag-gateway/sag/store"

	"github.com/sag-gateway/sag/internal/testutil"
)

// withHeader sets a header on every request of a client.
type withHeader struct {
	base        http.RoundTripper
	name, value string
}

func (h withHeader) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set(h.name, h.value)
	return h.base.RoundTrip(r)
}

// connectWorkflow opens a session of a whose requests name workflow wf.
func connectWorkflow(t testing.TB, a *agent, url, wf string) *mcp.ClientSession {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	hc := &http.Client{Transport: withHeader{a.client().Transport, server.WorkflowHeader, wf}}
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "wf", Version: "1"}, nil).Connect(ctx,
		&mcp.StreamableClientTransport{Endpoint: url, HTTPClient: hc}, &mcp.ClientSessionOptions{ProtocolVersion: legacy})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cs.Close() })
	return cs
}

// TestRiskBelongsToItsNode: risk earned in a workflow stays with that
// workflow (another workflow of the same agent is untouched), survives a
// restart, and an operator can clear it.
func TestRiskBelongsToItsNode(t *testing.T) {
	tg, _ := startPolicyGateway(t, policyDoc, func(c *config.Config) {
		c.Policy.Risk = config.Risk{Block: 2, Weights: map[string]float64{"validation_failures": 1}, HalfLife: config.Duration(time.Hour)}
	})
	a := newAgent(t, tg, identity.Claims{Subject: "alice"})
	blocked := func(cs *mcp.ClientSession) bool {
		t.Helper()
		res := callTool(t, cs, "fx__echo", map[string]any{"text": "fine"})
		return res.IsError && strings.Contains(callText(res), "session blocked")
	}
	cs := connectWorkflow(t, a, tg.MCP, "wf-1")
	for range 3 { // 3, decaying a little, stays past 2
		if res := callTool(t, cs, "fx__echo", map[string]any{}); !res.IsError {
			t.Fatal("an invalid call succeeded")
		}
	}
	if !blocked(cs) {
		t.Fatal("three validation failures past block 2 did not block the workflow")
	}
	if !blocked(connectWorkflow(t, a, tg.MCP, "wf-1")) {
		t.Error("a new MCP session of the same workflow is not blocked")
	}
	if blocked(connectWorkflow(t, a, tg.MCP, "wf-2")) {
		t.Error("another workflow of the same agent is blocked")
	}
	var wsid string
	for _, rec := range tg.audit(t, cs.ID()) {
		if rec.WSID != "" {
			wsid = rec.WSID
		}
	}
	if wsid == "" {
		t.Fatal("no WSID in the audit records")
	}

	tg = restartGateway(t, tg)
	if !blocked(connectWorkflow(t, a, tg.MCP, "wf-1")) {
		t.Error("after a restart the workflow's risk is forgotten")
	}
	if code, body := tg.adminDo(t, http.MethodDelete, "/admin/sessions/"+wsid+"/risk", nil); code != http.StatusNoContent {
		t.Fatalf("clear risk: %d %s", code, body)
	}
	if blocked(connectWorkflow(t, a, tg.MCP, "wf-1")) {
		t.Error("still blocked after the operator cleared the risk")
	}
	if code, _ := tg.adminDo(t, http.MethodDelete, "/admin/sessions/w_nosuch/risk", nil); code != http.StatusNotFound {
		t.Errorf("clearing an unknown node: %d, want 404", code)
	}
}

// TestOpenModeRiskNotShared: under --auth open every stateless client is
// the same anonymous principal; one client's failures must not lock the
// others out.
func TestOpenModeRiskNotShared(t *testing.T) {
	up, _ := httpFixture(t, "fx", false)
	tg := startGateway(t, func(c *config.Config) {
		c.Upstreams = []config.Upstream{{Name: "fx", URL: up}}
		c.Policy.Risk = config.Risk{Block: 2, Weights: map[string]float64{"validation_failures": 1}}
	})
	bad := connect(t, tg.MCP, modern, nil)
	for range 3 {
		if res := callTool(t, bad, "fx__add", map[string]any{"a": "not a number"}); !res.IsError {
			t.Fatal("an invalid call succeeded")
		}
	}
	other := connect(t, tg.MCP, modern, nil)
	if res := callTool(t, other, "fx__echo", map[string]any{"text": "fine"}); res.IsError {
		t.Errorf("another anonymous client is locked out: %s", callText(res))
	}
}

// TestRiskDecaysOnTheGatewayClock: a blocked workflow is usable again once
// its score has decayed below the limit, on the gateway's (injected) clock.
func TestRiskDecaysOnTheGatewayClock(t *testing.T) {
	up, _ := httpFixture(t, "fx", false)
	clk := testutil.NewClock(time.Now(), 0)
	tg := startGatewayDeps(t, server.Deps{Now: clk.Now}, func(c *config.Config) {
		c.Upstreams = []config.Upstream{{Name: "fx", URL: up}}
		c.Policy.Risk = config.Risk{Block: 2, Weights: map[string]float64{"validation_failures": 1}, HalfLife: config.Duration(time.Hour)}
	})
	cs := connect(t, tg.MCP, legacy, nil)
	for range 3 {
		if res := callTool(t, cs, "fx__add", map[string]any{"a": "x"}); !res.IsError {
			t.Fatal("an invalid call succeeded")
		}
	}
	if res := callTool(t, cs, "fx__echo", map[string]any{"text": "x"}); !strings.Contains(callText(res), "session blocked") {
		t.Fatalf("at score 3: %s", callText(res))
	}
	clk.Add(2 * time.Hour) // 3 → 0.75
	if res := callTool(t, cs, "fx__echo", map[string]any{"text": "x"}); res.IsError {
		t.Errorf("two half-lives later: %s", callText(res))
	}
}

// failingStore is the real store with writes of session nodes failing on
// demand.
type failingStore struct {
	server.Store
	fail atomic.Bool
}

func (s *failingStore) PutSession(ctx context.Context, n store.Session) error {
	if s.fail.Load() {
		return errors.New("disk I/O error")
	}
	return s.Store.PutSession(ctx, n)
}

// TestSessionStoreFailureFailsClosed: a request whose session-graph nodes
// cannot be recorded is refused, with an error that says nothing of the
// cause, and audited.
func TestSessionStoreFailureFailsClosed(t *testing.T) {
	up, _ := httpFixture(t, "fx", false)
	dir := t.TempDir()
	st, err := store.Open(context.Background(), dir, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	fs := &failingStore{Store: st}
	tg := startGatewayDeps(t, server.Deps{Store: fs}, func(c *config.Config) {
		c.DataDir = dir
		c.Upstreams = []config.Upstream{{Name: "fx", URL: up}}
	})
	fs.fail.Store(true)
	cs := connect(t, tg.MCP, modern, nil) // stateless: nothing recorded before the call
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	_, err = cs.CallTool(ctx, &mcp.CallToolParams{Name: "fx__echo", Arguments: map[string]any{"text": "x"}})
	if err == nil || !strings.Contains(err.Error(), "internal error") || strings.Contains(err.Error(), "disk") {
		t.Errorf("with the session store failing: %v, want a bare internal error", err)
	}
	fs.fail.Store(false)
	if res := callTool(t, cs, "fx__echo", map[string]any{"text": "back"}); toolText(res) != "back" {
		t.Errorf("after the store recovered: %q", toolText(res))
	}
}
