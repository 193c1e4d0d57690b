package policy

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/sag-gateway/sag/identity"
)

// scaledEngine compiles one document of n rules over 100 upstreams: each
// rule names one tool exactly and one user, every tenth a glob of tools
// instead (issue 11: a decision's cost stays flat as the policy grows).
func scaledEngine(tb testing.TB, n int) *Engine {
	tb.Helper()
	var b strings.Builder
	b.WriteString("id: scale\nrules:\n")
	for i := range n {
		tools := fmt.Sprintf("[tool%d]", i)
		if i%10 == 9 {
			tools = fmt.Sprintf("[\"prefix%d_*\"]", i)
		}
		fmt.Fprintf(&b, "  - {id: r%d, upstream: up%d, tools: %s, principals: {users: [user%d]}, consent: never}\n", i, i%100, tools, i%50)
	}
	d, err := Parse("scale.yaml", []byte(b.String()))
	if err != nil {
		tb.Fatal(err)
	}
	e, err := NewEngine(Options{Documents: []*Document{d}})
	if err != nil {
		tb.Fatal(err)
	}
	return e
}

// BenchmarkAuthorizeScale decides the policy's last exact rule and a call
// no rule allows, with 1, 100 and 10,000 rules.
func BenchmarkAuthorizeScale(b *testing.B) {
	for _, n := range []int{1, 100, 10_000} {
		e := scaledEngine(b, n)
		last := n - 1
		if last%10 == 9 {
			last--
		}
		if last < 0 {
			last = 0
		}
		allowed := Request{Principal: identity.Principal{User: fmt.Sprintf("user%d", last%50)}, Target: Target{Upstream: fmt.Sprintf("up%d", last%100), Name: fmt.Sprintf("tool%d", last), ReadOnly: true}}
		denied := Request{Principal: identity.Principal{User: "nobody"}, Target: Target{Upstream: "up0", Name: "tool0"}}
		b.Run(fmt.Sprintf("rules=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if !e.Authorize(context.Background(), allowed).Allow || e.Authorize(context.Background(), denied).Allow {
					b.Fatal("wrong decision")
				}
			}
		})
	}
}

// TestAuthorizeScale: with 10,000 rules, a decision looks at the rules of
// its target only (the index), not at the whole policy.
func TestAuthorizeScale(t *testing.T) {
	e := scaledEngine(t, 10_000)
	req := Request{Principal: identity.Principal{User: "user8"}, Target: Target{Upstream: "up58", Name: "tool9958", ReadOnly: true}}
	if d := e.Authorize(context.Background(), req); !d.Allow || d.RuleID != "r9958" {
		t.Fatalf("decision %+v", d)
	}
	if n := len(e.candidates(req.Target)); n > 20 {
		t.Errorf("%d candidate rules for one target among 10,000", n)
	}
}
