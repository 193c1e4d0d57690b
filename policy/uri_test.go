package policy

import (
	"context"
	"fmt"
	"testing"

	"github.com/sag-gateway/sag/identity"
)

func TestURIPattern(t *testing.T) {
	for _, tc := range []struct {
		pattern, uri string
		want         bool
	}{
		{"file:///docs/readme", "file:///docs/readme", true},
		{"file:///docs/readme", "file:///docs/readme2", false},
		{"file:///docs/*", "file:///docs/a/b/c", true}, // * crosses /
		{"file:///docs/*", "file:///etc/passwd", false},
		{"file:///docs/?.md", "file:///docs/a.md", true},
		{"file:///docs/?.md", "file:///docs/ab.md", false},
		{"weather://{city}/now", "weather://paris/now", true},
		{"weather://{city}/now", "weather://paris/x/now", false}, // one segment
		{"weather://{city}/now", "weather://{city}/now", true},   // the template itself
		{"repo://{+path}", "repo://a/b/c", true},
		{"a.b://x", "aXb://x", false}, // regexp metacharacters are literal
	} {
		p, err := compileURIPattern(tc.pattern)
		if err != nil {
			t.Fatalf("%s: %v", tc.pattern, err)
		}
		if got := p.match(tc.uri); got != tc.want {
			t.Errorf("%s ~ %s = %v, want %v", tc.pattern, tc.uri, got, tc.want)
		}
	}
	for _, bad := range []string{"x://{", "x://{}", "x://}", "x://{a*}"} {
		if _, err := compileURIPattern(bad); err == nil {
			t.Errorf("%q compiled", bad)
		}
	}
}

// TestResourceAndPromptRules: rules name resources and prompts per
// principal, apart from tools; default deny covers them too.
func TestResourceAndPromptRules(t *testing.T) {
	e := testEngine(t, nil, `id: d
rules:
  - {id: docs, upstream: files, resources: ["file:///public/*", "weather://{city}/now"], principals: {users: [alice]}}
  - {id: greet, upstream: files, prompts: [greeting], principals: {users: [alice, bob]}}
  - {id: tools, upstream: files, tools: ["*"], principals: {users: [bob]}}
`)
	alice, bob := identity.Principal{User: "alice"}, identity.Principal{User: "bob"}
	res := func(uri string) Target { return Target{Kind: KindResource, Upstream: "files", Name: uri} }
	prompt := func(n string) Target { return Target{Kind: KindPrompt, Upstream: "files", Name: n} }
	for _, tc := range []struct {
		p      identity.Principal
		target Target
		rule   string // "" for denied
	}{
		{alice, res("file:///public/a.txt"), "docs"},
		{alice, res("weather://paris/now"), "docs"},
		{alice, res("file:///private/a.txt"), ""},
		{alice, res("file:///public/a.txt"), "docs"},
		{bob, res("file:///public/a.txt"), ""}, // a tool rule is no resource rule
		{alice, prompt("greeting"), "greet"},
		{bob, prompt("greeting"), "greet"},
		{alice, prompt("other"), ""},
		{alice, Target{Upstream: "files", Name: "greeting"}, ""}, // a prompt rule is no tool rule
		{bob, Target{Kind: KindPrompt, Upstream: "mail", Name: "greeting"}, ""},
	} {
		d := e.Authorize(context.Background(), Request{Principal: tc.p, Target: tc.target})
		if d.Allow != (tc.rule != "") || d.RuleID != tc.rule {
			t.Errorf("%s %v: allow %v rule %q, want rule %q", tc.p.User, tc.target, d.Allow, d.RuleID, tc.rule)
		}
		if tc.rule == "" && d.PolicyID != "default-deny" {
			t.Errorf("%s %v: policy %q, want default-deny", tc.p.User, tc.target, d.PolicyID)
		}
		if ok, _ := e.Visible(tc.p, tc.target); ok != (tc.rule != "") {
			t.Errorf("%s %v: visible %v", tc.p.User, tc.target, ok)
		}
	}
	if ok, _ := e.Visible(alice, res("weather://{city}/now")); !ok {
		t.Error("the template a rule names is not visible")
	}
	if _, err := Parse("x", []byte("id: x\nrules:\n  - {id: r, principals: {users: [a]}}\n")); err == nil {
		t.Error("a rule naming nothing parsed")
	}
}

// TestRateLimitSurvivesAFlood: buckets are a bounded LRU; a flood of new
// callers evicts the least recently used buckets one at a time and never
// resets a caller who keeps calling.
func TestRateLimitSurvivesAFlood(t *testing.T) {
	defer func(old int) { maxLimiters = old }(maxLimiters)
	maxLimiters = 10
	e := testEngine(t, nil, "id: d\nrules:\n  - {id: r, upstream: up, tools: [t], rate_limit: {per_minute: 1, burst: 1}}\n")
	call := func(user string) Decision {
		return e.Authorize(context.Background(), Request{Principal: identity.Principal{User: user}, Target: Target{Upstream: "up", Name: "t"}})
	}
	if !call("alice").Allow || call("alice").Allow {
		t.Fatal("the limit of 1 does not hold")
	}
	for i := range 100 {
		call(fmt.Sprint("flood", i))
		if i%5 == 0 && call("alice").Allow { // alice keeps calling, and stays limited
			t.Fatalf("after %d flooding callers alice's bucket was reset", i+1)
		}
	}
}
