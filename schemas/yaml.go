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
		return nil, err
	}
	if err := dec.Decode(new(yaml.Node)); !errors.Is(err, io.EOF) {
		if err != nil {
			return nil, err
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
