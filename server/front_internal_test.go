package server

import (
	"context"
	"log/slog"
	"testing"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// TestAddContainsSDKPanics checks that a definition the SDK refuses with a
// panic (here an x-mcp-header on an object property, which mcp-go upstreams
// cannot even serve) is left out instead of taking the gateway down.
func TestAddContainsSDKPanics(t *testing.T) {
	f := &front{gw: &Gateway{log: slog.New(slog.DiscardHandler)}}
	srv := mcp.NewServer(&mcp.Implementation{Name: "t"}, nil)
	have := map[string][]byte{"x": []byte("{}")}
	f.add("tool", "x", have, func() {
		srv.AddTool(&mcp.Tool{Name: "x", InputSchema: map[string]any{
			"type":       "object",
			"properties": map[string]any{"o": map[string]any{"type": "object", "x-mcp-header": "X-Object"}},
		}}, func(context.Context, *mcp.CallToolRequest) (*mcp.CallToolResult, error) { return nil, nil })
	})
	if _, ok := have["x"]; ok {
		t.Error("a refused definition stays recorded as served; it would never be retried")
	}
}
