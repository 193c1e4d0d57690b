package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/sag-gateway/sag/schemas"
)

// Load reads the YAML file at path and parses it (see Parse). Errors name the
// file by its path.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return Parse(path, data)
}

// Parse builds a Config from a YAML document; name is used in errors only.
// An empty document yields the defaults. The steps, each refusing what the
// next would not notice:
//
//  1. decode the YAML into plain values (one document only);
//  2. validate them against the config schema (schemas.ValidateConfig),
//     reporting every problem by field, e.g. "upstreams[1].url: …";
//  3. decode into Default() with unknown fields refused, so that omitted
//     fields keep their defaults;
//  4. Validate.
func Parse(name string, data []byte) (*Config, error) {
	doc, err := decodeDocument(data)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", name, err)
	}
	if err := schemas.ValidateConfig(doc); err != nil {
		return nil, fieldErrors("config "+name, err)
	}
	cfg := Default()
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(cfg); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("config %s: %w", name, err)
	}
	if err := cfg.Validate(); err != nil {
		return nil, prefixErrors("config "+name, err)
	}
	return cfg, nil
}

// ParseUpstreamFlag parses a --upstream flag, "NAME=URL", into an Upstream,
// validated exactly like an entry of the config file's upstreams list.
func ParseUpstreamFlag(s string) (Upstream, error) {
	name, url, ok := strings.Cut(s, "=")
	if !ok {
		return Upstream{}, fmt.Errorf("upstream flag %q: want NAME=URL", s)
	}
	u := Upstream{Name: name, URL: url}
	what := fmt.Sprintf("upstream flag %q", s)
	doc := map[string]any{"upstreams": []any{map[string]any{"name": name, "url": url}}}
	if err := schemas.ValidateConfig(doc); err != nil {
		return Upstream{}, fieldErrors(what, err, "upstreams[0].")
	}
	if err := u.validate(); err != nil {
		return Upstream{}, prefixErrors(what, err)
	}
	return u, nil
}

// decodeDocument decodes one YAML document into the JSON data model the
// schema validator takes: map[string]any, []any, string, bool, nil and finite
// numbers. An empty document (or only comments, or null) is an empty mapping.
func decodeDocument(data []byte) (any, error) {
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
	return fieldPath(path) + ": "
}

// fieldErrors turns schema problems into one error per problem, each naming
// its field: "config sag.yaml: upstreams[1].url: …". within prefixes paths
// that ParseUpstreamFlag validated inside a wrapper document and strips it.
func fieldErrors(what string, err error, within ...string) error {
	var verr *schemas.ValidationError
	if !errors.As(err, &verr) {
		return fmt.Errorf("%s: %w", what, err)
	}
	errs := make([]error, 0, len(verr.Problems))
	for _, p := range verr.Problems {
		field := fieldPath(splitPointer(p.Pointer))
		for _, w := range within {
			field = strings.TrimPrefix(field, w)
		}
		if field == "" {
			errs = append(errs, fmt.Errorf("%s: %s", what, p.Message))
			continue
		}
		errs = append(errs, fmt.Errorf("%s: %s: %s", what, field, p.Message))
	}
	return errors.Join(errs...)
}

// prefixErrors prefixes each error that Validate joined.
func prefixErrors(what string, err error) error {
	errs := unjoin(err)
	out := make([]error, len(errs))
	for i, e := range errs {
		out[i] = fmt.Errorf("%s: %w", what, e)
	}
	return errors.Join(out...)
}

// splitPointer splits a JSON pointer into unescaped tokens.
func splitPointer(ptr string) []string {
	if ptr == "" {
		return nil
	}
	tokens := strings.Split(strings.TrimPrefix(ptr, "/"), "/")
	for i, t := range tokens {
		tokens[i] = strings.ReplaceAll(strings.ReplaceAll(t, "~1", "/"), "~0", "~")
	}
	return tokens
}

// fieldPath renders a path the way the config file is written:
// upstreams[1].url. Array indexes become [n]; keys that are not plain words
// are quoted.
func fieldPath(tokens []string) string {
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
