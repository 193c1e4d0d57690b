package consent

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/sag-gateway/sag/identity"
	"github.com/sag-gateway/sag/internal/testutil"
	"github.com/sag-gateway/sag/schemas"
	"github.com/sag-gateway/sag/store"
)

const iss = "https://gw.example"

var (
	alice = identity.Principal{Issuer: iss, User: "alice"}
	bob   = identity.Principal{Issuer: iss, User: "bob"}
)

func openStore(t *testing.T, dir string) *store.DB {
	t.Helper()
	st, err := store.Open(context.Background(), dir, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// approvesUsers reads approvers as a JSON list of user names (the server
// passes the policy's principal matchers).
func approvesUsers(raw json.RawMessage, p identity.Principal) bool {
	var users []string
	return json.Unmarshal(raw, &users) == nil && slices.Contains(users, p.User)
}

func newRequest() Request {
	return Request{USID: "u1", ASID: "a1", MSID: "m1", WSID: "w1", Issuer: iss, User: "alice", Agent: "spiffe://example.org/agent",
		Upstream: "files", Tool: "delete_file", Args: json.RawMessage(`{"path": "/srv/a"}`), RuleID: "deletes", Reason: "the tool is annotated destructive"}
}

func TestApproveWaitUse(t *testing.T) {
	ctx := context.Background()
	e := NewEngine(openStore(t, t.TempDir()), nil, approvesUsers)
	r, err := e.Create(ctx, newRequest(), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if r.State != Pending || r.ArgsHash != HashArgs(json.RawMessage(`{"path":"/srv/a"}`)) {
		t.Fatalf("created %+v", r)
	}
	waited := make(chan Request)
	go func() {
		w, err := e.Wait(ctx, r.ID)
		if err != nil {
			t.Error(err)
		}
		waited <- w
	}()
	if _, err := e.Decide(ctx, r.ID, Decision{Approved: true, By: alice, Channel: "ag-ui"}); err != nil {
		t.Fatal(err)
	}
	select {
	case w := <-waited:
		if w.State != Approved || w.DecidedBy != "alice" || w.Channel != "ag-ui" || w.DecidedAt.IsZero() {
			t.Errorf("the waiter saw %+v", w)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the waiter was not woken")
	}
	// Bound to the agent session and the arguments, and used once.
	if _, err := e.Use(ctx, r.ID, "a2", r.ArgsHash); !errors.Is(err, ErrNotAllowed) {
		t.Errorf("use from another agent session: %v", err)
	}
	if _, err := e.Use(ctx, r.ID, "a1", HashArgs(json.RawMessage(`{"path":"/etc"}`))); !errors.Is(err, ErrNotAllowed) {
		t.Errorf("use with other arguments: %v", err)
	}
	if _, err := e.Use(ctx, r.ID, "a1", r.ArgsHash); err != nil {
		t.Errorf("use: %v", err)
	}
	if _, err := e.Use(ctx, r.ID, "a1", r.ArgsHash); !errors.Is(err, ErrUsed) {
		t.Errorf("second use: %v", err)
	}
}

// TestWhoMayDecide: the request's user (or its named approvers), never an
// agent or a token with an actor chain, never another user.
func TestWhoMayDecide(t *testing.T) {
	ctx := context.Background()
	e := NewEngine(openStore(t, t.TempDir()), nil, approvesUsers)
	r, _ := e.Create(ctx, newRequest(), time.Minute)
	for name, p := range map[string]identity.Principal{
		"another user":          bob,
		"the user's agent":      {Issuer: iss, User: "alice", Agent: "spiffe://example.org/agent"},
		"a token with an actor": {Issuer: iss, User: "alice", Act: &identity.Actor{Sub: "spiffe://example.org/agent"}},
		"another issuer":        {Issuer: "https://evil.example", User: "alice"},
	} {
		if _, err := e.Decide(ctx, r.ID, Decision{Approved: true, By: p}); !errors.Is(err, ErrNotAllowed) {
			t.Errorf("%s decided: %v", name, err)
		}
	}
	named := newRequest()
	named.Approvers = json.RawMessage(`["bob"]`)
	r2, _ := e.Create(ctx, named, time.Minute)
	if _, err := e.Decide(ctx, r2.ID, Decision{Approved: true, By: alice}); !errors.Is(err, ErrNotAllowed) {
		t.Errorf("alice decided a request only bob may decide: %v", err)
	}
	if got, err := e.Decide(ctx, r2.ID, Decision{Approved: false, By: bob}); err != nil || got.State != Denied {
		t.Errorf("bob's denial: %+v %v", got, err)
	}
	if _, err := e.Decide(ctx, "c_nosuch", Decision{Approved: true, By: alice}); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown request: %v", err)
	}
}

// TestDecisionsIdempotentAndRacing: a repeated identical decision is
// harmless, a different one refused; of many racing decisions exactly one
// wins.
func TestDecisionsIdempotentAndRacing(t *testing.T) {
	ctx := context.Background()
	e := NewEngine(openStore(t, t.TempDir()), nil, approvesUsers)
	r, _ := e.Create(ctx, newRequest(), time.Minute)
	if _, err := e.Decide(ctx, r.ID, Decision{Approved: false, By: alice}); err != nil {
		t.Fatal(err)
	}
	if got, err := e.Decide(ctx, r.ID, Decision{Approved: false, By: alice}); err != nil || got.State != Denied {
		t.Errorf("the same denial again: %+v %v", got, err)
	}
	if _, err := e.Decide(ctx, r.ID, Decision{Approved: true, By: alice}); !errors.Is(err, ErrDecided) {
		t.Errorf("an approval after the denial: %v", err)
	}

	r, _ = e.Create(ctx, newRequest(), time.Minute)
	var wg sync.WaitGroup
	var mu sync.Mutex
	won := map[State]int{}
	for i := range 20 {
		wg.Go(func() {
			got, err := e.Decide(ctx, r.ID, Decision{Approved: i%2 == 0, By: alice})
			mu.Lock()
			defer mu.Unlock()
			if err == nil {
				won[got.State]++
			} else if !errors.Is(err, ErrDecided) {
				t.Errorf("racing decision: %v", err)
			}
		})
	}
	wg.Wait()
	final, _ := e.Get(ctx, r.ID)
	if len(won) != 1 || won[final.State] == 0 {
		t.Errorf("racing decisions: %v succeeded, the request is %s", won, final.State)
	}
}

// TestExpiryDenies: past its expiry a request is expired, not decided.
func TestExpiryDenies(t *testing.T) {
	ctx := context.Background()
	clock := testutil.NewClock(time.Now(), 0)
	e := NewEngine(openStore(t, t.TempDir()), clock.Now, approvesUsers)
	r, _ := e.Create(ctx, newRequest(), time.Minute)
	other, _ := e.Create(ctx, newRequest(), time.Hour)
	clock.Add(2 * time.Minute)
	if got, err := e.Decide(ctx, r.ID, Decision{Approved: true, By: alice}); err != nil || got.State != Expired {
		t.Errorf("a late approval: %+v %v", got, err)
	}
	r3, _ := e.Create(ctx, newRequest(), time.Minute)
	clock.Add(2 * time.Minute)
	if n, err := e.ExpireDue(ctx); err != nil || n != 1 {
		t.Errorf("expired %d (%v), want 1", n, err)
	}
	if got, _ := e.Get(ctx, r3.ID); got.State != Expired {
		t.Errorf("swept request: %s", got.State)
	}
	if got, _ := e.Get(ctx, other.ID); got.State != Pending {
		t.Errorf("a request with time left: %s", got.State)
	}
}

// TestKillAndCallerCancel: a kill of a node on the path cancels the
// request; so does the waiting caller giving up.
func TestKillAndCallerCancel(t *testing.T) {
	ctx := context.Background()
	e := NewEngine(openStore(t, t.TempDir()), nil, approvesUsers)
	r, _ := e.Create(ctx, newRequest(), time.Minute)
	unrelated := newRequest()
	unrelated.USID, unrelated.ASID, unrelated.MSID, unrelated.WSID = "u2", "a2", "m2", ""
	u, _ := e.Create(ctx, unrelated, time.Minute)
	woken := make(chan State)
	go func() {
		w, _ := e.Wait(ctx, r.ID)
		woken <- w.State
	}()
	if n, err := e.CancelNodes(ctx, map[string]bool{"w1": true}); err != nil || n != 1 {
		t.Fatalf("cancelled %d (%v), want 1", n, err)
	}
	if s := <-woken; s != Cancelled {
		t.Errorf("the waiter saw %s", s)
	}
	if got, _ := e.Get(ctx, u.ID); got.State != Pending {
		t.Errorf("an unrelated request: %s", got.State)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if got, _ := e.Wait(cctx, u.ID); got.State != Cancelled {
		t.Errorf("a caller that gave up: %s", got.State)
	}
}

// TestEdits: edits only where the rule allows them; they replace the
// arguments wholly.
func TestEdits(t *testing.T) {
	ctx := context.Background()
	e := NewEngine(openStore(t, t.TempDir()), nil, approvesUsers)
	edit := json.RawMessage(`{"path":"/srv/tmp/a"}`)
	r, _ := e.Create(ctx, newRequest(), time.Minute)
	if _, err := e.Decide(ctx, r.ID, Decision{Approved: true, EditedArgs: edit, By: alice}); !errors.Is(err, ErrNoEdits) {
		t.Errorf("an edit where none is allowed: %v", err)
	}
	req := newRequest()
	req.AllowEdits = true
	r, _ = e.Create(ctx, req, time.Minute)
	got, err := e.Decide(ctx, r.ID, Decision{Approved: true, EditedArgs: edit, By: alice})
	if err != nil || got.State != ApprovedWithEdits || string(got.EditedArgs) != string(edit) {
		t.Errorf("approve with edits: %+v %v", got, err)
	}
}

// TestRestart: pending requests and decided-but-unused ones survive a
// restart of the engine and its store.
func TestRestart(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	st := openStore(t, dir)
	e := NewEngine(st, nil, approvesUsers)
	pending, _ := e.Create(ctx, newRequest(), time.Minute)
	decided, _ := e.Create(ctx, newRequest(), time.Minute)
	if _, err := e.Decide(ctx, decided.ID, Decision{Approved: true, By: alice}); err != nil {
		t.Fatal(err)
	}
	st.Close()

	e = NewEngine(openStore(t, dir), nil, approvesUsers)
	if got, err := e.Get(ctx, pending.ID); err != nil || got.State != Pending || got.Tool != "delete_file" {
		t.Fatalf("pending after a restart: %+v %v", got, err)
	}
	go func() {
		time.Sleep(50 * time.Millisecond)
		e.Decide(ctx, pending.ID, Decision{Approved: false, By: alice})
	}()
	if got, _ := e.Wait(ctx, pending.ID); got.State != Denied {
		t.Errorf("a request from before the restart, decided after it: %s", got.State)
	}
	if _, err := e.Use(ctx, decided.ID, "a1", decided.ArgsHash); err != nil {
		t.Errorf("a decision from before the restart: %v", err)
	}
}

// TestDecline: the caller's client declining the page denies a pending
// request (no approver needed: a decline can only deny); it changes no
// decision already made; the response schema carries the tool's schema for
// edits when edits are allowed.
func TestDecline(t *testing.T) {
	ctx := context.Background()
	e := NewEngine(openStore(t, t.TempDir()), nil, approvesUsers)
	r, _ := e.Create(ctx, newRequest(), time.Minute)
	got, err := e.Decline(ctx, r.ID, "mcp-url-elicitation")
	if err != nil || got.State != Denied || got.Channel != "mcp-url-elicitation" || got.DecidedBy == "" {
		t.Fatalf("decline: %+v %v", got, err)
	}
	if stored, _ := e.Get(ctx, r.ID); stored.State != Denied {
		t.Errorf("stored %s", stored.State)
	}
	approved, _ := e.Create(ctx, newRequest(), time.Minute)
	if _, err := e.Decide(ctx, approved.ID, Decision{Approved: true, By: alice, Channel: "test"}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Decline(ctx, approved.ID, "mcp-url-elicitation"); !errors.Is(err, ErrDecided) {
		t.Errorf("decline after an approval: %v", err)
	}
	if stored, _ := e.Get(ctx, approved.ID); stored.State != Approved {
		t.Errorf("the approval became %s", stored.State)
	}
	if _, err := e.Decline(ctx, "c_unknown", "x"); !errors.Is(err, ErrNotFound) {
		t.Errorf("decline of an unknown request: %v", err)
	}

	// With edits allowed, the response schema holds the tool's input
	// schema for editedArgs, its references resolving as in the tool's.
	req := newRequest()
	req.AllowEdits = true
	req.ArgsSchema = json.RawMessage(`{"$schema":"http://json-schema.org/draft-07/schema#","type":"object","properties":{"path":{"$ref":"#/$defs/path"}},"$defs":{"path":{"type":"string","maxLength":8}}}`)
	withSchema, err := e.Create(ctx, req, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	rs, err := schemas.Compile(withSchema.ResponseSchema)
	if err != nil {
		t.Fatalf("response schema %s: %v", withSchema.ResponseSchema, err)
	}
	for payload, valid := range map[string]bool{
		`{"approved":true,"editedArgs":{"path":"/srv/b"}}`:        true,
		`{"approved":true,"editedArgs":{"path":"/srv/too/long"}}`: false,
		`{"approved":true,"editedArgs":{"path":5}}`:               false,
		`{"approved":false}`:                                      true,
		`{"approved":true,"editedArgs":{"path":"/a"},"other":1}`:  false,
	} {
		if err := rs.ValidateJSON([]byte(payload)); (err == nil) != valid {
			t.Errorf("%s: %v, want valid=%v", payload, err, valid)
		}
	}
}
