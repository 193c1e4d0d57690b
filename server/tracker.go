package server

import (
	"context"
	"errors"
	"slices"
	"sync"
)

// Causes with which the tracker cancels calls.
var (
	errShuttingDown  = errors.New("gateway shutting down")
	errSessionClosed = errors.New("session closed by the client")
)

// tracker follows what is in flight: shutdown waits for the HTTP requests,
// and a session's end (or the end of the shutdown grace) cancels its calls.
type tracker struct {
	mu       sync.Mutex
	requests int
	idle     chan struct{} // closed while requests == 0
	calls    map[*trackedCall]struct{}
}

type trackedCall struct {
	session string
	cancel  context.CancelCauseFunc
	nodes   []string      // the call's session-graph nodes (setNodes)
	done    chan struct{} // closed when the call has returned
}

func newTracker() *tracker {
	idle := make(chan struct{})
	close(idle)
	return &tracker{idle: idle, calls: map[*trackedCall]struct{}{}}
}

// request counts one HTTP request until the returned func is called.
func (t *tracker) request() func() {
	t.mu.Lock()
	if t.requests == 0 {
		t.idle = make(chan struct{})
	}
	t.requests++
	t.mu.Unlock()
	return func() {
		t.mu.Lock()
		t.requests--
		if t.requests == 0 {
			close(t.idle)
		}
		t.mu.Unlock()
	}
}

// call makes ctx cancellable by cancel(session, …) until the returned func
// is called.
func (t *tracker) call(ctx context.Context, session string) (context.Context, func()) {
	ctx, cancel := context.WithCancelCause(ctx)
	c := &trackedCall{session: session, cancel: cancel, done: make(chan struct{})}
	ctx = context.WithValue(ctx, trackedKey{}, c)
	t.mu.Lock()
	t.calls[c] = struct{}{}
	t.mu.Unlock()
	return ctx, func() {
		t.mu.Lock()
		delete(t.calls, c)
		t.mu.Unlock()
		cancel(nil)
		close(c.done)
	}
}

type trackedKey struct{}

// setNodes records the session-graph nodes of the call ctx belongs to, so
// that killing any of them cancels it.
func (t *tracker) setNodes(ctx context.Context, nodes ...string) {
	if c, ok := ctx.Value(trackedKey{}).(*trackedCall); ok {
		t.mu.Lock()
		c.nodes = nodes
		t.mu.Unlock()
	}
}

// cancelNodes cancels every call on one of the given session-graph nodes
// and returns a channel for each, closed when that call has returned.
func (t *tracker) cancelNodes(nodes map[string]bool, cause error) []<-chan struct{} {
	t.mu.Lock()
	defer t.mu.Unlock()
	var done []<-chan struct{}
	for c := range t.calls {
		if nodes[c.session] || slices.ContainsFunc(c.nodes, func(id string) bool { return nodes[id] }) {
			c.cancel(cause)
			done = append(done, c.done)
		}
	}
	return done
}

// cancel cancels the calls of one session, or all calls when session is "".
func (t *tracker) cancel(session string, cause error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for c := range t.calls {
		if session == "" || c.session == session {
			c.cancel(cause)
		}
	}
}

// wait returns when no request is in flight, or ctx's error when it ends first.
func (t *tracker) wait(ctx context.Context) error {
	t.mu.Lock()
	idle := t.idle
	t.mu.Unlock()
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
