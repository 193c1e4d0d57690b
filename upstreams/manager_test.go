package upstreams_test

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/sag-gateway/sag/fixtures"
	"github.com/sag-gateway/sag/upstreams"
)

const waitFor = 10 * time.Second

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func newManager(t *testing.T, opts upstreams.Options) *upstreams.Manager {
	t.Helper()
	m := upstreams.New(opts)
	t.Cleanup(func() {
		done := make(chan struct{})
		go func() { m.Close(); close(done) }()
		select {
		case <-done:
		case <-time.After(waitFor):
			t.Error("Manager.Close did not return")
		}
	})
	return m
}

func status(m *upstreams.Manager, name string) upstreams.Status {
	for _, s := range m.Statuses() {
		if s.Name == name {
			return s
		}
	}
	return upstreams.Status{}
}

// echo calls <name>__echo on the shared (control) connection.
func echo(t *testing.T, m *upstreams.Manager, name, text string) (*mcp.CallToolResult, error) {
	t.Helper()
	tool, ok := m.Catalog().Tool(name + "__echo")
	if !ok {
		t.Fatalf("%s__echo not in the catalog", name)
	}
	args, _ := json.Marshal(map[string]any{"text": text})
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	return m.CallTool(ctx, nil, tool, &mcp.CallToolParamsRaw{Name: tool.Name, Arguments: args})
}

func resultText(res *mcp.CallToolResult) string {
	if res == nil || len(res.Content) == 0 {
		return ""
	}
	if tc, ok := res.Content[0].(*mcp.TextContent); ok {
		return tc.Text
	}
	return ""
}

// TestManagerTransports registers a fixture on each network transport and
// checks that its control session stays up after registration (the legacy
// SSE stream used to die with the context of the first connect), that its
// catalog is built and that calls work; removal withdraws the catalog.
func TestManagerTransports(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name    string
		url     func(t *testing.T) string
		version string
		want    string // negotiated protocol revision
	}{
		{"http-stateless", func(t *testing.T) string { return startHTTP(t, "up", true) }, "", "2026-07-28"},
		{"http-session", func(t *testing.T) string { return startHTTP(t, "up", false) }, "2025-11-25", "2025-11-25"},
		{"sse", func(t *testing.T) string {
			url, stop, err := fixtures.NewServer(fixtures.Options{Name: "up"}).StartSSE()
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(stop)
			return "sse+" + url
		}, "", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var changes atomic.Int32
			m := newManager(t, upstreams.Options{OnChange: func(*upstreams.Catalog) { changes.Add(1) }})
			ctx, cancel := context.WithTimeout(context.Background(), waitFor)
			defer cancel()
			rep, err := m.Add(ctx, upstreams.Spec{Name: "up", URL: tc.url(t), ProtocolVersion: tc.version})
			if err != nil || rep.ConnectError != "" {
				t.Fatalf("Add: %v %+v", err, rep)
			}
			st := status(m, "up")
			if !st.Connected || st.Tools != 10 || (tc.want != "" && st.Negotiated != tc.want) {
				t.Errorf("status %+v", st)
			}
			if changes.Load() == 0 {
				t.Error("OnChange not called at registration")
			}
			// Several calls, spread over time: the control session must stay.
			for i := range 3 {
				res, err := echo(t, m, "up", "hi")
				if err != nil || resultText(res) != "hi" {
					t.Fatalf("call %d: %v %q", i, err, resultText(res))
				}
				if st := status(m, "up"); !st.Connected || st.LastError != "" {
					t.Fatalf("after call %d: %+v", i, st)
				}
				time.Sleep(50 * time.Millisecond) // let a dying stream show
			}
			if err := m.Remove("up"); err != nil {
				t.Fatal(err)
			}
			if _, ok := m.Catalog().Tool("up__echo"); ok || len(m.Statuses()) != 0 {
				t.Error("catalog or registry still has the removed upstream")
			}
			if err := m.Remove("up"); err == nil {
				t.Error("second Remove succeeded")
			}
		})
	}
}

func startHTTP(t *testing.T, name string, stateless bool) string {
	t.Helper()
	url, stop, err := fixtures.NewServer(fixtures.Options{Name: name}).StartHTTP(stateless)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	return url
}

// TestManagerReconnect stops an upstream and starts it again on the same
// address: calls in between get a clear error without its URL, the upstream
// is reported down (what /readyz and sag_upstream_up show), and the manager
// reconnects with backoff.
func TestManagerReconnect(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		stateless bool
		version   string
	}{
		{name: "session-based", version: "2025-11-25"},
		{name: "stateless"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			addr := ln.Addr().String()
			ln.Close()
			f := fixtures.NewServer(fixtures.Options{Name: "up"})
			url, stop, err := f.ListenHTTP(addr, tc.stateless)
			if err != nil {
				t.Fatal(err)
			}
			m := newManager(t, upstreams.Options{})
			ctx, cancel := context.WithTimeout(context.Background(), waitFor)
			defer cancel()
			if _, err := m.Add(ctx, upstreams.Spec{Name: "up", URL: url, ProtocolVersion: tc.version}); err != nil {
				t.Fatal(err)
			}
			if res, err := echo(t, m, "up", "1"); err != nil || resultText(res) != "1" {
				t.Fatalf("before: %v %q", err, resultText(res))
			}

			stop()
			_, err = echo(t, m, "up", "2")
			var ue *upstreams.Error
			if !errors.As(err, &ue) || ue.Upstream != "up" || strings.Contains(ue.Error(), "://") {
				t.Errorf("call to a stopped upstream: %v, want an *upstreams.Error without URL", err)
			}
			if _, ok := m.Catalog().Tool("up__echo"); !ok {
				t.Error("tools withdrawn while the upstream is down")
			}
			down := false
			deadline := time.Now().Add(5 * time.Second)
			for !down && time.Now().Before(deadline) {
				down = !status(m, "up").Connected
				time.Sleep(10 * time.Millisecond)
			}
			if !down {
				t.Errorf("upstream still reported connected 5s after it stopped: %+v", status(m, "up"))
			}

			_, stop, err = f.ListenHTTP(addr, tc.stateless)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(stop)
			eventually(t, "the upstream to reconnect", func() bool { return status(m, "up").Connected })
			if res, err := echo(t, m, "up", "3"); err != nil || resultText(res) != "3" {
				t.Errorf("after the restart: %v %q", err, resultText(res))
			}
		})
	}
}

// TestManagerSpecErrors refuses bad specs and duplicate names.
func TestManagerSpecErrors(t *testing.T) {
	t.Parallel()
	m := newManager(t, upstreams.Options{})
	url := startHTTP(t, "up", true)
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	if _, err := m.Add(ctx, upstreams.Spec{Name: "up", URL: url}); err != nil {
		t.Fatal(err)
	}
	for _, spec := range []upstreams.Spec{
		{Name: "up", URL: url},
		{Name: "", URL: url},
		{Name: "a__b", URL: url},
		{Name: "x", URL: "ftp://host/"},
		{Name: "x", URL: "stdio:"},
		{Name: "x", URL: `stdio:"unterminated`},
		{Name: "x", URL: url, ProtocolVersion: "1999-01-01"},
		{Name: "x", URL: url, Prefix: "sometimes"},
		{Name: "x", URL: url, Timeout: -time.Second},
	} {
		if _, err := m.Add(ctx, spec); err == nil {
			t.Errorf("Add(%+v) succeeded", spec)
		}
	}
	if n := len(m.Statuses()); n != 1 {
		t.Errorf("%d upstreams registered, want 1", n)
	}
}
