package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"
)

// A2ATask is one A2A task as the store keeps it: the fields it is selected
// by, and the whole task as JSON (the a2a package owns its shape).
type A2ATask struct {
	ID         string
	Owner      string // the principal the task belongs to
	ContextID  string
	State      string
	StatusTime time.Time // zero when the status has none
	Version    int64
	Updated    time.Time
	Task       []byte
	// Nodes are the session-graph ids of the task's calls (LiveA2ATasks).
	Nodes []string
}

// A2ATaskQuery selects an owner's tasks, newest first.
type A2ATaskQuery struct {
	Owner     string
	ContextID string    // "" for any
	State     string    // "" for any
	After     time.Time // status timestamp at or after, zero for any
	// Cursor continues after the task (Updated, ID) a previous page ended
	// with; zero for the first page.
	CursorUpdated time.Time
	CursorID      string
	Limit         int
}

// terminalA2AStates are the states a task never leaves.
const terminalA2AStates = `('TASK_STATE_COMPLETED', 'TASK_STATE_FAILED', 'TASK_STATE_CANCELED', 'TASK_STATE_REJECTED')`

const a2aTaskCols = `id, owner, context_id, state, status_time, version, updated, task`

// PutA2ATask inserts a new task; ErrConflict when its id exists.
func (s *DB) PutA2ATask(ctx context.Context, t A2ATask) error {
	err := s.submit(ctx, func(tx *sql.Tx) error {
		res, err := tx.Exec(`INSERT INTO a2a_tasks (`+a2aTaskCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING`,
			t.ID, t.Owner, t.ContextID, t.State, optNanos(t.StatusTime), t.Version, nanos(t.Updated), string(t.Task))
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n != 1 {
			return ErrConflict
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("store: put a2a task: %w", err)
	}
	return nil
}

// UpdateA2ATask replaces the owner's task t.ID with t when it is still at
// version prev (any version when prev is 0); ErrNotFound when the owner has
// no such task, ErrConflict when it changed meanwhile.
func (s *DB) UpdateA2ATask(ctx context.Context, t A2ATask, prev int64) error {
	err := s.submit(ctx, func(tx *sql.Tx) error {
		res, err := tx.Exec(`UPDATE a2a_tasks SET state = ?, status_time = ?, version = ?, updated = ?, task = ?
			WHERE id = ? AND owner = ? AND (version = ? OR ? = 0)`,
			t.State, optNanos(t.StatusTime), t.Version, nanos(t.Updated), string(t.Task), t.ID, t.Owner, prev, prev)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 1 {
			return nil
		}
		var exists int
		if err := tx.QueryRow(`SELECT COUNT(*) FROM a2a_tasks WHERE id = ? AND owner = ?`, t.ID, t.Owner).Scan(&exists); err != nil {
			return err
		}
		if exists == 0 {
			return ErrNotFound
		}
		return ErrConflict
	})
	if err != nil {
		return fmt.Errorf("store: update a2a task: %w", err)
	}
	return nil
}

// GetA2ATask returns one task; ErrNotFound for an unknown id.
func (s *DB) GetA2ATask(ctx context.Context, id string) (A2ATask, error) {
	t, err := scanA2ATask(s.r.QueryRowContext(ctx, `SELECT `+a2aTaskCols+` FROM a2a_tasks WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return t, ErrNotFound
	}
	return t, err
}

// ListA2ATasks returns one page of q.Owner's tasks (newest update first)
// and how many match in all.
func (s *DB) ListA2ATasks(ctx context.Context, q A2ATaskQuery) ([]A2ATask, int, error) {
	where := []string{"owner = ?"}
	args := []any{q.Owner}
	if q.ContextID != "" {
		where, args = append(where, "context_id = ?"), append(args, q.ContextID)
	}
	if q.State != "" {
		where, args = append(where, "state = ?"), append(args, q.State)
	}
	if !q.After.IsZero() {
		where, args = append(where, "(status_time = 0 OR status_time >= ?)"), append(args, nanos(q.After))
	}
	cond := strings.Join(where, " AND ")
	var total int
	if err := s.r.QueryRowContext(ctx, `SELECT COUNT(*) FROM a2a_tasks WHERE `+cond, args...).Scan(&total); err != nil {
		return nil, 0, fmt.Errorf("store: count a2a tasks: %w", err)
	}
	if q.CursorID != "" {
		cond += " AND (updated < ? OR (updated = ? AND id < ?))"
		args = append(args, nanos(q.CursorUpdated), nanos(q.CursorUpdated), q.CursorID)
	}
	rows, err := s.r.QueryContext(ctx, `SELECT `+a2aTaskCols+` FROM a2a_tasks WHERE `+cond+` ORDER BY updated DESC, id DESC LIMIT ?`, append(args, q.Limit)...)
	if err != nil {
		return nil, 0, fmt.Errorf("store: list a2a tasks: %w", err)
	}
	defer rows.Close()
	var out []A2ATask
	for rows.Next() {
		t, err := scanA2ATask(rows)
		if err != nil {
			return nil, 0, err
		}
		out = append(out, t)
	}
	return out, total, rows.Err()
}

// BindA2ATask records the session-graph nodes of a task's calls.
func (s *DB) BindA2ATask(ctx context.Context, id string, nodes []string) error {
	return s.exec(ctx, "bind a2a task", `INSERT INTO a2a_task_nodes (id, nodes) VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET nodes = excluded.nodes`,
		id, strings.Join(nodes, " "))
}

// LiveA2ATasks returns every task not yet in a terminal state that has
// session-graph nodes, with them.
func (s *DB) LiveA2ATasks(ctx context.Context) ([]A2ATask, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT t.id, t.owner, t.context_id, t.state, t.status_time, t.version, t.updated, t.task, n.nodes
		FROM a2a_tasks t JOIN a2a_task_nodes n ON n.id = t.id WHERE t.state NOT IN `+terminalA2AStates)
	if err != nil {
		return nil, fmt.Errorf("store: live a2a tasks: %w", err)
	}
	defer rows.Close()
	var out []A2ATask
	for rows.Next() {
		var nodes string
		t, err := scanA2ATask(rows, &nodes)
		if err != nil {
			return nil, err
		}
		t.Nodes = strings.Fields(nodes)
		out = append(out, t)
	}
	return out, rows.Err()
}

func scanA2ATask(row interface{ Scan(...any) error }, more ...any) (A2ATask, error) {
	var t A2ATask
	var statusTime, updated int64
	var task string
	if err := row.Scan(append([]any{&t.ID, &t.Owner, &t.ContextID, &t.State, &statusTime, &t.Version, &updated, &task}, more...)...); err != nil {
		return t, err
	}
	if statusTime != 0 {
		t.StatusTime = fromNanos(statusTime)
	}
	t.Updated, t.Task = fromNanos(updated), []byte(task)
	return t, nil
}

// optNanos is nanos, with 0 for the zero time.
func optNanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return nanos(t)
}
