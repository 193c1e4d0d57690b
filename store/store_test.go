package store

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sag-gateway/sag/internal/testutil"
)

var clockBase = time.Date(2026, 7, 28, 12, 0, 0, 0, time.UTC)

// newTestClock is a clock that advances one second per reading: reading n
// is clockBase + n seconds.
func newTestClock() *testutil.Clock {
	return testutil.NewClock(clockBase.Add(time.Second), time.Second)
}

// openTest opens a store in a fresh temporary directory (and a fresh
// database on PostgreSQL) and closes it when the test ends.
func openTest(t testing.TB, opts Options) *DB {
	t.Helper()
	return openTestIn(t, testOptions(t, opts))
}

// openTestSQLite is openTest on SQLite whatever the engine under test, for
// tests of SQLite's own settings.
func openTestSQLite(t testing.TB) *DB {
	t.Helper()
	return openTestIn(t, Options{})
}

func openTestIn(t testing.TB, opts Options) *DB {
	t.Helper()
	s, err := Open(context.Background(), t.TempDir(), opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil && !errors.Is(err, ErrClosed) {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

func TestOpenCreatesPrivateDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "sag-data")
	s, err := Open(context.Background(), dir, Options{})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer s.Close()
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o700 {
		t.Errorf("dir mode = %v, want 0700", perm)
	}
	for _, name := range []string{"sag.db", "sag.db-wal"} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if perm := fi.Mode().Perm(); perm != 0o600 {
			t.Errorf("%s mode = %v, want 0600", name, perm)
		}
	}
}

func TestPragmas(t *testing.T) {
	s := openTestSQLite(t)
	ctx := context.Background()
	for _, tc := range []struct {
		pragma string
		want   string
	}{
		{"journal_mode", "wal"},
		{"synchronous", "1"}, // NORMAL
		{"busy_timeout", "5000"},
		{"foreign_keys", "1"},
	} {
		var got string
		if err := s.w.QueryRowContext(ctx, "PRAGMA "+tc.pragma).Scan(&got); err != nil {
			t.Fatalf("PRAGMA %s: %v", tc.pragma, err)
		}
		if got != tc.want {
			t.Errorf("writer PRAGMA %s = %s, want %s", tc.pragma, got, tc.want)
		}
	}
	// The read pool must refuse writes.
	if _, err := s.r.ExecContext(ctx, `DELETE FROM audit`); err == nil {
		t.Error("write through the read pool succeeded, want an error")
	}
}

func TestMigrationsReopen(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	for i := range 3 {
		s, err := Open(ctx, dir, Options{})
		if err != nil {
			t.Fatalf("Open #%d: %v", i, err)
		}
		if err := s.Append(ctx, AuditRecord{Reason: "open"}); err != nil {
			t.Fatalf("Append #%d: %v", i, err)
		}
		recs, err := s.QueryAudit(ctx, AuditQuery{})
		if err != nil {
			t.Fatalf("QueryAudit #%d: %v", i, err)
		}
		if len(recs) != i+1 {
			t.Errorf("open #%d: %d records, want %d", i, len(recs), i+1)
		}
		var versions, maxVersion int
		if err := s.r.QueryRowContext(ctx, `SELECT COUNT(*), MAX(version) FROM schema_migrations`).Scan(&versions, &maxVersion); err != nil {
			t.Fatal(err)
		}
		if versions != len(migrations) || maxVersion != len(migrations) {
			t.Errorf("open #%d: schema_migrations has %d rows up to version %d, want %d", i, versions, maxVersion, len(migrations))
		}
		if err := s.Close(); err != nil {
			t.Fatalf("Close #%d: %v", i, err)
		}
	}
}

func TestNewerSchemaRefused(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := Open(ctx, dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.w.ExecContext(ctx, `INSERT INTO schema_migrations (version, applied) VALUES (?, 0)`, len(migrations)+1); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if s, err := Open(ctx, dir, Options{}); err == nil {
		s.Close()
		t.Fatal("Open of a database from a newer binary succeeded, want an error")
	}
}

func TestClosed(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{})
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	calls := map[string]func() error{
		"Close":           s.Close,
		"Append":          func() error { return s.Append(ctx, AuditRecord{}) },
		"QueryAudit":      func() error { _, err := s.QueryAudit(ctx, AuditQuery{}); return err },
		"PutSession":      func() error { return s.PutSession(ctx, Session{ID: "u", Kind: KindUser, State: StateActive}) },
		"GetSession":      func() error { _, err := s.GetSession(ctx, "u"); return err },
		"SetSessionState": func() error { return s.SetSessionState(ctx, "u", StateClosed) },
		"RevokeTree":      func() error { _, err := s.RevokeTree(ctx, "u"); return err },
		"ListSessions":    func() error { _, err := s.ListSessions(ctx, 0); return err },
		"PutUpstream":     func() error { return s.PutUpstream(ctx, Upstream{Name: "x"}) },
		"DeleteUpstream":  func() error { return s.DeleteUpstream(ctx, "x") },
		"ListUpstreams":   func() error { _, err := s.ListUpstreams(ctx); return err },
	}
	for name, call := range calls {
		if err := call(); !errors.Is(err, ErrClosed) {
			t.Errorf("%s after Close = %v, want ErrClosed", name, err)
		}
	}
}
