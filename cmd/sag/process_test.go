package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/sag-gateway/sag/fixtures"
	"github.com/sag-gateway/sag/store"

	"github.com/sag-gateway/sag/internal/testutil"
)

// sagBinary is this command, built once per test run.
func sagBinary(t *testing.T) string {
	t.Helper()
	return testutil.Build(t, "github.com/sag-gateway/sag/cmd/sag")
}

func TestMain(m *testing.M) {
	code := m.Run()
	testutil.Cleanup()
	os.Exit(code)
}

// gatewayProcess is `sag serve` running as a child process.
type gatewayProcess struct {
	cmd    *exec.Cmd
	base   string
	data   string
	stderr *bytes.Buffer
	exited chan struct{}
	err    error // the exit status, once exited is closed
}

// freeAddr returns a loopback address nothing listens on at the moment.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// startSag runs `sag serve` with a fixture upstream, and the flags in extra,
// and waits until it is ready.
func startSag(t *testing.T, upstreamURL string, extra ...string) *gatewayProcess {
	t.Helper()
	return startSagAt(t, freeAddr(t), t.TempDir(), append([]string{"--auth", "open", "--upstream", "fx=" + upstreamURL}, extra...)...)
}

// startSagAt runs `sag serve` on addr with its data in data and the flags
// in extra, and waits until it is ready.
func startSagAt(t *testing.T, addr, data string, extra ...string) *gatewayProcess {
	t.Helper()
	bin := sagBinary(t)
	p := &gatewayProcess{base: "http://" + addr, data: data, stderr: &bytes.Buffer{}, exited: make(chan struct{})}
	args := append([]string{"serve", "--listen", addr, "--data", p.data, "--log-level", "warn"}, extra...)
	p.cmd = exec.Command(bin, args...)
	p.cmd.Stderr = p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.exited
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get(p.base + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p
			}
		}
		select {
		case <-p.exited:
			t.Fatalf("sag serve exited: %v\n%s", p.err, p.stderr)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("sag serve not ready after 20s\n%s", p.stderr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// storedAudit opens the data directory of a stopped gateway and returns its
// audit records.
func storedAudit(t *testing.T, dir string) []store.AuditRecord {
	t.Helper()
	return allAudit(t, openStored(t, dir, store.Options{}))
}

// openStored opens the store of a stopped gateway (its data directory and
// opts) until the test ends.
func openStored(t *testing.T, dir string, opts store.Options) *store.DB {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	st, err := store.Open(ctx, dir, opts)
	if err != nil {
		t.Fatalf("open the store of the stopped gateway: %v", err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// allAudit returns every audit record in st.
func allAudit(t *testing.T, st *store.DB) []store.AuditRecord {
	t.Helper()
	var out []store.AuditRecord
	var before int64
	for {
		page, err := st.QueryAudit(context.Background(), store.AuditQuery{Limit: 10000, BeforeID: before})
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, page...)
		if len(page) < 10000 {
			return out
		}
		before = page[len(page)-1].ID
	}
}

func startFixture(t *testing.T) string {
	t.Helper()
	url, stop, err := fixtures.NewServer(fixtures.Options{Name: "fx"}).StartHTTP(false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	return url
}

func connectTo(t *testing.T, url, version string) *mcp.ClientSession {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := mcp.NewClient(&mcp.Implementation{Name: "sag-cmd-test", Version: "1"}, &mcp.ClientOptions{})
	cs, err := c.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: url, MaxRetries: -1}, &mcp.ClientSessionOptions{ProtocolVersion: version})
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { cs.Close() })
	return cs
}

// killUnderLoad waits until ready (within at most), kills the gateway with
// SIGKILL, and then stops the load (stop) and waits for it (wg).
func (p *gatewayProcess) killUnderLoad(t *testing.T, within time.Duration, ready func() bool, stop chan struct{}, wg *sync.WaitGroup) {
	t.Helper()
	for deadline := time.Now().Add(within); !ready() && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-p.exited
	close(stop)
	wg.Wait()
}

// echoLoad has cs call fx__echo, each time with another text, until stop
// is closed or a call fails (the gateway is gone), and tells acked each
// text that came back as sent.
func echoLoad(cs *mcp.ClientSession, client int, stop <-chan struct{}, acked func(text string)) {
	for n := 0; ; n++ {
		select {
		case <-stop:
			return
		default:
		}
		text := fmt.Sprintf("client %d call %d", client, n)
		res, err := callOnce(cs, "fx__echo", map[string]any{"text": text})
		if err != nil {
			return
		}
		if tc, ok := res.Content[0].(*mcp.TextContent); ok && !res.IsError && tc.Text == text {
			acked(text)
		}
	}
}

// TestKillKeepsAcknowledgedAudit drives load from four clients, kills the
// gateway with SIGKILL in the middle of it and checks that every call a
// client saw succeed has its audit record in the store: a call is not
// acknowledged before its record is committed.
func TestKillKeepsAcknowledgedAudit(t *testing.T) {
	t.Parallel()
	p := startSag(t, startFixture(t))

	var acked atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := range 4 {
		version := "2025-11-25"
		if i%2 == 1 {
			version = "2026-07-28"
		}
		cs := connectTo(t, p.base+"/mcp", version)
		wg.Go(func() { echoLoad(cs, i, stop, func(string) { acked.Add(1) }) })
	}

	p.killUnderLoad(t, 20*time.Second, func() bool { return acked.Load() >= 300 }, stop, &wg)
	n := acked.Load()
	if n == 0 {
		t.Fatalf("no call succeeded before the kill\n%s", p.stderr)
	}

	stored := 0
	for _, rec := range storedAudit(t, p.data) {
		if rec.Tool == "fx__echo" && rec.Decision == "allow" {
			stored++
		}
	}
	t.Logf("%d calls acknowledged, %d allow records stored", n, stored)
	if int64(stored) < n {
		t.Errorf("%d calls were acknowledged but only %d audit records survived the kill", n, stored)
	}
}

// TestSIGTERMDrains sends SIGTERM while a slow call is in flight: the call
// completes, the process exits cleanly, and the call's record is stored.
func TestSIGTERMDrains(t *testing.T) {
	t.Parallel()
	p := startSag(t, startFixture(t))
	progressed := make(chan struct{}, 100)
	c := mcp.NewClient(&mcp.Implementation{Name: "sag-cmd-test", Version: "1"}, &mcp.ClientOptions{
		ProgressNotificationHandler: func(context.Context, *mcp.ProgressNotificationClientRequest) {
			select {
			case progressed <- struct{}{}:
			default:
			}
		},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cs, err := c.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: p.base + "/mcp"}, &mcp.ClientSessionOptions{ProtocolVersion: "2025-11-25"})
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()

	type result struct {
		res *mcp.CallToolResult
		err error
	}
	done := make(chan result, 1)
	go func() {
		params := &mcp.CallToolParams{Name: "fx__slow", Arguments: map[string]any{"steps": 10, "delay_ms": 100}}
		params.SetProgressToken("term")
		res, err := cs.CallTool(ctx, params)
		done <- result{res, err}
	}()
	select {
	case <-progressed:
	case <-time.After(10 * time.Second):
		t.Fatal("the slow call never reported progress")
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.err != nil {
		t.Fatalf("call in flight at SIGTERM: %v", r.err)
	}
	if tc, ok := r.res.Content[0].(*mcp.TextContent); !ok || tc.Text != "done after 10 steps" {
		t.Errorf("call in flight at SIGTERM = %+v", r.res.Content)
	}
	select {
	case <-p.exited:
	case <-time.After(20 * time.Second):
		t.Fatal("sag serve still running 20s after SIGTERM")
	}
	if p.err != nil {
		t.Errorf("sag serve exit after SIGTERM: %v\n%s", p.err, p.stderr)
	}
	found := false
	for _, rec := range storedAudit(t, p.data) {
		if rec.Tool == "fx__slow" && rec.Decision == "allow" {
			found = true
		}
	}
	if !found {
		t.Error("no audit record of the drained call")
	}
}

// TestSIGKILLTakesStdioChildren kills a gateway with SIGKILL and checks that
// its stdio upstream processes die with it, even one that would outlive its
// stdin closing: the wrapper below serves MCP, then lingers.
func TestSIGKILLTakesStdioChildren(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	fixture := testutil.Build(t, "github.com/sag-gateway/sag/fixtures/cmd/sag-fixture")
	marker := fmt.Sprintf("%d", 800000+time.Now().UnixNano()%99999)
	wrapper := filepath.Join(dir, "linger.sh")
	script := "#!/bin/sh\n" + fixture + " -stdio\nexec sleep " + marker + "\n"
	if err := os.WriteFile(wrapper, []byte(script), 0o700); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { exec.Command("pkill", "-f", "^sleep "+marker+"$").Run() })
	lingering := func() int {
		n := 0
		entries, _ := os.ReadDir("/proc")
		for _, e := range entries {
			if b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline")); err == nil &&
				(bytes.HasPrefix(b, []byte("/bin/sh\x00"+wrapper)) || bytes.Equal(b, []byte("sleep\x00"+marker+"\x00"))) {
				n++
			}
		}
		return n
	}

	p := startSag(t, "stdio:"+wrapper)
	cs := connectTo(t, p.base+"/mcp", "2025-11-25")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "fx__echo", Arguments: map[string]any{"text": "x"}}); err != nil {
		t.Fatal(err)
	}
	if n := lingering(); n != 2 {
		t.Fatalf("%d stdio upstream wrappers, want 2 (control and the session's)", n)
	}
	if err := p.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-p.exited
	deadline := time.Now().Add(10 * time.Second)
	for lingering() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d stdio upstream processes still running 10s after the gateway's SIGKILL", lingering())
		}
		time.Sleep(20 * time.Millisecond)
	}
}
