package store

import (
	"context"
	"errors"
	"reflect"
	"slices"
	"testing"
	"time"
)

// putAll stores sessions in order or fails the test.
func putAll(t *testing.T, s *DB, sessions ...Session) {
	t.Helper()
	for _, sess := range sessions {
		if err := s.PutSession(context.Background(), sess); err != nil {
			t.Fatalf("PutSession(%s): %v", sess.ID, err)
		}
	}
}

func mustGet(t *testing.T, s *DB, id string) Session {
	t.Helper()
	sess, err := s.GetSession(context.Background(), id)
	if err != nil {
		t.Fatalf("GetSession(%s): %v", id, err)
	}
	return sess
}

func TestPutGetSession(t *testing.T) {
	ctx := context.Background()
	created := time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)
	tests := []struct {
		name string
		put  Session
		want Session // zero: expect err
		err  error
	}{
		{
			name: "root with all fields",
			put: Session{ID: "u1", Kind: KindUser, Subject: "alice", Agent: "", State: StateActive,
				Created: created, Updated: created.Add(time.Minute), Risk: 0.25, Counters: map[string]int64{"calls": 3, "denied": 1}},
			want: Session{ID: "u1", Kind: KindUser, Subject: "alice", State: StateActive,
				Created: created, Updated: created.Add(time.Minute), Risk: 0.25, Counters: map[string]int64{"calls": 3, "denied": 1}},
		},
		{
			name: "child, clock fills timestamps, nil counters",
			put:  Session{ID: "a1", Kind: KindAgent, Parent: "u1", Subject: "alice", Agent: "agent-7", State: StateActive},
			want: Session{ID: "a1", Kind: KindAgent, Parent: "u1", Subject: "alice", Agent: "agent-7", State: StateActive,
				Created: clockBase.Add(2 * time.Second), Updated: clockBase.Add(2 * time.Second)}, // reading 1 was Open's
		},
		{
			name: "empty counters stay empty",
			put:  Session{ID: "w1", Kind: KindWorkflow, Parent: "u1", Subject: "alice", State: StateClosed, Created: created, Updated: created, Counters: map[string]int64{}},
			want: Session{ID: "w1", Kind: KindWorkflow, Parent: "u1", Subject: "alice", State: StateClosed, Created: created, Updated: created, Counters: map[string]int64{}},
		},
		{name: "unknown parent", put: Session{ID: "m1", Kind: KindMCP, Parent: "nope", State: StateActive}, err: ErrNotFound},
		{name: "empty id", put: Session{Kind: KindUser, State: StateActive}, err: errAny},
		{name: "bad kind", put: Session{ID: "x", Kind: "robot", State: StateActive}, err: errAny},
		{name: "bad state", put: Session{ID: "x", Kind: KindUser, State: "paused"}, err: errAny},
		{name: "own parent", put: Session{ID: "x", Kind: KindUser, Parent: "x", State: StateActive}, err: errAny},
	}
	clock := newTestClock()
	s := openTest(t, Options{Now: clock.Now})
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := s.PutSession(ctx, tc.put)
			if tc.err != nil {
				if err == nil || (tc.err != errAny && !errors.Is(err, tc.err)) {
					t.Fatalf("PutSession = %v, want %v", err, tc.err)
				}
				if _, err := s.GetSession(ctx, tc.put.ID); !errors.Is(err, ErrNotFound) {
					t.Errorf("GetSession after failed put = %v, want ErrNotFound", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("PutSession: %v", err)
			}
			if got := mustGet(t, s, tc.put.ID); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("GetSession =\n %+v\nwant\n %+v", got, tc.want)
			}
		})
	}
	if _, err := s.GetSession(ctx, "missing"); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetSession(missing) = %v, want ErrNotFound", err)
	}
}

// errAny marks a test case that expects some error.
var errAny = errors.New("any error")

func TestPutSessionUpsert(t *testing.T) {
	ctx := context.Background()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	t1 := t0.Add(time.Hour)
	base := func() Session {
		return Session{ID: "a", Kind: KindAgent, Parent: "u", Subject: "alice", State: StateActive, Created: t0, Updated: t0}
	}
	tests := []struct {
		name   string
		before SessionState // "" for none
		update func(*Session)
		want   func(*Session) // applied to base() for the expected stored value
		err    error
	}{
		{
			name: "mutable fields change, created kept",
			update: func(s *Session) {
				s.Agent, s.Risk, s.Counters, s.State, s.Created, s.Updated = "agent-2", 0.9, map[string]int64{"n": 1}, StateClosed, t1, t1
			},
			want: func(s *Session) {
				s.Agent, s.Risk, s.Counters, s.State, s.Updated = "agent-2", 0.9, map[string]int64{"n": 1}, StateClosed, t1
			},
		},
		{
			name:   "revoked stays revoked",
			before: StateRevoked,
			update: func(s *Session) { s.State, s.Risk, s.Updated = StateActive, 0.5, t1 },
			want:   func(s *Session) { s.State, s.Risk, s.Updated = StateRevoked, 0.5, t1 },
		},
		{name: "subject is bound", update: func(s *Session) { s.Subject = "mallory" }, err: ErrConflict},
		{name: "kind is bound", update: func(s *Session) { s.Kind = KindMCP }, err: ErrConflict},
		{name: "parent is bound", update: func(s *Session) { s.Parent = "u2" }, err: ErrConflict},
		{name: "cannot become a root", update: func(s *Session) { s.Parent = "" }, err: ErrConflict},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := openTest(t, Options{})
			putAll(t, s,
				Session{ID: "u", Kind: KindUser, Subject: "alice", State: StateActive},
				Session{ID: "u2", Kind: KindUser, Subject: "alice", State: StateActive},
				base())
			if tc.before != "" {
				if err := s.SetSessionState(ctx, "a", tc.before); err != nil {
					t.Fatal(err)
				}
			}
			stored := mustGet(t, s, "a")
			upd := base()
			tc.update(&upd)
			err := s.PutSession(ctx, upd)
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("PutSession = %v, want %v", err, tc.err)
				}
				if got := mustGet(t, s, "a"); !reflect.DeepEqual(got, stored) {
					t.Errorf("session changed by a refused update:\n %+v\nwas\n %+v", got, stored)
				}
				return
			}
			if err != nil {
				t.Fatalf("PutSession: %v", err)
			}
			want := base()
			tc.want(&want)
			if got := mustGet(t, s, "a"); !reflect.DeepEqual(got, want) {
				t.Errorf("GetSession =\n %+v\nwant\n %+v", got, want)
			}
		})
	}
}

func TestSetSessionState(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name  string
		id    string
		start SessionState
		set   SessionState
		want  SessionState
		err   error
	}{
		{name: "close", id: "u", start: StateActive, set: StateClosed, want: StateClosed},
		{name: "reopen closed", id: "u", start: StateClosed, set: StateActive, want: StateActive},
		{name: "revoke", id: "u", start: StateActive, set: StateRevoked, want: StateRevoked},
		{name: "revoke revoked", id: "u", start: StateRevoked, set: StateRevoked, want: StateRevoked},
		{name: "revoked is terminal", id: "u", start: StateRevoked, set: StateActive, want: StateRevoked, err: ErrConflict},
		{name: "unknown id", id: "nope", start: StateActive, set: StateClosed, err: ErrNotFound},
		{name: "unknown state", id: "u", start: StateActive, set: "paused", want: StateActive, err: errAny},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clock := newTestClock()
			s := openTest(t, Options{Now: clock.Now})
			putAll(t, s, Session{ID: "u", Kind: KindUser, Subject: "alice", State: tc.start})
			before := mustGet(t, s, "u")
			err := s.SetSessionState(ctx, tc.id, tc.set)
			if tc.err != nil {
				if err == nil || (tc.err != errAny && !errors.Is(err, tc.err)) {
					t.Fatalf("SetSessionState = %v, want %v", err, tc.err)
				}
			} else if err != nil {
				t.Fatalf("SetSessionState: %v", err)
			}
			if tc.id != "u" {
				return
			}
			got := mustGet(t, s, "u")
			if got.State != tc.want {
				t.Errorf("state = %s, want %s", got.State, tc.want)
			}
			if tc.err == nil && !got.Updated.After(before.Updated) {
				t.Errorf("Updated = %v, not after %v", got.Updated, before.Updated)
			}
		})
	}
}

// sessionTree is user u1 with agent a1 (MCP sessions m1, m2) and workflow w1,
// plus a separate user u2 with agent a2.
var sessionTree = []Session{
	{ID: "u1", Kind: KindUser, Subject: "alice", State: StateActive},
	{ID: "a1", Kind: KindAgent, Parent: "u1", Subject: "alice", Agent: "bot", State: StateActive},
	{ID: "m1", Kind: KindMCP, Parent: "a1", Subject: "alice", Agent: "bot", State: StateActive},
	{ID: "m2", Kind: KindMCP, Parent: "a1", Subject: "alice", Agent: "bot", State: StateClosed},
	{ID: "w1", Kind: KindWorkflow, Parent: "u1", Subject: "alice", State: StateActive},
	{ID: "a3", Kind: KindAgent, Parent: "u1", Subject: "alice", Agent: "other", State: StateActive},
	{ID: "u2", Kind: KindUser, Subject: "bob", State: StateActive},
	{ID: "a2", Kind: KindAgent, Parent: "u2", Subject: "bob", Agent: "bot", State: StateActive},
}

func TestRevokeTree(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name        string
		root        string
		wantIDs     []string
		wantRevoked []string // every session revoked afterwards
		err         error
	}{
		{name: "three levels", root: "u1", wantIDs: []string{"u1", "a1", "a3", "m1", "m2", "w1"}, wantRevoked: []string{"u1", "a1", "a3", "m1", "m2", "w1"}},
		{name: "middle node spares parent and sibling", root: "a1", wantIDs: []string{"a1", "m1", "m2"}, wantRevoked: []string{"a1", "m1", "m2"}},
		{name: "leaf", root: "m1", wantIDs: []string{"m1"}, wantRevoked: []string{"m1"}},
		{name: "unknown", root: "nope", err: ErrNotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := openTest(t, Options{})
			putAll(t, s, sessionTree...)
			ids, err := s.RevokeTree(ctx, tc.root)
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("RevokeTree = %v, want %v", err, tc.err)
				}
			} else if err != nil {
				t.Fatalf("RevokeTree: %v", err)
			}
			if !reflect.DeepEqual(ids, tc.wantIDs) {
				t.Errorf("RevokeTree ids = %v, want %v", ids, tc.wantIDs)
			}
			revoked := map[string]bool{}
			for _, id := range tc.wantRevoked {
				revoked[id] = true
			}
			for _, sess := range sessionTree {
				got := mustGet(t, s, sess.ID)
				want := sess.State
				if revoked[sess.ID] {
					want = StateRevoked
				}
				if got.State != want {
					t.Errorf("%s state = %s, want %s", sess.ID, got.State, want)
				}
			}
		})
	}
}

func TestRevokedParentRevokesNewChildren(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{})
	putAll(t, s, sessionTree[:2]...)
	if _, err := s.RevokeTree(ctx, "u1"); err != nil {
		t.Fatal(err)
	}
	// An MCP session created under the revoked agent session after the
	// kill-switch must not come up active.
	putAll(t, s, Session{ID: "m9", Kind: KindMCP, Parent: "a1", Subject: "alice", State: StateActive})
	if got := mustGet(t, s, "m9"); got.State != StateRevoked {
		t.Errorf("child of revoked parent has state %s, want revoked", got.State)
	}
}

func TestListSessions(t *testing.T) {
	ctx := context.Background()
	clock := newTestClock()
	s := openTest(t, Options{Now: clock.Now})
	if got, err := s.ListSessions(ctx, 10); err != nil || len(got) != 0 {
		t.Fatalf("ListSessions on empty store = %v, %v; want none", got, err)
	}
	putAll(t, s, sessionTree...) // Created increases in this order
	tests := []struct {
		limit int
		want  []string
	}{
		{limit: 3, want: []string{"a2", "u2", "a3"}},
		{limit: 0, want: []string{"a2", "u2", "a3", "w1", "m2", "m1", "a1", "u1"}},
		{limit: 100, want: []string{"a2", "u2", "a3", "w1", "m2", "m1", "a1", "u1"}},
	}
	for _, tc := range tests {
		got, err := s.ListSessions(ctx, tc.limit)
		if err != nil {
			t.Fatalf("ListSessions(%d): %v", tc.limit, err)
		}
		var ids []string
		for _, sess := range got {
			ids = append(ids, sess.ID)
		}
		if !reflect.DeepEqual(ids, tc.want) {
			t.Errorf("ListSessions(%d) = %v, want %v", tc.limit, ids, tc.want)
		}
	}
}

// TestUserSessions: a user's graphs are the user sessions of that issuer and
// subject with everything under them, newest first, bounded; another
// issuer's user of the same name is someone else.
func TestUserSessions(t *testing.T) {
	ctx := context.Background()
	clock := newTestClock()
	s := openTest(t, Options{Now: clock.Now})
	tree := slices.Clone(sessionTree)
	for i := range tree {
		tree[i].Issuer = "https://idp"
	}
	putAll(t, s, tree...)
	putAll(t, s, Session{ID: "u3", Kind: KindUser, Subject: "alice", Issuer: "https://other", State: StateActive},
		Session{ID: "a4", Kind: KindAgent, Parent: "u3", Subject: "alice", Issuer: "https://other", State: StateActive})
	ids := func(issuer, subject string, limit int) []string {
		t.Helper()
		got, err := s.UserSessions(ctx, issuer, subject, limit)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, n := range got {
			if n.Issuer != issuer || n.Subject != subject {
				t.Errorf("node %+v", n)
			}
			out = append(out, n.ID)
		}
		return out
	}
	if got, want := ids("https://idp", "alice", 100), []string{"a3", "w1", "m2", "m1", "a1", "u1"}; !slices.Equal(got, want) {
		t.Errorf("alice of idp: %v, want %v", got, want)
	}
	if got := ids("https://idp", "alice", 2); !slices.Equal(got, []string{"a3", "w1"}) {
		t.Errorf("limit 2: %v", got)
	}
	if got := ids("https://other", "alice", 100); !slices.Equal(got, []string{"a4", "u3"}) {
		t.Errorf("alice of other: %v", got)
	}
	if got := ids("https://idp", "carol", 100); len(got) != 0 {
		t.Errorf("carol: %v", got)
	}
}

func TestMCPClient(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{})
	if _, err := s.GetMCPClient(ctx, "m1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("GetMCPClient of an unknown session: %v, want ErrNotFound", err)
	}
	c := MCPClient{Session: "m1", Initialize: []byte(`{"protocolVersion":"2025-11-25","clientInfo":{"name":"c","version":"1"}}`)}
	if err := s.PutMCPClient(ctx, c); !errors.Is(err, ErrNotFound) {
		t.Fatalf("PutMCPClient before its session exists: %v, want ErrNotFound", err)
	}
	putAll(t, s,
		Session{ID: "u1", Kind: KindUser, Subject: "alice", State: StateActive},
		Session{ID: "a1", Kind: KindAgent, Parent: "u1", Subject: "alice", State: StateActive},
		Session{ID: "m1", Kind: KindMCP, Parent: "a1", Subject: "alice", State: StateActive})
	if err := s.PutMCPClient(ctx, MCPClient{Session: "m1", Initialize: []byte(`{`)}); err == nil {
		t.Error("PutMCPClient accepted initialize params that are not JSON")
	}
	if err := s.PutMCPClient(ctx, c); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetMCPClient(ctx, "m1")
	if err != nil || string(got.Initialize) != string(c.Initialize) || got.LogLevel != "" {
		t.Fatalf("GetMCPClient = %+v, %v; want %s", got, err, c.Initialize)
	}
	c.LogLevel = "debug"
	if err := s.PutMCPClient(ctx, c); err != nil {
		t.Fatal(err)
	}
	if got, err := s.GetMCPClient(ctx, "m1"); err != nil || got.LogLevel != "debug" {
		t.Errorf("after setting the level: %+v, %v", got, err)
	}
	if err := s.ForgetMCPClient(ctx, "m1"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetMCPClient(ctx, "m1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetMCPClient after ForgetMCPClient: %v, want ErrNotFound", err)
	}
}
