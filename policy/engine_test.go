package policy

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/sag-gateway/sag/identity"

	"github.com/sag-gateway/sag/internal/testutil"
)

const testDoc = `
id: files-policy
version: "7"
dlp_profiles:
  secrets: {builtins: [jwt]}
rules:
  - id: read
    upstream: files
    tools: [read_file, "list_*"]
    principals: {users: [alice, "svc-*"]}
    input_schema:
      type: object
      properties: {path: {type: string, pattern: "^/srv/"}}
      required: [path]
  - id: agents-write
    upstream: files
    tools: [write_file]
    principals: {agents: ["spiffe://example.org/agents/*"], scopes: [files.write]}
    rate_limit: {per_minute: 60, burst: 2}
  - id: eng-any
    upstream: "*"
    tools: [status]
    principals: {groups: [eng]}
    consent: always
  - id: business-hours
    upstream: files
    tools: [delete_file]
    condition: 'args.path.startsWith("/srv/tmp/") && user.sub == "alice"'
    dlp: secrets
  - id: destructive-auto
    upstream: db
    tools: [drop_table]
  - id: destructive-never
    upstream: db
    tools: [vacuum]
    consent: never
  - id: by-claims
    upstream: hr
    tools: [salaries]
    principals: {claims: {department: finance, roles: payroll, level: "3"}}
`

func testEngine(t testing.TB, c *testutil.Clock, docs ...string) *Engine {
	t.Helper()
	var parsed []*Document
	for i, src := range docs {
		d, err := Parse(fmt.Sprintf("doc%d", i), []byte(src))
		if err != nil {
			t.Fatal(err)
		}
		parsed = append(parsed, d)
	}
	o := Options{Documents: parsed}
	if c != nil {
		o.Now = c.Now
	}
	e, err := NewEngine(o)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func TestAuthorize(t *testing.T) {
	e := testEngine(t, nil, testDoc)
	alice := identity.Principal{Issuer: "https://idp", User: "alice"}
	bob := identity.Principal{Issuer: "https://idp", User: "bob", Groups: []string{"eng"}}
	agent := identity.Principal{User: "carol", Agent: "spiffe://example.org/agents/builder", Scopes: []string{"files.write"}}
	// Read-only, so that consent "auto" stays out of the cases about matching.
	tool := func(up, name string) Target { return Target{Upstream: up, Name: name, ReadOnly: true} }
	for _, tc := range []struct {
		name    string
		p       identity.Principal
		tool    Target
		args    map[string]any
		allow   bool
		rule    string
		consent bool
		reason  string
	}{
		{"exact tool, user", alice, tool("files", "read_file"), nil, true, "read", false, ""},
		{"glob tool", alice, tool("files", "list_dir"), nil, true, "read", false, ""},
		{"glob user", identity.Principal{User: "svc-backup"}, tool("files", "read_file"), nil, true, "read", false, ""},
		{"other user", bob, tool("files", "read_file"), nil, false, "", false, "no rule allows this call"},
		{"same tool name, other upstream", alice, tool("mail", "read_file"), nil, false, "", false, "no rule allows this call"},
		{"unknown tool", alice, tool("files", "format_disk"), nil, false, "", false, "no rule allows this call"},
		{"agent glob and scope", agent, tool("files", "write_file"), nil, true, "agents-write", false, ""},
		{"agent without the scope", identity.Principal{Agent: "spiffe://example.org/agents/x"}, tool("files", "write_file"), nil, false, "", false, ""},
		{"agent outside the glob", identity.Principal{Agent: "spiffe://example.org/other/x", Scopes: []string{"files.write"}}, tool("files", "write_file"), nil, false, "", false, ""},
		{"no agent at all", identity.Principal{User: "carol", Scopes: []string{"files.write"}}, tool("files", "write_file"), nil, false, "", false, ""},
		{"group, any upstream, consent always", bob, tool("mail", "status"), nil, true, "eng-any", true, ""},
		{"condition true", alice, tool("files", "delete_file"), map[string]any{"path": "/srv/tmp/x"}, true, "business-hours", false, ""},
		{"condition false names the rule", alice, tool("files", "delete_file"), map[string]any{"path": "/etc/passwd"}, false, "business-hours", false, "condition of rule business-hours not met"},
		{"condition on a missing argument is false", alice, tool("files", "delete_file"), nil, false, "business-hours", false, "condition of rule business-hours not met"},
		{"condition on the user", bob, tool("files", "delete_file"), map[string]any{"path": "/srv/tmp/x"}, false, "business-hours", false, ""},
		{"consent auto on a destructive tool", alice, Target{Upstream: "db", Name: "drop_table", Destructive: true}, nil, true, "destructive-auto", true, ""},
		{"consent auto on a read-only tool", alice, Target{Upstream: "db", Name: "drop_table", ReadOnly: true}, nil, true, "destructive-auto", false, ""},
		{"consent auto on a tool not annotated read-only", alice, Target{Upstream: "db", Name: "drop_table"}, nil, true, "destructive-auto", true, ""},
		{"consent auto: destructive wins over read-only", alice, Target{Upstream: "db", Name: "drop_table", ReadOnly: true, Destructive: true}, nil, true, "destructive-auto", true, ""},
		{"consent never wins over the hint", alice, Target{Upstream: "db", Name: "vacuum", Destructive: true}, nil, true, "destructive-never", false, ""},
		{"claims match", identity.Principal{Claims: map[string]any{"department": "finance", "roles": []any{"payroll", "x"}, "level": 3.0}}, tool("hr", "salaries"), nil, true, "by-claims", false, ""},
		{"a claim differs", identity.Principal{Claims: map[string]any{"department": "eng", "roles": []any{"payroll"}, "level": 3.0}}, tool("hr", "salaries"), nil, false, "", false, ""},
		{"a list claim lacks the value", identity.Principal{Claims: map[string]any{"department": "finance", "roles": []any{"x"}, "level": 3.0}}, tool("hr", "salaries"), nil, false, "", false, ""},
		{"a claim is missing", identity.Principal{Claims: map[string]any{"department": "finance", "roles": "payroll"}}, tool("hr", "salaries"), nil, false, "", false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := e.Authorize(context.Background(), Request{Principal: tc.p, Target: tc.tool, Args: tc.args})
			if d.Allow != tc.allow || d.RuleID != tc.rule || d.Consent != tc.consent {
				t.Fatalf("decision %+v, want allow=%v rule=%q consent=%v", d, tc.allow, tc.rule, tc.consent)
			}
			if tc.reason != "" && d.Reason != tc.reason {
				t.Errorf("reason %q, want %q", d.Reason, tc.reason)
			}
			if d.Allow && (d.PolicyID != "files-policy" || d.Version != "7") {
				t.Errorf("policy %s@%s, want files-policy@7", d.PolicyID, d.Version)
			}
		})
	}
	// Obligations travel with the decision.
	d := e.Authorize(context.Background(), Request{Principal: alice, Target: tool("files", "read_file"), Args: map[string]any{"path": "/srv/a"}})
	if d.Input == nil || d.Input.Validate(map[string]any{"path": "/etc"}) == nil {
		t.Error("the rule's input schema is missing or does not tighten")
	}
	d = e.Authorize(context.Background(), Request{Principal: alice, Target: tool("files", "delete_file"), Args: map[string]any{"path": "/srv/tmp/x"}})
	if d.DLP == nil {
		t.Error("the rule's DLP profile is missing")
	}
}

func TestDefaultModes(t *testing.T) {
	req := Request{Principal: identity.Anonymous(), Target: Target{Upstream: "a", Name: "b", Destructive: true}}
	deny, _ := NewEngine(Options{})
	if d := deny.Authorize(context.Background(), req); d.Allow || !strings.Contains(d.Reason, "no allow-list") {
		t.Errorf("no documents, authenticated: %+v", d)
	}
	if ok, _ := deny.Visible(req.Principal, req.Target); ok {
		t.Error("no documents, authenticated: the tool is visible")
	}
	allow, _ := NewEngine(Options{Mode: AllowWithoutRules})
	if d := allow.Authorize(context.Background(), req); !d.Allow || !d.Consent {
		t.Errorf("no documents, open trial: %+v (a destructive tool still needs consent)", d)
	}
	// With a document loaded the trial mode no longer applies: default deny.
	d, _ := Parse("x", []byte("id: x\nrules: [{id: r, tools: [other]}]\n"))
	withDoc, _ := NewEngine(Options{Mode: AllowWithoutRules, Documents: []*Document{d}})
	if dec := withDoc.Authorize(context.Background(), req); dec.Allow {
		t.Errorf("a tool no rule names was allowed: %+v", dec)
	}
}

func TestRateLimit(t *testing.T) {
	c := testutil.NewClock(time.Unix(1_800_000_000, 0), 0)
	e := testEngine(t, c, testDoc)
	agent := identity.Principal{User: "carol", Agent: "spiffe://example.org/agents/builder", Scopes: []string{"files.write"}}
	other := agent
	other.User = "dave"
	req := Request{Principal: agent, Target: Target{Upstream: "files", Name: "write_file"}}
	for i := range 2 { // burst 2
		if d := e.Authorize(context.Background(), req); !d.Allow {
			t.Fatalf("call %d within the burst: %+v", i, d)
		}
	}
	d := e.Authorize(context.Background(), req)
	if d.Allow || d.RetryAfter <= 0 || d.RetryAfter > time.Second || d.RuleID != "agents-write" || !strings.Contains(d.Reason, "rate limit of rule agents-write") {
		t.Fatalf("third call: %+v", d)
	}
	// Buckets are per principal.
	if d := e.Authorize(context.Background(), Request{Principal: other, Target: req.Target}); !d.Allow {
		t.Errorf("another principal was limited: %+v", d)
	}
	c.Add(time.Second) // 60/min refills one token a second
	if d := e.Authorize(context.Background(), req); !d.Allow {
		t.Errorf("after the refill: %+v", d)
	}
}

// brokenLimiter cannot check any limit (a shared store that is down).
type brokenLimiter struct{}

func (brokenLimiter) Take(context.Context, string, int, int, time.Time) (time.Duration, error) {
	return 0, errors.New("store down")
}

// TestRateLimitUnchecked: a rate limit that cannot be checked refuses the
// call (fail closed).
func TestRateLimitUnchecked(t *testing.T) {
	d, err := Parse("doc", []byte(testDoc))
	if err != nil {
		t.Fatal(err)
	}
	e, err := NewEngine(Options{Documents: []*Document{d}, Limiter: brokenLimiter{}})
	if err != nil {
		t.Fatal(err)
	}
	agent := identity.Principal{User: "carol", Agent: "spiffe://example.org/agents/builder", Scopes: []string{"files.write"}}
	got := e.Authorize(context.Background(), Request{Principal: agent, Target: Target{Upstream: "files", Name: "write_file"}})
	if got.Allow || got.RuleID != "agents-write" || !strings.Contains(got.Reason, "rate limit of rule agents-write cannot be checked") {
		t.Errorf("a call under a limit that cannot be checked: %+v", got)
	}
}

func TestFirstRuleWins(t *testing.T) {
	e := testEngine(t, nil, `
id: order
rules:
  - {id: first, tools: [t], consent: always}
  - {id: second, tools: [t], consent: never}
`)
	if d := e.Authorize(context.Background(), Request{Target: Target{Upstream: "u", Name: "t"}}); d.RuleID != "first" || !d.Consent {
		t.Errorf("decision %+v, want the first rule", d)
	}
}

func TestDocumentUpstreamConfines(t *testing.T) {
	e := testEngine(t, nil, "id: owner\nupstream: files\nrules: [{id: all, tools: ['*']}]\n")
	if ok, _ := e.Visible(identity.Anonymous(), Target{Upstream: "mail", Name: "send"}); ok {
		t.Error("an upstream's allow-list opened another upstream's tool")
	}
	if ok, _ := e.Visible(identity.Anonymous(), Target{Upstream: "files", Name: "read"}); !ok {
		t.Error("an upstream's allow-list does not cover its own tool")
	}
	d, _ := Parse("x", []byte("id: owner\nupstream: files\nrules: [{id: r, upstream: mail, tools: ['*']}]\n"))
	if _, err := NewEngine(Options{Documents: []*Document{d}}); err == nil || !strings.Contains(err.Error(), `covers upstream "files" only`) {
		t.Errorf("a rule naming another upstream: %v", err)
	}
}

func TestVisibleShowsTighterSchema(t *testing.T) {
	e := testEngine(t, nil, testDoc)
	ok, raw := e.Visible(identity.Principal{User: "alice"}, Target{Upstream: "files", Name: "read_file"})
	if !ok || !strings.Contains(string(raw), `"^/srv/"`) {
		t.Errorf("Visible = %v, %s", ok, raw)
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct{ doc, want string }{
		{"rules: []", "(document): missing property 'id'"},
		{"id: x\nrules: [{id: r}]", "rules[0]: missing property 'tools'"},
		{"id: x\nrules: [{id: r, tools: []}]", "rules[0].tools: "},
		{"id: x\nrules: [{id: r, tools: [a], consent: maybe}]", "rules[0].consent: "},
		{"id: x\nrules: [{id: r, tools: [a], extra: 1}]", "rules[0].extra: property not allowed"},
		{"id: x\nrules: [{id: r, tools: [a], rate_limit: {per_minute: 0}}]", "rules[0].rate_limit.per_minute: "},
		{"id: x\nrules: [{id: r, tools: [a]}, {id: r, tools: [b]}]", `rules[1].id: "r" is used twice`},
		{"id: 'bad id'\nrules: []", "id: "},
		{"id: x\nrules: [{id: r, tools: [a]}]\n---\nid: y", "more than one YAML document"},
	} {
		_, err := Parse("p.yaml", []byte(tc.doc))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(%q) = %v, want an error containing %q", tc.doc, err, tc.want)
		}
	}
}

func TestCompileErrors(t *testing.T) {
	for _, tc := range []struct{ rule, want string }{
		{"{id: r, tools: ['[']}", "bad glob"},
		{"{id: r, tools: [a], input_schema: {type: 12}}", "input_schema"},
		{"{id: r, tools: [a], condition: 'args.'}", "condition"},
		{"{id: r, tools: [a], condition: '1 + 1'}", "want a boolean expression"},
		{"{id: r, tools: [a], condition: 'nosuchvar == 1'}", "condition"},
		{"{id: r, tools: [a], dlp: missing}", `no profile "missing"`},
	} {
		d, err := Parse("p", []byte("id: x\nrules: ["+tc.rule+"]\n"))
		if err != nil {
			t.Fatalf("Parse(%s): %v", tc.rule, err)
		}
		_, err = NewEngine(Options{Documents: []*Document{d}})
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "rules[0] (r)") {
			t.Errorf("NewEngine(%s) = %v, want an error naming rules[0] (r) and %q", tc.rule, err, tc.want)
		}
	}
	a, _ := Parse("a", []byte("id: same\nrules: []\n"))
	if _, err := NewEngine(Options{Documents: []*Document{a, a}}); err == nil {
		t.Error("two documents with one id were accepted")
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(testDoc))
	f.Add([]byte("id: x\nrules: []\n"))
	f.Add([]byte("{}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		d, err := Parse("fuzz", data)
		if err != nil {
			return
		}
		if d.ID == "" {
			t.Fatal("a document without id parsed")
		}
		// A parsed document either compiles or is refused with an error;
		// it never panics.
		_, _ = NewEngine(Options{Documents: []*Document{d}})
	})
}

// BenchmarkAuthorize is the authorize + validate step with 1,000 rules
// loaded (issue 4's target: ≤ 20 µs):
//
//	go test -run '^$' -bench Authorize -benchmem ./policy/
func BenchmarkAuthorize(b *testing.B) {
	var sb strings.Builder
	sb.WriteString("id: big\nrules:\n")
	for i := range 1000 {
		switch i % 4 {
		case 0:
			fmt.Fprintf(&sb, "  - {id: r%d, upstream: up%d, tools: [tool%d], principals: {users: [user%d]}}\n", i, i%50, i, i%100)
		case 1:
			fmt.Fprintf(&sb, "  - {id: r%d, upstream: up%d, tools: ['tool%d_*'], principals: {groups: [g%d]}}\n", i, i%50, i, i%10)
		case 2:
			fmt.Fprintf(&sb, "  - {id: r%d, upstream: up%d, tools: [tool%d], condition: 'args.n < %d', input_schema: {type: object, properties: {n: {type: integer}}}}\n", i, i%50, i, i)
		default:
			fmt.Fprintf(&sb, "  - {id: r%d, upstream: up%d, tools: [tool%d], principals: {scopes: [s%d]}, rate_limit: {per_minute: 1000000}}\n", i, i%50, i, i%7)
		}
	}
	e := testEngine(b, nil, sb.String())
	req := Request{Principal: identity.Principal{User: "user6"}, Target: Target{Upstream: "up2", Name: "tool502"}, Args: map[string]any{"n": 7.0}}
	if d := e.Authorize(context.Background(), req); !d.Allow || d.RuleID != "r502" {
		b.Fatalf("decision %+v", d)
	}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		d := e.Authorize(ctx, req)
		if d.Input.Validate(req.Args) != nil {
			b.Fatal("validation failed")
		}
	}
}

func TestContentDLP(t *testing.T) {
	e := testEngine(t, nil,
		"id: a\nupstream: files\ncontent_dlp: p\ndlp_profiles: {p: {builtins: [emails]}, r: {builtins: [cloud_keys]}}\nrules:\n"+
			"  - {id: docs, prompts: ['*'], resources: ['*']}\n  - {id: own, prompts: [own], dlp: r}\n  - {id: tools, tools: ['*']}\n",
		"id: b\ncontent_dlp: q\ndlp_profiles: {q: {builtins: [jwt]}}\nrules:\n  - {id: all, prompts: ['*'], resources: ['*']}\n")
	for _, tc := range []struct {
		target Target
		want   string
	}{
		{Target{Kind: KindPrompt, Upstream: "files", Name: "p1"}, "p"}, // the upstream's own profile
		{Target{Kind: KindResource, Upstream: "files", Name: "file:///a"}, "p"},
		{Target{Kind: KindPrompt, Upstream: "files", Name: "own"}, "p"},       // the first rule wins, with the content profile
		{Target{Kind: KindResource, Upstream: "mail", Name: "mail://1"}, "q"}, // the document-wide profile
		{Target{Kind: KindTool, Upstream: "files", Name: "t"}, ""},            // content_dlp is not for tools
	} {
		d := e.Authorize(context.Background(), Request{Target: tc.target})
		got := ""
		if d.DLP != nil {
			got = d.DLP.Name()
		}
		if !d.Allow || got != tc.want {
			t.Errorf("%v: allow %v, profile %q; want %q", tc.target, d.Allow, got, tc.want)
		}
	}
	d, _ := Parse("x", []byte("id: x\ncontent_dlp: missing\nrules: []\n"))
	if _, err := NewEngine(Options{Documents: []*Document{d}}); err == nil || !strings.Contains(err.Error(), `content_dlp: no profile "missing"`) {
		t.Errorf("unknown content profile: %v", err)
	}
}
