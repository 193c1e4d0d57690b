package upstreams

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/sag-gateway/sag/internal/jsonscan"
)

// The raw path: a tools/call the gateway sends on a downstream session's
// own upstream session over Streamable HTTP itself, as bytes, instead of
// through the go-sdk client. It writes the request (the upstream's own name
// for the tool, the arguments the pipeline let through, the caller's _meta
// without reserved keys) and reads only the envelope of the answer; the
// result goes back as the upstream wrote it, less what belongs to the
// upstream's connection. The go-sdk client keeps the session itself
// (initialize, the standalone stream, list_changed, keep-alive); the raw
// path only borrows its session id and protocol revision.

// maxRawResponse bounds what the raw path reads of one upstream response
// (a JSON body, or a whole event stream).
const maxRawResponse = 64 << 20

// RawMeta is the _meta of a raw call: key → raw JSON value.
type RawMeta map[string]json.RawMessage

// CallToolRaw forwards a tools/call for a catalog tool made on down's
// session, or with down nil for a stateless (2026-07-28) client's request
// on a pooled connection, and returns the upstream's result object as
// JSON, and whether it is a tool error. Calls the raw path cannot carry
// (stdio and legacy SSE upstreams, agents, a go-sdk stateless session) go
// through CallTool and come back encoded.
func (m *Manager) CallToolRaw(ctx context.Context, down *mcp.ServerSession, t *Tool, args json.RawMessage, meta RawMeta) (json.RawMessage, bool, error) {
	u, ok := m.lookup(t.Upstream)
	if !ok || u.spec.Kind == KindA2A || u.tgt.transport != TransportHTTP || down != nil && down.ID() == "" {
		return m.callToolEncoded(ctx, down, t, args, meta)
	}
	type answer struct {
		res     json.RawMessage
		isError bool
	}
	a, err := forward(ctx, m, t.Upstream, down, nil, func(ctx context.Context, r *request, c *conn) (answer, error) {
		body, err := m.rawToolCall(r.id, c.cs.InitializeResult().ProtocolVersion, t.Original, args, meta, r.meta)
		if err != nil {
			return answer{}, err
		}
		res, isError, err := u.postRaw(ctx, r, c, body, t.Original)
		if err != nil && ctx.Err() != nil {
			u.cancelRaw(c, r)
		}
		return answer{res, isError}, err
	})
	return a.res, a.isError, err
}

// callToolEncoded is CallToolRaw through the go-sdk client.
func (m *Manager) callToolEncoded(ctx context.Context, down *mcp.ServerSession, t *Tool, args json.RawMessage, meta RawMeta) (json.RawMessage, bool, error) {
	p := &mcp.CallToolParamsRaw{Name: t.Name, Arguments: args}
	if len(meta) > 0 {
		p.Meta = mcp.Meta{}
		for k, v := range meta {
			var val any
			if err := json.Unmarshal(v, &val); err != nil {
				return nil, false, err
			}
			p.Meta[k] = val
		}
	}
	res, err := m.CallTool(ctx, down, t, p)
	if err != nil {
		return nil, false, err
	}
	b, err := json.Marshal(res)
	return b, res.IsError, err
}

// rawToolCall is the JSON-RPC request of one raw tools/call. Its id is the
// gateway's ("sag-" and a sequence number), never the go-sdk client's
// integers, so the two never collide on one upstream session.
//
// From 2026-07-28 on every request names the protocol revision, the client
// and its capabilities in _meta (SEP-2575). The raw path serves only
// clients that declared neither elicitation nor sampling, whose upstream
// connections declare nothing either: their capabilities are {}.
func (m *Manager) rawToolCall(id uint64, version, name string, args json.RawMessage, meta RawMeta, own mcp.Meta) ([]byte, error) {
	mb, err := m.rawMeta(version, meta, own)
	if err != nil {
		return nil, err
	}
	n, err := json.Marshal(name)
	if err != nil {
		return nil, err
	}
	if len(args) == 0 {
		args = json.RawMessage("{}")
	}
	b := make([]byte, 0, 96+len(name)+len(args)+len(mb))
	b = append(b, `{"jsonrpc":"2.0","id":"sag-`...)
	b = strconv.AppendUint(b, id, 36)
	b = append(b, `","method":"tools/call","params":{"name":`...)
	b = append(b, n...)
	b = append(b, `,"arguments":`...)
	b = append(b, args...)
	if len(mb) > 0 {
		b = append(b, `,"_meta":`...)
		b = append(b, mb...)
	}
	return append(b, "}}"...), nil
}

// rawMeta is the _meta of a raw call, nil for none: the caller's keys but
// the reserved ones, the gateway's own (own: the trace context begin put
// there) and a 2026-07-28 session's triple. The usual one (nothing of the
// caller's but reserved keys, nothing of the gateway's) is encoded once
// per revision.
func (m *Manager) rawMeta(version string, meta RawMeta, own mcp.Meta) (json.RawMessage, error) {
	usual := len(own) == 0
	for k := range meta {
		usual = usual && strings.HasPrefix(k, reservedMeta)
	}
	if usual {
		if version < stateless {
			return nil, nil
		}
		if b, ok := m.sessionMeta.Load(version); ok {
			return b.(json.RawMessage), nil
		}
	}
	out := make(RawMeta, len(meta)+len(own)+3)
	for k, v := range meta {
		if !strings.HasPrefix(k, reservedMeta) {
			out[k] = v
		}
	}
	for k, v := range own {
		b, err := json.Marshal(v)
		if err != nil {
			return nil, err
		}
		out[k] = b
	}
	if version >= stateless {
		info, err := json.Marshal(mcp.Implementation{Name: "sag", Version: m.opts.Version})
		if err != nil {
			return nil, err
		}
		out[mcp.MetaKeyProtocolVersion], _ = json.Marshal(version)
		out[mcp.MetaKeyClientInfo] = info
		out[mcp.MetaKeyClientCapabilities] = json.RawMessage("{}")
	}
	if len(out) == 0 {
		return nil, nil
	}
	b, err := json.Marshal(out)
	if err != nil {
		return nil, err
	}
	if usual {
		m.sessionMeta.Store(version, json.RawMessage(b))
	}
	return b, nil
}

// rawID is the JSON form of a raw request's id.
func rawID(id uint64) string { return `"sag-` + strconv.FormatUint(id, 36) + `"` }

// errNoAnswer is a response or stream that ended without the answer.
var errNoAnswer = errors.New("the upstream's response ended without an answer")

// postRaw sends one raw request on c's upstream session and reads its
// answer: a JSON body, or an event stream whose notifications and
// requests are handled as the go-sdk client's handlers would.
func (u *upstream) postRaw(ctx context.Context, r *request, c *conn, body []byte, name string) (json.RawMessage, bool, error) {
	resp, err := u.send(ctx, c, r.caller, body, name)
	if err != nil {
		return nil, false, err
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusNotFound:
		return nil, false, mcp.ErrSessionMissing
	default:
		return nil, false, fmt.Errorf("HTTP %s", resp.Status)
	}
	in := io.LimitReader(resp.Body, maxRawResponse+1)
	want := rawID(r.id)
	mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	switch mt {
	case "application/json":
		b, err := io.ReadAll(in)
		if err != nil {
			return nil, false, err
		}
		if len(b) > maxRawResponse {
			return nil, false, fmt.Errorf("response larger than %d bytes", maxRawResponse)
		}
		var msg rawMessage
		if err := json.Unmarshal(b, &msg); err != nil || string(msg.ID) != want {
			return nil, false, errors.New("the upstream's response is not the answer to the call")
		}
		return msg.answer()
	case "text/event-stream":
		return readStream(bufio.NewReader(in), want, func(msg *rawMessage) { u.handleRaw(r, c, msg) })
	}
	return nil, false, fmt.Errorf("unexpected content type %q", mt)
}

// send POSTs one message on c's upstream session, with the credentials of
// the call it is made for.
//
// For a tools/call (name set) on a 2026-07-28 session the request names its
// method and tool in the standard headers; the go-sdk client's x-mcp-header
// parameter headers are not sent on either path.
func (u *upstream) send(ctx context.Context, c *conn, cl *caller, body []byte, name string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.tgt.endpoint, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header = http.Header{
		"Content-Type":         {"application/json"},
		"Accept":               {"application/json, text/event-stream"},
		"Mcp-Protocol-Version": {c.cs.InitializeResult().ProtocolVersion},
	}
	if id := c.cs.ID(); id != "" {
		req.Header["Mcp-Session-Id"] = []string{id}
	}
	if name != "" && c.cs.InitializeResult().ProtocolVersion >= stateless {
		req.Header["Mcp-Method"] = []string{"tools/call"}
		req.Header["Mcp-Name"] = []string{name}
	}
	if u.credentialed() {
		if err := u.authorize(req, cl); err != nil {
			return nil, err
		}
	}
	hc := u.raw.Load()
	if hc == nil {
		b := u.m.baseClient(u)
		hc = &b
		u.raw.Store(hc)
	}
	return hc.Do(req)
}

// rawMessage is the envelope of one JSON-RPC message from an upstream.
type rawMessage struct {
	ID     json.RawMessage `json:"id"`
	Method string          `json:"method"`
	Params json.RawMessage `json:"params"`
	Result json.RawMessage `json:"result"`
	Error  *jsonrpc.Error  `json:"error"`
}

// answer is the outcome a response carries: its error, or its result as
// the client is to see it.
func (msg *rawMessage) answer() (json.RawMessage, bool, error) {
	if msg.Error != nil {
		return nil, false, msg.Error
	}
	return cleanRaw(msg.Result)
}

// cleanRaw checks a tools/call result and removes what belongs to the
// upstream's connection (reserved _meta keys, the result type), as
// cleanResult does for the go-sdk path; a result without either goes back
// byte for byte, and otherwise only the members that change are rewritten.
// res is valid JSON (its message was decoded whole).
func cleanRaw(res json.RawMessage) (json.RawMessage, bool, error) {
	notResult := &jsonrpc.Error{Code: jsonrpc.CodeInternalError, Message: "the upstream's result is not a tool result"}
	res = bytes.TrimSpace(res)
	if len(res) == 0 || res[0] != '{' {
		return nil, false, notResult
	}
	var (
		isError, changed, bad bool
		kept                  [][]byte
	)
	ok := jsonscan.Members(res, func(key string, member, value []byte) {
		switch key {
		case "resultType":
			if string(value) != `"complete"` {
				// An upstream asking for input this connection never
				// declared it could give.
				bad = true
			}
			changed = true
			return
		case "isError":
			switch string(value) {
			case "true", "false":
				isError = string(value) == "true"
			default:
				bad = true
			}
		case "_meta":
			meta, ok := cleanMeta(value)
			if !ok {
				bad = true
				return
			}
			if meta != nil {
				member, changed = append([]byte(`"_meta":`), meta...), true
			}
		}
		kept = append(kept, member)
	})
	switch {
	case !ok:
		return nil, false, notResult
	case bad:
		return nil, false, &jsonrpc.Error{Code: jsonrpc.CodeInternalError, Message: "the upstream's result is not a tool result this client can take"}
	case !changed:
		return res, isError, nil
	}
	out := append(make([]byte, 0, len(res)), '{')
	for i, m := range kept {
		if i > 0 {
			out = append(out, ',')
		}
		out = append(out, m...)
	}
	return append(out, '}'), isError, nil
}

// cleanMeta returns a result's _meta without the reserved keys, nil when
// it has none; ok is false when it is neither an object nor null.
func cleanMeta(value []byte) (json.RawMessage, bool) {
	var meta map[string]json.RawMessage
	if json.Unmarshal(value, &meta) != nil {
		return nil, false
	}
	reserved := false
	for k := range meta {
		if strings.HasPrefix(k, reservedMeta) {
			delete(meta, k)
			reserved = true
		}
	}
	if !reserved {
		return nil, true
	}
	b, err := json.Marshal(meta)
	return b, err == nil
}

// readStream reads a response event stream until the answer to want,
// passing every notification and request before it to handle.
func readStream(in *bufio.Reader, want string, handle func(*rawMessage)) (json.RawMessage, bool, error) {
	var data []byte
	for {
		line, err := in.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			// A long data line: read the rest of it.
			rest, err2 := in.ReadBytes('\n')
			line, err = append(append([]byte(nil), line...), rest...), err2
		}
		if len(line) == 0 && err != nil {
			if err == io.EOF {
				err = errNoAnswer
			}
			return nil, false, err
		}
		line = bytes.TrimRight(line, "\r\n")
		switch {
		case len(line) == 0:
			if len(data) == 0 {
				continue
			}
			var msg rawMessage
			if json.Unmarshal(data, &msg) != nil {
				return nil, false, errors.New("the upstream sent an event that is not JSON-RPC")
			}
			data = data[:0]
			if msg.Method == "" {
				if string(msg.ID) == want {
					return msg.answer()
				}
				continue // an answer to another request: not ours
			}
			handle(&msg)
		case bytes.HasPrefix(line, []byte("data:")):
			v := bytes.TrimPrefix(bytes.TrimPrefix(line, []byte("data:")), []byte(" "))
			if len(data) > 0 {
				data = append(data, '\n')
			}
			data = append(data, v...)
			if len(data) > maxRawResponse {
				return nil, false, fmt.Errorf("event larger than %d bytes", maxRawResponse)
			}
		}
	}
}

// handleRaw handles a notification or request an upstream sent on a raw
// call's stream as the session's go-sdk handlers would: logging goes to the
// downstream session, list changes and resource updates where the
// connection's own go; requests are answered (ping, and "method not found"
// for what the connection did not declare).
func (u *upstream) handleRaw(r *request, c *conn, msg *rawMessage) {
	if len(msg.ID) > 0 {
		reply := `{"jsonrpc":"2.0","id":` + string(msg.ID) + `,"result":{}}`
		if msg.Method != "ping" {
			reply = `{"jsonrpc":"2.0","id":` + string(msg.ID) + `,"error":{"code":-32601,"message":"method not found"}}`
		}
		if resp, err := u.send(r.down, c, r.caller, []byte(reply), ""); err == nil {
			resp.Body.Close()
		}
		return
	}
	switch msg.Method {
	case "notifications/message":
		var p mcp.LoggingMessageParams
		if c.down != nil && json.Unmarshal(msg.Params, &p) == nil {
			_ = c.down.Log(context.Background(), &p)
		}
	case "notifications/tools/list_changed", "notifications/prompts/list_changed", "notifications/resources/list_changed":
		u.scheduleRefresh()
	case "notifications/resources/updated":
		var p mcp.ResourceUpdatedNotificationParams
		if u.m.opts.OnResourceUpdated != nil && json.Unmarshal(msg.Params, &p) == nil {
			u.m.opts.OnResourceUpdated(c.down, &p)
		}
	}
}

// cancelRaw tells the upstream that the caller gave up a raw call, as the
// go-sdk client does with notifications/cancelled.
//
// From 2026-07-28 on closing the response stream is the cancellation (and
// the notification would be refused without the _meta every request
// carries), so nothing is sent.
func (u *upstream) cancelRaw(c *conn, r *request) {
	if c.cs.InitializeResult().ProtocolVersion >= stateless {
		return
	}
	reason := "the caller cancelled the call"
	if errors.Is(r.down.Err(), context.DeadlineExceeded) {
		reason = "the call timed out"
	}
	body := `{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":` + rawID(r.id) + `,"reason":"` + reason + `"}}`
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if resp, err := u.send(ctx, c, r.caller, []byte(body), ""); err == nil {
			resp.Body.Close()
		}
	}()
}
