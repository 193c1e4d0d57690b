package config

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/sag-gateway/sag/schemas"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden.json")

func TestParseValid(t *testing.T) {
	tests := []struct {
		name   string
		yaml   string
		mutate func(c *Config) // applied to Default() to get the expected Config
	}{
		{name: "empty file", yaml: ``, mutate: func(*Config) {}},
		{name: "only comments", yaml: "# nothing here\n", mutate: func(*Config) {}},
		{name: "null document", yaml: "---\n", mutate: func(*Config) {}},
		{name: "empty mapping", yaml: "{}", mutate: func(*Config) {}},
		{name: "partial nested section keeps the other defaults", yaml: "log:\n  level: debug\nlimits:\n  call_timeout: 5s\n",
			mutate: func(c *Config) {
				c.Log.Level = "debug"
				c.Limits.CallTimeout = Duration(5 * time.Second)
			}},
		{name: "localhost and IPv6 loopback", yaml: "listen: '[::1]:0'\n", mutate: func(c *Config) { c.Listen = "[::1]:0" }},
		{name: "localhost", yaml: "listen: localhost:8081\n", mutate: func(c *Config) { c.Listen = "localhost:8081" }},
		{name: "other 127/8 address", yaml: "listen: 127.1.2.3:8080\n", mutate: func(c *Config) { c.Listen = "127.1.2.3:8080" }},
		{name: "timestamp-looking string stays as written", yaml: "data_dir: 2024-01-02\n", mutate: func(c *Config) { c.DataDir = "2024-01-02" }},
		{name: "anchors and merge keys", yaml: "limits: &l\n  call_timeout: 2s\nupstreams:\n  - &u {name: a, url: 'stdio:x', timeout: 3s}\n  - <<: *u\n    name: b\n",
			mutate: func(c *Config) {
				c.Limits.CallTimeout = Duration(2 * time.Second)
				c.Upstreams = []Upstream{
					{Name: "a", URL: "stdio:x", Timeout: Duration(3 * time.Second)},
					{Name: "b", URL: "stdio:x", Timeout: Duration(3 * time.Second)},
				}
			}},
		{name: "admin token inline", yaml: "admin_token: s3cret\n", mutate: func(c *Config) { c.AdminToken = "s3cret" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse("sag.yaml", []byte(tt.yaml))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			want := Default()
			tt.mutate(want)
			if !reflect.DeepEqual(got, want) {
				t.Errorf("Parse:\n got %+v\nwant %+v", got, want)
			}
		})
	}
}

func TestParseInvalid(t *testing.T) {
	const token = "s3cret-admin-token-value"
	tests := []struct {
		name string
		yaml string
		want []string // substrings the error must contain
	}{
		{name: "unknown top-level key", yaml: "colour: red\n",
			want: []string{"config sag.yaml: colour: property not allowed"}},
		{name: "unknown nested key", yaml: "log:\n  colour: red\n",
			want: []string{"config sag.yaml: log.colour: property not allowed"}},
		{name: "unknown key in an upstream", yaml: "upstreams:\n  - {name: a, url: 'stdio:x', headers: {}}\n",
			want: []string{"config sag.yaml: upstreams[0].headers: property not allowed"}},
		{name: "wrong type", yaml: "limits:\n  max_request_bytes: big\n",
			want: []string{"config sag.yaml: limits.max_request_bytes: got string, want integer"}},
		{name: "fraction for an integer", yaml: "limits:\n  max_upstream_sessions: 1.5\n",
			want: []string{"limits.max_upstream_sessions: got number, want integer"}},
		{name: "too small", yaml: "limits:\n  max_request_bytes: 10\n",
			want: []string{"limits.max_request_bytes: minimum: got 10, want 1024"}},
		{name: "null value", yaml: "listen:\n",
			want: []string{"config sag.yaml: listen: got null, want string"}},
		{name: "list for a mapping", yaml: "log: [debug]\n",
			want: []string{"log: got array, want object"}},
		{name: "not a mapping", yaml: "just a string\n",
			want: []string{"config sag.yaml: got string, want object"}},
		{name: "bad enum", yaml: "auth: magic\n",
			want: []string{"config sag.yaml: auth: value must be one of 'open', 'bearer', 'dpop'"}},
		{name: "bad nested enum", yaml: "log: {format: xml}\n",
			want: []string{"log.format: value must be one of 'text', 'json'"}},
		{name: "bad duration", yaml: "limits:\n  call_timeout: 10 minutes\n",
			want: []string{"config sag.yaml: limits.call_timeout: '10 minutes' is not valid go-duration"}},
		{name: "duration without unit", yaml: "limits:\n  session_idle_timeout: 10\n",
			want: []string{"limits.session_idle_timeout: got number, want string"}},
		{name: "duration overflow", yaml: "upstreams:\n  - {name: a, url: 'stdio:x', timeout: 9999999999999h}\n",
			want: []string{"upstreams[0].timeout: '9999999999999h' is not valid go-duration"}},
		{name: "zero duration", yaml: "limits:\n  upstream_idle_timeout: 0s\n",
			want: []string{"config sag.yaml: limits.upstream_idle_timeout: got 0s, want more than 0"}},
		{name: "bad upstream name", yaml: "upstreams:\n  - {name: -files, url: 'http://127.0.0.1:9000/mcp'}\n",
			want: []string{"config sag.yaml: upstreams[0].name: '-files' must be 1 to 64 letters, digits, '_' or '-', starting with a letter or digit"}},
		{name: "missing upstream url", yaml: "upstreams:\n  - {name: files}\n",
			want: []string{"config sag.yaml: upstreams[0]: missing property 'url'"}},
		{name: "duplicate upstream", yaml: "upstreams:\n  - {name: files, url: 'http://127.0.0.1:9000/mcp'}\n  - {name: git, url: 'stdio:git-mcp'}\n  - {name: files, url: 'stdio:other'}\n",
			want: []string{`config sag.yaml: upstreams[2].name: "files" is already the name of upstreams[0]`}},
		{name: "bad url scheme", yaml: "upstreams:\n  - {name: a, url: 'stdio:x'}\n  - {name: b, url: 'ftp://files.example.com/'}\n",
			want: []string{"config sag.yaml: upstreams[1].url: 'ftp://files.example.com/' must be http(s)://…, sse+http(s)://… or stdio:COMMAND"}},
		{name: "url without host", yaml: "upstreams:\n  - {name: a, url: 'http:///mcp'}\n",
			want: []string{`config sag.yaml: upstreams[0].url: "http:///mcp" must be http(s)://…, sse+http(s)://… or stdio:COMMAND`}},
		{name: "credentials in a url of the wrong scheme are not echoed", yaml: "upstreams:\n  - {name: a, url: 'ftp://user:" + token + "@example.com/'}\n",
			want: []string{"config sag.yaml: upstreams[0].url: must be http(s)://…, sse+http(s)://… or stdio:COMMAND"}},
		{name: "credentials in url are not echoed", yaml: "upstreams:\n  - {name: a, url: 'https://user:" + token + "@example.com/mcp'}\n",
			want: []string{"config sag.yaml: upstreams[0].url: must not carry credentials"}},
		{name: "env on an http upstream", yaml: "upstreams:\n  - {name: a, url: 'http://127.0.0.1:1/mcp', env: [HOME]}\n",
			want: []string{"config sag.yaml: upstreams[0].env: only stdio upstreams take env"}},
		{name: "bad env name", yaml: "upstreams:\n  - {name: a, url: 'stdio:x', env: [A=B]}\n",
			want: []string{"upstreams[0].env[0]: 'A=B' must be an environment variable name"}},
		{name: "bad upstream prefix", yaml: "upstreams:\n  - {name: a, url: 'stdio:x', prefix: sometimes}\n",
			want: []string{"upstreams[0].prefix: value must be one of"}},
		{name: "auth open on 0.0.0.0 refused", yaml: "auth: open\nlisten: 0.0.0.0:8080\n",
			want: []string{`config sag.yaml: auth "open" needs a loopback listen address, got 0.0.0.0:8080`}},
		{name: "auth open on all interfaces refused", yaml: "auth: open\nlisten: ':8080'\n",
			want: []string{`auth "open" needs a loopback listen address, got :8080`}},
		{name: "auth open on a public name refused", yaml: "auth: open\nlisten: gateway.example.com:8080\n",
			want: []string{`auth "open" needs a loopback listen address`}},
		{name: "issuer without keys", yaml: "identity:\n  issuers:\n    - issuer: https://idp.example\n",
			want: []string{`identity.issuers[0]: missing property 'jwks_url'`}},
		{name: "issuer listed twice", yaml: "identity:\n  issuers:\n    - {issuer: a, jwks_file: a.json}\n    - {issuer: a, jwks_file: b.json}\n",
			want: []string{`identity.issuers[1].issuer: "a" is listed twice`}},
		{name: "an issuer under the gateway's own name", yaml: "public_url: https://sag.example\nidentity:\n  issuers:\n    - {issuer: https://sag.example/, jwks_file: a.json}\n",
			want: []string{`identity.issuers[0].issuer: "https://sag.example/" is the gateway's own issuer`}},
		{name: "spiffe cert without key", yaml: "identity:\n  spiffe:\n    cert_file: c.pem\n",
			want: []string{`identity.spiffe: cert_file and key_file go together`}},
		{name: "spiffe bundle without trust domain", yaml: "identity:\n  spiffe:\n    bundle_file: b.pem\n",
			want: []string{`identity.spiffe.trust_domain: required with a bundle`}},
		{name: "zero dpop window", yaml: "identity:\n  dpop_window: 0s\n",
			want: []string{`identity.dpop_window: got 0s, want more than 0`}},
		{name: "unknown upstream auth", yaml: "upstreams:\n  - {name: a, url: 'http://x/mcp', auth: basic}\n",
			want: []string{`upstreams[0].auth: value must be one of 'dpop', 'mtls', 'none'`}},
		{name: "listen without port", yaml: "listen: 127.0.0.1\n",
			want: []string{"config sag.yaml: listen: '127.0.0.1' must be host:port"}},
		{name: "listen port out of range", yaml: "listen: 127.0.0.1:99999\n",
			want: []string{`config sag.yaml: listen: port "99999" is not a number from 0 to 65535`}},
		{name: "public_url with a query", yaml: "public_url: https://sag.example.com/?x=1\n",
			want: []string{"config sag.yaml: public_url: 'https://sag.example.com/?x=1' must be an http(s):// URL without query or fragment"}},
		{name: "public_url without host", yaml: "public_url: https://:80\n",
			want: []string{`config sag.yaml: public_url: "https://:80" is not an absolute http(s) URL`}},
		{name: "origin with a path", yaml: "allowed_origins: ['https://app.example.com/x']\n",
			want: []string{"config sag.yaml: allowed_origins[0]: 'https://app.example.com/x' must be an origin"}},
		{name: "both admin token fields", yaml: "admin_token: " + token + "\nadmin_token_file: /run/secrets/admin\n",
			want: []string{"config sag.yaml: admin_token and admin_token_file are mutually exclusive"}},
		{name: "admin token of the wrong type", yaml: "admin_token: [" + token + "]\n",
			want: []string{"config sag.yaml: admin_token: got array, want string"}},
		{name: "every problem is reported", yaml: "colour: red\nauth: magic\nupstreams:\n  - {name: '', url: 'x'}\n",
			want: []string{"config sag.yaml: colour: property not allowed\n", "config sag.yaml: auth: value must be one of", "upstreams[0].name:", "upstreams[0].url:"}},
		{name: "semantic problems are all reported", yaml: "auth: open\nlisten: 0.0.0.0:1\nadmin_token: x\nadmin_token_file: y\n",
			want: []string{`auth "open" needs a loopback`, "\nconfig sag.yaml: admin_token and admin_token_file"}},
		{name: "not a finite number", yaml: "limits:\n  max_request_bytes: .inf\n",
			want: []string{"config sag.yaml: limits.max_request_bytes: got +Inf, want a finite number"}},
		{name: "duplicate key", yaml: "listen: 127.0.0.1:1\nlisten: 127.0.0.1:2\n",
			want: []string{`config sag.yaml: `, `"listen" already defined`}},
		{name: "yaml syntax error", yaml: "log: [\n",
			want: []string{"config sag.yaml: yaml: line 1: "}},
		{name: "yaml syntax error names its line", yaml: "listen: 127.0.0.1:1\nlog:\n  level: info\n format: text\n",
			want: []string{"config sag.yaml: yaml: line 4: did not find expected key"}},
		{name: "two documents", yaml: "listen: 127.0.0.1:1\n---\nlisten: 127.0.0.1:2\n",
			want: []string{"config sag.yaml: more than one YAML document"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("sag.yaml", []byte(tt.yaml))
			if err == nil {
				t.Fatalf("Parse succeeded, want an error containing %q", tt.want)
			}
			msg := err.Error()
			for _, w := range tt.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error\n%s\ndoes not contain %q", msg, w)
				}
			}
			if strings.Contains(msg, token) {
				t.Errorf("error leaks the admin token: %s", msg)
			}
			if msg != strings.ToLower(msg[:1])+msg[1:] {
				t.Errorf("error does not start in lowercase: %s", msg)
			}
		})
	}
}

func TestGolden(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no testdata/*.yaml: %v", err)
	}
	for _, in := range files {
		t.Run(filepath.Base(in), func(t *testing.T) {
			cfg, err := Load(in)
			if err != nil {
				t.Fatal(err)
			}
			got, err := json.MarshalIndent(cfg, "", "  ")
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, '\n')
			golden := strings.TrimSuffix(in, ".yaml") + ".golden.json"
			if *update {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test ./server/config -update)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("%s differs from %s (run go test ./server/config -update):\n%s", in, golden, got)
			}
		})
	}
}

func TestDefault(t *testing.T) {
	d := Default()
	if err := d.Validate(); err != nil {
		t.Fatalf("Default().Validate: %v", err)
	}
	if !d.IsLoopback() {
		t.Errorf("default listen %s is not loopback", d.Listen)
	}
	d.Upstreams = append(d.Upstreams, Upstream{Name: "x"})
	d.Log.Level = "debug"
	if e := Default(); len(e.Upstreams) != 0 || e.Log.Level != "info" {
		t.Errorf("Default() shares state between calls")
	}
}

// TestSchemaDefaultsMatchDefault keeps the "default" annotations of the config
// schema (what editors show) in step with Default (what SAG uses).
func TestSchemaDefaultsMatchDefault(t *testing.T) {
	var schema map[string]any
	if err := json.Unmarshal(schemas.ConfigSchema(), &schema); err != nil {
		t.Fatal(err)
	}
	doc := schemaDefaults(schema)
	raw, err := json.Marshal(doc) // JSON is YAML
	if err != nil {
		t.Fatal(err)
	}
	got, err := Parse("schema defaults", raw)
	if err != nil {
		t.Fatalf("Parse(%s): %v", raw, err)
	}
	want := Default()
	want.AllowedOrigins, want.Upstreams = []string{}, []Upstream{} // the schema says []
	if !reflect.DeepEqual(got, want) {
		t.Errorf("schema defaults %s give\n%+v\nwant Default()\n%+v", raw, got, want)
	}
}

// schemaDefaults builds the document an object schema's "default"
// annotations describe.
func schemaDefaults(schema map[string]any) map[string]any {
	doc := map[string]any{}
	props, _ := schema["properties"].(map[string]any)
	for name, p := range props {
		p := p.(map[string]any)
		if d, ok := p["default"]; ok {
			doc[name] = d
		} else if p["type"] == "object" {
			doc[name] = schemaDefaults(p)
		}
	}
	return doc
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(c *Config)
		want   string // "" means valid
	}{
		{name: "default", mutate: func(*Config) {}},
		{name: "empty auth", mutate: func(c *Config) { c.Auth = "" }, want: `auth: "" is not one of open, bearer, dpop`},
		{name: "bad listen", mutate: func(c *Config) { c.Listen = "nope" }, want: `listen: "nope" is not host:port`},
		{name: "named port", mutate: func(c *Config) { c.Listen = "127.0.0.1:http" }, want: `listen: port "http" is not a number`},
		{name: "public_url with credentials", mutate: func(c *Config) { c.PublicURL = "https://u:p@example.com" },
			want: "public_url: must not carry credentials"},
		{name: "public_url with fragment", mutate: func(c *Config) { c.PublicURL = "https://example.com/#x" },
			want: `public_url: "https://example.com/#x": must not have a fragment`},
		{name: "public_url not http", mutate: func(c *Config) { c.PublicURL = "mailto:x@example.com" },
			want: `public_url: "mailto:x@example.com" is not an absolute http(s) URL`},
		{name: "empty data_dir", mutate: func(c *Config) { c.DataDir = "" }, want: "data_dir: must not be empty"},
		{name: "store not postgres", mutate: func(c *Config) { c.Store = "sqlite:///tmp/x.db" }, want: "store: want a PostgreSQL URL"},
		{name: "store with a password", mutate: func(c *Config) { c.Store = "postgres://sag:hunter2@db/sag" }, want: "store: the URL carries a password"},
		{name: "store with a password parameter", mutate: func(c *Config) { c.Store = "postgres://sag@db/sag?password=hunter2" }, want: "store: the URL carries a password"},
		{name: "bad prefix", mutate: func(c *Config) { c.Prefix = "" }, want: `prefix: "" is not one of always, conditional, none`},
		{name: "bad log level", mutate: func(c *Config) { c.Log.Level = "trace" }, want: `log.level: "trace" is not one of`},
		{name: "bad log format", mutate: func(c *Config) { c.Log.Format = "" }, want: `log.format: "" is not one of`},
		{name: "origin with path", mutate: func(c *Config) { c.AllowedOrigins = []string{"https://a.example.com", "https://b.example.com/"} },
			want: `allowed_origins[1]: "https://b.example.com/" is not an origin`},
		{name: "small max_request_bytes", mutate: func(c *Config) { c.Limits.MaxRequestBytes = 0 },
			want: "limits.max_request_bytes: got 0, want at least 1024"},
		{name: "negative call_timeout", mutate: func(c *Config) { c.Limits.CallTimeout = -1 },
			want: "limits.call_timeout: got -1ns, want more than 0"},
		{name: "zero session_idle_timeout", mutate: func(c *Config) { c.Limits.SessionIdleTimeout = 0 },
			want: "limits.session_idle_timeout: got 0s, want more than 0"},
		{name: "zero max_upstream_sessions", mutate: func(c *Config) { c.Limits.MaxUpstreamSessions = 0 },
			want: "limits.max_upstream_sessions: got 0, want at least 1"},
		{name: "upstream inherits timeout", mutate: func(c *Config) { c.Upstreams = []Upstream{{Name: "a", URL: "http://127.0.0.1:1"}} }},
		{name: "negative upstream timeout", mutate: func(c *Config) { c.Upstreams = []Upstream{{Name: "a", URL: "stdio:x", Timeout: -1}} },
			want: "upstreams[0].timeout: got -1ns, want more than 0"},
		{name: "empty stdio command", mutate: func(c *Config) { c.Upstreams = []Upstream{{Name: "a", URL: "stdio:  "}} },
			want: "upstreams[0].url: stdio: needs a command"},
		{name: "bad upstream name", mutate: func(c *Config) { c.Upstreams = []Upstream{{Name: "a b", URL: "stdio:x"}} },
			want: `upstreams[0].name: "a b" must be 1 to 64 letters`},
		{name: "upstream name with the separator", mutate: func(c *Config) { c.Upstreams = []Upstream{{Name: "a__b", URL: "stdio:x"}} },
			want: `upstreams[0].name: "a__b" must not contain "__"`},
		{name: "duplicate env", mutate: func(c *Config) { c.Upstreams = []Upstream{{Name: "a", URL: "stdio:x", Env: []string{"HOME", "HOME"}}} },
			want: `upstreams[0].env[1]: "HOME" is listed twice`},
		{name: "upstream fragment", mutate: func(c *Config) { c.Upstreams = []Upstream{{Name: "a", URL: "https://x.example.com/mcp#f"}} },
			want: `upstreams[0].url: "https://x.example.com/mcp#f": must not have a fragment`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Default()
			tt.mutate(c)
			err := c.Validate()
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("Validate: %v", err)
			case tt.want != "" && err == nil:
				t.Errorf("Validate succeeded, want %q", tt.want)
			case tt.want != "" && !strings.Contains(err.Error(), tt.want):
				t.Errorf("Validate error\n%v\ndoes not contain %q", err, tt.want)
			case err != nil && strings.Contains(err.Error(), "hunter2"):
				t.Errorf("Validate error quotes a secret: %v", err)
			}
		})
	}
}

func TestParseUpstreamFlag(t *testing.T) {
	tests := []struct {
		flag string
		want Upstream
		err  string
	}{
		{flag: "files=http://127.0.0.1:9000/mcp", want: Upstream{Name: "files", URL: "http://127.0.0.1:9000/mcp"}},
		{flag: "old=sse+https://legacy.example.com/sse", want: Upstream{Name: "old", URL: "sse+https://legacy.example.com/sse"}},
		{flag: "git=stdio:mcp-git --repo=/srv/repo", want: Upstream{Name: "git", URL: "stdio:mcp-git --repo=/srv/repo"}},
		{flag: "files", err: `upstream flag "files": want NAME=URL`},
		{flag: "=http://127.0.0.1:1", err: `upstream flag "=http://127.0.0.1:1": name: '' must be 1 to 64 letters`},
		{flag: "a.b=http://127.0.0.1:1", err: `upstream flag "a.b=http://127.0.0.1:1": name: 'a.b' must be 1 to 64 letters`},
		{flag: "a=ftp://x", err: `upstream flag "a=ftp://x": url: 'ftp://x' must be http(s)://…, sse+http(s)://… or stdio:COMMAND`},
		{flag: "a=stdio: ", err: `upstream flag "a=stdio: ": url: 'stdio: ' must be http(s)://…`},
		{flag: "a=https://x:y@example.com", err: `upstream flag "a=https://x:y@example.com": url: must not carry credentials`},
	}
	for _, tt := range tests {
		t.Run(tt.flag, func(t *testing.T) {
			got, err := ParseUpstreamFlag(tt.flag)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Errorf("ParseUpstreamFlag error %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("ParseUpstreamFlag = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestIsLoopbackAndPublicURL(t *testing.T) {
	tests := []struct {
		listen, publicURL string
		loopback          bool
		resolved          string
	}{
		{listen: "127.0.0.1:8080", loopback: true, resolved: "http://127.0.0.1:8080"},
		{listen: "127.9.9.9:1", loopback: true, resolved: "http://127.9.9.9:1"},
		{listen: "[::1]:8080", loopback: true, resolved: "http://[::1]:8080"},
		{listen: "LocalHost:8080", loopback: true, resolved: "http://LocalHost:8080"},
		{listen: "0.0.0.0:8080", resolved: "http://0.0.0.0:8080"},
		{listen: ":8080", resolved: "http://localhost:8080"},
		{listen: "[::]:8080", resolved: "http://[::]:8080"},
		{listen: "10.0.0.1:8080", resolved: "http://10.0.0.1:8080"},
		{listen: "localhost.example.com:8080", resolved: "http://localhost.example.com:8080"},
		{listen: "nonsense", resolved: "http://nonsense"},
		{listen: "127.0.0.1:8080", publicURL: "https://sag.example.com/base/", loopback: true, resolved: "https://sag.example.com/base"},
	}
	for _, tt := range tests {
		c := &Config{Listen: tt.listen, PublicURL: tt.publicURL}
		if got := c.IsLoopback(); got != tt.loopback {
			t.Errorf("IsLoopback(%q) = %v, want %v", tt.listen, got, tt.loopback)
		}
		if got := c.ResolvedPublicURL(); got != tt.resolved {
			t.Errorf("ResolvedPublicURL(%q, %q) = %q, want %q", tt.listen, tt.publicURL, got, tt.resolved)
		}
	}
}

func TestResolvedAdminToken(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		name   string
		cfg    Config
		want   string
		errHas string
	}{
		{name: "none", cfg: Config{}, want: ""},
		{name: "inline", cfg: Config{AdminToken: "tok"}, want: "tok"},
		{name: "file trimmed", cfg: Config{AdminTokenFile: write("tok", "  file-tok\n")}, want: "file-tok"},
		{name: "empty file", cfg: Config{AdminTokenFile: write("empty", " \n\t")}, errHas: "admin_token_file: " + filepath.Join(dir, "empty") + " is empty"},
		{name: "missing file", cfg: Config{AdminTokenFile: filepath.Join(dir, "missing")}, errHas: "admin_token_file: open " + filepath.Join(dir, "missing")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.cfg.ResolvedAdminToken()
			if tt.errHas != "" {
				if err == nil || !strings.Contains(err.Error(), tt.errHas) {
					t.Errorf("error %v, want %q", err, tt.errHas)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("ResolvedAdminToken() = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

func TestEncodingRedactsAdminToken(t *testing.T) {
	c := Default()
	c.AdminToken = "s3cret-admin-token-value"
	for _, enc := range []struct {
		name    string
		marshal func(any) ([]byte, error)
	}{
		{"json", json.Marshal},
		{"yaml", yaml.Marshal},
	} {
		for _, v := range []any{c, *c} {
			b, err := enc.marshal(v)
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(string(b), c.AdminToken) || !strings.Contains(string(b), redacted) {
				t.Errorf("%s encoding of %T does not redact the admin token: %s", enc.name, v, b)
			}
		}
	}
	if c.AdminToken != "s3cret-admin-token-value" {
		t.Errorf("encoding modified the Config")
	}
}

func TestDurationText(t *testing.T) {
	var d Duration
	if err := d.UnmarshalText([]byte("1h30m")); err != nil || time.Duration(d) != 90*time.Minute {
		t.Errorf("UnmarshalText(1h30m) = %v, %v", d, err)
	}
	if err := d.UnmarshalText([]byte("soon")); err == nil || !strings.Contains(err.Error(), `invalid duration "soon"`) {
		t.Errorf("UnmarshalText(soon) error = %v", err)
	}
	if b, _ := Duration(90 * time.Second).MarshalText(); string(b) != "1m30s" {
		t.Errorf("MarshalText = %s", b)
	}
}

func TestLoad(t *testing.T) {
	if _, err := Load(filepath.Join(t.TempDir(), "missing.yaml")); err == nil || !strings.Contains(err.Error(), "config: open ") {
		t.Errorf("Load(missing) error = %v", err)
	}
	p := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(p, []byte("auth: open\nlisten: 0.0.0.0:80\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(p); err == nil || !strings.Contains(err.Error(), "config "+p+": auth") {
		t.Errorf("Load(bad) error = %v, want it to name the file", err)
	}
}

func FuzzParse(f *testing.F) {
	seeds, _ := filepath.Glob(filepath.Join("testdata", "*.yaml"))
	for _, s := range seeds {
		b, err := os.ReadFile(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	for _, s := range []string{
		"", "{}", "listen: 0.0.0.0:1", "limits: {call_timeout: 1h}", "upstreams: [{name: a, url: 'stdio:x'}]",
		"a: &a [*a]", "<<: {listen: 1}", "? [a]\n: b", "1: 2", "listen: !!binary aGk=", "x: .nan", "data_dir: 2001-12-14t21:59:43.10-05:00",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse("fuzz.yaml", data)
		if err != nil {
			return
		}
		if err := cfg.Validate(); err != nil {
			t.Fatalf("Parse returned a Config that does not validate: %v", err)
		}
		if _, err := json.Marshal(cfg); err != nil {
			t.Fatalf("json.Marshal: %v", err)
		}
	})
}

// TestPatternsInWords checks that every pattern of the config schema has
// its words, so that no error shows a regular expression, and that a value
// that breaks a pattern gets them.
func TestPatternsInWords(t *testing.T) {
	var schema any
	if err := json.Unmarshal(schemas.ConfigSchema(), &schema); err != nil {
		t.Fatal(err)
	}
	var patterns []string
	var walk func(any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, e := range v {
				if p, ok := e.(string); ok && k == "pattern" {
					patterns = append(patterns, p)
				}
				walk(e)
			}
		case []any:
			for _, e := range v {
				walk(e)
			}
		}
	}
	walk(schema)
	if len(patterns) < 5 {
		t.Fatalf("found %d patterns in the config schema; the walk is broken", len(patterns))
	}
	for _, p := range patterns {
		if patternWords[p] == "" {
			t.Errorf("pattern %s of the config schema has no words in patternWords", p)
		}
	}

	bad := "listen: nowhere\npublic_url: 'x y'\nallowed_origins: [o]\nidentity:\n  required_scopes: ['a b']\n" +
		"  spiffe: {trust_domain: A, workload_api: x}\n  issuers: [{issuer: i, jwks_url: 'ftp://x'}]\n" +
		"limits: {call_timeout: -5m}\nupstreams: [{name: '-x', url: 'ftp://x', env: ['1A']}]\n"
	_, err := Parse("sag.yaml", []byte(bad))
	if err == nil {
		t.Fatal("Parse succeeded")
	}
	errs := unjoin(err)
	if len(errs) != 11 {
		t.Errorf("%d errors, want one per field:\n%v", len(errs), err)
	}
	for _, e := range errs {
		if msg := e.Error(); strings.Contains(msg, "pattern") || strings.Contains(msg, "^") || !strings.Contains(msg, " must be ") {
			t.Errorf("error not in words: %s", msg)
		}
	}
}
