package policy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"slices"
	"sort"
	"strings"
	"time"

	"cel.dev/cel-go/cel"

	"github.com/sag-gateway/sag/identity"
	"github.com/sag-gateway/sag/schemas"
)

// TargetKind is the kind of thing a rule names.
type TargetKind uint8

// Kinds of targets.
const (
	KindTool TargetKind = iota
	KindPrompt
	KindResource
)

func (k TargetKind) String() string {
	switch k {
	case KindPrompt:
		return "prompt"
	case KindResource:
		return "resource"
	}
	return "tool"
}

// Target is what the engine knows of a tool, prompt or resource in the
// catalog.
type Target struct {
	Kind TargetKind
	// Upstream is the upstream's name. Name is the tool's or prompt's name
	// there (not the name the gateway exposes, which may carry a prefix),
	// or the resource's URI (a resource template's URI template).
	Upstream, Name string
	// Destructive is the upstream's destructiveHint annotation of a tool,
	// when it says true explicitly; ReadOnly its readOnlyHint.
	Destructive, ReadOnly bool
}

// mayChange reports whether consent "auto" asks about a tool: one annotated
// destructive, or not annotated read-only (MCP: a tool that is not
// read-only may be destructive, destructiveHint defaulting to true). Prompts
// and resources only read.
func (t Target) mayChange() bool {
	return t.Kind == KindTool && (t.Destructive || !t.ReadOnly)
}

// Session is the call's place in the session graph, for conditions.
type Session struct {
	USID, WSID, ASID, MSID string
	Risk                   float64
	Counters               map[string]int64
}

// Request is one call to decide on.
type Request struct {
	Principal identity.Principal
	Target    Target
	// Args are the decoded arguments (a JSON object), nil for none.
	Args    map[string]any
	Session Session
}

// Decision is the engine's answer: allow or deny, with the obligations the
// pipeline must enforce on an allowed call.
type Decision struct {
	Allow bool
	// PolicyID and Version name the document that decided; with no
	// deciding document PolicyID is "default-deny" (no rule allows the
	// call) or "open-trial" (--auth open without allow-lists). RuleID is
	// the rule that allowed, or the rule that refused (rate limit,
	// condition), else "".
	PolicyID, Version, RuleID string
	// Reason says why a call was denied, naming the rule, never its content.
	Reason string
	// RetryAfter is set when a rate limit denied the call.
	RetryAfter time.Duration
	// Input and Output are the rule's schemas (on top of the upstream's),
	// nil when it has none.
	Input, Output *schemas.Schema
	// Consent is true when the call needs the user's consent, and
	// ConsentReason says why (the rule, the tool's annotation, or the
	// session's risk asking for step-up).
	Consent       bool
	ConsentReason string
	// Approvers may decide the consent request (nil: the session's
	// user); ConsentTTL is how long it waits; AllowEdits lets approvers
	// replace the arguments.
	Approvers  *Principals
	ConsentTTL time.Duration
	AllowEdits bool
	// Known is true when the caller may see the target (a rule names it
	// for them): a refusal is then a denial it is told about; otherwise the
	// target does not exist for the caller.
	Known bool
	// DLP redacts the arguments and the result, nil for none. For prompts
	// and resources without a rule profile it is the upstream's
	// content_dlp.
	DLP *Redactor
}

// Mode is how an engine without documents decides.
type Mode int

const (
	// DenyWithoutRules denies everything when no document is loaded: the
	// default for authenticated gateways.
	DenyWithoutRules Mode = iota
	// AllowWithoutRules allows everything when no document is loaded: the
	// loopback --auth open trial.
	AllowWithoutRules
)

// Options configure NewEngine.
type Options struct {
	Documents []*Document
	// Mode applies when Documents is empty.
	Mode Mode
	// Now is the clock of conditions and rate limits; nil means time.Now.
	Now func() time.Time
	// Risk scores a session's counters; the zero value never steps up or
	// blocks.
	Risk Risk
	// Limiter keeps the rate limits' buckets; nil means a MemoryLimiter
	// of the engine's own (reset by a reload).
	Limiter Limiter
}

// Engine decides calls. It is immutable once built (a policy reload builds
// a new one) and safe for concurrent use; only rate-limit buckets change.
type Engine struct {
	mode  Mode
	risk  Risk
	rules []*rule // in document order
	// exact indexes rules by (kind, upstream, name) for the names they
	// give exactly and whose upstream is a plain name; byUpstream the rules
	// of one upstream naming globs, by (kind, upstream); anyUpstream the
	// rules whose upstream is a glob, by kind.
	exact       map[exactKey][]*rule
	byUpstream  map[upstreamKey][]*rule
	anyUpstream [3][]*rule
	now         func() time.Time
	// content are the content DLP profiles: by upstream, "" for every
	// upstream; the first document to name one for an upstream wins.
	content map[string]*Redactor

	limiter Limiter
}

type exactKey struct {
	kind           TargetKind
	upstream, name string
}

type upstreamKey struct {
	kind     TargetKind
	upstream string
}

type rule struct {
	seq               int
	policyID, version string
	id                string
	upstream          string
	names             [3][]string // by TargetKind: tool and prompt globs, resource patterns
	uris              []*uriPattern
	p                 Principals
	input, output     *schemas.Schema
	inputRaw          json.RawMessage
	consent           string
	approvers         *Principals
	consentTTL        time.Duration
	consentEdits      bool
	limit             *RateLimit
	dlp               *Redactor
	cond              cel.Program
}

// DefaultConsentTTL is how long a consent request waits when its rule says
// nothing.
const DefaultConsentTTL = 5 * time.Minute

// maxLimiters bounds the rate-limit buckets of an engine's own limiter. A
// variable for tests.
var maxLimiters = 200_000

// NewEngine compiles documents: globs, schemas, CEL conditions and DLP
// profiles are checked and compiled once, here. Errors name the document and
// the rule.
func NewEngine(o Options) (*Engine, error) {
	e := &Engine{mode: o.Mode, risk: o.Risk, exact: map[exactKey][]*rule{}, byUpstream: map[upstreamKey][]*rule{}, now: o.Now, content: map[string]*Redactor{}, limiter: o.Limiter}
	if e.now == nil {
		e.now = time.Now
	}
	if e.limiter == nil {
		e.limiter = NewMemoryLimiter(maxLimiters)
	}
	env, err := conditionEnv()
	if err != nil {
		return nil, err
	}
	ids := map[string]bool{}
	for _, d := range o.Documents {
		if ids[d.ID] {
			return nil, fmt.Errorf("policy: two documents with id %q", d.ID)
		}
		ids[d.ID] = true
		dlp := map[string]*Redactor{}
		for name, prof := range d.DLPProfiles {
			r, err := CompileDLP(name, prof)
			if err != nil {
				return nil, fmt.Errorf("policy %s: dlp_profiles.%s: %w", d.ID, name, err)
			}
			dlp[name] = r
		}
		if d.ContentDLP != "" {
			r := dlp[d.ContentDLP]
			if r == nil {
				return nil, fmt.Errorf("policy %s: content_dlp: no profile %q in this document", d.ID, d.ContentDLP)
			}
			if _, taken := e.content[d.Upstream]; !taken {
				e.content[d.Upstream] = r
			}
		}
		for i := range d.Rules {
			r, err := compileRule(env, d, &d.Rules[i], dlp)
			if err != nil {
				return nil, fmt.Errorf("policy %s: rules[%d] (%s): %w", d.ID, i, d.Rules[i].ID, err)
			}
			r.seq = len(e.rules)
			e.rules = append(e.rules, r)
			e.index(r)
		}
	}
	return e, nil
}

func compileRule(env *cel.Env, d *Document, src *Rule, dlp map[string]*Redactor) (*rule, error) {
	version := d.Version
	if version == "" {
		version = "0"
	}
	r := &rule{policyID: d.ID, version: version, id: src.ID, upstream: src.Upstream, p: src.Principals,
		names:    [3][]string{KindTool: src.Tools, KindPrompt: src.Prompts, KindResource: src.Resources},
		inputRaw: src.InputSchema, consent: src.Consent, limit: src.RateLimit,
		approvers: src.Approvers, consentTTL: DefaultConsentTTL, consentEdits: src.ConsentEdits}
	if src.ConsentTTL != "" {
		ttl, err := time.ParseDuration(src.ConsentTTL)
		if err != nil || ttl <= 0 {
			return nil, fmt.Errorf("consent_ttl: %q is not a positive duration such as 5m", src.ConsentTTL)
		}
		r.consentTTL = ttl
	}
	if len(src.Tools)+len(src.Prompts)+len(src.Resources) == 0 {
		return nil, errors.New("names no tools, prompts or resources")
	}
	if r.upstream == "" {
		r.upstream = "*"
	}
	if d.Upstream != "" {
		// A registered allow-list speaks for its own upstream only.
		if src.Upstream != "" && src.Upstream != d.Upstream {
			return nil, fmt.Errorf("upstream %q: this document covers upstream %q only", src.Upstream, d.Upstream)
		}
		r.upstream = d.Upstream
	}
	globs := slices.Concat([]string{r.upstream}, src.Tools, src.Prompts, r.p.Users, r.p.Agents)
	for _, g := range globs {
		if _, err := path.Match(g, ""); err != nil {
			return nil, fmt.Errorf("bad glob %q", g)
		}
	}
	for _, u := range src.Resources {
		pat, err := compileURIPattern(u)
		if err != nil {
			return nil, fmt.Errorf("resources: %q: %w", u, err)
		}
		r.uris = append(r.uris, pat)
	}
	var err error
	if len(src.InputSchema) > 0 {
		if r.input, err = schemas.Compile(src.InputSchema); err != nil {
			return nil, fmt.Errorf("input_schema: %w", err)
		}
	}
	if len(src.OutputSchema) > 0 {
		if r.output, err = schemas.Compile(src.OutputSchema); err != nil {
			return nil, fmt.Errorf("output_schema: %w", err)
		}
	}
	if src.DLP != "" {
		if r.dlp = dlp[src.DLP]; r.dlp == nil {
			return nil, fmt.Errorf("dlp: no profile %q in this document", src.DLP)
		}
	}
	if src.Condition != "" {
		if r.cond, err = compileCondition(env, src.Condition); err != nil {
			return nil, fmt.Errorf("condition: %w", err)
		}
	}
	return r, nil
}

func isGlob(s string) bool {
	return slices.ContainsFunc([]byte(s), func(c byte) bool { return c == '*' || c == '?' || c == '[' || c == '\\' })
}

func (e *Engine) index(r *rule) {
	for k, names := range r.names {
		kind := TargetKind(k)
		switch {
		case len(names) == 0:
		case isGlob(r.upstream):
			e.anyUpstream[kind] = append(e.anyUpstream[kind], r)
		case !slices.ContainsFunc(names, func(n string) bool { return isGlob(n) || kind == KindResource && strings.Contains(n, "{") }):
			for _, n := range names {
				k := exactKey{kind, r.upstream, n}
				e.exact[k] = append(e.exact[k], r)
			}
		default:
			k := upstreamKey{kind, r.upstream}
			e.byUpstream[k] = append(e.byUpstream[k], r)
		}
	}
}

// candidates returns the rules that name t, in document order.
func (e *Engine) candidates(t Target) []*rule {
	exact := e.exact[exactKey{t.Kind, t.Upstream, t.Name}]
	up := e.byUpstream[upstreamKey{t.Kind, t.Upstream}]
	anyUp := e.anyUpstream[t.Kind]
	if len(up) == 0 && len(anyUp) == 0 {
		return exact
	}
	out := make([]*rule, 0, len(exact)+len(up)+len(anyUp))
	out = append(out, exact...)
	for _, r := range up {
		if r.covers(t) {
			out = append(out, r)
		}
	}
	for _, r := range anyUp {
		if ok, _ := path.Match(r.upstream, t.Upstream); ok && r.covers(t) {
			out = append(out, r)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].seq < out[j].seq })
	return out
}

// covers reports whether the rule names t (its upstream aside).
func (r *rule) covers(t Target) bool {
	if t.Kind == KindResource {
		return slices.ContainsFunc(r.uris, func(p *uriPattern) bool { return p.match(t.Name) })
	}
	return anyGlob(r.names[t.Kind], t.Name)
}

// matches reports whether the rule is for p.
func (r *rule) matches(p *identity.Principal) bool { return r.p.Match(p) }

// Match reports whether p is one of the principals: every kind listed must
// match, an absent kind matches anyone.
func (r Principals) Match(p *identity.Principal) bool {
	if len(r.Users) > 0 && !anyGlob(r.Users, p.User) {
		return false
	}
	if len(r.Agents) > 0 && (p.Agent == "" || !anyGlob(r.Agents, p.Agent)) {
		return false
	}
	if len(r.Issuers) > 0 && !slices.Contains(r.Issuers, p.Issuer) {
		return false
	}
	if len(r.Groups) > 0 && !slices.ContainsFunc(r.Groups, func(g string) bool { return slices.Contains(p.Groups, g) }) {
		return false
	}
	for _, s := range r.Scopes {
		if !slices.Contains(p.Scopes, s) {
			return false
		}
	}
	for name, want := range r.Claims {
		if !claimHas(p.Claims[name], want) {
			return false
		}
	}
	return true
}

// claimHas reports whether a decoded claim value is want, or a list holding
// it. Numbers and booleans compare by their JSON text.
func claimHas(v any, want string) bool {
	switch v := v.(type) {
	case string:
		return v == want
	case []any:
		return slices.ContainsFunc(v, func(e any) bool { return claimHas(e, want) })
	case nil, map[string]any:
		return false
	default:
		return fmt.Sprint(v) == want
	}
}

func anyGlob(globs []string, s string) bool {
	for _, g := range globs {
		if ok, _ := path.Match(g, s); ok {
			return true
		}
	}
	return false
}

// Visible reports whether any rule lets p use t at all (before conditions
// and rate limits, which depend on the call): lists show exactly these.
// It also returns the first such rule's input schema, to show the tightened
// schema.
func (e *Engine) Visible(p identity.Principal, t Target) (bool, json.RawMessage) {
	if len(e.rules) == 0 {
		return e.mode == AllowWithoutRules, nil
	}
	for _, r := range e.candidates(t) {
		if r.matches(&p) {
			return true, r.inputRaw
		}
	}
	return false, nil
}

// Authorize decides one call: the first rule (in document order) that names
// the target and the principal and whose condition holds allows it, subject
// to its rate limit. No such rule: denied (default deny). The session's risk
// then applies: past its block level a call the caller could make is
// denied, past step-up it needs the user's consent.
func (e *Engine) Authorize(ctx context.Context, req Request) Decision {
	d := e.decide(ctx, req)
	if !d.Known {
		return d
	}
	switch score := req.Session.Risk; e.risk.Level(score) {
	case LevelBlock:
		d.Allow, d.RetryAfter = false, 0
		d.Reason = fmt.Sprintf("session blocked: its risk score %.1f passed the limit", score)
	case LevelStepUp:
		if d.Allow && !d.Consent {
			d.Consent = true
			d.ConsentReason = fmt.Sprintf("step-up required: the session's risk score is %.1f", score)
		}
	}
	return d
}

func (e *Engine) decide(ctx context.Context, req Request) Decision {
	if len(e.rules) == 0 {
		if e.mode == AllowWithoutRules {
			d := Decision{PolicyID: "open-trial", Allow: true, Known: true, DLP: e.contentDLP(req.Target), ConsentTTL: DefaultConsentTTL}
			if req.Target.Destructive {
				d.Consent, d.ConsentReason = true, "the tool is annotated destructive"
			}
			return d
		}
		return Decision{PolicyID: "default-deny", Reason: "no allow-list is loaded: everything is denied"}
	}
	var vars map[string]any
	var condFailed *rule
	for _, r := range e.candidates(req.Target) {
		if !r.matches(&req.Principal) {
			continue
		}
		if r.cond != nil {
			if vars == nil {
				vars = conditionVars(req, e.now())
			}
			ok, err := evalCondition(ctx, r.cond, vars)
			if err != nil || !ok {
				if condFailed == nil {
					condFailed = r
				}
				continue
			}
		}
		d := Decision{PolicyID: r.policyID, Version: r.version, RuleID: r.id, Input: r.input, Output: r.output, DLP: r.dlp, Known: true,
			Approvers: r.approvers, ConsentTTL: r.consentTTL, AllowEdits: r.consentEdits}
		if d.DLP == nil {
			d.DLP = e.contentDLP(req.Target)
		}
		switch r.consent {
		case ConsentAlways:
			d.Consent, d.ConsentReason = true, "rule "+r.id+" asks for consent"
		case ConsentNever:
		default:
			switch {
			case req.Target.Destructive:
				d.Consent, d.ConsentReason = true, "the tool is annotated destructive"
			case req.Target.mayChange():
				d.Consent, d.ConsentReason = true, "the tool is not annotated read-only"
			}
		}
		if r.limit != nil {
			switch wait, err := e.take(ctx, r, req); {
			case err != nil:
				// Fail closed: a limit that cannot be checked holds.
				d.Reason = fmt.Sprintf("rate limit of rule %s cannot be checked", r.id)
				return d
			case wait > 0:
				d.Reason = fmt.Sprintf("rate limit of rule %s exceeded", r.id)
				d.RetryAfter = wait
				return d
			}
		}
		d.Allow = true
		return d
	}
	if condFailed != nil {
		return Decision{PolicyID: condFailed.policyID, Version: condFailed.version, RuleID: condFailed.id, Known: true,
			Reason: fmt.Sprintf("condition of rule %s not met", condFailed.id)}
	}
	return Decision{PolicyID: "default-deny", Reason: "no rule allows this call"}
}

// take spends a token of the (rule, principal, target) bucket and returns 0,
// or how long until a token is available.
func (e *Engine) take(ctx context.Context, r *rule, req Request) (time.Duration, error) {
	key := "rule\x00" + r.policyID + "/" + r.id + "\x00" + req.Principal.Key() + "\x00" + req.Target.Kind.String() + ":" + req.Target.Upstream + "/" + req.Target.Name
	return e.limiter.Take(ctx, key, r.limit.PerMinute, Burst(r.limit.PerMinute, r.limit.Burst), e.now())
}

// contentDLP returns the content_dlp profile that covers a prompt or
// resource of t's upstream, nil for none (and for tools).
func (e *Engine) contentDLP(t Target) *Redactor {
	if t.Kind == KindTool {
		return nil
	}
	if r, ok := e.content[t.Upstream]; ok {
		return r
	}
	return e.content[""]
}

// errNotBool is a condition whose value is not a boolean.
var errNotBool = errors.New("condition did not evaluate to a boolean")
