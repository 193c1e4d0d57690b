package server_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/sag-gateway/sag/server/config"
)

// chattyUpstream is a go-sdk upstream whose tool "chatty" logs to its
// caller, pings it and waits for the answer, then returns a result with
// reserved and unreserved _meta keys and a field the go-sdk does not know;
// "block" runs until its call is cancelled, reporting on cancelled;
// "regional" names a parameter header (x-mcp-header).
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
	srv.AddTool(&mcp.Tool{Name: "regional", InputSchema: json.RawMessage(`{"type":"object","properties":{"region":{"type":"string","x-mcp-header":"Region"}}}`)},
		func(context.Context, *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
			return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: "regional"}}}, nil
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
		giveUp(t, tg.MCP, `{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"sdk__block","arguments":{}}}`, sessionHeader(sid), cancelled)
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

// TestFastPathStateless drives tools/call with raw 2026-07-28 requests: a
// call that needs no stream is answered by the front with one JSON body
// (on a pooled upstream connection) that says what the SDK's stateless
// handler says; anything the SDK would refuse, or that needs a stream,
// goes the SDK's way and gets the SDK's answer.
func TestFastPathStateless(t *testing.T) {
	t.Parallel()
	fixtureURL, _ := httpFixture(t, "up", false)
	chattyURL, cancelled := chattyUpstream(t)
	tg := startGateway(t, func(c *config.Config) {
		c.Upstreams = []config.Upstream{{Name: "up", URL: fixtureURL}, {Name: "sdk", URL: chattyURL}}
	})
	// meta is a request's _meta: the protocol triple and extra members.
	meta := func(caps, extra string) string {
		return `"_meta":{"` + mcp.MetaKeyProtocolVersion + `":"` + modern + `","` + mcp.MetaKeyClientCapabilities + `":` + caps +
			`,"` + mcp.MetaKeyClientInfo + `":{"name":"raw","version":"1"}` + extra + `}`
	}
	call := func(t *testing.T, name, args, meta string, h http.Header) rawResponse {
		t.Helper()
		body := `{"jsonrpc":"2.0","id":"s-1","method":"tools/call","params":{"name":"` + name + `","arguments":` + args + `,` + meta + `}}`
		return rawPost(t, tg.MCP, body, merge(modernHeader("tools/call", name), h))
	}
	contentType := func(r rawResponse) string { return strings.Split(r.Header.Get("Content-Type"), ";")[0] }
	decode := func(t *testing.T, r rawResponse) map[string]any {
		t.Helper()
		var m map[string]any
		if err := json.Unmarshal(r.RPC.Result, &m); err != nil {
			t.Fatalf("no result: %s %s", r.Header.Get("Content-Type"), r.Body)
		}
		return m
	}

	t.Run("answers as the SDK", func(t *testing.T) {
		fast := call(t, "up__echo", `{"text":"fast"}`, meta(`{}`, ""), nil)
		if contentType(fast) != "application/json" || string(fast.RPC.ID) != `"s-1"` {
			t.Fatalf("want one JSON answer to s-1; got %s %s", fast.Header.Get("Content-Type"), fast.Body)
		}
		// A client that declared elicitation goes the SDK's way.
		sdk := call(t, "up__echo", `{"text":"fast"}`, meta(`{"elicitation":{}}`, ""), nil)
		if contentType(sdk) != "text/event-stream" {
			t.Fatalf("a client that can be asked: want the SDK's event stream; got %s %s", sdk.Header.Get("Content-Type"), sdk.Body)
		}
		f, s := decode(t, fast), decode(t, sdk)
		if !reflect.DeepEqual(f, s) {
			t.Errorf("the fast path answered\n%s\nthe SDK\n%s", fast.RPC.Result, sdk.RPC.Result)
		}
		if f["resultType"] != "complete" {
			t.Errorf("want resultType complete; got %s", fast.RPC.Result)
		}
		if m, _ := f["_meta"].(map[string]any); m == nil || m[mcp.MetaKeyServerInfo] == nil {
			t.Errorf("want the server's identity in _meta; got %s", fast.RPC.Result)
		}
	})
	t.Run("upstream talks mid-call", func(t *testing.T) {
		r := call(t, "sdk__chatty", `{}`, meta(`{}`, `,"kept":"caller"`), nil)
		if contentType(r) != "application/json" {
			t.Fatalf("want a JSON answer; got %s %s", r.Header.Get("Content-Type"), r.Body)
		}
		res := decode(t, r)
		m, _ := res["_meta"].(map[string]any)
		if _, ok := m["io.modelcontextprotocol/related-task"]; ok || m["kept"] != "yes" || m[mcp.MetaKeyServerInfo] == nil {
			t.Errorf("want the upstream's reserved _meta key removed, its other kept, and the server's identity; got %s", r.RPC.Result)
		}
		if !strings.Contains(string(r.RPC.Result), "pinged") {
			t.Errorf("want the tool's text after its ping; got %s", r.RPC.Result)
		}
	})
	t.Run("errors", func(t *testing.T) {
		r := call(t, "up__nope", `{}`, meta(`{}`, ""), nil)
		if contentType(r) != "application/json" || r.RPC.Error == nil || r.RPC.Error.Code != -32602 {
			t.Fatalf("an unknown tool: want -32602 in JSON; got %s", r.Body)
		}
		r = call(t, "up__echo", `{"text":7}`, meta(`{}`, ""), nil)
		if res := decode(t, r); res["isError"] != true || res["resultType"] != "complete" {
			t.Fatalf("invalid arguments: want a complete tool error; got %s", r.Body)
		}
	})
	t.Run("the SDK refuses", func(t *testing.T) {
		for name, c := range map[string]struct {
			meta string
			h    http.Header
			code int
		}{
			"Mcp-Name differs":         {meta(`{}`, ""), http.Header{"Mcp-Name": {"up__other"}}, -32020},
			"no Mcp-Method":            {meta(`{}`, ""), http.Header{"Mcp-Method": nil}, -32020},
			"no client capabilities":   {`"_meta":{"` + mcp.MetaKeyProtocolVersion + `":"` + modern + `"}`, nil, -32602},
			"_meta names another rev.": {`"_meta":{"` + mcp.MetaKeyProtocolVersion + `":"2025-11-25","` + mcp.MetaKeyClientCapabilities + `":{}}`, nil, -32020},
			"client info not an object": {`"_meta":{"` + mcp.MetaKeyProtocolVersion + `":"` + modern + `","` + mcp.MetaKeyClientCapabilities +
				`":{},"` + mcp.MetaKeyClientInfo + `":"raw"}`, nil, -32602},
		} {
			r := call(t, "up__echo", `{"text":"x"}`, c.meta, c.h)
			if r.RPC.Error == nil || r.RPC.Error.Code != c.code {
				t.Errorf("%s: want the SDK's %d; got %d %s", name, c.code, r.Status, r.Body)
			}
		}
		// A tool with a parameter header: the SDK checks the header.
		if r := call(t, "sdk__regional", `{"region":"eu"}`, meta(`{}`, ""), nil); r.RPC.Error == nil || r.RPC.Error.Code != -32020 {
			t.Errorf("no parameter header: want the SDK's -32020; got %d %s", r.Status, r.Body)
		}
		r := call(t, "sdk__regional", `{"region":"eu"}`, meta(`{}`, ""), http.Header{"Mcp-Param-Region": {"eu"}})
		if contentType(r) != "text/event-stream" || !strings.Contains(string(r.RPC.Result), "regional") {
			t.Errorf("with its parameter header: want the SDK's event stream; got %s %s", r.Header.Get("Content-Type"), r.Body)
		}
	})
	t.Run("the SDK reads it otherwise", func(t *testing.T) {
		// Requests encoding/json reads more loosely than the SDK: the
		// fast path leaves them to the SDK, which refuses them (400), or
		// takes one without "method" for a response (202).
		params := `{"name":"up__echo","arguments":{"text":"x"},` + meta(`{}`, "") + `}`
		for name, c := range map[string]struct {
			body   string
			h      http.Header
			status int
		}{
			"no version":      {`{"id":1,"method":"tools/call","params":` + params + `}`, nil, 400},
			"version 1.0":     {`{"jsonrpc":"1.0","id":1,"method":"tools/call","params":` + params + `}`, nil, 400},
			"id null":         {`{"jsonrpc":"2.0","id":null,"method":"tools/call","params":` + params + `}`, nil, 400},
			"id true":         {`{"jsonrpc":"2.0","id":true,"method":"tools/call","params":` + params + `}`, nil, 400},
			"method in caps":  {`{"jsonrpc":"2.0","id":1,"METHOD":"tools/call","params":` + params + `}`, nil, 202},
			"Accept json-seq": {`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":` + params + `}`, http.Header{"Accept": {"application/json-seq, text/event-stream"}}, 400},
			"no name": {`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"","arguments":{},` + meta(`{}`, "") + `}}`,
				http.Header{"Mcp-Name": nil}, 400},
		} {
			if r := rawPost(t, tg.MCP, c.body, merge(modernHeader("tools/call", "up__echo"), c.h)); r.Status != c.status {
				t.Errorf("%s: want the SDK's %d; got %d %s %s", name, c.status, r.Status, r.Header.Get("Content-Type"), r.Body)
			}
		}
		// Capabilities named in another case: the SDK reads "elicitation"
		// and serves the call itself.
		if r := call(t, "up__echo", `{"text":"x"}`, meta(`{"elicitation":{},"Elicitation":null}`, ""), nil); contentType(r) != "text/event-stream" {
			t.Errorf("elicitation in two spellings: want the SDK's event stream; got %s %s", r.Header.Get("Content-Type"), r.Body)
		}
	})
	t.Run("needs the stream", func(t *testing.T) {
		for name, m := range map[string]string{
			"a log level": meta(`{}`, `,"`+mcp.MetaKeyLogLevel+`":"debug"`),
			"progress":    meta(`{}`, `,"progressToken":"p"`),
			"sampling":    meta(`{"sampling":{}}`, ""),
		} {
			if r := call(t, "up__echo", `{"text":"x"}`, m, nil); contentType(r) != "text/event-stream" || !strings.Contains(string(r.RPC.Result), `"x"`) {
				t.Errorf("%s: want the SDK's event stream with the result; got %s %s", name, r.Header.Get("Content-Type"), r.Body)
			}
		}
	})
	t.Run("cancel", func(t *testing.T) {
		body := `{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"sdk__block","arguments":{},` + meta(`{}`, "") + `}}`
		giveUp(t, tg.MCP, body, modernHeader("tools/call", "sdk__block"), cancelled)
	})
	t.Run("audited", func(t *testing.T) {
		n := 0
		for _, r := range tg.audit(t, "") {
			if r.Tool == "up__echo" && r.Decision == "allow" {
				n++
			}
		}
		if n < 2 {
			t.Fatalf("want the fast and the SDK's call audited; got %d records", n)
		}
	})
}

// giveUp POSTs body with header h and gives up on it after 200 ms; the
// upstream's handler must then report on cancelled.
func giveUp(t *testing.T, url, body string, h http.Header, cancelled <-chan struct{}) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header = h
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
}
