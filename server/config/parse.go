package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
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
