package store

import (
	"cmp"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"
)

// SessionKind is the level of a session in the session graph.
type SessionKind string

// The session kinds, from the root of the graph down.
const (
	KindUser     SessionKind = "user"     // USID
	KindWorkflow SessionKind = "workflow" // WSID
	KindAgent    SessionKind = "agent"    // ASID
	KindMCP      SessionKind = "mcp"      // MSID
)

// SessionState is the lifecycle state of a session. Revoked is terminal.
type SessionState string

// The session states.
const (
	StateActive  SessionState = "active"
	StateClosed  SessionState = "closed"
	StateRevoked SessionState = "revoked"
)

// Session is one node of the session graph. Its JSON form (the admin API's
// GET /admin/sessions/{id}) uses snake_case names like the rest of the API.
type Session struct {
	ID      string       `json:"id"`
	Kind    SessionKind  `json:"kind"`
	Parent  string       `json:"parent,omitempty"` // "" for roots
	Subject string       `json:"subject"`          // principal key the session is bound to (user sub, or agent id)
	Issuer  string       `json:"issuer,omitempty"` // issuer of the subject's token
	Agent   string       `json:"agent,omitempty"`  // agent identity if known
	State   SessionState `json:"state"`
	Created time.Time    `json:"created"`
	Updated time.Time    `json:"updated"`
	Risk    float64      `json:"risk"`
	// Counters are free-form per-session counts, stored as JSON.
	Counters map[string]int64 `json:"counters,omitempty"`
}

const putSessionSQL = `
INSERT INTO sessions (id, kind, parent, subject, agent, state, created, updated, risk, counters, issuer)
VALUES (?1, ?2, NULLIF(?3, ''), ?4, ?5,
	CASE WHEN EXISTS (SELECT 1 FROM sessions WHERE id = NULLIF(?3, '') AND state = 'revoked')
		THEN 'revoked' ELSE ?6 END,
	?7, ?8, ?9, ?10, ?11)
ON CONFLICT (id) DO UPDATE SET
	agent    = excluded.agent,
	state    = CASE WHEN sessions.state = 'revoked' THEN 'revoked' ELSE excluded.state END,
	updated  = excluded.updated,
	risk     = excluded.risk,
	counters = excluded.counters
WHERE sessions.kind = excluded.kind
	AND sessions.parent IS NOT DISTINCT FROM excluded.parent
	AND sessions.subject = excluded.subject`

// PutSession inserts sess or updates the stored session with the same ID, and
// returns once the change is committed. A zero Created or Updated is set from
// the store's clock.
//
// A session stays bound to what it was created with: updating a session with
// a different Kind, Parent or Subject fails with ErrConflict, and an update
// never changes Created. Revocation is sticky: an update of a revoked session
// keeps it revoked, and a session created under a revoked parent is created
// revoked. The parent must already exist, else ErrNotFound.
func (s *DB) PutSession(ctx context.Context, sess Session) error {
	if err := validSession(sess); err != nil {
		return fmt.Errorf("store: put session: %w", err)
	}
	counters, err := json.Marshal(sess.Counters)
	if err != nil {
		return fmt.Errorf("store: put session: counters: %w", err)
	}
	if sess.Created.IsZero() || sess.Updated.IsZero() {
		now := s.now()
		if sess.Created.IsZero() {
			sess.Created = now
		}
		if sess.Updated.IsZero() {
			sess.Updated = now
		}
	}
	err = s.submit(ctx, func(tx *sql.Tx) error {
		res, err := tx.Exec(putSessionSQL, sess.ID, string(sess.Kind), sess.Parent, sess.Subject, sess.Agent,
			string(sess.State), nanos(sess.Created), nanos(sess.Updated), sess.Risk, string(counters), sess.Issuer)
		if isForeignKeyViolation(err) {
			return fmt.Errorf("parent: %w", ErrNotFound)
		}
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n == 0 {
			return fmt.Errorf("%w: kind, parent or subject differs from the stored session", ErrConflict)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("store: put session: %w", err)
	}
	return nil
}

// validSession reports what is wrong with sess, if anything.
func validSession(sess Session) error {
	switch {
	case sess.ID == "":
		return errors.New("empty id")
	case sess.Parent == sess.ID:
		return errors.New("session is its own parent")
	}
	switch sess.Kind {
	case KindUser, KindWorkflow, KindAgent, KindMCP:
	default:
		return fmt.Errorf("unknown kind %q", sess.Kind)
	}
	return validState(sess.State)
}

// validState reports whether st is one of the session states.
func validState(st SessionState) error {
	switch st {
	case StateActive, StateClosed, StateRevoked:
		return nil
	}
	return fmt.Errorf("unknown state %q", st)
}

const sessionCols = `id, kind, COALESCE(parent, ''), subject, agent, state, created, updated, risk, counters, issuer`

// GetSession returns the session with the given id, or ErrNotFound.
func (s *DB) GetSession(ctx context.Context, id string) (Session, error) {
	if err := s.acquire(); err != nil {
		return Session{}, err
	}
	defer s.release()
	sess, err := scanSession(s.r.QueryRowContext(ctx, `SELECT `+sessionCols+` FROM sessions WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return Session{}, fmt.Errorf("store: get session: %w", ErrNotFound)
	}
	if err != nil {
		return Session{}, fmt.Errorf("store: get session: %w", err)
	}
	return sess, nil
}

// ListSessions returns up to limit sessions (100 if limit <= 0), newest
// (by Created) first.
func (s *DB) ListSessions(ctx context.Context, limit int) ([]Session, error) {
	if limit <= 0 {
		limit = 100
	}
	if err := s.acquire(); err != nil {
		return nil, err
	}
	defer s.release()
	out, err := s.querySessions(ctx, `SELECT `+sessionCols+` FROM sessions ORDER BY created DESC, id DESC LIMIT ?`, limit)
	if err != nil {
		return nil, fmt.Errorf("store: list sessions: %w", err)
	}
	return out, nil
}

// UserSessions returns the session graphs of one user: every user session
// of (issuer, subject) and all that hangs off them, at most limit nodes,
// the most recently updated first.
func (s *DB) UserSessions(ctx context.Context, issuer, subject string, limit int) ([]Session, error) {
	if err := s.acquire(); err != nil {
		return nil, err
	}
	defer s.release()
	out, err := s.querySessions(ctx, `WITH RECURSIVE tree(id) AS (
	SELECT id FROM sessions WHERE kind = 'user' AND subject = ?1 AND issuer = ?2
	UNION
	SELECT s.id FROM sessions s JOIN tree ON s.parent = tree.id
) SELECT `+sessionCols+` FROM sessions WHERE id IN (SELECT id FROM tree) ORDER BY updated DESC, id LIMIT ?3`, subject, issuer, limit)
	if err != nil {
		return nil, fmt.Errorf("store: user sessions: %w", err)
	}
	return out, nil
}

// querySessions runs a query selecting sessionCols and reads its rows.
func (s *DB) querySessions(ctx context.Context, query string, args ...any) ([]Session, error) {
	rows, err := s.r.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Session
	for rows.Next() {
		sess, err := scanSession(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, sess)
	}
	return out, rows.Err()
}

// scanSession reads one row selected with sessionCols.
func scanSession(row interface{ Scan(...any) error }) (Session, error) {
	var (
		sess             Session
		created, updated int64
		counters         []byte
	)
	if err := row.Scan(&sess.ID, &sess.Kind, &sess.Parent, &sess.Subject, &sess.Agent, &sess.State,
		&created, &updated, &sess.Risk, &counters, &sess.Issuer); err != nil {
		return Session{}, err
	}
	if err := json.Unmarshal(counters, &sess.Counters); err != nil {
		return Session{}, fmt.Errorf("counters: %w", err)
	}
	sess.Created, sess.Updated = fromNanos(created), fromNanos(updated)
	return sess, nil
}

// SetSessionState sets the state of one session (not its descendants; see
// RevokeTree) and returns once the change is committed. It returns
// ErrNotFound for an unknown id and ErrConflict when asked to move a revoked
// session to another state.
func (s *DB) SetSessionState(ctx context.Context, id string, st SessionState) error {
	if err := validState(st); err != nil {
		return fmt.Errorf("store: set session state: %w", err)
	}
	now := nanos(s.now())
	err := s.submit(ctx, func(tx *sql.Tx) error {
		res, err := tx.Exec(`UPDATE sessions SET state = ?1, updated = ?2
			WHERE id = ?3 AND (state <> 'revoked' OR ?1 = 'revoked')`, string(st), now, id)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil || n > 0 {
			return err
		}
		var one int
		switch err := tx.QueryRow(`SELECT 1 FROM sessions WHERE id = ?`, id).Scan(&one); {
		case errors.Is(err, sql.ErrNoRows):
			return ErrNotFound
		case err != nil:
			return err
		}
		return fmt.Errorf("%w: session is revoked", ErrConflict)
	})
	if err != nil {
		return fmt.Errorf("store: set session state: %w", err)
	}
	return nil
}

// subtreeCTE selects ?1 and all its descendants as tree(id).
const subtreeCTE = `WITH RECURSIVE tree(id) AS (
	SELECT id FROM sessions WHERE id = ?1
	UNION
	SELECT s.id FROM sessions s JOIN tree ON s.parent = tree.id
)`

// RevokeTree revokes the session id and every descendant in one committed
// transaction and returns the ids of that whole subtree, id first, the rest
// sorted (sessions already revoked are included, their Updated unchanged).
// It returns ErrNotFound if id is unknown.
func (s *DB) RevokeTree(ctx context.Context, id string) ([]string, error) {
	now := nanos(s.now())
	var ids []string
	err := s.submit(ctx, func(tx *sql.Tx) error {
		rows, err := tx.Query(subtreeCTE+` SELECT id FROM tree`, id)
		if err != nil {
			return err
		}
		defer rows.Close()
		var found []string
		for rows.Next() {
			var sid string
			if err := rows.Scan(&sid); err != nil {
				return err
			}
			found = append(found, sid)
		}
		if err := rows.Err(); err != nil {
			return err
		}
		if len(found) == 0 {
			return ErrNotFound
		}
		if _, err := tx.Exec(subtreeCTE+` UPDATE sessions SET state = 'revoked', updated = ?2
			WHERE state <> 'revoked' AND id IN (SELECT id FROM tree)`, id, now); err != nil {
			return err
		}
		ids = found
		return s.publish(tx, Event{Kind: EventRevoked, IDs: found})
	})
	if err != nil {
		return nil, fmt.Errorf("store: revoke tree: %w", err)
	}
	slices.SortFunc(ids, func(a, b string) int {
		switch {
		case a == b:
			return 0
		case a == id:
			return -1
		case b == id:
			return 1
		}
		return cmp.Compare(a, b)
	})
	return ids, nil
}

// SetSessionRisk records a session's risk score and counters and returns
// once the change is committed; ErrNotFound for an unknown id.
func (s *DB) SetSessionRisk(ctx context.Context, id string, risk float64, counters map[string]int64) error {
	b, err := json.Marshal(counters)
	if err != nil {
		return fmt.Errorf("store: set session risk: %w", err)
	}
	return s.execOne(ctx, "set session risk", `UPDATE sessions SET risk = ?1, counters = ?2, updated = ?3 WHERE id = ?4`,
		risk, string(b), nanos(s.now()), id)
}

// RevokedSessions returns the ids of every revoked session. Revocation is
// terminal and kills are rare, so the gateway keeps them all in memory.
func (s *DB) RevokedSessions(ctx context.Context) ([]string, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT id FROM sessions WHERE state = 'revoked'`)
	if err != nil {
		return nil, fmt.Errorf("store: revoked sessions: %w", err)
	}
	defer rows.Close()
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, fmt.Errorf("store: revoked sessions: %w", err)
		}
		ids = append(ids, id)
	}
	return ids, rows.Err()
}

// UserKill is a kill of every token of one user of one issuer issued at or
// before Killed.
type UserKill struct {
	Issuer, Subject string
	Killed          time.Time
}

// PutUserKill records a user kill (a later kill of the same user replaces
// an earlier one) and returns once it is committed.
func (s *DB) PutUserKill(ctx context.Context, k UserKill) error {
	return s.write(ctx, "put user kill", false, &Event{Kind: EventUserKill, Issuer: k.Issuer, Subject: k.Subject, Time: k.Killed.Unix()},
		`INSERT INTO user_kills (issuer, subject, killed) VALUES (?1, ?2, ?3)
		ON CONFLICT (issuer, subject) DO UPDATE SET killed = CASE WHEN excluded.killed > user_kills.killed THEN excluded.killed ELSE user_kills.killed END`, k.Issuer, k.Subject, k.Killed.Unix())
}

// UserKills returns every user kill.
func (s *DB) UserKills(ctx context.Context) ([]UserKill, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT issuer, subject, killed FROM user_kills`)
	if err != nil {
		return nil, fmt.Errorf("store: user kills: %w", err)
	}
	defer rows.Close()
	var out []UserKill
	for rows.Next() {
		var k UserKill
		var secs int64
		if err := rows.Scan(&k.Issuer, &k.Subject, &secs); err != nil {
			return nil, fmt.Errorf("store: user kills: %w", err)
		}
		k.Killed = time.Unix(secs, 0)
		out = append(out, k)
	}
	return out, rows.Err()
}
