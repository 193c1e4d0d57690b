package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/sag-gateway/sag/identity"
	"github.com/sag-gateway/sag/pipeline"
	"github.com/sag-gateway/sag/server/config"
	"github.com/sag-gateway/sag/store"
)

// errSessionKilled is the cause of calls cancelled by the kill-switch.
var errSessionKilled = errors.New("session killed")

// KillRequest is the body of POST /admin/kill: exactly one of its fields.
type KillRequest struct {
	// Session is a USID, WSID, ASID or MSID.
	Session string `json:"session,omitempty"`
	// User kills every session and token of this subject, of every issuer
	// the gateway trusts, issued up to the kill; a token issued later (a
	// fresh sign-in) works.
	User string `json:"user,omitempty"`
	// Agent kills every agent session of this agent (SPIFFE ID).
	Agent string `json:"agent,omitempty"`
}

// KillResult says what a kill did.
type KillResult struct {
	// Revoked are the ids of every revoked session-graph node.
	Revoked []string `json:"revoked"`
	// CancelledCalls is how many calls in flight were cancelled.
	CancelledCalls int `json:"cancelled_calls"`
	// ClosedSessions is how many open MCP sessions were closed.
	ClosedSessions int `json:"closed_sessions"`
	// CancelledConsents is how many pending consent requests were
	// cancelled.
	CancelledConsents int `json:"cancelled_consents"`
	// CancelledTasks is how many live A2A tasks were cancelled.
	CancelledTasks int `json:"cancelled_tasks"`
	// Issuers are the issuers whose tokens of the killed user were
	// revoked (user kills only).
	Issuers []string `json:"issuers,omitempty"`
}

// Kill revokes a session-graph node and everything under it, then stops what
// hangs off it: calls in flight are cancelled (the upstream sees the
// cancellation), open MCP sessions and their streams are closed, tokens minted
// for those sessions become inactive at introspection (the store joins them
// to their session's state) and are never reused, and later requests on any
// revoked node are refused. Revocation is committed before anything else
// happens, so a crash half-way leaves the sessions revoked.
func (g *Gateway) Kill(ctx context.Context, req KillRequest) (KillResult, error) {
	var res KillResult
	var roots []string
	var err error
	switch {
	case countSet(req.Session, req.User, req.Agent) != 1:
		return KillResult{}, badRequest("give exactly one of session, user and agent")
	case req.Session != "":
		roots = []string{req.Session}
	case req.User != "":
		// Every token of the user issued up to now, whatever its sid, is
		// refused from here on, first in the store.
		res.Issuers = g.issuers()
		for _, iss := range res.Issuers {
			if err := g.sessions.killUser(ctx, iss, req.User, g.sessions.now()); err != nil {
				return KillResult{}, err
			}
		}
		roots, err = g.store.FindSessions(ctx, store.KindUser, req.User, false)
	default:
		roots, err = g.store.FindSessions(ctx, store.KindAgent, req.Agent, true)
	}
	if err != nil {
		return KillResult{}, err
	}
	revoked := map[string]bool{}
	for _, root := range roots {
		ids, err := g.store.RevokeTree(ctx, root)
		if errors.Is(err, store.ErrNotFound) {
			continue
		}
		if err != nil {
			return KillResult{}, err
		}
		for _, id := range ids {
			if !revoked[id] {
				revoked[id] = true
				res.Revoked = append(res.Revoked, id)
			}
		}
	}
	if req.User == "" && len(res.Revoked) == 0 {
		return KillResult{}, &adminError{Status: http.StatusNotFound, Code: "not_found", Description: "no such session"}
	}
	g.stopRevoked(ctx, revoked, &res)
	slices.Sort(res.Revoked)
	return res, nil
}

// stopRevoked applies a committed revocation of the nodes in revoked to
// what this gateway holds in memory, for a kill here or one another
// gateway sharing the store made: requests on them are refused from now,
// their pending consents and A2A tasks are cancelled, their calls in
// flight cancelled and their open MCP sessions closed; res counts what
// stopped.
func (g *Gateway) stopRevoked(ctx context.Context, revoked map[string]bool, res *KillResult) {
	ids := slices.Collect(maps.Keys(revoked))
	g.sessions.revoke(ids...)
	// Pending consent requests on a killed path are cancelled (their
	// waiting calls then end); revocation is already committed, so a
	// failure here leaves them to expire, refused anyway.
	if n, err := g.consent.CancelNodes(ctx, revoked); err != nil {
		g.log.Error("kill: pending consent requests not cancelled; they will expire", "error", err)
	} else {
		res.CancelledConsents = n
	}
	g.auth.minter.Forget(ids...)
	if n, err := g.a2a.Killed(ctx, revoked); err != nil {
		g.log.Error("kill: A2A tasks not all cancelled; their sessions refuse them anyway", "error", err)
	} else {
		res.CancelledTasks = n
	}
	// Cancelled calls answer their clients with an error before the
	// sessions close: a client whose stream just vanished would retry
	// before giving up.
	cancelled := g.inflight.cancelNodes(revoked, errSessionKilled)
	res.CancelledCalls = len(cancelled)
	deadline := time.After(time.Second)
	for _, done := range cancelled {
		select {
		case <-done:
		case <-deadline:
		}
	}
	var open []*mcp.ServerSession
	g.front.watched.Range(func(id, w any) bool {
		if revoked[id.(string)] {
			open = append(open, w.(*watched).ss)
		}
		return true
	})
	for _, ss := range open {
		ss.Close()
	}
	res.ClosedSessions = len(open)
}

// issuers are the token issuers the gateway trusts: its own, the
// configured ones, and "open" for the anonymous user of --auth open.
func (g *Gateway) issuers() []string {
	out := []string{g.cfg.ResolvedPublicURL()}
	for _, is := range g.cfg.Identity.Issuers {
		out = append(out, is.Issuer)
	}
	if in := g.cfg.Identity.Legacy.Introspection; g.cfg.Identity.Legacy.Enabled && in.Issuer != "" && !slices.Contains(out, in.Issuer) {
		out = append(out, in.Issuer)
	}
	if g.cfg.Auth == config.AuthOpen {
		out = append(out, identity.Anonymous().Issuer)
	}
	return out
}

func countSet(vals ...string) int {
	n := 0
	for _, v := range vals {
		if v != "" {
			n++
		}
	}
	return n
}

// killHandler serves POST /admin/kill.
func (g *Gateway) killHandler(w http.ResponseWriter, r *http.Request) error {
	var req KillRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return badRequest("body: %v", err)
	}
	start := time.Now()
	res, err := g.Kill(r.Context(), req)
	if err != nil {
		return err
	}
	rec := store.AuditRecord{Method: "admin/kill", PolicyID: "admin", Decision: pipeline.DecisionAllow, Sub: req.User, SpiffeID: req.Agent, MSID: req.Session,
		Reason: fmt.Sprintf("killed %d nodes, cancelled %d calls, closed %d sessions", len(res.Revoked), res.CancelledCalls, res.ClosedSessions)}
	if aerr := g.audit(r.Context(), &rec, start); aerr != nil {
		g.log.Error("kill not audited", "error", aerr)
	}
	g.log.Warn("kill-switch", "session", req.Session, "user", req.User, "agent", req.Agent, "revoked", len(res.Revoked),
		"cancelled_calls", res.CancelledCalls, "closed_sessions", res.ClosedSessions)
	writeJSON(w, http.StatusOK, res)
	return nil
}
