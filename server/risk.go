package server

import (
	"maps"
	"sync"

	"github.com/sag-gateway/sag/policy"
)

// risk keeps each session's counters (policy.Count*) in memory, scores them
// with the configured policy.Risk, and records score and counters on the
// session-graph node (GET /admin/sessions/{id} shows them).
type risk struct {
	model policy.Risk

	mu     sync.Mutex
	counts map[string]map[string]int64 // session id → counters
}

// maxRiskSessions bounds the sessions whose counters are kept in memory;
// past it the oldest knowledge is dropped (the store keeps the record).
const maxRiskSessions = 100_000

func newRisk(model policy.Risk) *risk {
	return &risk{model: model, counts: map[string]map[string]int64{}}
}

// snapshot returns a session's score and a copy of its counters.
func (r *risk) snapshot(id string) (float64, map[string]int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.counts[id]
	return r.model.Score(c), maps.Clone(c)
}

// count adds n to a counter of session id and returns the new score and a
// copy of the counters.
func (r *risk) count(id, counter string, n int64) (float64, map[string]int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	c, ok := r.counts[id]
	if !ok {
		if len(r.counts) >= maxRiskSessions {
			clear(r.counts)
		}
		c = map[string]int64{}
		r.counts[id] = c
	}
	c[counter] += n
	return r.model.Score(c), maps.Clone(c)
}
