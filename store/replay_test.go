package store

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sag-gateway/sag/internal/testutil"
)

func TestMemoryReplaySeen(t *testing.T) {
	clock := testutil.NewClock(testNow, 0)
	m := NewMemoryReplay(10, clock.Now)
	ctx := context.Background()
	exp := testNow.Add(time.Minute)
	if seen, err := m.Seen(ctx, "a", exp); err != nil || seen {
		t.Fatalf("first: %v %v", seen, err)
	}
	if seen, err := m.Seen(ctx, "a", exp); err != nil || !seen {
		t.Fatalf("second: %v %v", seen, err)
	}
	if seen, err := m.Seen(ctx, "b", exp); err != nil || seen {
		t.Fatalf("other key: %v %v", seen, err)
	}
}

func TestMemoryReplayExpiry(t *testing.T) {
	clock := testutil.NewClock(testNow, 0)
	m := NewMemoryReplay(10, clock.Now)
	ctx := context.Background()
	if _, err := m.Seen(ctx, "a", testNow.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	clock.Add(59 * time.Second)
	if seen, _ := m.Seen(ctx, "a", testNow.Add(time.Minute)); !seen {
		t.Fatal("forgotten before expiry")
	}
	clock.Add(time.Second)
	if m.Len() != 1 {
		t.Fatalf("Len = %d", m.Len())
	}
	if seen, err := m.Seen(ctx, "a", clock.Now().Add(time.Minute)); err != nil || seen {
		t.Fatalf("after expiry: %v %v", seen, err)
	}
	// A key already expired is not stored.
	if seen, err := m.Seen(ctx, "old", clock.Now()); err != nil || seen {
		t.Fatalf("expired key: %v %v", seen, err)
	}
	if m.Len() != 1 {
		t.Fatalf("Len = %d, want 1", m.Len())
	}
}

func TestMemoryReplayFailsClosedWhenFull(t *testing.T) {
	clock := testutil.NewClock(testNow, 0)
	m := NewMemoryReplay(3, clock.Now)
	ctx := context.Background()
	for i := range 3 {
		if _, err := m.Seen(ctx, fmt.Sprint(i), testNow.Add(time.Duration(i+1)*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := m.Seen(ctx, "x", testNow.Add(time.Minute)); !errors.Is(err, ErrReplayCacheFull) {
		t.Fatalf("full: err = %v", err)
	}
	// Known keys are still reported while full.
	if seen, err := m.Seen(ctx, "0", testNow.Add(time.Minute)); err != nil || !seen {
		t.Fatalf("known key while full: %v %v", seen, err)
	}
	// Once the first entry expires there is room again.
	clock.Add(time.Second)
	if seen, err := m.Seen(ctx, "x", testNow.Add(time.Minute)); err != nil || seen {
		t.Fatalf("after expiry: %v %v", seen, err)
	}
	if seen, _ := m.Seen(ctx, "1", testNow.Add(time.Minute)); !seen {
		t.Fatal("unexpired entry evicted")
	}
}

func TestMemoryReplayStoresHashes(t *testing.T) {
	m := NewMemoryReplay(10, nil)
	if _, err := m.Seen(context.Background(), "secret-jti", time.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for k := range m.entries {
		if len(k) != 32 {
			t.Errorf("key of %d bytes", len(k))
		}
	}
}

func TestMemoryReplayCanceledContext(t *testing.T) {
	m := NewMemoryReplay(10, nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := m.Seen(ctx, "a", time.Now().Add(time.Minute)); err == nil {
		t.Fatal("canceled context accepted")
	}
}

func TestMemoryReplayConcurrent(t *testing.T) {
	clock := testutil.NewClock(testNow, 0)
	m := NewMemoryReplay(1000, clock.Now)
	ctx := context.Background()
	const workers, keys = 16, 200
	var fresh atomic.Int64
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range keys {
				seen, err := m.Seen(ctx, fmt.Sprint(i), testNow.Add(time.Minute))
				if err != nil {
					t.Error(err)
					return
				}
				if !seen {
					fresh.Add(1)
				}
				if i%50 == w {
					clock.Add(time.Millisecond)
				}
			}
		}()
	}
	wg.Wait()
	if fresh.Load() != keys {
		t.Fatalf("%d keys reported fresh, want exactly %d", fresh.Load(), keys)
	}
}

// testNow is the replay tests' fixed starting time.
var testNow = time.Unix(1_800_000_000, 0)
