package server

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"reflect"
	"testing"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// TestAddContainsSDKPanics checks that a definition the SDK refuses with a
// panic (here an x-mcp-header on an object property, which mcp-go upstreams
// cannot even serve) is left out instead of taking the gateway down, and
// that the earlier, valid definition of the same tool is withdrawn rather
// than served stale.
func TestAddContainsSDKPanics(t *testing.T) {
	f := &front{gw: &Gateway{log: slog.New(slog.DiscardHandler)}}
	srv := mcp.NewServer(&mcp.Implementation{Name: "t"}, nil)
	handler := func(context.Context, *mcp.CallToolRequest) (*mcp.CallToolResult, error) { return nil, nil }
	srv.AddTool(&mcp.Tool{Name: "x", InputSchema: map[string]any{"type": "object"}}, handler)
	have := map[string][]byte{"x": []byte("{}")}

	f.add("tool", "x", have, func() {
		srv.AddTool(&mcp.Tool{Name: "x", InputSchema: map[string]any{
			"type":       "object",
			"properties": map[string]any{"o": map[string]any{"type": "object", "x-mcp-header": "X-Object"}},
		}}, handler)
	}, func() { srv.RemoveTools("x") })

	if _, ok := have["x"]; ok {
		t.Error("a refused definition stays recorded as served; it would never be retried")
	}
	ct, st := mcp.NewInMemoryTransports()
	ctx := context.Background()
	ss, err := srv.Connect(ctx, st, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ss.Close()
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "c"}, nil).Connect(ctx, ct, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	res, err := cs.ListTools(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Tools) != 0 {
		t.Errorf("tools %v: the earlier definition of x is still served", res.Tools)
	}
}

// FuzzTightenTool: tightening any upstream schema with any rule schema never
// panics, never changes the catalog's definition, and keeps the upstream's
// schema with the rule's added under allOf.
func FuzzTightenTool(f *testing.F) {
	f.Add([]byte(`{"type":"object","properties":{"a":{"type":"string"}}}`), []byte(`{"properties":{"a":{"maxLength":3}}}`))
	f.Add([]byte(`{"type":"object","allOf":[{"required":["a"]}]}`), []byte(`{"required":["b"]}`))
	f.Add([]byte(`null`), []byte(`{}`))
	f.Add([]byte(`[1,2]`), []byte(`not json`))
	f.Fuzz(func(t *testing.T, upstream, rule []byte) {
		var in any
		if json.Unmarshal(upstream, &in) != nil {
			return
		}
		def := &mcp.Tool{Name: "t", InputSchema: in}
		before, _ := json.Marshal(def)
		out := tightenTool(def, rule)
		if after, _ := json.Marshal(def); string(after) != string(before) {
			t.Fatalf("the catalog definition changed: %s → %s", before, after)
		}
		if !json.Valid(rule) {
			if out != def {
				t.Fatal("an invalid rule schema changed the definition")
			}
			return
		}
		b, err := json.Marshal(out.InputSchema)
		if err != nil {
			t.Fatal(err)
		}
		var got map[string]any
		if err := json.Unmarshal(b, &got); err != nil {
			t.Fatalf("tightened schema is not an object: %s", b)
		}
		all, _ := got["allOf"].([]any)
		if len(all) == 0 {
			t.Fatalf("no allOf in %s", b)
		}
	})
}

// FuzzCheckJSONRPC: any body either goes on to the SDK unchanged, or is
// answered with a JSON-RPC error (-32700 or -32601) that is itself JSON.
func FuzzCheckJSONRPC(f *testing.F) {
	for _, s := range []string{
		`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}}`,
		`{"jsonrpc":"2.0","id":"a","method":"nope"}`,
		`{"jsonrpc":"2.0","method":"notifications/initialized"}`,
		`[{"jsonrpc":"2.0","id":1,"method":"ping"}]`,
		`{"jsonrpc":"2.0","id":1,"result":{}}`,
		`{"id":1,"method":null}`, `{`, ``, `null`, "\xff",
	} {
		f.Add([]byte(s), false)
	}
	f.Fuzz(func(t *testing.T, body []byte, modern bool) {
		r := httptest.NewRequest(http.MethodPost, "/mcp", bytes.NewReader(body))
		if modern {
			r.Header.Set("Mcp-Protocol-Version", statelessVersion)
		}
		w := httptest.NewRecorder()
		if msg, ok := checkJSONRPC(w, r, 1<<20); ok {
			if msg != nil && (msg.Method == nil || !methods[*msg.Method] || len(msg.ID) == 0) {
				t.Fatalf("an envelope went on that is not a known request: %q", body)
			}
			got, _ := io.ReadAll(r.Body)
			if !bytes.Equal(got, body) {
				t.Fatalf("the body went on changed: %q → %q", body, got)
			}
			return
		}
		var resp struct {
			JSONRPC string
			Error   struct{ Code int64 }
		}
		if err := json.Unmarshal(w.Body.Bytes(), &resp); err != nil || resp.JSONRPC != "2.0" ||
			(resp.Error.Code != -32700 && resp.Error.Code != -32601) {
			t.Fatalf("refused %q with %d %s", body, w.Code, w.Body.Bytes())
		}
	})
}

// FuzzFastParams: the fast path takes a tools/call's params only when they
// hold nothing but a name, arguments and a _meta that asks for neither
// progress nor a log level.
func FuzzFastParams(f *testing.F) {
	for _, s := range []string{
		`{"name":"a__b","arguments":{"x":1}}`, `{"name":"a","_meta":{"progressToken":1}}`,
		`{"name":"a","task":{}}`, `{"name":1}`, `{"name":"a","_meta":[]}`, `null`, `{"name":"a","_meta":{"traceparent":"00-x"}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		name, _, meta, ok := fastParams(raw)
		if !ok {
			return
		}
		var all map[string]json.RawMessage
		if err := json.Unmarshal(raw, &all); err != nil {
			t.Fatalf("taken but not an object: %q", raw)
		}
		var n string
		if json.Unmarshal(all["name"], &n) != nil || n != name {
			t.Fatalf("name %q from %q", name, raw)
		}
		for k := range all {
			if k != "name" && k != "arguments" && k != "_meta" {
				t.Fatalf("taken with %q: %q", k, raw)
			}
		}
		if _, has := meta["progressToken"]; has {
			t.Fatalf("taken with a progress token: %q", raw)
		}
	})
}

// FuzzStatelessResult: the member-level rewrite of a result for a
// 2026-07-28 client says what decoding it, setting its result type and
// adding the server's identity to its _meta (unless named there), then
// encoding it, says; a _meta that is not an object is refused.
func FuzzStatelessResult(f *testing.F) {
	for _, s := range []string{
		`{"content":[]}`, `{"content":[],"_meta":{"k":1}}`, `{"_meta":{}}`, `{"_meta":null,"isError":true}`,
		`{"resultType":"input_required","content":[]}`, `{"_meta":{"` + mcp.MetaKeyServerInfo + `":{"name":"x"}}}`,
		`{"_meta":"x"}`, `{"_meta":{"a":1},"_meta":{"b":2}}`, ` { "content" : [ ] , "_meta" : { } } `, `[]`,
	} {
		f.Add([]byte(s))
	}
	fr := &front{serverInfo: []byte(`{"name":"sag","version":"test"}`)}
	decode := func(b []byte) (map[string]any, error) {
		d := json.NewDecoder(bytes.NewReader(b))
		d.UseNumber()
		var m map[string]any
		return m, d.Decode(&m)
	}
	f.Fuzz(func(t *testing.T, res []byte) {
		in, err := decode(res)
		if err != nil || in == nil || !json.Valid(res) {
			return // the forwarder hands over valid result objects only
		}
		out, err := fr.statelessResult(res)
		meta, isObject := in["_meta"].(map[string]any)
		if in["_meta"] != nil && !isObject {
			if err == nil {
				t.Fatalf("a _meta that is not an object was taken: %s → %s", res, out)
			}
			return
		}
		if err != nil {
			t.Fatalf("%s: %v", res, err)
		}
		if meta == nil {
			meta = map[string]any{}
		}
		if _, named := meta[mcp.MetaKeyServerInfo]; !named {
			meta[mcp.MetaKeyServerInfo] = map[string]any{"name": "sag", "version": "test"}
		}
		in["_meta"], in["resultType"] = meta, "complete"
		got, err := decode(out)
		if err != nil || !json.Valid(out) {
			t.Fatalf("%s → invalid %s", res, out)
		}
		if !reflect.DeepEqual(got, in) {
			t.Fatalf("%s\n→ %s\nwant the same as %v", res, out, in)
		}
	})
}
