package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/sag-gateway/sag/identity"
	"github.com/sag-gateway/sag/internal/pgtest"
	"github.com/sag-gateway/sag/store"
)

// TestCrashUnderLoad kills a gateway with SIGKILL while DPoP clients of both
// protocol generations call through it and calls that need consent are
// answered with their pending requests, then restarts it on the same data:
// every call a client saw answered has its audit record, every pending
// request is still pending (after the restarted gateway's own graceful
// stop, too), and a proof accepted before the crash is not accepted again.
// On SQLite (one gateway) and on PostgreSQL.
func TestCrashUnderLoad(t *testing.T) {
	t.Run("sqlite", func(t *testing.T) {
		t.Parallel()
		crashUnderLoad(t, "")
	})
	t.Run("postgres", func(t *testing.T) {
		t.Parallel()
		pg, err := pgtest.Start()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(pg.Stop)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		db, err := pg.NewDatabase(ctx)
		if err != nil {
			t.Fatal(err)
		}
		crashUnderLoad(t, db)
	})
}

func crashUnderLoad(t *testing.T, db string) {
	up := startFixture(t)
	dir := t.TempDir()
	policy := filepath.Join(dir, "policy.yaml")
	conf := filepath.Join(dir, "sag.yaml")
	if err := os.WriteFile(policy, []byte("id: crash\nrules:\n"+
		"  - {id: echo, upstream: fx, tools: [echo], consent: never}\n"+
		"  - {id: add, upstream: fx, tools: [add], consent: always}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(conf, []byte(fmt.Sprintf("store: %q\npolicy:\n  files: [%q]\n", db, policy)), 0o600); err != nil {
		t.Fatal(err)
	}
	addr, data := freeAddr(t), filepath.Join(dir, "data")
	args := []string{"--config", conf, "--auth", "dpop", "--upstream", "fx=" + up}
	p := startSagAt(t, addr, data, args...)
	mcpURL := p.base + "/mcp"

	key, err := identity.NewDPoPKey()
	if err != nil {
		t.Fatal(err)
	}
	tok, err := devToken(data, p.base, devClaims{sub: "alice", jkt: key.Thumbprint()}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Transport: &identity.DPoPTransport{Key: key, Token: func(context.Context) (string, error) { return tok, nil }}}
	proof, err := key.Proof(http.MethodPost, mcpURL, tok, "")
	if err != nil {
		t.Fatal(err)
	}
	accepted := http.Header{"Authorization": {"DPoP " + tok}, "Dpop": {proof}}
	if status := initialize(t, mcpURL, accepted); status != http.StatusOK {
		t.Fatalf("initialize before the crash: %d\n%s", status, p.stderr)
	}

	var (
		mu      sync.Mutex
		acked   = map[string]bool{} // echo calls answered
		pending = map[string]bool{} // consent requests a client was given
		stop    = make(chan struct{})
		wg      sync.WaitGroup
	)
	count := func() (int, int) {
		mu.Lock()
		defer mu.Unlock()
		return len(acked), len(pending)
	}
	for i := range 4 {
		cs := dial(t, mcpURL, hc, []string{"2025-11-25", "2026-07-28"}[i%2], nil)
		wg.Go(func() {
			echoLoad(cs, i, stop, func(text string) {
				mu.Lock()
				acked[text] = true
				mu.Unlock()
			})
		})
	}
	// A 2026-07-28 client that can send its user to a page is answered at
	// once with the pending request (multi round-trip).
	asker := dial(t, mcpURL, hc, "2026-07-28", &mcp.ClientOptions{
		Capabilities: &mcp.ClientCapabilities{Elicitation: &mcp.ElicitationCapabilities{URL: &mcp.URLElicitationCapabilities{}}},
		ElicitationHandler: func(context.Context, *mcp.ElicitRequest) (*mcp.ElicitResult, error) {
			return &mcp.ElicitResult{Action: "accept"}, nil
		},
		MultiRoundTrip: &mcp.MultiRoundTripOptions{Disabled: true},
	})
	wg.Go(func() {
		for n := range 20 {
			select {
			case <-stop:
				return
			default:
			}
			res, err := callOnce(asker, "fx__add", map[string]any{"a": n, "b": 1})
			if err != nil {
				return
			}
			if res.NeedsInput() && res.RequestState != "" {
				mu.Lock()
				pending[res.RequestState] = true
				mu.Unlock()
			}
		}
	})

	p.killUnderLoad(t, 30*time.Second, func() bool { n, m := count(); return n >= 200 && m >= 5 }, stop, &wg)
	n, m := count()
	if n < 200 || m < 5 {
		t.Fatalf("before the kill: %d calls answered and %d consent requests pending, want 200 and 5\n%s", n, m, p.stderr)
	}

	p = startSagAt(t, addr, data, args...)
	if status := initialize(t, mcpURL, accepted); status != http.StatusUnauthorized {
		t.Errorf("a proof accepted before the crash, again after it: %d, want 401", status)
	}
	cs := dial(t, mcpURL, hc, "2026-07-28", nil)
	if res, err := callOnce(cs, "fx__echo", map[string]any{"text": "after the crash"}); err != nil || res.IsError {
		t.Errorf("a call after the restart: %v %+v\n%s", err, res, p.stderr)
	}
	// The restarted gateway stops gracefully: pending requests stay so.
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	<-p.exited
	if p.err != nil {
		t.Errorf("the restarted gateway's graceful stop: %v\n%s", p.err, p.stderr)
	}

	st := openStored(t, data, store.Options{Postgres: db})
	stored := 0
	for _, rec := range allAudit(t, st) {
		if rec.Tool == "fx__echo" && rec.Decision == "allow" {
			stored++
		}
	}
	t.Logf("%d calls answered and %d consent requests pending before the kill; %d allow records stored", n, m, stored)
	if stored < n+1 {
		t.Errorf("%d calls were answered (%d before the kill) but only %d audit records survived", n+1, n, stored)
	}
	still, err := st.PendingConsents(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range still {
		delete(pending, r.ID)
	}
	if len(pending) > 0 {
		t.Errorf("consent requests no longer pending after the crash: %v", strings.Join(mapKeys(pending), ", "))
	}
}

// dial connects an MCP client of version to url through hc.
func dial(t *testing.T, url string, hc *http.Client, version string, opts *mcp.ClientOptions) *mcp.ClientSession {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "sag-crash-test", Version: "1"}, opts).Connect(ctx,
		&mcp.StreamableClientTransport{Endpoint: url, HTTPClient: hc, MaxRetries: -1}, &mcp.ClientSessionOptions{ProtocolVersion: version})
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { cs.Close() })
	return cs
}

// callOnce calls a tool, giving up after 5 s.
func callOnce(cs *mcp.ClientSession, name string, args map[string]any) (*mcp.CallToolResult, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return cs.CallTool(ctx, &mcp.CallToolParams{Name: name, Arguments: args})
}

// initialize POSTs an initialize request with header and returns the
// status.
func initialize(t *testing.T, url string, header http.Header) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(
		`{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header = header.Clone()
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func mapKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}
