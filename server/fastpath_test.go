package server_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/sag-gateway/sag/server/config"
)

// chattyUpstream is a go-sdk upstream whose tool "chatty" logs to its
// caller, pings it and waits for the answer, then returns a result with
// reserved and unreserved _meta keys and a field the go-sdk does not know;
// "block" runs until its call is cancelled, reporting on cancelled.
func chattyUpstream(t *testing.T) (url string, cancelled chan struct{}) {
	t.Helper()
	cancelled = make(chan struct{}, 1)
	srv := mcp.NewServer(&mcp.Implementation{Name: "chatty", Version: "1"}, nil)
	srv.AddTool(&mcp.Tool{Name: "chatty", InputSchema: json.RawMessage(`{"type":"object"}`)},
		func(ctx context.Context, req *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
			_ = req.Session.Log(ctx, &mcp.LoggingMessageParams{Level: "info", Data: "working"})
			if err := req.Session.Ping(ctx, nil); err != nil {
				return nil, err
			}
			return &mcp.CallToolResult{
				Meta:    mcp.Meta{"io.modelcontextprotocol/related-task": map[string]any{"taskId": "t"}, "kept": "yes"},
				Content: []mcp.Content{&mcp.TextContent{Text: "pinged"}},
			}, nil
		})
	srv.AddTool(&mcp.Tool{Name: "block", InputSchema: json.RawMessage(`{"type":"object"}`)},
		func(ctx context.Context, _ *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
			select {
			case <-ctx.Done():
				cancelled <- struct{}{}
				return nil, ctx.Err()
			case <-time.After(time.Minute):
				return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: "not cancelled"}}}, nil
			}
		})
	hs := httptest.NewServer(mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return srv }, nil))
	t.Cleanup(hs.Close)
	return hs.URL, cancelled
}

// TestFastPath drives tools/call with raw HTTP on a 2025-11-25 session: a
// call that needs nothing of the session's stream is answered with one
// JSON body (the front's own path), one that does goes the SDK's way (an
// event stream), and both answer alike.
func TestFastPath(t *testing.T) {
	t.Parallel()
	fixtureURL, _ := httpFixture(t, "up", false)
	chattyURL, cancelled := chattyUpstream(t)
	tg := startGateway(t, func(c *config.Config) {
		c.Upstreams = []config.Upstream{{Name: "up", URL: fixtureURL}, {Name: "sdk", URL: chattyURL}}
	})
	sid := legacySession(t, tg.MCP)
	call := func(t *testing.T, params string) rawResponse {
		t.Helper()
		return rawPost(t, tg.MCP, `{"jsonrpc":"2.0","id":"c-1","method":"tools/call","params":`+params+`}`, sessionHeader(sid))
	}
	contentType := func(r rawResponse) string { return strings.Split(r.Header.Get("Content-Type"), ";")[0] }

	t.Run("result", func(t *testing.T) {
		r := call(t, `{"name":"up__echo","arguments":{"text":"fast"},"_meta":{"traceless":1}}`)
		if contentType(r) != "application/json" || string(r.RPC.ID) != `"c-1"` || !strings.Contains(string(r.RPC.Result), `"fast"`) {
			t.Fatalf("want one JSON answer to c-1 with the text; got %s %s", r.Header.Get("Content-Type"), r.Body)
		}
	})
	t.Run("upstream talks mid-call", func(t *testing.T) {
		// The go-sdk upstream answers on an event stream with a log
		// message and a ping before its result: the ping is answered, the
		// reserved _meta key stays behind, the rest goes back as written.
		r := call(t, `{"name":"sdk__chatty","arguments":{}}`)
		var res struct {
			Meta    map[string]any `json:"_meta"`
			Content []struct{ Text string }
		}
		if err := json.Unmarshal(r.RPC.Result, &res); err != nil || contentType(r) != "application/json" {
			t.Fatalf("want a JSON answer; got %s %s", r.Header.Get("Content-Type"), r.Body)
		}
		if len(res.Content) != 1 || res.Content[0].Text != "pinged" {
			t.Errorf("want the tool's text after its ping; got %s", r.RPC.Result)
		}
		if _, ok := res.Meta["io.modelcontextprotocol/related-task"]; ok || res.Meta["kept"] != "yes" {
			t.Errorf("want the reserved _meta key removed and the other kept; got %v", res.Meta)
		}
	})
	t.Run("errors", func(t *testing.T) {
		r := call(t, `{"name":"up__nope","arguments":{}}`)
		if contentType(r) != "application/json" || r.RPC.Error == nil || r.RPC.Error.Code != -32602 {
			t.Fatalf("an unknown tool: want -32602; got %s", r.Body)
		}
		r = call(t, `{"name":"up__echo","arguments":{"text":7}}`)
		if !strings.Contains(string(r.RPC.Result), `"isError":true`) {
			t.Fatalf("invalid arguments: want a tool error; got %s", r.Body)
		}
	})
	t.Run("needs the stream", func(t *testing.T) {
		// Progress was asked for: the SDK serves the call on an event
		// stream, with the progress on it.
		r := call(t, `{"name":"up__slow","arguments":{"steps":2,"delay_ms":1},"_meta":{"progressToken":"p"}}`)
		if contentType(r) != "text/event-stream" || !strings.Contains(string(r.Body), "notifications/progress") ||
			!strings.Contains(string(r.RPC.Result), "done after 2 steps") {
			t.Fatalf("want the progress and the result on an event stream; got %s %s", r.Header.Get("Content-Type"), r.Body)
		}
		// Params the fast path does not read.
		r = call(t, `{"name":"up__echo","arguments":{"text":"x"},"task":{}}`)
		if contentType(r) != "text/event-stream" {
			t.Fatalf("a call with a task: want the SDK's answer; got %s %s", r.Header.Get("Content-Type"), r.Body)
		}
	})
	t.Run("client that can be asked", func(t *testing.T) {
		init := `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"` + legacy +
			`","capabilities":{"elicitation":{"url":{}}},"clientInfo":{"name":"raw","version":"1"}}}`
		asked := rawPost(t, tg.MCP, init, nil).Header.Get("Mcp-Session-Id")
		rawPost(t, tg.MCP, `{"jsonrpc":"2.0","method":"notifications/initialized"}`, sessionHeader(asked))
		r := rawPost(t, tg.MCP, `{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"up__echo","arguments":{"text":"x"}}}`, sessionHeader(asked))
		if contentType(r) != "text/event-stream" || !strings.Contains(string(r.RPC.Result), `"x"`) {
			t.Fatalf("a client that declared elicitation: want the SDK's event stream; got %s %s", r.Header.Get("Content-Type"), r.Body)
		}
	})
	t.Run("another principal's session", func(t *testing.T) {
		r := rawPost(t, tg.MCP, `{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"up__echo","arguments":{"text":"x"}}}`,
			http.Header{"Mcp-Session-Id": {"no-such-session"}, "Mcp-Protocol-Version": {legacy}})
		if r.Status != http.StatusNotFound {
			t.Fatalf("an unknown session: want 404; got %d %s", r.Status, r.Body)
		}
	})
	t.Run("cancel", func(t *testing.T) {
		// A caller that gives up cancels the upstream's work.
		ctx, cancel := context.WithCancel(context.Background())
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, tg.MCP,
			strings.NewReader(`{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"sdk__block","arguments":{}}}`))
		if err != nil {
			t.Fatal(err)
		}
		req.Header = sessionHeader(sid)
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json, text/event-stream")
		go func() {
			time.Sleep(200 * time.Millisecond)
			cancel()
		}()
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
			t.Fatalf("want the request cancelled; got %s", resp.Status)
		}
		select {
		case <-cancelled:
		case <-time.After(waitFor):
			t.Fatal("the upstream's handler was not cancelled")
		}
	})
	t.Run("audited", func(t *testing.T) {
		recs := tg.audit(t, "")
		n := 0
		for _, r := range recs {
			if r.Tool == "up__echo" && r.Decision == "allow" {
				n++
			}
		}
		if n == 0 {
			t.Fatalf("no audit record of the fast-path calls: %+v", recs)
		}
	})
}
