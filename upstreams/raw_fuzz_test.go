package upstreams

import (
	"bufio"
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

// FuzzReadStream feeds arbitrary event streams to the raw path's reader:
// it never panics, it returns the answer only to its own request id, and
// what it returns is a JSON object without reserved _meta keys or a result
// type.
func FuzzReadStream(f *testing.F) {
	for _, s := range []string{
		"data: {\"jsonrpc\":\"2.0\",\"id\":\"sag-1\",\"result\":{\"content\":[]}}\n\n",
		"event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\",\"params\":{}}\n\n" +
			"data: {\"jsonrpc\":\"2.0\",\"id\":\"sag-1\",\"result\":{\"resultType\":\"complete\",\"_meta\":{\"io.modelcontextprotocol/x\":1,\"y\":2},\"isError\":true}}\n\n",
		"data: {\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"ping\"}\r\n\r\ndata: {\"id\":\"sag-1\",\"error\":{\"code\":-32000,\"message\":\"no\"}}\n\n",
		"data: {\"id\":\"sag-2\",\"result\":{}}\n\n",
		"data: {\"id\":\"sag-1\",\n" + "data: \"result\":[]}\n\n",
		": comment\nid: 1\nretry: 10\n\n",
		"data: nope\n\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, stream []byte) {
		res, _, err := readStream(bufio.NewReaderSize(bytes.NewReader(stream), 64), `"sag-1"`, func(msg *rawMessage) {
			if msg.Method == "" {
				t.Fatalf("a response was handled as a message: %+v", msg)
			}
		})
		if err != nil {
			return
		}
		var obj map[string]json.RawMessage
		if json.Unmarshal(res, &obj) != nil {
			t.Fatalf("the answer is not a JSON object: %q", res)
		}
		if _, ok := obj["resultType"]; ok {
			t.Fatalf("the result type went back: %s", res)
		}
		var meta map[string]json.RawMessage
		_ = json.Unmarshal(obj["_meta"], &meta)
		for k := range meta {
			if strings.HasPrefix(k, reservedMeta) {
				t.Fatalf("a reserved _meta key went back: %s", res)
			}
		}
	})
}
