package pipeline

import (
	"context"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// The pipeline's traces: one span per call, named as the MCP semantic
// conventions name a request ("{mcp.method.name} {target}"), its parent
// the caller's trace context when the channel found one, and a child span
// per step ("sag.authorize", …, "sag.audit").

// Without a Tracer none of this runs: a call costs nothing more.

// Code names, as the spans' error.type.
var codeNames = [...]string{
	CodeInternal: "internal", CodeNotFound: "not_found", CodeInvalidParams: "invalid_params",
	CodeInvalidRequest: "invalid_request", CodeRevoked: "revoked", CodeDenied: "denied",
	CodeRateLimited: "rate_limited", CodeConsent: "consent", CodeUnavailable: "unavailable",
	CodeUpstream: "upstream", CodePassThrough: "upstream_error", CodeCancelled: "cancelled",
}

// startCall starts the call's span.
func (r *run) startCall(ctx context.Context) context.Context {
	if r.p.Tracer == nil {
		return ctx
	}
	c := r.c
	method := r.rec.Method
	name := method
	if c.Kind != List && c.Name != "" {
		name += " " + c.Name
	}
	attrs := []attribute.KeyValue{attribute.String("mcp.method.name", method), attribute.String("sag.channel", string(c.Channel))}
	if c.Kind == ToolCall {
		attrs = append(attrs, attribute.String("gen_ai.operation.name", "execute_tool"), attribute.String("gen_ai.tool.name", c.Name))
	}
	if c.ProtocolSession != "" {
		attrs = append(attrs, attribute.String("mcp.session.id", c.ProtocolSession))
	}
	ctx, r.span = r.p.Tracer.Start(ctx, name, trace.WithSpanKind(trace.SpanKindServer), trace.WithAttributes(attrs...))
	return ctx
}

// step ends the previous step's span and starts the span of the next one,
// a child of the call's; the returned context is for what the step calls.
func (r *run) step(ctx context.Context, name string) context.Context {
	if r.span == nil {
		return ctx
	}
	r.endStep()
	kind := trace.SpanKindInternal
	if name == "forward" {
		kind = trace.SpanKindClient
	}
	ctx, r.cur = r.p.Tracer.Start(trace.ContextWithSpan(ctx, r.span), "sag."+name, trace.WithSpanKind(kind))
	return ctx
}

func (r *run) endStep() {
	if r.cur != nil {
		r.cur.End()
		r.cur = nil
	}
}

// endCall ends the call's span with how the call ended.
func (r *run) endCall(out Outcome) {
	if r.span == nil {
		return
	}
	r.endStep()
	s := r.span
	s.SetAttributes(attribute.String("sag.decision", r.rec.Decision))
	if r.rec.Upstream != "" {
		s.SetAttributes(attribute.String("sag.upstream", r.rec.Upstream))
	}
	if r.rec.AllowListMatch != "" {
		s.SetAttributes(attribute.String("sag.rule", r.rec.AllowListMatch))
	}
	switch {
	case out.Err != nil:
		s.SetAttributes(attribute.String("error.type", codeNames[out.Err.Code]))
		s.SetStatus(codes.Error, out.Err.Message)
	case out.ToolError != "":
		s.SetAttributes(attribute.String("error.type", "tool_error"))
		s.SetStatus(codes.Error, out.ToolError)
	}
	s.End()
}
