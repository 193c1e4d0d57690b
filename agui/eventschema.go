package agui

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/big"
	"slices"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"github.com/santhosh-tekuri/jsonschema/v6/kind"
)

// The AG-UI 1.0 event schema: events.schema.json is the JSON Schema
// equivalent of EventSchema in the npm package @ag-ui/core 1.0.0 (its zod
// definitions), one definition per event type, discriminated by type.

//go:embed events.schema.json
var eventSchemaJSON []byte

// eventSchemaURL is the location the schema is registered under. It only
// serves as a base for the schema's references to its own definitions;
// nothing is ever fetched from it (see noLoader).
const eventSchemaURL = "https://schemas.sag.invalid/agui/events.schema.json"

// maxEventSize is the largest event CheckEvent accepts, in bytes.
const maxEventSize = 1 << 20

// eventTypes are the values of type the schema knows, from its EventType
// definition.
var eventTypes = sync.OnceValue(func() map[string]bool {
	var doc struct {
		Defs struct {
			EventType struct {
				Enum []string `json:"enum"`
			} `json:"EventType"`
		} `json:"$defs"`
	}
	types := map[string]bool{}
	if json.Unmarshal(eventSchemaJSON, &doc) == nil {
		for _, t := range doc.Defs.EventType.Enum {
			types[t] = true
		}
	}
	return types
})

var eventSchema = sync.OnceValues(func() (*jsonschema.Schema, error) {
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(eventSchemaJSON))
	if err != nil {
		return nil, fmt.Errorf("AG-UI event schema: %w", err)
	}
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	c.UseLoader(noLoader{})
	if err := c.AddResource(eventSchemaURL, doc); err != nil {
		return nil, fmt.Errorf("AG-UI event schema: %w", err)
	}
	s, err := c.Compile(eventSchemaURL)
	if err != nil {
		return nil, fmt.Errorf("AG-UI event schema: %w", err)
	}
	return s, nil
})

// noLoader is the compiler's only URL loader: it refuses everything, so
// compiling never touches the network or the filesystem.
type noLoader struct{}

func (noLoader) Load(string) (any, error) {
	return nil, errors.New("references outside the AG-UI event schema are not allowed")
}

// CheckEvent checks one event of an upstream AG-UI agent (the JSON of one SSE
// data field) against the AG-UI 1.0 event schema, and returns nil for a valid
// event. It refuses events over 1 MiB, anything but a JSON object, and
// unknown types. Its error is one short line that names the event type when
// it is a known one and the first problem found, e.g. "AG-UI event
// TOOL_CALL_START: missing property toolCallName". The line holds no value of
// the event beyond the type (an unknown type truncated and ASCII-escaped), so
// it can be shown to the user. It is safe for concurrent use.
//
// Numbers are checked as JavaScript's JSON.parse reads them (IEEE doubles),
// as the reference zod schemas see them: 1.0000000000000001 is the integer 1.
func CheckEvent(raw []byte) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = errors.New("AG-UI event: internal validator error")
		}
	}()
	if len(raw) > maxEventSize {
		return errors.New("AG-UI event: larger than 1 MiB")
	}
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(raw))
	if err != nil {
		return errors.New("AG-UI event: not valid JSON")
	}
	obj, ok := v.(map[string]any)
	if !ok {
		return errors.New("AG-UI event: not a JSON object")
	}
	t, present := obj["type"]
	if !present {
		return errors.New("AG-UI event: missing property type")
	}
	typ, ok := t.(string)
	if !ok {
		return errors.New("AG-UI event: type is not a string")
	}
	if !eventTypes()[typ] {
		return fmt.Errorf("AG-UI event: unknown type %s", strconv.QuoteToASCII(truncate(typ, 40)))
	}
	s, err := eventSchema()
	if err != nil {
		return errors.New("AG-UI event: schema unavailable")
	}
	verr := s.Validate(jsNumbers(v))
	if verr == nil {
		return nil
	}
	var ve *jsonschema.ValidationError
	if !errors.As(verr, &ve) {
		return fmt.Errorf("AG-UI event %s: invalid", typ)
	}
	var problems []string
	leafProblems(ve, &problems)
	slices.Sort(problems)
	problems = slices.Compact(problems)
	switch len(problems) {
	case 0:
		return fmt.Errorf("AG-UI event %s: invalid", typ)
	case 1:
		return fmt.Errorf("AG-UI event %s: %s", typ, problems[0])
	case 2:
		return fmt.Errorf("AG-UI event %s: %s (and 1 more problem)", typ, problems[0])
	}
	return fmt.Errorf("AG-UI event %s: %s (and %d more problems)", typ, problems[0], len(problems)-1)
}

// jsNumbers replaces, in place, every number of the decoded value v with the
// double JSON.parse makes of it, and returns v. A number beyond the double
// range (JavaScript's Infinity) becomes ±1e400, which is outside every range
// the schema allows. Besides matching zod, this keeps numbers short: the
// validator parses them as exact rationals, which is slow for a number with
// a million digits.
func jsNumbers(v any) any {
	switch v := v.(type) {
	case map[string]any:
		for k, x := range v {
			v[k] = jsNumbers(x)
		}
	case []any:
		for i, x := range v {
			v[i] = jsNumbers(x)
		}
	case json.Number:
		f, _ := strconv.ParseFloat(string(v), 64) // ±Inf on overflow
		switch {
		case math.IsInf(f, 1):
			return json.Number("1e400")
		case math.IsInf(f, -1):
			return json.Number("-1e400")
		}
		return json.Number(strconv.FormatFloat(f, 'g', -1, 64))
	}
	return v
}

// leafProblems appends one line per leaf of the validator's cause tree.
func leafProblems(e *jsonschema.ValidationError, out *[]string) {
	if len(e.Causes) > 0 {
		for _, c := range e.Causes {
			leafProblems(c, out)
		}
		return
	}
	at := strings.Join(escapeTokens(e.InstanceLocation), "/")
	if k, ok := e.ErrorKind.(*kind.Required); ok {
		for _, name := range k.Missing {
			p := escapeToken(name)
			if at != "" {
				p = at + "/" + p
			}
			*out = append(*out, "missing property "+p)
		}
		return
	}
	msg := describeKind(e.ErrorKind)
	if at == "" {
		*out = append(*out, msg)
		return
	}
	*out = append(*out, at+": "+msg)
}

// describeKind says what a leaf error means. It uses only what the schema
// says, never the offending value.
func describeKind(k jsonschema.ErrorKind) string {
	switch k := k.(type) {
	case *kind.Type:
		return fmt.Sprintf("got %s, want %s", k.Got, strings.Join(k.Want, " or "))
	case *kind.Enum:
		want := make([]string, len(k.Want))
		for i, w := range k.Want {
			want[i] = fmt.Sprint(w)
		}
		return "must be one of " + strings.Join(want, ", ")
	case *kind.Const:
		if s, ok := k.Want.(string); ok {
			return fmt.Sprintf("must be %q", s)
		}
		return "has the wrong value"
	case *kind.Pattern:
		return "not a JSON Pointer" // the schema's only pattern
	case *kind.Not:
		return "must not be null"
	case *kind.Minimum:
		return "must be at least " + ratString(k.Want)
	case *kind.Maximum:
		return "must be at most " + ratString(k.Want)
	case *kind.MinItems:
		if k.Want == 1 {
			return "must not be empty"
		}
		return fmt.Sprintf("must have at least %d items", k.Want)
	}
	return "invalid value"
}

func ratString(r *big.Rat) string {
	if r == nil {
		return "?"
	}
	return r.RatString()
}

func escapeTokens(tokens []string) []string {
	out := make([]string, len(tokens))
	for i, t := range tokens {
		out[i] = escapeToken(t)
	}
	return out
}

var pointerEscaper = strings.NewReplacer("~", "~0", "/", "~1")

func escapeToken(t string) string { return pointerEscaper.Replace(t) }

// truncate shortens s to at most n bytes, on a rune boundary, marking a cut
// with "...".
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "..."
}
