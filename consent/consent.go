package consent

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/sag-gateway/sag/identity"
	"github.com/sag-gateway/sag/store"
)

// State is where a request is in its life: pending, then exactly one of
// the others, for good.
type State string

// States.
const (
	Pending           State = "pending"
	Approved          State = "approved"
	ApprovedWithEdits State = "approved_with_edits"
	Denied            State = "denied"
	Expired           State = "expired"
	Cancelled         State = "cancelled"
)

// Request is one call waiting for its user's decision.
type Request struct {
	ID string `json:"id"`
	// The call's place in the session graph.
	USID string `json:"usid"`
	WSID string `json:"wsid,omitempty"`
	ASID string `json:"asid"`
	MSID string `json:"msid"`
	// Who the call is for (the session's user) and who makes it.
	Issuer string `json:"issuer"`
	User   string `json:"user"`
	Agent  string `json:"agent,omitempty"`
	Act    string `json:"act,omitempty"`
	// What it does: the upstream, the tool as the upstream names it, and
	// the arguments as the approver may see them (DLP applied).
	Upstream string          `json:"upstream"`
	Tool     string          `json:"tool"`
	Args     json.RawMessage `json:"args,omitempty"`
	// ArgsHash binds a decision to exactly these arguments.
	ArgsHash string `json:"args_hash"`
	// Why: the deciding rule and the reason consent is needed.
	RuleID string `json:"rule_id,omitempty"`
	Reason string `json:"reason"`
	// ResponseSchema is what a decision looks like ({approved, editedArgs?}).
	ResponseSchema json.RawMessage `json:"response_schema"`
	// AllowEdits lets an approver replace the arguments; ArgsSchema, when
	// set, is the JSON Schema edited arguments must meet (the response
	// schema carries it for the approver's UI; the call checks edits again).
	AllowEdits bool            `json:"allow_edits,omitempty"`
	ArgsSchema json.RawMessage `json:"args_schema,omitempty"`
	// Later marks a call answered at once and retried with the request's
	// id (multi-round-trip MCP, A2A): no call waits for the decision.
	Later bool `json:"later,omitempty"`
	// Risk is the session's risk score when the call arrived.
	Risk float64 `json:"risk,omitempty"`
	// Approvers say who may decide (the rule's principal matchers, as
	// the engine's Approves reads them); empty means the request's own
	// user.
	Approvers json.RawMessage `json:"approvers,omitempty"`

	Created time.Time `json:"created"`
	Expires time.Time `json:"expires"`
	State   State     `json:"state"`
	// The decision: who, when, through which channel, and edits.
	DecidedBy  string          `json:"decided_by,omitempty"`
	DecidedAt  time.Time       `json:"decided_at,omitzero"`
	Channel    string          `json:"channel,omitempty"`
	EditedArgs json.RawMessage `json:"edited_args,omitempty"`
}

// responseSchema is the answer every request expects.
var responseSchema = json.RawMessage(`{"type":"object","required":["approved"],"properties":{"approved":{"type":"boolean"},"editedArgs":{"type":"object"}},"additionalProperties":false}`)

// Decision is a user's answer to a request.
type Decision struct {
	Approved bool
	// EditedArgs, when set on an approval, replace the arguments wholly.
	EditedArgs json.RawMessage
	// By is who decides; Channel where ("ag-ui", "console", …).
	By      identity.Principal
	Channel string
}

// Store keeps requests and decisions. *store.DB implements it.
type Store interface {
	PutConsent(ctx context.Context, r store.ConsentRecord) error
	GetConsent(ctx context.Context, id string) (store.ConsentRecord, error)
	PendingConsents(ctx context.Context) ([]store.ConsentRecord, error)
	SettleConsent(ctx context.Context, id, state string, request []byte) error
	UseConsent(ctx context.Context, id string) error
}

var _ Store = (*store.DB)(nil)

// Errors of Decide and Use, safe to show.
var (
	ErrNotFound   = errors.New("no such consent request")
	ErrNotAllowed = errors.New("not allowed to decide this request")
	ErrDecided    = errors.New("the request was already decided otherwise")
	ErrUsed       = errors.New("the decision was already used")
	ErrNoEdits    = errors.New("this request does not allow edits")
)

// Engine creates requests, waits for their decisions and records them. A
// request and its decision are committed to the store before anyone is told,
// so a restart loses neither. Safe for concurrent use.
type Engine struct {
	store    Store
	now      func() time.Time
	approves func(approvers json.RawMessage, p identity.Principal) bool

	mu      sync.Mutex
	waiters map[string]chan struct{} // closed when the request leaves pending
	changed chan struct{}            // closed (and replaced) on every change
}

// NewEngine returns an engine over st. now nil means time.Now. approves
// says whether a principal is one of a request's named approvers (the
// policy's matchers); nil refuses everyone but the request's own user.
func NewEngine(st Store, now func() time.Time, approves func(approvers json.RawMessage, p identity.Principal) bool) *Engine {
	if now == nil {
		now = time.Now
	}
	if approves == nil {
		approves = func(json.RawMessage, identity.Principal) bool { return false }
	}
	return &Engine{store: st, now: now, approves: approves, waiters: map[string]chan struct{}{}, changed: make(chan struct{})}
}

// HashArgs is the hash a decision is bound to.
func HashArgs(args json.RawMessage) string {
	var canon bytes.Buffer
	if len(args) > 0 && json.Compact(&canon, args) != nil {
		canon.Reset()
		canon.Write(args)
	}
	sum := sha256.Sum256(canon.Bytes())
	return hex.EncodeToString(sum[:])
}

// argsSchemaID names a tool's input schema inside a response schema.
const argsSchemaID = "urn:sag:consent:edited-arguments"

// embeddable returns a tool's input schema ready to sit inside another
// schema: a resource of its own (an $id, unless it has one), so that its
// references ("#/$defs/…") still resolve against it, and without $schema
// (the response schema's dialect applies). A schema that is not an object
// is returned as is.
func embeddable(schema json.RawMessage) json.RawMessage {
	var m map[string]json.RawMessage
	if json.Unmarshal(schema, &m) != nil || m == nil {
		return schema
	}
	delete(m, "$schema")
	if _, ok := m["$id"]; !ok {
		m["$id"] = json.RawMessage(`"` + argsSchemaID + `"`)
	}
	out, err := json.Marshal(m)
	if err != nil {
		return schema
	}
	return out
}

// Create stores a new pending request, living ttl, and returns it.
func (e *Engine) Create(ctx context.Context, r Request, ttl time.Duration) (Request, error) {
	r.ID = "c_" + rand.Text()
	r.Created = e.now().UTC()
	r.Expires = r.Created.Add(ttl)
	r.State = Pending
	r.ResponseSchema = responseSchema
	if r.AllowEdits && len(r.ArgsSchema) > 0 {
		r.ResponseSchema = json.RawMessage(`{"type":"object","required":["approved"],"properties":{"approved":{"type":"boolean"},"editedArgs":` +
			string(embeddable(r.ArgsSchema)) + `},"additionalProperties":false}`)
	}
	if r.ArgsHash == "" {
		r.ArgsHash = HashArgs(r.Args)
	}
	b, err := json.Marshal(r)
	if err != nil {
		return r, err
	}
	e.mu.Lock()
	e.waiters[r.ID] = make(chan struct{})
	e.mu.Unlock()
	if err := e.store.PutConsent(ctx, store.ConsentRecord{ID: r.ID, ASID: r.ASID, Nodes: nodes(r), State: string(Pending), Expires: r.Expires, Request: b}); err != nil {
		e.release(r.ID)
		return r, fmt.Errorf("consent: %w", err)
	}
	e.notify()
	return r, nil
}

// Changed returns a channel closed at the next change: a request created,
// decided, expired or cancelled. Listeners (consent streams) read the
// pending requests again then.
func (e *Engine) Changed() <-chan struct{} {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.changed
}

func (e *Engine) notify() {
	e.mu.Lock()
	close(e.changed)
	e.changed = make(chan struct{})
	e.mu.Unlock()
}

func nodes(r Request) []string {
	out := []string{r.USID, r.ASID, r.MSID}
	if r.WSID != "" {
		out = append(out, r.WSID)
	}
	return out
}

// Get returns a request as stored.
func (e *Engine) Get(ctx context.Context, id string) (Request, error) {
	rec, err := e.store.GetConsent(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return Request{}, ErrNotFound
	}
	if err != nil {
		return Request{}, err
	}
	return decode(rec)
}

// decode reads a stored request; its state is the store's.
func decode(rec store.ConsentRecord) (Request, error) {
	var r Request
	if err := json.Unmarshal(rec.Request, &r); err != nil {
		return Request{}, fmt.Errorf("consent: stored request %s: %w", rec.ID, err)
	}
	r.State = State(rec.State)
	return r, nil
}

// Pending returns every pending request, oldest first.
func (e *Engine) Pending(ctx context.Context) ([]Request, error) {
	recs, err := e.store.PendingConsents(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]Request, 0, len(recs))
	for _, rec := range recs {
		r, err := decode(rec)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b Request) int { return a.Created.Compare(b.Created) })
	return out, nil
}

// Wait returns once the request is decided, expired or cancelled. If ctx
// ends first (the caller gave up), the request is cancelled.
func (e *Engine) Wait(ctx context.Context, id string) (Request, error) {
	// Register first, then read: a decision settled before the read is
	// seen by it, one settled after closes ch. (A request created before a
	// restart has no waiter channel yet.)
	e.mu.Lock()
	ch, ok := e.waiters[id]
	if !ok {
		ch = make(chan struct{})
		e.waiters[id] = ch
	}
	e.mu.Unlock()
	r, err := e.Get(context.WithoutCancel(ctx), id)
	if err != nil || r.State != Pending {
		e.release(id)
		return r, err
	}
	timer := time.NewTimer(r.Expires.Sub(e.now()))
	defer timer.Stop()
	select {
	case <-ch:
	case <-timer.C:
		e.settle(context.WithoutCancel(ctx), r, Expired)
	case <-ctx.Done():
		e.settle(context.WithoutCancel(ctx), r, Cancelled)
	}
	return e.Get(context.WithoutCancel(ctx), id)
}

// Decide records a user's decision. Only a user principal may decide (no
// agent identity, no actor chain: an agent never approves its own call),
// and only one the request names as approver (default: its own user). A
// repeated identical decision is harmless; a different one after the first
// is refused with ErrDecided. A request past its expiry is expired, not
// decided.
func (e *Engine) Decide(ctx context.Context, id string, d Decision) (Request, error) {
	r, err := e.Get(ctx, id)
	if err != nil {
		return r, err
	}
	if !e.MayDecide(r, d.By) {
		return r, ErrNotAllowed
	}
	state := Denied
	if d.Approved {
		state = Approved
		if len(d.EditedArgs) > 0 {
			if !r.AllowEdits {
				return r, ErrNoEdits
			}
			state = ApprovedWithEdits
		}
	}
	if r.State != Pending {
		if r.State == state && bytes.Equal(r.EditedArgs, d.EditedArgs) && r.DecidedBy == d.By.User {
			return r, nil // the same decision again
		}
		return r, ErrDecided
	}
	if !e.now().Before(r.Expires) {
		e.settle(ctx, r, Expired)
		return e.Get(ctx, id)
	}
	r.DecidedBy, r.DecidedAt, r.Channel = d.By.User, e.now().UTC(), d.Channel
	if state == ApprovedWithEdits {
		r.EditedArgs = d.EditedArgs
	}
	if err := e.settle(ctx, r, state); err != nil {
		if errors.Is(err, store.ErrConflict) { // lost a race: report what won
			won, gerr := e.Get(ctx, id)
			if gerr == nil && won.State == state && bytes.Equal(won.EditedArgs, r.EditedArgs) && won.DecidedBy == r.DecidedBy {
				return won, nil
			}
			return won, ErrDecided
		}
		return r, err
	}
	return e.Get(ctx, id)
}

// MayDecide reports whether p may decide r: a user principal (no agent, no
// actor chain) that is r's user, or one of its named approvers.
func (e *Engine) MayDecide(r Request, p identity.Principal) bool {
	if p.Agent != "" || p.Act != nil || p.User == "" {
		return false
	}
	if len(r.Approvers) == 0 {
		return p.Issuer == r.Issuer && p.User == r.User
	}
	return e.approves(r.Approvers, p)
}

// Use consumes an approval for a call bound to the same agent session and
// arguments: a decision is used once, for exactly what was approved.
func (e *Engine) Use(ctx context.Context, id, asid, argsHash string) (Request, error) {
	r, err := e.Get(ctx, id)
	if err != nil {
		return r, err
	}
	if r.ASID != asid || r.ArgsHash != argsHash || (r.State != Approved && r.State != ApprovedWithEdits) {
		return r, ErrNotAllowed
	}
	if err := e.store.UseConsent(ctx, id); err != nil {
		if errors.Is(err, store.ErrConflict) {
			return r, ErrUsed
		}
		return r, err
	}
	return r, nil
}

// Cancel cancels a pending request (its call will not go on).
func (e *Engine) Cancel(ctx context.Context, id string) error {
	r, err := e.Get(ctx, id)
	if err != nil {
		return err
	}
	return e.settle(ctx, r, Cancelled)
}

// Decline denies a pending request because the caller's own client
// declined or cancelled the page it was sent to (MCP URL-mode elicitation,
// through channel). A decline can only deny, so it needs no approver; a
// request decided meanwhile stays as decided (ErrDecided).
func (e *Engine) Decline(ctx context.Context, id, channel string) (Request, error) {
	r, err := e.Get(ctx, id)
	if err != nil {
		return r, err
	}
	if r.State != Pending {
		return r, ErrDecided
	}
	r.DecidedBy, r.DecidedAt, r.Channel = "the caller's client", e.now().UTC(), channel
	if err := e.settle(ctx, r, Denied); err != nil {
		if errors.Is(err, store.ErrConflict) {
			return r, ErrDecided
		}
		return r, err
	}
	r.State = Denied
	return r, nil
}

// CancelNodes cancels every pending request on a path through one of the
// given session-graph nodes (the kill-switch) and returns how many.
func (e *Engine) CancelNodes(ctx context.Context, killed map[string]bool) (int, error) {
	return e.settleWhere(ctx, Cancelled, func(rec store.ConsentRecord) bool {
		return slices.ContainsFunc(rec.Nodes, func(id string) bool { return killed[id] })
	})
}

// ExpireDue expires every pending request past its expiry (a janitor's
// sweep; waiting callers expire their own) and returns how many.
func (e *Engine) ExpireDue(ctx context.Context) (int, error) {
	now := e.now()
	return e.settleWhere(ctx, Expired, func(rec store.ConsentRecord) bool { return !now.Before(rec.Expires) })
}

// settleWhere moves the pending requests that match to state and returns
// how many it moved (one decided meanwhile stays decided).
func (e *Engine) settleWhere(ctx context.Context, state State, match func(store.ConsentRecord) bool) (int, error) {
	pending, err := e.store.PendingConsents(ctx)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, rec := range pending {
		if !match(rec) {
			continue
		}
		if r, err := decode(rec); err == nil && e.settle(ctx, r, state) == nil {
			n++
		}
	}
	return n, nil
}

// settle moves r from pending to state in the store and wakes its waiter.
func (e *Engine) settle(ctx context.Context, r Request, state State) error {
	r.State = state
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	if err := e.store.SettleConsent(ctx, r.ID, string(state), b); err != nil {
		return err
	}
	e.release(r.ID)
	e.notify()
	return nil
}

// Refresh takes in what another gateway sharing the store changed: the
// waiters of ids (of every request waited on here, when ids is nil) whose
// requests are no longer pending are woken, and listeners told.
func (e *Engine) Refresh(ctx context.Context, ids []string) error {
	if ids == nil {
		e.mu.Lock()
		ids = slices.Collect(maps.Keys(e.waiters))
		e.mu.Unlock()
	}
	for _, id := range ids {
		r, err := e.Get(ctx, id)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return err
		}
		if r.State != Pending {
			e.release(id)
		}
	}
	e.notify()
	return nil
}

// release wakes and forgets the waiter of id.
func (e *Engine) release(id string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if ch, ok := e.waiters[id]; ok {
		close(ch)
		delete(e.waiters, id)
	}
}
