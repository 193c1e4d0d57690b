package store

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// ErrRefreshReused is returned for a refresh token presented after it was
// rotated: its whole family is revoked by then (OAuth 2.1 §4.3.1).
var ErrRefreshReused = errors.New("store: refresh token reused")

// OAuthClient is a client registered at the authorization server (RFC
// 7591); the identity package owns the metadata's shape.
type OAuthClient struct {
	ID       string
	Metadata []byte
	Created  time.Time
}

// PutOAuthClient records a registered client.
func (s *DB) PutOAuthClient(ctx context.Context, c OAuthClient) error {
	return s.exec(ctx, "put oauth client", `INSERT INTO oauth_clients (id, metadata, created) VALUES (?, ?, ?)`,
		c.ID, string(c.Metadata), nanos(c.Created))
}

// GetOAuthClient returns a registered client; ErrNotFound for an unknown id.
func (s *DB) GetOAuthClient(ctx context.Context, id string) (OAuthClient, error) {
	if err := s.acquire(); err != nil {
		return OAuthClient{}, err
	}
	defer s.release()
	var (
		c       OAuthClient
		meta    string
		created int64
	)
	err := s.r.QueryRowContext(ctx, `SELECT id, metadata, created FROM oauth_clients WHERE id = ?`, id).Scan(&c.ID, &meta, &created)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return c, ErrNotFound
	case err != nil:
		return c, fmt.Errorf("store: oauth client: %w", err)
	}
	c.Metadata, c.Created = []byte(meta), fromNanos(created)
	return c, nil
}

// Refresh token states.
const (
	RefreshActive  = "active"
	RefreshUsed    = "used"
	RefreshRevoked = "revoked"
)

// RefreshToken is one refresh token as the store keeps it: its hash, the
// rotation family it belongs to and what it grants (JSON the identity
// package owns).
type RefreshToken struct {
	Hash    string
	Family  string
	Client  string
	Subject string
	State   string
	Expires time.Time
	Grant   []byte
}

// PutRefreshToken records a new, active refresh token.
func (s *DB) PutRefreshToken(ctx context.Context, t RefreshToken) error {
	return s.exec(ctx, "put refresh token", `INSERT INTO oauth_refresh_tokens (hash, family, client, subject, state, expires, "grant") VALUES (?, ?, ?, ?, 'active', ?, ?)`,
		t.Hash, t.Family, t.Client, t.Subject, nanos(t.Expires), string(t.Grant))
}

// GetRefreshToken returns a refresh token by hash, whatever its state;
// ErrNotFound for an unknown one.
func (s *DB) GetRefreshToken(ctx context.Context, hash string) (RefreshToken, error) {
	if err := s.acquire(); err != nil {
		return RefreshToken{}, err
	}
	defer s.release()
	var (
		t       RefreshToken
		expires int64
		grant   string
	)
	err := s.r.QueryRowContext(ctx, `SELECT hash, family, client, subject, state, expires, "grant" FROM oauth_refresh_tokens WHERE hash = ?`, hash).
		Scan(&t.Hash, &t.Family, &t.Client, &t.Subject, &t.State, &expires, &grant)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return t, ErrNotFound
	case err != nil:
		return t, fmt.Errorf("store: refresh token: %w", err)
	}
	t.Expires, t.Grant = fromNanos(expires), []byte(grant)
	return t, nil
}

// UseRefreshToken marks an active refresh token used, once: a token that
// is not active any more (used by a concurrent request, or revoked) gets
// ErrRefreshReused and its family is revoked in the same transaction.
func (s *DB) UseRefreshToken(ctx context.Context, hash string) error {
	err := s.submit(ctx, func(tx *sql.Tx) error {
		res, err := tx.Exec(`UPDATE oauth_refresh_tokens SET state = 'used' WHERE hash = ? AND state = 'active'`, hash)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil || n == 1 {
			return err
		}
		if _, err := tx.Exec(`UPDATE oauth_refresh_tokens SET state = 'revoked' WHERE family = (SELECT family FROM oauth_refresh_tokens WHERE hash = ?)`, hash); err != nil {
			return err
		}
		return ErrRefreshReused
	})
	if errors.Is(err, ErrRefreshReused) {
		return err
	}
	if err != nil {
		return fmt.Errorf("store: use refresh token: %w", err)
	}
	return nil
}

// RevokeRefreshFamily revokes every refresh token of a rotation family.
func (s *DB) RevokeRefreshFamily(ctx context.Context, family string) error {
	return s.exec(ctx, "revoke refresh family", `UPDATE oauth_refresh_tokens SET state = 'revoked' WHERE family = ?`, family)
}

// PutClientConsent remembers that subject allowed client to act for them
// with scope (replacing what they allowed it before).
func (s *DB) PutClientConsent(ctx context.Context, subject, client, scope string) error {
	return s.exec(ctx, "put client consent", `INSERT INTO oauth_consents (subject, client, scope, granted) VALUES (?, ?, ?, ?)
		ON CONFLICT (subject, client) DO UPDATE SET scope = excluded.scope, granted = excluded.granted`,
		subject, client, scope, nanos(s.now()))
}

// ClientConsent returns the scope subject allowed client, ErrNotFound when
// they never did (or withdrew it).
func (s *DB) ClientConsent(ctx context.Context, subject, client string) (string, error) {
	if err := s.acquire(); err != nil {
		return "", err
	}
	defer s.release()
	var scope string
	err := s.r.QueryRowContext(ctx, `SELECT scope FROM oauth_consents WHERE subject = ? AND client = ?`, subject, client).Scan(&scope)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return "", ErrNotFound
	case err != nil:
		return "", fmt.Errorf("store: client consent: %w", err)
	}
	return scope, nil
}

// DeleteClientConsent withdraws what subject allowed client and revokes the
// refresh tokens client holds for subject, in one transaction; ErrNotFound
// when there was nothing to withdraw.
func (s *DB) DeleteClientConsent(ctx context.Context, subject, client string) error {
	err := s.submit(ctx, func(tx *sql.Tx) error {
		res, err := tx.Exec(`DELETE FROM oauth_consents WHERE subject = ? AND client = ?`, subject, client)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil || n == 0 {
			return cmp.Or(err, ErrNotFound)
		}
		_, err = tx.Exec(`UPDATE oauth_refresh_tokens SET state = 'revoked' WHERE subject = ? AND client = ? AND state = 'active'`, subject, client)
		return err
	})
	if err != nil {
		return fmt.Errorf("store: delete client consent: %w", err)
	}
	return nil
}
