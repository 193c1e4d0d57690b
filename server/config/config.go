package config

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strings"
	"time"
)

// Config is SAG's configuration. Parse and Load return it with defaults
// applied and validated; code that builds one by hand should start from
// Default and call Validate.
type Config struct {
	// Listen is the host:port the gateway listens on.
	Listen string `yaml:"listen" json:"listen"`
	// PublicURL is the external base URL; empty means derived from Listen
	// (see ResolvedPublicURL).
	PublicURL string `yaml:"public_url" json:"public_url"`
	// DataDir holds the database and generated keys.
	DataDir string `yaml:"data_dir" json:"data_dir"`
	// Auth is how agents authenticate: "open", "bearer" or "dpop".
	Auth string `yaml:"auth" json:"auth"`
	// AdminToken is the admin API bearer token. It is never printed: JSON
	// encoding of a Config redacts it. Prefer AdminTokenFile.
	AdminToken string `yaml:"admin_token" json:"admin_token"`
	// AdminTokenFile is the path of a file holding the admin token.
	AdminTokenFile string `yaml:"admin_token_file" json:"admin_token_file"`
	// Prefix is how tool names carry their upstream's name: "always",
	// "conditional" or "none".
	Prefix string `yaml:"prefix" json:"prefix"`
	// AllowedOrigins are extra browser origins ("scheme://host[:port]")
	// allowed on /mcp.
	AllowedOrigins []string `yaml:"allowed_origins" json:"allowed_origins"`
	Log            Log      `yaml:"log" json:"log"`
	Limits         Limits   `yaml:"limits" json:"limits"`
	// Upstreams are the MCP servers behind the gateway.
	Upstreams []Upstream `yaml:"upstreams" json:"upstreams"`
}

// Log configures logging.
type Log struct {
	// Level is "debug", "info", "warn" or "error".
	Level string `yaml:"level" json:"level"`
	// Format is "text" or "json".
	Format string `yaml:"format" json:"format"`
}

// Limits bound what clients and upstreams may cost the gateway.
type Limits struct {
	// MaxRequestBytes is the largest request body accepted.
	MaxRequestBytes int64 `yaml:"max_request_bytes" json:"max_request_bytes"`
	// CallTimeout is the default timeout of one tool call.
	CallTimeout Duration `yaml:"call_timeout" json:"call_timeout"`
	// SessionIdleTimeout expires idle downstream sessions.
	SessionIdleTimeout Duration `yaml:"session_idle_timeout" json:"session_idle_timeout"`
	// UpstreamIdleTimeout closes idle upstream sessions.
	UpstreamIdleTimeout Duration `yaml:"upstream_idle_timeout" json:"upstream_idle_timeout"`
	// MaxUpstreamSessions caps concurrent sessions per upstream.
	MaxUpstreamSessions int `yaml:"max_upstream_sessions" json:"max_upstream_sessions"`
	// MaxSessions caps open downstream MCP sessions; past it new sessions
	// are refused with 503.
	MaxSessions int `yaml:"max_sessions" json:"max_sessions"`
}

// Upstream is one MCP server behind the gateway.
type Upstream struct {
	// Name is unique among upstreams and the default tool-name prefix.
	Name string `yaml:"name" json:"name"`
	// URL is http(s)://… (Streamable HTTP), sse+http(s)://… (legacy
	// HTTP+SSE) or stdio:COMMAND ARGS (a spawned process).
	URL string `yaml:"url" json:"url"`
	// Prefix overrides Config.Prefix for this upstream; "" inherits it.
	Prefix string `yaml:"prefix" json:"prefix"`
	// Env lists the environment variables passed to a stdio child besides
	// PATH. Only stdio upstreams take it.
	Env []string `yaml:"env" json:"env"`
	// Timeout overrides Limits.CallTimeout for this upstream; 0 inherits it.
	Timeout Duration `yaml:"timeout" json:"timeout"`
	// ProtocolVersion pins the MCP revision spoken to the upstream; ""
	// negotiates the newest both sides support.
	ProtocolVersion string `yaml:"protocol_version" json:"protocol_version,omitempty"`
	// WithdrawWhenDown takes the upstream's entries out of the catalog while
	// it is unreachable; by default they stay and calls get a tool error.
	WithdrawWhenDown bool `yaml:"withdraw_when_down" json:"withdraw_when_down,omitempty"`
}

// Duration is a time.Duration written in YAML and JSON as a Go duration
// string such as "30s" or "1h30m".
type Duration time.Duration

// String returns the duration in time.Duration's notation.
func (d Duration) String() string { return time.Duration(d).String() }

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler; YAML and JSON decoding
// use it.
func (d *Duration) UnmarshalText(text []byte) error {
	v, err := time.ParseDuration(string(text))
	if err != nil {
		return fmt.Errorf("invalid duration %q: want a Go duration such as 30s, 5m or 1h30m", text)
	}
	*d = Duration(v)
	return nil
}

// Default returns the embedded default configuration: loopback on
// 127.0.0.1:8080, data in ./sag-data, open auth (loopback only), prefixed
// tool names and no upstreams. Each call returns a fresh copy.
func Default() *Config {
	return &Config{
		Listen:  "127.0.0.1:8080",
		DataDir: "./sag-data",
		Auth:    AuthOpen,
		Prefix:  PrefixAlways,
		Log:     Log{Level: "info", Format: "text"},
		Limits: Limits{
			MaxRequestBytes:     4 << 20,
			CallTimeout:         Duration(60 * time.Second),
			SessionIdleTimeout:  Duration(10 * time.Minute),
			UpstreamIdleTimeout: Duration(5 * time.Minute),
			MaxUpstreamSessions: 256,
			MaxSessions:         10000,
		},
	}
}

// Values of Config.Auth.
const (
	AuthOpen   = "open"
	AuthBearer = "bearer"
	AuthDPoP   = "dpop"
)

// Values of Config.Prefix and Upstream.Prefix.
const (
	PrefixAlways      = "always"
	PrefixConditional = "conditional"
	PrefixNone        = "none"
)

// redacted replaces the admin token wherever a Config is encoded.
const redacted = "REDACTED"

// MarshalJSON encodes the configuration with the admin token redacted, so a
// dumped config never carries it.
func (c Config) MarshalJSON() ([]byte, error) {
	type plain Config // no methods: no recursion
	p := plain(c)
	if p.AdminToken != "" {
		p.AdminToken = redacted
	}
	return json.Marshal(p)
}

// IsLoopback reports whether the listen address is on loopback (127.0.0.0/8,
// ::1 or "localhost"), so that only this machine can connect.
func (c *Config) IsLoopback() bool {
	host, _, err := net.SplitHostPort(c.Listen)
	return err == nil && isLoopbackHost(host)
}

func isLoopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// ResolvedPublicURL returns PublicURL, or "http://" + Listen when it is empty,
// without a trailing slash so that callers can append paths. A listen address
// without a host (":8080") resolves to localhost.
func (c *Config) ResolvedPublicURL() string {
	if c.PublicURL != "" {
		return strings.TrimRight(c.PublicURL, "/")
	}
	if host, port, err := net.SplitHostPort(c.Listen); err == nil && host == "" {
		return "http://" + net.JoinHostPort("localhost", port)
	}
	return "http://" + c.Listen
}

// ResolvedAdminToken returns AdminToken, or the content of AdminTokenFile with
// surrounding white space trimmed. It returns "" when neither is set (no admin
// API token). An empty token file is an error. Errors never contain the token.
func (c *Config) ResolvedAdminToken() (string, error) {
	if c.AdminToken != "" || c.AdminTokenFile == "" {
		return c.AdminToken, nil
	}
	b, err := os.ReadFile(c.AdminTokenFile)
	if err != nil {
		// The *PathError names the file and the reason, never the content.
		return "", fmt.Errorf("admin_token_file: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("admin_token_file: %s is empty", c.AdminTokenFile)
	}
	return tok, nil
}

// MarshalYAML encodes the configuration with the admin token redacted.
func (c Config) MarshalYAML() (any, error) {
	type plain Config
	p := plain(c)
	if p.AdminToken != "" {
		p.AdminToken = redacted
	}
	return p, nil
}
