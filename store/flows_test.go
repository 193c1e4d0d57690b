package store

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestFlows(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{})
	now := time.Unix(1_800_000_000, 0)
	later := now.Add(time.Minute)
	if err := s.PutFlow(ctx, "code", "c1", []byte(`{"a":1}`), later, 2, now); err != nil {
		t.Fatal(err)
	}
	if err := s.PutFlow(ctx, "code", "c2", []byte(`{}`), now.Add(time.Second), 2, now); err != nil {
		t.Fatal(err)
	}
	if err := s.PutFlow(ctx, "code", "c3", []byte(`{}`), later, 2, now); !errors.Is(err, ErrFull) {
		t.Fatalf("a third code with room for two: %v, want ErrFull", err)
	}
	if err := s.PutFlow(ctx, "pending", "p1", []byte(`{}`), later, 2, now); err != nil {
		t.Errorf("another kind is counted apart: %v", err)
	}
	// Once c2 expired, its place is free.
	if err := s.PutFlow(ctx, "code", "c3", []byte(`{}`), later, 2, now.Add(2*time.Second)); err != nil {
		t.Errorf("a code once another expired: %v", err)
	}
	if _, err := s.GetFlow(ctx, "code", "c2"); !errors.Is(err, ErrNotFound) {
		t.Errorf("the expired code: %v, want ErrNotFound", err)
	}
	f, err := s.GetFlow(ctx, "code", "c1")
	if err != nil || string(f.Data) != `{"a":1}` || !f.Expires.Equal(later) || f.Spent != nil {
		t.Fatalf("GetFlow = %+v, %v", f, err)
	}
	if _, err := s.GetFlow(ctx, "pending", "c1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("c1 as another kind: %v", err)
	}
	if err := s.UpdateFlow(ctx, "code", "c1", []byte(`{"a":2}`)); err != nil {
		t.Fatal(err)
	}
	if err := s.UpdateFlow(ctx, "code", "nope", []byte(`{}`)); !errors.Is(err, ErrNotFound) {
		t.Errorf("UpdateFlow of none: %v", err)
	}
	for want := 1; want <= 2; want++ {
		if n, err := s.BumpFlow(ctx, "code", "c1"); err != nil || n != want {
			t.Errorf("BumpFlow = %d, %v; want %d", n, err, want)
		}
	}
	if prior, err := s.SpendFlow(ctx, "code", "c1", []byte(`"first"`)); err != nil || prior != nil {
		t.Fatalf("first spend: %q, %v", prior, err)
	}
	if prior, err := s.SpendFlow(ctx, "code", "c1", []byte(`"second"`)); err != nil || string(prior) != `"first"` {
		t.Errorf("second spend: %q, %v; want the first's", prior, err)
	}
	if _, err := s.SpendFlow(ctx, "code", "nope", []byte(`1`)); !errors.Is(err, ErrNotFound) {
		t.Errorf("SpendFlow of none: %v", err)
	}
	f, err = s.TakeFlow(ctx, "code", "c1")
	if err != nil || string(f.Data) != `{"a":2}` || f.Count != 2 || string(f.Spent) != `"first"` {
		t.Fatalf("TakeFlow = %+v, %v", f, err)
	}
	if _, err := s.TakeFlow(ctx, "code", "c1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("a second take: %v, want ErrNotFound", err)
	}
}
