package store

import (
	"context"
	"database/sql"
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
// the writer goroutine, between other callers' writes.
func (s *SQLite) submit(ctx context.Context, fn func(*sql.Tx) error) error {
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
func (s *SQLite) run() {
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
// that fails does not fail the others: a lone op is rolled back with its
// transaction; in a larger batch each op runs inside its own SAVEPOINT, which
// is rolled back when the op fails. Only a failure of the transaction itself
// (BEGIN, SAVEPOINT, COMMIT) fails every op in the batch.
func (s *SQLite) commit(batch []op) {
	finish := func(txErr error) {
		for _, o := range batch {
			if txErr != nil {
				o.done <- txErr
			} else {
				o.done <- o.err
			}
		}
	}

	tx, err := s.w.Begin()
	if err != nil {
		finish(fmt.Errorf("store: begin write: %w", err))
		return
	}
	if len(batch) == 1 {
		// No savepoint needed: the transaction holds this op alone. This is
		// the path every write takes when there is no concurrency.
		if batch[0].err = batch[0].fn(tx); batch[0].err != nil {
			_ = tx.Rollback()
			finish(nil)
			return
		}
	} else if err := runSavepoints(tx, batch); err != nil {
		_ = tx.Rollback()
		finish(err)
		return
	}
	if err := tx.Commit(); err != nil {
		finish(fmt.Errorf("store: commit: %w", err))
		return
	}
	s.commits.Add(1)
	finish(nil)
}

// runSavepoints runs each op of batch inside its own savepoint, recording the
// op's error in it and undoing the op's changes when it fails. The returned
// error means the transaction itself is broken.
func runSavepoints(tx *sql.Tx, batch []op) error {
	for i := range batch {
		o := &batch[i]
		if _, err := tx.Exec("SAVEPOINT op"); err != nil {
			return fmt.Errorf("store: savepoint: %w", err)
		}
		if o.err = o.fn(tx); o.err != nil {
			if _, err := tx.Exec("ROLLBACK TO op"); err != nil {
				return fmt.Errorf("store: rollback to savepoint: %w", err)
			}
		}
		if _, err := tx.Exec("RELEASE op"); err != nil {
			return fmt.Errorf("store: release savepoint: %w", err)
		}
	}
	return nil
}
