package schemas

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"github.com/santhosh-tekuri/jsonschema/v6/kind"
)

// resourceURL is the location under which a compiled document is registered.
// It only serves as a base for resolving references inside the document;
// nothing is ever fetched from it (see refuseLoader).
const resourceURL = "https://schemas.sag.invalid/schema.json"

// Schema is a compiled JSON Schema. It is safe for concurrent use.
type Schema struct {
	s *jsonschema.Schema
}

// Compile compiles a JSON Schema document (draft 2020-12 unless $schema says
// otherwise) given as raw JSON. References may point inside the document or to
// the standard metaschemas; any other $ref (remote or file) is an error.
func Compile(raw []byte) (*Schema, error) {
	return compile(raw, nil)
}

// compile compiles raw with the given extra formats; when formats is non-empty
// format assertions are enabled.
func compile(raw []byte, formats []*jsonschema.Format) (s *Schema, err error) {
	// The compiler is a third-party parser fed with schemas that upstreams
	// supply; a panic in it must not take the gateway down.
	defer func() {
		if r := recover(); r != nil {
			s, err = nil, fmt.Errorf("compile schema: internal error: %v", r)
		}
	}()
	doc, err := DecodeJSON(raw)
	if err != nil {
		return nil, fmt.Errorf("compile schema: %w", err)
	}
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	c.UseLoader(refuseLoader{})
	for _, f := range formats {
		c.RegisterFormat(f)
	}
	if len(formats) > 0 {
		c.AssertFormat()
	}
	if err := c.AddResource(resourceURL, doc); err != nil {
		return nil, fmt.Errorf("compile schema: %w", err)
	}
	js, err := c.Compile(resourceURL)
	if err != nil {
		return nil, fmt.Errorf("compile schema: %w", err)
	}
	return &Schema{s: js}, nil
}

// errRemoteRef is what the loader answers when a schema references a
// document other than itself; Compile reports it inside the library's load error.
var errRemoteRef = errors.New("references outside the schema document are not allowed")

// refuseLoader is the compiler's only URL loader: it refuses everything, so
// compiling never touches the network or the filesystem.
type refuseLoader struct{}

func (refuseLoader) Load(string) (any, error) { return nil, errRemoteRef }

var _ jsonschema.URLLoader = refuseLoader{}

// DecodeJSON decodes one JSON value from raw, keeping numbers as json.Number
// so that integers beyond 2^53 keep their precision (the form the validator
// works best with). Trailing data after the value is an error.
func DecodeJSON(raw []byte) (any, error) {
	return jsonschema.UnmarshalJSON(bytes.NewReader(raw))
}

// Validate validates an already-decoded JSON value: the result of
// json.Unmarshal into an any, or of DecodeJSON (preferred: it keeps numbers
// exact). Maps must be map[string]any and arrays []any. It returns nil or a
// *ValidationError; it fails closed, so a value the validator cannot handle
// (a Go type outside the JSON model, or an internal error) is a problem too.
func (s *Schema) Validate(v any) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = &ValidationError{Problems: []Problem{{Message: fmt.Sprintf("internal validator error: %v", r)}}}
		}
	}()
	err = s.s.Validate(v)
	if err == nil {
		return nil
	}
	var verr *jsonschema.ValidationError
	if !errors.As(err, &verr) {
		return &ValidationError{Problems: []Problem{{Message: err.Error()}}}
	}
	return newValidationError(verr)
}

// ValidateJSON decodes raw JSON (numbers preserved) and validates it. A
// document that is not valid JSON is reported as a problem at the root.
func (s *Schema) ValidateJSON(raw []byte) error {
	v, err := DecodeJSON(raw)
	if err != nil {
		return &ValidationError{Problems: []Problem{{Message: "invalid JSON: " + err.Error()}}}
	}
	return s.Validate(v)
}

// ValidationError lists why a value does not match a schema.
type ValidationError struct {
	// Problems are the leaf causes, sorted by Pointer (array indexes in
	// numeric order) and then by Message, without duplicates.
	Problems []Problem
}

// Problem is one reason a value does not match a schema.
type Problem struct {
	// Pointer is the JSON pointer (RFC 6901) of the offending value in the
	// instance; "" is the root. For a property that additionalProperties (or
	// unevaluatedProperties) forbids, it points at that property.
	Pointer string
	// Message says what is wrong, e.g. "got string, want number".
	Message string
}

// String renders the problem as "/pointer: message", or just the message at
// the root.
func (p Problem) String() string {
	if p.Pointer == "" {
		return p.Message
	}
	return p.Pointer + ": " + p.Message
}

// Error joins the problems: "/path: message; /other: message". A problem at
// the root has no path prefix.
func (e *ValidationError) Error() string {
	parts := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		parts[i] = p.String()
	}
	return strings.Join(parts, "; ")
}

func newValidationError(verr *jsonschema.ValidationError) *ValidationError {
	var problems []Problem
	collect(verr, &problems)
	slices.SortFunc(problems, compareProblems)
	problems = slices.Compact(problems)
	return &ValidationError{Problems: problems}
}

// collect appends the leaves of the cause tree.
func collect(e *jsonschema.ValidationError, out *[]Problem) {
	if len(e.Causes) > 0 && !isWhole(e.ErrorKind) {
		for _, c := range e.Causes {
			collect(c, out)
		}
		return
	}
	ptr := pointer(e.InstanceLocation)
	switch k := e.ErrorKind.(type) {
	case *kind.AdditionalProperties:
		for _, name := range k.Properties {
			*out = append(*out, Problem{Pointer: ptr + "/" + escape(name), Message: "property not allowed"})
		}
	default:
		*out = append(*out, Problem{Pointer: ptr, Message: describe(e.ErrorKind)})
	}
}

// isWhole reports kinds whose causes are the parts that failed as expected
// (for contains, the items that do not match): the kind itself is the problem.
func isWhole(k jsonschema.ErrorKind) bool {
	switch k.(type) {
	case *kind.Contains, *kind.MinContains:
		return true
	}
	return false
}

func pointer(tokens []string) string {
	var b strings.Builder
	for _, t := range tokens {
		b.WriteByte('/')
		b.WriteString(escape(t))
	}
	return b.String()
}

var tokenEscaper = strings.NewReplacer("~", "~0", "/", "~1")

func escape(token string) string { return tokenEscaper.Replace(token) }

// compareProblems orders by pointer, token by token (numeric tokens as
// numbers, before names), then by message.
func compareProblems(a, b Problem) int {
	ta, tb := strings.Split(a.Pointer, "/"), strings.Split(b.Pointer, "/")
	for i := 0; i < len(ta) && i < len(tb); i++ {
		if c := compareTokens(ta[i], tb[i]); c != 0 {
			return c
		}
	}
	if c := len(ta) - len(tb); c != 0 {
		return c
	}
	return strings.Compare(a.Message, b.Message)
}

func compareTokens(a, b string) int {
	na, errA := strconv.ParseUint(a, 10, 64)
	nb, errB := strconv.ParseUint(b, 10, 64)
	switch {
	case errA == nil && errB == nil:
		if na != nb {
			if na < nb {
				return -1
			}
			return 1
		}
		return strings.Compare(a, b) // "01" vs "1"
	case errA == nil:
		return -1
	case errB == nil:
		return 1
	}
	return strings.Compare(a, b)
}
