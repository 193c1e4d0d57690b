package schemas

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// DecodeYAML decodes one YAML document into the JSON data model the
// schema validator takes: map[string]any, []any, string, bool, nil and finite
// numbers. An empty document (or only comments, or null) is an empty mapping.
func DecodeYAML(data []byte) (any, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var root yaml.Node
	if err := dec.Decode(&root); err != nil {
		if errors.Is(err, io.EOF) {
			return map[string]any{}, nil
		}
		return nil, locateSyntaxError(data, err)
	}
	if err := dec.Decode(new(yaml.Node)); !errors.Is(err, io.EOF) {
		if err != nil {
			return nil, locateSyntaxError(data, err)
		}
		return nil, errors.New("more than one YAML document")
	}
	// Unquoted scalars that look like timestamps decode as time.Time; they
	// can only be meant as strings here, and must stay as written.
	retagTimestamps(&root)
	var v any
	if err := root.Decode(&v); err != nil {
		return nil, err
	}
	if v == nil {
		return map[string]any{}, nil
	}
	return jsonValue(v, nil)
}

// locateSyntaxError rewrites a syntax error of the YAML decoder so that its
// line is the line where the parser met the problem.
//
// The decoder's own line is not that: for errors of the parser (as opposed
// to the scanner) it is 0-based, one less than the line it means; it is the
// line where the enclosing construct (a mapping, a list, a flow collection)
// starts, not where the problem is, whenever that construct does not start
// on the first line; and on the first line it is left out. The position of
// the problem is not exported, so the document is parsed again, one byte per
// read: the parser stops reading where it fails. For an unclosed bracket or
// quote, which the parser only notices where the document ends, and for a
// key without its ':', the line where that construct starts is added.
// Errors that are not syntax errors are returned unchanged.
func locateSyntaxError(data []byte, err error) error {
	msg, ok := strings.CutPrefix(err.Error(), "yaml: ")
	if !ok || strings.Contains(msg, "\n") {
		return err // not a syntax error: TypeErrors span lines and name their own
	}
	libLine := 0
	if rest, ok := strings.CutPrefix(msg, "line "); ok {
		n, after, found := strings.Cut(rest, ": ")
		if l, convErr := strconv.Atoi(n); found && convErr == nil {
			libLine, msg = l, after
		}
	}
	r := &byteReader{data: data}
	dec := yaml.NewDecoder(r)
	var again error
	for again == nil {
		again = dec.Decode(new(yaml.Node))
	}
	if again.Error() != err.Error() {
		return err // not reproduced: keep what the decoder said
	}
	// What the scanner read past the problem to recognise it: blanks and
	// line breaks, never a tab (a tab in the indentation is a problem).
	line := countLines(bytes.TrimRight(data[:r.n], " \r\n"))
	out := fmt.Sprintf("yaml: line %d: %s", line, msg)
	if c, ok := startsEarlier[msg]; ok && libLine > 0 {
		start := libLine
		if c.parser {
			start++ // the parser's lines are 0-based
		}
		if start < line {
			out += fmt.Sprintf(" ("+c.note+")", start)
		}
	}
	return errors.New(out)
}

// startsEarlier lists the YAML decoder's errors whose cause may start on an
// earlier line than the one where the parser notices it, with a note naming
// that line (the decoder's line for them, when the construct does not start
// on the first line) and whether the error comes from the parser, whose
// lines are 0-based, rather than from the scanner.
var startsEarlier = map[string]struct {
	note   string
	parser bool
}{
	"did not find expected ',' or ']'":    {"in the flow sequence [ … ] that starts on line %d", true},
	"did not find expected ',' or '}'":    {"in the flow mapping { … } that starts on line %d", true},
	"found unexpected end of stream":      {"in the quoted string that starts on line %d", false},
	"found unexpected document indicator": {"in the quoted string that starts on line %d", false},
	"could not find expected ':'":         {"after the key that starts on line %d", false},
}

// countLines counts the lines of b as YAML does: LF, CR and CRLF end a line.
func countLines(b []byte) int {
	n := 1
	for i, c := range b {
		if c == '\n' || c == '\r' && (i+1 == len(b) || b[i+1] != '\n') {
			n++
		}
	}
	return n
}

// byteReader returns its data one byte per Read, so that n tells how far
// the YAML parser read.
type byteReader struct {
	data []byte
	n    int
}

func (r *byteReader) Read(p []byte) (int, error) {
	if r.n >= len(r.data) {
		return 0, io.EOF
	}
	if len(p) == 0 {
		return 0, nil
	}
	p[0] = r.data[r.n]
	r.n++
	return 1, nil
}

func retagTimestamps(n *yaml.Node) {
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!timestamp" {
		n.Tag = "!!str"
	}
	for _, c := range n.Content {
		retagTimestamps(c)
	}
}

// jsonValue converts a value decoded from YAML into the JSON data model; path
// locates it for errors.
func jsonValue(v any, path []string) (any, error) {
	switch v := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(v))
		for k, e := range v {
			c, err := jsonValue(e, append(path, k))
			if err != nil {
				return nil, err
			}
			out[k] = c
		}
		return out, nil
	case map[any]any:
		out := make(map[string]any, len(v))
		for k, e := range v {
			ks := fmt.Sprint(k)
			if k == nil {
				ks = "null"
			}
			if _, dup := out[ks]; dup {
				return nil, fmt.Errorf("%skey %q appears twice", at(path), ks)
			}
			c, err := jsonValue(e, append(path, ks))
			if err != nil {
				return nil, err
			}
			out[ks] = c
		}
		return out, nil
	case []any:
		out := make([]any, len(v))
		for i, e := range v {
			c, err := jsonValue(e, append(path, strconv.Itoa(i)))
			if err != nil {
				return nil, err
			}
			out[i] = c
		}
		return out, nil
	case float64:
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return nil, fmt.Errorf("%sgot %v, want a finite number", at(path), v)
		}
		return v, nil
	case nil, string, bool, int, int64, uint64:
		return v, nil
	case time.Time: // retagTimestamps leaves none; kept for safety
		return v.Format(time.RFC3339Nano), nil
	default:
		return nil, fmt.Errorf("%sunsupported YAML value of type %T", at(path), v)
	}
}

// at renders path as an error prefix: "upstreams[1].url: ", or "" for the root.
func at(path []string) string {
	if len(path) == 0 {
		return ""
	}
	return FieldPath(path) + ": "
}

// SplitPointer splits a JSON pointer into unescaped tokens.
func SplitPointer(ptr string) []string {
	if ptr == "" {
		return nil
	}
	tokens := strings.Split(strings.TrimPrefix(ptr, "/"), "/")
	for i, t := range tokens {
		tokens[i] = strings.ReplaceAll(strings.ReplaceAll(t, "~1", "/"), "~0", "~")
	}
	return tokens
}

// FieldPath renders a path the way YAML documents are written:
// upstreams[1].url. Array indexes become [n]; keys that are not plain words
// are quoted.
func FieldPath(tokens []string) string {
	var b strings.Builder
	for _, t := range tokens {
		if _, err := strconv.ParseUint(t, 10, 64); err == nil {
			b.WriteString("[" + t + "]")
			continue
		}
		if b.Len() > 0 {
			b.WriteByte('.')
		}
		if isWord(t) {
			b.WriteString(t)
		} else {
			b.WriteString(strconv.Quote(t))
		}
	}
	return b.String()
}

func isWord(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if !(r == '_' || r == '-' || '0' <= r && r <= '9' || 'a' <= r && r <= 'z' || 'A' <= r && r <= 'Z') {
			return false
		}
	}
	return true
}
