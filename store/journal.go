package store

import (
	"bufio"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"sync"
	"time"
)

// The audit journal: Append writes each record as one line to
// audit.journal in the data directory and returns once the write has
// returned, which is what a committed SQLite transaction promises here too
// (WAL with synchronous=NORMAL: the record survives the process, not the
// machine losing power). The writer moves journaled records into the audit
// table in the background, many to a transaction, and records in that same
// transaction the last journal sequence it moved, so that Open, after a
// crash, moves exactly what is missing. A call is answered only after its
// record is written; while the journal cannot be written, or its records
// cannot be moved, Append fails (the pipeline then refuses calls). Reads of
// the audit table first wait for what was journaled before them.

// journalFile is the name of the journal inside the data directory.
const journalFile = "audit.journal"

// journalTruncateAt is the size past which a fully moved journal is
// emptied.
const journalTruncateAt = 4 << 20

// journalRetry is how long the mover waits after a failed move.
const journalRetry = time.Second

// journalGather is how long the mover lets records gather before it moves
// them, unless a read waits for them: one transaction then carries many.
const journalGather = 20 * time.Millisecond

// journalWriter is the open journal: an *os.File (a fake in tests).
type journalWriter interface {
	io.Writer
	Truncate(size int64) error
	Seek(offset int64, whence int) (int64, error)
	Close() error
}

// journaled is one line of the journal.
type journaled struct {
	Seq uint64      `json:"seq"`
	Rec AuditRecord `json:"rec"`
}

type journal struct {
	s *DB

	mu      sync.Mutex
	f       journalWriter
	size    int64
	seq     uint64      // the last sequence written
	moved   uint64      // the last sequence in the audit table
	pending []journaled // written, not yet moved
	// broken is set once a write failed (until the next Open replays the
	// journal), failing while the last move failed.
	broken, failing error
	closed          bool
	changed         chan struct{}

	kick    chan struct{}
	urgent  chan struct{} // a read waits: move now
	stop    chan struct{}
	stopped chan struct{}
}

// openJournal moves what a previous process journaled but did not move
// into the audit table, empties the journal and starts the mover.
func (s *DB) openJournal(ctx context.Context, path string) (*journal, error) {
	j := &journal{s: s, changed: make(chan struct{}), kick: make(chan struct{}, 1), urgent: make(chan struct{}, 1), stop: make(chan struct{}), stopped: make(chan struct{})}
	if s.postgres {
		id, err := journalID(path + ".id")
		if err != nil {
			return nil, fmt.Errorf("store: open journal: %w", err)
		}
		s.journalID = id
	}
	if _, err := s.w.ExecContext(ctx, `INSERT INTO audit_journals (journal, seq) VALUES (?, 0) ON CONFLICT (journal) DO NOTHING`, s.journalID); err != nil {
		return nil, fmt.Errorf("store: open journal: %w", err)
	}
	if err := s.w.QueryRowContext(ctx, `SELECT seq FROM audit_journals WHERE journal = ?`, s.journalID).Scan(&j.moved); err != nil {
		return nil, fmt.Errorf("store: open journal: %w", err)
	}
	j.seq = j.moved
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("store: open journal: %w", err)
	}
	var left []journaled
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 64<<20)
	for sc.Scan() {
		var e journaled
		if json.Unmarshal(sc.Bytes(), &e) != nil {
			break // a line cut by a crash: its write never returned
		}
		if e.Seq > j.moved {
			left = append(left, e)
		}
		j.seq = max(j.seq, e.Seq)
	}
	if err := sc.Err(); err != nil {
		f.Close()
		return nil, fmt.Errorf("store: open journal: %w", err)
	}
	if len(left) > 0 {
		tx, err := s.w.BeginTx(ctx, nil)
		if err == nil {
			if err = s.moveRecords(tx, left); err == nil {
				err = tx.Commit()
			} else {
				_ = tx.Rollback()
			}
		}
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("store: open journal: move %d records: %w", len(left), err)
		}
		j.moved = left[len(left)-1].Seq
	}
	if err := f.Truncate(0); err != nil {
		f.Close()
		return nil, fmt.Errorf("store: open journal: %w", err)
	}
	if _, err := f.Seek(0, 0); err != nil {
		f.Close()
		return nil, fmt.Errorf("store: open journal: %w", err)
	}
	j.f = f
	return j, nil
}

// append writes rec to the journal and returns once the write returned.
func (j *journal) append(rec AuditRecord) error {
	// The record is encoded before the lock is taken, so that concurrent
	// callers wait for each other's writes only; the line is a journaled
	// value: {"seq":N,"rec":RECORD}.
	body, err := json.Marshal(&rec)
	if err != nil {
		return err
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.closed {
		return ErrClosed
	}
	if err := j.errLocked(); err != nil {
		return err
	}
	e := journaled{Seq: j.seq + 1, Rec: rec}
	line := make([]byte, 0, len(body)+40)
	line = append(line, `{"seq":`...)
	line = strconv.AppendUint(line, e.Seq, 10)
	line = append(line, `,"rec":`...)
	line = append(line, body...)
	line = append(line, "}\n"...)
	end := j.size
	n, err := j.f.Write(line)
	if err != nil {
		// The record is not written (a full disk, say): take back what
		// was, and the next record is written once the disk has room.
		if j.f.Truncate(end) == nil {
			if _, serr := j.f.Seek(end, io.SeekStart); serr == nil {
				return fmt.Errorf("audit journal: %w", err)
			}
		}
		// Cannot: a line cut short is skipped (and ends the replay) at
		// the next Open. Its record was never acknowledged, and none
		// after it can be written until the journal is replayed.
		j.size += int64(n)
		j.broken = fmt.Errorf("audit journal: %w", err)
		j.broadcastLocked()
		return j.broken
	}
	j.size += int64(n)
	j.seq = e.Seq
	j.pending = append(j.pending, e)
	select {
	case j.kick <- struct{}{}:
	default:
	}
	return nil
}

// run is the mover: it moves pending records into the audit table until
// stopped, then moves what is left.
func (j *journal) run() {
	defer close(j.stopped)
	gather := time.NewTimer(journalGather)
	gather.Stop()
	for {
		select {
		case <-j.kick:
			gather.Reset(journalGather)
			select {
			case <-gather.C:
			case <-j.urgent:
				gather.Stop()
			case <-j.stop:
				j.move()
				return
			}
		case <-j.urgent:
		case <-j.stop:
			j.move()
			return
		}
		if !j.move() {
			select {
			case <-time.After(journalRetry):
				j.kickSelf()
			case <-j.stop:
				j.move()
				return
			}
		}
	}
}

func (j *journal) kickSelf() {
	select {
	case j.kick <- struct{}{}:
	default:
	}
}

// move moves every pending record in one transaction and reports whether
// it succeeded.
func (j *journal) move() bool {
	j.mu.Lock()
	batch := j.pending
	j.mu.Unlock()
	if len(batch) == 0 {
		return true
	}
	err := j.s.submit(context.Background(), func(tx *sql.Tx) error { return j.s.moveRecords(tx, batch) })
	j.mu.Lock()
	defer j.mu.Unlock()
	if err != nil {
		if j.failing == nil {
			j.failing = fmt.Errorf("audit records cannot be stored: %w", err)
			j.broadcastLocked()
		}
		return false
	}
	j.failing = nil
	j.pending = j.pending[len(batch):]
	if len(j.pending) == 0 {
		j.pending = nil
	}
	j.moved = batch[len(batch)-1].Seq
	if j.moved == j.seq && j.size >= journalTruncateAt {
		if err := j.f.Truncate(0); err == nil {
			if _, err := j.f.Seek(0, 0); err == nil {
				j.size = 0
			}
		}
	}
	j.broadcastLocked()
	return true
}

// moveRecords inserts records into the audit table in tx and records the
// last one's sequence as moved.
func (s *DB) moveRecords(tx *sql.Tx, recs []journaled) error {
	insSessions, selSession, ins := tx.Stmt(s.insertAuditSessions), tx.Stmt(s.selectAuditSession), tx.Stmt(s.insertAudit)
	type nodes struct{ u, w, a, m string }
	rows := map[nodes]int64{} // the calls of one session share a row
	for i := range recs {
		rec := &recs[i].Rec
		var dlp any // NULL when empty
		if len(rec.DLPActions) > 0 {
			b, err := json.Marshal(rec.DLPActions)
			if err != nil {
				return fmt.Errorf("dlp actions: %w", err)
			}
			dlp = string(b)
		}
		n := nodes{rec.USID, rec.WSID, rec.ASID, rec.MSID}
		row, ok := rows[n]
		if !ok {
			if _, err := insSessions.Exec(n.u, n.w, n.a, n.m); err != nil {
				return err
			}
			if err := selSession.QueryRow(n.u, n.w, n.a, n.m).Scan(&row); err != nil {
				return err
			}
			rows[n] = row
		}
		if _, err := ins.Exec(nanos(rec.Time), rec.Method,
			nullIfEmpty(rec.USID), nullIfEmpty(rec.WSID), nullIfEmpty(rec.ASID), nullIfEmpty(rec.MSID),
			rec.Sub, rec.SpiffeID, rec.Act, rec.Aud,
			rec.DPoPJTI, rec.DPoPHTU, rec.DPoPHTM, rec.DPoPATH, rec.MTLSThumbprint,
			rec.Tool, rec.Upstream, rec.SchemaVersion, rec.AllowListMatch, dlp,
			rec.PolicyID, rec.Decision, rec.Reason, rec.LatencyUS, rec.ConsentID, row); err != nil {
			return err
		}
	}
	_, err := tx.Exec(`UPDATE audit_journals SET seq = ? WHERE journal = ?`, recs[len(recs)-1].Seq, s.journalID)
	return err
}

// nullIfEmpty is s, or NULL when s is empty.
func nullIfEmpty(s string) any {
	if s == "" {
		return nil
	}
	return s
}

// journalID reads the id of this data directory's journal from path,
// creating it the first time: on a shared store, each gateway's journal
// keeps its own moved sequence.
func journalID(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err == nil && len(b) > 0 {
		return string(b), nil
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	id := newOrigin()
	if err := os.WriteFile(path, []byte(id), 0o600); err != nil {
		return "", err
	}
	return id, nil
}

// errLocked is why records cannot be journaled now, nil when they can.
func (j *journal) errLocked() error {
	if j.broken != nil {
		return j.broken
	}
	return j.failing
}

func (j *journal) broadcastLocked() {
	close(j.changed)
	j.changed = make(chan struct{})
}

// flush waits until every record journaled before it is in the audit
// table.
func (j *journal) flush(ctx context.Context) error {
	j.mu.Lock()
	target := j.seq
	j.mu.Unlock()
	select {
	case j.urgent <- struct{}{}:
	default:
	}
	for {
		j.mu.Lock()
		moved, err, changed := j.moved, j.failing, j.changed
		j.mu.Unlock()
		if moved >= target {
			return nil
		}
		if err != nil {
			return err
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// close stops the mover once it has moved what it can, and closes the
// file; a journal fully moved is emptied.
func (j *journal) close() error {
	j.mu.Lock()
	if j.closed {
		j.mu.Unlock()
		return nil // a second Close: the first one closes
	}
	j.closed = true
	j.mu.Unlock()
	close(j.stop)
	<-j.stopped
	j.mu.Lock()
	defer j.mu.Unlock()
	var err error
	if j.moved == j.seq {
		err = j.f.Truncate(0)
	}
	return errors.Join(err, j.f.Close())
}
