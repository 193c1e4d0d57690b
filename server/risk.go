package server

import (
	"context"
	"maps"
	"math"
	"sync"
	"time"

	"github.com/sag-gateway/sag/internal/lru"
	"github.com/sag-gateway/sag/policy"
)

// risk keeps the risk of session-graph nodes (the workflow or protocol
// session that earned it): cumulative counters (policy.Count*) and a score,
// their weighted sum, that halves every halfLife with nothing new. The node
// in the store holds both (GET /admin/sessions/{id} shows them), so risk
// survives restarts; memory holds a bounded set, read back from the store
// on a miss.
type risk struct {
	model    policy.Risk
	halfLife time.Duration // 0: no decay
	store    Store
	now      func() time.Time

	mu    sync.Mutex // serialises updates of a node's state
	nodes *lru.Cache[string, *riskState]
}

type riskState struct {
	score    float64 // as of at
	at       time.Time
	counters map[string]int64
}

// maxRiskNodes bounds the nodes whose risk is kept in memory; past it the
// least recently used is dropped (the store keeps it).
const maxRiskNodes = 100_000

func newRisk(model policy.Risk, halfLife time.Duration, st Store, now func() time.Time) *risk {
	return &risk{model: model, halfLife: halfLife, store: st, now: now, nodes: lru.New[string, *riskState](maxRiskNodes)}
}

// decayed is s's score at t.
func (r *risk) decayed(s *riskState, t time.Time) float64 {
	if r.halfLife <= 0 || s.score == 0 || !t.After(s.at) {
		return s.score
	}
	return s.score * math.Exp2(-float64(t.Sub(s.at))/float64(r.halfLife))
}

// state returns a node's risk, loading it from the store when it is not in
// memory. r.mu is held.
func (r *risk) state(ctx context.Context, node string) *riskState {
	return r.nodes.GetOrAdd(node, func() *riskState {
		s := &riskState{at: r.now(), counters: map[string]int64{}}
		if n, err := r.store.GetSession(ctx, node); err == nil {
			s.score, s.at = n.Risk, n.Updated
			if n.Counters != nil {
				s.counters = n.Counters
			}
		}
		return s
	})
}

// snapshot returns a node's current score and a copy of its counters.
func (r *risk) snapshot(ctx context.Context, node string) (float64, map[string]int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.state(ctx, node)
	return r.decayed(s, r.now()), maps.Clone(s.counters)
}

// count adds n to a counter of node, in memory and on the node.
func (r *risk) count(ctx context.Context, node, counter string, n int64) error {
	r.mu.Lock()
	s := r.state(ctx, node)
	now := r.now()
	w, ok := r.model.Weights[counter]
	if !ok {
		w = 1
	}
	s.score, s.at = r.decayed(s, now)+w*float64(n), now
	s.counters[counter] += n
	score, counters := s.score, maps.Clone(s.counters)
	r.mu.Unlock()
	return r.store.SetSessionRisk(context.WithoutCancel(ctx), node, score, counters)
}

// clear resets a node's risk (an operator's decision), in the store first.
func (r *risk) clear(ctx context.Context, node string) error {
	if err := r.store.SetSessionRisk(ctx, node, 0, map[string]int64{}); err != nil {
		return err
	}
	r.nodes.Remove(node)
	return nil
}
