package server_test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/sag-gateway/sag/fixtures"
	"github.com/sag-gateway/sag/server"
	"github.com/sag-gateway/sag/server/config"
)

// Goroutine accounting. Tests using it must not call t.Parallel: Go runs
// them before any parallel test resumes, so nothing else starts goroutines.

func allStacks() []string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return strings.Split(string(buf[:n]), "\n\n")
		}
		buf = make([]byte, 2*len(buf))
	}
}

func goroutineID(stack string) string {
	header, _, _ := strings.Cut(stack, "\n")
	if f := strings.Fields(header); len(f) >= 2 {
		return f[1]
	}
	return ""
}

func goroutineIDs() map[string]bool {
	ids := map[string]bool{}
	for _, s := range allStacks() {
		ids[goroutineID(s)] = true
	}
	return ids
}

// newGoroutines returns the stacks of goroutines not in before, except the
// test's own.
func newGoroutines(before map[string]bool) []string {
	var out []string
	for _, s := range allStacks() {
		if before[goroutineID(s)] || strings.Contains(s, "testing.tRunner") || strings.Contains(s, "testing.(*T).Run") {
			continue
		}
		out = append(out, s)
	}
	return out
}

// waitNoLeaks polls until every goroutine started since before has ended,
// and fails with their stacks if some remain after a deadline.
func waitNoLeaks(t *testing.T, before map[string]bool, baseline int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		leaked := newGoroutines(before)
		if len(leaked) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("%d goroutines still running after the gateway closed:\n\n%s", len(leaked), strings.Join(leaked, "\n\n"))
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Goroutines that existed before may end too; none may be added.
	if n := runtime.NumGoroutine(); n > baseline+2 {
		t.Errorf("runtime.NumGoroutine() = %d, baseline %d", n, baseline)
	}
}

// processesRunning lists the pids of processes whose command line contains
// substr.
func processesRunning(t *testing.T, substr string) []string {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatalf("no /proc to look for processes in: %v", err)
	}
	var pids []string
	for _, e := range entries {
		if strings.Trim(e.Name(), "0123456789") != "" {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		if strings.Contains(string(b), substr) {
			// Zombies have an empty cmdline; a match is a live process.
			pids = append(pids, e.Name())
		}
	}
	return pids
}

// privateFixtureBinary copies the stdio fixture to a path only this test
// uses, so that its child processes can be told apart.
func privateFixtureBinary(t *testing.T) string {
	t.Helper()
	src, err := os.ReadFile(fixtureBinary(t))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "sag-fixture-"+strings.ReplaceAll(t.Name(), "/", "-"))
	if err := os.WriteFile(path, src, 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestNoLeaks runs full sessions of both client generations against
// upstreams on every transport, closes everything and checks that no
// goroutine and no stdio child process is left.
func TestNoLeaks(t *testing.T) {
	bin := privateFixtureBinary(t) // builds before the baseline
	http.DefaultClient.CloseIdleConnections()
	runtime.GC()
	before := goroutineIDs()
	baseline := runtime.NumGoroutine()

	var stops []func()
	start := func(stateless bool) string {
		url, stop, err := fixtures.NewServer(fixtures.Options{Name: "f"}).StartHTTP(stateless)
		if err != nil {
			t.Fatal(err)
		}
		stops = append(stops, stop)
		return url
	}
	sessionURL, statelessURL := start(false), start(true)
	sseURL, stop, err := fixtures.NewServer(fixtures.Options{Name: "f"}).StartSSE()
	if err != nil {
		t.Fatal(err)
	}
	stops = append(stops, stop)

	tg := startGateway(t, func(c *config.Config) {
		c.AllowStdioRegistration = true
		c.Upstreams = []config.Upstream{
			{Name: "stateless", URL: statelessURL},
			{Name: "sse", URL: "sse+" + sseURL},
			{Name: "stdio", URL: "stdio:" + bin + " -stdio"},
		}
	})
	tg.addUpstream(t, server.UpstreamRequest{Name: "session", URL: sessionURL, ProtocolVersion: legacy})
	tg.addUpstream(t, server.UpstreamRequest{Name: "stdiosession", URL: "stdio:" + bin + " -stdio", ProtocolVersion: legacy})

	ctx := context.Background()
	for _, version := range []string{legacy, modern} {
		ev := newClientEvents()
		c := mcp.NewClient(&mcp.Implementation{Name: "leak", Version: "1"}, clientOptions(ev, "a"))
		cs, err := c.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: tg.MCP}, &mcp.ClientSessionOptions{ProtocolVersion: version})
		if err != nil {
			t.Fatal(err)
		}
		for _, up := range []string{"stateless", "sse", "stdio", "session", "stdiosession"} {
			callTool(t, cs, up+"__echo", map[string]any{"text": "x"})
			callTool(t, cs, up+"__ask", map[string]any{"question": "q"})
			callTool(t, cs, up+"__sample", map[string]any{"prompt": "p"})
			p := &mcp.CallToolParams{Name: up + "__slow", Arguments: map[string]any{"steps": 2, "delay_ms": 5}}
			p.SetProgressToken("t")
			if _, err := cs.CallTool(ctx, p); err != nil {
				t.Fatal(err)
			}
			// A call cancelled once the upstream works on it (its first
			// progress notification has arrived).
			cctx, cancel := context.WithCancel(ctx)
			done := make(chan struct{})
			token := "cancel-" + version + "-" + up
			go func() {
				defer close(done)
				p := &mcp.CallToolParams{Name: up + "__slow", Arguments: map[string]any{"steps": 1000, "delay_ms": 20}}
				p.SetProgressToken(token)
				_, _ = cs.CallTool(cctx, p)
			}()
			eventually(t, "progress of the call to cancel", func() bool {
				for _, p := range ev.progressSnapshot() {
					if p.ProgressToken == token {
						return true
					}
				}
				return false
			})
			before := countAudit(t, tg, up+"__slow", "cancelled by the client")
			cancel()
			<-done
			// The go-sdk client sends notifications/cancelled in the
			// background; closing the session before it arrives would leave
			// the call running (see TestDeleteDuringCall).
			eventually(t, "the gateway to see the cancellation", func() bool {
				return countAudit(t, tg, up+"__slow", "cancelled by the client") > before
			})
		}
		if err := cs.Close(); err != nil {
			t.Logf("close %s session: %v", version, err)
		}
	}
	if pids := processesRunning(t, bin); len(pids) == 0 {
		t.Error("no stdio upstream process while the gateway runs; the process check would prove nothing")
	}

	if err := tg.stop(); err != nil {
		t.Fatal(err)
	}
	for _, stop := range stops {
		stop()
	}
	http.DefaultClient.CloseIdleConnections()

	eventually(t, "stdio upstream processes to exit", func() bool { return len(processesRunning(t, bin)) == 0 })
	waitNoLeaks(t, before, baseline)
}

// TestSessionRelease checks that a downstream session's upstream sessions
// (and per-session stdio processes) end when the session is deleted, and
// when it expires without a DELETE.
func TestSessionRelease(t *testing.T) {
	t.Parallel()
	bin := privateFixtureBinary(t)
	sessionURL, _ := httpFixture(t, "s", false)
	tg := startGateway(t, func(c *config.Config) {
		c.Limits.SessionIdleTimeout = config.Duration(time.Second)
		c.AllowStdioRegistration = true
	})
	tg.addUpstream(t, server.UpstreamRequest{Name: "http", URL: sessionURL, ProtocolVersion: legacy})
	tg.addUpstream(t, server.UpstreamRequest{Name: "sse", URL: sseFixture(t, "s"), ProtocolVersion: legacy})
	tg.addUpstream(t, server.UpstreamRequest{Name: "stdio", URL: "stdio:" + bin + " -stdio", ProtocolVersion: legacy})
	ups := []string{"http", "sse", "stdio"}
	controlProcs := len(processesRunning(t, bin))
	if controlProcs != 1 {
		t.Fatalf("%d stdio processes before any session, want 1 (the control session)", controlProcs)
	}

	sessions := func() map[string]int {
		out := map[string]int{}
		for _, s := range tg.upstreamStatuses(t) {
			out[s.Name] = s.Sessions
		}
		return out
	}
	use := func(sid string) {
		for _, up := range ups {
			r := rawPost(t, tg.MCP, `{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"`+up+`__echo","arguments":{"text":"x"}}}`, sessionHeader(sid))
			if r.Status != http.StatusOK || r.RPC.Error != nil || !strings.Contains(string(r.RPC.Result), `"x"`) {
				t.Fatalf("%s__echo: %d %s", up, r.Status, r.Body)
			}
		}
		s := sessions()
		for _, up := range ups {
			if s[up] != 1 {
				t.Errorf("upstream %s: %d per-session connections, want 1", up, s[up])
			}
		}
		if n := len(processesRunning(t, bin)); n != controlProcs+1 {
			t.Errorf("%d stdio processes with one session, want %d", n, controlProcs+1)
		}
	}
	released := func(how string) {
		eventually(t, "upstream sessions released after "+how, func() bool {
			for _, n := range sessions() {
				if n != 0 {
					return false
				}
			}
			return true
		})
		eventually(t, "the per-session stdio process to exit after "+how, func() bool {
			return len(processesRunning(t, bin)) == controlProcs
		})
	}

	t.Run("DELETE", func(t *testing.T) {
		sid := legacySession(t, tg.MCP)
		use(sid)
		req, _ := http.NewRequest(http.MethodDelete, tg.MCP, nil)
		for k, v := range sessionHeader(sid) {
			req.Header[k] = v
		}
		if r := rawDo(t, req); r.Status/100 != 2 {
			t.Fatalf("DELETE: %d %s", r.Status, r.Body)
		}
		released("DELETE")
	})

	t.Run("DELETE without notifications/initialized", func(t *testing.T) {
		// The SDK serves a session from initialize on; its release must not
		// depend on the client sending notifications/initialized.
		init := `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"` + legacy + `","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}`
		sid := rawPost(t, tg.MCP, init, nil).Header.Get("Mcp-Session-Id")
		if sid == "" {
			t.Fatal("no session id")
		}
		use(sid)
		req, _ := http.NewRequest(http.MethodDelete, tg.MCP, nil)
		for k, v := range sessionHeader(sid) {
			req.Header[k] = v
		}
		if r := rawDo(t, req); r.Status/100 != 2 {
			t.Fatalf("DELETE: %d %s", r.Status, r.Body)
		}
		released("DELETE of a session never initialized")
	})

	t.Run("client Close", func(t *testing.T) {
		cs := connect(t, tg.MCP, legacy, nil)
		for _, up := range ups {
			callTool(t, cs, up+"__echo", map[string]any{"text": "x"})
		}
		if s := sessions(); s["http"] != 1 || s["sse"] != 1 || s["stdio"] != 1 {
			t.Errorf("sessions %v, want one per upstream", s)
		}
		cs.Close()
		released("the client closed")
	})

	t.Run("idle timeout", func(t *testing.T) {
		sid := legacySession(t, tg.MCP)
		use(sid)
		released("the session idled out") // SessionIdleTimeout is 1s; no DELETE
		if r := rawPost(t, tg.MCP, `{"jsonrpc":"2.0","id":6,"method":"tools/list"}`, sessionHeader(sid)); r.Status != http.StatusNotFound {
			t.Errorf("expired session: %d, want 404", r.Status)
		}
	})

	t.Run("metrics", func(t *testing.T) {
		m := tg.metrics(t)
		for _, up := range ups {
			if v := metricValue(m, `sag_upstream_sessions{upstream="`+up+`"}`); v != "0" {
				t.Errorf("sag_upstream_sessions{upstream=%q} = %q, want 0", up, v)
			}
		}
		if v := metricValue(m, "sag_mcp_sessions"); v != "0" {
			t.Errorf("sag_mcp_sessions = %q, want 0", v)
		}
	})
}

// TestStdioProcessGroup registers a stdio upstream that starts a process of
// its own (as `npx` or a shell wrapper does) and checks that nothing of it
// outlives the gateway.
func TestStdioProcessGroup(t *testing.T) {
	bin := privateFixtureBinary(t)
	marker := fmt.Sprintf("%d", 900000+time.Now().UnixNano()%99999)
	script := filepath.Join(t.TempDir(), "wrapper.sh")
	body := "#!/bin/sh\nsleep " + marker + " &\nexec " + bin + " -stdio\n"
	if err := os.WriteFile(script, []byte(body), 0o700); err != nil {
		t.Fatal(err)
	}
	tg := startGateway(t, func(c *config.Config) {
		c.Upstreams = []config.Upstream{{Name: "wrapped", URL: "stdio:" + script}}
	})
	cs := connect(t, tg.MCP, legacy, nil)
	if res := callTool(t, cs, "wrapped__echo", map[string]any{"text": "x"}); toolText(res) != "x" {
		t.Fatalf("wrapped__echo = %q", toolText(res))
	}
	if n := len(processesRunning(t, marker)); n < 2 {
		t.Fatalf("%d grandchildren running, want one per stdio session (control and this session)", n)
	}
	if err := tg.stop(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the stdio upstreams' own children to be gone", func() bool {
		return len(processesRunning(t, marker)) == 0
	})
}
