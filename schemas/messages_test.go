package schemas

import (
	"reflect"
	"testing"
)

// TestMessages pins the messages SAG renders itself: numbers are written as
// in JSON, never in a locale's notation ("1,024", "9.0×10¹⁵").
func TestMessages(t *testing.T) {
	tests := []struct {
		schema, instance string
		want             []Problem
	}{
		{`{"minimum": 1024}`, `10`, []Problem{{"", "minimum: got 10, want 1024"}}},
		{`{"maximum": 1.5}`, `2.25`, []Problem{{"", "maximum: got 2.25, want 1.5"}}},
		{`{"exclusiveMinimum": 0}`, `0`, []Problem{{"", "exclusiveMinimum: got 0, want more than 0"}}},
		{`{"exclusiveMaximum": 1000000}`, `1000000`, []Problem{{"", "exclusiveMaximum: got 1000000, want less than 1000000"}}},
		{`{"multipleOf": 0.01}`, `12.345`, []Problem{{"", "multipleOf: got 12.345, want a multiple of 0.01"}}},
		{`{"minLength": 2000}`, `"x"`, []Problem{{"", "minLength: got 1, want 2000"}}},
		{`{"maxLength": 1}`, `"xyz"`, []Problem{{"", "maxLength: got 3, want 1"}}},
		{`{"minItems": 1}`, `[]`, []Problem{{"", "minItems: got 0, want 1"}}},
		{`{"maxItems": 1}`, `[1, 2]`, []Problem{{"", "maxItems: got 2, want 1"}}},
		{`{"minProperties": 1}`, `{}`, []Problem{{"", "minProperties: got 0, want 1"}}},
		{`{"maxProperties": 0}`, `{"a": 1}`, []Problem{{"", "maxProperties: got 1, want 0"}}},
		{`{"uniqueItems": true}`, `[1, 2, 1.0]`, []Problem{{"", "items at 0 and 2 are equal"}}},
		{`{"contains": {"const": 1}, "minContains": 2}`, `[1, 2]`, []Problem{{"", "minContains: 1 items match contains, want at least 2"}}},
		{`{"contains": {"const": 1}, "maxContains": 1}`, `[1, 1]`, []Problem{{"", "maxContains: 2 items match contains, want at most 1"}}},
		{`{"oneOf": [{"type": "integer"}, {"type": "number"}]}`, `1`, []Problem{{"", "oneOf: subschemas 0 and 1 both match"}}},
		{`{"oneOf": [{"type": "string"}, {"type": "boolean"}]}`, `1`,
			[]Problem{{"", "got number, want boolean"}, {"", "got number, want string"}}},
		{`{"properties": {"a": false}}`, `{"a": 1}`, []Problem{{"/a", "not allowed"}}},
		{`{"const": "x"}`, `"y"`, []Problem{{"", "value must be 'x'"}}},
		{`{"unevaluatedProperties": false, "properties": {"a": true}}`, `{"a": 1, "b": 2}`, []Problem{{"/b", "not allowed"}}},
	}
	for _, tt := range tests {
		t.Run(tt.schema, func(t *testing.T) {
			err := mustCompile(t, tt.schema).ValidateJSON([]byte(tt.instance))
			if got := problems(t, err); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("problems:\n got %q\nwant %q", got, tt.want)
			}
		})
	}
}
