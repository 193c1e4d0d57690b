package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

var (
	upstreamNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$`)
	envNameRE      = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
)

// Validate checks what the config schema cannot: that addresses and URLs
// parse, that open auth stays on loopback, that upstream names are unique,
// that at most one admin token source is set and that limits are positive.
// It also repeats the schema's rules that a Config built in Go could break.
// All problems are reported, joined, each naming its field; none contains the
// admin token.
func (c *Config) Validate() error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	host, port, err := net.SplitHostPort(c.Listen)
	listenOK := err == nil
	if err != nil {
		add("listen: %q is not host:port", c.Listen)
	} else if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		listenOK = false
		add("listen: port %q is not a number from 0 to 65535", port)
	}

	switch c.Auth {
	case AuthOpen, AuthBearer, AuthDPoP:
	default:
		add("auth: %q is not one of open, bearer, dpop", c.Auth)
	}
	if c.Auth == AuthOpen && listenOK && !isLoopbackHost(host) {
		add("auth %q needs a loopback listen address, got %s", AuthOpen, c.Listen)
	}
	if c.Console.DevLogin {
		if listenOK && !isLoopbackHost(host) {
			add("console.dev_login lets anyone sign in as anyone: it needs a loopback listen address, got %s", c.Listen)
		}
		if c.Auth == AuthOpen {
			add("console.dev_login: under auth %q the console needs no sign-in; turn one of them off", AuthOpen)
		}
	}

	if lg := c.Identity.Legacy; lg.Enabled {
		switch {
		case c.Auth == AuthOpen:
			add("identity.legacy: under auth %q there is nothing to exchange tokens for", AuthOpen)
		case lg.Introspection.URL == "" && len(c.Identity.Issuers) == 0:
			add("identity.legacy: configure introspection or identity.issuers: there is no legacy token to take")
		case lg.Introspection.URL != "" && lg.Introspection.Issuer == "":
			add("identity.legacy.introspection.issuer: name the server's issuer (the users become ISSUER, sub)")
		case lg.TTL <= 0:
			add("identity.legacy.ttl: must be positive")
		}
	}
	if as := c.Identity.AuthorizationServer; as.Enabled {
		switch {
		case c.Auth == AuthOpen:
			add("identity.authorization_server: under auth %q nobody signs in; use dpop or bearer", AuthOpen)
		case !strings.HasPrefix(c.ResolvedPublicURL(), "https://") && listenOK && !isLoopbackHost(host):
			add("identity.authorization_server: sign-in needs an https public_url (or a loopback listen address for trials)")
		}
		if len(as.Users) == 0 && len(as.Federation) == 0 {
			add("identity.authorization_server: list users or a federation provider, or nobody can sign in")
		}
		for name, d := range map[string]Duration{"access_token_ttl": as.AccessTokenTTL, "refresh_token_ttl": as.RefreshTokenTTL, "sign_in_ttl": as.SignInTTL} {
			if d <= 0 {
				add("identity.authorization_server.%s: must be positive", name)
			}
		}
	}

	if c.PublicURL != "" {
		if err := checkBaseURL(c.PublicURL); err != nil {
			add("public_url: %v", err)
		}
	}
	if c.DataDir == "" {
		add("data_dir: must not be empty")
	}
	if c.Store != "" {
		if err := checkStoreURL(c.Store); err != nil {
			add("store: %v", err)
		}
	}
	if c.AdminToken != "" && c.AdminTokenFile != "" {
		add("admin_token and admin_token_file are mutually exclusive: set one")
	}
	if !slices.Contains([]string{PrefixAlways, PrefixConditional, PrefixNone}, c.Prefix) {
		add("prefix: %q is not one of always, conditional, none", c.Prefix)
	}
	for i, o := range c.AllowedOrigins {
		if err := checkOrigin(o); err != nil {
			add("allowed_origins[%d]: %v", i, err)
		}
	}

	if !slices.Contains([]string{"debug", "info", "warn", "error"}, c.Log.Level) {
		add("log.level: %q is not one of debug, info, warn, error", c.Log.Level)
	}
	if !slices.Contains([]string{"text", "json"}, c.Log.Format) {
		add("log.format: %q is not one of text, json", c.Log.Format)
	}

	l := c.Limits
	if l.MaxRequestBytes < 1024 {
		add("limits.max_request_bytes: got %d, want at least 1024", l.MaxRequestBytes)
	}
	for _, d := range []struct {
		field string
		v     Duration
	}{
		{"limits.call_timeout", l.CallTimeout},
		{"limits.session_idle_timeout", l.SessionIdleTimeout},
		{"limits.request_read_timeout", l.RequestReadTimeout},
		{"limits.upstream_idle_timeout", l.UpstreamIdleTimeout},
		{"limits.workflow_idle_timeout", l.WorkflowIdleTimeout},
	} {
		if d.v <= 0 {
			add("%s: got %s, want more than 0", d.field, d.v)
		}
	}
	if l.MaxSessions < 1 {
		add("limits.max_sessions: got %d, want at least 1", l.MaxSessions)
	}
	if l.MaxWorkflows < 1 {
		add("limits.max_workflows: got %d, want at least 1", l.MaxWorkflows)
	}
	if l.MaxUpstreamSessions < 1 {
		add("limits.max_upstream_sessions: got %d, want at least 1", l.MaxUpstreamSessions)
	}

	for i, is := range c.Identity.Issuers {
		// The gateway's own issuer is its keys alone: another key set under
		// its name could mint what only the gateway may (run tokens).
		if strings.TrimRight(is.Issuer, "/") == c.ResolvedPublicURL() {
			add("identity.issuers[%d].issuer: %q is the gateway's own issuer (its public URL)", i, is.Issuer)
		}
	}
	if err := c.Identity.validate(); err != nil {
		for _, e := range unjoin(err) {
			add("identity.%w", e)
		}
	}

	seen := make(map[string]int, len(c.Upstreams))
	for i, u := range c.Upstreams {
		field := fmt.Sprintf("upstreams[%d]", i)
		if err := u.validate(); err != nil {
			for _, e := range unjoin(err) {
				add("%s.%w", field, e)
			}
		}
		if j, dup := seen[u.Name]; dup {
			add("%s.name: %q is already the name of upstreams[%d]", field, u.Name, j)
		} else {
			seen[u.Name] = i
		}
	}
	return errors.Join(errs...)
}

// validate checks one upstream; errors name fields relative to it ("url: …").
func (u Upstream) validate() error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	if !upstreamNameRE.MatchString(u.Name) {
		add("name: %q must be 1 to 64 letters, digits, '_' or '-', starting with a letter or digit", u.Name)
	} else if strings.Contains(u.Name, "__") {
		add("name: %q must not contain \"__\" (it separates an upstream's name from its tool names)", u.Name)
	}
	stdio := false
	switch {
	case strings.HasPrefix(u.URL, "stdio:"):
		stdio = true
		if strings.TrimSpace(strings.TrimPrefix(u.URL, "stdio:")) == "" {
			add("url: stdio: needs a command")
		}
	default:
		if err := checkUpstreamURL(u.URL); err != nil {
			add("url: %v", err)
		}
	}
	if !slices.Contains([]string{"", PrefixAlways, PrefixConditional, PrefixNone}, u.Prefix) {
		add("prefix: %q is not one of always, conditional, none or empty", u.Prefix)
	}
	if len(u.Env) > 0 && !stdio {
		add("env: only stdio upstreams take env")
	}
	for i, name := range u.Env {
		if !envNameRE.MatchString(name) {
			add("env[%d]: %q is not an environment variable name", i, name)
		}
		if slices.Contains(u.Env[:i], name) {
			add("env[%d]: %q is listed twice", i, name)
		}
	}
	if u.Timeout < 0 {
		add("timeout: got %s, want more than 0", u.Timeout)
	}
	if !slices.Contains([]string{"", UpstreamAuthDPoP, UpstreamAuthMTLS, UpstreamAuthNone}, u.Auth) {
		add("auth: %q is not one of dpop, mtls, none", u.Auth)
	}
	return errors.Join(errs...)
}

// validate checks the identity section; errors name fields relative to it.
func (id Identity) validate() error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	for _, d := range []struct {
		field string
		v     Duration
	}{
		{"token_skew", id.TokenSkew},
		{"dpop_window", id.DPoPWindow},
		{"upstream_token_ttl", id.UpstreamTokenTTL},
		{"exchange.ttl", id.Exchange.TTL},
	} {
		if d.v <= 0 {
			add("%s: got %s, want more than 0", d.field, d.v)
		}
	}
	seen := map[string]bool{}
	for i, is := range id.Issuers {
		switch {
		case is.Issuer == "":
			add("issuers[%d].issuer: must not be empty", i)
		case seen[is.Issuer]:
			add("issuers[%d].issuer: %q is listed twice", i, is.Issuer)
		}
		seen[is.Issuer] = true
		if (is.JWKSURL == "") == (is.JWKSFile == "") {
			add("issuers[%d]: set exactly one of jwks_url and jwks_file", i)
		}
		if is.JWKSURL != "" {
			if err := checkBaseURL(is.JWKSURL); err != nil {
				add("issuers[%d].jwks_url: %v", i, err)
			}
		}
	}
	sp := id.SPIFFE
	if (sp.CertFile == "") != (sp.KeyFile == "") {
		add("spiffe: cert_file and key_file go together")
	}
	if (sp.BundleFile != "" || sp.JWTBundleFile != "" || sp.WorkloadAPI != "") && sp.TrustDomain == "" {
		add("spiffe.trust_domain: required with a bundle or a Workload API")
	}
	return errors.Join(errs...)
}

// upstreamURLForms says what an upstream URL may be.
const upstreamURLForms = "http(s)://…, sse+http(s)://… or stdio:COMMAND"

// checkUpstreamURL accepts http(s)://host… and sse+http(s)://host….
func checkUpstreamURL(raw string) error {
	u, err := url.Parse(strings.TrimPrefix(raw, "sse+"))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Hostname() == "" {
		return fmt.Errorf("%q must be %s", raw, upstreamURLForms)
	}
	if u.User != nil {
		// Do not echo the URL: it holds the credentials.
		return errors.New("must not carry credentials (user:password@)")
	}
	if u.Fragment != "" {
		return fmt.Errorf("%q: must not have a fragment", raw)
	}
	return nil
}

// checkBaseURL accepts an absolute http(s) URL with no query, fragment or
// credentials.
func checkBaseURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Hostname() == "" || u.Opaque != "" {
		return fmt.Errorf("%q is not an absolute http(s) URL", raw)
	}
	if u.User != nil {
		return errors.New("must not carry credentials (user:password@)")
	}
	if u.RawQuery != "" || u.ForceQuery {
		return fmt.Errorf("%q: must not have a query", raw)
	}
	if u.Fragment != "" || strings.Contains(raw, "#") {
		return fmt.Errorf("%q: must not have a fragment", raw)
	}
	return nil
}

// checkOrigin accepts a browser origin: scheme://host[:port], nothing more.
func checkOrigin(raw string) error {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Hostname() == "" || u.User != nil ||
		u.Path != "" || u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || strings.Contains(raw, "#") {
		return fmt.Errorf("%q is not an origin (scheme://host[:port])", raw)
	}
	return nil
}

// unjoin returns the errors that errors.Join combined, or err itself.
func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

// checkStoreURL accepts a PostgreSQL URL without a password: configs are
// shown, logged and checked in, so the password comes from PGPASSWORD or a
// .pgpass file. Errors never quote the URL.
func checkStoreURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") || u.Host == "" && !u.Query().Has("host") {
		return errors.New("want a PostgreSQL URL (postgres://user@host/database); leave it empty for SQLite in data_dir")
	}
	if _, set := u.User.Password(); set || u.Query().Has("password") {
		return errors.New("the URL carries a password: set PGPASSWORD or use a .pgpass file instead")
	}
	return nil
}
