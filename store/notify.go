package store

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Gateways sharing a PostgreSQL store keep revocations in memory for the
// hot path; what one of them revokes reaches the others as an Event,
// published with PostgreSQL's NOTIFY inside the transaction that commits it
// (so an event exists exactly when its change does) and received by Listen.
// On SQLite there is one gateway and no events.

// EventKind says what an Event reports.
type EventKind string

const (
	// EventRevoked: session-graph nodes IDs were revoked (a kill).
	EventRevoked EventKind = "revoked"
	// EventUserKill: every token of (Issuer, Subject) issued at or before
	// Time (Unix seconds) is refused.
	EventUserKill EventKind = "user_kill"
	// EventTokenRevoked: the token (Issuer, JTI) is revoked until Time
	// (Unix nanoseconds).
	EventTokenRevoked EventKind = "token_revoked"
	// EventUpstreams: the registered upstreams IDs were added, changed
	// or removed.
	EventUpstreams EventKind = "upstreams"
	// EventConsent: the consent requests IDs were created or settled.
	EventConsent EventKind = "consent"
	// EventFollowing: the user (Issuer, Subject) follows their consent
	// requests on the gateway that says so, as of now.
	EventFollowing EventKind = "following"
	// EventPolicy: the policy changed (IDs: the upstreams whose
	// allow-lists were registered or removed; none for a reload).
	EventPolicy EventKind = "policy"
	// EventPins: a changed tool definition was approved (IDs: upstream,
	// tool).
	EventPins EventKind = "pins"
	// EventKeys: the gateway signing keys were rotated (IDs: the new
	// active key id) in the keys directory the gateways share.
	EventKeys EventKind = "keys"
	// EventResync: events may have been missed (the listening connection
	// was lost and is back); reload what is kept in memory from the store.
	EventResync EventKind = "resync"
)

// Event is a change another gateway committed to the shared store.
type Event struct {
	Origin  string    `json:"o"`
	Kind    EventKind `json:"k"`
	IDs     []string  `json:"ids,omitempty"`
	Issuer  string    `json:"iss,omitempty"`
	Subject string    `json:"sub,omitempty"`
	JTI     string    `json:"jti,omitempty"`
	Time    int64     `json:"t,omitempty"`
}

// eventChannel is the PostgreSQL notification channel of events.
const eventChannel = "sag_events"

// maxEventIDs keeps a revocation's payload under NOTIFY's 8,000 bytes: a
// kill of more nodes is published as several events.
const maxEventIDs = 200

// newOrigin names this store's events so that Listen skips its own.
func newOrigin() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// publish queues ev for delivery when tx commits (PostgreSQL only).
func (s *DB) publish(tx *sql.Tx, ev Event) error {
	if !s.postgres {
		return nil
	}
	ev.Origin = s.origin
	for {
		part := ev
		if len(part.IDs) > maxEventIDs {
			part.IDs = ev.IDs[:maxEventIDs]
		}
		b, err := json.Marshal(part)
		if err != nil {
			return err
		}
		if _, err := tx.Exec(`SELECT pg_notify(?, ?)`, eventChannel, string(b)); err != nil {
			return fmt.Errorf("publish %s: %w", ev.Kind, err)
		}
		if len(ev.IDs) <= maxEventIDs {
			return nil
		}
		ev.IDs = ev.IDs[maxEventIDs:]
	}
}

// Announce publishes ev to the other gateways at once, outside any
// transaction: for news that changes nothing in the store (EventFollowing).
// On SQLite it does nothing.
func (s *DB) Announce(ctx context.Context, ev Event) error {
	if !s.postgres {
		return nil
	}
	if err := s.acquire(); err != nil {
		return err
	}
	defer s.release()
	ev.Origin = s.origin
	b, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	if _, err := s.x.ExecContext(ctx, `SELECT pg_notify(?, ?)`, eventChannel, string(b)); err != nil {
		return fmt.Errorf("store: announce %s: %w", ev.Kind, err)
	}
	return nil
}

// Listen calls fn with every event other gateways publish, in commit
// order, until ctx ends. Each time it starts listening (at first, and
// after a lost connection is back) it calls fn with EventResync, for the
// caller to reload from the store what it keeps in memory: events from
// before are not delivered. On SQLite it returns at once. fn runs on
// Listen's goroutine.
func (s *DB) Listen(ctx context.Context, fn func(Event)) {
	if !s.postgres {
		return
	}
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		conn, err := pgx.Connect(ctx, s.pgURL)
		if err == nil {
			if _, err = conn.Exec(ctx, "LISTEN "+eventChannel); err != nil {
				_ = conn.Close(context.Background())
			}
		}
		if err != nil {
			select {
			case <-ctx.Done():
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 5*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
		// Listening from here: what fn reloads now misses nothing.
		fn(Event{Kind: EventResync})
		s.listening.Store(true)
		for {
			n, err := conn.WaitForNotification(ctx)
			if err != nil {
				break
			}
			var ev Event
			if json.Unmarshal([]byte(n.Payload), &ev) != nil || ev.Origin == s.origin {
				continue
			}
			fn(ev)
		}
		s.listening.Store(false)
		_ = conn.Close(context.Background())
	}
}

// Listening reports whether this gateway hears the others' events: always
// on SQLite, while Listen is connected on PostgreSQL.
func (s *DB) Listening() bool { return !s.postgres || s.listening.Load() }
