package server_test

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"

	mcpgo "github.com/mark3labs/mcp-go/mcp"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/sag-gateway/sag/fixtures"
	"github.com/sag-gateway/sag/server"
	"github.com/sag-gateway/sag/server/config"
)

// TestNaming registers two upstreams that offer the same tools, "a" in the
// config and "b" through the admin API, under each naming mode, and checks
// the names clients see, the conflicts reported for b and which upstream
// serves a shared name.
func TestNaming(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name     string
		prefix   string // the gateway's naming mode
		bPrefix  string // b's own override
		want     []string
		absent   []string
		conflict bool   // b's registration reports conflicts
		echo     string // the name that calls echo, and the upstream serving it
		echoUp   string
	}{
		{name: "always", prefix: config.PrefixAlways,
			want: []string{"a__echo", "b__echo", "a__add", "b__add"}, absent: []string{"echo", "add"},
			echo: "b__echo", echoUp: "b"},
		{name: "none", prefix: config.PrefixNone,
			want: []string{"echo", "add", "slow"}, absent: []string{"a__echo", "b__echo"},
			conflict: true, echo: "echo", echoUp: "a"},
		{name: "none with b always", prefix: config.PrefixNone, bPrefix: "always",
			want: []string{"echo", "b__echo", "add", "b__add"}, absent: []string{"a__echo"},
			echo: "b__echo", echoUp: "b"},
		{name: "conditional", prefix: config.PrefixConditional,
			want: []string{"a__echo", "b__echo"}, absent: []string{"echo"},
			echo: "a__echo", echoUp: "a"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			aURL, aFix := httpFixture(t, "a", true)
			bURL, _ := httpFixture(t, "b", true)
			tg := startGateway(t, func(c *config.Config) {
				c.Prefix = tc.prefix
				c.Upstreams = []config.Upstream{{Name: "a", URL: aURL}}
			})
			rep := tg.addUpstream(t, server.UpstreamRequest{Name: "b", URL: bURL, Prefix: tc.bPrefix})
			if tc.conflict {
				want := "tool echo from upstream b left out: name already taken by upstream a"
				if !slices.Contains(rep.Conflicts, want) {
					t.Errorf("conflicts of b = %q, want to contain %q", rep.Conflicts, want)
				}
				if v := metricValue(tg.metrics(t), "sag_catalog_conflicts"); v == "" || v == "0" {
					t.Errorf("sag_catalog_conflicts = %q, want the number of conflicts", v)
				}
			} else {
				for _, c := range rep.Conflicts {
					if strings.HasPrefix(c, "tool ") || strings.HasPrefix(c, "prompt ") {
						t.Errorf("unexpected conflict: %q", c)
					}
				}
			}
			// Resources keep their URIs: the earlier upstream serves a shared
			// one and the later one's is reported.
			if want := "resource fixture://readme from upstream b left out: already served by upstream a"; !slices.Contains(rep.Conflicts, want) {
				t.Errorf("conflicts of b = %q, want to contain %q", rep.Conflicts, want)
			}

			cs := connect(t, tg.MCP, legacy, nil)
			tools := toolNames(t, cs)
			for _, n := range tc.want {
				if tools[n] == nil {
					t.Errorf("tool %s missing; have %v", n, keys(tools))
				}
			}
			for _, n := range tc.absent {
				if tools[n] != nil {
					t.Errorf("tool %s listed", n)
				}
			}

			res := callTool(t, cs, tc.echo, map[string]any{"text": "who"})
			if res.IsError || toolText(res) != "who" {
				t.Fatalf("%s = %q (isError %v)", tc.echo, toolText(res), res.IsError)
			}
			var up string
			for _, rec := range tg.audit(t, "") {
				if rec.Tool == tc.echo {
					up = rec.Upstream
					break
				}
			}
			if up != tc.echoUp {
				t.Errorf("%s was served by upstream %q, want %q", tc.echo, up, tc.echoUp)
			}

			ctx, cancel := context.WithTimeout(context.Background(), waitFor)
			defer cancel()
			rr, err := cs.ReadResource(ctx, &mcp.ReadResourceParams{URI: "fixture://readme"})
			if err != nil || len(rr.Contents) == 0 || rr.Contents[0].Text != "hello from a" {
				t.Errorf("fixture://readme = %+v, %v; want a's", rr, err)
			}

			if tc.prefix == config.PrefixConditional {
				// A name only a offers is not prefixed.
				aFix.SetExtraTool(true)
				eventually(t, "bare tool extra", func() bool { return toolNames(t, cs)["extra"] != nil })
				if res := callTool(t, cs, "extra", map[string]any{}); res.IsError || toolText(res) != "extra" {
					t.Errorf("extra = %q (isError %v)", toolText(res), res.IsError)
				}
			}
		})
	}
}

// TestHostileDefinitions registers an upstream whose tools the gateway cannot
// serve as they are: a non-object input schema (the SDK would panic) and a
// name outside the MCP alphabet. The gateway stays up, leaves exactly those out and
// reports them; the upstream's good tools work.
func TestHostileDefinitions(t *testing.T) {
	t.Parallel()
	f := fixtures.NewServer(fixtures.Options{Name: "bad"})
	for name, schema := range map[string]string{
		"array_schema": `{"type":"array"}`,
		"bad name!":    `{"type":"object"}`,
	} {
		f.MCPServer().AddTool(mcpgo.NewToolWithRawSchema(name, "hostile", json.RawMessage(schema)),
			func(context.Context, mcpgo.CallToolRequest) (*mcpgo.CallToolResult, error) {
				return mcpgo.NewToolResultText("should not be reachable"), nil
			})
	}
	url, stop, err := f.StartHTTP(false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	tg := startGateway(t, nil)
	rep := tg.addUpstream(t, server.UpstreamRequest{Name: "bad", URL: url})
	if len(rep.Conflicts) < 2 {
		t.Errorf("conflicts %q, want the array schema and the bad name reported", rep.Conflicts)
	}
	cs := connect(t, tg.MCP, legacy, nil)
	tools := toolNames(t, cs)
	for _, name := range []string{"bad__array_schema", "bad__bad name!"} {
		if _, ok := tools[name]; ok {
			t.Errorf("%s is listed", name)
		}
	}
	if res := callTool(t, cs, "bad__echo", map[string]any{"text": "still up"}); toolText(res) != "still up" {
		t.Errorf("echo = %q after hostile definitions", toolText(res))
	}
}
