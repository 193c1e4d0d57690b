package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/sag-gateway/sag/fixtures"
	"github.com/sag-gateway/sag/server"
	"github.com/sag-gateway/sag/server/config"
)

// cmdDemo starts two fixture upstreams (one session-based, one stateless)
// and a gateway in front of them, and prints how to use it.
func cmdDemo(args []string) error {
	f := newServeFlags("sag demo")
	if err := f.fs.Parse(args); err != nil {
		return err
	}
	if len(f.upstreams) > 0 || f.config != "" {
		return fmt.Errorf("demo brings its own upstreams and config; use 'sag serve' for yours")
	}
	if f.data == "" {
		dir, err := os.MkdirTemp("", "sag-demo-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		f.data = dir
	}

	type upstream struct {
		name      string
		stateless bool
	}
	var list []string
	for _, u := range []upstream{{"alpha", false}, {"beta", true}} {
		url, stop, err := fixtures.NewServer(fixtures.Options{Name: u.name}).StartHTTP(u.stateless)
		if err != nil {
			return err
		}
		defer stop()
		f.upstreams = append(f.upstreams, u.name+"="+url)
		kind := "session-based"
		if u.stateless {
			kind = "stateless"
		}
		list = append(list, fmt.Sprintf("  %-6s %s (Streamable HTTP, %s fixture)", u.name, url, kind))
	}
	// The agents: an A2A agent whose skills become tools, and an AG-UI
	// agent that users run through the gateway (it calls alpha__echo).
	helperURL, stopHelper, err := fixtures.NewAgent(fixtures.AgentOptions{Name: "helper"}).Start()
	if err != nil {
		return err
	}
	defer stopHelper()
	assistant, err := fixtures.NewAGUIAgent(fixtures.AGUIAgentOptions{Tool: "alpha__echo"})
	if err != nil {
		return err
	}
	assistantURL, stopAssistant, err := assistant.Start()
	if err != nil {
		return err
	}
	defer stopAssistant()
	list = append(list,
		fmt.Sprintf("  %-9s %s (an A2A agent: its skills are tools helper__echo, helper__ask, …)", "helper", helperURL),
		fmt.Sprintf("  %-9s %s (an AG-UI agent users run through SAG)", "assistant", assistantURL))
	// The consent console's development sign-in (loopback only); --auth
	// open needs none.
	f.devLogin = f.auth != config.AuthOpen
	cfg, err := f.load()
	if err != nil {
		return err
	}
	cfg.Upstreams = append(cfg.Upstreams,
		config.Upstream{Name: "helper", Kind: "a2a", URL: helperURL},
		config.Upstream{Name: "assistant", Kind: "agui", URL: assistantURL, AgentKey: assistant.Key()})
	// The assistant's calls wait for alice's consent: a rule ahead of the
	// demo's own (the first matching rule decides).
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return err
	}
	agents := filepath.Join(cfg.DataDir, "demo-agents.yaml")
	if err := os.WriteFile(agents, fmt.Appendf(nil, demoAgentRules, cfg.ResolvedPublicURL()+"/agui/agents/assistant"), 0o600); err != nil {
		return err
	}
	cfg.Policy.Files = append(cfg.Policy.Files, agents)
	// The demo's allow-list (fixtures/allowlists/demo.yaml), written where
	// it can be read and edited: the gateway reloads it on change.
	allow := filepath.Join(cfg.DataDir, "demo-allowlist.yaml")
	if err := os.WriteFile(allow, fixtures.DemoAllowList, 0o600); err != nil {
		return err
	}
	cfg.Policy.Files = append(cfg.Policy.Files, allow)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := slog.New(fixtureConflicts{newLogger(cfg).Handler()})
	return run(ctx, cfg, log, func(base string) { printDemo(cfg, base, list) })
}

// demoAgentRules is the demo's allow-list for its AG-UI agent (%s: the
// agent's identity, which names the gateway's URL).
const demoAgentRules = `# sag demo: what the assistant agent may do when alice runs it.
id: demo-agents
version: "1"
rules:
  - id: assistant-asks-alice
    description: The assistant (an AG-UI agent run through SAG) may call
      alpha's echo for its user, each call with alice's consent.
    upstream: alpha
    tools: [echo]
    principals: {agents: [%q]}
    consent: always
`

// fixtureConflicts logs at debug level, instead of as warnings, the catalog
// conflicts the demo causes on purpose: its two fixtures serve the same
// resources, and beta's are left out. Every other record passes unchanged,
// so that a real problem still shows.
type fixtureConflicts struct{ slog.Handler }

func (h fixtureConflicts) Handle(ctx context.Context, r slog.Record) error {
	if r.Level == slog.LevelWarn && (r.Message == "catalog conflict" || r.Message == "upstream conflict") && isFixtureConflict(r) {
		if !h.Handler.Enabled(ctx, slog.LevelDebug) {
			return nil
		}
		r.Level = slog.LevelDebug
	}
	return h.Handler.Handle(ctx, r)
}

func (h fixtureConflicts) WithAttrs(as []slog.Attr) slog.Handler {
	return fixtureConflicts{h.Handler.WithAttrs(as)}
}

func (h fixtureConflicts) WithGroup(name string) slog.Handler {
	return fixtureConflicts{h.Handler.WithGroup(name)}
}

// isFixtureConflict reports whether r's detail is a resource of the beta
// fixture left out because the alpha fixture serves it.
func isFixtureConflict(r slog.Record) bool {
	found := false
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "detail" {
			d := a.Value.String()
			found = strings.HasPrefix(d, "resource fixture://") && strings.HasSuffix(d, " from upstream beta left out: already served by upstream alpha")
			return false
		}
		return true
	})
	return found
}

func printDemo(cfg *config.Config, base string, upstreams []string) {
	mcpURL := base + "/mcp"
	urlFlag := ""
	if mcpURL != defaultURL {
		urlFlag = " --url " + mcpURL
	}
	// Under --auth open the clients need no token; otherwise they mint a
	// DPoP-bound development token from the gateway's keys (--data, --sub).
	as := ""
	if cfg.Auth != config.AuthOpen {
		as = " --data " + cfg.DataDir + " --sub alice"
	}
	fmt.Printf(`
SAG demo is running (auth: %s).

  gateway   %s
upstreams:
%s

Try it from another terminal (in this repository):
  go run ./cmd/sag tools%s%s
  go run ./cmd/sag call%s%s alpha__echo '{"text":"hello through SAG"}'
  go run ./cmd/sag call%s%s beta__add '{"a":2,"b":40}'
`, cfg.Auth, mcpURL, strings.Join(upstreams, "\n"), urlFlag, as, urlFlag, as, urlFlag, as)
	who := "sign in as alice"
	if cfg.Auth == config.AuthOpen {
		who = "no sign-in under --auth open"
	}
	fmt.Printf(`
Consent: alpha__delete_everything is annotated destructive, so each call waits for alice.
  1. Open the consent console: %s/console/ (%s).
  2. Call it; the call waits, and the console shows it:
  go run ./cmd/sag call%s%s alpha__delete_everything '{"confirm":true}'
  3. Approve: the call completes. Deny: it returns the reason. Nothing reaches alpha before.

`, base, who, urlFlag, as)
	fmt.Printf(`Agents:
  An A2A agent behind SAG, as MCP tools (each request to it carries a token SAG minted for it):
  go run ./cmd/sag call%s%s helper__echo '{"message":"hello, agent"}'
  A2A clients: SAG's card %s/.well-known/agent-card.json, the agent's as SAG offers it
  (authenticated) %s/a2a/agents/helper/.well-known/agent-card.json
  Run the AG-UI agent "assistant" as alice: it calls alpha__echo through SAG, the call waits
  for alice's consent, and you answer right there (or in the console):
  go run ./cmd/sag agent%s%s assistant 'hello from alice'

`, urlFlag, as, base, base, urlFlag, as)
	if cfg.Auth != config.AuthOpen {
		key := filepath.Join(cfg.DataDir, "alice.jwk")
		fmt.Printf(`Each call sends an access token bound to a fresh DPoP key, with a new proof per request;
the upstreams receive tokens SAG minted for them, never yours. To hold a token yourself
(a POSIX shell):
  TOKEN=$(go run ./cmd/sag token --data %s --url %s --sub alice --dpop-key %s)
  go run ./cmd/sag call --url %s --token "$TOKEN" --dpop-key %[3]s alpha__echo '{"text":"with my own token"}'
Kill everything alice runs:
  go run ./cmd/sag kill --server %[2]s --data %[1]s --user alice
`, cfg.DataDir, base, key, mcpURL)
	} else {
		fmt.Printf(`Or with the MCP Inspector CLI (Node.js 22.19 or later):
  npx -y @modelcontextprotocol/inspector@2.12.0 --cli %s --transport http --method tools/list
`, mcpURL)
	}
	fmt.Printf(`
Allow-list (edit it: the gateway reloads it): %s
  alice may call alpha's tools (those not annotated read-only need her consent) and
  beta's echo and add; beta__add takes numbers up to 1000 only.
Admin API token: %s
Press Ctrl-C to stop.
`, cfg.Policy.Files[len(cfg.Policy.Files)-1], adminTokenHint(cfg))
}

func adminTokenHint(cfg *config.Config) string {
	if cfg.AdminToken != "" || cfg.AdminTokenFile != "" {
		return "as configured"
	}
	return "in " + filepath.Join(cfg.DataDir, server.AdminTokenFile)
}
