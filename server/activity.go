package server

import (
	"sync"

	"github.com/sag-gateway/sag/agui"
	"github.com/sag-gateway/sag/identity"
	"github.com/sag-gateway/sag/pipeline"
	"github.com/sag-gateway/sag/store"
)

// activityKeep is how many recent calls each user's live activity holds.
const activityKeep = 50

// maxActivityUsers bounds the users whose activity is held; past it the
// least active is dropped.
const maxActivityUsers = 10_000

// activity holds each user's recent calls for the consent stream, fed by
// the pipeline's committed records.
type activity struct {
	mu    sync.Mutex
	seq   uint64
	users map[userKey]*userActivity
}

type userActivity struct {
	calls   []agui.CallActivity
	changed chan struct{} // closed at the next call, once a stream took it
	taken   bool
}

// last is the sequence number of the user's latest call, 0 for none.
func (u *userActivity) last() uint64 {
	if len(u.calls) == 0 {
		return 0
	}
	return u.calls[len(u.calls)-1].Seq
}

var _ agui.Activity = (*activity)(nil)

// watch records a committed call of a user principal.
func (a *activity) watch(c *pipeline.Call, rec store.AuditRecord) {
	if c.Kind == pipeline.List {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	u := a.user(userKey{c.Principal.Issuer, c.Principal.User})
	a.seq++
	u.calls = append(u.calls, agui.CallActivity{Seq: a.seq, Time: rec.Time, Method: rec.Method, Name: rec.Tool, Upstream: rec.Upstream,
		Agent: rec.SpiffeID, WSID: rec.WSID, Decision: rec.Decision, Reason: rec.Reason, ConsentID: rec.ConsentID})
	if len(u.calls) > activityKeep {
		u.calls = append(u.calls[:0], u.calls[len(u.calls)-activityKeep:]...)
	}
	if u.taken { // a stream waits for this user's next call
		close(u.changed)
		u.changed, u.taken = make(chan struct{}), false
	}
}

// user returns k's activity, creating it (a.mu is held).
func (a *activity) user(k userKey) *userActivity {
	if a.users == nil {
		a.users = map[userKey]*userActivity{}
	}
	u := a.users[k]
	if u == nil {
		if len(a.users) >= maxActivityUsers {
			a.dropLeastActive()
		}
		u = &userActivity{changed: make(chan struct{})}
		a.users[k] = u
	}
	return u
}

func (a *activity) dropLeastActive() {
	var oldest userKey
	first := true
	for k, u := range a.users {
		if first || u.last() < a.users[oldest].last() {
			oldest, first = k, false
		}
	}
	delete(a.users, oldest)
}

// Recent implements agui.Activity.
func (a *activity) Recent(p identity.Principal) ([]agui.CallActivity, <-chan struct{}) {
	a.mu.Lock()
	defer a.mu.Unlock()
	u := a.user(userKey{p.Issuer, p.User})
	u.taken = true
	return append([]agui.CallActivity(nil), u.calls...), u.changed
}
