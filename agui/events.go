package agui

import (
	"encoding/json"
	"fmt"
	"net/http"
)

// AG-UI 1.0 events SAG sends (camelCase JSON, "type" the discriminator).
// Each is its own small struct; they are written as SSE "data:" lines.

type runStarted struct {
	Type     string `json:"type"` // RUN_STARTED
	ThreadID string `json:"threadId"`
	RunID    string `json:"runId"`
}

type runFinished struct {
	Type     string   `json:"type"` // RUN_FINISHED
	ThreadID string   `json:"threadId"`
	RunID    string   `json:"runId"`
	Outcome  *outcome `json:"outcome,omitempty"`
}

// outcome is why a run ended: "success" or "interrupt" (with its
// interrupts).
type outcome struct {
	Type       string      `json:"type"`
	Interrupts []interrupt `json:"interrupts,omitempty"`
}

// interrupt is one open consent request, as the client answers it.
type interrupt struct {
	ID             string          `json:"id"`
	Reason         string          `json:"reason"` // tool_call
	Message        string          `json:"message"`
	ToolCallID     string          `json:"toolCallId"`
	ResponseSchema json.RawMessage `json:"responseSchema"`
	ExpiresAt      string          `json:"expiresAt"`
	Metadata       map[string]any  `json:"metadata"`
}

type runError struct {
	Type    string `json:"type"` // RUN_ERROR
	Message string `json:"message"`
	Code    string `json:"code,omitempty"`
}

type toolCallStart struct {
	Type            string `json:"type"` // TOOL_CALL_START
	ToolCallID      string `json:"toolCallId"`
	ToolCallName    string `json:"toolCallName"`
	ParentMessageID string `json:"parentMessageId,omitempty"`
}

type toolCallArgs struct {
	Type       string `json:"type"` // TOOL_CALL_ARGS
	ToolCallID string `json:"toolCallId"`
	Delta      string `json:"delta"`
}

type toolCallResult struct {
	Type       string `json:"type"` // TOOL_CALL_RESULT
	MessageID  string `json:"messageId"`
	ToolCallID string `json:"toolCallId"`
	Content    string `json:"content"`
	Role       string `json:"role"` // tool
}

type toolCallEnd struct {
	Type       string `json:"type"` // TOOL_CALL_END
	ToolCallID string `json:"toolCallId"`
}

type stateSnapshot struct {
	Type     string `json:"type"` // STATE_SNAPSHOT
	Snapshot any    `json:"snapshot"`
}

type stateDelta struct {
	Type  string    `json:"type"` // STATE_DELTA
	Delta []patchOp `json:"delta"`
}

// patchOp is one RFC 6902 JSON Patch operation.
type patchOp struct {
	Op    string `json:"op"`
	Path  string `json:"path"`
	Value any    `json:"value,omitempty"`
}

type messagesSnapshot struct {
	Type     string    `json:"type"` // MESSAGES_SNAPSHOT
	Messages []message `json:"messages"`
}

// message is an assistant message that makes tool calls.
type message struct {
	ID        string     `json:"id"`
	Role      string     `json:"role"` // assistant
	ToolCalls []toolCall `json:"toolCalls"`
}

type toolCall struct {
	ID       string       `json:"id"`
	Type     string       `json:"type"` // function
	Function functionCall `json:"function"`
}

type functionCall struct {
	Name      string `json:"name"`
	Arguments string `json:"arguments"`
}

// sse writes events to one response stream.
type sse struct {
	w http.ResponseWriter
	f http.Flusher
}

func newSSE(w http.ResponseWriter) (*sse, error) {
	f, ok := w.(http.Flusher)
	if !ok {
		return nil, fmt.Errorf("agui: the response cannot stream")
	}
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	f.Flush()
	return &sse{w: w, f: f}, nil
}

// send writes one event.
func (s *sse) send(ev any) error {
	b, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	if _, err := fmt.Fprintf(s.w, "data: %s\n\n", b); err != nil {
		return err
	}
	s.f.Flush()
	return nil
}

// comment writes an SSE comment (a keep-alive no client reads as an event).
func (s *sse) comment() error {
	if _, err := fmt.Fprint(s.w, ": keep-alive\n\n"); err != nil {
		return err
	}
	s.f.Flush()
	return nil
}
