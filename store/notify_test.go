package store

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// TestEvents: what one gateway revokes reaches another sharing the store,
// in commit order, once each; a gateway never hears its own events. On
// SQLite there is nothing to hear: Listen returns at once.
func TestEvents(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	opts := testOptions(t, Options{})
	a := openTestIn(t, opts)
	if pg == nil {
		done := make(chan struct{})
		go func() { a.Listen(ctx, func(Event) { t.Error("an event on SQLite") }); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("Listen on SQLite did not return")
		}
		if !a.Listening() {
			t.Error("SQLite store not Listening")
		}
		return
	}
	b := openTestIn(t, opts)
	heard := func(s *DB) <-chan Event {
		ch := make(chan Event, 1000)
		go s.Listen(ctx, func(ev Event) { ch <- ev })
		return ch
	}
	atB, atA := heard(b), heard(a)
	next := func(ch <-chan Event, who string) Event {
		t.Helper()
		select {
		case ev := <-ch:
			return ev
		case <-time.After(5 * time.Second):
			t.Fatalf("%s heard nothing", who)
			return Event{}
		}
	}
	for _, ch := range []<-chan Event{atA, atB} {
		if ev := next(ch, "a listener"); ev.Kind != EventResync {
			t.Fatalf("first event %+v, want a resync", ev)
		}
	}
	for deadline := time.Now().Add(5 * time.Second); !b.Listening(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("b not Listening while connected")
		}
	}

	// A kill of more nodes than one notification holds arrives whole.
	root := Session{ID: "u1", Kind: KindUser, Subject: "alice", State: StateActive}
	tree := []Session{root}
	for i := range 2*maxEventIDs + 7 {
		tree = append(tree, Session{ID: fmt.Sprintf("m%03d", i), Kind: KindMCP, Parent: "u1", Subject: "alice", State: StateActive})
	}
	putAll(t, a, tree...)
	ids, err := a.RevokeTree(ctx, "u1")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for len(got) < len(ids) {
		ev := next(atB, "b")
		if ev.Kind != EventRevoked {
			t.Fatalf("event %+v, want revoked ids", ev)
		}
		got = append(got, ev.IDs...)
	}
	if !slices.Equal(got, ids) {
		t.Errorf("b heard %d ids, want the %d revoked", len(got), len(ids))
	}
	kill := time.Unix(1_800_000_000, 0)
	if err := a.PutUserKill(ctx, UserKill{Issuer: "https://idp", Subject: "bob", Killed: kill}); err != nil {
		t.Fatal(err)
	}
	if ev := next(atB, "b"); ev.Kind != EventUserKill || ev.Issuer != "https://idp" || ev.Subject != "bob" || ev.Time != kill.Unix() {
		t.Errorf("user kill event %+v", ev)
	}
	exp := time.Unix(1_800_000_000, 5)
	if err := b.RevokeToken(ctx, "https://idp", "j1", exp); err != nil {
		t.Fatal(err)
	}
	if ev := next(atA, "a"); ev.Kind != EventTokenRevoked || ev.Issuer != "https://idp" || ev.JTI != "j1" || ev.Time != exp.UnixNano() {
		t.Errorf("token revocation event %+v", ev)
	}
	// Neither heard its own events.
	select {
	case ev := <-atA:
		t.Errorf("a heard %+v", ev)
	case ev := <-atB:
		t.Errorf("b heard %+v", ev)
	case <-time.After(200 * time.Millisecond):
	}
}

// TestSharedReplay: on PostgreSQL a proof one gateway accepted is a replay
// at another sharing the store, until it expires; on SQLite each gateway's
// cache is its own memory.
func TestSharedReplay(t *testing.T) {
	ctx := context.Background()
	clock := newTestClock()
	opts := testOptions(t, Options{Now: clock.Now})
	a := openTestIn(t, opts)
	ra := a.Replay(1000)
	exp := clockBase.Add(time.Hour)
	if seen, err := ra.Seen(ctx, "proof-1", exp); err != nil || seen {
		t.Fatalf("first sight at A: seen %v, %v", seen, err)
	}
	if seen, err := ra.Seen(ctx, "proof-1", exp); err != nil || !seen {
		t.Fatalf("replay at A: seen %v, %v", seen, err)
	}
	if pg == nil {
		if _, ok := ra.(*MemoryReplay); !ok {
			t.Errorf("SQLite store's replay cache is %T, want its memory", ra)
		}
		return
	}
	rb := openTestIn(t, opts).Replay(1000)
	if seen, err := rb.Seen(ctx, "proof-1", exp); err != nil || !seen {
		t.Errorf("A's proof at B: seen %v, %v; want a replay", seen, err)
	}
	if seen, err := rb.Seen(ctx, "proof-2", exp); err != nil || seen {
		t.Errorf("a new proof at B: seen %v, %v", seen, err)
	}
	if seen, err := ra.Seen(ctx, "proof-2", exp); err != nil || !seen {
		t.Errorf("B's proof at A: seen %v, %v; want a replay", seen, err)
	}
	// An expired row is taken over by a proof of the same key, which is no
	// replay (it cannot be accepted anyway: its own iat is checked first).
	short := clock.Now().Add(2 * time.Second)
	if seen, err := ra.Seen(ctx, "proof-3", short); err != nil || seen {
		t.Fatalf("proof-3 at A: seen %v, %v", seen, err)
	}
	clock.Add(3 * time.Second)
	if seen, err := rb.Seen(ctx, "proof-3", clock.Now().Add(time.Hour)); err != nil || seen {
		t.Errorf("expired proof-3 at B: seen %v, %v", seen, err)
	}
}

// TestAuditJournalPerGateway: gateways sharing a store each move their own
// audit journal. Their sequences overlap: B's records, left unmoved by a
// crash, are moved when B starts again even though A has moved records of
// the same sequence numbers, and none is moved twice.
func TestAuditJournalPerGateway(t *testing.T) {
	ctx := context.Background()
	opts := testOptions(t, Options{})
	open := func(dir string) *DB {
		t.Helper()
		s, err := Open(ctx, dir, opts)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	count := func(s *DB) int {
		t.Helper()
		recs, err := s.QueryAudit(ctx, AuditQuery{Limit: 100})
		if err != nil {
			t.Fatal(err)
		}
		return len(recs)
	}
	a := open(t.TempDir())
	for i := range 3 {
		if err := a.Append(ctx, AuditRecord{Time: clockBase, Method: "tools/call", Reason: fmt.Sprintf("a%d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	if n := count(a); n != 3 {
		t.Fatalf("%d records from A, want 3", n)
	}
	if pg == nil {
		return // one gateway per SQLite database
	}
	// B crashed with three journaled records not yet moved.
	dirB := t.TempDir()
	var journal []byte
	for i := range 3 {
		line, err := json.Marshal(journaled{Seq: uint64(i + 1), Rec: AuditRecord{Time: clockBase, Method: "tools/call", Reason: fmt.Sprintf("b%d", i)}})
		if err != nil {
			t.Fatal(err)
		}
		journal = append(append(journal, line...), '\n')
	}
	if err := os.WriteFile(filepath.Join(dirB, journalFile), journal, 0o600); err != nil {
		t.Fatal(err)
	}
	b := open(dirB)
	if n := count(b); n != 6 {
		t.Errorf("%d records after B's restart, want A's 3 and B's 3", n)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if n := count(open(dirB)); n != 6 {
		t.Errorf("%d records after B's second start, want 6 (none moved twice)", n)
	}
}
