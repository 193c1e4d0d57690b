package store

import (
	"container/heap"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"
)

// ErrReplayCacheFull is returned by MemoryReplay.Seen when every slot holds
// an unexpired entry.
var ErrReplayCacheFull = errors.New("store: replay cache full")

// MemoryReplay is the DPoP replay cache of one node (identity.ReplayCache):
// every endpoint shares it, it holds at most a fixed number of entries, and
// each expires at the time it was recorded with (the proof's iat plus the
// acceptance window, RFC 9449 §11.1). It stores SHA-256 hashes of keys, never the keys themselves, and
// is safe for concurrent use. Build it with NewMemoryReplay.
type MemoryReplay struct {
	max int
	now func() time.Time

	mu      sync.Mutex
	entries map[[sha256.Size]byte]time.Time
	byExp   expiryHeap
}

// NewMemoryReplay returns a cache holding at most max unexpired entries
// (max < 1 means 1). now is the clock; nil means time.Now.
func NewMemoryReplay(max int, now func() time.Time) *MemoryReplay {
	if max < 1 {
		max = 1
	}
	if now == nil {
		now = time.Now
	}
	return &MemoryReplay{max: max, now: now, entries: make(map[[sha256.Size]byte]time.Time)}
}

// Seen records key until expires and reports whether key was already
// recorded and has not yet expired (identity.ReplayCache). An entry is live while now is before its
// expiry time. A key whose expiry has already passed is not recorded
// (a proof that old cannot be accepted anyway). When the cache is full of
// live entries, Seen returns ErrReplayCacheFull.
func (m *MemoryReplay) Seen(ctx context.Context, key string, expires time.Time) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	h := sha256.Sum256([]byte(key))
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	m.expireLocked(now)
	if exp, ok := m.entries[h]; ok && now.Before(exp) {
		return true, nil
	}
	if !now.Before(expires) {
		return false, nil
	}
	if len(m.entries) >= m.max {
		return false, ErrReplayCacheFull
	}
	m.entries[h] = expires
	heap.Push(&m.byExp, expiryEntry{exp: expires, key: h})
	return false, nil
}

// Len reports the number of entries currently held, expired or not.
func (m *MemoryReplay) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.entries)
}

// expireLocked drops every entry whose expiry is not after now.
func (m *MemoryReplay) expireLocked(now time.Time) {
	for m.byExp.Len() > 0 && !now.Before(m.byExp[0].exp) {
		e := heap.Pop(&m.byExp).(expiryEntry)
		if exp, ok := m.entries[e.key]; ok && exp.Equal(e.exp) {
			delete(m.entries, e.key)
		}
	}
}

type expiryEntry struct {
	exp time.Time
	key [sha256.Size]byte
}

// expiryHeap is a min-heap of entries ordered by expiry time.
type expiryHeap []expiryEntry

func (h expiryHeap) Len() int           { return len(h) }
func (h expiryHeap) Less(i, j int) bool { return h[i].exp.Before(h[j].exp) }
func (h expiryHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *expiryHeap) Push(x any)        { *h = append(*h, x.(expiryEntry)) }
func (h *expiryHeap) Pop() any {
	old := *h
	n := len(old)
	e := old[n-1]
	*h = old[:n-1]
	return e
}

// ReplayCache is what a DPoP verifier asks whether a proof was seen
// (identity.ReplayCache).
type ReplayCache interface {
	Seen(ctx context.Context, key string, expires time.Time) (bool, error)
}

// Replay returns the DPoP replay cache of this gateway, holding at most max
// entries in memory. On SQLite that memory is the cache. On PostgreSQL the
// memory answers for proofs this gateway saw, and a table every gateway
// sharing the store writes answers for the rest: a proof accepted by one
// is a replay at every other (RFC 9449 §11.1). A store that cannot answer
// makes Seen fail, and the proof is refused.
func (s *DB) Replay(max int) ReplayCache {
	mem := NewMemoryReplay(max, s.now)
	if !s.postgres {
		return mem
	}
	return &sharedReplay{mem: mem, db: s}
}

type sharedReplay struct {
	mem *MemoryReplay
	db  *DB
}

func (r *sharedReplay) Seen(ctx context.Context, key string, expires time.Time) (bool, error) {
	if seen, err := r.mem.Seen(ctx, key, expires); err != nil || seen {
		return seen, err
	}
	if err := r.db.acquire(); err != nil {
		return false, err
	}
	defer r.db.release()
	h := sha256.Sum256([]byte(key))
	// A row whose proof has expired is taken over; a live one stays, and
	// then this proof is a replay.
	res, err := r.db.x.ExecContext(ctx, `INSERT INTO dpop_replay (key, expires) VALUES (?1, ?2)
		ON CONFLICT (key) DO UPDATE SET expires = excluded.expires WHERE dpop_replay.expires <= ?3`,
		hex.EncodeToString(h[:]), nanos(expires), nanos(r.db.now()))
	if err != nil {
		return false, fmt.Errorf("store: replay: %w", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, fmt.Errorf("store: replay: %w", err)
	}
	return n == 0, nil
}

// purgeReplay deletes the shared replay cache's expired rows, and the
// rate buckets full again, every interval until stop is closed.
func (s *DB) purgeReplay(stop <-chan struct{}, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			ctx, cancel := context.WithTimeout(context.Background(), interval)
			_, _ = s.x.ExecContext(ctx, `DELETE FROM dpop_replay WHERE expires < ?`, nanos(s.now()))
			_, _ = s.x.ExecContext(ctx, `DELETE FROM rate_buckets WHERE full_at < `+pgNow)
			cancel()
		}
	}
}
