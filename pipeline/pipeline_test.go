package pipeline

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/sag-gateway/sag/identity"
	"github.com/sag-gateway/sag/policy"
	"github.com/sag-gateway/sag/schemas"
	"github.com/sag-gateway/sag/store"

	"github.com/sag-gateway/sag/internal/testutil"
)

// Fakes of every step: each records what it saw and does what the test
// sets. The policy step is the real engine.

type fakeSessions struct {
	revoked bool
	counts  map[string]int64
}

func (s *fakeSessions) Admit(ctx context.Context, c *Call) (context.Context, func(), error) {
	c.Sessions = Sessions{USID: "u", ASID: "a", MSID: "m"}
	if s.revoked {
		return ctx, nil, &Error{Code: CodeRevoked, Message: "session revoked"}
	}
	return ctx, func() {}, nil
}

func (s *fakeSessions) Risk(_ context.Context, c *Call) policy.Session {
	return policy.Session{USID: c.Sessions.USID, MSID: c.Sessions.MSID}
}

func (s *fakeSessions) Count(_ context.Context, _ *Call, counter string, n int64) {
	if s.counts == nil {
		s.counts = map[string]int64{}
	}
	s.counts[counter] += n
}

type fakeCatalog struct{}

func (fakeCatalog) Resolve(c *Call) (Target, bool) {
	if !strings.HasPrefix(c.Name, "up__") {
		return Target{}, false
	}
	// The fake upstream's tools are read-only: consent "auto" asks about
	// none of them, and the rules that want consent say always.
	return Target{Target: policy.Target{Kind: c.TargetKind(), Upstream: "up", Name: strings.TrimPrefix(c.Name, "up__"), ReadOnly: true}}, true
}

type fakeValidator struct{}

func (fakeValidator) Arguments(_ Target, rule *schemas.Schema, args map[string]any) string {
	if rule == nil {
		return ""
	}
	if err := rule.Validate(args); err != nil {
		return "invalid arguments: " + err.Error()
	}
	return ""
}

func (fakeValidator) Output(Target, *schemas.Schema, Result) string { return "" }

type fakeCredentials struct{ err error }

func (f fakeCredentials) For(context.Context, *Call, Target) (*identity.Credential, error) {
	return nil, f.err
}

type fakeForwarder struct {
	calls  int
	args   json.RawMessage
	result json.RawMessage
	err    error
}

func (f *fakeForwarder) Forward(_ context.Context, _ *Call, _ Target, args json.RawMessage, _ *identity.Credential) (Result, error) {
	f.calls++
	f.args = args
	return Result{JSON: f.result}, f.err
}

type fakeAuditor struct {
	recs []store.AuditRecord
	err  error
}

func (a *fakeAuditor) Append(_ context.Context, rec store.AuditRecord) error {
	if a.err != nil {
		return a.err
	}
	a.recs = append(a.recs, rec)
	return nil
}

type engineAuthorizer struct{ e *policy.Engine }

func (a engineAuthorizer) Authorize(ctx context.Context, req policy.Request) policy.Decision {
	return a.e.Authorize(ctx, req)
}

func (a engineAuthorizer) Visible(p identity.Principal, entries []policy.Target, out []Visibility) {
	for i, t := range entries {
		out[i].Shown, out[i].Input = a.e.Visible(p, t)
	}
}

const testPolicy = `id: t
version: "3"
dlp_profiles: {secrets: {builtins: [cloud_keys]}}
rules:
  - {id: echo, upstream: up, tools: [echo], principals: {users: [alice]}, dlp: secrets,
     input_schema: {type: object, properties: {text: {type: string, maxLength: 50}}}}
  - {id: drop, upstream: up, tools: [drop], principals: {users: [alice]}, consent: always}
  - {id: cond, upstream: up, tools: [guarded], principals: {users: [alice]}, condition: 'args.ok == true'}
  - {id: docs, upstream: up, prompts: [greet], resources: ["docs://*"], principals: {users: [alice]}}
  - {id: edit, upstream: up, tools: [edit], principals: {users: [alice]}, consent: always, consent_edits: true,
     input_schema: {type: object, properties: {n: {type: integer, maximum: 10}}}, condition: '!has(args.n) || args.n != 7'}
`

type rig struct {
	p        *Pipeline
	sessions *fakeSessions
	fwd      *fakeForwarder
	audit    *fakeAuditor
}

func newRig(t testing.TB) *rig {
	t.Helper()
	d, err := policy.Parse("t", []byte(testPolicy))
	if err != nil {
		t.Fatal(err)
	}
	e, err := policy.NewEngine(policy.Options{Documents: []*policy.Document{d}})
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{sessions: &fakeSessions{}, fwd: &fakeForwarder{result: json.RawMessage(`{"content":[{"type":"text","text":"ok"}]}`)}, audit: &fakeAuditor{}}
	r.p = &Pipeline{Sessions: r.sessions, Catalog: fakeCatalog{}, Authorizer: engineAuthorizer{e}, Validator: fakeValidator{},
		Consent: NoConsent{}, Credentials: fakeCredentials{}, Forwarder: r.fwd, Auditor: r.audit,
		Clock: testutil.NewClock(time.Unix(1_800_000_000, 0), time.Millisecond), Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	return r
}

var alice = identity.Principal{Issuer: "https://idp", User: "alice", Agent: "spiffe://example.org/agent"}

func TestRun(t *testing.T) {
	for _, tc := range []struct {
		name      string
		call      Call
		revoked   bool
		forwarded bool
		toolErr   string // substring of the tool error
		code      Code   // of a protocol error, when toolErr is ""
		decision  string
		rule      string
		counter   string // risk counter raised
	}{
		{name: "allowed tool call", call: Call{Kind: ToolCall, Name: "up__echo", Args: json.RawMessage(`{"text":"hi"}`)},
			forwarded: true, decision: DecisionAllow, rule: "echo"},
		{name: "unknown tool", call: Call{Kind: ToolCall, Name: "other__x"},
			code: CodeNotFound, decision: DecisionDeny},
		{name: "tool no rule names: as unknown", call: Call{Kind: ToolCall, Name: "up__secret"},
			code: CodeNotFound, decision: DecisionDeny, counter: policy.CountDenials},
		{name: "invalid arguments", call: Call{Kind: ToolCall, Name: "up__echo", Args: json.RawMessage(`{"text":` + `"` + strings.Repeat("x", 60) + `"}`)},
			toolErr: "invalid arguments", decision: DecisionDeny, rule: "echo", counter: policy.CountValidationFailure},
		{name: "arguments not an object", call: Call{Kind: ToolCall, Name: "up__echo", Args: json.RawMessage(`[1]`)},
			code: CodeInvalidParams, decision: DecisionDeny},
		{name: "condition not met", call: Call{Kind: ToolCall, Name: "up__guarded", Args: json.RawMessage(`{"ok":false}`)},
			toolErr: "condition of rule cond not met", decision: DecisionDeny, rule: "cond", counter: policy.CountDenials},
		{name: "consent required", call: Call{Kind: ToolCall, Name: "up__drop"},
			toolErr: "consent required", decision: DecisionDeny, rule: "drop", counter: policy.CountConsentDenied},
		{name: "revoked session", call: Call{Kind: ToolCall, Name: "up__echo"}, revoked: true,
			code: CodeRevoked, decision: DecisionDeny},
		{name: "prompt allowed", call: Call{Kind: PromptGet, Name: "up__greet"},
			forwarded: true, decision: DecisionAllow, rule: "docs"},
		{name: "prompt no rule names", call: Call{Kind: PromptGet, Name: "up__other"},
			code: CodeNotFound, decision: DecisionDeny, counter: policy.CountDenials},
		{name: "resource read allowed", call: Call{Kind: ResourceRead, Name: "up__docs://a/b"},
			forwarded: true, decision: DecisionAllow, rule: "docs"},
		{name: "subscribe denied", call: Call{Kind: Subscribe, Name: "up__file:///etc"},
			code: CodeNotFound, decision: DecisionDeny, counter: policy.CountDenials},
		{name: "completion of an allowed prompt", call: Call{Kind: Completion, Names: policy.KindPrompt, Name: "up__greet", Args: json.RawMessage(`{"name":"a","value":"b"}`)},
			forwarded: true, decision: DecisionAllow, rule: "docs"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t)
			r.sessions.revoked = tc.revoked
			c := tc.call
			c.Principal = alice
			out := r.p.Run(context.Background(), &c)
			if got := r.fwd.calls > 0; got != tc.forwarded {
				t.Fatalf("forwarded %v, want %v (outcome %+v)", got, tc.forwarded, out)
			}
			switch {
			case tc.toolErr != "":
				if !strings.Contains(out.ToolError, tc.toolErr) || out.Err != nil {
					t.Errorf("tool error %q, err %v; want %q", out.ToolError, out.Err, tc.toolErr)
				}
			case tc.decision == DecisionAllow:
				if out.Err != nil || out.ToolError != "" || len(out.Result) == 0 {
					t.Errorf("outcome %+v, want a result", out)
				}
			default:
				if out.Err == nil || out.Err.Code != tc.code {
					t.Errorf("error %v, want code %d", out.Err, tc.code)
				}
			}
			if len(r.audit.recs) != 1 {
				t.Fatalf("%d audit records, want 1", len(r.audit.recs))
			}
			rec := r.audit.recs[0]
			if rec.Decision != tc.decision || rec.AllowListMatch != tc.rule || rec.Method != c.Kind.Method() || rec.Tool != c.Name ||
				rec.Sub != "alice" || rec.SpiffeID != alice.Agent || rec.USID != "u" || rec.MSID != "m" || rec.LatencyUS <= 0 {
				t.Errorf("audit record %+v", rec)
			}
			if tc.rule != "" && rec.PolicyID != "t@3" {
				t.Errorf("policy id %q, want t@3", rec.PolicyID)
			}
			if tc.decision == DecisionDeny && tc.rule == "" && tc.code == CodeNotFound && tc.counter != "" && rec.PolicyID != "default-deny" {
				t.Errorf("policy id %q, want default-deny", rec.PolicyID)
			}
			if tc.counter != "" && r.sessions.counts[tc.counter] != 1 {
				t.Errorf("risk counters %v, want %s", r.sessions.counts, tc.counter)
			}
		})
	}
}

// TestRunRedactsArgumentsAndResult: DLP on the arguments before they are
// forwarded, and on the result, each action audited.
func TestRunRedactsArgumentsAndResult(t *testing.T) {
	r := newRig(t)
	key := "AKIA" + "IOSFODNN7EXAMPLE"
	r.fwd.result = json.RawMessage(`{"content":[{"type":"text","text":"echo ` + key + `"}]}`)
	out := r.p.Run(context.Background(), &Call{Principal: alice, Kind: ToolCall, Name: "up__echo", Args: json.RawMessage(`{"text":"` + key + `"}`)})
	if strings.Contains(string(r.fwd.args), key) {
		t.Errorf("the upstream saw the secret: %s", r.fwd.args)
	}
	if strings.Contains(string(out.Result), key) || len(out.Result) == 0 {
		t.Errorf("the caller saw the secret: %s", out.Result)
	}
	if acts := r.audit.recs[0].DLPActions; len(acts) != 2 || !strings.Contains(acts[0], "/arguments/text") {
		t.Errorf("dlp actions %v", acts)
	}
}

// TestRunFailsClosed: no credentials, an audit store that refuses writes.
func TestRunFailsClosed(t *testing.T) {
	r := newRig(t)
	r.p.Credentials = fakeCredentials{err: errors.New("no key")}
	out := r.p.Run(context.Background(), &Call{Principal: alice, Kind: ToolCall, Name: "up__echo"})
	if r.fwd.calls != 0 || out.ToolError == "" || r.audit.recs[0].Decision != DecisionError {
		t.Errorf("without credentials: forwarded %d, outcome %+v", r.fwd.calls, out)
	}

	// An audit store that refuses writes: the call is refused, and no
	// later call reaches the upstream until a record commits again.
	r = newRig(t)
	r.audit.err = errors.New("disk full")
	for i := range 2 {
		out = r.p.Run(context.Background(), &Call{Principal: alice, Kind: ToolCall, Name: "up__echo"})
		if out.Err == nil || out.Err.Code != CodeUnavailable || out.Result != nil {
			t.Errorf("audit down, call %d: outcome %+v, want refused", i, out)
		}
	}
	if r.fwd.calls != 1 {
		t.Errorf("%d calls reached the upstream while the audit store failed, want only the first", r.fwd.calls)
	}
	r.audit.err = nil
	r.p.Run(context.Background(), &Call{Principal: alice, Kind: ToolCall, Name: "up__echo"}) // refused, and its record commits
	if out := r.p.Run(context.Background(), &Call{Principal: alice, Kind: ToolCall, Name: "up__echo"}); out.Err != nil || r.fwd.calls != 2 {
		t.Errorf("after the audit store recovered: %+v, %d calls forwarded", out, r.fwd.calls)
	}
}

// TestRunUpstreamErrors: an upstream that does not answer is a tool error
// for tool calls and a protocol error otherwise; the upstream's own
// protocol error passes.
func TestRunUpstreamErrors(t *testing.T) {
	r := newRig(t)
	r.fwd.err = &Error{Code: CodeUpstream, Message: "upstream up: no answer within 1s"}
	out := r.p.Run(context.Background(), &Call{Principal: alice, Kind: ToolCall, Name: "up__echo"})
	if out.ToolError != "upstream up: no answer within 1s" || r.audit.recs[0].Decision != DecisionError {
		t.Errorf("tool call: %+v", out)
	}
	out = r.p.Run(context.Background(), &Call{Principal: alice, Kind: PromptGet, Name: "up__greet"})
	if out.Err == nil || out.Err.Code != CodeUpstream {
		t.Errorf("prompt: %+v", out)
	}
	r.fwd.err = errors.New("boom: https://secret@host")
	out = r.p.Run(context.Background(), &Call{Principal: alice, Kind: PromptGet, Name: "up__greet"})
	if out.Err == nil || out.Err.Message != "internal error" {
		t.Errorf("unknown error: %+v, want a bare internal error", out.Err)
	}
}

// TestList: lists show what the rules show, and are audited once.
func TestList(t *testing.T) {
	r := newRig(t)
	entries := []policy.Target{
		{Kind: policy.KindTool, Upstream: "up", Name: "echo"},
		{Kind: policy.KindTool, Upstream: "up", Name: "secret"},
		{Kind: policy.KindPrompt, Upstream: "up", Name: "greet"},
		{Kind: policy.KindResource, Upstream: "up", Name: "docs://readme"},
		{Kind: policy.KindResource, Upstream: "up", Name: "file:///etc/passwd"},
	}
	vis, err := r.p.List(context.Background(), &Call{Principal: alice, Kind: List, Name: "tools/list"}, entries)
	if err != nil {
		t.Fatal(err)
	}
	want := []bool{true, false, true, true, false}
	for i := range want {
		if vis[i].Shown != want[i] {
			t.Errorf("%v shown %v, want %v", entries[i], vis[i].Shown, want[i])
		}
	}
	if len(vis[0].Input) == 0 {
		t.Error("the rule's input schema is not returned for tightening")
	}
	if len(r.audit.recs) != 1 || r.audit.recs[0].Method != "tools/list" || r.audit.recs[0].Reason != "3 of 5 shown" {
		t.Errorf("audit %+v", r.audit.recs)
	}
	r.sessions.revoked = true
	if _, err := r.p.List(context.Background(), &Call{Principal: alice, Kind: List, Name: "tools/list"}, entries); err == nil || err.Code != CodeRevoked {
		t.Errorf("revoked: %v", err)
	}
}

// TestRunAllocations is the allocation budget of an allowed tool call with
// fake steps (BENCHMARKS.md): later work cannot grow it silently.
func TestRunAllocations(t *testing.T) {
	r := newRig(t)
	args := json.RawMessage(`{"text":"hello"}`)
	c := Call{Principal: alice, Kind: ToolCall, Name: "up__echo", Args: args}
	allocs := testing.AllocsPerRun(200, func() {
		call := c
		r.audit.recs = r.audit.recs[:0]
		if out := r.p.Run(context.Background(), &call); out.Err != nil || out.ToolError != "" {
			t.Fatalf("outcome %+v", out)
		}
	})
	const budget = 80
	t.Logf("%.0f allocations per allowed call (budget %d)", allocs, budget)
	if allocs > budget {
		t.Errorf("%.0f allocations per allowed call, over the budget of %d", allocs, budget)
	}
}

func BenchmarkRun(b *testing.B) {
	r := newRig(b)
	c := Call{Principal: alice, Kind: ToolCall, Name: "up__echo", Args: json.RawMessage(`{"text":"hello"}`)}
	b.ReportAllocs()
	for b.Loop() {
		call := c
		r.audit.recs = r.audit.recs[:0]
		r.p.Run(context.Background(), &call)
	}
}

// approving is a consent step that approves, with edits when set, and
// records what the approver was shown.
type approving struct {
	edits    json.RawMessage
	shown    json.RawMessage
	asked    int
	finished []Outcome
}

func (a *approving) Finished(id string, out Outcome) {
	if id == "c_1" {
		a.finished = append(a.finished, out)
	}
}

func (a *approving) Await(_ context.Context, _ *Call, _ Target, d policy.Decision, args json.RawMessage) (Approval, error) {
	a.asked++
	a.shown = args
	return Approval{ID: "c_1", EditedArgs: a.edits}, nil
}

// TestConsentStep: a call that needs consent goes on only with an
// approval; an approver's edits replace the arguments and are checked
// again (policy, schema) before anything is sent.
func TestConsentStep(t *testing.T) {
	for _, tc := range []struct {
		name, edits string
		forwarded   string // the arguments the upstream got, "" for none
		toolErr     string
	}{
		{name: "approved", forwarded: `{"n":1}`},
		{name: "approved with edits", edits: `{"n":2}`, forwarded: `{"n":2}`},
		{name: "edits breaking the schema", edits: `{"n":11}`, toolErr: "edited arguments: invalid arguments"},
		{name: "edits the policy refuses", edits: `{"n":7}`, toolErr: "edited arguments: denied by policy"},
		{name: "edits not an object", edits: `[1]`, toolErr: "edited arguments: must be a JSON object"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t)
			step := &approving{edits: json.RawMessage(tc.edits)}
			r.p.Consent = step
			out := r.p.Run(context.Background(), &Call{Principal: alice, Kind: ToolCall, Name: "up__edit", Args: json.RawMessage(`{"n":1}`)})
			if step.asked != 1 || string(step.shown) != `{"n":1}` {
				t.Errorf("consent asked %d times, shown %s", step.asked, step.shown)
			}
			if got := string(r.fwd.args); r.fwd.calls > 0 && got != tc.forwarded || (r.fwd.calls > 0) != (tc.forwarded != "") {
				t.Errorf("forwarded %d calls with %s, want %q", r.fwd.calls, got, tc.forwarded)
			}
			if !strings.Contains(out.ToolError, tc.toolErr) || (tc.toolErr == "") != (out.ToolError == "") {
				t.Errorf("tool error %q, want %q", out.ToolError, tc.toolErr)
			}
			if rec := r.audit.recs[0]; rec.ConsentID != "c_1" {
				t.Errorf("audit record without the consent id: %+v", rec)
			}
			// Whoever approved hears how the call ended, also when the
			// edits were refused.
			if len(step.finished) != 1 || step.finished[0].ToolError != out.ToolError {
				t.Errorf("finished %+v, want the call's outcome once", step.finished)
			}
		})
	}
	// Without a consent channel the call is refused, saying why.
	r := newRig(t)
	out := r.p.Run(context.Background(), &Call{Principal: alice, Kind: ToolCall, Name: "up__edit", Args: json.RawMessage(`{"n":1}`)})
	if r.fwd.calls != 0 || !strings.Contains(out.ToolError, "rule edit asks for consent") {
		t.Errorf("no consent channel: %+v", out)
	}
}
