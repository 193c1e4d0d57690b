package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// MintedToken is the lineage of one token SAG minted for an upstream: the
// session it was minted for.
type MintedToken struct {
	JTI      string
	Session  string
	Upstream string
	Subject  string
	Expiry   time.Time
}

// PutMinted records a minted token and returns once it is committed.
func (s *DB) PutMinted(ctx context.Context, m MintedToken) error {
	if m.JTI == "" || m.Session == "" {
		return errors.New("store: put minted token: jti and session are required")
	}
	return s.exec(ctx, "put minted token", `INSERT INTO minted_tokens (jti, session, upstream, subject, expiry) VALUES (?, ?, ?, ?, ?)`,
		m.JTI, m.Session, m.Upstream, m.Subject, nanos(m.Expiry))
}

// MintedStatus returns a minted token's lineage and whether it is active:
// not expired, and its session not revoked. ErrNotFound means SAG never
// minted it.
func (s *DB) MintedStatus(ctx context.Context, jti string) (MintedToken, bool, error) {
	if err := s.acquire(); err != nil {
		return MintedToken{}, false, err
	}
	defer s.release()
	var (
		m       MintedToken
		exp     int64
		revoked bool
	)
	err := s.r.QueryRowContext(ctx, `SELECT m.jti, m.session, m.upstream, m.subject, m.expiry,
		EXISTS (SELECT 1 FROM sessions WHERE id = m.session AND state = 'revoked')
		FROM minted_tokens m WHERE m.jti = ?`, jti).Scan(&m.JTI, &m.Session, &m.Upstream, &m.Subject, &exp, &revoked)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return MintedToken{}, false, ErrNotFound
	case err != nil:
		return MintedToken{}, false, fmt.Errorf("store: minted token: %w", err)
	}
	m.Expiry = fromNanos(exp)
	return m, !revoked && s.now().Before(m.Expiry), nil
}

// RevokeToken records that the token (issuer, jti) is revoked until it
// expires.
func (s *DB) RevokeToken(ctx context.Context, issuer, jti string, expiry time.Time) error {
	return s.write(ctx, "revoke token", false, &Event{Kind: EventTokenRevoked, Issuer: issuer, JTI: jti, Time: nanos(expiry)},
		`INSERT INTO revoked_tokens (issuer, jti, expiry) VALUES (?, ?, ?)
		ON CONFLICT (issuer, jti) DO NOTHING`, issuer, jti, nanos(expiry))
}

// RevokedToken is one entry of the revocation list.
type RevokedToken struct {
	Issuer, JTI string
	Expiry      time.Time
}

// RevokedTokens lists the revoked tokens that have not expired yet.
func (s *DB) RevokedTokens(ctx context.Context) ([]RevokedToken, error) {
	if err := s.acquire(); err != nil {
		return nil, err
	}
	defer s.release()
	rows, err := s.r.QueryContext(ctx, `SELECT issuer, jti, expiry FROM revoked_tokens WHERE expiry > ?`, nanos(s.now()))
	if err != nil {
		return nil, fmt.Errorf("store: revoked tokens: %w", err)
	}
	defer rows.Close()
	var out []RevokedToken
	for rows.Next() {
		var r RevokedToken
		var exp int64
		if err := rows.Scan(&r.Issuer, &r.JTI, &exp); err != nil {
			return nil, fmt.Errorf("store: revoked tokens: %w", err)
		}
		r.Expiry = fromNanos(exp)
		out = append(out, r)
	}
	return out, rows.Err()
}

// FindSessions returns the ids of the sessions of one kind whose subject (or,
// with byAgent, whose agent) is who: the roots a kill by user or by agent
// revokes.
func (s *DB) FindSessions(ctx context.Context, kind SessionKind, who string, byAgent bool) ([]string, error) {
	if err := s.acquire(); err != nil {
		return nil, err
	}
	defer s.release()
	col := "subject"
	if byAgent {
		col = "agent"
	}
	rows, err := s.r.QueryContext(ctx, `SELECT id FROM sessions WHERE kind = ? AND `+col+` = ? ORDER BY id`, string(kind), who)
	if err != nil {
		return nil, fmt.Errorf("store: find sessions: %w", err)
	}
	defer rows.Close()
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, fmt.Errorf("store: find sessions: %w", err)
		}
		ids = append(ids, id)
	}
	return ids, rows.Err()
}
