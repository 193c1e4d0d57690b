package server_test

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/sag-gateway/sag/fixtures"
	"github.com/sag-gateway/sag/server"
	"github.com/sag-gateway/sag/server/config"
	"github.com/sag-gateway/sag/store"
)

// storedAudit opens a closed gateway's store and returns its audit records.
func storedAudit(t *testing.T, dir string) []store.AuditRecord {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	st, err := store.Open(ctx, dir, store.Options{})
	if err != nil {
		t.Fatalf("reopen store: %v", err)
	}
	defer st.Close()
	recs, err := st.QueryAudit(ctx, store.AuditQuery{Limit: 10000})
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

// TestShutdownDrains stops a gateway while calls of both client
// generations are in flight: they complete, Serve returns cleanly and their
// audit records are in the store.
func TestShutdownDrains(t *testing.T) {
	t.Parallel()
	url, _ := httpFixture(t, "up", false)
	tg := startGateway(t, nil)
	tg.addUpstream(t, server.UpstreamRequest{Name: "up", URL: url, ProtocolVersion: legacy})

	const steps = 10
	var wg sync.WaitGroup
	results := make(chan string, 2)
	var started []*clientEvents
	for _, version := range []string{legacy, modern} {
		ev := newClientEvents()
		started = append(started, ev)
		cs := connect(t, tg.MCP, version, clientOptions(ev, ""))
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), waitFor)
			defer cancel()
			p := &mcp.CallToolParams{Name: "up__slow", Arguments: map[string]any{"steps": steps, "delay_ms": 50}}
			p.SetProgressToken("drain")
			res, err := cs.CallTool(ctx, p)
			switch {
			case err != nil:
				results <- fmt.Sprintf("%s: %v", version, err)
			case res.IsError || toolText(res) != fmt.Sprintf("done after %d steps", steps):
				results <- fmt.Sprintf("%s: %q (isError %v)", version, toolText(res), res.IsError)
			default:
				results <- ""
			}
		})
	}
	for _, ev := range started {
		eventually(t, "the calls to be in flight", func() bool { return len(ev.progressSnapshot()) > 0 })
	}
	tg.cancel() // SIGTERM
	wg.Wait()
	close(results)
	for r := range results {
		if r != "" {
			t.Errorf("call in flight at shutdown: %s", r)
		}
	}
	if err := tg.stop(); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	n := 0
	for _, rec := range storedAudit(t, tg.DataDir) {
		if rec.Tool == "up__slow" && rec.Decision == "allow" {
			n++
		}
	}
	if n != 2 {
		t.Errorf("%d audit records of the drained calls, want 2", n)
	}
}

// TestShutdownGrace stops a gateway while a call that never ends is in
// flight: Serve returns soon after the grace period, the call ends, and its
// record is in the store.
func TestShutdownGrace(t *testing.T) {
	t.Parallel()
	f := fixtures.NewServer(fixtures.Options{Name: "up"})
	started, _ := blockTool(f)
	url, stop, err := f.StartHTTP(false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	cfg := config.Default()
	cfg.Auth = config.AuthOpen
	cfg.DataDir = t.TempDir()
	cfg.AdminToken = adminToken
	const grace = time.Second
	tg := startGatewayGrace(t, cfg, grace)
	tg.addUpstream(t, server.UpstreamRequest{Name: "up", URL: url, ProtocolVersion: legacy})

	var wg sync.WaitGroup
	for _, version := range []string{legacy, modern} {
		cs := connect(t, tg.MCP, version, nil)
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			_, _ = cs.CallTool(ctx, &mcp.CallToolParams{Name: "up__block", Arguments: map[string]any{}})
		})
		select {
		case <-started:
		case <-time.After(waitFor):
			t.Fatal("the upstream never started the call")
		}
	}
	begin := time.Now()
	tg.cancel()
	if err := tg.stop(); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if took := time.Since(begin); took > grace+4*time.Second {
		t.Errorf("Serve returned %s after cancellation with a grace of %s", took, grace)
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(waitFor):
		t.Fatal("calls still running after the gateway stopped")
	}
	n := 0
	for _, rec := range storedAudit(t, tg.DataDir) {
		if rec.Tool == "up__block" {
			n++
			if rec.Decision != "error" || rec.Reason != "gateway shutting down" {
				t.Errorf("record of a call cut at shutdown: decision %q reason %q", rec.Decision, rec.Reason)
			}
		}
	}
	if n != 2 {
		t.Errorf("%d audit records of the calls cut at shutdown, want 2", n)
	}
}

// TestSessionSurvivesRestart: a 2025 client's MCP session goes on after its
// gateway restarts on the same data directory (a rolling restart): the
// new process finds the session in the store.
func TestSessionSurvivesRestart(t *testing.T) {
	t.Parallel()
	url, _ := httpFixture(t, "up", false)
	dir := t.TempDir()
	first := startGateway(t, func(c *config.Config) { c.DataDir = dir })
	first.addUpstream(t, server.UpstreamRequest{Name: "up", URL: url, ProtocolVersion: legacy})
	var addr atomic.Pointer[string]
	addr.Store(&first.Cfg.Listen)
	hc := &http.Client{Transport: roundTripper(func(req *http.Request) (*http.Response, error) {
		req = req.Clone(req.Context())
		req.URL.Host, req.Host = *addr.Load(), ""
		return http.DefaultTransport.RoundTrip(req)
	})}
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	c := mcp.NewClient(&mcp.Implementation{Name: "restart", Version: "1"}, nil)
	cs, err := c.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: "http://sag.test/mcp", HTTPClient: hc}, &mcp.ClientSessionOptions{ProtocolVersion: legacy})
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	if res := callTool(t, cs, "up__echo", map[string]any{"text": "before"}); toolText(res) != "before" {
		t.Fatalf("echo before the restart = %q", toolText(res))
	}
	if err := first.stop(); err != nil {
		t.Fatal(err)
	}
	second := startGateway(t, func(c *config.Config) { c.DataDir = dir })
	addr.Store(&second.Cfg.Listen)
	if res := callTool(t, cs, "up__echo", map[string]any{"text": "after"}); toolText(res) != "after" {
		t.Errorf("echo after the restart = %q", toolText(res))
	}
	recs := auditRecords(t, second, "up__echo")
	if len(recs) != 2 || recs[0].MSID != cs.ID() || recs[1].MSID != cs.ID() {
		t.Errorf("audit: %+v, want both calls in MCP session %s", recs, cs.ID())
	}
	// A session its client ended (DELETE) is not continued.
	if err := cs.Close(); err != nil {
		t.Fatal(err)
	}
	h := http.Header{"Mcp-Session-Id": {cs.ID()}, "Mcp-Protocol-Version": {legacy}}
	if resp := rawPost(t, second.MCP, `{"jsonrpc":"2.0","id":2,"method":"tools/list"}`, h); resp.Status != http.StatusNotFound {
		t.Errorf("the ended session: %d %s, want 404", resp.Status, resp.Body)
	}
}
