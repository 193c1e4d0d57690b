package upstreams

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
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

// FuzzCleanRaw checks the member-level rewrite of a result against the
// plain way of doing it: decode the result, drop the result type and the
// reserved _meta keys. Both must read the same, and a result that needs no
// change goes back byte for byte.
func FuzzCleanRaw(f *testing.F) {
	for _, s := range []string{
		`{"content":[{"type":"text","text":"a"}],"resultType":"complete"}`,
		`{"_meta":{"io.modelcontextprotocol/related-task":{"taskId":"t"},"k":[1,{"x":"}"}]},"isError":true}`,
		`{ "isError" : false , "structuredContent" : {"a":"\"}"} }`,
		`{"result\u0054ype":"complete","isError":true,"isError":false}`,
		`{"resultType":"input_required"}`, `{"isError":1}`, `{"_meta":null}`, `[]`, `{}`, `{"a":-1.5e3,"b":null}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, res []byte) {
		if !json.Valid(res) {
			return // cleanRaw sees only results of a decoded message
		}
		out, isError, err := cleanRaw(res)
		var in map[string]any
		plainErr := json.Unmarshal(res, &in)
		if plainErr == nil && in == nil {
			plainErr = errors.New("not an object")
		}
		if plainErr == nil {
			if rt, has := in["resultType"]; has && rt != "complete" {
				plainErr = errors.New("input asked")
			}
			if v, has := in["isError"]; has {
				if _, isBool := v.(bool); !isBool {
					plainErr = errors.New("isError not a bool")
				}
			}
			if m, has := in["_meta"]; has && m != nil {
				if _, isObj := m.(map[string]any); !isObj {
					plainErr = errors.New("_meta not an object")
				}
			}
		}
		if (err == nil) != (plainErr == nil) {
			t.Fatalf("cleanRaw(%s) = %v, the plain way %v", res, err, plainErr)
		}
		if err != nil {
			return
		}
		_, typed := in["resultType"]
		delete(in, "resultType")
		reserved := false
		if m, ok := in["_meta"].(map[string]any); ok {
			for k := range m {
				if strings.HasPrefix(k, reservedMeta) {
					delete(m, k)
					reserved = true
				}
			}
		}
		if !typed && !reserved && !bytes.Equal(out, bytes.TrimSpace(res)) {
			t.Fatalf("cleanRaw(%s) = %s: a result that needs no change was rewritten", res, out)
		}
		var got map[string]any
		if err := json.Unmarshal(out, &got); err != nil {
			t.Fatalf("cleanRaw(%s) = %s: not JSON: %v", res, out, err)
		}
		if !reflect.DeepEqual(got, in) {
			t.Fatalf("cleanRaw(%s) = %s, want %v", res, out, in)
		}
		if want, _ := in["isError"].(bool); isError != want {
			t.Fatalf("cleanRaw(%s): isError %v", res, isError)
		}
	})
}
