package server

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/sag-gateway/sag/identity"
	"github.com/sag-gateway/sag/pipeline"
	"github.com/sag-gateway/sag/policy"
	"github.com/sag-gateway/sag/schemas"
	"github.com/sag-gateway/sag/upstreams"
)

// The pipeline's steps as the gateway implements them (pipeline/call.go
// declares them). Each reads the gateway's current state: the catalog, the
// policy snapshot, the upstream registry.

// steps implements pipeline.Catalog, Authorizer, Validator and Credentials
// over the gateway's components.
type steps struct{ g *Gateway }

var (
	_ pipeline.Catalog     = steps{}
	_ pipeline.Authorizer  = steps{}
	_ pipeline.Validator   = steps{}
	_ pipeline.Credentials = steps{}
)

// Resolve finds what a call names in the catalog. A quarantined tool is
// not offered.
func (s steps) Resolve(c *pipeline.Call) (pipeline.Target, bool) {
	cat := s.g.upstreams.Catalog()
	switch c.TargetKind() {
	case policy.KindTool:
		t, ok := cat.Tool(c.Name)
		if !ok || s.g.pins.Quarantined(t.Upstream, t.Original) {
			return pipeline.Target{}, false
		}
		return pipeline.Target{Target: policyTool(t), Entry: t}, true
	case policy.KindPrompt:
		p, ok := cat.Prompt(c.Name)
		if !ok {
			return pipeline.Target{}, false
		}
		return pipeline.Target{Target: policy.Target{Kind: policy.KindPrompt, Upstream: p.Upstream, Name: p.Original}, Entry: p}, true
	default:
		up, ok := cat.ResourceUpstream(c.Name)
		if !ok {
			return pipeline.Target{}, false
		}
		return pipeline.Target{Target: policy.Target{Kind: policy.KindResource, Upstream: up, Name: c.Name}}, true
	}
}

// policyTool describes a catalog tool to the policy engine.
func policyTool(t *upstreams.Tool) policy.Target {
	destructive, readOnly := false, false
	if a := t.Def.Annotations; a != nil {
		destructive = a.DestructiveHint != nil && *a.DestructiveHint
		readOnly = a.ReadOnlyHint
	}
	return policy.Target{Kind: policy.KindTool, Upstream: t.Upstream, Name: t.Original, Destructive: destructive, ReadOnly: readOnly}
}

// Authorize decides with the current policy.
func (s steps) Authorize(ctx context.Context, req policy.Request) policy.Decision {
	return s.g.policy.Load().engine.Authorize(ctx, req)
}

// Visible says which entries the current policy shows p, all by one
// snapshot.
func (s steps) Visible(p identity.Principal, entries []policy.Target, out []pipeline.Visibility) {
	eng := s.g.policy.Load().engine
	for i, t := range entries {
		out[i].Shown, out[i].Input = eng.Visible(p, t)
	}
}

// Arguments checks a tool's arguments against the upstream's inputSchema
// and the rule's, a prompt's against the rule's.
func (s steps) Arguments(t pipeline.Target, rule *schemas.Schema, args map[string]any) string {
	var v any = map[string]any{}
	if args != nil {
		v = args
	}
	var problems []string
	if tool, ok := t.Entry.(*upstreams.Tool); ok {
		if up := s.g.toolSchema(tool, false); up != nil {
			if err := up.Validate(v); err != nil {
				problems = append(problems, err.Error())
			}
		}
	}
	if rule != nil && t.Kind != policy.KindResource {
		if err := rule.Validate(v); err != nil {
			problems = append(problems, err.Error())
		}
	}
	if len(problems) == 0 {
		return ""
	}
	return "invalid arguments: " + strings.Join(problems, "; ")
}

// Output checks a tool result's structuredContent against the upstream's
// outputSchema and the rule's (MCP: a tool with an outputSchema must return
// conforming structured content). The pipeline does not ask about tool
// errors.
func (s steps) Output(t pipeline.Target, rule *schemas.Schema, result pipeline.Result) string {
	tool, _ := t.Entry.(*upstreams.Tool)
	var up *schemas.Schema
	if tool != nil {
		up = s.g.toolSchema(tool, true)
	}
	if up == nil && rule == nil {
		return ""
	}
	var res struct {
		StructuredContent json.RawMessage `json:"structuredContent"`
	}
	if result, err := result.Encoded(); err != nil || json.Unmarshal(result.JSON, &res) != nil {
		return "invalid result: not a tool result"
	}
	if len(res.StructuredContent) == 0 || string(res.StructuredContent) == "null" {
		return "invalid result: the tool's output schema requires structured content"
	}
	for _, sch := range []*schemas.Schema{up, rule} {
		if sch == nil {
			continue
		}
		if err := sch.ValidateJSON(res.StructuredContent); err != nil {
			return "invalid result: structuredContent: " + err.Error()
		}
	}
	return ""
}

// For mints (or takes from the cache) the token for the call's upstream:
// aud the upstream, sub the user, the agent and the gateway in act, bound
// to the gateway's key, hanging off the call's protocol session.
func (s steps) For(ctx context.Context, c *pipeline.Call, t pipeline.Target) (*identity.Credential, error) {
	o, ok := s.g.upstreams.OnBehalfOf(t.Upstream)
	if !ok {
		return nil, nil
	}
	o.Principal, o.Session = &c.Principal, c.Sessions.MSID
	return s.g.auth.minter.Credential(ctx, o)
}

// clock adapts a clock function to pipeline.Clock.
type clock func() time.Time

func (c clock) Now() time.Time { return c() }

// tightenTool returns a copy of def whose input schema also requires rule.
func tightenTool(def *mcp.Tool, rule json.RawMessage) *mcp.Tool {
	var schema map[string]any
	if b, err := json.Marshal(def.InputSchema); err != nil || json.Unmarshal(b, &schema) != nil || schema == nil {
		schema = map[string]any{"type": "object"}
	}
	var extra any
	if json.Unmarshal(rule, &extra) != nil {
		return def
	}
	all, _ := schema["allOf"].([]any)
	schema["allOf"] = append(all, extra)
	c := *def
	c.InputSchema = schema
	return &c
}

// toolSchema is the upstream's compiled inputSchema (output false) or
// outputSchema (output true) of t, nil when it has none or it does not
// compile (the upstream then answers for its own data). Catalog definitions
// are immutable, so each is compiled once.
func (g *Gateway) toolSchema(t *upstreams.Tool, output bool) *schemas.Schema {
	return g.toolSchemas.GetOrAdd(toolSchemaKey{t.Def, output}, func() *schemas.Schema {
		src := t.Def.InputSchema
		if output {
			src = t.Def.OutputSchema
		}
		if src == nil {
			return nil
		}
		raw, err := json.Marshal(src)
		if err != nil {
			return nil
		}
		s, _ := schemas.Compile(raw)
		return s
	})
}

type toolSchemaKey struct {
	def    *mcp.Tool
	output bool
}

// maxToolSchemas bounds the compiled input schemas kept.
const maxToolSchemas = 10_000

// upstreamLimited spends a token of the upstream's own rate limit (all
// callers together; a refusal is not the caller's fault). An upstream
// without a limit is never held back; a changed limit starts a new bucket.
func (g *Gateway) upstreamLimited(ctx context.Context, name string) error {
	spec, ok := g.upstreams.Spec(name)
	if !ok || spec.RateLimit == nil {
		return nil
	}
	l := spec.RateLimit
	wait, err := g.limiter.Take(ctx, "upstream\x00"+name, l.PerMinute, policy.Burst(l.PerMinute, l.Burst), time.Now())
	switch {
	case err != nil:
		g.log.Error("rate limit not checked; call refused", "upstream", name, "error", err)
		return &pipeline.Error{Code: pipeline.CodeUnavailable, Message: fmt.Sprintf("upstream %s: its rate limit cannot be checked right now; retry shortly", name)}
	case wait > 0:
		return &pipeline.Error{Code: pipeline.CodeRateLimited,
			Message: fmt.Sprintf("upstream %s is at its rate limit; retry after %d s", name, int(math.Ceil(wait.Seconds())))}
	}
	return nil
}
