package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/sag-gateway/sag/store"
	"github.com/sag-gateway/sag/upstreams"
)

// Gateways sharing a PostgreSQL store each keep revocations in memory for
// the hot path; the store tells each what the others committed
// (store.Event), and applyEvent brings memory up to date: a kill on one
// gateway stops the calls, streams and sessions it covers on every other.

// listen applies the other gateways' events until ctx ends. Registry
// changes are applied on a goroutine of their own, so that an upstream
// slow to connect never holds up a kill; it also announces the users
// following here again every minute.
func (g *Gateway) listen(ctx context.Context) {
	registry, policy, pins := make(chan struct{}, 1), make(chan struct{}, 1), make(chan struct{}, 1)
	due := func(ch chan struct{}) {
		select {
		case ch <- struct{}{}:
		default: // already due
		}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		// Users following here are announced again well within the
		// others' listenGrace.
		heartbeat := time.NewTicker(listenGrace / 5)
		defer heartbeat.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-heartbeat.C:
				g.listeners.retell()
			case <-registry:
				if err := g.syncUpstreams(ctx); err != nil {
					g.log.Error("replicas: upstream registry not synchronised", "error", err)
				}
			case <-policy:
				_ = g.ReloadPolicy(ctx) // logs its own failure; the previous policy stays
			case <-pins:
				if err := g.pins.Reload(ctx); err != nil {
					g.log.Error("replicas: tool pins not reloaded", "error", err)
					continue
				}
				g.front.sync(nil)

			}
		}
	}()
	g.store.Listen(ctx, func(ev store.Event) {
		switch ev.Kind {
		case store.EventUpstreams:
			due(registry)
		case store.EventPolicy:
			due(policy)
		case store.EventPins:
			due(pins)
		case store.EventResync:
			due(registry)
			due(policy)
			due(pins)
		}
		g.applyEvent(ctx, ev)
	})
	<-done
}

// applyEvent applies one committed change another gateway made.
func (g *Gateway) applyEvent(ctx context.Context, ev store.Event) {
	switch ev.Kind {
	case store.EventRevoked:
		g.stopRevoked(ctx, g.sessions.unknownRevoked(ev.IDs), &KillResult{})
	case store.EventUserKill:
		g.sessions.noteUserKill(ev.Issuer, ev.Subject, time.Unix(ev.Time, 0))
	case store.EventTokenRevoked:
		g.revoked.note(ev.Issuer, ev.JTI, time.Unix(0, ev.Time))
	case store.EventFollowing:
		g.listeners.heard(userKey{ev.Issuer, ev.Subject})
	case store.EventConsent:
		if err := g.consent.Refresh(ctx, ev.IDs); err != nil {
			g.log.Error("replicas: consent requests not refreshed", "error", err)
		}
	case store.EventKeys:
		g.reloadKeys(ev.IDs)
	case store.EventResync:
		g.reloadKeys(nil)
		if err := g.resync(ctx); err != nil {
			g.log.Error("replicas: revocations not reloaded after a gap in events", "error", err)
		}
		if err := g.consent.Refresh(ctx, nil); err != nil {
			g.log.Error("replicas: consent requests not refreshed after a gap in events", "error", err)
		}
	}
}

// reloadKeys loads the signing keys another gateway rotated in the keys
// directory they share; active, when given, is the key it made active.
func (g *Gateway) reloadKeys(active []string) {
	if err := g.auth.keys.Reload(); err != nil {
		g.log.Error("replicas: signing keys not reloaded", "error", err)
		return
	}
	if len(active) == 1 && g.auth.keys.KeyID() != active[0] {
		// Tokens the other gateway signs now do not verify here.
		g.log.Error("replicas: another gateway rotated to a signing key this gateway's keys directory lacks; replicas must share DATA/keys",
			"kid", active[0], "active_here", g.auth.keys.KeyID())
		return
	}
	g.log.Info("replicas: signing keys reloaded", "kid", g.auth.keys.KeyID())
}

// resync reloads every revocation from the store after events may have
// been missed. Revocations only accumulate, so what memory lacks is
// added and applied.
func (g *Gateway) resync(ctx context.Context) error {
	ids, err := g.store.RevokedSessions(ctx)
	if err != nil {
		return err
	}
	if fresh := g.sessions.unknownRevoked(ids); len(fresh) > 0 {
		g.stopRevoked(ctx, fresh, &KillResult{})
	}
	kills, err := g.store.UserKills(ctx)
	if err != nil {
		return err
	}
	for _, k := range kills {
		g.sessions.noteUserKill(k.Issuer, k.Subject, k.Killed)
	}
	tokens, err := g.store.RevokedTokens(ctx)
	if err != nil {
		return err
	}
	for _, t := range tokens {
		g.revoked.note(t.Issuer, t.JTI, t.Expiry)
	}
	return nil
}

// syncUpstreams makes the upstreams registered through the admin API those
// the store holds, after another gateway changed them: new ones are added,
// changed ones replaced, removed ones removed. The config file's own stay
// as they are.
func (g *Gateway) syncUpstreams(ctx context.Context) error {
	stored, err := g.store.ListUpstreams(ctx)
	if err != nil {
		return err
	}
	g.registry.Lock()
	defer g.registry.Unlock()
	want := map[string]upstreams.Spec{}
	for _, su := range stored {
		var spec upstreams.Spec
		if g.configured[su.Name] || json.Unmarshal(su.Options, &spec) != nil || spec.Name != su.Name {
			continue
		}
		if spec.Transport() == upstreams.TransportStdio && !g.cfg.AllowStdioRegistration {
			continue // see registerUpstreams
		}
		want[su.Name] = spec
	}
	for _, have := range g.upstreams.Specs() {
		if g.configured[have.Name] {
			continue
		}
		if spec, ok := want[have.Name]; ok && sameSpec(spec, have) {
			delete(want, have.Name)
			continue
		}
		if err := g.upstreams.Remove(have.Name); err != nil && !errors.Is(err, upstreams.ErrUnknown) {
			return err
		}
		g.log.Info("upstream removed by another gateway", "upstream", have.Name)
	}
	for _, spec := range want {
		rep, err := g.upstreams.Add(ctx, spec)
		if err != nil {
			g.log.Error("upstream registered by another gateway not added", "upstream", spec.Name, "error", err)
			continue
		}
		g.logReport(spec.Name, rep)
		g.log.Info("upstream registered by another gateway", "upstream", spec.Name)
	}
	return nil
}

func sameSpec(a, b upstreams.Spec) bool {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return bytes.Equal(ja, jb)
}
