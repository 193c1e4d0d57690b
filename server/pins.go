package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/sag-gateway/sag/pipeline"
	"github.com/sag-gateway/sag/policy"
	"github.com/sag-gateway/sag/store"
	"github.com/sag-gateway/sag/upstreams"
)

// Tool pinning: the catalog offers a tool only while its definition matches
// the one its owner approved.

// pinned checks a catalog tool's definition against its pin and reports
// whether the tool may be offered. A changed definition is quarantined,
// logged and audited once; an unreadable pin store quarantines too (fail
// closed).
func (g *Gateway) pinned(t *upstreams.Tool) bool {
	def := *t.Def
	def.Name = t.Original // the upstream's definition, not the gateway's name for it
	state, err := g.pins.Check(context.Background(), t.Upstream, t.Original, &def)
	if err != nil {
		g.log.Error("tool pin unavailable; the tool is withheld", "upstream", t.Upstream, "tool", t.Original, "error", err)
		return false
	}
	switch state {
	case policy.FirstSeen:
		g.log.Info("tool pinned", "upstream", t.Upstream, "tool", t.Original)
	case policy.NewlyQuarantined:
		g.log.Warn("tool definition changed: quarantined until its owner approves it", "upstream", t.Upstream, "tool", t.Original)
		rec := store.AuditRecord{Method: "catalog/quarantine", Upstream: t.Upstream, Tool: t.Name, PolicyID: "pinning",
			Decision: pipeline.DecisionDeny, Reason: "tool definition changed since it was approved; quarantined"}
		_ = g.audit(context.Background(), &rec, time.Now())
	}
	return state == policy.Pinned || state == policy.FirstSeen
}

// ToolPinResponse is one tool of GET /admin/upstreams/{name}/tools.
type ToolPinResponse struct {
	Tool        string          `json:"tool"`
	State       string          `json:"state"` // "approved" or "quarantined"
	Approved    string          `json:"approved"`
	Pending     string          `json:"pending,omitempty"`
	PendingDef  json.RawMessage `json:"pending_definition,omitempty"`
	LastChanged time.Time       `json:"last_changed"`
}

// listPins serves GET /admin/upstreams/{name}/tools: each tool's pin, and
// the changed definitions awaiting approval.
func (g *Gateway) listPins(w http.ResponseWriter, r *http.Request) error {
	out := []ToolPinResponse{}
	for _, p := range g.pins.List(r.PathValue("name")) {
		tp := ToolPinResponse{Tool: p.Tool, State: "approved", Approved: p.Approved, Pending: p.Pending, LastChanged: p.Updated}
		if p.Pending != "" {
			tp.State, tp.PendingDef = "quarantined", p.PendingDef
		}
		out = append(out, tp)
	}
	slices.SortFunc(out, func(a, b ToolPinResponse) int { return strings.Compare(a.Tool, b.Tool) })
	writeJSON(w, http.StatusOK, out)
	return nil
}

// approvePin serves POST /admin/upstreams/{name}/tools/{tool}/approve with
// an optional {"hash": …} (the pending hash the owner reviewed): the changed
// definition becomes the approved one and the tool is offered again.
func (g *Gateway) approvePin(w http.ResponseWriter, r *http.Request) error {
	var body struct {
		Hash string `json:"hash"`
	}
	if r.ContentLength != 0 {
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10)).Decode(&body); err != nil {
			return badRequest("body: %v", err)
		}
	}
	upstream, tool := r.PathValue("name"), r.PathValue("tool")
	if err := g.pins.Approve(r.Context(), upstream, tool, body.Hash); err != nil {
		if errors.Is(err, policy.ErrNothingPending) {
			return &adminError{Status: http.StatusNotFound, Code: "not_found", Description: err.Error()}
		}
		return &adminError{Status: http.StatusConflict, Code: "conflict", Description: err.Error()}
	}
	rec := store.AuditRecord{Method: "catalog/approve", Upstream: upstream, Tool: tool, PolicyID: "pinning", Decision: pipeline.DecisionAllow,
		Reason: "changed tool definition approved"}
	_ = g.audit(r.Context(), &rec, time.Now())
	g.front.sync(nil)
	// The other gateways sharing the store offer the tool again too.
	if err := g.store.Announce(r.Context(), store.Event{Kind: store.EventPins, IDs: []string{upstream, tool}}); err != nil {
		return fmt.Errorf("approved here, but the other gateways were not told: %w", err)
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}
