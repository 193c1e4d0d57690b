package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

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
	doc, err := schemas.DecodeYAML(data)
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
		field := schemas.FieldPath(schemas.SplitPointer(p.Pointer))
		for _, w := range within {
			field = strings.TrimPrefix(field, w)
		}
		msg := patternInWords(p.Message)
		if field == "" {
			errs = append(errs, fmt.Errorf("%s: %s", what, msg))
			continue
		}
		errs = append(errs, fmt.Errorf("%s: %s: %s", what, field, msg))
	}
	return errors.Join(errs...)
}

// patternWords says in words what each pattern of the config schema
// accepts; a test checks that every pattern of the schema is here.
var patternWords = map[string]string{
	`^(\[[0-9A-Fa-f:.%a-zA-Z]+\]|[^\s:\[\]]*):[0-9]{1,5}$`: "must be host:port, e.g. 127.0.0.1:8080, [::1]:8080 or :8080",
	`^https?://[^\s?#]+$`:         "must be an http(s):// URL without query or fragment",
	`^https?://[^\s/?#]+$`:        "must be an origin: http(s)://HOST[:PORT], without a path",
	`^https?://[^\s]+$`:           "must be an http(s):// URL",
	`^[\x21\x23-\x5B\x5D-\x7E]+$`: "must be a scope: printable ASCII without spaces, '\"' or '\\'",
	`^[a-z0-9._-]+$`:              "must be a trust domain: lowercase letters, digits, '.', '_' and '-'",
	`^(unix|tcp)://.+$`:           "must be unix:///PATH or tcp://HOST:PORT",
	`^(([0-9]+(\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h))+$`: "must be a Go duration such as 30s, 5m or 1h30m",
	`^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$`:                        "must be 1 to 64 letters, digits, '_' or '-', starting with a letter or digit",
	`^[A-Za-z0-9._@-]{1,64}$`:                                 "must be 1 to 64 letters, digits, '.', '_', '@' or '-'",
	`^\$argon2id\$`:                                           "must be an argon2id hash ($argon2id$v=19$…; make one with sag hash-password)",
	`^((sse\+)?https?://[^\s]+|stdio:.*\S.*)$`:                "must be " + upstreamURLForms,
	`^[A-Za-z_][A-Za-z0-9_]*$`:                                "must be an environment variable name: letters, digits and '_', not starting with a digit",
	`^[A-Za-z0-9_-]{43}$`:                                     "must be a JWK thumbprint (RFC 7638): 43 base64url characters",
}

// patternInWords replaces the schema validator's message for a value that
// does not match a pattern, which shows the regular expression, with what
// the field accepts in words: "'-x' must be 1 to 64 letters, …". A value
// with an '@' is left out, as it may be a URL with credentials. Other
// messages are returned as they are.
func patternInWords(msg string) string {
	const marker = " does not match pattern "
	i := strings.LastIndex(msg, marker)
	if i < 0 {
		return msg
	}
	value, pattern := msg[:i], msg[i+len(marker):]
	words := "is not in the form this field takes (see schemas/config.schema.json)"
	for p, w := range patternWords {
		if pattern == quotePattern(p) {
			words = w
			break
		}
	}
	if strings.Contains(value, "@") {
		return words
	}
	return value + " " + words
}

// quotePattern quotes a pattern as the schema validator does in its
// messages: Go-quoted, in single quotes.
func quotePattern(s string) string {
	q := strconv.Quote(s)
	q = strings.ReplaceAll(q, `\"`, `"`)
	q = strings.ReplaceAll(q, `'`, `\'`)
	return "'" + q[1:len(q)-1] + "'"
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
