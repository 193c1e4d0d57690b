package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sag-gateway/sag/agui"
	"github.com/sag-gateway/sag/consent"
	"github.com/sag-gateway/sag/identity"
	"github.com/sag-gateway/sag/pipeline"
	"github.com/sag-gateway/sag/policy"
	"github.com/sag-gateway/sag/store"
	"github.com/sag-gateway/sag/upstreams"
)

// consentStep is the pipeline's consent step over the consent engine: a
// call that needs consent becomes a stored request and waits for its user's
// decision, its caller kept informed by progress notifications; the
// caller's cancellation cancels the request. Decisions reach the engine
// through the AG-UI consent stream (POST /agui); a call whose approvers
// follow no stream (none open, none closed in the last listenGrace) cannot
// be asked and is refused at once, saying so.
type consentStep struct{ g *Gateway }

var _ pipeline.Consent = consentStep{}

// keepAliveEvery is how often a waiting caller hears why it waits.
const keepAliveEvery = 5 * time.Second

// Await implements pipeline.Consent. A call that names its earlier request
// (a multi-round-trip retry) waits for that request's decision; any other
// call becomes a new request. A caller whose channel can send its user to
// a page (MCP URL-mode elicitation) is sent to the request's page in the
// console: at once with the answer to retry (2026-07-28), or while the call
// waits (2025-11-25), a decline there denying the request.
func (s consentStep) Await(ctx context.Context, c *pipeline.Call, t pipeline.Target, d policy.Decision, args json.RawMessage) (pipeline.Approval, error) {
	g := s.g
	if c.Resume != "" {
		if r, ok := s.resumable(ctx, c, t, args); ok {
			if c.Declined {
				s.decline(ctx, r)
			}
			return s.wait(ctx, c, r, d.ConsentTTL, consent.HashArgs(args))
		}
		// The state names no request of this call: it is asked afresh.
	}
	p := c.Principal
	if c.Asker == nil && !g.listeners.reachable(p, d.Approvers != nil, g.sessions.now()) {
		return pipeline.Approval{}, fmt.Errorf("consent required: %s needs the approval of %s (%s), who follows no consent stream; open one (POST /agui) and call again",
			c.Name, p.User, d.ConsentReason)
	}
	req := consent.Request{
		USID: c.Sessions.USID, WSID: c.Sessions.WSID, ASID: c.Sessions.ASID, MSID: c.Sessions.MSID,
		Issuer: p.Issuer, User: p.User, Agent: p.Agent, Act: p.Act.String(),
		Upstream: t.Upstream, Tool: t.Name, Args: args, RuleID: d.RuleID, Reason: d.ConsentReason, AllowEdits: d.AllowEdits,
	}
	if d.Approvers != nil {
		req.Approvers, _ = json.Marshal(d.Approvers) // plain data always encodes
	}
	if tool, ok := t.Entry.(*upstreams.Tool); ok && d.AllowEdits && tool.Def.InputSchema != nil {
		req.ArgsSchema, _ = json.Marshal(tool.Def.InputSchema) // a catalog schema was decoded from JSON
	}
	req.Risk = g.sessions.Risk(ctx, c).Risk
	req.Later = c.Asker != nil && c.Asker.Later()
	r, err := g.consent.Create(ctx, req, d.ConsentTTL)
	if err != nil {
		g.log.Error("consent request not recorded; call refused", "error", err)
		return pipeline.Approval{}, errors.New("consent unavailable: the request could not be recorded")
	}
	// consent.requested: the request, with the call's identity and place.
	rec := store.AuditRecord{Method: "consent.requested", ConsentID: r.ID, USID: r.USID, WSID: r.WSID, ASID: r.ASID, MSID: r.MSID,
		Sub: p.User, SpiffeID: p.Agent, Act: r.Act, Upstream: t.Upstream, Tool: c.Name, AllowListMatch: d.RuleID,
		PolicyID: "consent", Decision: string(consent.Pending), Reason: d.ConsentReason}
	if err := g.audit(ctx, &rec, time.Now()); err != nil {
		// Fail closed like any call that cannot be recorded.
		_ = g.consent.Cancel(context.WithoutCancel(ctx), r.ID)
		return pipeline.Approval{ID: r.ID}, errors.New("consent unavailable: the request could not be audited")
	}
	if c.Asker != nil {
		url := g.cfg.ResolvedPublicURL() + "/console/#" + r.ID
		msg := fmt.Sprintf("%s needs %s's approval (%s): decide at %s", c.Name, p.User, d.ConsentReason, url)
		if c.Asker.Later() {
			return pipeline.Approval{ID: r.ID}, &pipeline.InputRequired{ID: r.ID, URL: url, Message: msg}
		}
		actx, cancel := context.WithCancel(ctx)
		defer cancel()
		go func() {
			if declined, err := c.Asker.Ask(actx, r.ID, url, msg); err == nil && declined {
				s.decline(context.WithoutCancel(ctx), r)
			}
		}()
		defer c.Asker.Done(r.ID)
	}
	return s.wait(ctx, c, r, d.ConsentTTL, consent.HashArgs(args))
}

// resumable returns the request a retried call names, when it is this
// call's: the same agent session, upstream, tool and arguments.
func (s consentStep) resumable(ctx context.Context, c *pipeline.Call, t pipeline.Target, args json.RawMessage) (consent.Request, bool) {
	r, err := s.g.consent.Get(ctx, c.Resume)
	return r, err == nil && r.ASID == c.Sessions.ASID && r.Upstream == t.Upstream && r.Tool == t.Name && r.ArgsHash == consent.HashArgs(args)
}

// decline denies r because the caller's client declined its page, and
// audits it (consent.decided).
func (s consentStep) decline(ctx context.Context, r consent.Request) {
	got, err := s.g.consent.Decline(ctx, r.ID, declineChannel)
	if err != nil {
		return // decided meanwhile: that decision stands
	}
	rec := store.AuditRecord{Method: "consent.decided", ConsentID: r.ID, USID: r.USID, WSID: r.WSID, ASID: r.ASID, MSID: r.MSID,
		Sub: r.User, SpiffeID: r.Agent, Act: r.Act, Upstream: r.Upstream, Tool: r.Tool, AllowListMatch: r.RuleID,
		PolicyID: "consent", Decision: pipeline.DecisionDeny, Reason: fmt.Sprintf("%s through %s", got.State, declineChannel)}
	if err := s.g.audit(ctx, &rec, time.Now()); err != nil {
		s.g.log.Error("consent decline not audited", "consent_id", r.ID, "error", err)
	}
}

// declineChannel names the decisions a caller's client makes by declining
// the page it was sent to.
const declineChannel = "mcp-url-elicitation"

// wait waits for r's decision, keeping the caller informed, and returns the
// approval (used once, for this agent session and the arguments hashed to
// argsHash) or why there is none.
func (s consentStep) wait(ctx context.Context, c *pipeline.Call, r consent.Request, ttl time.Duration, argsHash string) (pipeline.Approval, error) {
	g := s.g
	a := pipeline.Approval{ID: r.ID}
	stop := keepAlive(c, fmt.Sprintf("waiting for %s's approval of %s (consent request %s)", r.User, c.Name, r.ID))
	r, err := g.consent.Wait(ctx, r.ID)
	stop()
	if err != nil {
		return a, errors.New("consent unavailable: the request could not be read")
	}
	switch r.State {
	case consent.Approved, consent.ApprovedWithEdits:
		if _, err := g.consent.Use(ctx, r.ID, c.Sessions.ASID, argsHash); err != nil {
			return a, fmt.Errorf("consent %s: %w", r.ID, err)
		}
		a.EditedArgs = r.EditedArgs
		return a, nil
	case consent.Denied:
		return a, fmt.Errorf("denied by %s", r.DecidedBy)
	case consent.Expired:
		return a, fmt.Errorf("consent request expired: no decision within %s", ttl)
	}
	return a, errors.New("consent request cancelled")
}

// keepAlive sends the call's caller a progress message now and every
// keepAliveEvery until stop is called; a caller that asked for no progress
// hears nothing.
func keepAlive(c *pipeline.Call, msg string) (stop func()) {
	if c.Progress == nil {
		return func() {}
	}
	c.Progress(msg)
	t := time.NewTicker(keepAliveEvery)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-t.C:
				c.Progress(msg)
			case <-done:
				return
			}
		}
	}()
	return func() {
		t.Stop()
		close(done)
	}
}

// listenGrace is how long after its last consent stream closed a user
// still counts as following (a UI resumes with a new run after each
// interrupt).
const listenGrace = 5 * time.Minute

// listeners tracks who follows their consent requests: the open consent
// streams of each user, and when the last one closed (on the gateway's
// clock, now).
type listeners struct {
	now func() time.Time
	// announce, on a shared store, tells the other gateways that a user
	// follows here (on a stream's start and end, and every minute while
	// one is open): they count the user as following for listenGrace.
	announce func(issuer, subject string)

	mu   sync.Mutex
	open map[userKey]int
	seen map[userKey]time.Time
}

// listen marks p as following until the returned func is called.
func (l *listeners) listen(p identity.Principal) func() {
	k := userKey{p.Issuer, p.User}
	l.mu.Lock()
	l.init()
	l.open[k]++
	l.mu.Unlock()
	l.tell(k)
	return func() {
		l.mu.Lock()
		if l.open[k]--; l.open[k] <= 0 {
			delete(l.open, k)
		}
		l.seen[k] = l.now()
		l.mu.Unlock()
		l.tell(k)
	}
}

func (l *listeners) init() {
	if l.open == nil {
		l.open, l.seen = map[userKey]int{}, map[userKey]time.Time{}
	}
}

// tell announces k off the caller's path.
func (l *listeners) tell(k userKey) {
	if l.announce != nil {
		go l.announce(k.issuer, k.subject)
	}
}

// heard records that k follows on another gateway as of now.
func (l *listeners) heard(k userKey) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.init()
	if now := l.now(); now.After(l.seen[k]) {
		l.seen[k] = now
	}
}

// retell announces every user with a stream open here.
func (l *listeners) retell() {
	l.mu.Lock()
	keys := slices.Collect(maps.Keys(l.open))
	l.mu.Unlock()
	for _, k := range keys {
		l.tell(k)
	}
}

// reachable reports whether a consent request of p's can be decided: p (or,
// for a rule naming approvers, anyone) follows a consent stream now or did
// within listenGrace.
func (l *listeners) reachable(p identity.Principal, anyone bool, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if anyone {
		if len(l.open) > 0 {
			return true
		}
		for _, t := range l.seen {
			if now.Sub(t) < listenGrace {
				return true
			}
		}
		return false
	}
	k := userKey{p.Issuer, p.User}
	return l.open[k] > 0 || now.Sub(l.seen[k]) < listenGrace
}

// approves reads a rule's approvers (policy principal matchers) for the
// consent engine.
func approves(raw json.RawMessage, p identity.Principal) bool {
	var who policy.Principals
	return json.Unmarshal(raw, &who) == nil && who.Match(&p)
}

// auditedConsents is the consent engine as decision channels see it: every
// decision, and every refused attempt to decide, is audited.
type auditedConsents struct{ g *Gateway }

var _ agui.Consents = auditedConsents{}

func (a auditedConsents) Pending(ctx context.Context) ([]consent.Request, error) {
	return a.g.consent.Pending(ctx)
}

func (a auditedConsents) MayDecide(r consent.Request, p identity.Principal) bool {
	return a.g.consent.MayDecide(r, p)
}

func (a auditedConsents) Changed() <-chan struct{} { return a.g.consent.Changed() }

// Decide records d and audits it (consent.decided): who decided, through
// which channel, what; a refused attempt is audited as a denial.
func (a auditedConsents) Decide(ctx context.Context, id string, d consent.Decision) (consent.Request, error) {
	start := time.Now()
	r, err := a.g.consent.Decide(ctx, id, d)
	rec := store.AuditRecord{Method: "consent.decided", ConsentID: id, Sub: d.By.User, SpiffeID: d.By.Agent, Act: d.By.Act.String(),
		USID: r.USID, WSID: r.WSID, ASID: r.ASID, MSID: r.MSID, Upstream: r.Upstream, Tool: r.Tool, AllowListMatch: r.RuleID,
		PolicyID: "consent", Decision: pipeline.DecisionAllow, Reason: fmt.Sprintf("%s through %s", r.State, d.Channel)}
	if pr := d.By.Proof; pr != nil {
		rec.DPoPJTI, rec.DPoPHTU, rec.DPoPHTM, rec.DPoPATH = pr.JTI, pr.HTU, pr.HTM, pr.ATH
	}
	if err != nil {
		rec.Decision, rec.Reason = pipeline.DecisionDeny, "decision refused: "+err.Error()
	}
	if aerr := a.g.audit(ctx, &rec, start); aerr != nil {
		a.g.log.Error("consent decision not audited", "consent_id", id, "error", aerr)
	}
	return r, err
}

// Finished implements pipeline.Consent: how an approved call ended goes to
// the stream that approved it (its TOOL_CALL_RESULT).
func (s consentStep) Finished(id string, out pipeline.Outcome) {
	s.g.consentResults.publish(id, resultText(out))
}

// resultText is what a consent stream shows of a call's outcome: the text
// of its result, the tool error, or the error.
func resultText(out pipeline.Outcome) string {
	if out.Result == nil && out.Value != nil {
		out.Result, _ = json.Marshal(out.Value) // the JSON of a result always encodes
	}
	switch {
	case out.Err != nil:
		return "error: " + out.Err.Message
	case out.ToolError != "":
		return out.ToolError
	}
	var res struct {
		Content []struct {
			Type string `json:"type"`
			Text string `json:"text"`
		} `json:"content"`
	}
	if json.Unmarshal(out.Result, &res) == nil {
		var texts []string
		for _, c := range res.Content {
			if c.Type == "text" {
				texts = append(texts, c.Text)
			}
		}
		if len(texts) > 0 {
			return strings.Join(texts, "\n")
		}
	}
	return string(out.Result)
}

// resultKeep is how long a finished call's result waits for its stream.
const resultKeep = time.Minute

// consentResults hands how approved calls ended to the streams waiting for
// them, by consent id.
type consentResults struct {
	mu sync.Mutex
	m  map[string]chan string
}

func (c *consentResults) ch(id string) chan string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[string]chan string{}
	}
	ch, ok := c.m[id]
	if !ok {
		ch = make(chan string, 1)
		c.m[id] = ch
	}
	return ch
}

func (c *consentResults) drop(id string) {
	c.mu.Lock()
	delete(c.m, id)
	c.mu.Unlock()
}

func (c *consentResults) publish(id, text string) {
	select {
	case c.ch(id) <- text:
	default:
	}
	time.AfterFunc(resultKeep, func() { c.drop(id) }) // an unclaimed result is not kept
}

// Result implements agui.Consents: it waits for how the approved call id
// ended.
func (a auditedConsents) Result(ctx context.Context, id string) (string, error) {
	ch := a.g.consentResults.ch(id)
	defer a.g.consentResults.drop(id)
	select {
	case text := <-ch:
		return text, nil
	case <-ctx.Done():
		return "", ctx.Err()
	}
}
