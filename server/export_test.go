package server

import (
	"context"

	"github.com/sag-gateway/sag/consent"
	"github.com/sag-gateway/sag/identity"
)

// SetMaxKnownSessions lowers the bound of the sessions component's node
// cache for gateways built from now on (tests of eviction), and returns a
// func that restores it.
func SetMaxKnownSessions(n int) func() {
	old := maxKnownSessions
	maxKnownSessions = n
	return func() { maxKnownSessions = old }
}

// ConsentChannel marks p as following its consent requests, as an open
// AG-UI stream does, until the test ends: its calls that need consent wait
// for decisions made through decide.
func ConsentChannel(t interface{ Cleanup(func()) }, g *Gateway, p identity.Principal) (pending func(context.Context) ([]consent.Request, error), decide func(context.Context, string, consent.Decision) (consent.Request, error)) {
	t.Cleanup(g.listeners.listen(p))
	return g.consent.Pending, g.consent.Decide
}

// ConsentRequest returns a consent request as stored.
func (g *Gateway) ConsentRequest(ctx context.Context, id string) (consent.Request, error) {
	return g.consent.Get(ctx, id)
}

// PendingConsents returns every pending consent request.
func (g *Gateway) PendingConsents(ctx context.Context) ([]consent.Request, error) {
	return g.consent.Pending(ctx)
}

// StreamsOpen reports whether p has a consent stream open.
func (g *Gateway) StreamsOpen(p identity.Principal) bool {
	g.listeners.mu.Lock()
	defer g.listeners.mu.Unlock()
	return g.listeners.open[userKey{p.Issuer, p.User}] > 0
}

// WorkflowSession is the WSID of p's workflow thread.
func (g *Gateway) WorkflowSession(p identity.Principal, thread string) string {
	return workflowSession(g.sessions.userSession(p), thread)
}

// UserSessionID is the USID of a token of (issuer, subject) without sid,
// of a user never killed.
func UserSessionID(issuer, subject string) string { return derive("u_", issuer, subject) }

// Following reports whether g counts p as following their consent requests
// (on g or, heard through a shared store, on another gateway).
func Following(g *Gateway, p identity.Principal) bool {
	return g.listeners.reachable(p, false, g.sessions.now())
}
