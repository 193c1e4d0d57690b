package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
)

// op is one write submitted to the writer goroutine: fn runs inside the batch
// transaction, and done receives its result once the transaction commits (or
// fails). done is buffered so the writer never blocks on a caller that has
// gone away.
type op struct {
	fn   func(*sql.Tx) error
	done chan error
	err  error // fn's result, set by the writer
}

// submit hands fn to the writer and waits until the transaction that ran it
// has committed. It returns fn's error, the commit's error, ErrClosed after
// Close, or ctx.Err() if ctx ends first; in that last case the write may still
// be committed later. fn must do nothing but use the transaction: it runs on
// the writer goroutine, between other callers' writes, and it may run twice
// (see commit), so it must set, not accumulate, anything it reports.
func (s *DB) submit(ctx context.Context, fn func(*sql.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	o := op{fn: fn, done: make(chan error, 1)}
	if err := s.acquire(); err != nil {
		return err
	}
	select {
	case s.ops <- o:
		s.release()
	case <-ctx.Done():
		s.release()
		return ctx.Err()
	}
	select {
	case err := <-o.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// run is the writer goroutine. It takes the first queued op, drains whatever
// else is already queued (up to maxBatch) without waiting for more, commits
// them in one transaction and reports to each. It exits once ops is closed
// and empty, so Close waits for every queued op.
func (s *DB) run() {
	defer close(s.stopped)
	batch := make([]op, 0, s.maxBatch)
	for first := range s.ops {
		batch = append(batch[:0], first)
	fill:
		for len(batch) < s.maxBatch {
			select {
			case o, ok := <-s.ops:
				if !ok {
					break fill
				}
				batch = append(batch, o)
			default:
				break fill
			}
		}
		s.commit(batch)
		clear(batch) // let finished ops and their closures be collected
	}
}

// commit runs batch in one transaction and reports each op's result. An op
// that fails does not fail the others. The batch first runs without
// savepoints, the fast path; if an op fails there, the transaction is rolled
// back and, when the batch holds other ops, run again with each op inside its
// own SAVEPOINT, rolled back alone if it fails again. Only a failure of the
// transaction itself (BEGIN, SAVEPOINT, COMMIT) fails every op in the batch.
func (s *DB) commit(batch []op) {
	err := s.runBatch(batch, false)
	if errors.Is(err, errOpFailed) && len(batch) > 1 {
		err = s.runBatch(batch, true)
	}
	txFailed := err != nil && !errors.Is(err, errOpFailed) // errOpFailed: a lone op failed, o.err says why
	for _, o := range batch {
		if txFailed {
			o.done <- err
		} else {
			o.done <- o.err
		}
	}
}

// errOpFailed reports that runBatch stopped because an op failed.
var errOpFailed = errors.New("op failed")

// runBatch runs batch in one transaction, recording each op's result in it,
// and commits. Without isolate it stops at the first failing op, rolls back
// and returns errOpFailed. With isolate each op runs inside a savepoint that
// is rolled back if the op fails, and the others are committed.
func (s *DB) runBatch(batch []op, isolate bool) (err error) {
	tx, err := s.w.Begin()
	if err != nil {
		return fmt.Errorf("begin write: %w", err)
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback()
		}
	}()
	for i := range batch {
		o := &batch[i]
		if !isolate {
			if o.err = o.fn(tx); o.err != nil {
				return errOpFailed
			}
			continue
		}
		if _, err := tx.Exec("SAVEPOINT op"); err != nil {
			return fmt.Errorf("savepoint: %w", err)
		}
		if o.err = o.fn(tx); o.err != nil {
			if _, err := tx.Exec("ROLLBACK TO op"); err != nil {
				return fmt.Errorf("rollback to savepoint: %w", err)
			}
		}
		if _, err := tx.Exec("RELEASE op"); err != nil {
			return fmt.Errorf("release savepoint: %w", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	s.commits.Add(1)
	return nil
}
