package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/sag-gateway/sag/server"
	"github.com/sag-gateway/sag/server/config"
)

// repeated collects a repeatable string flag.
type repeated []string

func (r *repeated) String() string     { return strings.Join(*r, ",") }
func (r *repeated) Set(v string) error { *r = append(*r, v); return nil }

// serveFlags are the flags of 'sag serve'; a flag given on the command line
// overrides the config file.
type serveFlags struct {
	fs        *flag.FlagSet
	config    string
	listen    string
	publicURL string
	data      string
	store     string
	auth      string
	prefix    string
	logLevel  string
	logFormat string
	upstreams repeated
	policies  repeated
	// allowStdio only turns allow_stdio_registration on; the config file
	// is the place to state that it is off.
	allowStdio bool
	devLogin   bool
	otlp       string
}

func newServeFlags(name string) *serveFlags {
	f := &serveFlags{fs: flag.NewFlagSet(name, flag.ContinueOnError)}
	f.fs.StringVar(&f.config, "config", "", "YAML config `file` (default: the embedded default)")
	f.fs.StringVar(&f.listen, "listen", "", "`host:port` to listen on (default 127.0.0.1:8080)")
	f.fs.StringVar(&f.publicURL, "public-url", "", "external base `URL` (default derived from --listen)")
	f.fs.StringVar(&f.data, "data", "", "data `directory` (default ./sag-data)")
	f.fs.StringVar(&f.store, "store", "", "PostgreSQL `URL` (postgres://…) shared by several gateways; default SQLite in the data directory")
	f.fs.StringVar(&f.auth, "auth", "", "authentication: open (loopback only), bearer or dpop")
	f.fs.StringVar(&f.prefix, "prefix", "", "tool naming: always (<upstream>__<tool>), conditional or none")
	f.fs.StringVar(&f.logLevel, "log-level", "", "debug, info, warn or error")
	f.fs.StringVar(&f.logFormat, "log-format", "", "text or json")
	f.fs.Var(&f.upstreams, "upstream", "`NAME=URL` upstream (repeatable): http(s)://… Streamable HTTP, sse+http(s)://… legacy SSE, stdio:COMMAND ARGS")
	f.fs.Var(&f.policies, "policy", "allow-list `FILE` (repeatable; reloaded when it changes)")
	f.fs.BoolVar(&f.allowStdio, "allow-stdio-registration", false, "let the admin API register stdio: upstreams, which run commands on this host (--upstream and the config file always may)")
	f.fs.StringVar(&f.otlp, "otlp-endpoint", "", "send OpenTelemetry traces to this OTLP/HTTP `URL` (e.g. http://127.0.0.1:4318/v1/traces)")
	f.fs.BoolVar(&f.devLogin, "dev-login", false, "development sign-in to the consent console as any user, without a password (loopback only)")
	return f
}

// load builds the config: file (or default), then flags, then validation.
func (f *serveFlags) load() (*config.Config, error) {
	cfg := config.Default()
	if f.config != "" {
		var err error
		if cfg, err = config.Load(f.config); err != nil {
			return nil, err
		}
	}
	set := func(dst *string, v string) {
		if v != "" {
			*dst = v
		}
	}
	set(&cfg.Listen, f.listen)
	set(&cfg.PublicURL, f.publicURL)
	set(&cfg.DataDir, f.data)
	set(&cfg.Store, f.store)
	set(&cfg.Auth, f.auth)
	set(&cfg.Prefix, f.prefix)
	set(&cfg.Log.Level, f.logLevel)
	set(&cfg.Log.Format, f.logFormat)
	if f.allowStdio {
		cfg.AllowStdioRegistration = true
	}
	if f.devLogin {
		cfg.Console.DevLogin = true
	}
	set(&cfg.Traces.OTLPEndpoint, f.otlp)
	cfg.Policy.Files = append(cfg.Policy.Files, f.policies...)
	for _, s := range f.upstreams {
		u, err := config.ParseUpstreamFlag(s)
		if err != nil {
			return nil, err
		}
		cfg.Upstreams = append(cfg.Upstreams, u)
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return cfg, nil
}

func newLogger(cfg *config.Config) *slog.Logger {
	var level slog.Level
	if err := level.UnmarshalText([]byte(cfg.Log.Level)); err != nil {
		level = slog.LevelInfo
	}
	opts := &slog.HandlerOptions{Level: level}
	if cfg.Log.Format == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}

func cmdServe(args []string) error {
	f := newServeFlags("sag serve")
	if err := f.fs.Parse(args); err != nil {
		return err
	}
	if f.fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", f.fs.Arg(0))
	}
	cfg, err := f.load()
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if file := os.Getenv(cpuProfileEnv); file != "" {
		// sag bench --cpuprofile: the gateway's CPU profile of its run.
		out, err := os.Create(file)
		if err != nil {
			return err
		}
		defer out.Close()
		if err := pprof.StartCPUProfile(out); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	if file := os.Getenv(memProfileEnv); file != "" {
		// sag bench --memprofile: what the gateway allocated over its run.
		defer func() {
			if out, err := os.Create(file); err == nil {
				pprof.Lookup("allocs").WriteTo(out, 0)
				out.Close()
			}
		}()
	}
	return run(ctx, cfg, newLogger(cfg), nil)
}

// cpuProfileEnv and memProfileEnv name the files 'sag serve' writes its CPU
// profile and its allocation profile to (set by sag bench --cpuprofile and
// --memprofile for the gateway it starts).
const (
	cpuProfileEnv = "SAG_CPUPROFILE"
	memProfileEnv = "SAG_MEMPROFILE"
)

// run starts a gateway for cfg, logging to log, and serves until ctx ends.
// ready, if set, is called with the gateway's base URL once it accepts
// connections.
func run(ctx context.Context, cfg *config.Config, log *slog.Logger, ready func(baseURL string)) error {
	switch cfg.Auth {
	case config.AuthOpen:
		log.Warn("authentication is OFF (--auth open): every local process can use this gateway; loopback only")
	case config.AuthBearer:
		log.Warn("plain bearer tokens are accepted (--auth bearer): whoever holds a token can use it; prefer --auth dpop")
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return err
	}
	if _, port, _ := net.SplitHostPort(cfg.Listen); port == "0" && cfg.PublicURL == "" {
		// Tokens and DPoP proofs name the real URL, not port 0.
		cfg.PublicURL = "http://" + ln.Addr().String()
	}
	gw, err := server.New(ctx, cfg, server.Deps{Log: log, Version: version})
	if err != nil {
		ln.Close()
		return err
	}
	base := cfg.ResolvedPublicURL()
	log.Info("sag listening", "mcp", base+"/mcp", "data", cfg.DataDir, "auth", cfg.Auth)
	if ready != nil {
		ready(base)
	}
	return gw.Serve(ctx, ln, 30*time.Second)
}
