package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"
)

// ConsentRecord is one consent request as the store keeps it: the fields
// the store selects and updates by, and the whole request as JSON (the
// consent package owns its shape).
type ConsentRecord struct {
	ID      string
	ASID    string
	Nodes   []string // every session-graph id on the call's path
	State   string
	Expires time.Time
	Used    bool
	Request []byte
}

// PutConsent inserts a new consent request.
func (s *DB) PutConsent(ctx context.Context, r ConsentRecord) error {
	return s.write(ctx, "put consent", false, &Event{Kind: EventConsent, IDs: []string{r.ID}},
		`INSERT INTO consent_requests (id, asid, nodes, state, expires, used, request) VALUES (?, ?, ?, ?, ?, 0, ?)`,
		r.ID, r.ASID, strings.Join(r.Nodes, " "), r.State, nanos(r.Expires), string(r.Request))
}

// GetConsent returns one consent request; ErrNotFound for an unknown id.
func (s *DB) GetConsent(ctx context.Context, id string) (ConsentRecord, error) {
	row := s.r.QueryRowContext(ctx, `SELECT `+consentCols+` FROM consent_requests WHERE id = ?`, id)
	r, err := scanConsent(row)
	if errors.Is(err, sql.ErrNoRows) {
		return r, ErrNotFound
	}
	return r, err
}

// PendingConsents returns every pending consent request.
func (s *DB) PendingConsents(ctx context.Context) ([]ConsentRecord, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT `+consentCols+` FROM consent_requests WHERE state = 'pending'`)
	if err != nil {
		return nil, fmt.Errorf("store: pending consents: %w", err)
	}
	defer rows.Close()
	var out []ConsentRecord
	for rows.Next() {
		r, err := scanConsent(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// SettleConsent moves a pending request to state with the updated request
// JSON, in one committed write; ErrConflict when it is no longer pending
// (exactly one of two racing decisions wins), ErrNotFound when unknown.
func (s *DB) SettleConsent(ctx context.Context, id, state string, request []byte) error {
	err := s.submit(ctx, func(tx *sql.Tx) error {
		res, err := tx.Exec(`UPDATE consent_requests SET state = ?, request = ? WHERE id = ? AND state = 'pending'`, state, string(request), id)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 1 {
			return s.publish(tx, Event{Kind: EventConsent, IDs: []string{id}})
		}
		var exists int
		if err := tx.QueryRow(`SELECT COUNT(*) FROM consent_requests WHERE id = ?`, id).Scan(&exists); err != nil {
			return err
		}
		if exists == 0 {
			return ErrNotFound
		}
		return ErrConflict
	})
	if err != nil {
		return fmt.Errorf("store: settle consent: %w", err)
	}
	return nil
}

// UseConsent marks an approved request used; ErrConflict when it was used
// already or is not approved (a decision is used once).
func (s *DB) UseConsent(ctx context.Context, id string) error {
	err := s.submit(ctx, func(tx *sql.Tx) error {
		res, err := tx.Exec(`UPDATE consent_requests SET used = 1 WHERE id = ? AND used = 0 AND state IN ('approved', 'approved_with_edits')`, id)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n != 1 {
			return ErrConflict
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("store: use consent: %w", err)
	}
	return nil
}

const consentCols = `id, asid, nodes, state, expires, used, request`

func scanConsent(row interface{ Scan(...any) error }) (ConsentRecord, error) {
	var r ConsentRecord
	var nodes, req string
	var expires int64
	if err := row.Scan(&r.ID, &r.ASID, &nodes, &r.State, &expires, &r.Used, &req); err != nil {
		return r, err
	}
	r.Nodes, r.Expires, r.Request = strings.Fields(nodes), time.Unix(0, expires), []byte(req)
	return r, nil
}
