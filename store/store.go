package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	_ "modernc.org/sqlite" // registers the "sqlite" driver
)

// ErrNotFound is returned (wrapped) when the session or upstream a call names
// does not exist.
var ErrNotFound = errors.New("store: not found")

// ErrClosed is returned by every method called after Close.
var ErrClosed = errors.New("store: closed")

// ErrConflict is returned (wrapped) when a write would break an invariant:
// changing the kind, parent or subject a session is bound to, moving a
// revoked session out of the revoked state, deciding a consent request that
// is no longer pending, or using a consent decision twice.
var ErrConflict = errors.New("store: conflict")

// dbFile is the name of the database inside the data directory.
const dbFile = "sag.db"

// defaultMaxBatch is Options.MaxBatch when it is not set.
const defaultMaxBatch = 256

// Options tunes a store. The zero value is ready to use.
type Options struct {
	// Now is the clock used for timestamps the caller leaves zero.
	// Default time.Now.
	Now func() time.Time
	// MaxBatch caps how many writes share one transaction. Default 256.
	MaxBatch int
	// Postgres, when set, is the URL of a PostgreSQL database
	// (postgres://…) that holds the data instead of dir/sag.db; several
	// gateways may share it. The audit journal stays in dir.
	Postgres string
}

// DB is the store: SQLite in the data directory (the embedded default) or
// a shared PostgreSQL database, with one schema and one set of queries. It
// is safe for concurrent use. Writes are group-committed by one writer
// goroutine; reads go to a read-only pool.
type DB struct {
	now      func() time.Time
	maxBatch int
	postgres bool

	journalID string      // names this gateway's audit journal in audit_journals ('' on SQLite)
	pgURL     string      // PostgreSQL: for Listen's own connection
	origin    string      // PostgreSQL: names this store's events
	listening atomic.Bool // PostgreSQL: Listen is connected

	w *sql.DB // exactly one connection, used only by the writer goroutine (and migrations before it starts)
	r *sql.DB // read-only pool
	x *sql.DB // PostgreSQL: writes that cannot wait for a batch (the shared replay cache)

	stopPurge chan struct{} // PostgreSQL: ends purgeReplay
	purged    chan struct{} // closed when purgeReplay has returned

	insertAudit         *sql.Stmt // prepared on w
	insertAuditSessions *sql.Stmt // prepared on w
	selectAuditSession  *sql.Stmt // prepared on w
	journal             *journal  // audit records on their way to the audit table

	// mu orders calls against Close: readers hold it shared while they query
	// and writers while they send on ops; Close takes it exclusively, so no
	// call starts after Close and none is cut off by it.
	mu      sync.RWMutex
	closed  atomic.Bool // set under mu held exclusively
	ops     chan op
	stopped chan struct{} // closed when the writer goroutine has exited

	commits atomic.Int64 // committed write transactions; read by tests
}

// Open creates dir (0700) if needed and opens the store: dir/sag.db, or
// the PostgreSQL database opts.Postgres names. It applies pending schema
// migrations and starts the writer. The caller must Close the store.
func Open(ctx context.Context, dir string, opts Options) (*DB, error) {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.MaxBatch <= 0 {
		opts.MaxBatch = defaultMaxBatch
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("store: open: %w", err)
	}
	s := &DB{now: opts.Now, maxBatch: opts.MaxBatch, postgres: opts.Postgres != "", pgURL: opts.Postgres, origin: newOrigin()}
	var err error
	if s.postgres {
		s.w, s.r, s.x, err = openPostgres(ctx, opts.Postgres)
	} else {
		s.w, s.r, err = openSQLite(ctx, dir)
	}
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*DB, error) {
		for _, st := range []*sql.Stmt{s.insertAudit, s.insertAuditSessions, s.selectAuditSession} {
			if st != nil {
				_ = st.Close()
			}
		}
		_ = s.r.Close()
		_ = s.w.Close()
		if s.x != nil {
			_ = s.x.Close()
		}
		return nil, err
	}
	if err := migrate(ctx, s.w, s.postgres, s.now().UnixNano()); err != nil {
		return fail(err)
	}
	if s.insertAudit, err = s.w.PrepareContext(ctx, insertAuditSQL); err != nil {
		return fail(fmt.Errorf("store: open: prepare audit insert: %w", err))
	}
	if s.insertAuditSessions, err = s.w.PrepareContext(ctx, insertAuditSessionsSQL); err != nil {
		return fail(fmt.Errorf("store: open: prepare audit sessions insert: %w", err))
	}
	if s.selectAuditSession, err = s.w.PrepareContext(ctx, selectAuditSessionSQL); err != nil {
		return fail(fmt.Errorf("store: open: prepare audit sessions select: %w", err))
	}
	if s.journal, err = s.openJournal(ctx, filepath.Join(dir, journalFile)); err != nil {
		return fail(err)
	}

	s.ops = make(chan op, s.maxBatch)
	s.stopped = make(chan struct{})
	go s.run()
	go s.journal.run()
	if s.postgres {
		s.stopPurge, s.purged = make(chan struct{}), make(chan struct{})
		go func() {
			defer close(s.purged)
			s.purgeReplay(s.stopPurge, time.Minute)
		}()
	}
	return s, nil
}

// openSQLite opens dir/sag.db: the writer's single connection and the
// read-only pool.
func openSQLite(ctx context.Context, dir string) (w, r *sql.DB, err error) {
	path, err := filepath.Abs(filepath.Join(dir, dbFile))
	if err != nil {
		return nil, nil, fmt.Errorf("store: open: %w", err)
	}
	// Create the file private: SQLite gives the -wal and -shm files the
	// database file's mode, and dir may already exist with a looser one.
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, nil, fmt.Errorf("store: open: %w", err)
	}
	if err := f.Close(); err != nil {
		return nil, nil, fmt.Errorf("store: open: %w", err)
	}

	// The writer: one connection, WAL, no fsync per commit, BEGIN IMMEDIATE so
	// that a lock held by another process is waited for at BEGIN.
	w, err = sql.Open("sqlite", dsn(path, "_txlock=immediate",
		"_pragma=busy_timeout(5000)",
		"_pragma=journal_mode(WAL)",
		"_pragma=synchronous(NORMAL)",
		"_pragma=temp_store(MEMORY)", // savepoint journals stay off the disk
		"_pragma=foreign_keys(ON)"))
	if err != nil {
		return nil, nil, fmt.Errorf("store: open: %w", err)
	}
	w.SetMaxOpenConns(1)
	w.SetMaxIdleConns(1)
	w.SetConnMaxLifetime(0)
	w.SetConnMaxIdleTime(0)
	// The journal mode is set (it is persistent) before the readers open.
	if err := w.PingContext(ctx); err != nil {
		_ = w.Close()
		return nil, nil, fmt.Errorf("store: open: %w", err)
	}

	// The readers: query_only makes a stray write fail instead of contending
	// with the writer.
	r, err = sql.Open("sqlite", dsn(path,
		"_pragma=busy_timeout(5000)",
		"_pragma=query_only(1)"))
	if err != nil {
		_ = w.Close()
		return nil, nil, fmt.Errorf("store: open: %w", err)
	}
	readers := max(4, runtime.GOMAXPROCS(0))
	r.SetMaxOpenConns(readers)
	r.SetMaxIdleConns(readers)
	if err := r.PingContext(ctx); err != nil {
		_ = r.Close()
		_ = w.Close()
		return nil, nil, fmt.Errorf("store: open: readers: %w", err)
	}
	return w, r, nil
}

// dsn builds a SQLite URI for path with the given query parameters.
func dsn(path string, params ...string) string {
	u := url.URL{Scheme: "file", Path: filepath.ToSlash(path), RawQuery: strings.Join(params, "&")}
	return u.String()
}

// Close stops accepting calls, waits until every queued write is committed
// (or has failed), and closes the database. Calls after Close, including a
// second Close, return ErrClosed.
func (s *DB) Close() error {
	// The journal's records are moved before the writer stops.
	jerr := s.journal.close()
	s.mu.Lock()
	if s.closed.Load() {
		s.mu.Unlock()
		return ErrClosed
	}
	s.closed.Store(true)
	close(s.ops)
	s.mu.Unlock()

	<-s.stopped
	var xerr error
	if s.postgres {
		close(s.stopPurge)
		<-s.purged
		xerr = s.x.Close()
	}
	err := errors.Join(jerr, s.insertAudit.Close(), s.insertAuditSessions.Close(), s.selectAuditSession.Close(), s.r.Close(), s.w.Close(), xerr)
	if err != nil {
		return fmt.Errorf("store: close: %w", err)
	}
	return nil
}

// acquire admits a call: it returns ErrClosed once Close has begun, and
// otherwise holds Close off until the matching release.
func (s *DB) acquire() error {
	s.mu.RLock()
	if s.closed.Load() {
		s.mu.RUnlock()
		return ErrClosed
	}
	return nil
}

// release ends what acquire admitted.
func (s *DB) release() { s.mu.RUnlock() }

// nanos converts t to the stored representation, Unix nanoseconds.
func nanos(t time.Time) int64 { return t.UnixNano() }

// fromNanos converts a stored timestamp back to a UTC time.
func fromNanos(n int64) time.Time { return time.Unix(0, n).UTC() }

// exec runs one statement in the writer and returns once it is committed;
// errors say what failed ("store: <what>: …").
func (s *DB) exec(ctx context.Context, what, query string, args ...any) error {
	return s.write(ctx, what, false, nil, query, args...)
}

// execOne is exec for a statement that must change a row: ErrNotFound when
// it changes none.
func (s *DB) execOne(ctx context.Context, what, query string, args ...any) error {
	return s.write(ctx, what, true, nil, query, args...)
}

// write runs one statement in the writer (ErrNotFound when mustChange and
// it changes no row) and publishes ev, when given, in its transaction.
func (s *DB) write(ctx context.Context, what string, mustChange bool, ev *Event, query string, args ...any) error {
	err := s.submit(ctx, func(tx *sql.Tx) error {
		res, err := tx.Exec(query, args...)
		if err != nil {
			return err
		}
		if mustChange {
			if n, err := res.RowsAffected(); err != nil {
				return err
			} else if n == 0 {
				return ErrNotFound
			}
		}
		if ev != nil {
			return s.publish(tx, *ev)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("store: %s: %w", what, err)
	}
	return nil
}
