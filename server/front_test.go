package server_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/sag-gateway/sag/server/config"
	"github.com/sag-gateway/sag/store"
)

const maxRequestBytes = 64 << 10

// frontGateway is a gateway with one stateless fixture upstream "up", a
// small request body limit and one extra allowed origin.
func frontGateway(t *testing.T) *testGateway {
	t.Helper()
	url, _ := httpFixture(t, "up", true)
	return startGateway(t, func(c *config.Config) {
		c.Upstreams = []config.Upstream{{Name: "up", URL: url}}
		c.Limits.MaxRequestBytes = maxRequestBytes
		c.AllowedOrigins = []string{"http://app.example"}
	})
}

const initializeBody = `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"` + legacy + `","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}`

// modernBody is a 2026-07-28 request: its _meta carries the protocol
// version and client capabilities.
func modernBody(method, params string) string {
	meta := `"_meta":{"` + mcp.MetaKeyProtocolVersion + `":"` + modern + `","` + mcp.MetaKeyClientCapabilities + `":{}}`
	if params == "" {
		params = "{" + meta + "}"
	} else {
		params = "{" + meta + "," + params + "}"
	}
	return `{"jsonrpc":"2.0","id":7,"method":"` + method + `","params":` + params + `}`
}

func modernHeader(method, name string) http.Header {
	h := http.Header{"Mcp-Protocol-Version": {modern}, "Mcp-Method": {method}}
	if name != "" {
		h.Set("Mcp-Name", name)
	}
	return h
}

// TestHTTPFront checks the wire-level rules of the MCP endpoint with raw
// HTTP requests.
func TestHTTPFront(t *testing.T) {
	t.Parallel()
	tg := frontGateway(t)
	sid := legacySession(t, tg.MCP)
	sh := sessionHeader(sid)

	cases := []struct {
		name    string
		body    string
		header  http.Header
		status  int // 0: any
		rpcCode int // 0: no JSON-RPC error expected
	}{
		{name: "foreign origin", body: initializeBody, header: http.Header{"Origin": {"http://evil.example"}}, status: http.StatusForbidden},
		{name: "foreign origin in a session", body: `{"jsonrpc":"2.0","id":2,"method":"tools/list"}`,
			header: merge(sh, http.Header{"Origin": {"http://evil.example"}}), status: http.StatusForbidden},
		{name: "allowed origin", body: initializeBody, header: http.Header{"Origin": {"http://app.example"}}, status: http.StatusOK},
		{name: "same origin", body: initializeBody, header: http.Header{"Origin": {tg.Base}}, status: http.StatusOK},
		{name: "non-loopback Host", body: initializeBody, header: http.Header{"Host": {"evil.example"}}, status: http.StatusForbidden},
		{name: "non-loopback Host with port", body: initializeBody, header: http.Header{"Host": {"rebind.example:" + strings.Split(tg.Base, ":")[2]}}, status: http.StatusForbidden},
		{name: "unknown session", body: `{"jsonrpc":"2.0","id":2,"method":"tools/list"}`,
			header: sessionHeader("no-such-session"), status: http.StatusNotFound},
		{name: "body too large", body: `{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"up__echo","arguments":{"text":"` + strings.Repeat("x", 2*maxRequestBytes) + `"}}}`,
			header: sh, status: http.StatusRequestEntityTooLarge},
		{name: "malformed JSON", body: `{"jsonrpc":"2.0","id":2,"method":`, header: sh, rpcCode: jsonrpc.CodeParseError},
		{name: "unknown method", body: `{"jsonrpc":"2.0","id":2,"method":"no/such/method"}`, header: sh, status: http.StatusBadRequest, rpcCode: jsonrpc.CodeMethodNotFound},
		{name: "non-loopback Host comes before body checks", body: `{"jsonrpc":`, header: http.Header{"Host": {"evil.example"}}, status: http.StatusForbidden},
		{name: "unsupported protocol version", body: `{"jsonrpc":"2.0","id":2,"method":"tools/list"}`,
			header: merge(sh, http.Header{"Mcp-Protocol-Version": {"1999-01-01"}}), status: http.StatusBadRequest},
		{name: "workflow id too long", body: `{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"up__echo","arguments":{"text":"x"}}}`,
			header: merge(sh, http.Header{"Sag-Workflow-Id": {strings.Repeat("w", 129)}}), rpcCode: jsonrpc.CodeInvalidRequest},
		{name: "workflow id with a space", body: `{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"up__echo","arguments":{"text":"x"}}}`,
			header: merge(sh, http.Header{"Sag-Workflow-Id": {"a b"}}), rpcCode: jsonrpc.CodeInvalidRequest},
		{name: "unknown tool", body: `{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"up__nope","arguments":{}}}`,
			header: sh, status: http.StatusOK, rpcCode: jsonrpc.CodeInvalidParams},
		{name: "unknown tool (2026-07-28)", body: modernBody("tools/call", `"name":"up__nope","arguments":{}`),
			header: modernHeader("tools/call", "up__nope"), rpcCode: jsonrpc.CodeInvalidParams},
		{name: "invalid cursor", body: `{"jsonrpc":"2.0","id":2,"method":"tools/list","params":{"cursor":"not-a-cursor"}}`,
			header: sh, status: http.StatusOK, rpcCode: jsonrpc.CodeInvalidParams},
		{name: "invalid cursor (2026-07-28)", body: modernBody("tools/list", `"cursor":"not-a-cursor"`),
			header: modernHeader("tools/list", ""), rpcCode: jsonrpc.CodeInvalidParams},
		{name: "malformed JSON (2026-07-28)", body: `{"jsonrpc":"2.0","id":2,"method":`, header: modernHeader("tools/list", ""), rpcCode: jsonrpc.CodeParseError},
		{name: "unknown method (2026-07-28)", body: modernBody("no/such/method", ""), header: modernHeader("no/such/method", ""), status: http.StatusNotFound, rpcCode: jsonrpc.CodeMethodNotFound},
		{name: "known tool (2026-07-28)", body: modernBody("tools/call", `"name":"up__echo","arguments":{"text":"raw"}`),
			header: modernHeader("tools/call", "up__echo"), status: http.StatusOK},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := rawPost(t, tg.MCP, tc.body, tc.header)
			if tc.status != 0 && r.Status != tc.status {
				t.Errorf("status %d, want %d; body %.300s", r.Status, tc.status, r.Body)
			}
			switch {
			case tc.rpcCode != 0 && r.RPC.Error == nil:
				t.Errorf("no JSON-RPC error, want code %d; status %d body %.300s", tc.rpcCode, r.Status, r.Body)
			case tc.rpcCode != 0 && r.RPC.Error.Code != tc.rpcCode:
				t.Errorf("JSON-RPC error %d %q, want code %d", r.RPC.Error.Code, r.RPC.Error.Message, tc.rpcCode)
			case tc.rpcCode == 0 && tc.status == http.StatusOK && r.RPC.Error != nil:
				t.Errorf("JSON-RPC error %d %q, want success", r.RPC.Error.Code, r.RPC.Error.Message)
			}
		})
	}

	t.Run("unknown tool is audited", func(t *testing.T) {
		found := false
		for _, rec := range tg.audit(t, sid) {
			if rec.Tool == "up__nope" && rec.Decision == "deny" && strings.HasPrefix(rec.Reason, `unknown tool "up__nope"`) {
				found = true
			}
		}
		if !found {
			t.Error("no deny record for up__nope in the session's audit")
		}
	})

	t.Run("unknown tool through the SDK client", func(t *testing.T) {
		for _, version := range []string{legacy, modern} {
			cs := connect(t, tg.MCP, version, nil)
			_, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "up__nope", Arguments: map[string]any{}})
			var rpc *jsonrpc.Error
			if !errors.As(err, &rpc) || rpc.Code != jsonrpc.CodeInvalidParams {
				t.Errorf("%s: unknown tool error %v, want JSON-RPC %d", version, err, jsonrpc.CodeInvalidParams)
			}
		}
	})
}

func merge(hs ...http.Header) http.Header {
	out := http.Header{}
	for _, h := range hs {
		for k, v := range h {
			out[k] = v
		}
	}
	return out
}

// TestSessionDelete ends a session with DELETE; the session id is then
// unknown (404), and the go-sdk client's Close does the same.
func TestSessionDelete(t *testing.T) {
	t.Parallel()
	tg := frontGateway(t)
	sid := legacySession(t, tg.MCP)
	if r := rawPost(t, tg.MCP, `{"jsonrpc":"2.0","id":2,"method":"tools/list"}`, sessionHeader(sid)); r.Status != http.StatusOK || r.RPC.Error != nil {
		t.Fatalf("tools/list in a live session: %d %s", r.Status, r.Body)
	}
	req, _ := http.NewRequest(http.MethodDelete, tg.MCP, nil)
	for k, v := range sessionHeader(sid) {
		req.Header[k] = v
	}
	if r := rawDo(t, req); r.Status/100 != 2 {
		t.Fatalf("DELETE: %d %s", r.Status, r.Body)
	}
	if r := rawPost(t, tg.MCP, `{"jsonrpc":"2.0","id":3,"method":"tools/list"}`, sessionHeader(sid)); r.Status != http.StatusNotFound {
		t.Errorf("tools/list after DELETE: %d, want 404", r.Status)
	}
}

// TestPagination lists the tools of three upstreams with the SDK's paging
// iterator and checks that every tool arrives exactly once.
func TestPagination(t *testing.T) {
	t.Parallel()
	var ups []config.Upstream
	for _, name := range []string{"p1", "p2", "p3"} {
		url, _ := httpFixture(t, name, true)
		ups = append(ups, config.Upstream{Name: name, URL: url})
	}
	tg := startGateway(t, func(c *config.Config) { c.Upstreams = ups })
	for _, version := range []string{legacy, modern} {
		t.Run(version, func(t *testing.T) {
			cs := connect(t, tg.MCP, version, nil)
			seen := map[string]int{}
			for tool, err := range cs.Tools(context.Background(), nil) {
				if err != nil {
					t.Fatalf("tools/list: %v", err)
				}
				seen[tool.Name]++
			}
			for _, up := range []string{"p1", "p2", "p3"} {
				for _, name := range fixtureTools {
					if n := seen[up+"__"+name]; n != 1 {
						t.Errorf("%s__%s listed %d times", up, name, n)
					}
				}
			}
			if len(seen) != 3*len(fixtureTools) {
				b, _ := json.Marshal(keys(seen))
				t.Errorf("%d tools listed, want %d: %s", len(seen), 3*len(fixtureTools), b)
			}
		})
	}
}

// TestResumability reads a call's response stream, then resumes it with GET
// and Last-Event-ID: the gateway replays what followed that event.
func TestResumability(t *testing.T) {
	t.Parallel()
	tg := frontGateway(t)
	sid := legacySession(t, tg.MCP)
	r := rawPost(t, tg.MCP, `{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"_meta":{"progressToken":"p"},"name":"up__slow","arguments":{"steps":2,"delay_ms":10}}}`, sessionHeader(sid))
	if r.Status != http.StatusOK || !strings.HasPrefix(r.Header.Get("Content-Type"), "text/event-stream") {
		t.Fatalf("tools/call: %d %s %s", r.Status, r.Header.Get("Content-Type"), r.Body)
	}
	// The id of the first event that carries a message: resume after it.
	var ids []string
	for line := range strings.SplitSeq(string(r.Body), "\n") {
		if id, ok := strings.CutPrefix(line, "id:"); ok {
			ids = append(ids, strings.TrimSpace(id))
		}
	}
	if len(ids) < 3 || !strings.Contains(string(r.Body), `"done after 2 steps"`) {
		t.Fatalf("response stream without event ids or result:\n%s", r.Body)
	}
	resumeAfter := ids[1] // ids[0] primes the stream; ids[1] is the first progress

	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, tg.MCP, nil)
	for k, v := range sessionHeader(sid) {
		req.Header[k] = v
	}
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set("Last-Event-ID", resumeAfter)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("resume: %d %s", resp.StatusCode, b)
	}
	var replayed strings.Builder
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		replayed.WriteString(sc.Text() + "\n")
		if strings.Contains(sc.Text(), `"done after 2 steps"`) {
			break
		}
	}
	got := replayed.String()
	if !strings.Contains(got, `"done after 2 steps"`) || !strings.Contains(got, `"progress":2`) {
		t.Errorf("replay after %s lacks the later events:\n%s", resumeAfter, got)
	}
	if strings.Contains(got, `"progress":1,`) || strings.Contains(got, "id: "+resumeAfter+"\n") {
		t.Errorf("replay after %s repeats it:\n%s", resumeAfter, got)
	}
}

// TestWorkflowSession checks that Sag-Workflow-Id places calls in a
// workflow node of the session graph, under the caller's user session.
func TestWorkflowSession(t *testing.T) {
	t.Parallel()
	tg := frontGateway(t)
	sid := legacySession(t, tg.MCP)
	call := `{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"up__echo","arguments":{"text":"wf"}}}`
	if r := rawPost(t, tg.MCP, call, merge(sessionHeader(sid), http.Header{"Sag-Workflow-Id": {"release-42"}})); r.RPC.Error != nil {
		t.Fatalf("call with a workflow id: %s", r.Body)
	}
	var wsid, usid string
	for _, rec := range tg.audit(t, sid) {
		if rec.Tool == "up__echo" && rec.WSID != "" {
			wsid, usid = rec.WSID, rec.USID
		}
	}
	if wsid == "" {
		t.Fatal("no audit record with a WSID")
	}
	if recs := tg.audit(t, wsid); len(recs) != 1 || recs[0].MSID != sid {
		t.Errorf("audit by WSID: %+v, want the one call of session %s", recs, sid)
	}
	code, body := tg.adminDo(t, http.MethodGet, "/admin/sessions/"+wsid, nil)
	var node store.Session
	if code != http.StatusOK || json.Unmarshal(body, &node) != nil || node.Kind != store.KindWorkflow || node.Parent != usid {
		t.Errorf("GET /admin/sessions/%s: %d %s, want a workflow node under %s", wsid, code, body, usid)
	}
	// Its names are snake_case, like the rest of the admin API.
	var fields map[string]any
	if err := json.Unmarshal(body, &fields); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"id", "kind", "parent", "subject", "state", "created", "updated", "risk"} {
		if _, ok := fields[k]; !ok {
			t.Errorf("GET /admin/sessions/%s has no %q: %s", wsid, k, body)
		}
	}
	for k := range fields {
		if strings.ToLower(k) != k {
			t.Errorf("GET /admin/sessions/%s has the field %q, not snake_case: %s", wsid, k, body)
		}
	}
}

// TestMaxSessions checks that limits.max_sessions refuses new sessions with
// 503 once reached, and accepts them again when one ends.
func TestMaxSessions(t *testing.T) {
	t.Parallel()
	url, _ := httpFixture(t, "up", true)
	tg := startGateway(t, func(c *config.Config) {
		c.Upstreams = []config.Upstream{{Name: "up", URL: url}}
		c.Limits.MaxSessions = 2
	})
	first := legacySession(t, tg.MCP)
	legacySession(t, tg.MCP)
	init := `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"` + legacy + `","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}`
	if r := rawPost(t, tg.MCP, init, nil); r.Status != http.StatusServiceUnavailable || r.Header.Get("Retry-After") == "" {
		t.Fatalf("third session: %d %s, want 503 with Retry-After", r.Status, r.Body)
	}
	if r := rawPost(t, tg.MCP, `{"jsonrpc":"2.0","id":2,"method":"tools/list"}`, sessionHeader(first)); r.Status != http.StatusOK {
		t.Errorf("an open session refused at the cap: %d %s", r.Status, r.Body)
	}
	req, _ := http.NewRequest(http.MethodDelete, tg.MCP, nil)
	for k, v := range sessionHeader(first) {
		req.Header[k] = v
	}
	rawDo(t, req)
	eventually(t, "a new session after one ended", func() bool {
		return rawPost(t, tg.MCP, init, nil).Status == http.StatusOK
	})
}
