package store

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"syscall"
	"testing"
)

// TestJournalWriteFailure: once a journal write fails, Append fails and
// keeps failing (the journal may end in a cut line), while what was
// acknowledged before stays readable.
func TestJournalWriteFailure(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := Open(ctx, dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Append(ctx, AuditRecord{Decision: "allow", Reason: "before"}); err != nil {
		t.Fatal(err)
	}
	ro, err := os.Open(filepath.Join(dir, journalFile)) // writes fail on it
	if err != nil {
		t.Fatal(err)
	}
	s.journal.mu.Lock()
	good := s.journal.f
	s.journal.f = ro
	s.journal.mu.Unlock()
	for range 2 {
		if err := s.Append(ctx, AuditRecord{Decision: "allow", Reason: "lost"}); err == nil || !strings.Contains(err.Error(), "audit journal") {
			t.Fatalf("Append with an unwritable journal = %v, want the journal's error", err)
		}
	}
	recs, err := s.QueryAudit(ctx, AuditQuery{})
	if err != nil || len(recs) != 1 || recs[0].Reason != "before" {
		t.Fatalf("QueryAudit = %v, %v; want the one acknowledged record", recs, err)
	}
	s.journal.mu.Lock()
	s.journal.f = good
	s.journal.mu.Unlock()
	ro.Close()
	// The journal may end in a cut line now: nothing more goes after it
	// until it is replayed.
	if err := s.Append(ctx, AuditRecord{Decision: "allow", Reason: "after"}); err == nil {
		t.Fatal("Append after a failed journal write succeeded")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}

// fullDisk is a journal file on a disk that fills: while full, a write
// writes half of its bytes and fails.
type fullDisk struct {
	*os.File
	full bool
}

func (f *fullDisk) Write(p []byte) (int, error) {
	if f.full {
		n, _ := f.File.Write(p[:len(p)/2])
		return n, syscall.ENOSPC
	}
	return f.File.Write(p)
}

// TestJournalDiskFull: a record the full disk cut short is taken back, so
// that once the disk has room Append goes on, and a later Open replays
// every acknowledged record and nothing else.
func TestJournalDiskFull(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := Open(ctx, dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	disk := &fullDisk{File: s.journal.f.(*os.File)}
	s.journal.mu.Lock()
	s.journal.f = disk
	s.journal.mu.Unlock()
	if err := s.Append(ctx, AuditRecord{Decision: "allow", Reason: "before"}); err != nil {
		t.Fatal(err)
	}
	s.journal.mu.Lock()
	disk.full = true
	s.journal.mu.Unlock()
	if err := s.Append(ctx, AuditRecord{Decision: "allow", Reason: "lost"}); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("Append on a full disk = %v, want ENOSPC", err)
	}
	s.journal.mu.Lock()
	disk.full = false
	s.journal.mu.Unlock()
	if err := s.Append(ctx, AuditRecord{Decision: "allow", Reason: "after"}); err != nil {
		t.Fatalf("Append once the disk has room: %v", err)
	}
	reasons := func(s *DB) []string {
		recs, err := s.QueryAudit(ctx, AuditQuery{})
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, r := range recs {
			out = append(out, r.Reason)
		}
		slices.Sort(out)
		return out
	}
	b, err := os.ReadFile(filepath.Join(dir, journalFile))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), "lost") || !strings.Contains(string(b), "after") {
		t.Fatalf("the journal after the full disk:\n%s\nwant the record after it, and nothing of the one refused", b)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = Open(ctx, dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got := reasons(s); !slices.Equal(got, []string{"after", "before"}) {
		t.Errorf("records after reopening: %v, want after and before", got)
	}
}

// TestJournalReplay: Open moves what the journal holds beyond the last
// moved sequence, once, and ignores a line cut by a crash.
func TestJournalReplay(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := Open(ctx, dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Append(ctx, AuditRecord{Decision: "allow", Reason: "moved"}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// What a process killed after its mover committed seq 1 but before
	// the journal was emptied leaves behind, plus two records not moved
	// and a cut line.
	journalText := `{"seq":1,"rec":{"time":"2026-12-05T00:00:00Z","reason":"moved"}}
{"seq":2,"rec":{"time":"2026-12-05T00:00:01Z","reason":"two"}}
{"seq":3,"rec":{"time":"2026-12-05T00:00:02Z","reason":"three"}}
{"seq":4,"rec":{"time":"2026-12-`
	if err := os.WriteFile(filepath.Join(dir, journalFile), []byte(journalText), 0o600); err != nil {
		t.Fatal(err)
	}
	for range 2 { // the second Open finds nothing more to move
		s, err = Open(ctx, dir, Options{})
		if err != nil {
			t.Fatal(err)
		}
		recs, err := s.QueryAudit(ctx, AuditQuery{})
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, r := range recs {
			got = append(got, r.Reason)
		}
		if strings.Join(got, ",") != "three,two,moved" {
			t.Fatalf("records after replay: %v, want three, two, moved", got)
		}
		var seq int
		if err := s.r.QueryRow(`SELECT seq FROM audit_journals WHERE journal = ''`).Scan(&seq); err != nil || seq != 3 {
			t.Fatalf("moved sequence %d (%v), want 3", seq, err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// TestJournalLine: a journal line is one journaled value, read back as the
// record that was appended (Open replays exactly these lines).
func TestJournalLine(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := Open(ctx, dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	want := fullRecord()
	for range 2 {
		if err := s.Append(ctx, want); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(filepath.Join(dir, journalFile))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	if len(lines) != 2 {
		t.Fatalf("journal has %d lines, want 2:\n%s", len(lines), b)
	}
	for i, line := range lines {
		var e journaled
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("line %d: %v", i+1, err)
		}
		if !e.Rec.Time.Equal(want.Time) {
			t.Errorf("line %d: time %v, want %v", i+1, e.Rec.Time, want.Time)
		}
		e.Rec.Time = want.Time
		if e.Seq != uint64(i+1) || !reflect.DeepEqual(e.Rec, want) {
			t.Errorf("line %d: seq %d, record %+v; want seq %d, %+v", i+1, e.Seq, e.Rec, i+1, want)
		}
	}
}
