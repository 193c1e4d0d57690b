package upstreams

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"
)

// Transport is how SAG reaches an upstream MCP server.
type Transport string

// The transports an upstream URL can name.
const (
	// TransportHTTP is Streamable HTTP (http:// or https://), both protocol generations.
	TransportHTTP Transport = "http"
	// TransportSSE is the legacy HTTP+SSE transport (sse+http:// or sse+https://).
	TransportSSE Transport = "sse"
	// TransportStdio is a spawned command speaking MCP on stdin/stdout (stdio:COMMAND ARGS).
	TransportStdio Transport = "stdio"
	// TransportA2A is an A2A agent (Spec.Kind KindA2A) at its base URL.
	TransportA2A Transport = "a2a"
	// TransportAGUI is an AG-UI agent (Spec.Kind KindAGUI) at its run URL.
	TransportAGUI Transport = "ag-ui"
)

// Kinds of upstream.
const (
	// KindMCP is an MCP server (the default).
	KindMCP = "mcp"
	// KindA2A is an A2A agent: SAG reads its agent card and offers each of
	// its skills as a tool.
	KindA2A = "a2a"
	// KindAGUI is an AG-UI agent (its HTTP SSE run endpoint) that users run
	// through SAG (POST /agui/agents/NAME); it offers no tools.
	KindAGUI = "agui"
)

// Naming is how an upstream's tool and prompt names appear in the catalog.
type Naming string

// Naming modes.
const (
	// NamingAlways exposes every name as <upstream>__<name>.
	NamingAlways Naming = "always"
	// NamingConditional prefixes only names that more than one upstream offers.
	NamingConditional Naming = "conditional"
	// NamingNone exposes names as the upstream spells them; collisions are reported.
	NamingNone Naming = "none"
)

// ParseNaming parses a naming mode; "" is returned as "" (inherit).
func ParseNaming(s string) (Naming, error) {
	switch n := Naming(s); n {
	case "", NamingAlways, NamingConditional, NamingNone:
		return n, nil
	}
	return "", fmt.Errorf("prefix %q: want always, conditional or none", s)
}

// Spec describes one upstream as a tool owner registers it.
type Spec struct {
	// Name is the upstream's unique name; it is the default tool-name prefix.
	Name string `json:"name"`
	// Kind is KindMCP ("" too), KindA2A or KindAGUI.
	Kind string `json:"kind,omitempty"`
	// AgentKey is an AG-UI agent's DPoP key (its RFC 7638 JWK
	// thumbprint): the token SAG gives the agent for its calls back to SAG
	// is bound to it.
	AgentKey string `json:"agent_key,omitempty"`
	// CardJWKS are the public keys an A2A agent's card is signed with (a
	// JWK Set): the card must then be signed, and a signature verify with
	// one of them (A2A §8.4). A signed card needs them: a key the card
	// names itself vouches for nothing.
	CardJWKS json.RawMessage `json:"card_jwks,omitempty"`
	// URL is http(s)://… (Streamable HTTP), sse+http(s)://… (legacy SSE) or
	// stdio:COMMAND ARGS (a spawned server).
	URL string `json:"url"`
	// Prefix overrides the gateway's naming mode for this upstream ("" inherits).
	Prefix Naming `json:"prefix,omitempty"`
	// Env lists the environment variables a stdio upstream may see (PATH is always passed).
	Env []string `json:"env,omitempty"`
	// Timeout bounds each forwarded request; zero means the gateway's default.
	Timeout time.Duration `json:"timeout,omitempty"`
	// ProtocolVersion pins the MCP revision spoken to the upstream; empty
	// negotiates the newest both sides support.
	ProtocolVersion string `json:"protocol_version,omitempty"`
	// WithdrawWhenDown removes the upstream's tools, prompts and resources
	// from the catalog (with list_changed) while it is unreachable; by
	// default they stay listed and calls get a clear tool error.
	WithdrawWhenDown bool `json:"withdraw_when_down,omitempty"`
	// Auth is how SAG authenticates to the upstream: AuthDPoP (the
	// default), AuthMTLS or AuthNone.
	Auth string `json:"auth,omitempty"`
	// RateLimit caps the calls sent to the upstream, all callers together;
	// nil is no cap. The gateway's pipeline enforces it.
	RateLimit *RateLimit `json:"rate_limit,omitempty"`
}

// RateLimit is a token bucket: PerMinute calls a minute, Burst at once.
type RateLimit struct {
	PerMinute int `json:"per_minute"`
	Burst     int `json:"burst,omitempty"`
}

// Values of Spec.Auth.
const (
	AuthDPoP = "dpop"
	AuthMTLS = "mtls"
	AuthNone = "none"
)

// ProtocolVersions are the MCP revisions SAG can speak to an upstream.
var ProtocolVersions = []string{"2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25", "2026-07-28"}

// jwkThumbprintRE matches a SHA-256 JWK thumbprint, base64url.
var jwkThumbprintRE = regexp.MustCompile(`^[A-Za-z0-9_-]{43}$`)

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$`)

// target is a parsed upstream URL.
type target struct {
	transport Transport
	endpoint  string   // for HTTP and SSE
	argv      []string // for stdio
}

// Validate checks the spec and returns the first problem, naming the field.
func (s Spec) Validate() error {
	if !nameRE.MatchString(s.Name) {
		return fmt.Errorf("upstream name %q: want 1-64 letters, digits, '_' or '-', starting with a letter or digit", s.Name)
	}
	if strings.Contains(s.Name, "__") {
		return fmt.Errorf("upstream name %q: must not contain \"__\" (it separates prefix and tool name)", s.Name)
	}
	if _, err := ParseNaming(string(s.Prefix)); err != nil {
		return fmt.Errorf("upstream %s: %w", s.Name, err)
	}
	if s.Timeout < 0 {
		return fmt.Errorf("upstream %s: timeout must not be negative", s.Name)
	}
	if s.ProtocolVersion != "" && !slices.Contains(ProtocolVersions, s.ProtocolVersion) {
		return fmt.Errorf("upstream %s: protocol_version %q: want one of %s", s.Name, s.ProtocolVersion, strings.Join(ProtocolVersions, ", "))
	}
	if r := s.RateLimit; r != nil && (r.PerMinute < 1 || r.Burst < 0) {
		return fmt.Errorf("upstream %s: rate_limit: per_minute must be at least 1 and burst not negative", s.Name)
	}
	if !slices.Contains([]string{"", AuthDPoP, AuthMTLS, AuthNone}, s.Auth) {
		return fmt.Errorf("upstream %s: auth %q: want dpop, mtls or none", s.Name, s.Auth)
	}
	tgt, err := parseTarget(s.URL)
	if err != nil {
		return fmt.Errorf("upstream %s: %w", s.Name, err)
	}
	switch s.Kind {
	case "", KindMCP:
	case KindA2A:
		if tgt.transport != TransportHTTP {
			return fmt.Errorf("upstream %s: url %q: an A2A agent's url is its http(s):// base URL (its card is at %s under it)", s.Name, s.URL, AgentCardPath)
		}
		if s.ProtocolVersion != "" || len(s.Env) > 0 {
			return fmt.Errorf("upstream %s: protocol_version and env are for MCP upstreams, not A2A agents", s.Name)
		}
	case KindAGUI:
		if tgt.transport != TransportHTTP {
			return fmt.Errorf("upstream %s: url %q: an AG-UI agent's url is its http(s):// run endpoint", s.Name, s.URL)
		}
		if !jwkThumbprintRE.MatchString(s.AgentKey) {
			return fmt.Errorf("upstream %s: agent_key: want the agent's DPoP key as its RFC 7638 JWK thumbprint (43 base64url characters)", s.Name)
		}
	default:
		return fmt.Errorf("upstream %s: kind %q: want mcp, a2a or agui", s.Name, s.Kind)
	}
	if s.AgentKey != "" && s.Kind != KindAGUI {
		return fmt.Errorf("upstream %s: agent_key is for AG-UI agents (kind agui)", s.Name)
	}
	if len(s.CardJWKS) > 0 {
		if s.Kind != KindA2A {
			return fmt.Errorf("upstream %s: card_jwks is for A2A agents (kind a2a)", s.Name)
		}
		if _, err := cardKeys(s.CardJWKS); err != nil {
			return fmt.Errorf("upstream %s: card_jwks: %w", s.Name, err)
		}
	}
	return nil
}

// urlForms says what an upstream URL may be.
const urlForms = "http(s)://HOST/…, sse+http(s)://HOST/… or stdio:COMMAND"

// Transport returns the transport the spec's URL names, or "" when the URL
// is not valid.
func (s Spec) Transport() Transport {
	t, err := parseTarget(s.URL)
	if err != nil {
		return ""
	}
	switch s.Kind {
	case KindA2A:
		return TransportA2A
	case KindAGUI:
		return TransportAGUI
	}
	return t.transport
}

// parseTarget turns an upstream URL into a transport and its endpoint or command.
func parseTarget(raw string) (target, error) {
	if cmd, ok := strings.CutPrefix(raw, "stdio:"); ok {
		argv, err := splitCommand(cmd)
		if err != nil {
			return target{}, fmt.Errorf("url %q: %w", raw, err)
		}
		if len(argv) == 0 || argv[0] == "" {
			return target{}, fmt.Errorf("url %q: stdio: needs a command", raw)
		}
		return target{transport: TransportStdio, argv: argv}, nil
	}
	tr := TransportHTTP
	endpoint := raw
	if rest, ok := strings.CutPrefix(raw, "sse+"); ok {
		tr, endpoint = TransportSSE, rest
	}
	u, err := url.Parse(endpoint)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // without the URL, quoted once already
		}
		return target{}, fmt.Errorf("url %q: %v; it must be %s", raw, err, urlForms)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return target{}, fmt.Errorf("url %q: must be %s", raw, urlForms)
	}
	if u.User != nil {
		return target{}, errors.New("url: credentials in the URL are not allowed; SAG mints upstream credentials itself")
	}
	return target{transport: tr, endpoint: endpoint}, nil
}

// splitCommand splits a command line on spaces, honouring single and double
// quotes and backslash escapes outside single quotes. It runs no shell.
func splitCommand(s string) ([]string, error) {
	var (
		args  []string
		cur   strings.Builder
		inArg bool
		quote rune
	)
	rs := []rune(s)
	for i := 0; i < len(rs); i++ {
		r := rs[i]
		switch {
		case quote == '\'':
			if r == '\'' {
				quote = 0
			} else {
				cur.WriteRune(r)
			}
		case r == '\\' && i+1 < len(rs):
			i++
			cur.WriteRune(rs[i])
			inArg = true
		case quote == '"':
			if r == '"' {
				quote = 0
			} else {
				cur.WriteRune(r)
			}
		case r == '\'' || r == '"':
			quote, inArg = r, true
		case r == ' ' || r == '\t':
			if inArg {
				args = append(args, cur.String())
				cur.Reset()
				inArg = false
			}
		default:
			cur.WriteRune(r)
			inArg = true
		}
	}
	if quote != 0 {
		return nil, errors.New("unterminated quote")
	}
	if inArg {
		args = append(args, cur.String())
	}
	return args, nil
}
