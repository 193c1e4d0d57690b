package server_test

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/sag-gateway/sag/identity"
	"github.com/sag-gateway/sag/server"
	"github.com/sag-gateway/sag/server/config"
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
func connectWorkflow(t *testing.T, a *agent, url, wf string) *mcp.ClientSession {
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
	file := filepath.Join(t.TempDir(), "allow.yaml")
	if err := os.WriteFile(file, []byte(policyDoc), 0o600); err != nil {
		t.Fatal(err)
	}
	up, _ := httpFixture(t, "fx", false)
	tg := startGateway(t, func(c *config.Config) {
		c.Auth = config.AuthDPoP
		c.Upstreams = []config.Upstream{{Name: "fx", URL: up}}
		c.Policy.Files = []string{file}
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
