package server_test

import (
	"context"
	"encoding/hex"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/modelcontextprotocol/go-sdk/mcp"
	coltrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/sag-gateway/sag/identity"
	"github.com/sag-gateway/sag/server/config"
)

// collector is an OTLP/HTTP traces receiver: what the gateway's exporter
// sends, decoded from the wire.
type collector struct {
	mu    sync.Mutex
	spans []*tracepb.Span
}

func (c *collector) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	var req coltrace.ExportTraceServiceRequest
	if err != nil || r.URL.Path != "/v1/traces" || proto.Unmarshal(body, &req) != nil {
		http.Error(w, "not an OTLP traces export", http.StatusBadRequest)
		return
	}
	c.mu.Lock()
	for _, rs := range req.ResourceSpans {
		for _, ss := range rs.ScopeSpans {
			c.spans = append(c.spans, ss.Spans...)
		}
	}
	c.mu.Unlock()
	w.Header().Set("Content-Type", "application/x-protobuf")
	b, _ := proto.Marshal(&coltrace.ExportTraceServiceResponse{})
	w.Write(b)
}

func (c *collector) named(name string) []*tracepb.Span {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*tracepb.Span
	for _, s := range c.spans {
		if s.Name == name {
			out = append(out, s)
		}
	}
	return out
}

func attr(s *tracepb.Span, key string) string {
	for _, kv := range s.Attributes {
		if kv.Key == key {
			return kv.Value.GetStringValue()
		}
	}
	return ""
}

// TestTraces: with traces on, a tools/call whose _meta carries a W3C trace
// context is one span of that trace (MCP semantic conventions), with a
// child span per pipeline step, exported over OTLP/HTTP; the upstream gets
// the trace context of the gateway's forward span in its _meta.
func TestTraces(t *testing.T) {
	col := &collector{}
	srv := httptest.NewServer(col)
	t.Cleanup(srv.Close)
	up, _ := httpFixture(t, "fx", false)
	tg := startGateway(t, func(c *config.Config) {
		c.Traces.OTLPEndpoint = srv.URL + "/v1/traces"
		c.Upstreams = []config.Upstream{{Name: "fx", URL: up}}
		allowAll(t, c)
	})
	alice := newAgent(t, tg, identity.Claims{Subject: "alice"})
	cs := alice.connect(t, tg.MCP)
	const traceID, parentID = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	params := &mcp.CallToolParams{Name: "fx__whoami", Arguments: map[string]any{}}
	params.SetMeta(map[string]any{"traceparent": "00-" + traceID + "-" + parentID + "-01"})
	res, err := cs.CallTool(context.Background(), params)
	if err != nil || res.IsError {
		t.Fatalf("whoami: %v %+v", err, res)
	}
	seen := toolText(res)
	if err := tg.stop(); err != nil { // flushes the exporter
		t.Fatal(err)
	}
	calls := col.named("tools/call fx__whoami")
	if len(calls) != 1 {
		t.Fatalf("%d spans of the call; all: %d", len(calls), len(col.spans))
	}
	call := calls[0]
	if hex.EncodeToString(call.TraceId) != traceID || hex.EncodeToString(call.ParentSpanId) != parentID || call.Kind != tracepb.Span_SPAN_KIND_SERVER {
		t.Errorf("the call's span: trace %x parent %x kind %v; want the caller's trace and span", call.TraceId, call.ParentSpanId, call.Kind)
	}
	for key, want := range map[string]string{"mcp.method.name": "tools/call", "gen_ai.tool.name": "fx__whoami", "gen_ai.operation.name": "execute_tool", "sag.decision": "allow", "sag.upstream": "fx"} {
		if got := attr(call, key); got != want {
			t.Errorf("attribute %s = %q, want %q", key, got, want)
		}
	}
	var forward *tracepb.Span
	for _, step := range []string{"session", "authorize", "validate", "credentials", "forward", "output", "audit"} {
		spans := col.named("sag." + step)
		var mine *tracepb.Span
		for _, s := range spans {
			if string(s.ParentSpanId) == string(call.SpanId) {
				mine = s
			}
		}
		if mine == nil {
			t.Errorf("no span sag.%s under the call", step)
			continue
		}
		if step == "forward" {
			forward = mine
		}
	}
	// The upstream continues the trace from the forward step.
	if forward != nil {
		want := "00-" + traceID + "-" + hex.EncodeToString(forward.SpanId) + "-01"
		if !strings.Contains(seen, `"traceparent":"`+want+`"`) {
			t.Errorf("the upstream saw %s, want traceparent %s", seen, want)
		}
	}
}
