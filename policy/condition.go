package policy

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"cel.dev/cel-go/cel"

	"github.com/sag-gateway/sag/identity"
)

// Conditions are CEL expressions over these variables:
//
//	user     map: sub, iss, groups, scopes, client_id, claims (every token claim)
//	agent    string: the agent's SPIFFE ID ("" when unknown)
//	act      map or null: the token's actor chain ({sub, act: {...}})
//	session  map: usid, wsid, asid, msid, risk, counters
//	tool     map: name (the upstream's name for it), upstream, destructive
//	target   map: kind ("tool", "prompt" or "resource"), name (a resource's URI), upstream
//	upstream string
//	args     map: the call's arguments
//	time     timestamp: now
//
// for example `args.path.startsWith("/srv/public/") && "eng" in user.groups`.
func conditionEnv() (*cel.Env, error) {
	env, err := cel.NewEnv(
		cel.Variable("user", cel.MapType(cel.StringType, cel.DynType)),
		cel.Variable("agent", cel.StringType),
		cel.Variable("act", cel.DynType),
		cel.Variable("session", cel.MapType(cel.StringType, cel.DynType)),
		cel.Variable("tool", cel.MapType(cel.StringType, cel.DynType)),
		cel.Variable("target", cel.MapType(cel.StringType, cel.DynType)),
		cel.Variable("upstream", cel.StringType),
		cel.Variable("args", cel.MapType(cel.StringType, cel.DynType)),
		cel.Variable("time", cel.TimestampType),
	)
	if err != nil {
		return nil, fmt.Errorf("policy: CEL environment: %w", err)
	}
	return env, nil
}

// maxConditionCost bounds one evaluation (CEL's cost units), so that a
// condition cannot make a call expensive.
const maxConditionCost = 100_000

// compileCondition type-checks expr (it must be a boolean) and plans it once.
func compileCondition(env *cel.Env, expr string) (cel.Program, error) {
	ast, iss := env.Compile(expr)
	if iss.Err() != nil {
		return nil, iss.Err()
	}
	if ast.OutputType() != cel.BoolType {
		return nil, fmt.Errorf("want a boolean expression, got %s", ast.OutputType())
	}
	return env.Program(ast, cel.CostLimit(maxConditionCost), cel.InterruptCheckFrequency(100))
}

// conditionVars builds the activation of one call.
func conditionVars(req Request, now time.Time) map[string]any {
	p, t := req.Principal, req.Target
	var act any
	if p.Act != nil {
		b, _ := json.Marshal(p.Act)
		json.Unmarshal(b, &act)
	}
	args := req.Args
	if args == nil {
		args = map[string]any{}
	}
	counters := map[string]any{}
	for k, v := range req.Session.Counters {
		counters[k] = v
	}
	return map[string]any{
		"user": map[string]any{
			"sub": p.User, "iss": p.Issuer, "client_id": p.ClientID,
			"groups": nonNil(p.Groups), "scopes": nonNil(p.Scopes), "claims": claimsOf(p),
		},
		"agent": p.Agent,
		"act":   act,
		"session": map[string]any{
			"usid": req.Session.USID, "wsid": req.Session.WSID, "asid": req.Session.ASID, "msid": req.Session.MSID,
			"risk": req.Session.Risk, "counters": counters,
		},
		"tool":     map[string]any{"name": t.Name, "upstream": t.Upstream, "destructive": t.Destructive},
		"target":   map[string]any{"kind": t.Kind.String(), "name": t.Name, "upstream": t.Upstream},
		"upstream": t.Upstream,
		"args":     args,
		"time":     now,
	}
}

func claimsOf(p identity.Principal) map[string]any {
	if p.Claims == nil {
		return map[string]any{}
	}
	return p.Claims
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// evalCondition runs a condition. An error (a missing argument, a wrong
// type, the cost limit) counts as false: the rule does not apply.
func evalCondition(ctx context.Context, prg cel.Program, vars map[string]any) (bool, error) {
	out, _, err := prg.ContextEval(ctx, vars)
	if err != nil {
		return false, err
	}
	b, ok := out.Value().(bool)
	if !ok {
		return false, errNotBool
	}
	return b, nil
}
