package a2a

import (
	"encoding/json"
	"testing"

	spec "github.com/a2aproject/a2a-go/v2/a2a"
	"github.com/a2aproject/a2a-go/v2/a2asrv"
)

// FuzzCallOf: whatever a message (and the task it goes on with) holds, the
// call it names is read without a panic, and a call is named only with a
// tool.
func FuzzCallOf(f *testing.F) {
	for _, seed := range [][2]string{
		{`{"tool":"fx__add","arguments":{"a":1}}`, ``},
		{`{"skill":"helper__echo","arguments":{"message":"hi"}}`, ``},
		{`{"tool":""}`, ``},
		{`[1,2]`, ``},
		{`null`, `{"consent":{"id":"c_1"},"tool":"fx__echo","arguments":{}}`},
		{`"x"`, `{"agent":{"state":"input-required","taskId":"t1"},"tool":"helper__ask"}`},
		{`{"tool":{"nested":true}}`, `{"consent":7}`},
	} {
		f.Add(seed[0], seed[1], "text", "helper__echo")
	}
	f.Fuzz(func(t *testing.T, part, status, text, skill string) {
		var data, waiting any
		if json.Unmarshal([]byte(part), &data) != nil || json.Unmarshal([]byte(status), &waiting) != nil {
			return
		}
		msg := spec.NewMessage(spec.MessageRoleUser, spec.NewDataPart(data), spec.NewTextPart(text))
		if skill != "" {
			msg.Metadata = map[string]any{"skillId": skill}
		}
		ec := &a2asrv.ExecutorContext{Message: msg}
		if waiting != nil {
			ec.StoredTask = &spec.Task{ID: "t", Status: spec.TaskStatus{State: spec.TaskStateInputRequired,
				Message: spec.NewMessage(spec.MessageRoleAgent, spec.NewDataPart(waiting))}}
		}
		call, _, err := callOf(ec)
		if err == nil && call.Tool == "" {
			t.Fatalf("a call without a tool from %s / %s", part, status)
		}
		if err == nil && call.Arguments != nil && !json.Valid(call.Arguments) {
			t.Fatalf("arguments that are not JSON: %s", call.Arguments)
		}
		_ = waitingConsent(ec.StoredTask)
	})
}
