package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Upstream is a registered upstream MCP server.
type Upstream struct {
	Name   string
	URL    string
	Prefix string // tool name prefixing: "", "always", "conditional" or "none"
	// Options is opaque to the store and may be nil.
	Options json.RawMessage
	// Created is the registration time; it orders the registry, so the
	// earlier-registered upstream wins collisions.
	Created time.Time
}

// PutUpstream registers u, or replaces the URL, Prefix and Options of the
// upstream with the same name, and returns once the change is committed. A
// replaced upstream keeps its original Created (its place in the registry);
// a zero Created on insert is set from the store's clock.
func (s *DB) PutUpstream(ctx context.Context, u Upstream) error {
	if u.Name == "" {
		return errors.New("store: put upstream: empty name")
	}
	switch u.Prefix {
	case "", "always", "conditional", "none":
	default:
		return fmt.Errorf("store: put upstream %s: unknown prefix %q", u.Name, u.Prefix)
	}
	if u.Created.IsZero() {
		u.Created = s.now()
	}
	var options any // NULL when absent
	if u.Options != nil {
		options = string(u.Options)
	}
	err := s.submit(ctx, func(tx *sql.Tx) error {
		_, err := tx.Exec(`INSERT INTO upstreams (name, url, prefix, options, created) VALUES (?, ?, ?, ?, ?)
			ON CONFLICT (name) DO UPDATE SET url = excluded.url, prefix = excluded.prefix, options = excluded.options`,
			u.Name, u.URL, u.Prefix, options, nanos(u.Created))
		if err != nil {
			return err
		}
		return s.publish(tx, Event{Kind: EventUpstreams, IDs: []string{u.Name}})
	})
	if err != nil {
		return fmt.Errorf("store: put upstream %s: %w", u.Name, err)
	}
	return nil
}

// DeleteUpstream removes the upstream name and returns once the change is
// committed, or ErrNotFound.
func (s *DB) DeleteUpstream(ctx context.Context, name string) error {
	return s.write(ctx, "delete upstream "+name, true, &Event{Kind: EventUpstreams, IDs: []string{name}},
		`DELETE FROM upstreams WHERE name = ?`, name)
}

// ListUpstreams returns every registered upstream, in registration order
// (Created, then Name).
func (s *DB) ListUpstreams(ctx context.Context) ([]Upstream, error) {
	if err := s.acquire(); err != nil {
		return nil, err
	}
	defer s.release()
	rows, err := s.r.QueryContext(ctx, `SELECT name, url, prefix, options, created FROM upstreams ORDER BY created, name`)
	if err != nil {
		return nil, fmt.Errorf("store: list upstreams: %w", err)
	}
	defer rows.Close()
	var out []Upstream
	for rows.Next() {
		var (
			u       Upstream
			options []byte
			created int64
		)
		if err := rows.Scan(&u.Name, &u.URL, &u.Prefix, &options, &created); err != nil {
			return nil, fmt.Errorf("store: list upstreams: %w", err)
		}
		if options != nil {
			u.Options = json.RawMessage(options)
		}
		u.Created = fromNanos(created)
		out = append(out, u)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: list upstreams: %w", err)
	}
	return out, nil
}
