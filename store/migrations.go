package store

import (
	"context"
	"database/sql"
	"fmt"
)

// migrations is the ordered schema history. Entry i brings the database from
// version i to version i+1. Entries are append-only: never edit one that has
// shipped, add a new one instead.
var migrations = []string{
	// 1: sessions, upstream registry, audit log.
	`
CREATE TABLE sessions (
	id       TEXT PRIMARY KEY,
	kind     TEXT NOT NULL CHECK (kind IN ('user', 'workflow', 'agent', 'mcp')),
	parent   TEXT REFERENCES sessions (id) CHECK (parent <> id),
	subject  TEXT NOT NULL,
	agent    TEXT NOT NULL,
	state    TEXT NOT NULL CHECK (state IN ('active', 'closed', 'revoked')),
	created  INTEGER NOT NULL, -- Unix nanoseconds
	updated  INTEGER NOT NULL, -- Unix nanoseconds
	risk     REAL NOT NULL,
	counters TEXT NOT NULL     -- JSON object (or null)
);
CREATE INDEX sessions_parent ON sessions (parent);
CREATE INDEX sessions_created ON sessions (created);

CREATE TABLE upstreams (
	name    TEXT PRIMARY KEY,
	url     TEXT NOT NULL,
	prefix  TEXT NOT NULL CHECK (prefix IN ('', 'always', 'conditional', 'none')),
	options TEXT,              -- opaque JSON, NULL when absent
	created INTEGER NOT NULL   -- Unix nanoseconds
);

CREATE TABLE audit (
	id               INTEGER PRIMARY KEY,
	time             INTEGER NOT NULL, -- Unix nanoseconds
	method           TEXT NOT NULL,
	usid             TEXT, -- session ids: NULL when absent, so that
	wsid             TEXT, -- the partial indexes below skip them
	asid             TEXT,
	msid             TEXT,
	sub              TEXT NOT NULL,
	spiffe_id        TEXT NOT NULL,
	act              TEXT NOT NULL,
	aud              TEXT NOT NULL,
	dpop_jti         TEXT NOT NULL,
	dpop_htu         TEXT NOT NULL,
	dpop_htm         TEXT NOT NULL,
	dpop_ath         TEXT NOT NULL,
	mtls_thumbprint  TEXT NOT NULL,
	tool             TEXT NOT NULL,
	upstream         TEXT NOT NULL,
	schema_version   TEXT NOT NULL,
	allow_list_match TEXT NOT NULL,
	dlp_actions      TEXT,             -- JSON array, NULL when empty
	policy_id        TEXT NOT NULL,
	decision         TEXT NOT NULL,
	reason           TEXT NOT NULL,
	latency_us       INTEGER NOT NULL,
	consent_id       TEXT NOT NULL
);
-- Each index costs the writer a page per commit; partial indexes cost
-- nothing for records without that session id.
CREATE INDEX audit_usid ON audit (usid) WHERE usid IS NOT NULL;
CREATE INDEX audit_wsid ON audit (wsid) WHERE wsid IS NOT NULL;
CREATE INDEX audit_asid ON audit (asid) WHERE asid IS NOT NULL;
CREATE INDEX audit_msid ON audit (msid) WHERE msid IS NOT NULL;
`,
	// 2: audit records find their session ids through audit_sessions, one
	// row per distinct (usid, wsid, asid, msid): a record costs the writer
	// one index entry instead of up to four (the calls of one MCP session
	// share a row), and a query by session id searches the small table.
	// The record keeps its own copy of the ids, for reading.
	`
CREATE TABLE audit_sessions (
	id   INTEGER PRIMARY KEY,
	usid TEXT NOT NULL, -- '' when absent
	wsid TEXT NOT NULL,
	asid TEXT NOT NULL,
	msid TEXT NOT NULL,
	UNIQUE (usid, wsid, asid, msid) -- also the index on usid
);
CREATE INDEX audit_sessions_wsid ON audit_sessions (wsid);
CREATE INDEX audit_sessions_asid ON audit_sessions (asid);
CREATE INDEX audit_sessions_msid ON audit_sessions (msid);
INSERT INTO audit_sessions (usid, wsid, asid, msid)
	SELECT DISTINCT COALESCE(usid, ''), COALESCE(wsid, ''), COALESCE(asid, ''), COALESCE(msid, '') FROM audit;
ALTER TABLE audit ADD COLUMN sessions INTEGER; -- audit_sessions.id
UPDATE audit SET sessions = (SELECT s.id FROM audit_sessions s
	WHERE s.usid = COALESCE(audit.usid, '') AND s.wsid = COALESCE(audit.wsid, '')
	AND s.asid = COALESCE(audit.asid, '') AND s.msid = COALESCE(audit.msid, ''));
DROP INDEX audit_usid;
DROP INDEX audit_wsid;
DROP INDEX audit_asid;
DROP INDEX audit_msid;
CREATE INDEX audit_by_sessions ON audit (sessions);
`,
	// 3: lineage of the tokens SAG mints for upstreams (session → jti), so
	// that killing a session makes them inactive; revoked tokens (RFC
	// 7009); session lookup by agent for the kill-switch.
	`
CREATE TABLE minted_tokens (
	jti      TEXT PRIMARY KEY,
	session  TEXT NOT NULL, -- sessions.id (not a foreign key: the node may be written later)
	upstream TEXT NOT NULL,
	subject  TEXT NOT NULL,
	expiry   INTEGER NOT NULL -- Unix nanoseconds
);
CREATE INDEX minted_tokens_session ON minted_tokens (session);
CREATE INDEX minted_tokens_expiry ON minted_tokens (expiry);

CREATE TABLE revoked_tokens (
	issuer TEXT NOT NULL,
	jti    TEXT NOT NULL,
	expiry INTEGER NOT NULL, -- Unix nanoseconds; the row may go after it
	PRIMARY KEY (issuer, jti)
);

CREATE INDEX sessions_subject ON sessions (kind, subject);
CREATE INDEX sessions_agent ON sessions (kind, agent);
`,
	// 4: allow-lists tool owners register with their upstreams.
	`
CREATE TABLE allowlists (
	upstream TEXT PRIMARY KEY,
	document TEXT NOT NULL, -- the YAML as registered
	updated  INTEGER NOT NULL -- Unix nanoseconds
);
`,
	// 5: tool pinning: the approved hash of each upstream tool's definition,
	// and a changed definition waiting for its owner's approval.
	`
CREATE TABLE tool_pins (
	upstream     TEXT NOT NULL,
	tool         TEXT NOT NULL, -- the upstream's name for it
	approved     TEXT NOT NULL, -- SHA-256 (hex) of the approved definition
	pending      TEXT NOT NULL, -- hash of a changed definition, '' when none
	pending_def  TEXT NOT NULL, -- that definition (JSON), '' when none
	updated      INTEGER NOT NULL, -- Unix nanoseconds
	PRIMARY KEY (upstream, tool)
);
`,
	// 6: user kills: every token of (issuer, subject) issued at or before
	// killed is refused, whatever its sid.
	`
CREATE TABLE user_kills (
	issuer  TEXT NOT NULL,
	subject TEXT NOT NULL,
	killed  INTEGER NOT NULL, -- Unix seconds (token iat resolution)
	PRIMARY KEY (issuer, subject)
);
`,
	// 7: consent requests: a call waiting for its user's decision, and the
	// decision, kept so that no restart loses either.
	`
CREATE TABLE consent_requests (
	id       TEXT PRIMARY KEY,
	asid     TEXT NOT NULL,
	nodes    TEXT NOT NULL, -- the session-graph ids on the call's path, space-separated
	state    TEXT NOT NULL CHECK (state IN ('pending', 'approved', 'approved_with_edits', 'denied', 'expired', 'cancelled')),
	expires  INTEGER NOT NULL, -- Unix nanoseconds
	used     INTEGER NOT NULL DEFAULT 0,
	request  TEXT NOT NULL -- the whole request as JSON
);
CREATE INDEX consent_requests_pending ON consent_requests (state) WHERE state = 'pending';
`,
	// 8: the issuer of a session's principal, so that a user's own
	// sessions (issuer, subject) can be listed for them.
	`
ALTER TABLE sessions ADD COLUMN issuer TEXT NOT NULL DEFAULT '';
CREATE INDEX sessions_user ON sessions (subject, issuer) WHERE kind = 'user';
`,
	// 9: A2A tasks, each its owner's alone, and the session-graph nodes of
	// the calls they made (a kill cancels the tasks under it).
	`
CREATE TABLE a2a_tasks (
	id          TEXT PRIMARY KEY,
	owner       TEXT NOT NULL,
	context_id  TEXT NOT NULL,
	state       TEXT NOT NULL,
	status_time INTEGER NOT NULL, -- Unix nanoseconds, 0 when the status has no timestamp
	version     INTEGER NOT NULL,
	updated     INTEGER NOT NULL, -- Unix nanoseconds
	task        TEXT NOT NULL -- the whole task as JSON
);
CREATE INDEX a2a_tasks_owner ON a2a_tasks (owner, updated DESC, id DESC);
CREATE TABLE a2a_task_nodes (
	id    TEXT PRIMARY KEY,
	nodes TEXT NOT NULL -- session-graph ids, space-separated
);
`,
	// 10: the audit journal's last sequence moved into the audit table
	// (journal.go), updated in the transaction that moves it.
	`
CREATE TABLE audit_journal (seq INTEGER NOT NULL);
INSERT INTO audit_journal (seq) VALUES (0);
`,
	// 11: the authorization server: dynamically registered clients,
	// refresh tokens (by hash, in rotation families) and the clients each
	// user has allowed to act for them.
	`
CREATE TABLE oauth_clients (
	id       TEXT PRIMARY KEY,
	metadata TEXT NOT NULL, -- the registered metadata as JSON, with the secret's hash
	created  INTEGER NOT NULL -- Unix nanoseconds
);
CREATE TABLE oauth_refresh_tokens (
	hash    TEXT PRIMARY KEY, -- SHA-256 of the token, base64url
	family  TEXT NOT NULL,
	client  TEXT NOT NULL,
	subject TEXT NOT NULL,
	state   TEXT NOT NULL CHECK (state IN ('active', 'used', 'revoked')),
	expires INTEGER NOT NULL, -- Unix nanoseconds
	grant   TEXT NOT NULL -- what the token grants, as JSON
);
CREATE INDEX oauth_refresh_tokens_family ON oauth_refresh_tokens (family);
CREATE TABLE oauth_consents (
	subject TEXT NOT NULL,
	client  TEXT NOT NULL,
	scope   TEXT NOT NULL,
	granted INTEGER NOT NULL, -- Unix nanoseconds
	PRIMARY KEY (subject, client)
);
`,
	// 12: the DPoP replay cache gateways sharing a PostgreSQL store keep
	// together (one gateway alone keeps it in memory).
	`
CREATE TABLE dpop_replay (
	key     TEXT PRIMARY KEY, -- SHA-256 (hex) of the replay key
	expires INTEGER NOT NULL  -- Unix nanoseconds
);
CREATE INDEX dpop_replay_expires ON dpop_replay (expires);
`,
	// 13: one moved sequence per audit journal: gateways sharing a
	// PostgreSQL store each move their own journal. SQLite's one journal
	// is named ''.
	`
CREATE TABLE audit_journals (
	journal TEXT PRIMARY KEY, -- the gateway's journal id ('' on SQLite)
	seq     INTEGER NOT NULL
);
INSERT INTO audit_journals (journal, seq) SELECT '', seq FROM audit_journal;
DROP TABLE audit_journal;
`,
	// 14: what a 2025 MCP client said when it opened its session, so that
	// any gateway sharing the store (or this one after a restart) can go on
	// serving the session.
	`
CREATE TABLE mcp_clients (
	session    TEXT PRIMARY KEY REFERENCES sessions (id),
	initialize TEXT NOT NULL, -- the initialize request's params (JSON)
	log_level  TEXT NOT NULL  -- set by logging/setLevel ('' until then)
);
`,
	// 15: the rate limits' token buckets gateways sharing a PostgreSQL
	// store keep together (one gateway alone keeps them in memory). A
	// bucket full again is the same as none: its row is purged.
	`
CREATE TABLE rate_buckets (
	key     TEXT PRIMARY KEY, -- SHA-256 (hex) of the bucket's key and limit
	tokens  REAL NOT NULL,    -- tokens left at at
	at      INTEGER NOT NULL, -- Unix nanoseconds, the database's clock
	full_at INTEGER NOT NULL  -- when the bucket is full again
);
CREATE INDEX rate_buckets_full_at ON rate_buckets (full_at);
`,
	// 16: the authorization server's sign-ins in progress (requests
	// waiting for their person, browser sign-ins, sign-ins at identity
	// providers, codes), so that any gateway sharing the store serves the
	// next step, and a restart loses none.
	`
CREATE TABLE oauth_flows (
	kind    TEXT NOT NULL,
	id      TEXT NOT NULL,           -- SHA-256 (hex) of the flow's id (a bearer secret)
	data    TEXT NOT NULL,           -- JSON, the authorization server's
	count   INTEGER NOT NULL,        -- failed sign-ins
	spent   TEXT,                    -- JSON: what a redeemed code issued
	expires INTEGER NOT NULL,        -- Unix nanoseconds
	PRIMARY KEY (kind, id)
);
CREATE INDEX oauth_flows_expires ON oauth_flows (kind, expires);
`,
}

// migrate brings the database up to len(migrations) in one transaction and
// records each applied version once in schema_migrations. It is idempotent and
// refuses a database written by a newer binary. On PostgreSQL the
// migrations are translated (pgSchema), and gateways starting together
// take turns (a transaction-scoped advisory lock).
func migrate(ctx context.Context, db *sql.DB, postgres bool, now int64) (err error) {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("store: migrate: begin: %w", err)
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback()
		}
	}()

	ddl := func(q string) string { return q }
	if postgres {
		ddl = pgSchema
		if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock(?)`, migrationLock); err != nil {
			return fmt.Errorf("store: migrate: lock: %w", err)
		}
	}
	if _, err := tx.ExecContext(ctx, ddl(`CREATE TABLE IF NOT EXISTS schema_migrations (
	version INTEGER PRIMARY KEY,
	applied INTEGER NOT NULL -- Unix nanoseconds
)`)); err != nil {
		return fmt.Errorf("store: migrate: create schema_migrations: %w", err)
	}
	var current int
	if err := tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&current); err != nil {
		return fmt.Errorf("store: migrate: read version: %w", err)
	}
	if current > len(migrations) {
		return fmt.Errorf("store: migrate: database schema version %d is newer than this binary's %d", current, len(migrations))
	}
	for v := current + 1; v <= len(migrations); v++ {
		if _, err := tx.ExecContext(ctx, ddl(migrations[v-1])); err != nil {
			return fmt.Errorf("store: migrate: version %d: %w", v, err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations (version, applied) VALUES (?, ?)`, v, now); err != nil {
			return fmt.Errorf("store: migrate: record version %d: %w", v, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("store: migrate: commit: %w", err)
	}
	return nil
}
