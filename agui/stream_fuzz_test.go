package agui

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sag-gateway/sag/consent"
	"github.com/sag-gateway/sag/identity"
)

// fakeConsents holds one pending request of alice's on workflow wf and
// records every decision it is asked for.
type fakeConsents struct {
	mu      sync.Mutex
	decided []string
}

var (
	fuzzAlice   = identity.Principal{Issuer: "https://gw", User: "alice"}
	fuzzPending = consent.Request{ID: "c_1", Issuer: "https://gw", User: "alice", WSID: "w_wf", Upstream: "files", Tool: "delete",
		Args: json.RawMessage(`{"path":"/a"}`), ResponseSchema: json.RawMessage(`{}`), Expires: time.Now().Add(time.Hour), State: consent.Pending}
)

func (f *fakeConsents) Pending(context.Context) ([]consent.Request, error) {
	return []consent.Request{fuzzPending}, nil
}

func (f *fakeConsents) Decide(_ context.Context, id string, d consent.Decision) (consent.Request, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if id != fuzzPending.ID {
		return consent.Request{}, consent.ErrNotFound
	}
	f.decided = append(f.decided, id)
	r := fuzzPending
	r.State = consent.Denied
	if d.Approved {
		r.State = consent.Approved
	}
	return r, nil
}

func (f *fakeConsents) MayDecide(r consent.Request, p identity.Principal) bool {
	return p.Issuer == r.Issuer && p.User == r.User
}

func (f *fakeConsents) Changed() <-chan struct{} { return make(chan struct{}) }

func (f *fakeConsents) Result(context.Context, string) (string, error) { return "done", nil }

type noActivity struct{}

func (noActivity) Recent(identity.Principal) ([]CallActivity, <-chan struct{}) { return nil, nil }

// FuzzRunInput: whatever body a run is posted with, the stream answers
// either a 400 with a JSON error or an event stream that starts with
// RUN_STARTED and ends with exactly one of RUN_FINISHED and RUN_ERROR, every
// event JSON with a type; it decides nothing but what a well-formed resume
// names, and never panics.
func FuzzRunInput(f *testing.F) {
	for _, seed := range []string{
		`{"threadId":"sag:all","runId":"r","messages":[]}`,
		`{"threadId":"wf","runId":"r","messages":[],"resume":[{"interruptId":"c_1","status":"resolved","payload":{"approved":true}}]}`,
		`{"threadId":"sag:consent:c_1","runId":"r","messages":[],"resume":[{"interruptId":"c_1","status":"cancelled"}]}`,
		`{"threadId":"wf","runId":"r","messages":[{"id":"m","role":"user","content":"hi"}]}`,
		`{"threadId":"sag:all","runId":"r","messages":[],"forwardedProps":{"knownInterrupts":["c_1"]}}`,
		`{"threadId":"has space","runId":"r","messages":[]}`,
		`{"threadId":"t","runId":"r","messages":[],"resume":[{"interruptId":"c_1","status":"resolved","payload":{"approved":"yes"}}]}`,
		`{"threadId":"t","runId":"r","messages":[],"resume":[{"interruptId":"c_1"},{"interruptId":"c_1"}]}`,
		`{`, `[]`, `null`, `{"threadId":"","runId":"r","messages":[]}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		fc := &fakeConsents{}
		s := NewStream(Options{
			Consents:  fc,
			Activity:  noActivity{},
			Principal: func(*http.Request) (identity.Principal, bool) { return fuzzAlice, true },
			Workflow: func(_ identity.Principal, id string) (string, bool) {
				if len(id) == 0 || len(id) > 128 || strings.ContainsAny(id, " \t\r\n") {
					return "", false
				}
				return "w_" + id, true
			},
			Listening: func(identity.Principal) func() { return func() {} },
			Heartbeat: time.Hour,
		})
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		defer cancel()
		req := httptest.NewRequestWithContext(ctx, http.MethodPost, "/agui", strings.NewReader(string(body)))
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, req)

		if rec.Code != http.StatusOK {
			var e map[string]string
			if rec.Code != http.StatusBadRequest || json.Unmarshal(rec.Body.Bytes(), &e) != nil || e["error_description"] == "" {
				t.Fatalf("refusal %d %q", rec.Code, rec.Body.String())
			}
			if len(fc.decided) != 0 {
				t.Fatalf("a refused body decided %v", fc.decided)
			}
			return
		}
		var types []string
		sc := bufio.NewScanner(rec.Body)
		sc.Buffer(make([]byte, 1<<20), 2<<20)
		for sc.Scan() {
			data, ok := strings.CutPrefix(sc.Text(), "data: ")
			if !ok {
				continue
			}
			var ev struct{ Type string }
			if json.Unmarshal([]byte(data), &ev) != nil || ev.Type == "" {
				t.Fatalf("event %q", data)
			}
			types = append(types, ev.Type)
		}
		if len(types) == 0 || types[0] != "RUN_STARTED" {
			t.Fatalf("events %v", types)
		}
		ends := 0
		for _, ty := range types {
			if ty == "RUN_FINISHED" || ty == "RUN_ERROR" {
				ends++
			}
		}
		last := types[len(types)-1]
		// A run still waiting when the test's context ended has no end.
		if ends > 1 || ends == 1 && last != "RUN_FINISHED" && last != "RUN_ERROR" {
			t.Fatalf("events %v", types)
		}
		var in runInput
		if len(fc.decided) > 0 && (json.Unmarshal(body, &in) != nil || len(in.Resume) == 0 || in.Resume[0].InterruptID != "c_1") {
			t.Fatalf("decided %v for %s", fc.decided, body)
		}
	})
}
