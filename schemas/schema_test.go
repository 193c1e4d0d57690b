package schemas

import (
	"encoding/json"
	"errors"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
)

const objectSchema = `{
  "type": "object",
  "properties": {
    "name":  {"type": "string", "minLength": 1},
    "count": {"type": "integer", "minimum": 0},
    "ratio": {"type": "number"},
    "tags":  {"type": "array", "items": {"type": "string"}},
    "mode":  {"enum": ["a", "b"]},
    "id":    {"type": "integer", "maximum": 9007199254740992},
    "deep":  {"type": "object", "properties": {"x~y/z": {"type": "boolean"}}, "additionalProperties": false}
  },
  "required": ["name"],
  "additionalProperties": false
}`

func TestValidate(t *testing.T) {
	s := mustCompile(t, objectSchema)
	tests := []struct {
		name     string
		instance string
		want     []Problem // nil: valid
	}{
		{name: "valid", instance: `{"name": "x", "count": 3, "ratio": 0.5, "tags": ["a"], "mode": "b"}`},
		{name: "integer written as 1.0 is an integer", instance: `{"name": "x", "count": 1.0}`},
		{name: "number for integer", instance: `{"name": "x", "count": 1.5}`,
			want: []Problem{{"/count", "got number, want integer"}}},
		{name: "string for number", instance: `{"name": "x", "ratio": "0.5"}`,
			want: []Problem{{"/ratio", "got string, want number"}}},
		{name: "integer is a number", instance: `{"name": "x", "ratio": 2}`},
		{name: "minimum", instance: `{"name": "x", "count": -1}`,
			want: []Problem{{"/count", "minimum: got -1, want 0"}}},
		{name: "large integers keep their precision", instance: `{"name": "x", "id": 9007199254740993}`,
			want: []Problem{{"/id", "maximum: got 9007199254740993, want 9007199254740992"}}},
		{name: "missing required at root", instance: `{}`,
			want: []Problem{{"", "missing property 'name'"}}},
		{name: "wrong root type", instance: `[]`,
			want: []Problem{{"", "got array, want object"}}},
		{name: "enum", instance: `{"name": "x", "mode": "c"}`,
			want: []Problem{{"/mode", "value must be one of 'a', 'b'"}}},
		{name: "additional properties point at each property", instance: `{"name": "x", "zz": 1, "aa": 2}`,
			want: []Problem{{"/aa", "property not allowed"}, {"/zz", "property not allowed"}}},
		{name: "pointer tokens are escaped", instance: `{"name": "x", "deep": {"x~y/z": 1, "a/b": 2}}`,
			want: []Problem{{"/deep/a~1b", "property not allowed"}, {"/deep/x~0y~1z", "got number, want boolean"}}},
		{name: "many problems sorted with numeric indexes", instance: `{"name": "", "tags": ["a",1,"b","c","d","e","f","g","h","i",2], "count": "x"}`,
			want: []Problem{
				{"/count", "got string, want integer"},
				{"/name", "minLength: got 0, want 1"},
				{"/tags/1", "got number, want string"},
				{"/tags/10", "got number, want string"},
			}},
		{name: "invalid JSON", instance: `{"name": "x"`,
			want: []Problem{{"", "invalid JSON: unexpected EOF"}}},
		{name: "trailing data", instance: `{"name": "x"} {}`,
			want: []Problem{{"", "invalid JSON: invalid character after top-level value"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := s.ValidateJSON([]byte(tt.instance))
			if got := problems(t, err); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("problems:\n got %q\nwant %q", got, tt.want)
			}
		})
	}
}

func TestValidateDecodedValues(t *testing.T) {
	s := mustCompile(t, objectSchema)
	// encoding/json's float64 numbers work as well as DecodeJSON's json.Number.
	var v any
	if err := json.Unmarshal([]byte(`{"name": "x", "count": 2, "ratio": 1e300}`), &v); err != nil {
		t.Fatal(err)
	}
	if err := s.Validate(v); err != nil {
		t.Errorf("Validate(float64 numbers) = %v", err)
	}
	// So do Go integers, as a YAML decoder produces them.
	if err := s.Validate(map[string]any{"name": "x", "count": 7, "id": uint64(1)}); err != nil {
		t.Errorf("Validate(Go ints) = %v", err)
	}
	// Go values outside the JSON model are problems, not panics.
	err := s.Validate(map[string]any{"name": struct{}{}})
	if got := problems(t, err); len(got) != 1 || got[0].Pointer != "/name" {
		t.Errorf("Validate(struct) problems = %q, want one at /name", got)
	}
	d, err := DecodeJSON([]byte(`{"n": 12345678901234567890}`))
	if err != nil {
		t.Fatal(err)
	}
	if n := d.(map[string]any)["n"]; n != json.Number("12345678901234567890") {
		t.Errorf("DecodeJSON kept %#v, want the json.Number", n)
	}
}

func TestValidationErrorString(t *testing.T) {
	err := &ValidationError{Problems: []Problem{{"", "got array, want object"}, {"/a/0", "got string, want number"}}}
	const want = "got array, want object; /a/0: got string, want number"
	if got := err.Error(); got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	var verr *ValidationError
	if !errors.As(mustCompile(t, `{"type": "string"}`).ValidateJSON([]byte(`1`)), &verr) {
		t.Errorf("ValidateJSON error is not a *ValidationError")
	}
}

func TestCompile(t *testing.T) {
	tests := []struct {
		name    string
		schema  string
		wantErr string // "" means it compiles
	}{
		{name: "local $defs ref", schema: `{"$defs": {"a": {"type": "string"}}, "$ref": "#/$defs/a"}`},
		{name: "local anchor", schema: `{"$defs": {"a": {"$anchor": "A", "type": "string"}}, "$ref": "#A"}`},
		{name: "embedded $id resource", schema: `{"$id": "https://example.com/root", "$defs": {"a": {"$id": "https://example.com/a", "type": "string"}}, "$ref": "https://example.com/a"}`},
		{name: "standard metaschema", schema: `{"$ref": "https://json-schema.org/draft/2020-12/schema"}`},
		{name: "draft-07 by $schema", schema: `{"$schema": "http://json-schema.org/draft-07/schema#", "type": "string"}`},
		{name: "remote https ref", schema: `{"$ref": "https://example.com/x.json"}`, wantErr: "not allowed"},
		{name: "remote http ref in a subschema", schema: `{"properties": {"a": {"$ref": "http://127.0.0.1:1/x.json"}}}`, wantErr: "not allowed"},
		{name: "relative ref", schema: `{"$ref": "other.json"}`, wantErr: "not allowed"},
		{name: "file ref", schema: `{"$ref": "file:///etc/passwd"}`, wantErr: "not allowed"},
		{name: "remote metaschema", schema: `{"$schema": "https://example.com/meta", "type": "string"}`, wantErr: "not allowed"},
		{name: "not JSON", schema: `{`, wantErr: "compile schema"},
		{name: "invalid schema", schema: `{"type": 12}`, wantErr: "compile schema"},
		{name: "bad regexp", schema: `{"pattern": "("}`, wantErr: "compile schema"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Compile([]byte(tt.schema))
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("Compile: %v", err)
			case tt.wantErr != "" && err == nil:
				t.Errorf("Compile succeeded, want error containing %q", tt.wantErr)
			case tt.wantErr != "" && !strings.Contains(err.Error(), tt.wantErr):
				t.Errorf("Compile error %q, want it to contain %q", err, tt.wantErr)
			}
		})
	}
}

func TestDraft7Semantics(t *testing.T) {
	// Under draft-07, $ref ignores its sibling keywords; under 2020-12 it does not.
	const body = `"definitions": {"s": {"type": "string"}}, "$ref": "#/definitions/s", "maxLength": 1}`
	d7 := mustCompile(t, `{"$schema": "http://json-schema.org/draft-07/schema#", `+body)
	d2020 := mustCompile(t, `{`+body)
	if err := d7.ValidateJSON([]byte(`"long"`)); err != nil {
		t.Errorf("draft-07: %v", err)
	}
	if err := d2020.ValidateJSON([]byte(`"long"`)); err == nil {
		t.Errorf("draft 2020-12: long string accepted")
	}
}

func TestCache(t *testing.T) {
	c := NewCache()
	a := []byte(`{"type": "string"}`)
	s1, err := c.Get(a)
	if err != nil {
		t.Fatal(err)
	}
	s2, err := c.Get([]byte(string(a))) // equal bytes, different slice
	if err != nil {
		t.Fatal(err)
	}
	if s1 != s2 {
		t.Errorf("equal bytes gave different *Schema")
	}
	s3, err := c.Get([]byte(`{"type":"string"}`))
	if err != nil {
		t.Fatal(err)
	}
	if s3 == s1 {
		t.Errorf("different bytes gave the same *Schema")
	}
	bad := []byte(`{"$ref": "https://example.com/x"}`)
	_, err1 := c.Get(bad)
	_, err2 := c.Get(bad)
	if err1 == nil || err1 != err2 {
		t.Errorf("failing schema: errors %v and %v, want the same cached error", err1, err2)
	}
	if n := c.Len(); n != 3 {
		t.Errorf("Len() = %d, want 3", n)
	}
}

func TestCacheConcurrent(t *testing.T) {
	c := NewCache()
	raw := []byte(`{"type": "object", "properties": {"a": {"type": "integer"}}}`)
	const n = 32
	got := make([]*Schema, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			s, err := c.Get(raw)
			if err != nil {
				t.Error(err)
				return
			}
			got[i] = s
			if err := s.ValidateJSON([]byte(`{"a": "x"}`)); err == nil {
				t.Error("invalid instance accepted")
			}
		})
	}
	wg.Wait()
	for i := range got {
		if got[i] != got[0] {
			t.Fatalf("goroutine %d got a different *Schema", i)
		}
	}
}

func TestValidateConfig(t *testing.T) {
	tests := []struct {
		name string
		doc  string
		want []Problem
	}{
		{name: "empty", doc: `{}`},
		{name: "full", doc: `{"listen": "127.0.0.1:8080", "public_url": "https://sag.example.com/base", "data_dir": "/var/lib/sag",
			"auth": "open", "admin_token_file": "/run/secrets/admin", "prefix": "conditional", "allowed_origins": ["https://app.example.com"],
			"log": {"level": "debug", "format": "json"},
			"limits": {"max_request_bytes": 1048576, "call_timeout": "1m30s", "session_idle_timeout": "10m", "upstream_idle_timeout": "300ms", "max_upstream_sessions": 8},
			"upstreams": [{"name": "files", "url": "http://127.0.0.1:9000/mcp", "prefix": "", "timeout": "30s"},
			              {"name": "local_2", "url": "stdio:./server --flag", "env": ["HOME", "LANG"]},
			              {"name": "old", "url": "sse+https://legacy.example.com/sse", "prefix": "none"}]}`},
		{name: "problems", doc: `{"colour": 1, "log": {"level": "loud", "x": 1}, "limits": {"max_request_bytes": 10, "call_timeout": "10 minutes", "session_idle_timeout": "9999999999999h"},
			"upstreams": [{"name": "ok", "url": "http://x"}, {"name": "-bad", "url": "ftp://x", "env": ["A-B"]}, {"url": "stdio:x"}]}`,
			want: []Problem{
				{"/colour", "property not allowed"},
				{"/limits/call_timeout", "'10 minutes' is not valid go-duration: want a Go duration such as 30s, 5m or 1h30m"},
				{"/limits/max_request_bytes", "minimum: got 10, want 1024"},
				{"/limits/session_idle_timeout", "'9999999999999h' is not valid go-duration: want a Go duration such as 30s, 5m or 1h30m"},
				{"/log/level", "value must be one of 'debug', 'info', 'warn', 'error'"},
				{"/log/x", "property not allowed"},
				{"/upstreams/1/env/0", "'A-B' does not match pattern '^[A-Za-z_][A-Za-z0-9_]*$'"},
				{"/upstreams/1/name", "'-bad' does not match pattern '^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$'"},
				{"/upstreams/1/url", `'ftp://x' does not match pattern '^((sse\\+)?https?://[^\\s]+|stdio:.*\\S.*)$'`},
				{"/upstreams/2", "missing property 'name'"},
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			doc, err := DecodeJSON([]byte(tt.doc))
			if err != nil {
				t.Fatal(err)
			}
			if got := problems(t, ValidateConfig(doc)); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("problems:\n got %q\nwant %q", got, tt.want)
			}
		})
	}
}

func TestConfigSchemaIsACopy(t *testing.T) {
	b := ConfigSchema()
	b[0] = 'x'
	if ConfigSchema()[0] != '{' {
		t.Errorf("ConfigSchema returned the embedded bytes, not a copy")
	}
}

// TestNoSAGImports guards DESIGN.md's dependency direction: schemas is a leaf.
func TestNoSAGImports(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	hasDoc := false
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, parser.ImportsOnly|parser.ParseComments)
		if err != nil {
			t.Fatal(err)
		}
		hasDoc = hasDoc || f.Doc != nil
		for _, imp := range f.Imports {
			if strings.HasPrefix(imp.Path.Value, `"github.com/sag-gateway/sag`) {
				t.Errorf("%s imports %s; schemas must not import other SAG packages", name, imp.Path.Value)
			}
		}
	}
	if !hasDoc {
		t.Errorf("package schemas has no doc comment")
	}
	if _, err := os.Stat("doc.go"); err != nil {
		t.Errorf("doc.go: %v", err)
	}
}

func FuzzValidateJSON(f *testing.F) {
	f.Add([]byte(objectSchema), []byte(`{"name": "x", "count": 1}`))
	f.Add([]byte(`{"type": "array", "items": {"$ref": "#"}, "uniqueItems": true}`), []byte(`[[], [[]], [], 1e400]`))
	f.Add([]byte(`{"anyOf": [{"type": "string", "format": "email"}, {"multipleOf": 0.01}]}`), []byte(`12.345`))
	f.Add([]byte(`{"$ref": "https://example.com/x"}`), []byte(`null`))
	f.Add(ConfigSchema(), []byte(`{"upstreams": [{"name": "a", "url": "stdio:x", "timeout": "1h"}]}`))
	f.Fuzz(func(t *testing.T, schema, instance []byte) {
		s, err := Compile(schema)
		if err != nil {
			return
		}
		err = s.ValidateJSON(instance)
		if err == nil {
			return
		}
		var verr *ValidationError
		if !errors.As(err, &verr) || len(verr.Problems) == 0 {
			t.Fatalf("ValidateJSON error %v is not a *ValidationError with problems", err)
		}
	})
}

func mustCompile(t *testing.T, schema string) *Schema {
	t.Helper()
	s, err := Compile([]byte(schema))
	if err != nil {
		t.Fatalf("Compile: %v", err)
	}
	return s
}

// problems returns err's problems, nil for a nil error, and fails the test for
// any other kind of error.
func problems(t *testing.T, err error) []Problem {
	t.Helper()
	if err == nil {
		return nil
	}
	var verr *ValidationError
	if !errors.As(err, &verr) {
		t.Fatalf("error %v (%T) is not a *ValidationError", err, err)
	}
	return verr.Problems
}
