package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/sag-gateway/sag/consent"
	"github.com/sag-gateway/sag/identity"
	"github.com/sag-gateway/sag/pipeline"
	"github.com/sag-gateway/sag/policy"
)

// consentStep is the pipeline's consent step over the consent engine: a
// call that needs consent becomes a stored request and waits for its user's
// decision, its caller kept informed by progress notifications; the
// caller's cancellation cancels the request. Decisions reach the engine
// through a decision channel (the AG-UI consent stream); while none is
// open, nobody can be asked and the call is refused at once, saying so.
type consentStep struct{ g *Gateway }

var _ pipeline.Consent = consentStep{}

// keepAliveEvery is how often a waiting caller hears why it waits.
const keepAliveEvery = 5 * time.Second

// Await implements pipeline.Consent.
func (s consentStep) Await(ctx context.Context, c *pipeline.Call, t pipeline.Target, d policy.Decision, args json.RawMessage) (pipeline.Approval, error) {
	g := s.g
	if g.consentChannels.Load() == 0 {
		return pipeline.NoConsent{}.Await(ctx, c, t, d, args)
	}
	p := c.Principal
	req := consent.Request{
		USID: c.Sessions.USID, WSID: c.Sessions.WSID, ASID: c.Sessions.ASID, MSID: c.Sessions.MSID,
		Issuer: p.Issuer, User: p.User, Agent: p.Agent, Act: p.Act.String(),
		Upstream: t.Upstream, Tool: t.Name, Args: args, RuleID: d.RuleID, Reason: d.ConsentReason, AllowEdits: d.AllowEdits,
	}
	if d.Approvers != nil {
		req.Approvers, _ = json.Marshal(d.Approvers) // plain data always encodes
	}
	r, err := g.consent.Create(ctx, req, d.ConsentTTL)
	if err != nil {
		g.log.Error("consent request not recorded; call refused", "error", err)
		return pipeline.Approval{}, errors.New("consent unavailable: the request could not be recorded")
	}
	a := pipeline.Approval{ID: r.ID}
	stop := keepAlive(c, fmt.Sprintf("waiting for %s's approval of %s (consent request %s)", p.User, c.Name, r.ID))
	r, err = g.consent.Wait(ctx, r.ID)
	stop()
	if err != nil {
		return a, errors.New("consent unavailable: the request could not be read")
	}
	switch r.State {
	case consent.Approved, consent.ApprovedWithEdits:
		if _, err := g.consent.Use(ctx, r.ID, c.Sessions.ASID, r.ArgsHash); err != nil {
			return a, fmt.Errorf("consent %s: %w", r.ID, err)
		}
		a.EditedArgs = r.EditedArgs
		return a, nil
	case consent.Denied:
		return a, fmt.Errorf("denied by %s", r.DecidedBy)
	case consent.Expired:
		return a, fmt.Errorf("consent request expired: no decision within %s", d.ConsentTTL)
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

// openConsentChannel registers a decision channel; calls that need consent
// wait for decisions while at least one is open. The returned func closes
// it.
func (g *Gateway) openConsentChannel() func() {
	g.consentChannels.Add(1)
	return func() { g.consentChannels.Add(-1) }
}

// approves reads a rule's approvers (policy principal matchers) for the
// consent engine.
func approves(raw json.RawMessage, p identity.Principal) bool {
	var who policy.Principals
	return json.Unmarshal(raw, &who) == nil && who.Match(&p)
}
