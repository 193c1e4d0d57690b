package schemas

import (
	"fmt"
	"math/big"
	"strconv"
	"strings"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"github.com/santhosh-tekuri/jsonschema/v6/kind"
	"golang.org/x/text/language"
	"golang.org/x/text/message"
)

// printer renders the validator's own messages in English. It is only given
// kinds whose messages hold no numbers: the x/text printer formats numbers for
// people ("1,024", "9.007×10¹⁵"), which is wrong for values that agents and
// operators copy back into documents, so numeric kinds are rendered below.
var printer = message.NewPrinter(language.English)

// describe says what a leaf error kind means, in lowercase English.
func describe(k jsonschema.ErrorKind) string {
	switch k := k.(type) {
	case *kind.FalseSchema:
		return "not allowed"
	case *kind.Minimum:
		return fmt.Sprintf("minimum: got %s, want %s", rat(k.Got), rat(k.Want))
	case *kind.Maximum:
		return fmt.Sprintf("maximum: got %s, want %s", rat(k.Got), rat(k.Want))
	case *kind.ExclusiveMinimum:
		return fmt.Sprintf("exclusiveMinimum: got %s, want more than %s", rat(k.Got), rat(k.Want))
	case *kind.ExclusiveMaximum:
		return fmt.Sprintf("exclusiveMaximum: got %s, want less than %s", rat(k.Got), rat(k.Want))
	case *kind.MultipleOf:
		return fmt.Sprintf("multipleOf: got %s, want a multiple of %s", rat(k.Got), rat(k.Want))
	case *kind.MinLength:
		return fmt.Sprintf("minLength: got %d, want %d", k.Got, k.Want)
	case *kind.MaxLength:
		return fmt.Sprintf("maxLength: got %d, want %d", k.Got, k.Want)
	case *kind.MinItems:
		return fmt.Sprintf("minItems: got %d, want %d", k.Got, k.Want)
	case *kind.MaxItems:
		return fmt.Sprintf("maxItems: got %d, want %d", k.Got, k.Want)
	case *kind.MinProperties:
		return fmt.Sprintf("minProperties: got %d, want %d", k.Got, k.Want)
	case *kind.MaxProperties:
		return fmt.Sprintf("maxProperties: got %d, want %d", k.Got, k.Want)
	case *kind.AdditionalItems:
		return fmt.Sprintf("last %d additional items not allowed", k.Count)
	case *kind.UniqueItems:
		return fmt.Sprintf("items at %d and %d are equal", k.Duplicates[0], k.Duplicates[1])
	case *kind.MinContains:
		return fmt.Sprintf("minContains: %d items match contains, want at least %d", len(k.Got), k.Want)
	case *kind.MaxContains:
		return fmt.Sprintf("maxContains: %d items match contains, want at most %d", len(k.Got), k.Want)
	case *kind.OneOf:
		if len(k.Subschemas) >= 2 {
			return fmt.Sprintf("oneOf: subschemas %d and %d both match", k.Subschemas[0], k.Subschemas[1])
		}
		return "oneOf: no subschema matches"
	}
	return k.LocalizedString(printer)
}

// rat renders an exact number: integers in full, others in Go's shortest
// float form.
func rat(r *big.Rat) string {
	if r == nil {
		return "?"
	}
	if r.IsInt() {
		return r.Num().String()
	}
	f, _ := r.Float64()
	return strings.TrimSuffix(strconv.FormatFloat(f, 'g', -1, 64), ".0")
}
