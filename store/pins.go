package store

import (
	"context"
	"fmt"
	"time"
)

// ToolPin is the pinned definition of one upstream tool (rug-pull and
// tool-poisoning defence): the hash its owner approved and, when the
// upstream changed the definition since, the new one awaiting approval.
type ToolPin struct {
	Upstream, Tool string
	// Approved is the SHA-256 (hex) of the approved definition.
	Approved string
	// Pending is the hash of a changed definition, "" when none; while it
	// is set the tool is quarantined.
	Pending    string
	PendingDef []byte
	Updated    time.Time
}

// PutToolPin stores (or replaces) a pin and returns once it is committed.
func (s *DB) PutToolPin(ctx context.Context, p ToolPin) error {
	return s.exec(ctx, "put tool pin", `INSERT INTO tool_pins (upstream, tool, approved, pending, pending_def, updated) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
		ON CONFLICT (upstream, tool) DO UPDATE SET approved = excluded.approved, pending = excluded.pending,
		pending_def = excluded.pending_def, updated = excluded.updated`,
		p.Upstream, p.Tool, p.Approved, p.Pending, string(p.PendingDef), nanos(s.now()))
}

// ListToolPins returns every pin, by upstream and tool.
func (s *DB) ListToolPins(ctx context.Context) ([]ToolPin, error) {
	if err := s.acquire(); err != nil {
		return nil, err
	}
	defer s.release()
	rows, err := s.r.QueryContext(ctx, `SELECT upstream, tool, approved, pending, pending_def, updated FROM tool_pins ORDER BY upstream, tool`)
	if err != nil {
		return nil, fmt.Errorf("store: list tool pins: %w", err)
	}
	defer rows.Close()
	var out []ToolPin
	for rows.Next() {
		var p ToolPin
		var def string
		var upd int64
		if err := rows.Scan(&p.Upstream, &p.Tool, &p.Approved, &p.Pending, &def, &upd); err != nil {
			return nil, fmt.Errorf("store: list tool pins: %w", err)
		}
		if def != "" {
			p.PendingDef = []byte(def)
		}
		p.Updated = fromNanos(upd)
		out = append(out, p)
	}
	return out, rows.Err()
}
