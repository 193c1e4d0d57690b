package agui

import (
	"bytes"
	"encoding/json"
	"testing"
)

// FuzzAgentStream: whatever bytes an agent streams, the proxy's reader
// neither panics nor passes on an event the AG-UI schema refuses; it ends
// with the stream or at the first bad event.
func FuzzAgentStream(f *testing.F) {
	for _, seed := range []string{
		"data: {\"type\":\"RUN_STARTED\",\"threadId\":\"t\",\"runId\":\"r\"}\n\ndata: {\"type\":\"RUN_FINISHED\",\"threadId\":\"t\",\"runId\":\"r\"}\n\n",
		"data: {\"type\":\"TEXT_MESSAGE_CONTENT\",\n data: \"messageId\":\"m\",\"delta\":\"x\"}\n\n",
		"event: message\r\ndata: {}\r\n\r\n",
		": comment\n\ndata: {\"type\":\"TOOL_CALL_START\",\"toolCallId\":\"t1\"}\n\n",
		"data: not json\n\n",
		"data:",
	} {
		f.Add([]byte(seed))
	}
	s := NewStream(Options{CheckEvent: CheckEvent})
	f.Fuzz(func(t *testing.T, body []byte) {
		pr := &proxied{events: make(chan agentEvent, 1<<16), open: map[string]bool{}}
		s.read(pr, bytes.NewReader(body))
		var bad int
		for ev := range pr.events {
			if ev.err != nil {
				bad++
				continue
			}
			if bad > 0 {
				t.Fatal("an event after a bad one")
			}
			if err := CheckEvent(ev.raw); err != nil || !json.Valid(ev.raw) {
				t.Fatalf("passed on %s: %v", ev.raw, err)
			}
		}
		if bad > 1 {
			t.Fatalf("%d bad events, want the reader to stop at the first", bad)
		}
	})
}
