package agui

import (
	"context"
	"encoding/json"
	"net/http"
	"time"

	"github.com/gorilla/websocket"
)

// upgrader accepts same-origin WebSocket upgrades only (gorilla's default
// origin check; the server checks Origin before this too).
var upgrader = websocket.Upgrader{ReadBufferSize: 4096, WriteBufferSize: 4096}

// ServeWS serves GET /agui/ws: the same consent stream over one WebSocket
// for UIs that keep a socket open. Each text message the client sends is a
// RunAgentInput; the runs' events come back one JSON event per message, a
// run after the other.
func (s *Stream) ServeWS(w http.ResponseWriter, r *http.Request) {
	p, ok := s.user(w, r)
	if !ok {
		return
	}
	conn, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		return // the upgrader answered
	}
	defer conn.Close()
	conn.SetReadLimit(maxInput)
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	inputs := make(chan runInput)
	go func() { // the one reader: inputs, and the end of the socket
		defer cancel()
		for {
			_, msg, err := conn.ReadMessage()
			if err != nil {
				return
			}
			var in runInput
			if json.Unmarshal(msg, &in) != nil || in.ThreadID == "" || in.RunID == "" || in.Messages == nil {
				in = runInput{} // answered with RUN_ERROR below
			}
			select {
			case inputs <- in:
			case <-ctx.Done():
				return
			}
		}
	}()
	out := &wsEmitter{conn: conn}
	for {
		select {
		case <-ctx.Done():
			return
		case in := <-inputs:
			if in.RunID == "" {
				out.send(runError{Type: "RUN_ERROR", Code: "INVALID_INPUT", Message: "each message must be a RunAgentInput with threadId, runId and messages"})
				continue
			}
			s.serveRun(ctx, out, p, in)
		}
	}
}

// wsEmitter writes events as WebSocket text messages (one writer).
type wsEmitter struct{ conn *websocket.Conn }

func (e *wsEmitter) send(ev any) error {
	e.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	return e.conn.WriteJSON(ev)
}

func (e *wsEmitter) comment() error {
	return e.conn.WriteControl(websocket.PingMessage, nil, time.Now().Add(10*time.Second))
}
