package policy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/sag-gateway/sag/schemas"
)

// Document is an allow-list: rules that allow principals to use tools,
// prompts and resources (schemas/policy.schema.json).
type Document struct {
	ID      string `json:"id"`
	Version string `json:"version,omitempty"`
	// Upstream, when set, confines every rule to that upstream: documents
	// a tool owner registers with an upstream have it.
	Upstream    string                `json:"upstream,omitempty"`
	DLPProfiles map[string]DLPProfile `json:"dlp_profiles,omitempty"`
	// ContentDLP names the profile applied to resource contents and
	// prompts of the document's upstream (every upstream without one).
	ContentDLP string `json:"content_dlp,omitempty"`
	Rules      []Rule `json:"rules"`
}

// Rule allows the principals it names to call the tools, get the prompts
// and read the resources it names, under its conditions and obligations.
type Rule struct {
	ID          string          `json:"id"`
	Description string          `json:"description,omitempty"`
	Upstream    string          `json:"upstream,omitempty"`
	Tools       []string        `json:"tools,omitempty"`
	Prompts     []string        `json:"prompts,omitempty"`
	Resources   []string        `json:"resources,omitempty"`
	Principals  Principals      `json:"principals"`
	InputSchema json.RawMessage `json:"input_schema,omitempty"`
	// OutputSchema constrains structuredContent on top of the upstream's
	// outputSchema.
	OutputSchema json.RawMessage `json:"output_schema,omitempty"`
	Consent      string          `json:"consent,omitempty"`
	// Approvers may decide the rule's consent requests (default: the
	// session's user); ConsentTTL is how long a request waits (default
	// 5m); ConsentEdits lets approvers replace the arguments.
	Approvers    *Principals `json:"approvers,omitempty"`
	ConsentTTL   string      `json:"consent_ttl,omitempty"`
	ConsentEdits bool        `json:"consent_edits,omitempty"`
	RateLimit    *RateLimit  `json:"rate_limit,omitempty"`
	DLP          string      `json:"dlp,omitempty"`
	Condition    string      `json:"condition,omitempty"`
}

// Principals says who a rule is for; every kind listed must match, and an
// absent kind matches anyone.
type Principals struct {
	Users   []string `json:"users,omitempty"`
	Groups  []string `json:"groups,omitempty"`
	Agents  []string `json:"agents,omitempty"`
	Issuers []string `json:"issuers,omitempty"`
	Scopes  []string `json:"scopes,omitempty"`
	// Claims are token claims that must all have the given value (a claim
	// holding a list matches when the list contains it).
	Claims map[string]string `json:"claims,omitempty"`
}

// RateLimit is a token bucket per (principal, tool).
type RateLimit struct {
	PerMinute int `json:"per_minute"`
	Burst     int `json:"burst,omitempty"`
}

// Values of Rule.Consent.
const (
	ConsentAlways = "always"
	ConsentNever  = "never"
	ConsentAuto   = "auto"
)

// Parse reads an allow-list from YAML (or JSON, which is YAML), validates it
// against the policy schema and returns it. name is used in errors only;
// every problem is reported with its field, e.g. "rules[0].tools: …".
// Rules are not compiled here: NewEngine does that and reports bad schemas,
// conditions and DLP patterns.
func Parse(name string, data []byte) (*Document, error) {
	doc, err := schemas.DecodeYAML(data)
	if err != nil {
		return nil, fmt.Errorf("policy %s: %w", name, err)
	}
	if err := schemas.ValidatePolicy(doc); err != nil {
		var verr *schemas.ValidationError
		if !errors.As(err, &verr) {
			return nil, fmt.Errorf("policy %s: %w", name, err)
		}
		errs := make([]error, 0, len(verr.Problems))
		for _, p := range verr.Problems {
			field := schemas.FieldPath(schemas.SplitPointer(p.Pointer))
			if field == "" {
				field = "(document)"
			}
			errs = append(errs, fmt.Errorf("policy %s: %s: %s", name, field, p.Message))
		}
		return nil, errors.Join(errs...)
	}
	raw, err := json.Marshal(doc)
	if err != nil {
		return nil, fmt.Errorf("policy %s: %w", name, err)
	}
	var d Document
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&d); err != nil {
		return nil, fmt.Errorf("policy %s: %w", name, err)
	}
	seen := map[string]bool{}
	for i, r := range d.Rules {
		if seen[r.ID] {
			return nil, fmt.Errorf("policy %s: rules[%d].id: %q is used twice", name, i, r.ID)
		}
		seen[r.ID] = true
	}
	return &d, nil
}
