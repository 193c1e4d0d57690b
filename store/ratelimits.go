package store

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// RateLimits are the rate limits' token buckets of gateways sharing a
// PostgreSQL store (policy.Limiter): a token one spends is gone for all.
// Buckets refill on the database's clock, the one clock the gateways
// share. One gateway alone keeps its buckets in memory (policy's
// MemoryLimiter).
type RateLimits struct{ s *DB }

// SharedLimiter returns the store's shared rate limits, and false when the
// store is not shared (SQLite).
func (s *DB) SharedLimiter() (*RateLimits, bool) {
	return &RateLimits{s}, s.postgres
}

// pgNow is the database's clock in Unix nanoseconds.
const pgNow = `(extract(epoch FROM clock_timestamp()) * 1e9)::bigint`

// takeSQL spends a token when the bucket, refilled up to now, holds one,
// and returns what is left; it returns no row when the bucket is empty.
// ?2 is the refill rate in tokens per nanosecond, ?3 the burst.
const takeSQL = `WITH n AS (SELECT ` + pgNow + ` AS now)
INSERT INTO rate_buckets AS b (key, tokens, at, full_at)
SELECT ?1, ?3::float8 - 1, now, now + (1 / ?2::float8)::bigint FROM n
ON CONFLICT (key) DO UPDATE SET
	tokens = LEAST(?3::float8, b.tokens + GREATEST(excluded.at - b.at, 0) * ?2::float8) - 1,
	at = GREATEST(excluded.at, b.at),
	full_at = GREATEST(excluded.at, b.at) +
		((?3::float8 - LEAST(?3::float8, b.tokens + GREATEST(excluded.at - b.at, 0) * ?2::float8) + 1) / ?2::float8)::bigint
WHERE LEAST(?3::float8, b.tokens + GREATEST(excluded.at - b.at, 0) * ?2::float8) >= 1
RETURNING tokens`

// Take implements policy.Limiter (burst is already resolved by the
// caller when 0: see policy.Burst); now is not used, the database's clock
// is.
func (r *RateLimits) Take(ctx context.Context, key string, perMinute, burst int, _ time.Time) (time.Duration, error) {
	if perMinute < 1 || burst < 1 {
		return 0, fmt.Errorf("store: rate limit: %d a minute, burst %d", perMinute, burst)
	}
	s := r.s
	if err := s.acquire(); err != nil {
		return 0, err
	}
	defer s.release()
	h := sha256.Sum256([]byte(key + "\x00" + strconv.Itoa(perMinute) + "/" + strconv.Itoa(burst)))
	id := hex.EncodeToString(h[:])
	perNano := float64(perMinute) / 60e9
	var left float64
	err := s.x.QueryRowContext(ctx, takeSQL, id, perNano, burst).Scan(&left)
	if err == nil {
		return 0, nil
	}
	if !errors.Is(err, sql.ErrNoRows) {
		return 0, fmt.Errorf("store: rate limit: %w", err)
	}
	// Empty: how long until it holds a token.
	var have float64
	if err := s.x.QueryRowContext(ctx, `SELECT tokens + GREATEST(`+pgNow+` - at, 0) * ?2::float8 FROM rate_buckets WHERE key = ?1`, id, perNano).Scan(&have); err != nil {
		return time.Second, nil // refilled and purged meanwhile: try again shortly
	}
	wait := time.Duration((1 - have) / perNano)
	if wait <= 0 {
		wait = time.Millisecond
	}
	return wait, nil
}
