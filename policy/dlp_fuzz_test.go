package policy

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

// FuzzRedact checks that redaction never panics, never modifies its input,
// and leaves no redacted value (of the length that echoes) in the output or
// in an action; RedactJSON's output is valid JSON.
func FuzzRedact(f *testing.F) {
	for _, seed := range []string{
		"plain text",
		"Authorization: Bearer " + fakeJWT,
		"postgres://app:hunter2hunter2@db:5432/x and again hunter2hunter2",
		"card 4111111111111111, ref 41111111111111110",
		fakePEM + " " + fakeAWSKeyID + " " + fakeGitHub + " jane@example.com",
		`{"password":"hunter2hunter2","note":"pw hunter2hunter2","items":[{"secret":"s3cr3t-value"}]}`,
		`{"content":[{"type":"text","text":"mail jane@example.com"}],"structuredContent":{"card":4111111111111111}}`,
		`{"jane@example.com":{"a@example.com":1,"[REDACTED:email]":2}}`,
		`{"SecretAccessKey":"` + fakeAWSSecret + `","x":"` + fakeAWSSecret + `x"}`,
		"password=abcdefgh1234&user=x",
		`{"a":[[[[{"b":"4242 4242 4242 4242"}]]]]}`,
	} {
		f.Add(seed)
	}
	r := mustDLP(f, DLPProfile{
		Builtins: []string{"all"},
		Pointers: []string{"/password", "/*/secret", "/items/*/secret"},
		Patterns: []DLPPattern{{Name: "password_kv", Regex: `(?i)passw(?:or)?d[=:](?P<secret>[^\s&]+)`}},
	})
	f.Fuzz(func(t *testing.T, data string) {
		out, actions, secrets := r.redact(data)
		checkRedacted(t, out, actions, secrets)

		var v, before any
		if json.Unmarshal([]byte(data), &v) != nil {
			return
		}
		_ = json.Unmarshal([]byte(data), &before)
		out, actions, secrets = r.redact(v)
		if !reflect.DeepEqual(v, before) {
			t.Fatal("Redact modified its input")
		}
		checkRedacted(t, out, actions, secrets)
		raw, _, err := r.RedactJSON([]byte(data))
		if err != nil || !json.Valid(raw) {
			t.Fatalf("RedactJSON: %s, %v", raw, err)
		}
	})
}

func checkRedacted(t *testing.T, out any, actions []DLPAction, secrets []dlpSecret) {
	t.Helper()
	if len(secrets) > 0 && len(actions) == 0 {
		t.Fatal("values were redacted without an action")
	}
	var texts []string
	var collect func(v any)
	collect = func(v any) {
		switch x := v.(type) {
		case string:
			texts = append(texts, x)
		case []any:
			for _, e := range x {
				collect(e)
			}
		case map[string]any:
			for k, e := range x {
				texts = append(texts, k)
				collect(e)
			}
		}
	}
	collect(out)
	for _, a := range actions {
		texts = append(texts, a.String())
	}
	for _, s := range secrets {
		if len(s.text) < dlpEchoMin || strings.ContainsAny(s.text, "[]") {
			t.Fatalf("secret %q should not have been kept for echoes", s.text)
		}
		for _, x := range texts {
			if strings.Contains(x, s.text) {
				t.Fatalf("redacted %s value %q is still in %q", s.rule, s.text, x)
			}
		}
	}
}
