package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"

	"github.com/sag-gateway/sag/policy"
	"github.com/sag-gateway/sag/server/config"
	"github.com/sag-gateway/sag/store"
)

// loadPolicy builds a policy engine from the configured files and the
// allow-lists registered with upstreams. Any broken document fails the whole
// load, naming it: the caller keeps the previous engine.
func (g *Gateway) loadPolicy(ctx context.Context) (*loadedPolicy, error) {
	var docs []*policy.Document
	lp := &loadedPolicy{Documents: []PolicyDocument{}}
	for _, f := range g.cfg.Policy.Files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("policy file: %w", err)
		}
		d, err := policy.Parse(f, b)
		if err != nil {
			return nil, err
		}
		docs = append(docs, d)
		lp.add(d, "file "+f)
	}
	registered, err := g.store.ListAllowLists(ctx)
	if err != nil {
		return nil, err
	}
	for _, a := range registered {
		d, err := parseAllowList(a.Upstream, a.Document)
		if err != nil {
			return nil, err
		}
		docs = append(docs, d)
		lp.add(d, "registered with upstream "+a.Upstream)
	}
	lp.Mode = "deny without allow-lists"
	mode := policy.DenyWithoutRules
	if g.cfg.Auth == config.AuthOpen {
		mode, lp.Mode = policy.AllowWithoutRules, "allow without allow-lists (loopback --auth open trial)"
	}
	if lp.engine, err = policy.NewEngine(policy.Options{Documents: docs, Mode: mode, Risk: riskModel(g.cfg), Limiter: g.limiter}); err != nil {
		return nil, err
	}
	lp.Loaded = time.Now().UTC()
	return lp, nil
}

// loadedPolicy is the active policy: the engine, and what it was built from
// (GET /admin/policy).
type loadedPolicy struct {
	engine    *policy.Engine
	Mode      string           `json:"mode"`
	Loaded    time.Time        `json:"loaded"`
	Documents []PolicyDocument `json:"documents"`
}

// PolicyDocument describes one loaded allow-list.
type PolicyDocument struct {
	ID       string `json:"id"`
	Version  string `json:"version,omitempty"`
	Upstream string `json:"upstream,omitempty"`
	Rules    int    `json:"rules"`
	Source   string `json:"source"`
}

func (lp *loadedPolicy) add(d *policy.Document, source string) {
	lp.Documents = append(lp.Documents, PolicyDocument{ID: d.ID, Version: d.Version, Upstream: d.Upstream, Rules: len(d.Rules), Source: source})
}

// getPolicy serves GET /admin/policy: which allow-lists are active, from
// where, since when.
func (g *Gateway) getPolicy(w http.ResponseWriter, _ *http.Request) error {
	writeJSON(w, http.StatusOK, g.policy.Load())
	return nil
}

// parseAllowList parses an allow-list registered with an upstream: its rules
// cover that upstream only.
func parseAllowList(upstream string, data []byte) (*policy.Document, error) {
	d, err := policy.Parse("registered with upstream "+upstream, data)
	if err != nil {
		return nil, err
	}
	if d.Upstream == "" {
		d.Upstream = upstream
	}
	if d.Upstream != upstream {
		return nil, fmt.Errorf("policy registered with upstream %s: upstream: %q is another upstream", upstream, d.Upstream)
	}
	return d, nil
}

// ReloadPolicy rebuilds the policy from its files and the registered
// allow-lists and swaps it in; sessions and calls in flight are untouched
// (a call decided under the old policy finishes under it). On error the
// previous policy stays active and the error says which document is broken.
func (g *Gateway) ReloadPolicy(ctx context.Context) error {
	g.policyMu.Lock()
	defer g.policyMu.Unlock()
	lp, err := g.loadPolicy(ctx)
	if err != nil {
		g.log.Error("policy not reloaded; the previous one stays active", "error", err)
		return err
	}
	g.policy.Store(lp)
	g.front.policyChanged()
	g.logPolicy(len(lp.Documents))
	return nil
}

// logPolicy says loudly what a gateway without allow-lists does.
func (g *Gateway) logPolicy(docs int) {
	switch {
	case docs > 0:
		g.log.Info("policy loaded", "documents", docs)
	case g.cfg.Auth == config.AuthOpen:
		g.log.Warn("NO ALLOW-LIST: this loopback --auth open trial allows every tool to everyone")
	default:
		g.log.Warn("NO ALLOW-LIST: every tool is denied to everyone until an allow-list is configured or registered")
	}
}

// watchPolicy reloads the policy when one of its files changes (polled
// every interval), until ctx ends.
func (g *Gateway) watchPolicy(ctx context.Context, interval time.Duration) {
	if len(g.cfg.Policy.Files) == 0 {
		return
	}
	stamp := func() string {
		s := ""
		for _, f := range g.cfg.Policy.Files {
			if fi, err := os.Stat(f); err == nil {
				s += fmt.Sprintf("%s %d %d;", f, fi.Size(), fi.ModTime().UnixNano())
			}
		}
		return s
	}
	last := stamp()
	every(ctx, interval, func() {
		if now := stamp(); now != last {
			last = now
			_ = g.ReloadPolicy(ctx)
		}
	})
}

// AllowListResponse answers the allow-list admin routes.
type AllowListResponse struct {
	Upstream string `json:"upstream"`
	ID       string `json:"id"`
	Version  string `json:"version,omitempty"`
	Rules    int    `json:"rules"`
}

// putAllowList serves PUT /admin/upstreams/{name}/allowlist: a tool owner
// registers (or replaces) the allow-list of an upstream, as YAML or JSON. A
// broken document is refused with its errors and changes nothing.
func (g *Gateway) putAllowList(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("name")
	if _, ok := g.upstreams.Spec(name); !ok {
		return &adminError{Status: http.StatusNotFound, Code: "not_found", Description: "no upstream " + name}
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 4<<20))
	if err != nil {
		return badRequest("body: %v", err)
	}
	d, err := parseAllowList(name, body)
	if err != nil {
		return badRequest("%v", err)
	}
	if _, err := policy.NewEngine(policy.Options{Documents: []*policy.Document{d}}); err != nil {
		return badRequest("%v", err)
	}
	g.registry.Lock()
	defer g.registry.Unlock()
	if err := g.store.PutAllowList(r.Context(), name, body); err != nil {
		return err
	}
	if err := g.ReloadPolicy(r.Context()); err != nil {
		return &adminError{Status: http.StatusConflict, Code: "conflict", Description: "stored, but the policy did not reload: " + err.Error()}
	}
	writeJSON(w, http.StatusOK, AllowListResponse{Upstream: name, ID: d.ID, Version: d.Version, Rules: len(d.Rules)})
	return nil
}

// deleteAllowList serves DELETE /admin/upstreams/{name}/allowlist.
func (g *Gateway) deleteAllowList(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("name")
	g.registry.Lock()
	defer g.registry.Unlock()
	if err := g.store.DeleteAllowList(r.Context(), name); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return &adminError{Status: http.StatusNotFound, Code: "not_found", Description: "no allow-list registered with " + name}
		}
		return err
	}
	if err := g.ReloadPolicy(r.Context()); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// reloadPolicyHandler serves POST /admin/policy/reload.
func (g *Gateway) reloadPolicyHandler(w http.ResponseWriter, r *http.Request) error {
	if err := g.ReloadPolicy(r.Context()); err != nil {
		return badRequest("%v", err)
	}
	// The other gateways sharing the store reload theirs too.
	if err := g.store.Announce(r.Context(), store.Event{Kind: store.EventPolicy}); err != nil {
		return fmt.Errorf("reloaded here, but the other gateways were not told: %w", err)
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}
