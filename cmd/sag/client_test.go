package main

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestReadArguments(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "args.json")
	if err := os.WriteFile(file, []byte("{\n  \"text\": \"from a file\"\n}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	notObject := filepath.Join(dir, "list.json")
	if err := os.WriteFile(notObject, []byte(`[1, 2]`), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		arg, stdin string
		want       map[string]any
		err        string
	}{
		{arg: `{"text":"inline"}`, want: map[string]any{"text": "inline"}},
		{arg: "-", stdin: "{\"a\": 2,\n \"b\": 40}\n", want: map[string]any{"a": 2.0, "b": 40.0}},
		{arg: "@" + file, want: map[string]any{"text": "from a file"}},
		{arg: "-", stdin: "", err: "arguments from stdin: unexpected end of JSON input"},
		{arg: "-", stdin: `{"a":1} trailing`, err: "arguments from stdin: invalid character"},
		{arg: "@" + filepath.Join(dir, "missing.json"), err: "arguments: open " + filepath.Join(dir, "missing.json")},
		{arg: "@" + notObject, err: "arguments from " + notObject + ": got a JSON array, want an object"},
		{arg: `"text"`, err: "arguments: got a JSON string, want an object"},
		{arg: `{"text":`, err: "arguments: unexpected end of JSON input"},
	}
	for _, tt := range tests {
		got, err := readArguments(tt.arg, strings.NewReader(tt.stdin))
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("readArguments(%q) error %v, want %q", tt.arg, err, tt.err)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("readArguments(%q) = %v, %v; want %v", tt.arg, got, err, tt.want)
		}
	}
}
