package server

import (
	"context"
	"net/http"

	"github.com/modelcontextprotocol/go-sdk/mcp"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/sag-gateway/sag/server/config"
)

// tracing is the gateway's OpenTelemetry traces: off (nil provider) unless
// traces.otlp_endpoint names a collector.
type tracing struct {
	provider *sdktrace.TracerProvider
}

// w3c reads and writes W3C trace context (traceparent, tracestate).
var w3c = propagation.TraceContext{}

func newTracing(ctx context.Context, cfg *config.Config, version string) (*tracing, error) {
	if cfg.Traces.OTLPEndpoint == "" {
		return &tracing{}, nil
	}
	exp, err := otlptracehttp.New(ctx, otlptracehttp.WithEndpointURL(cfg.Traces.OTLPEndpoint))
	if err != nil {
		return nil, err
	}
	res := resource.NewWithAttributes(semconv.SchemaURL, semconv.ServiceName("sag"), semconv.ServiceVersion(version))
	return &tracing{provider: sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))}, nil
}

// tracer is the pipeline's tracer, nil when traces are off.
func (t *tracing) tracer() trace.Tracer {
	if t.provider == nil {
		return nil
	}
	return t.provider.Tracer("github.com/sag-gateway/sag")
}

// close sends what is buffered and stops.
func (t *tracing) close(ctx context.Context) error {
	if t.provider == nil {
		return nil
	}
	return t.provider.Shutdown(ctx)
}

// headerContext takes the caller's trace context from the HTTP traceparent
// header, when traces are on.
func (t *tracing) headerContext(next http.Handler) http.Handler {
	if t.provider == nil {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		next.ServeHTTP(w, r.WithContext(w3c.Extract(r.Context(), propagation.HeaderCarrier(r.Header))))
	})
}

// mcpContext takes the caller's trace context from an MCP request: its
// params' _meta (traceparent, tracestate), else its HTTP headers.
func (t *tracing) mcpContext(ctx context.Context, req mcp.Request) context.Context {
	if t.provider == nil {
		return ctx
	}
	if p, ok := req.GetParams().(interface{ GetMeta() map[string]any }); ok {
		if tp, _ := p.GetMeta()["traceparent"].(string); tp != "" {
			ts, _ := p.GetMeta()["tracestate"].(string)
			return w3c.Extract(ctx, propagation.MapCarrier{"traceparent": tp, "tracestate": ts})
		}
	}
	if extra := req.GetExtra(); extra != nil && extra.Header != nil {
		return w3c.Extract(ctx, propagation.HeaderCarrier(extra.Header))
	}
	return ctx
}
