package server

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/sag-gateway/sag/a2a"
	"github.com/sag-gateway/sag/agui"
	"github.com/sag-gateway/sag/identity"
	"github.com/sag-gateway/sag/pipeline"
	"github.com/sag-gateway/sag/upstreams"
)

// maxRunToken bounds the life of the token an AG-UI agent gets for its
// calls back to the gateway during a run (never past the user's own).
const maxRunToken = 30 * time.Minute

// agentRuns starts runs of upstream AG-UI agents for users (agui.Runs).
type agentRuns struct{ g *Gateway }

// agentIdentity is an AG-UI agent's identity in the session graph and in
// the tokens it gets.
func (g *Gateway) agentIdentity(name string) string {
	return g.cfg.ResolvedPublicURL() + "/agui/agents/" + name
}

// Start places the run in the session graph (the user's session, the
// thread's workflow, an agent session of its own: a kill of any of them
// ends the run), and gives the agent a token for its calls back to the
// gateway: the user's, acted by the agent, bound to the agent's registered
// DPoP key and to the workflow, revoked when the run ends. The gateway
// reaches the agent with a token minted for it, never the user's.
func (a agentRuns) Start(ctx context.Context, p identity.Principal, name, thread string) (*agui.AgentRun, error) {
	g := a.g
	if spec, ok := g.upstreams.Spec(name); !ok || spec.Kind != upstreams.KindAGUI {
		return nil, agui.ErrUnknownAgent
	}
	if p.Agent != "" || p.Act != nil {
		// A user's UI runs agents; an agent that ran one would hide
		// behind it (its calls judged as the other agent's).
		return nil, errors.New("agents cannot run agents through SAG: a user runs them")
	}
	agent := g.agentIdentity(name)
	ap := p
	ap.Agent, ap.Act = agent, &identity.Actor{Sub: agent, Act: p.Act}
	c := &pipeline.Call{Principal: ap, Channel: pipeline.AGUI, Workflow: thread}
	// The run outlives the request that starts it (it may wait for a
	// resume), not the kill-switch.
	runCtx, done, err := g.sessions.Admit(context.WithoutCancel(ctx), c)
	if err != nil {
		return nil, err
	}
	ra, ok := g.upstreams.RunAgent(upstreams.WithCaller(runCtx, p, c.Sessions.MSID, nil), name)
	if !ok {
		done()
		return nil, agui.ErrUnknownAgent
	}
	base := g.cfg.ResolvedPublicURL()
	props := map[string]any{"mcpUrl": base + "/mcp", "workflow": thread, "agent": agent}
	end := done
	if g.auth.check != nil {
		ttl := maxRunToken
		if !p.Expiry.IsZero() {
			ttl = min(ttl, time.Until(p.Expiry))
		}
		tok, claims, err := g.auth.issuer.Mint(identity.Claims{
			Subject: p.User, Audience: identity.Audience{base}, ClientID: agent, SessionID: p.SessionID,
			Scope: strings.Join(p.Scopes, " "), Groups: p.Groups,
			// RFC 9449 §6.1: bound to the agent's own key.
			Cnf:      &identity.Confirmation{JKT: ra.Key},
			Act:      ap.Act,
			RunAgent: agent, RunWorkflow: thread, RunIssuer: p.Issuer,
		}, ttl)
		if err != nil {
			done()
			return nil, err
		}
		props["token"], props["tokenType"] = tok, "DPoP"
		exp := time.Unix(claims.Expiry, 0)
		// The token works only while the run lives here (a restart or the
		// run's end stops it at once) and stands for p.
		g.liveRuns.Store(claims.JTI, p)
		end = func() {
			g.liveRuns.Delete(claims.JTI)
			if err := g.revoked.revoke(context.Background(), base, claims.JTI, exp); err != nil {
				g.log.Error("agent run token not revoked; it expires on its own", "agent", agent, "expires", exp, "error", err)
			}
			done()
		}
	}
	return &agui.AgentRun{URL: ra.URL, Client: ra.Client, Agent: agent, Props: props, Ctx: runCtx, End: end}, nil
}

// upstreamAgentCard serves the card of an upstream A2A agent as SAG
// offers it to the caller: its URLs are SAG's, and its skills those the
// caller may use (like the extended card, it needs authentication).
func (g *Gateway) upstreamAgentCard(w http.ResponseWriter, r *http.Request) {
	card, tools, ok := g.upstreams.AgentCard(r.PathValue("name"))
	p, _ := principalOf(r)
	var allowed []a2a.Tool
	var err error
	if ok {
		allowed, err = g.toolsFor(r.Context(), p)
	}
	if !ok || err != nil {
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "not_found", "error_description": "no A2A agent " + r.PathValue("name")})
		return
	}
	mine := map[string]string{}
	for skill, tool := range tools {
		if slices.ContainsFunc(allowed, func(t a2a.Tool) bool { return t.Name == tool }) {
			mine[skill] = tool
		}
	}
	writeJSON(w, http.StatusOK, g.a2a.UpstreamCard(card, mine))
}
