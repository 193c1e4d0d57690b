package store

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestA2ATasks: a task is its owner's alone (another owner's update finds
// nothing), versions catch concurrent updates, pages come newest first
// with filters and a cursor, and a kill finds the live tasks by node.
func TestA2ATasks(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{})
	t0 := time.Date(2026, 12, 5, 10, 0, 0, 0, time.UTC)
	task := func(id, owner, ctxID, state string, at time.Time) A2ATask {
		return A2ATask{ID: id, Owner: owner, ContextID: ctxID, State: state, StatusTime: at, Version: 1, Updated: at, Task: []byte(`{"id":"` + id + `"}`)}
	}
	for i, tk := range []A2ATask{
		task("t1", "alice", "c1", "TASK_STATE_COMPLETED", t0),
		task("t2", "alice", "c1", "TASK_STATE_INPUT_REQUIRED", t0.Add(time.Second)),
		task("t3", "alice", "c2", "TASK_STATE_WORKING", t0.Add(2*time.Second)),
		task("t4", "bob", "c1", "TASK_STATE_INPUT_REQUIRED", t0.Add(3*time.Second)),
	} {
		if err := s.PutA2ATask(ctx, tk); err != nil {
			t.Fatalf("put %d: %v", i, err)
		}
	}
	if err := s.PutA2ATask(ctx, task("t1", "bob", "c9", "TASK_STATE_SUBMITTED", t0)); !errors.Is(err, ErrConflict) {
		t.Errorf("put of an existing id: %v, want ErrConflict", err)
	}

	up := task("t2", "bob", "c1", "TASK_STATE_CANCELED", t0.Add(5*time.Second))
	up.Version = 2
	if err := s.UpdateA2ATask(ctx, up, 1); !errors.Is(err, ErrNotFound) {
		t.Errorf("another owner's update: %v, want ErrNotFound", err)
	}
	up.Owner = "alice"
	if err := s.UpdateA2ATask(ctx, up, 7); !errors.Is(err, ErrConflict) {
		t.Errorf("update from a stale version: %v, want ErrConflict", err)
	}
	if err := s.UpdateA2ATask(ctx, up, 1); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetA2ATask(ctx, "t2")
	if err != nil || got.State != "TASK_STATE_CANCELED" || got.Version != 2 || got.Owner != "alice" || !got.Updated.Equal(up.Updated) {
		t.Errorf("after update: %+v, %v", got, err)
	}
	if _, err := s.GetA2ATask(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown task: %v", err)
	}

	ids := func(ts []A2ATask) (out []string) {
		for _, t := range ts {
			out = append(out, t.ID)
		}
		return out
	}
	page, total, err := s.ListA2ATasks(ctx, A2ATaskQuery{Owner: "alice", Limit: 2})
	if err != nil || total != 3 || len(page) != 2 || page[0].ID != "t2" || page[1].ID != "t3" {
		t.Errorf("alice's first page: %v of %d, %v", ids(page), total, err)
	}
	last := page[len(page)-1]
	page, _, _ = s.ListA2ATasks(ctx, A2ATaskQuery{Owner: "alice", Limit: 2, CursorUpdated: last.Updated, CursorID: last.ID})
	if len(page) != 1 || page[0].ID != "t1" {
		t.Errorf("alice's second page: %v", ids(page))
	}
	for _, c := range []struct {
		q    A2ATaskQuery
		want int
	}{
		{A2ATaskQuery{Owner: "alice", ContextID: "c1", Limit: 10}, 2},
		{A2ATaskQuery{Owner: "alice", State: "TASK_STATE_WORKING", Limit: 10}, 1},
		{A2ATaskQuery{Owner: "alice", After: t0.Add(2 * time.Second), Limit: 10}, 2},
		{A2ATaskQuery{Owner: "bob", Limit: 10}, 1},
		{A2ATaskQuery{Owner: "carol", Limit: 10}, 0},
	} {
		if page, total, err := s.ListA2ATasks(ctx, c.q); err != nil || total != c.want || len(page) != c.want {
			t.Errorf("%+v: %v of %d, %v; want %d", c.q, ids(page), total, err, c.want)
		}
	}

	for id, nodes := range map[string][]string{"t1": {"u1", "a1"}, "t2": {"u1", "a1"}, "t3": {"u1", "a2"}} {
		if err := s.BindA2ATask(ctx, id, nodes); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.BindA2ATask(ctx, "t3", []string{"u1", "a3"}); err != nil {
		t.Fatal(err)
	}
	live, err := s.LiveA2ATasks(ctx)
	if err != nil || len(live) != 1 || live[0].ID != "t3" || len(live[0].Nodes) != 2 || live[0].Nodes[1] != "a3" {
		t.Errorf("live tasks with nodes: %+v, %v; want t3 (t1, t2 ended; t4 has no nodes)", live, err)
	}
}
