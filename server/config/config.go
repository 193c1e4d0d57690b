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
	// Store, when set, is the URL of a PostgreSQL database
	// (postgres://…) holding sessions, audit, kills, consent and the
	// registry instead of DataDir's SQLite file, so that several gateways
	// can share them. Its password belongs in PGPASSWORD or a .pgpass
	// file, not in the URL.
	Store string `yaml:"store" json:"store"`
	// Auth is how agents authenticate: "open", "bearer" or "dpop".
	Auth string `yaml:"auth" json:"auth"`
	// AdminToken is the admin API bearer token. It is never printed: JSON
	// encoding of a Config redacts it. Prefer AdminTokenFile.
	AdminToken string `yaml:"admin_token" json:"admin_token"`
	// AdminTokenFile is the path of a file holding the admin token.
	AdminTokenFile string `yaml:"admin_token_file" json:"admin_token_file"`
	// AllowStdioRegistration lets the admin API register stdio: upstreams,
	// which run a command on the gateway's host. It is off by default; the
	// config file and --upstream flags may always name stdio upstreams.
	AllowStdioRegistration bool `yaml:"allow_stdio_registration" json:"allow_stdio_registration"`
	// Prefix is how tool names carry their upstream's name: "always",
	// "conditional" or "none".
	Prefix string `yaml:"prefix" json:"prefix"`
	// AllowedOrigins are extra browser origins ("scheme://host[:port]")
	// allowed on /mcp.
	AllowedOrigins []string `yaml:"allowed_origins" json:"allowed_origins"`
	Log            Log      `yaml:"log" json:"log"`
	Limits         Limits   `yaml:"limits" json:"limits"`
	// Identity configures authentication: trusted issuers, DPoP, SPIFFE,
	// the token service and the tokens minted for upstreams.
	Identity Identity `yaml:"identity" json:"identity"`
	// Policy configures the allow-lists.
	Policy Policy `yaml:"policy" json:"policy"`
	// Console configures the consent console (/console).
	Console Console `yaml:"console" json:"console"`
	// Traces configures OpenTelemetry traces (off unless an endpoint is
	// set).
	Traces Traces `yaml:"traces" json:"traces"`
	// Upstreams are the MCP servers behind the gateway.
	Upstreams []Upstream `yaml:"upstreams" json:"upstreams"`
}

// Traces configures OpenTelemetry traces.
type Traces struct {
	// OTLPEndpoint is the OTLP/HTTP traces URL of a collector, e.g.
	// http://127.0.0.1:4318/v1/traces; empty turns traces off.
	OTLPEndpoint string `yaml:"otlp_endpoint" json:"otlp_endpoint,omitempty"`
}

// Console configures the consent console.
type Console struct {
	// DevLogin turns on the development sign-in: anyone who can reach the
	// gateway may sign in to the console as any user, with no password.
	// For `sag demo` and local trials only: it needs a loopback listen
	// address and an authenticated mode.
	DevLogin bool `yaml:"dev_login" json:"dev_login"`
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
	// RequestReadTimeout bounds how long a client may take to send a
	// request's headers, and then its body (slow clients hold no
	// connection longer).
	RequestReadTimeout Duration `yaml:"request_read_timeout" json:"request_read_timeout"`
	// UpstreamIdleTimeout closes idle upstream sessions.
	UpstreamIdleTimeout Duration `yaml:"upstream_idle_timeout" json:"upstream_idle_timeout"`
	// MaxUpstreamSessions caps concurrent sessions per upstream.
	MaxUpstreamSessions int `yaml:"max_upstream_sessions" json:"max_upstream_sessions"`
	// MaxSessions caps open downstream MCP sessions; past it new sessions
	// are refused with 503.
	MaxSessions int `yaml:"max_sessions" json:"max_sessions"`
	// MaxWorkflows caps the live workflow nodes of one user session.
	MaxWorkflows int `yaml:"max_workflows" json:"max_workflows"`
	// WorkflowIdleTimeout closes workflows without requests.
	WorkflowIdleTimeout Duration `yaml:"workflow_idle_timeout" json:"workflow_idle_timeout"`
}

// Identity configures who may call the gateway and how SAG authenticates
// itself to upstreams.
type Identity struct {
	// Issuers are the trusted external token issuers. The gateway's own
	// issuer (its public URL: sag token and the token service) is always
	// trusted.
	Issuers []Issuer `yaml:"issuers" json:"issuers"`
	// TokenSkew is the clock skew allowed on exp, nbf and iat.
	TokenSkew Duration `yaml:"token_skew" json:"token_skew"`
	// DPoPWindow is how long a DPoP proof is accepted after its iat.
	DPoPWindow Duration `yaml:"dpop_window" json:"dpop_window"`
	// DPoPNonce makes clients include a server nonce in their proofs.
	DPoPNonce bool `yaml:"dpop_nonce" json:"dpop_nonce"`
	// RequiredScopes must all be in a token for /mcp.
	RequiredScopes []string `yaml:"required_scopes" json:"required_scopes"`
	// UpstreamTokenTTL is the lifetime of the tokens SAG mints for upstreams.
	UpstreamTokenTTL Duration `yaml:"upstream_token_ttl" json:"upstream_token_ttl"`
	// Exchange configures the token service (POST /oauth/token).
	Exchange Exchange `yaml:"exchange" json:"exchange"`
	// SPIFFE configures agent identities.
	SPIFFE SPIFFE `yaml:"spiffe" json:"spiffe"`
	// Legacy configures the legacy-token shim.
	Legacy Legacy `yaml:"legacy" json:"legacy"`
	// AuthorizationServer configures SAG's own OAuth 2.1 authorization
	// server: sign-in for MCP clients and people.
	AuthorizationServer AuthorizationServer `yaml:"authorization_server" json:"authorization_server"`
}

// AuthorizationServer configures the built-in authorization server
// (/oauth/authorize, /oauth/token, /oauth/register). Its tokens are
// DPoP-bound whenever the client proves a key; bearer tokens go only to
// clients of a gateway whose auth is "bearer".
type AuthorizationServer struct {
	Enabled bool `yaml:"enabled" json:"enabled"`
	// Users is the local user store (argon2id hashes: sag hash-password).
	Users []LocalUser `yaml:"users" json:"users,omitempty"`
	// Federation lists external OpenID Providers people may sign in with.
	Federation []FederatedProvider `yaml:"federation" json:"federation,omitempty"`
	// Clients are pre-registered clients.
	Clients []OAuthClient `yaml:"clients" json:"clients,omitempty"`
	// DynamicRegistration turns on RFC 7591 registration (default on).
	DynamicRegistration bool `yaml:"dynamic_registration" json:"dynamic_registration"`
	// ClientMetadataDocuments accepts https URLs as client IDs, fetching
	// the client's metadata document from them (default on).
	ClientMetadataDocuments bool `yaml:"client_metadata_documents" json:"client_metadata_documents"`
	// MetadataAllowPrivate lets metadata documents be fetched from
	// loopback and private addresses (clients inside your network).
	MetadataAllowPrivate bool `yaml:"metadata_allow_private" json:"metadata_allow_private,omitempty"`
	// MetadataCAFile is a PEM file of the CAs trusted for metadata
	// documents instead of the system's.
	MetadataCAFile string `yaml:"metadata_ca_file" json:"metadata_ca_file,omitempty"`
	// Scopes clients may ask for besides identity.required_scopes (which
	// are granted when a client asks for none).
	Scopes []string `yaml:"scopes" json:"scopes,omitempty"`
	// AccessTokenTTL, RefreshTokenTTL and SignInTTL are the lifetimes of
	// access tokens, of a sign-in's refresh tokens, and of a browser
	// sign-in.
	AccessTokenTTL  Duration `yaml:"access_token_ttl" json:"access_token_ttl"`
	RefreshTokenTTL Duration `yaml:"refresh_token_ttl" json:"refresh_token_ttl"`
	SignInTTL       Duration `yaml:"sign_in_ttl" json:"sign_in_ttl"`
}

// Legacy configures the legacy-token shim: clients of an existing identity
// provider exchange its tokens at POST /oauth/token (RFC 8693, no actor)
// for short-lived DPoP-bound SAG tokens.
type Legacy struct {
	Enabled bool `yaml:"enabled" json:"enabled"`
	// Introspection takes the opaque tokens of an existing authorization
	// server; JWTs of identity.issuers are always taken.
	Introspection Introspection `yaml:"introspection" json:"introspection"`
	// TTL is the longest life of an exchanged token.
	TTL Duration `yaml:"ttl" json:"ttl"`
}

// Introspection is an RFC 7662 endpoint of an existing server.
type Introspection struct {
	URL              string `yaml:"url" json:"url,omitempty"`
	ClientID         string `yaml:"client_id" json:"client_id,omitempty"`
	ClientSecretFile string `yaml:"client_secret_file" json:"client_secret_file,omitempty"`
	// Issuer names the server's users' issuer when a response has none.
	Issuer string `yaml:"issuer" json:"issuer,omitempty"`
	// Audience, when set, must be among a response's aud.
	Audience string `yaml:"audience" json:"audience,omitempty"`
}

// LocalUser is a user of the built-in user store.
type LocalUser struct {
	Name string `yaml:"name" json:"name"`
	// PasswordHash is an argon2id PHC string ($argon2id$v=19$…).
	PasswordHash string   `yaml:"password_hash" json:"-"`
	Groups       []string `yaml:"groups" json:"groups,omitempty"`
}

// FederatedProvider is an external OpenID Provider: people signing in
// through it become NAME:SUBJECT at SAG, with their groups mapped.
type FederatedProvider struct {
	Name  string `yaml:"name" json:"name"`
	Label string `yaml:"label" json:"label,omitempty"`
	// Issuer is the provider's issuer URL (OpenID Connect Discovery).
	Issuer   string `yaml:"issuer" json:"issuer"`
	ClientID string `yaml:"client_id" json:"client_id"`
	// ClientSecretFile holds SAG's client secret at the provider; the
	// provider sends people back to PUBLIC_URL/oauth/callback.
	ClientSecretFile string   `yaml:"client_secret_file" json:"client_secret_file,omitempty"`
	Scopes           []string `yaml:"scopes" json:"scopes,omitempty"`
	// SubjectClaim (default sub) names the user; GroupsClaim (default
	// groups) holds their groups.
	SubjectClaim string `yaml:"subject_claim" json:"subject_claim,omitempty"`
	GroupsClaim  string `yaml:"groups_claim" json:"groups_claim,omitempty"`
	// GroupMap maps the provider's groups to those allow-lists name; when
	// set, unlisted groups are dropped.
	GroupMap map[string]string `yaml:"group_map" json:"group_map,omitempty"`
}

// OAuthClient is a pre-registered client of the authorization server.
type OAuthClient struct {
	ID           string   `yaml:"client_id" json:"client_id"`
	Name         string   `yaml:"name" json:"name,omitempty"`
	RedirectURIs []string `yaml:"redirect_uris" json:"redirect_uris"`
	// SecretFile holds a confidential client's secret; without it the
	// client is public (PKCE only).
	SecretFile string `yaml:"secret_file" json:"secret_file,omitempty"`
}

// Policy configures the allow-lists: files here, plus those tool owners
// register with their upstreams through the admin API.
type Policy struct {
	// Files are allow-list documents (YAML), reloaded when they change.
	Files []string `yaml:"files" json:"files"`
	// Risk scores sessions by what they did.
	Risk Risk `yaml:"risk" json:"risk"`
}

// Risk weighs a session's counters (denials, validation_failures,
// dlp_hits, rate_limited, consent_denied) into a score; past StepUp every
// call needs consent, past Block every call is refused (0 turns either off).
// Weights not given keep policy.DefaultRisk's.
type Risk struct {
	Weights map[string]float64 `yaml:"weights" json:"weights,omitempty"`
	StepUp  float64            `yaml:"step_up" json:"step_up"`
	Block   float64            `yaml:"block" json:"block"`
	// HalfLife is how fast a score decays (0: never).
	HalfLife Duration `yaml:"half_life" json:"half_life"`
}

// Issuer is a trusted token issuer with its keys: a JWKS URL or a file.
type Issuer struct {
	Issuer   string `yaml:"issuer" json:"issuer"`
	JWKSURL  string `yaml:"jwks_url" json:"jwks_url,omitempty"`
	JWKSFile string `yaml:"jwks_file" json:"jwks_file,omitempty"`
}

// Exchange configures RFC 8693 token exchange.
type Exchange struct {
	// Audiences are the audiences a token may be exchanged for; the
	// gateway's public URL is always allowed.
	Audiences []string `yaml:"audiences" json:"audiences"`
	// Scopes caps the scopes of issued tokens; empty allows any scope of
	// the subject token.
	Scopes []string `yaml:"scopes" json:"scopes"`
	// TTL is the lifetime of issued tokens.
	TTL Duration `yaml:"ttl" json:"ttl"`
}

// SPIFFE configures SPIFFE identities: the trust domain agents belong to,
// and where the trust bundle and the gateway's own SVIDs come from.
type SPIFFE struct {
	// TrustDomain is the trust domain of agents, e.g. "example.org".
	TrustDomain string `yaml:"trust_domain" json:"trust_domain"`
	// BundleFile is a PEM file of the trust domain's X.509 authorities.
	BundleFile string `yaml:"bundle_file" json:"bundle_file,omitempty"`
	// JWTBundleFile is a JWKS file of the trust domain's JWT authorities.
	JWTBundleFile string `yaml:"jwt_bundle_file" json:"jwt_bundle_file,omitempty"`
	// WorkloadAPI is the SPIFFE Workload API address (unix:///path); when
	// set, bundles and the gateway's own SVIDs come from it.
	WorkloadAPI string `yaml:"workload_api" json:"workload_api,omitempty"`
	// CertFile and KeyFile are the gateway's own X.509-SVID (PEM) when no
	// Workload API is used; they also serve TLS.
	CertFile string `yaml:"cert_file" json:"cert_file,omitempty"`
	KeyFile  string `yaml:"key_file" json:"key_file,omitempty"`
}

// Upstream is one MCP server behind the gateway.
type Upstream struct {
	// Name is unique among upstreams and the default tool-name prefix.
	Name string `yaml:"name" json:"name"`
	// Kind is "mcp" (default), "a2a" (an A2A agent whose card is at URL +
	// /.well-known/agent-card.json) or "agui" (an AG-UI agent's run
	// endpoint, run by users through POST /agui/agents/NAME).
	Kind string `yaml:"kind" json:"kind,omitempty"`
	// AgentKey is an AG-UI agent's DPoP key thumbprint (RFC 7638).
	AgentKey string `yaml:"agent_key" json:"agent_key,omitempty"`
	// CardJWKSFile is a JWK Set file of the public keys an A2A agent's
	// card is signed with.
	CardJWKSFile string `yaml:"card_jwks_file" json:"card_jwks_file,omitempty"`
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
	// Auth is how SAG authenticates to the upstream: "dpop" (a minted
	// token bound to the gateway's DPoP key, the default), "mtls" (bound
	// to the gateway's X.509-SVID) or "none".
	Auth string `yaml:"auth" json:"auth,omitempty"`
	// RateLimit caps the calls SAG sends the upstream, all callers
	// together; nil is no cap.
	RateLimit *RateLimit `yaml:"rate_limit" json:"rate_limit,omitempty"`
}

// RateLimit is a token bucket: PerMinute calls a minute, Burst at once
// (default PerMinute/6, at least 1).
type RateLimit struct {
	PerMinute int `yaml:"per_minute" json:"per_minute"`
	Burst     int `yaml:"burst" json:"burst,omitempty"`
}

// Values of Upstream.Auth.
const (
	UpstreamAuthDPoP = "dpop"
	UpstreamAuthMTLS = "mtls"
	UpstreamAuthNone = "none"
)

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
// 127.0.0.1:8080, data in ./sag-data, DPoP auth, prefixed
// tool names and no upstreams. Each call returns a fresh copy.
func Default() *Config {
	return &Config{
		Listen:  "127.0.0.1:8080",
		DataDir: "./sag-data",
		Auth:    AuthDPoP,
		Prefix:  PrefixAlways,
		Log:     Log{Level: "info", Format: "text"},
		Limits: Limits{
			MaxRequestBytes:     4 << 20,
			CallTimeout:         Duration(60 * time.Second),
			SessionIdleTimeout:  Duration(10 * time.Minute),
			RequestReadTimeout:  Duration(10 * time.Second),
			UpstreamIdleTimeout: Duration(5 * time.Minute),
			MaxUpstreamSessions: 256,
			MaxSessions:         10000,
			MaxWorkflows:        1000,
			WorkflowIdleTimeout: Duration(time.Hour),
		},
		Identity: Identity{
			TokenSkew:        Duration(30 * time.Second),
			DPoPWindow:       Duration(60 * time.Second),
			UpstreamTokenTTL: Duration(5 * time.Minute),
			Exchange:         Exchange{TTL: Duration(10 * time.Minute)},
			Legacy:           Legacy{TTL: Duration(10 * time.Minute)},
			AuthorizationServer: AuthorizationServer{
				DynamicRegistration:     true,
				ClientMetadataDocuments: true,
				AccessTokenTTL:          Duration(10 * time.Minute),
				RefreshTokenTTL:         Duration(30 * 24 * time.Hour),
				SignInTTL:               Duration(12 * time.Hour),
			},
		},
		Policy: Policy{Risk: Risk{Weights: map[string]float64{}, StepUp: 10, Block: 25, HalfLife: Duration(time.Hour)}},
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

// ResolvedPublicURL returns PublicURL, or "http://" + Listen when it is empty
// ("https://" when the gateway serves its X.509-SVID), without a trailing
// slash so that callers can append paths. A listen address without a host
// (":8080") resolves to localhost.
func (c *Config) ResolvedPublicURL() string {
	if c.PublicURL != "" {
		return strings.TrimRight(c.PublicURL, "/")
	}
	scheme := "http://"
	if sp := c.Identity.SPIFFE; sp.CertFile != "" || sp.WorkloadAPI != "" {
		scheme = "https://" // the gateway serves its X.509-SVID
	}
	if host, port, err := net.SplitHostPort(c.Listen); err == nil && host == "" {
		return scheme + net.JoinHostPort("localhost", port)
	}
	return scheme + c.Listen
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
