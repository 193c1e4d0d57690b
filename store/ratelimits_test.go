package store

import (
	"context"
	"testing"
	"time"
)

// TestSharedRateLimits: on PostgreSQL two stores sharing the database
// spend one bucket: a burst spent at A is spent at B, the wait is reported,
// and the bucket refills on the database's clock. SQLite shares none.
func TestSharedRateLimits(t *testing.T) {
	ctx := context.Background()
	opts := testOptions(t, Options{})
	a := openTestIn(t, opts)
	la, shared := a.SharedLimiter()
	if pg == nil {
		if shared {
			t.Error("a SQLite store says it shares rate limits")
		}
		return
	}
	if !shared {
		t.Fatal("a PostgreSQL store does not share rate limits")
	}
	lb, _ := openTestIn(t, opts).SharedLimiter()
	const perMinute, burst = 600, 2 // a token every 100 ms
	for i, l := range []*RateLimits{la, lb} {
		if wait, err := l.Take(ctx, "k", perMinute, burst, time.Time{}); err != nil || wait != 0 {
			t.Fatalf("token %d of the burst: wait %v, %v", i+1, wait, err)
		}
	}
	wait, err := la.Take(ctx, "k", perMinute, burst, time.Time{})
	if err != nil || wait <= 0 || wait > 100*time.Millisecond {
		t.Fatalf("past the burst spent at A and B: wait %v, %v; want up to 100ms", wait, err)
	}
	if wait, err := lb.Take(ctx, "other", perMinute, burst, time.Time{}); err != nil || wait != 0 {
		t.Errorf("another key: wait %v, %v", wait, err)
	}
	if wait, err := lb.Take(ctx, "k", perMinute*2, burst, time.Time{}); err != nil || wait != 0 {
		t.Errorf("another limit on the same key (a new bucket): wait %v, %v", wait, err)
	}
	time.Sleep(110 * time.Millisecond)
	if wait, err := lb.Take(ctx, "k", perMinute, burst, time.Time{}); err != nil || wait != 0 {
		t.Errorf("after the refill: wait %v, %v", wait, err)
	}
	if _, err := la.Take(ctx, "k", 0, 1, time.Time{}); err == nil {
		t.Error("a limit of 0 a minute was taken")
	}
}
