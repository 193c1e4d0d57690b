package schemas

import (
	"strings"
	"testing"
)

// TestDecodeYAMLErrorLines checks that a syntax error names the line where
// the problem is; the YAML decoder alone names the line before it, or the
// line where the enclosing mapping starts, or no line at all.
func TestDecodeYAMLErrorLines(t *testing.T) {
	tests := []struct {
		name string
		doc  string
		want string
	}{
		{"key in a list at mapping level", "listen: 127.0.0.1:8080\nlog:\n  level: info\n  - format\n",
			"yaml: line 4: did not find expected key"},
		{"key indented less than its siblings", "log:\n  level: info\n format: text\nx: 1\n",
			"yaml: line 3: did not find expected key"},
		{"list item indented less than the list", "upstreams:\n  - name: a\n    url: x\n   - name: b\n",
			"yaml: line 4: did not find expected '-' indicator"},
		{"tab in the indentation", "listen: 127.0.0.1:8080\nlog:\n  level: info\n\tformat: text\n",
			"yaml: line 4: found a tab character that violates indentation"},
		{"value indented under a scalar", "a: 1\nb: 2\n  c: 3\n",
			"yaml: line 3: mapping values are not allowed in this context"},
		{"on the first line", "a: b: c\n",
			"yaml: line 1: mapping values are not allowed in this context"},
		{"unclosed bracket", "listen: 127.0.0.1:8080\n\nlog:\n  level: info\n  format: [text\nupstreams: []\n",
			"yaml: line 6: did not find expected ',' or ']' (in the flow sequence [ … ] that starts on line 5)"},
		{"unclosed brace", "a: 1\nb: {x: 1\nc: 3\n",
			"yaml: line 3: did not find expected ',' or '}' (in the flow mapping { … } that starts on line 2)"},
		{"unclosed quote", "a: 1\nb: 2\nc: 'x\nd: 4\n",
			"yaml: line 4: found unexpected end of stream (in the quoted string that starts on line 3)"},
		{"key without its colon", "title: x\nlink \"y\"\nweight: 20\n",
			"yaml: line 3: could not find expected ':' (after the key that starts on line 2)"},
		{"unknown anchor", "a: 1\nb: *y\n", "yaml: line 2: unknown anchor 'y' referenced"},
		{"in the second document", "a: 1\n---\nb: [\n", "yaml: line 3: did not find expected node content"},
		{"CR line breaks", "a: 1\rb:\r  c: 1\r d: 2\r", "yaml: line 4: did not find expected key"},
		{"CRLF line breaks", "a: 1\r\nb:\r\n  c: 1\r\n d: 2\r\n", "yaml: line 4: did not find expected key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := DecodeYAML([]byte(tt.doc))
			if err == nil || err.Error() != tt.want {
				t.Errorf("DecodeYAML(%q) error\n%v\nwant\n%s", tt.doc, err, tt.want)
			}
		})
	}
}

// TestDecodeYAMLOtherErrors checks that errors that are not syntax errors
// keep their own text.
func TestDecodeYAMLOtherErrors(t *testing.T) {
	for doc, want := range map[string]string{
		"a: 1\n---\nb: 2\n":      "more than one YAML document",
		"a: .inf\n":              "a: got +Inf, want a finite number",
		"a: 1\nb: 2\na: 3\n":     `mapping key "a" already defined at line 1`,
		"[1, {x: [2, 3, .nan]}]": "[1].x[2]: got NaN, want a finite number",
	} {
		_, err := DecodeYAML([]byte(doc))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("DecodeYAML(%q) = %v, want an error containing %q", doc, err, want)
		}
	}
}

// FuzzDecodeYAML checks that no document makes the decoder, or the error
// location, panic, and that every syntax error names a line of the document.
func FuzzDecodeYAML(f *testing.F) {
	for _, s := range []string{"a: 1\n", "a: [\n", "a:\n  - 1\n  b: 2\n", "a: 'x\n", "\t", "a: b: c", "- a\nb: 1\n"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, doc string) {
		_, err := DecodeYAML([]byte(doc))
		if err == nil {
			return
		}
		rest, ok := strings.CutPrefix(err.Error(), "yaml: line ")
		if !ok {
			return
		}
		var n int
		for _, c := range rest {
			if c < '0' || c > '9' {
				break
			}
			n = n*10 + int(c-'0')
		}
		if lines := countLines([]byte(doc)); n < 1 || n > lines {
			t.Errorf("DecodeYAML(%q): %v names line %d of %d", doc, err, n, lines)
		}
	})
}
