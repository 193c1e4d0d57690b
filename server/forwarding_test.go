package server_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/sag-gateway/sag/server"
	"github.com/sag-gateway/sag/server/config"
)

// upstreamCase puts one fixture upstream named "up" behind a gateway on one
// transport.
type upstreamCase struct {
	name string
	// processPerConnection: every upstream connection is a separate server
	// with its own state (stdio), so a tool-list change made through a
	// client's connection is not the control session's.
	processPerConnection bool
	// start returns the gateway with the upstream registered.
	start func(t *testing.T) *testGateway
}

// fixtureTools are the tools every fixture offers.
var fixtureTools = []string{"echo", "add", "slow", "ask", "sample", "delete_everything", "whoami", "fail", "log", "toggle_extra"}

// configUpstream starts a gateway with the upstream in its config.
func configUpstream(url string) func(t *testing.T) *testGateway {
	return func(t *testing.T) *testGateway {
		return startGateway(t, func(c *config.Config) {
			c.Upstreams = []config.Upstream{{Name: "up", URL: url}}
		})
	}
}

var upstreamCases = []upstreamCase{
	{name: "http-session", start: func(t *testing.T) *testGateway {
		url, _ := httpFixture(t, "up", false)
		tg := startGateway(t, nil)
		rep := tg.addUpstream(t, server.UpstreamRequest{Name: "up", URL: url, ProtocolVersion: legacy})
		if !rep.Connected || rep.Negotiated != legacy {
			t.Fatalf("upstream connected=%v protocol=%q (%s), want connected %s", rep.Connected, rep.Negotiated, rep.ConnectError, legacy)
		}
		return tg
	}},
	{name: "http-stateless", start: func(t *testing.T) *testGateway {
		url, _ := httpFixture(t, "up", true)
		return configUpstream(url)(t)
	}},
	{name: "sse", start: func(t *testing.T) *testGateway {
		return configUpstream(sseFixture(t, "up"))(t)
	}},
	{name: "stdio", processPerConnection: true, start: func(t *testing.T) *testGateway {
		return configUpstream(stdioFixture(t, "up"))(t)
	}},
}

// TestForwarding drives every forwarded feature through the gateway, for
// each upstream transport and each client generation.
func TestForwarding(t *testing.T) {
	t.Parallel()
	for _, uc := range upstreamCases {
		t.Run(uc.name, func(t *testing.T) {
			t.Parallel()
			tg := uc.start(t)
			for _, version := range []string{legacy, modern} {
				t.Run(version, func(t *testing.T) {
					ev := newClientEvents()
					answer := "answer-" + uc.name + "-" + version
					cs := connect(t, tg.MCP, version, clientOptions(ev, answer))
					exercise(t, uc, cs, ev, version, answer)
				})
			}
		})
	}
}

func exercise(t *testing.T, uc upstreamCase, cs *mcp.ClientSession, ev *clientEvents, version, answer string) {
	ctx := context.Background()

	t.Run("tools/list prefixed", func(t *testing.T) {
		tools := toolNames(t, cs)
		for _, name := range fixtureTools {
			if tools["up__"+name] == nil {
				t.Errorf("tool up__%s missing; have %v", name, keys(tools))
			}
			if tools[name] != nil {
				t.Errorf("unprefixed tool %s listed", name)
			}
		}
		if tool := tools["up__echo"]; tool != nil {
			schema, _ := json.Marshal(tool.InputSchema)
			if !strings.Contains(string(schema), `"text"`) {
				t.Errorf("up__echo inputSchema %s lost its properties", schema)
			}
		}
	})

	t.Run("echo", func(t *testing.T) {
		res := callTool(t, cs, "up__echo", map[string]any{"text": "hello " + version})
		if res.IsError || toolText(res) != "hello "+version {
			t.Errorf("echo = %q (isError %v)", toolText(res), res.IsError)
		}
	})

	t.Run("add structuredContent", func(t *testing.T) {
		res := callTool(t, cs, "up__add", map[string]any{"a": 2, "b": 3.5})
		if res.IsError {
			t.Fatalf("add: tool error %q", toolText(res))
		}
		b, _ := json.Marshal(res.StructuredContent)
		var sc struct {
			Sum *float64 `json:"sum"`
		}
		if err := json.Unmarshal(b, &sc); err != nil || sc.Sum == nil || *sc.Sum != 5.5 {
			t.Errorf("structuredContent = %s, want {\"sum\":5.5}", b)
		}
	})

	t.Run("fail isError", func(t *testing.T) {
		res := callTool(t, cs, "up__fail", map[string]any{})
		if !res.IsError || !strings.Contains(toolText(res), "fixture failure") {
			t.Errorf("fail = %q (isError %v), want the upstream's tool error", toolText(res), res.IsError)
		}
	})

	t.Run("progress", func(t *testing.T) {
		token := "tok-" + version
		p := &mcp.CallToolParams{Name: "up__slow", Arguments: map[string]any{"steps": 3, "delay_ms": 20}}
		p.SetProgressToken(token)
		cctx, cancel := context.WithTimeout(ctx, waitFor)
		defer cancel()
		res, err := cs.CallTool(cctx, p)
		if err != nil || res.IsError {
			t.Fatalf("slow: %v %v", err, res)
		}
		eventually(t, "a progress notification", func() bool { return len(ev.progressSnapshot()) > 0 })
		for _, pn := range ev.progressSnapshot() {
			if pn.ProgressToken != token {
				t.Errorf("progress under token %v (%T), want %q", pn.ProgressToken, pn.ProgressToken, token)
			}
		}
	})

	t.Run("elicitation", func(t *testing.T) {
		res := callTool(t, cs, "up__ask", map[string]any{"question": "name?"})
		if res.IsError || toolText(res) != "answer: "+answer {
			t.Errorf("ask = %q (isError %v), want %q", toolText(res), res.IsError, "answer: "+answer)
		}
	})

	t.Run("sampling", func(t *testing.T) {
		res := callTool(t, cs, "up__sample", map[string]any{"prompt": "hi"})
		if res.IsError || toolText(res) != "model said: model: "+answer {
			t.Errorf("sample = %q (isError %v), want %q", toolText(res), res.IsError, "model said: model: "+answer)
		}
	})

	t.Run("logging", func(t *testing.T) {
		msg := "log message " + version
		p := &mcp.CallToolParams{Name: "up__log", Arguments: map[string]any{"message": msg}}
		if version >= modern {
			p.Meta = mcp.Meta{mcp.MetaKeyLogLevel: "info"}
		} else if err := cs.SetLoggingLevel(ctx, &mcp.SetLoggingLevelParams{Level: "info"}); err != nil {
			t.Fatalf("logging/setLevel: %v", err)
		}
		cctx, cancel := context.WithTimeout(ctx, waitFor)
		defer cancel()
		res, err := cs.CallTool(cctx, p)
		if err != nil || res.IsError {
			t.Fatalf("log: %v %v", err, res)
		}
		// The message is sent before the result; allow for delivery by
		// another goroutine, not for a lost message.
		eventually(t, "the log message", func() bool {
			for _, l := range ev.logSnapshot() {
				if b, _ := json.Marshal(l.Data); strings.Contains(string(b), msg) {
					return true
				}
			}
			return false
		})
	})

	t.Run("resources", func(t *testing.T) {
		cctx, cancel := context.WithTimeout(ctx, waitFor)
		defer cancel()
		found := false
		for r, err := range cs.Resources(cctx, nil) {
			if err != nil {
				t.Fatalf("resources/list: %v", err)
			}
			found = found || r.URI == "fixture://readme"
		}
		if !found {
			t.Error("fixture://readme not listed")
		}
		rr, err := cs.ReadResource(cctx, &mcp.ReadResourceParams{URI: "fixture://readme"})
		if err != nil || len(rr.Contents) == 0 || rr.Contents[0].Text != "hello from up" {
			t.Errorf("read fixture://readme = %+v, %v", rr, err)
		}
		rr, err = cs.ReadResource(cctx, &mcp.ReadResourceParams{URI: "fixture://items/7"})
		if err != nil || len(rr.Contents) == 0 || rr.Contents[0].Text != "item 7" {
			t.Errorf("read fixture://items/7 = %+v, %v", rr, err)
		}
		tmpl := false
		for rt, err := range cs.ResourceTemplates(cctx, nil) {
			if err != nil {
				t.Fatalf("resources/templates/list: %v", err)
			}
			tmpl = tmpl || rt.URITemplate == "fixture://items/{id}"
		}
		if !tmpl {
			t.Error("template fixture://items/{id} not listed")
		}
	})

	t.Run("prompts and completion", func(t *testing.T) {
		cctx, cancel := context.WithTimeout(ctx, waitFor)
		defer cancel()
		pr, err := cs.GetPrompt(cctx, &mcp.GetPromptParams{Name: "up__greet", Arguments: map[string]string{"name": "Ann"}})
		if err != nil {
			t.Fatalf("prompts/get up__greet: %v", err)
		}
		if len(pr.Messages) == 0 {
			t.Fatal("prompts/get: no messages")
		}
		if tc, ok := pr.Messages[0].Content.(*mcp.TextContent); !ok || tc.Text != "Hello, Ann!" {
			t.Errorf("greet message = %#v", pr.Messages[0].Content)
		}
		cr, err := cs.Complete(cctx, &mcp.CompleteParams{
			Ref:      &mcp.CompleteReference{Type: "ref/prompt", Name: "up__greet"},
			Argument: mcp.CompleteParamsArgument{Name: "name", Value: "Al"},
		})
		if err != nil {
			t.Fatalf("completion/complete: %v", err)
		}
		if got := strings.Join(cr.Completion.Values, ","); got != "Alice,Alicia" {
			t.Errorf("completion values = %q, want Alice,Alicia", got)
		}
	})

	// Last: it changes the upstream's tool list.
	t.Run("list_changed", func(t *testing.T) {
		if uc.processPerConnection {
			// Each stdio connection is a process of its own: toggle_extra
			// changes this client's process, while the catalog follows the
			// control session's process, which does not change.
			callTool(t, cs, "up__toggle_extra", map[string]any{"on": true})
			defer callTool(t, cs, "up__toggle_extra", map[string]any{"on": false})
			if toolNames(t, cs)["up__extra"] != nil {
				t.Error("up__extra listed: the catalog followed one client's stdio process")
			}
			return
		}
		drain(ev.toolsChanged)
		on := true
		if toolNames(t, cs)["up__extra"] != nil {
			on = false // the other client generation turned it on
		}
		res := callTool(t, cs, "up__toggle_extra", map[string]any{"on": on})
		if res.IsError {
			t.Fatalf("toggle_extra: %s", toolText(res))
		}
		select {
		case <-ev.toolsChanged:
		case <-time.After(waitFor):
			t.Fatal("no notifications/tools/list_changed")
		}
		eventually(t, fmt.Sprintf("up__extra listed=%v", on), func() bool {
			return (toolNames(t, cs)["up__extra"] != nil) == on
		})
		if on {
			if res := callTool(t, cs, "up__extra", map[string]any{}); res.IsError || toolText(res) != "extra" {
				t.Errorf("extra = %q (isError %v)", toolText(res), res.IsError)
			}
		}
	})
}

func drain(ch chan struct{}) {
	for {
		select {
		case <-ch:
		default:
			return
		}
	}
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

// barrier lets n parties wait for each other, each for at most a bound, so
// a misrouted request cannot deadlock a test.
type barrier struct {
	n       int
	mu      sync.Mutex
	arrived int
	all     chan struct{}
}

func newBarrier(n int) *barrier { return &barrier{n: n, all: make(chan struct{})} }

func (b *barrier) wait(bound time.Duration) {
	b.mu.Lock()
	b.arrived++
	if b.arrived == b.n {
		close(b.all)
	}
	b.mu.Unlock()
	select {
	case <-b.all:
	case <-time.After(bound):
	}
}

// TestPerSessionRouting runs elicitation and sampling from two sessions at
// once (each client's handler waits until the other's has been asked too,
// so the requests overlap); each must get its own client's answer.
func TestPerSessionRouting(t *testing.T) {
	t.Parallel()
	for _, uc := range upstreamCases {
		t.Run(uc.name, func(t *testing.T) {
			t.Parallel()
			tg := uc.start(t)
			for _, version := range []string{legacy, modern} {
				t.Run(version, func(t *testing.T) {
					const clients = 2
					asked, sampled := newBarrier(clients), newBarrier(clients)
					var wg sync.WaitGroup
					errs := make(chan error, clients*2)
					for i := range clients {
						answer := fmt.Sprintf("client-%d", i)
						opts := clientOptions(newClientEvents(), answer)
						elicit, sample := opts.ElicitationHandler, opts.CreateMessageHandler
						opts.ElicitationHandler = func(ctx context.Context, req *mcp.ElicitRequest) (*mcp.ElicitResult, error) {
							asked.wait(3 * time.Second)
							return elicit(ctx, req)
						}
						opts.CreateMessageHandler = func(ctx context.Context, req *mcp.CreateMessageRequest) (*mcp.CreateMessageResult, error) {
							sampled.wait(3 * time.Second)
							return sample(ctx, req)
						}
						cs := connect(t, tg.MCP, version, opts)
						wg.Go(func() {
							ctx, cancel := context.WithTimeout(context.Background(), waitFor)
							defer cancel()
							res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "up__ask", Arguments: map[string]any{"question": "who?"}})
							if err != nil {
								errs <- fmt.Errorf("%s ask: %v", answer, err)
							} else if got := toolText(res); got != "answer: "+answer {
								errs <- fmt.Errorf("%s ask = %q, want %q", answer, got, "answer: "+answer)
							}
							res, err = cs.CallTool(ctx, &mcp.CallToolParams{Name: "up__sample", Arguments: map[string]any{"prompt": "p"}})
							if err != nil {
								errs <- fmt.Errorf("%s sample: %v", answer, err)
							} else if got := toolText(res); got != "model said: model: "+answer {
								errs <- fmt.Errorf("%s sample = %q, want %q", answer, got, "model said: model: "+answer)
							}
						})
					}
					wg.Wait()
					close(errs)
					for err := range errs {
						t.Error(err)
					}
				})
			}
		})
	}
}

// TestParkedCallBinding drives the multi-round-trip bridge by hand: a
// stateless client's call to a session-based upstream that elicits comes
// back input_required; its requestState does not resume the call under
// another tool's name, and does resume it under its own.
func TestParkedCallBinding(t *testing.T) {
	t.Parallel()
	url, _ := httpFixture(t, "up", false)
	tg := startGateway(t, nil)
	tg.addUpstream(t, server.UpstreamRequest{Name: "up", URL: url, ProtocolVersion: legacy})
	c := mcp.NewClient(&mcp.Implementation{Name: "manual-mrtr", Version: "1"}, &mcp.ClientOptions{
		MultiRoundTrip: &mcp.MultiRoundTripOptions{Disabled: true},
		ElicitationHandler: func(context.Context, *mcp.ElicitRequest) (*mcp.ElicitResult, error) {
			return nil, fmt.Errorf("not used: the test answers by hand")
		},
	})
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	cs, err := c.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: tg.MCP}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "up__ask", Arguments: map[string]any{"question": "q?"}})
	if err != nil || !res.NeedsInput() || res.RequestState == "" || len(res.InputRequests) != 1 {
		t.Fatalf("up__ask: %v %+v, want input_required with a requestState", err, res)
	}
	answers := mcp.InputResponseMap{}
	for key := range res.InputRequests {
		answers[key] = &mcp.ElicitResult{Action: "accept", Content: map[string]any{"answer": "by hand"}}
	}
	_, err = cs.CallTool(ctx, &mcp.CallToolParams{Name: "up__echo", Arguments: map[string]any{"text": "x"}, RequestState: res.RequestState, InputResponses: answers})
	var rpc *jsonrpc.Error
	if !errors.As(err, &rpc) || rpc.Code != jsonrpc.CodeInvalidParams {
		t.Errorf("resuming under another tool: %v, want JSON-RPC %d", err, jsonrpc.CodeInvalidParams)
	}
	res, err = cs.CallTool(ctx, &mcp.CallToolParams{Name: "up__ask", Arguments: map[string]any{"question": "q?"}, RequestState: res.RequestState, InputResponses: answers})
	if err != nil || toolText(res) != "answer: by hand" {
		t.Errorf("resuming under its own tool: %v %q, want %q", err, toolText(res), "answer: by hand")
	}
}
