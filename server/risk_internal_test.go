package server

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/sag-gateway/sag/policy"
	"github.com/sag-gateway/sag/store"
)

// TestRiskDecays: a score halves every half-life with nothing new; counters
// stay; a new count adds to the decayed score; the node keeps both.
func TestRiskDecays(t *testing.T) {
	ctx := context.Background()
	now := time.Unix(1_800_000_000, 0)
	clock := func() time.Time { return now }
	st, err := store.Open(ctx, t.TempDir(), store.Options{Now: clock}) // one clock
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := st.PutSession(ctx, store.Session{ID: "n", Kind: store.KindUser, Subject: "alice", State: store.StateActive}); err != nil {
		t.Fatal(err)
	}
	r := newRisk(policy.Risk{Weights: map[string]float64{policy.CountDLPHits: 2}}, time.Hour, st, clock)
	if err := r.count(ctx, "n", policy.CountDLPHits, 2); err != nil {
		t.Fatal(err)
	}
	for _, step := range []struct {
		after time.Duration
		want  float64
	}{{0, 4}, {time.Hour, 2}, {time.Hour, 1}} {
		now = now.Add(step.after)
		if got, counters := r.snapshot(ctx, "n"); got != step.want || counters[policy.CountDLPHits] != 2 {
			t.Errorf("after %v more: score %v counters %v, want %v", step.after, got, counters, step.want)
		}
	}
	if err := r.count(ctx, "n", policy.CountDLPHits, 1); err != nil {
		t.Fatal(err)
	}
	if got, _ := r.snapshot(ctx, "n"); got != 3 {
		t.Errorf("1 decayed + 2: %v, want 3", got)
	}
	// Read back from the store by a fresh component (a restart), decayed
	// from the node's last update.
	now = now.Add(time.Hour)
	r2 := newRisk(policy.Risk{}, time.Hour, st, clock)
	if got, counters := r2.snapshot(ctx, "n"); got < 1.49 || got > 1.51 || counters[policy.CountDLPHits] != 3 {
		t.Errorf("after a restart: score %v counters %v, want 1.5 and 3 hits", got, counters)
	}
	if err := r2.clear(ctx, "n"); err != nil {
		t.Fatal(err)
	}
	if got, counters := newRisk(policy.Risk{}, time.Hour, st, clock).snapshot(ctx, "n"); got != 0 || len(counters) != 0 {
		t.Errorf("after clear: %v %v", got, counters)
	}
	if err := r2.clear(ctx, "unknown"); err == nil {
		t.Error("clearing an unknown node succeeded")
	}
}

// TestWorkflowBound: a user session opens at most MaxWorkflows live
// workflows; a used one is not counted twice; idle ones are collected and
// their nodes closed, which makes room again.
func TestWorkflowBound(t *testing.T) {
	ctx := context.Background()
	now := time.Unix(1_800_000_000, 0)
	clock := func() time.Time { return now }
	st, err := store.Open(ctx, t.TempDir(), store.Options{Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	s, err := newSessionGraph(ctx, st, slog.New(slog.NewTextHandler(io.Discard, nil)), newRisk(policy.Risk{}, 0, st, clock), newTracker(),
		sessionOptions{MaxWorkflows: 2, WorkflowIdle: time.Hour, Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	for _, wf := range []string{"w1", "w2", "w1"} {
		if err := s.useWorkflow("u", wf); err != nil {
			t.Fatalf("%s: %v", wf, err)
		}
	}
	err = s.useWorkflow("u", "w3")
	if err == nil || !strings.Contains(err.Error(), "too many open workflows") {
		t.Fatalf("a third workflow: %v", err)
	}
	if err := s.useWorkflow("other", "w3"); err != nil {
		t.Errorf("another user session is bounded by this one's workflows: %v", err)
	}
	now = now.Add(30 * time.Minute)
	if err := s.useWorkflow("u", "w2"); err != nil { // w2 stays in use
		t.Fatal(err)
	}
	now = now.Add(45 * time.Minute)                // w1 idle 75 min, w2 45 min
	if n := s.collectWorkflows(ctx, now); n != 2 { // w1 of u, w3 of other
		t.Errorf("collected %d idle workflows, want 2", n)
	}
	if err := s.useWorkflow("u", "w3"); err != nil {
		t.Errorf("after w1 idled out: %v", err)
	}
}
