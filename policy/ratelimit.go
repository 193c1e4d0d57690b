package policy

import (
	"time"

	"golang.org/x/time/rate"
)

// Bucket is a token bucket: perMinute tokens a minute, burst at once. The
// rules' limits per (principal, tool) and the gateway's per upstream are
// buckets. Safe for concurrent use.
type Bucket struct{ lim *rate.Limiter }

// NewBucket returns a full bucket; burst 0 means perMinute/6, at least 1.
func NewBucket(perMinute, burst int) *Bucket {
	if burst == 0 {
		burst = max(1, perMinute/6)
	}
	return &Bucket{lim: rate.NewLimiter(rate.Limit(float64(perMinute)/60), burst)}
}

// Take spends a token at now and returns 0, or, when the bucket is empty,
// how long until a token is available (spending nothing).
func (b *Bucket) Take(now time.Time) time.Duration {
	if b.lim.AllowN(now, 1) {
		return 0
	}
	res := b.lim.ReserveN(now, 1)
	wait := res.DelayFrom(now)
	res.CancelAt(now)
	if wait <= 0 {
		wait = time.Second
	}
	return wait
}
