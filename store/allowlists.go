package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// AllowList is an allow-list document a tool owner registered with an
// upstream.
type AllowList struct {
	Upstream string
	Document []byte // as registered (YAML)
	Updated  time.Time
}

// PutAllowList stores (or replaces) the allow-list of an upstream and returns
// once it is committed.
func (s *DB) PutAllowList(ctx context.Context, upstream string, doc []byte) error {
	return s.write(ctx, "put allow-list", false, &Event{Kind: EventPolicy, IDs: []string{upstream}},
		`INSERT INTO allowlists (upstream, document, updated) VALUES (?1, ?2, ?3)
		ON CONFLICT (upstream) DO UPDATE SET document = excluded.document, updated = excluded.updated`, upstream, string(doc), nanos(s.now()))
}

// DeleteAllowList removes the allow-list of an upstream; ErrNotFound if it
// has none.
func (s *DB) DeleteAllowList(ctx context.Context, upstream string) error {
	return s.write(ctx, "delete allow-list", true, &Event{Kind: EventPolicy, IDs: []string{upstream}},
		`DELETE FROM allowlists WHERE upstream = ?`, upstream)
}

// ListAllowLists returns every registered allow-list, by upstream name.
func (s *DB) ListAllowLists(ctx context.Context) ([]AllowList, error) {
	if err := s.acquire(); err != nil {
		return nil, err
	}
	defer s.release()
	rows, err := s.r.QueryContext(ctx, `SELECT upstream, document, updated FROM allowlists ORDER BY upstream`)
	if err != nil {
		return nil, fmt.Errorf("store: list allow-lists: %w", err)
	}
	defer rows.Close()
	var out []AllowList
	for rows.Next() {
		var a AllowList
		var doc string
		var upd int64
		if err := rows.Scan(&a.Upstream, &doc, &upd); err != nil {
			return nil, fmt.Errorf("store: list allow-lists: %w", err)
		}
		a.Document, a.Updated = []byte(doc), fromNanos(upd)
		out = append(out, a)
	}
	if err := rows.Err(); err != nil && !errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("store: list allow-lists: %w", err)
	}
	return out, nil
}
