package store

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"time"
)

// ErrFull is returned by PutFlow when as many flows of the kind as
// allowed are in progress.
var ErrFull = errors.New("store: too many in progress")

// Flow is one step of a sign-in in progress at the authorization server,
// kept under a secret id (stored hashed): Data is the server's own JSON,
// Count its failed attempts, Spent (JSON) what a redeemed code issued.
type Flow struct {
	Data    []byte
	Count   int
	Spent   []byte
	Expires time.Time
}

// flowID is how a flow's id is stored: its SHA-256, so that the table
// holds no usable code or cookie.
func flowID(id string) string {
	h := sha256.Sum256([]byte(id))
	return hex.EncodeToString(h[:])
}

// PutFlow stores a new flow of kind under id, living until expires, unless
// max flows of the kind live at now (ErrFull); those expired at now are
// deleted first.
func (s *DB) PutFlow(ctx context.Context, kind, id string, data []byte, expires time.Time, max int, now time.Time) error {
	err := s.submit(ctx, func(tx *sql.Tx) error {
		if _, err := tx.Exec(`DELETE FROM oauth_flows WHERE kind = ? AND expires < ?`, kind, nanos(now)); err != nil {
			return err
		}
		var n int
		if err := tx.QueryRow(`SELECT COUNT(*) FROM oauth_flows WHERE kind = ?`, kind).Scan(&n); err != nil {
			return err
		}
		if n >= max {
			return ErrFull
		}
		_, err := tx.Exec(`INSERT INTO oauth_flows (kind, id, data, count, expires) VALUES (?, ?, ?, 0, ?)`, kind, flowID(id), string(data), nanos(expires))
		return err
	})
	if err != nil {
		return fmt.Errorf("store: put %s: %w", kind, err)
	}
	return nil
}

// GetFlow returns the flow of kind under id, or ErrNotFound. Whether it
// expired is the caller's to judge (its clock).
func (s *DB) GetFlow(ctx context.Context, kind, id string) (Flow, error) {
	if err := s.acquire(); err != nil {
		return Flow{}, err
	}
	defer s.release()
	f, err := scanFlow(s.r.QueryRowContext(ctx, `SELECT data, count, spent, expires FROM oauth_flows WHERE kind = ? AND id = ?`, kind, flowID(id)))
	if err != nil {
		return Flow{}, fmt.Errorf("store: get %s: %w", kind, err)
	}
	return f, nil
}

// UpdateFlow replaces the data of the flow of kind under id (ErrNotFound
// when there is none).
func (s *DB) UpdateFlow(ctx context.Context, kind, id string, data []byte) error {
	return s.execOne(ctx, "update "+kind, `UPDATE oauth_flows SET data = ? WHERE kind = ? AND id = ?`, string(data), kind, flowID(id))
}

// TakeFlow deletes the flow of kind under id and returns it, or
// ErrNotFound: one taker only.
func (s *DB) TakeFlow(ctx context.Context, kind, id string) (Flow, error) {
	var f Flow
	err := s.submit(ctx, func(tx *sql.Tx) error {
		var err error
		f, err = scanFlow(tx.QueryRow(`DELETE FROM oauth_flows WHERE kind = ? AND id = ? RETURNING data, count, spent, expires`, kind, flowID(id)))
		return err
	})
	if err != nil {
		return Flow{}, fmt.Errorf("store: take %s: %w", kind, err)
	}
	return f, nil
}

// BumpFlow adds one to the count of the flow of kind under id and returns
// the new count (ErrNotFound when there is none).
func (s *DB) BumpFlow(ctx context.Context, kind, id string) (int, error) {
	var n int
	err := s.submit(ctx, func(tx *sql.Tx) error {
		err := tx.QueryRow(`UPDATE oauth_flows SET count = count + 1 WHERE kind = ? AND id = ? RETURNING count`, kind, flowID(id)).Scan(&n)
		if errors.Is(err, sql.ErrNoRows) {
			return ErrNotFound
		}
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("store: bump %s: %w", kind, err)
	}
	return n, nil
}

// SpendFlow marks the flow of kind under id spent with spent, once: it
// returns nil when this call spent it, and what the first spender stored
// when it was spent already (ErrNotFound when there is no such flow).
func (s *DB) SpendFlow(ctx context.Context, kind, id string, spent []byte) (prior []byte, err error) {
	err = s.submit(ctx, func(tx *sql.Tx) error {
		res, err := tx.Exec(`UPDATE oauth_flows SET spent = ? WHERE kind = ? AND id = ? AND spent IS NULL`, string(spent), kind, flowID(id))
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil || n == 1 {
			return err
		}
		var was sql.NullString
		switch err := tx.QueryRow(`SELECT spent FROM oauth_flows WHERE kind = ? AND id = ?`, kind, flowID(id)).Scan(&was); {
		case errors.Is(err, sql.ErrNoRows):
			return ErrNotFound
		case err != nil:
			return err
		}
		prior = []byte(was.String)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("store: spend %s: %w", kind, err)
	}
	return prior, nil
}

func scanFlow(row *sql.Row) (Flow, error) {
	var (
		f       Flow
		data    string
		spent   sql.NullString
		expires int64
	)
	if err := row.Scan(&data, &f.Count, &spent, &expires); err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return Flow{}, ErrNotFound
		}
		return Flow{}, err
	}
	f.Data, f.Expires = []byte(data), fromNanos(expires)
	if spent.Valid {
		f.Spent = []byte(spent.String)
	}
	return f, nil
}

// SetFlowSpent replaces what the spent flow of kind under id records (what
// its redemption went on to issue).
func (s *DB) SetFlowSpent(ctx context.Context, kind, id string, spent []byte) error {
	return s.execOne(ctx, "set spent "+kind, `UPDATE oauth_flows SET spent = ? WHERE kind = ? AND id = ? AND spent IS NOT NULL`, string(spent), kind, flowID(id))
}
