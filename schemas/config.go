package schemas

import (
	_ "embed"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

//go:embed config.schema.json
var configSchemaJSON []byte

// ConfigSchema returns the JSON Schema of SAG's configuration file.
func ConfigSchema() []byte { return slices.Clone(configSchemaJSON) }

// goDuration is the "go-duration" format of the config schema: a string that
// time.ParseDuration accepts. The schema's pattern gives editors the shape;
// this catches what a pattern cannot, such as overflow.
var goDuration = &jsonschema.Format{
	Name: "go-duration",
	Validate: func(v any) error {
		s, ok := v.(string)
		if !ok {
			return nil
		}
		if _, err := time.ParseDuration(s); err != nil {
			return errors.New("want a Go duration such as 30s, 5m or 1h30m")
		}
		return nil
	},
}

var configSchema = sync.OnceValues(func() (*Schema, error) {
	s, err := compile(configSchemaJSON, []*jsonschema.Format{goDuration})
	if err != nil {
		return nil, fmt.Errorf("config schema: %w", err)
	}
	return s, nil
})

// ValidateConfig validates a decoded configuration document against the
// embedded config schema. doc must be a JSON-shaped value: map[string]any,
// []any, string, bool, nil and numbers (YAML decoders' map[any]any and
// time.Time must be converted first). It returns nil or a *ValidationError.
func ValidateConfig(doc any) error {
	s, err := configSchema()
	if err != nil {
		return err
	}
	return s.Validate(doc)
}

//go:embed policy.schema.json
var policySchemaJSON []byte

// PolicySchema returns the JSON Schema of allow-list documents.
func PolicySchema() []byte { return slices.Clone(policySchemaJSON) }

var policySchema = sync.OnceValues(func() (*Schema, error) {
	s, err := compile(policySchemaJSON, nil)
	if err != nil {
		return nil, fmt.Errorf("policy schema: %w", err)
	}
	return s, nil
})

// ValidatePolicy validates a decoded allow-list document (JSON-shaped
// values, as for ValidateConfig) against the embedded policy schema. It
// returns nil or a *ValidationError.
func ValidatePolicy(doc any) error {
	s, err := policySchema()
	if err != nil {
		return err
	}
	return s.Validate(doc)
}
