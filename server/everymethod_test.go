package server_test

import (
	"bufio"
	"context"
	"database/sql"
	"encoding/json"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	mcpgo "github.com/mark3labs/mcp-go/mcp"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/sag-gateway/sag/fixtures"
	"github.com/sag-gateway/sag/identity"
	"github.com/sag-gateway/sag/pipeline"
	"github.com/sag-gateway/sag/server"
	"github.com/sag-gateway/sag/server/config"

	_ "modernc.org/sqlite"
)

// breakAudit makes the database refuse audit records (a trigger), as a
// full disk or a broken store would.
func breakAudit(t *testing.T, path string) {
	t.Helper()
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(`PRAGMA busy_timeout = 5000; CREATE TRIGGER refuse_audit BEFORE INSERT ON audit BEGIN SELECT RAISE(ABORT, 'audit refused'); END`); err != nil {
		t.Fatal(err)
	}
}

// everyMethodPolicy allows alice one tool, the greet prompt and the readme;
// bob nothing.
const everyMethodPolicy = `id: every
version: "2"
rules:
  - {id: alice-echo, upstream: fx, tools: [echo], principals: {users: [alice]}, consent: never}
  - {id: alice-docs, upstream: fx, prompts: [greet], resources: ["fixture://readme", "fixture://items/{id}"], principals: {users: [alice]}}
`

// method is one MCP method that reaches an upstream, as a client calls it.
type method struct {
	name string // as audited
	call func(ctx context.Context, cs *mcp.ClientSession) error
}

var upstreamMethods = []method{
	{"tools/call", func(ctx context.Context, cs *mcp.ClientSession) error {
		res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "fx__echo", Arguments: map[string]any{"text": "x"}})
		if err == nil && res.IsError {
			return errString(toolText(res))
		}
		return err
	}},
	{"resources/read", func(ctx context.Context, cs *mcp.ClientSession) error {
		_, err := cs.ReadResource(ctx, &mcp.ReadResourceParams{URI: "fixture://readme"})
		return err
	}},
	{"resources/subscribe", func(ctx context.Context, cs *mcp.ClientSession) error {
		return cs.Subscribe(ctx, &mcp.SubscribeParams{URI: "fixture://readme"})
	}},
	{"resources/unsubscribe", func(ctx context.Context, cs *mcp.ClientSession) error {
		return cs.Unsubscribe(ctx, &mcp.UnsubscribeParams{URI: "fixture://readme"})
	}},
	{"prompts/get", func(ctx context.Context, cs *mcp.ClientSession) error {
		_, err := cs.GetPrompt(ctx, &mcp.GetPromptParams{Name: "fx__greet", Arguments: map[string]string{"name": "a"}})
		return err
	}},
	{"completion/complete", func(ctx context.Context, cs *mcp.ClientSession) error {
		_, err := cs.Complete(ctx, &mcp.CompleteParams{Ref: &mcp.CompleteReference{Type: "ref/prompt", Name: "fx__greet"},
			Argument: mcp.CompleteParamsArgument{Name: "name", Value: "a"}})
		return err
	}},
}

type errString string

func (e errString) Error() string { return string(e) }

// restartGateway stops tg and starts a gateway on the same data directory,
// address and config: what survives is what the store kept.
func restartGateway(t *testing.T, tg *testGateway) *testGateway {
	t.Helper()
	if err := tg.stop(); err != nil {
		t.Fatal(err)
	}
	cfg := *tg.Cfg
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		t.Fatal(err)
	}
	return launch(t, &cfg, server.Deps{}, ln, 5*time.Second)
}

// TestEveryMethodRunsThePipeline: every method that reaches an upstream is
// refused without a rule, allowed with one and audited with the deciding
// rule; lists show each principal what it may use; a killed user is
// refused on every method, before and after a restart, whatever the sid of
// the token, while a token issued after the kill works.
func TestEveryMethodRunsThePipeline(t *testing.T) {
	tg, _ := startPolicyGateway(t, everyMethodPolicy)
	ctx, cancel := context.WithTimeout(context.Background(), 2*waitFor)
	defer cancel()

	alice := newAgent(t, tg, identity.Claims{Subject: "alice", SessionID: "s1"})
	bob := newAgent(t, tg, identity.Claims{Subject: "bob"})
	// resources/subscribe is a request of the session-based revisions;
	// 2026-07-28 clients subscribe with subscriptions/listen.
	csA, csB := alice.connectVersion(t, tg.MCP, legacy), bob.connectVersion(t, tg.MCP, legacy)
	for _, m := range upstreamMethods {
		if err := m.call(ctx, csA); err != nil {
			t.Errorf("alice %s: %v", m.name, err)
		}
		err := m.call(ctx, csB)
		if err == nil || !strings.Contains(err.Error(), "no such") && !strings.Contains(err.Error(), "not found") {
			t.Errorf("bob %s: %v, want refused as unknown", m.name, err)
		}
	}
	// Every call is audited, with the deciding rule for alice.
	for _, who := range []struct {
		sub, decision, rule, policy string
	}{{"alice", pipeline.DecisionAllow, "alice-", "every@2"}, {"bob", pipeline.DecisionDeny, "", "default-deny"}} {
		for _, m := range upstreamMethods {
			found := false
			for _, rec := range auditMethod(t, tg, m.name) {
				if rec["sub"] == who.sub && rec["decision"] == who.decision && rec["policy_id"] == who.policy &&
					strings.HasPrefix(str(rec["allow_list_match"]), who.rule) && rec["usid"] != nil && rec["asid"] != nil && rec["msid"] != nil &&
					rec["dpop_jti"] != nil {
					found = true
				}
			}
			if !found {
				t.Errorf("no %s audit record of %s for %s", who.decision, m.name, who.sub)
			}
		}
	}
	// 2026-07-28 clients subscribe through subscriptions/listen, which
	// runs the same pipeline.
	subscribes := func(sub, decision string) int {
		n := 0
		for _, rec := range auditMethod(t, tg, "resources/subscribe") {
			if rec["sub"] == sub && rec["decision"] == decision {
				n++
			}
		}
		return n
	}
	allowedBefore, deniedBefore := subscribes("alice", pipeline.DecisionAllow), subscribes("bob", pipeline.DecisionDeny)
	for _, a := range []*agent{alice, bob} {
		if err := a.connectVersion(t, tg.MCP, modern).Subscribe(ctx, &mcp.SubscribeParams{URI: "fixture://readme"}); err != nil {
			t.Errorf("2026-07-28 subscribe: %v", err)
		}
	}
	eventually(t, "the 2026-07-28 subscriptions to be decided and audited", func() bool {
		return subscribes("alice", pipeline.DecisionAllow) > allowedBefore && subscribes("bob", pipeline.DecisionDeny) > deniedBefore
	})

	// Lists.
	lists := func(cs *mcp.ClientSession) (tools, prompts, resources, templates int) {
		tr, err := cs.ListTools(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		pr, err := cs.ListPrompts(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		rr, err := cs.ListResources(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		rt, err := cs.ListResourceTemplates(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		return len(tr.Tools), len(pr.Prompts), len(rr.Resources), len(rt.ResourceTemplates)
	}
	if a, b, c, d := lists(csA); a != 1 || b != 1 || c != 1 || d != 1 {
		t.Errorf("alice sees %d tools, %d prompts, %d resources, %d templates; want 1 of each", a, b, c, d)
	}
	if a, b, c, d := lists(csB); a+b+c+d != 0 {
		t.Errorf("bob sees %d tools, %d prompts, %d resources, %d templates; want nothing", a, b, c, d)
	}
	// Each list is audited once, saying how much of it the caller saw.
	for _, m := range []string{"tools/list", "prompts/list", "resources/list", "resources/templates/list"} {
		var got []string
		alice, bob := false, false
		for _, rec := range auditMethod(t, tg, m) {
			line := str(rec["sub"]) + " " + str(rec["reason"])
			got = append(got, line)
			if rec["usid"] == nil || rec["msid"] == nil || rec["decision"] != pipeline.DecisionAllow {
				continue
			}
			alice = alice || strings.HasPrefix(line, "alice 1 of ")
			bob = bob || strings.HasPrefix(line, "bob 0 of ")
		}
		if !alice || !bob {
			t.Errorf("%s audit records: %q, want alice shown 1, bob 0", m, got)
		}
	}

	// Tokens of alice minted before the kill: another sid, no sid.
	otherSID := newAgent(t, tg, identity.Claims{Subject: "alice", SessionID: "s2"})
	noSID := newAgent(t, tg, identity.Claims{Subject: "alice"})
	time.Sleep(1100 * time.Millisecond) // iat has a resolution of seconds
	if code, body := tg.adminDo(t, http.MethodPost, "/admin/kill", server.KillRequest{User: "alice"}); code != http.StatusOK || !strings.Contains(string(body), tg.Base) {
		t.Fatalf("kill: %d %s", code, body)
	}
	refused := func(tg *testGateway, when string) {
		t.Helper()
		for name, a := range map[string]*agent{"the killed session's token": alice, "another sid": otherSID, "no sid": noSID} {
			c := mcp.NewClient(&mcp.Implementation{Name: "again", Version: "1"}, nil)
			cs, err := c.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: tg.MCP, HTTPClient: a.client()}, &mcp.ClientSessionOptions{ProtocolVersion: legacy})
			if err == nil {
				for _, m := range upstreamMethods {
					if m.call(ctx, cs) == nil {
						t.Errorf("%s: %s of alice (%s) succeeded", when, m.name, name)
					}
				}
				cs.Close()
			}
		}
	}
	refused(tg, "after the kill")
	tg = restartGateway(t, tg)
	refused(tg, "after a restart")

	// A token issued after the kill (a fresh sign-in) works on every method.
	time.Sleep(1100 * time.Millisecond)
	fresh := newAgent(t, tg, identity.Claims{Subject: "alice"})
	cs := fresh.connectVersion(t, tg.MCP, legacy)
	for _, m := range upstreamMethods {
		if err := m.call(ctx, cs); err != nil {
			t.Errorf("fresh token, %s: %v", m.name, err)
		}
	}
	if !introspect(t, tg, fresh.token) || introspect(t, tg, noSID.token) || introspect(t, tg, alice.token) {
		t.Error("introspection: want the fresh token active and the killed ones inactive")
	}
}

func str(v any) string {
	s, _ := v.(string)
	return s
}

// TestAuditFailsClosed: when the store refuses audit writes, calls are
// refused, and after the first refusal none reaches the upstream until a
// record is written again.
func TestAuditFailsClosed(t *testing.T) {
	f := fixtures.NewServer(fixtures.Options{Name: "fx"})
	var reached atomic.Int64
	f.MCPServer().AddTool(mcpgo.NewToolWithRawSchema("count", "Counts its calls.", json.RawMessage(`{"type":"object"}`)),
		func(context.Context, mcpgo.CallToolRequest) (*mcpgo.CallToolResult, error) {
			return mcpgo.NewToolResultText(strconv.FormatInt(reached.Add(1), 10)), nil
		})
	up, stop, err := f.StartHTTP(false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	tg := startGateway(t, func(c *config.Config) { c.Upstreams = []config.Upstream{{Name: "fx", URL: up}} })
	cs := connect(t, tg.MCP, legacy, nil)
	if res := callTool(t, cs, "fx__count", map[string]any{}); toolText(res) != "1" {
		t.Fatalf("before: %q", toolText(res))
	}
	breakAudit(t, filepath.Join(tg.DataDir, "sag.db"))
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	// Records are journaled, then moved into the broken table in the
	// background: calls go on until the store's failure is known (their
	// records are kept in the journal), then every call is refused.
	refused := func() bool {
		_, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "fx__count", Arguments: map[string]any{}})
		return err != nil && strings.Contains(err.Error(), "audit unavailable")
	}
	eventually(t, "a call refused with the audit store failing", refused)
	seen := reached.Load()
	for i := range 3 {
		if !refused() {
			t.Errorf("call %d with the audit store failing: not refused", i)
		}
	}
	if n := reached.Load(); n != seen {
		t.Errorf("the upstream saw %d calls after the first refused one, want none", n-seen)
	}
}

// countingWorkflow names a new workflow on every request.
type countingWorkflow struct {
	base http.RoundTripper
	n    atomic.Int64
}

func (c *countingWorkflow) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set(server.WorkflowHeader, "wf-"+strconv.FormatInt(c.n.Add(1), 10))
	return c.base.RoundTrip(r)
}

// TestKillSurvivesCacheFlood is the cache-wipe attack: after a kill,
// another principal floods the node cache far past its bound with new
// workflows; the killed user stays refused on every method. The same
// flood past limits.max_workflows is refused with a clear error.
func TestKillSurvivesCacheFlood(t *testing.T) {
	defer server.SetMaxKnownSessions(8)()
	up, _ := httpFixture(t, "fx", false)
	tg := startGateway(t, func(c *config.Config) {
		c.Auth = config.AuthDPoP
		c.Upstreams = []config.Upstream{{Name: "fx", URL: up}}
		c.Limits.MaxWorkflows = 40
		allowAll(t, c)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*waitFor)
	defer cancel()
	alice := newAgent(t, tg, identity.Claims{Subject: "alice", SessionID: "s1"})
	csA := alice.connectVersion(t, tg.MCP, legacy)
	for _, m := range upstreamMethods {
		if err := m.call(ctx, csA); err != nil {
			t.Fatalf("alice %s before the kill: %v", m.name, err)
		}
	}
	var usid string
	for _, rec := range tg.audit(t, csA.ID()) {
		usid = rec.USID
	}
	if code, body := tg.adminDo(t, http.MethodPost, "/admin/kill", server.KillRequest{Session: usid}); code != http.StatusOK {
		t.Fatalf("kill of alice's user session: %d %s", code, body)
	}

	mallory := newAgent(t, tg, identity.Claims{Subject: "mallory"})
	flood := &http.Client{Transport: &countingWorkflow{base: mallory.client().Transport}}
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "flood", Version: "1"}, nil).Connect(ctx,
		&mcp.StreamableClientTransport{Endpoint: tg.MCP, HTTPClient: flood}, &mcp.ClientSessionOptions{ProtocolVersion: legacy})
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	var refusal error
	for range 50 {
		if _, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "fx__echo", Arguments: map[string]any{"text": "x"}}); err != nil {
			refusal = err
			break
		}
	}
	if refusal == nil || !strings.Contains(refusal.Error(), "too many open workflows") {
		t.Errorf("50 new workflows past max_workflows 40: %v, want refused", refusal)
	}
	// Revocations are not cached: the flood evicted nothing that matters.
	// A new MCP session of the killed user session is refused, or, if one
	// opened, every method on it is.
	c := mcp.NewClient(&mcp.Implementation{Name: "again", Version: "1"}, nil)
	again, err := c.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: tg.MCP, HTTPClient: alice.client()}, &mcp.ClientSessionOptions{ProtocolVersion: legacy})
	if err == nil {
		defer again.Close()
		for _, m := range upstreamMethods {
			if m.call(ctx, again) == nil {
				t.Errorf("%s of the killed user session succeeded after the flood", m.name)
			}
		}
	}
}

// TestKillEndsListenStreams: a 2026-07-28 notification stream
// (subscriptions/listen) asks the sessions component when it opens, and a
// kill of its user ends it.
func TestKillEndsListenStreams(t *testing.T) {
	tg, _ := startPolicyGateway(t, everyMethodPolicy)
	alice := newAgent(t, tg, identity.Claims{Subject: "alice"})
	ctx, cancel := context.WithTimeout(context.Background(), 2*waitFor)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, tg.MCP,
		strings.NewReader(modernBody("subscriptions/listen", `"notifications":{"toolsListChanged":true}`)))
	if err != nil {
		t.Fatal(err)
	}
	req.Header = modernHeader("subscriptions/listen", "")
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	resp, err := alice.client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("listen: %d", resp.StatusCode)
	}
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	for acked := false; !acked; {
		l, open := <-lines
		if !open {
			t.Fatal("the stream ended before it was acknowledged")
		}
		acked = strings.Contains(l, "subscriptions/acknowledged")
	}
	if code, body := tg.adminDo(t, http.MethodPost, "/admin/kill", server.KillRequest{User: "alice"}); code != http.StatusOK {
		t.Fatalf("kill: %d %s", code, body)
	}
	deadline := time.After(3 * time.Second)
	for {
		select {
		case _, open := <-lines:
			if !open {
				return // the stream ended
			}
			continue
		case <-deadline:
		}
		break
	}
	resp.Body.Close() // ends the reader
	t.Fatal("the killed user's notification stream is still open 3 s after the kill")
}
