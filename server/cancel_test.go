package server_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	mcpgo "github.com/mark3labs/mcp-go/mcp"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/sag-gateway/sag/fixtures"
	"github.com/sag-gateway/sag/server"
)

// blockTool adds to a fixture a tool "block" that runs until its context is
// cancelled, reporting on started when it begins and on ended when the
// upstream cancelled it.
func blockTool(f *fixtures.Fixture) (started, ended chan struct{}) {
	started, ended = make(chan struct{}, 10), make(chan struct{}, 10)
	tool := mcpgo.NewToolWithRawSchema("block", "Runs until cancelled.", json.RawMessage(`{"type":"object","properties":{}}`))
	f.MCPServer().AddTool(tool, func(ctx context.Context, _ mcpgo.CallToolRequest) (*mcpgo.CallToolResult, error) {
		started <- struct{}{}
		select {
		case <-ctx.Done():
			ended <- struct{}{}
			return nil, ctx.Err()
		case <-time.After(time.Minute):
			return mcpgo.NewToolResultText("not cancelled"), nil
		}
	})
	return started, ended
}

// TestCancellation cancels a client's call while the upstream works on it:
// the call returns at once, the upstream's handler is cancelled, and the
// audit record says the client cancelled.
func TestCancellation(t *testing.T) {
	t.Parallel()
	for _, upstream := range []struct {
		name      string
		stateless bool
		strict    bool // stock mcp-go: refuses the go-sdk's 2026-07-28 notifications/cancelled with 400
		version   string
	}{
		{name: "http-session", version: legacy},
		{name: "http-stateless", stateless: true},
		{name: "http-stateless-strict", stateless: true, strict: true},
	} {
		t.Run(upstream.name, func(t *testing.T) {
			t.Parallel()
			f := fixtures.NewServer(fixtures.Options{Name: "up", StrictNotifications: upstream.strict})
			started, ended := blockTool(f)
			url, stop, err := f.StartHTTP(upstream.stateless)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(stop)
			tg := startGateway(t, nil)
			tg.addUpstream(t, server.UpstreamRequest{Name: "up", URL: url, ProtocolVersion: upstream.version})
			for _, version := range []string{legacy, modern} {
				t.Run(version, func(t *testing.T) {
					cancelled := func() int {
						n := 0
						for _, rec := range tg.audit(t, "") {
							if rec.Tool == "up__block" && rec.Reason == "cancelled by the client" && rec.Decision == "error" {
								n++
							}
						}
						return n
					}
					before := cancelled()
					cs := connect(t, tg.MCP, version, nil)
					if toolNames(t, cs)["up__block"] == nil {
						t.Fatal("up__block not listed")
					}
					ctx, cancel := context.WithCancel(context.Background())
					defer cancel()
					errc := make(chan error, 1)
					go func() {
						_, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "up__block", Arguments: map[string]any{}})
						errc <- err
					}()
					select {
					case <-started:
					case <-time.After(waitFor):
						t.Fatal("the upstream never started the call")
					}
					cancel()
					select {
					case err := <-errc:
						if !errors.Is(err, context.Canceled) {
							t.Errorf("cancelled call returned %v, want context.Canceled", err)
						}
					case <-time.After(3 * time.Second):
						t.Fatal("the call did not return within 3s of its cancellation")
					}
					select {
					case <-ended:
					case <-time.After(waitFor):
						t.Fatal("the upstream's handler was not cancelled")
					}
					eventually(t, "an audit record of the cancelled call", func() bool { return cancelled() > before })
					// The session still works.
					if res := callTool(t, cs, "up__echo", map[string]any{"text": "after"}); toolText(res) != "after" {
						t.Errorf("echo after cancel = %q", toolText(res))
					}
				})
			}
		})
	}
}

// TestDeleteDuringCall ends a session with DELETE while one of its calls is
// in flight and was never cancelled by the client (the go-sdk client sends
// notifications/cancelled in the background, so a Close right after a
// cancellation loses it): the DELETE must not wait for the call, and the
// call must be cancelled upstream.
func TestDeleteDuringCall(t *testing.T) {
	t.Parallel()
	for _, upstream := range []struct {
		name      string
		stateless bool
		version   string
	}{
		{name: "http-session", version: legacy},
		{name: "http-stateless", stateless: true},
	} {
		t.Run(upstream.name, func(t *testing.T) {
			t.Parallel()
			f := fixtures.NewServer(fixtures.Options{Name: "up"})
			started, ended := blockTool(f)
			url, stop, err := f.StartHTTP(upstream.stateless)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(stop)
			tg := startGateway(t, nil)
			tg.addUpstream(t, server.UpstreamRequest{Name: "up", URL: url, ProtocolVersion: upstream.version})

			sid := legacySession(t, tg.MCP)
			callCtx, cancelCall := context.WithCancel(context.Background())
			defer cancelCall()
			go func() {
				req, _ := http.NewRequestWithContext(callCtx, http.MethodPost, tg.MCP,
					strings.NewReader(`{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"up__block","arguments":{}}}`))
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("Accept", "application/json, text/event-stream")
				for k, v := range sessionHeader(sid) {
					req.Header[k] = v
				}
				if resp, err := http.DefaultClient.Do(req); err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			}()
			select {
			case <-started:
			case <-time.After(waitFor):
				t.Fatal("the upstream never started the call")
			}

			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, http.MethodDelete, tg.MCP, nil)
			for k, v := range sessionHeader(sid) {
				req.Header[k] = v
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Errorf("DELETE with a call in flight: %v", err)
			} else {
				resp.Body.Close()
				if resp.StatusCode/100 != 2 {
					t.Errorf("DELETE: %d", resp.StatusCode)
				}
			}
			select {
			case <-ended:
			case <-time.After(3 * time.Second):
				t.Error("the session's call still runs upstream after the session was deleted")
			}
			cancelCall() // ends the call's stream
		})
	}
}
