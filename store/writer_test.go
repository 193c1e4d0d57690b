package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

// holdWriter submits an op that blocks the writer goroutine until the
// returned release is called, so that the test can queue ops behind it.
// release waits until the blocking op has finished.
func holdWriter(t *testing.T, s *DB) (release func()) {
	t.Helper()
	entered, unblock := make(chan struct{}), make(chan struct{})
	errc := make(chan error, 1)
	go func() {
		errc <- s.submit(context.Background(), func(*sql.Tx) error {
			close(entered)
			<-unblock
			return nil
		})
	}()
	<-entered
	return func() {
		close(unblock)
		if err := <-errc; err != nil {
			t.Errorf("holding op: %v", err)
		}
	}
}

// waitQueued waits until n ops are queued for the writer.
func waitQueued(t *testing.T, s *DB, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for len(s.ops) < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d ops queued after 10s, want %d", len(s.ops), n)
		}
		time.Sleep(time.Millisecond)
	}
}

func countAudit(t *testing.T, s *DB) int {
	t.Helper()
	var n int
	if err := s.r.QueryRow(`SELECT COUNT(*) FROM audit`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// insertRow is a write through the writer: one audit_sessions row named
// key.
func insertRow(ctx context.Context, s *DB, key string) error {
	return s.submit(ctx, func(tx *sql.Tx) error {
		_, err := tx.Exec(`INSERT INTO audit_sessions (usid, wsid, asid, msid) VALUES (?, 'w', '', '')`, key)
		return err
	})
}

// countRows counts the rows insertRow wrote.
func countRows(t *testing.T, s *DB) int {
	t.Helper()
	var n int
	if err := s.r.QueryRow(`SELECT COUNT(*) FROM audit_sessions WHERE wsid = 'w'`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestConcurrentAppends(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{})
	const n = 200
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			errs <- s.Append(ctx, AuditRecord{Reason: fmt.Sprint("r", i), Decision: "allow"})
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("Append: %v", err)
		}
	}
	recs, err := s.QueryAudit(ctx, AuditQuery{Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, r := range recs {
		seen[r.Reason] = true
	}
	for i := range n {
		if !seen[fmt.Sprint("r", i)] {
			t.Errorf("record r%d missing", i)
		}
	}
	if len(recs) != n {
		t.Errorf("%d records, want %d", len(recs), n)
	}
	t.Logf("%d appends in %d commits", n, s.commits.Load())
}

func TestGroupCommitBatches(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		maxBatch    int
		n           int
		wantCommits int64 // for the n appends, not counting the holding op
		atLeast     bool  // wantCommits is a lower bound
	}{
		{maxBatch: 256, n: 200, wantCommits: 1},
		{maxBatch: 16, n: 200, wantCommits: 13, atLeast: true}, // ceil(200/16)
	}
	for _, tc := range tests {
		t.Run(fmt.Sprint("maxBatch=", tc.maxBatch), func(t *testing.T) {
			s := openTest(t, Options{MaxBatch: tc.maxBatch})
			release := holdWriter(t, s)
			var wg sync.WaitGroup
			errs := make(chan error, tc.n)
			for i := range tc.n {
				wg.Go(func() { errs <- insertRow(ctx, s, fmt.Sprint(i)) })
			}
			waitQueued(t, s, min(tc.n, tc.maxBatch))
			before := s.commits.Load()
			release()
			wg.Wait()
			close(errs)
			for err := range errs {
				if err != nil {
					t.Fatalf("insert: %v", err)
				}
			}
			commits := s.commits.Load() - before - 1 // not counting the holding op's commit
			if got := countRows(t, s); got != tc.n {
				t.Errorf("%d records committed, want %d", got, tc.n)
			}
			if commits < tc.wantCommits || (!tc.atLeast && commits != tc.wantCommits) {
				t.Errorf("%d appends took %d commits, want %d", tc.n, commits, tc.wantCommits)
			}
			if commits >= int64(tc.n) {
				t.Errorf("no batching: %d appends took %d commits", tc.n, commits)
			}
		})
	}
}

func TestFailedOpSparesItsBatch(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{})
	release := holdWriter(t, s)

	errBoom := errors.New("boom")
	const good = 10
	var wg sync.WaitGroup
	errs := make(chan error, good)
	failed := make(chan error, 1)
	for i := range good {
		wg.Go(func() { errs <- insertRow(ctx, s, fmt.Sprint("good", i)) })
		if i == good/2 {
			waitQueued(t, s, i+1)
			// A failing op that writes first: its write must be undone,
			// and only its own.
			wg.Go(func() {
				failed <- s.submit(ctx, func(tx *sql.Tx) error {
					if _, err := tx.Exec(`INSERT INTO upstreams (name, url, prefix, created) VALUES ('bad', '', '', 0)`); err != nil {
						return err
					}
					return errBoom
				})
			})
			waitQueued(t, s, i+2)
		}
	}
	waitQueued(t, s, good+1)
	before := s.commits.Load()
	release()
	wg.Wait()
	close(errs)

	if err := <-failed; !errors.Is(err, errBoom) {
		t.Errorf("failing op returned %v, want %v", err, errBoom)
	}
	for err := range errs {
		if err != nil {
			t.Errorf("insert in the failing op's batch: %v", err)
		}
	}
	if got := countRows(t, s); got != good {
		t.Errorf("%d records committed, want %d", got, good)
	}
	if ups, err := s.ListUpstreams(ctx); err != nil || len(ups) != 0 {
		t.Errorf("failing op's write survived: %v, %v", ups, err)
	}
	if commits := s.commits.Load() - before; commits != 2 { // holding op + one batch
		t.Errorf("%d commits, want 2 (the batch must commit once)", commits)
	}
}

func TestFailedLoneOpRollsBack(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{})
	errBoom := errors.New("boom")
	err := s.submit(ctx, func(tx *sql.Tx) error {
		if _, err := tx.Exec(`INSERT INTO upstreams (name, url, prefix, created) VALUES ('bad', '', '', 0)`); err != nil {
			return err
		}
		return errBoom
	})
	if !errors.Is(err, errBoom) {
		t.Fatalf("submit = %v, want %v", err, errBoom)
	}
	if ups, err := s.ListUpstreams(ctx); err != nil || len(ups) != 0 {
		t.Errorf("failing op's write survived: %v, %v", ups, err)
	}
	// The writer is still usable.
	if err := insertRow(ctx, s, "x"); err != nil {
		t.Errorf("insert after a failed op: %v", err)
	}
}

func TestAppendContextCancelled(t *testing.T) {
	s := openTest(t, Options{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := insertRow(ctx, s, "x"); !errors.Is(err, context.Canceled) {
		t.Errorf("insert with cancelled context = %v, want context.Canceled", err)
	}

	// Cancelled while queued behind a busy writer: the call returns at once.
	release := holdWriter(t, s)
	ctx, cancel = context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if err := insertRow(ctx, s, "x"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("insert queued past its deadline = %v, want context.DeadlineExceeded", err)
	}
	release()
}

func TestCloseWaitsForQueuedOps(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := Open(ctx, dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	release := holdWriter(t, s)
	const n = 20
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() { errs <- insertRow(ctx, s, fmt.Sprint(i)) })
	}
	waitQueued(t, s, n)
	closed := make(chan error, 1)
	go func() { closed <- s.Close() }()
	// Close must not finish while ops are queued.
	select {
	case err := <-closed:
		t.Fatalf("Close returned (%v) with ops still queued", err)
	case <-time.After(50 * time.Millisecond):
	}
	release()
	if err := <-closed; err != nil {
		t.Fatalf("Close: %v", err)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("queued Append: %v", err)
		}
	}

	s, err = Open(ctx, dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got := countRows(t, s); got != n {
		t.Errorf("%d records after reopen, want %d", got, n)
	}
}

// TestAppendFailsClosed: while journaled records cannot be moved into the
// audit table, Append fails; once they can again, nothing was lost and
// Append works again.
func TestAppendFailsClosed(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{})
	rename := func(from, to string) {
		t.Helper()
		if err := s.submit(ctx, func(tx *sql.Tx) error {
			_, err := tx.Exec(`ALTER TABLE ` + from + ` RENAME TO ` + to)
			return err
		}); err != nil {
			t.Fatal(err)
		}
	}
	rename("audit", "audit_away") // the store breaks underneath the writer
	if err := s.Append(ctx, AuditRecord{Decision: "allow", Reason: "first"}); err != nil {
		t.Fatalf("the first Append is journaled: %v", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for s.Append(ctx, AuditRecord{Decision: "allow", Reason: "more"}) == nil {
		if time.Now().After(deadline) {
			t.Fatal("Append kept succeeding while its records could not be stored")
		}
		time.Sleep(5 * time.Millisecond)
	}
	rename("audit_away", "audit")
	for s.Append(ctx, AuditRecord{Decision: "allow", Reason: "after"}) != nil {
		if time.Now().After(deadline) {
			t.Fatal("Append still failing after the store recovered")
		}
		time.Sleep(50 * time.Millisecond)
	}
	recs, err := s.QueryAudit(ctx, AuditQuery{Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) == 0 || recs[len(recs)-1].Reason != "first" || recs[0].Reason != "after" {
		t.Fatalf("want the first record kept and the last one stored; got %d records", len(recs))
	}
}

func TestCloseDuringAppends(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := Open(ctx, dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	acked := 0
	for range 8 {
		wg.Go(func() {
			for {
				err := s.Append(ctx, AuditRecord{Decision: "allow"})
				if errors.Is(err, ErrClosed) {
					return
				}
				if err != nil {
					t.Errorf("Append: %v", err)
					return
				}
				mu.Lock()
				acked++
				mu.Unlock()
				if _, err := s.QueryAudit(ctx, AuditQuery{Limit: 1}); err != nil && !errors.Is(err, ErrClosed) {
					t.Errorf("QueryAudit: %v", err)
					return
				}
			}
		})
	}
	time.Sleep(50 * time.Millisecond)
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	wg.Wait()
	if acked == 0 {
		t.Fatal("no Append succeeded before Close")
	}
	s, err = Open(ctx, dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got := countAudit(t, s); got < acked {
		t.Errorf("%d records after reopen, but %d were acknowledged", got, acked)
	}
}
