package identity

import (
	"bytes"
	"encoding/json"
	"io"
	"strings"
	"testing"
	"unicode/utf8"
)

// decoderUniqueMembers is uniqueMembers written with encoding/json's token
// decoder: slower, and the reference the scanner is fuzzed against.
func decoderUniqueMembers(data []byte) bool {
	dec := json.NewDecoder(bytes.NewReader(data))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return false
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return false
		}
		name := strings.ToLower(tok.(string))
		if seen[name] {
			return false
		}
		seen[name] = true
		var skip json.RawMessage
		if dec.Decode(&skip) != nil {
			return false
		}
	}
	if _, err := dec.Token(); err != nil {
		return false
	}
	_, err := dec.Token()
	return err == io.EOF
}

// FuzzUniqueMembers checks the scanner-based duplicate-member check of
// proofs and tokens against the decoder-based one.
func FuzzUniqueMembers(f *testing.F) {
	for _, s := range []string{`{"typ":"dpop+jwt","alg":"ES256"}`, `{"a":1,"A":2}`, `{"a":{"a":1},"b":[1,{"b":2}]}`, ` {"a":"\u0061"} `,
		`{"a\u0041":1,"aa":2}`, `{"a":1}x`, `[1]`, `{}`, `{"a":1,}`, `{"a":"x\"y","b":null}`} {
		f.Add([]byte(s))
	}
	f.Add([]byte("{\"\xff\":1,\"\xfe\":2}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		if !utf8.Valid(data) {
			if uniqueMembers(data) == nil {
				t.Fatalf("uniqueMembers(%q) accepted invalid UTF-8", data)
			}
			return
		}
		got, want := uniqueMembers(data) == nil, decoderUniqueMembers(data)
		if got != want {
			t.Fatalf("uniqueMembers(%q) = %v, the decoder says %v", data, got, want)
		}
	})
}
