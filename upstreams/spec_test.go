package upstreams

import (
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"
)

func TestParseTarget(t *testing.T) {
	cases := []struct {
		url       string
		transport Transport
		endpoint  string
		argv      []string
		err       string
	}{
		{url: "http://127.0.0.1:9000/mcp", transport: TransportHTTP, endpoint: "http://127.0.0.1:9000/mcp"},
		{url: "https://tools.example/mcp", transport: TransportHTTP, endpoint: "https://tools.example/mcp"},
		{url: "sse+http://127.0.0.1:9100/sse", transport: TransportSSE, endpoint: "http://127.0.0.1:9100/sse"},
		{url: "stdio:/bin/server --root /srv", transport: TransportStdio, argv: []string{"/bin/server", "--root", "/srv"}},
		{url: `stdio:npx -y "@scope/server name" 'a b' c\ d`, transport: TransportStdio, argv: []string{"npx", "-y", "@scope/server name", "a b", "c d"}},
		{url: "stdio:", err: "needs a command"},
		{url: `stdio:"" arg`, err: "needs a command"},
		{url: `stdio:server "unterminated`, err: "unterminated quote"},
		{url: "ftp://example.com/mcp", err: `url "ftp://example.com/mcp": must be http(s)://HOST/…, sse+http(s)://HOST/… or stdio:COMMAND`},
		{url: "http:///mcp", err: "must be http(s)://"},
		{url: "sse+ftp://x/y", err: "must be http(s)://"},
		{url: "http://[::1/mcp", err: `url "http://[::1/mcp": missing ']' in host; it must be http(s)://`},
		{url: "http://user:secret@example.com/mcp", err: "credentials in the URL"},
	}
	for _, tc := range cases {
		got, err := parseTarget(tc.url)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("parseTarget(%q) error %v, want %q", tc.url, err, tc.err)
			}
			if err != nil && strings.Contains(err.Error(), "secret") {
				t.Errorf("parseTarget(%q) error leaks the password: %v", tc.url, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("parseTarget(%q): %v", tc.url, err)
			continue
		}
		if got.transport != tc.transport || got.endpoint != tc.endpoint || !slices.Equal(got.argv, tc.argv) {
			t.Errorf("parseTarget(%q) = %+v, want %s %q %q", tc.url, got, tc.transport, tc.endpoint, tc.argv)
		}
	}
}

func TestSpecValidate(t *testing.T) {
	ok := Spec{Name: "files", URL: "http://127.0.0.1:1/mcp"}
	cases := []struct {
		mutate func(*Spec)
		err    string
	}{
		{func(*Spec) {}, ""},
		{func(s *Spec) { s.Name = "" }, "upstream name"},
		{func(s *Spec) { s.Name = "a__b" }, `must not contain "__"`},
		{func(s *Spec) { s.Name = "-x" }, "upstream name"},
		{func(s *Spec) { s.Prefix = "sometimes" }, "prefix"},
		{func(s *Spec) { s.ProtocolVersion = "2024-01-01" }, "protocol_version"},
		{func(s *Spec) { s.Timeout = -1 }, "timeout"},
		{func(s *Spec) { s.URL = "mailto:x" }, "url"},
	}
	for _, tc := range cases {
		s := ok
		tc.mutate(&s)
		err := s.Validate()
		if (err == nil) != (tc.err == "") || (err != nil && !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("Validate(%+v) = %v, want %q", s, err, tc.err)
		}
	}
}

func TestSpecTransport(t *testing.T) {
	for url, want := range map[string]Transport{
		"http://127.0.0.1:1/mcp":   TransportHTTP,
		"sse+https://h/sse":        TransportSSE,
		"stdio:/bin/server --root": TransportStdio,
		"stdio:":                   "",
		"ftp://h/":                 "",
	} {
		if got := (Spec{Name: "x", URL: url}).Transport(); got != want {
			t.Errorf("Spec{URL: %q}.Transport() = %q, want %q", url, got, want)
		}
	}
}

// TestCatalogNaming checks naming and collision reports without servers.
func TestCatalogNaming(t *testing.T) {
	tool := func(name string) *mcp.Tool {
		return &mcp.Tool{Name: name, InputSchema: map[string]any{"type": "object"}}
	}
	ls := []listing{
		{upstream: "a", tools: []*mcp.Tool{tool("echo"), tool("only_a")}},
		{upstream: "b", tools: []*mcp.Tool{tool("echo"), tool("only_b"), {Name: "arr", InputSchema: map[string]any{"type": "array"}}}},
	}
	cases := []struct {
		naming    Naming
		want      []string
		conflicts int
	}{
		{NamingAlways, []string{"a__echo", "a__only_a", "b__echo", "b__only_b"}, 1},
		{NamingConditional, []string{"a__echo", "only_a", "b__echo", "only_b"}, 1},
		{NamingNone, []string{"echo", "only_a", "only_b"}, 2},
	}
	for _, tc := range cases {
		c := buildCatalog(ls, tc.naming)
		var got []string
		for _, t := range c.Tools {
			got = append(got, t.Name)
		}
		if !slices.Equal(got, tc.want) || len(c.Conflicts) != tc.conflicts {
			t.Errorf("%s: tools %q conflicts %q; want %q and %d conflicts", tc.naming, got, c.Conflicts, tc.want, tc.conflicts)
		}
		if tc.naming == NamingNone {
			if e, _ := c.Tool("echo"); e == nil || e.Upstream != "a" || e.Original != "echo" {
				t.Errorf("none: echo served by %+v, want the earlier upstream a", e)
			}
		}
		if e, ok := c.Tool(tc.want[0]); !ok || e.Def.Name != tc.want[0] || ls[0].tools[0].Name != "echo" {
			t.Errorf("%s: the catalog's definition must carry the exposed name and leave the upstream's untouched", tc.naming)
		}
	}
}

// FuzzParseTarget checks that no upstream URL makes the parser panic and
// that a stdio command line never yields an empty program.
func FuzzParseTarget(f *testing.F) {
	for _, s := range []string{"http://h/mcp", "sse+https://h:1/sse", `stdio:a "b c" 'd' e\ f`, "stdio:", `stdio:"`, "http://u:p@h/"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tgt, err := parseTarget(s)
		if err == nil && tgt.transport == TransportStdio && (len(tgt.argv) == 0 || tgt.argv[0] == "") {
			t.Errorf("parseTarget(%q) = empty program %q", s, tgt.argv)
		}
	})
}

func TestSafeError(t *testing.T) {
	cases := map[string]string{
		`Post "http://10.0.0.7:9000/mcp?token=s3cret": dial tcp 10.0.0.7:9000: connect: connection refused`: `Post "<url>": dial tcp <address>: connect: connection refused`,
		"dial tcp [::1]:8080: connect: connection refused":                                                  "dial tcp <address>: connect: connection refused",
		"lookup internal.example on 10.0.0.2:53: no such host":                                              "lookup <address> on 10.0.0.2:53: no such host",
		"first line\nsecond line": "first line second line",
		// A pretty-printed JSON body: its first line alone would be "[".
		"[\n  {\n    \"error\": \"quota exceeded\",\n    \"retry\": \"https://api.example/retry?key=s3cret\"\n  }\n]\n": `[ { "error": "quota exceeded", "retry": "<url>" } ]`,
		"tabs\tand\r\n\r\nblank lines\x1b[31m":                                                      "tabs and blank lines [31m",
		"upstream at\nPost \"http://10.0.0.7:9000/mcp\": dial tcp 10.0.0.7:9000:\nconnect: refused": `upstream at Post "<url>": dial tcp <address>: connect: refused`,
		strings.Repeat("é", 200):                                                                    strings.Repeat("é", 150) + "…",
		strings.Repeat("x", 301):                                                                    strings.Repeat("x", 300) + "…",
	}
	for in, want := range cases {
		if got := safeError(errors.New(in)); got != want {
			t.Errorf("safeError(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestBoundedRPCError checks that an upstream's multi-line JSON-RPC error
// reaches the client as one line with its content.
func TestBoundedRPCError(t *testing.T) {
	in := &jsonrpc.Error{Code: -32000, Message: "validation failed:\n{\n  \"field\": \"path\",\n  \"reason\": \"must be absolute\"\n}", Data: json.RawMessage(`{"n":1}`)}
	got := boundedRPCError(in)
	want := `validation failed: { "field": "path", "reason": "must be absolute" }`
	if got.Code != in.Code || got.Message != want || string(got.Data) != `{"n":1}` {
		t.Errorf("boundedRPCError = %d %q %s, want %d %q and the data", got.Code, got.Message, got.Data, in.Code, want)
	}
}
