package server_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/sag-gateway/sag/agui"
	"github.com/sag-gateway/sag/identity"
	"github.com/sag-gateway/sag/server"
	"github.com/sag-gateway/sag/server/config"
)

// TestConsoleFiles: the console's page and scripts come from the binary
// with a strict Content-Security-Policy that forbids framing, and
// /console/config tells the page how to sign in.
func TestConsoleFiles(t *testing.T) {
	tg, _ := startPolicyGateway(t, consentPolicy)
	for path, ctype := range map[string]string{"/console/": "text/html", "/console/app.js": "javascript", "/console/style.css": "text/css"} {
		resp, err := http.Get(tg.Base + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		h := resp.Header
		if resp.StatusCode != http.StatusOK || !strings.Contains(h.Get("Content-Type"), ctype) || len(body) == 0 {
			t.Errorf("GET %s: %d %s, %d bytes", path, resp.StatusCode, h.Get("Content-Type"), len(body))
		}
		if h.Get("Content-Security-Policy") != agui.ConsoleCSP || !strings.Contains(agui.ConsoleCSP, "frame-ancestors 'none'") ||
			!strings.Contains(agui.ConsoleCSP, "script-src 'self'") || h.Get("X-Frame-Options") != "DENY" || h.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("GET %s: security headers %v", path, h)
		}
	}
	// Nothing inline: the policy would block it, so the page must not need it.
	resp, err := http.Get(tg.Base + "/console/")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if strings.Contains(string(page), "<script>") || strings.Contains(string(page), "style=") || strings.Contains(string(page), " on") && strings.Contains(string(page), "onclick") {
		t.Error("the page has inline script or style")
	}

	var cfg server.ConsoleConfig
	getJSON(t, tg.Base+"/console/config", &cfg)
	if cfg.Auth != config.AuthDPoP || cfg.DevLogin || cfg.PublicURL != tg.Base || cfg.AllThreads != agui.AllThreads || cfg.RequestThreadPrefix != agui.RequestThreadPrefix {
		t.Errorf("config %+v", cfg)
	}
	// Without console.dev_login there is no development sign-in.
	key, _ := identity.NewDPoPKey()
	if code, _ := devLogin(t, tg, key, `{"user":"alice"}`); code != http.StatusMethodNotAllowed && code != http.StatusNotFound {
		t.Errorf("dev login while off: %d", code)
	}
}

func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
}

// devLogin posts body to /console/login with a proof of key (nil: none).
func devLogin(t *testing.T, tg *testGateway, key *identity.DPoPKey, body string) (int, map[string]any) {
	t.Helper()
	return postProved(t, tg, "/console/login", "application/json", body, key)
}

func devLoginOn(c *config.Config) { c.Console.DevLogin = true }

// TestDevLogin: the development sign-in needs a valid DPoP proof and a
// plain user name, and answers with a token bound to the proof's key that
// works (with proofs of that key) like any other, and only with them.
func TestDevLogin(t *testing.T) {
	tg, _ := startPolicyGateway(t, consentPolicy, devLoginOn)
	var cfg server.ConsoleConfig
	getJSON(t, tg.Base+"/console/config", &cfg)
	if !cfg.DevLogin {
		t.Fatalf("config %+v: dev login off", cfg)
	}
	key, _ := identity.NewDPoPKey()
	if code, out := devLogin(t, tg, nil, `{"user":"alice"}`); code != http.StatusUnauthorized || out["error"] != "invalid_dpop_proof" {
		t.Errorf("without a proof: %d %v", code, out)
	}
	for _, body := range []string{`{"user":""}`, `{"user":"a b"}`, `{"user":"` + strings.Repeat("a", 65) + `"}`, `{"user":"alice","admin":true}`, `not json`} {
		if code, out := devLogin(t, tg, key, body); code != http.StatusBadRequest || out["error"] != "invalid_request" {
			t.Errorf("%s: %d %v", body, code, out)
		}
	}
	code, out := devLogin(t, tg, key, `{"user":"alice"}`)
	tok, _ := out["access_token"].(string)
	if code != http.StatusOK || out["token_type"] != "DPoP" || tok == "" {
		t.Fatalf("sign-in: %d %v", code, out)
	}
	alice := &agent{key: key, token: tok}
	if status, body := consoleGet(t, tg, alice, "/console/api/graph"); status != http.StatusOK || !strings.Contains(body, `"user": "alice"`) {
		t.Errorf("graph with the signed-in token: %d %s", status, body)
	}
	// The token is bound to the sign-in's key: another key's proofs fail.
	other, _ := identity.NewDPoPKey()
	if status, _ := consoleGet(t, tg, &agent{key: other, token: tok}, "/console/api/graph"); status != http.StatusUnauthorized {
		t.Errorf("the token with another key: %d", status)
	}
}

func TestDevLoginNeedsLoopback(t *testing.T) {
	cfg := config.Default()
	cfg.Console.DevLogin = true
	cfg.Listen = "0.0.0.0:8080"
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "console.dev_login") {
		t.Errorf("dev login on a public address: %v", err)
	}
	cfg.Listen, cfg.Auth = "127.0.0.1:8080", config.AuthOpen
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "console.dev_login") {
		t.Errorf("dev login under auth open: %v", err)
	}
}

// consoleGet makes an authenticated GET and returns the status and body.
func consoleGet(t *testing.T, tg *testGateway, a *agent, path string) (int, string) {
	t.Helper()
	return consoleDo(t, tg, a, http.MethodGet, path, "")
}

func consoleDo(t *testing.T, tg *testGateway, a *agent, method, path, body string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, tg.Base+path, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := a.client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestConsoleGraphAndKill: a user sees their own session graph and kills a
// node of it (the agent's session: its calls are refused from then on);
// another user's nodes are neither shown nor killable, and an agent's token
// cannot use the console.
func TestConsoleGraphAndKill(t *testing.T) {
	tg, _ := startPolicyGateway(t, consentPolicy)
	alice := newAgent(t, tg, identity.Claims{Subject: "alice"})
	bob := newAgent(t, tg, identity.Claims{Subject: "bob"})
	cs := connectWorkflow(t, alice, tg.MCP, "wf-graph")
	if res := callTool(t, cs, "fx__add", map[string]any{"a": 1, "b": 2}); res.IsError {
		t.Fatalf("add: %s", toolText(res))
	}
	var g server.ConsoleGraph
	status, body := consoleGet(t, tg, alice, "/console/api/graph")
	if status != http.StatusOK || json.Unmarshal([]byte(body), &g) != nil {
		t.Fatalf("graph: %d %s", status, body)
	}
	kinds := map[string]string{}
	for _, n := range g.Nodes {
		kinds[string(n.Kind)] = n.ID
		if n.Subject != "alice" || n.Issuer != tg.Base {
			t.Errorf("node %+v is not alice's", n)
		}
	}
	if kinds["user"] == "" || kinds["workflow"] == "" || kinds["agent"] == "" {
		t.Fatalf("alice's graph %+v", g.Nodes)
	}
	if status, body := consoleGet(t, tg, bob, "/console/api/graph"); status != http.StatusOK || strings.Contains(body, kinds["agent"]) {
		t.Errorf("bob's graph shows alice's: %d %s", status, body)
	}
	kill := `{"session":"` + kinds["agent"] + `"}`
	if status, body := consoleDo(t, tg, bob, http.MethodPost, "/console/api/kill", kill); status != http.StatusNotFound {
		t.Errorf("bob kills alice's agent session: %d %s", status, body)
	}
	if status, _ := consoleDo(t, tg, alice, http.MethodPost, "/console/api/kill", `{"session":""}`); status != http.StatusBadRequest {
		t.Errorf("an empty kill: %d", status)
	}
	status, body = consoleDo(t, tg, alice, http.MethodPost, "/console/api/kill", kill)
	var res server.KillResult
	if status != http.StatusOK || json.Unmarshal([]byte(body), &res) != nil || !slices.Contains(res.Revoked, kinds["agent"]) {
		t.Fatalf("alice kills her agent session: %d %s", status, body)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	if res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "fx__add", Arguments: map[string]any{"a": 1, "b": 2}}); err == nil && !res.IsError {
		t.Errorf("a call after the kill succeeded: %s", toolText(res))
	}
	recs := auditRecords(t, tg, "")
	found := false
	for _, r := range recs {
		found = found || r.Method == "console/kill" && r.Sub == "alice" && r.MSID == kinds["agent"]
	}
	if !found {
		t.Error("the console kill is not audited")
	}
}

// TestConsoleRefusesAgents: an agent authenticated with its SVID, acting
// for alice, cannot use alice's console (its graph, its kills).
func TestConsoleRefusesAgents(t *testing.T) {
	ca := newTestCA(t)
	tg := startSPIFFEGateway(t, ca)
	agentID := "spiffe://" + trustDomain + "/agent/worker"
	cert, _, _ := ca.svid(t, agentID)
	for name, a := range map[string]*agent{
		"acting for alice":   newAgent(t, tg, identity.Claims{Subject: "alice", Act: &identity.Actor{Sub: agentID}}),
		"with its own token": newAgent(t, tg, identity.Claims{Subject: "alice"}),
	} {
		hc := spiffeClient(t, ca, &cert, a, nil)
		for _, r := range []struct{ method, path, body string }{{http.MethodGet, "/console/api/graph", ""}, {http.MethodPost, "/console/api/kill", `{"session":"x"}`}} {
			req, _ := http.NewRequest(r.method, tg.Base+r.path, strings.NewReader(r.body))
			resp, err := hc.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusForbidden {
				t.Errorf("agent %s: %s %s: %d, want 403", name, r.method, r.path, resp.StatusCode)
			}
		}
	}
}

// TestAGUICapabilities: the consent stream declares AG-UI capabilities:
// SSE and WebSocket, state snapshots and deltas, approvals and edits.
func TestAGUICapabilities(t *testing.T) {
	tg, _ := startPolicyGateway(t, consentPolicy)
	var caps struct {
		Identity  struct{ Name, Version string }
		Transport struct {
			Streaming, WebSocket bool
		}
		State          struct{ Snapshots, Deltas bool }
		HumanInTheLoop struct{ Supported, Approvals, Interrupts, ApproveWithEdits bool }
	}
	getJSON(t, tg.Base+agui.CapabilitiesPath, &caps)
	if caps.Identity.Name == "" || caps.Identity.Version != "test" || !caps.Transport.Streaming || !caps.Transport.WebSocket ||
		!caps.State.Snapshots || !caps.State.Deltas || !caps.HumanInTheLoop.Supported || !caps.HumanInTheLoop.Approvals || !caps.HumanInTheLoop.Interrupts || !caps.HumanInTheLoop.ApproveWithEdits {
		t.Errorf("capabilities %+v", caps)
	}
}
