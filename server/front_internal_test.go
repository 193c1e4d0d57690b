package server

import (
	"context"
	"encoding/json"
	"log/slog"
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
