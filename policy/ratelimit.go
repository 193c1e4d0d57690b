package policy

import (
	"context"
	"time"

	"golang.org/x/time/rate"

	"github.com/sag-gateway/sag/internal/lru"
)

// Limiter keeps the rate limits' token buckets: the rules' per (rule,
// principal, target) and the gateway's per upstream. MemoryLimiter keeps
// them in this process; gateways sharing a PostgreSQL store share theirs
// (store.RateLimits).
type Limiter interface {
	// Take spends a token of key's bucket (perMinute tokens a minute,
	// burst at once; a changed limit is another bucket) at now and
	// returns 0, or how long until a token is available (spending
	// nothing). An error means the limit could not be checked: the call
	// is refused.
	Take(ctx context.Context, key string, perMinute, burst int, now time.Time) (time.Duration, error)
}

// Burst is the burst of a limit that gives none: perMinute/6, at least 1.
func Burst(perMinute, burst int) int {
	if burst == 0 {
		burst = max(1, perMinute/6)
	}
	return burst
}

// MemoryLimiter is a Limiter of one process: a bounded LRU of buckets,
// past whose size the least recently used is dropped (a flood of new
// callers cannot reset the others'). Safe for concurrent use.
type MemoryLimiter struct {
	buckets *lru.Cache[bucketKey, *rate.Limiter]
}

type bucketKey struct {
	key              string
	perMinute, burst int
}

// NewMemoryLimiter returns a limiter keeping at most max buckets.
func NewMemoryLimiter(max int) *MemoryLimiter {
	return &MemoryLimiter{buckets: lru.New[bucketKey, *rate.Limiter](max)}
}

// Take implements Limiter.
func (m *MemoryLimiter) Take(_ context.Context, key string, perMinute, burst int, now time.Time) (time.Duration, error) {
	burst = Burst(perMinute, burst)
	lim := m.buckets.GetOrAdd(bucketKey{key, perMinute, burst}, func() *rate.Limiter {
		return rate.NewLimiter(rate.Limit(float64(perMinute)/60), burst)
	})
	if lim.AllowN(now, 1) {
		return 0, nil
	}
	res := lim.ReserveN(now, 1)
	wait := res.DelayFrom(now)
	res.CancelAt(now)
	if wait <= 0 {
		wait = time.Second
	}
	return wait, nil
}
