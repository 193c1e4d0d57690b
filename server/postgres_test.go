package server_test

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/sag-gateway/sag/identity"
	"github.com/sag-gateway/sag/internal/pgtest"
	"github.com/sag-gateway/sag/server"
	"github.com/sag-gateway/sag/server/config"
	"github.com/sag-gateway/sag/store"
)

// TestGatewaysShareOnePostgres: two gateways on one PostgreSQL database,
// each with its own data directory, see one registry, one audit trail and
// one session graph: what one records and kills, the other finds.
func TestGatewaysShareOnePostgres(t *testing.T) {
	pg, err := pgtest.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pg.Stop)
	db, err := pg.NewDatabase(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	upURL, f := httpFixture(t, "keep", false)
	started, ended := blockTool(f)
	onPG := func(c *config.Config) { c.Store = db }

	a := startGateway(t, onPG)
	b := startGateway(t, onPG)
	if a.DataDir == b.DataDir {
		t.Fatal("the two gateways share a data directory")
	}
	a.addUpstream(t, server.UpstreamRequest{Name: "keep", URL: upURL, ProtocolVersion: legacy})

	cs := connect(t, a.MCP, legacy, nil)
	if res := callTool(t, cs, "keep__echo", map[string]any{"text": "shared"}); toolText(res) != "shared" {
		t.Fatalf("keep__echo = %q", toolText(res))
	}
	if code, body := a.adminDo(t, http.MethodPost, "/admin/kill", server.KillRequest{Session: cs.ID()}); code != http.StatusOK {
		t.Fatalf("kill on A: %d %s", code, body)
	}

	// B sees A's call in the audit trail and A's kill in the graph.
	eventually(t, "A's call in B's audit trail", func() bool {
		recs := auditRecords(t, b, "keep__echo")
		return len(recs) == 1 && recs[0].MSID == cs.ID()
	})
	code, body := b.adminDo(t, http.MethodGet, "/admin/sessions/"+cs.ID(), nil)
	var node store.Session
	if code != http.StatusOK || json.Unmarshal(body, &node) != nil || node.State != store.StateRevoked {
		t.Errorf("B's view of the session A killed: %d %s", code, body)
	}
	// A kill on A stops a call in flight on B, and B's MCP session, within
	// a second.
	csB := connect(t, b.MCP, legacy, nil)
	eventually(t, "keep__block in B's catalog", func() bool {
		res, err := csB.ListTools(context.Background(), nil)
		return err == nil && slices.ContainsFunc(res.Tools, func(tool *mcp.Tool) bool { return tool.Name == "keep__block" })
	})
	callDone := make(chan error, 1)
	go func() {
		_, err := csB.CallTool(context.Background(), &mcp.CallToolParams{Name: "keep__block", Arguments: map[string]any{}})
		callDone <- err
	}()
	select {
	case <-started:
	case <-time.After(waitFor):
		t.Fatal("B's call never reached the upstream")
	}
	start := time.Now()
	if code, body := a.adminDo(t, http.MethodPost, "/admin/kill", server.KillRequest{Session: csB.ID()}); code != http.StatusOK {
		t.Fatalf("kill on A of B's session: %d %s", code, body)
	}
	select {
	case err := <-callDone:
		if err == nil {
			t.Error("B's killed call succeeded")
		}
	case <-time.After(time.Second):
		t.Fatal("B's call still runs a second after the kill on A")
	}
	t.Logf("B's call ended %v after the kill on A", time.Since(start))
	select {
	case <-ended:
	case <-time.After(waitFor):
		t.Fatal("the upstream never saw B's call cancelled")
	}
	if _, err := csB.ListTools(context.Background(), nil); err == nil {
		t.Error("B's killed session still answers")
	}

	// A gateway started after the registration finds the upstream in the
	// store and serves its tools.
	c := startGateway(t, onPG)
	cs2 := connect(t, c.MCP, legacy, nil)
	if res := callTool(t, cs2, "keep__echo", map[string]any{"text": "from C"}); toolText(res) != "from C" {
		t.Errorf("keep__echo through C = %q", toolText(res))
	}
}

// TestReplicasShareReplayCache: behind one public URL, a DPoP proof one
// gateway accepted is refused as a replay by another sharing the store
// (RFC 9449 §11.1), while a fresh proof is accepted there.
func TestReplicasShareReplayCache(t *testing.T) {
	pg, err := pgtest.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pg.Stop)
	db, err := pg.NewDatabase(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	up, _ := httpFixture(t, "fx", false)
	const public = "http://sag.test"
	replica := func(dir string) func(*config.Config) {
		return func(c *config.Config) {
			c.Auth, c.Store, c.PublicURL = config.AuthDPoP, db, public
			c.Upstreams = []config.Upstream{{Name: "fx", URL: up}}
			allowAll(t, c)
			if dir != "" {
				c.DataDir = dir
			}
		}
	}
	a := startGateway(t, replica(""))
	// Replicas share their signing keys, as they share the public URL.
	bDir := t.TempDir()
	if err := os.CopyFS(filepath.Join(bDir, server.KeysDir), os.DirFS(filepath.Join(a.DataDir, server.KeysDir))); err != nil {
		t.Fatal(err)
	}
	b := startGateway(t, replica(bDir))

	keys, err := identity.LoadKeys(filepath.Join(a.DataDir, server.KeysDir))
	if err != nil {
		t.Fatal(err)
	}
	key, err := identity.NewDPoPKey()
	if err != nil {
		t.Fatal(err)
	}
	tok, _, err := (&identity.Issuer{URL: public, Keys: keys}).Mint(identity.Claims{
		Subject: "alice", Audience: identity.Audience{public}, Cnf: &identity.Confirmation{JKT: key.Thumbprint()},
	}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	headers := func() http.Header {
		proof, err := key.Proof(http.MethodPost, public+"/mcp", tok, "")
		if err != nil {
			t.Fatal(err)
		}
		return http.Header{"Authorization": {"DPoP " + tok}, "Dpop": {proof}}
	}
	// Both are reached on their own loopback ports, as a load balancer
	// in front of sag.test would.
	atA, atB := "http://"+a.Cfg.Listen+"/mcp", "http://"+b.Cfg.Listen+"/mcp"
	h := headers()
	if r := rawPost(t, atA, initBody, h); r.Status != http.StatusOK {
		t.Fatalf("first use at A: %d %s", r.Status, r.Body)
	}
	if r := rawPost(t, atB, initBody, h); r.Status != http.StatusUnauthorized || !strings.Contains(string(r.Body)+r.Header.Get("WWW-Authenticate"), "replayed") {
		t.Errorf("the same proof at B: %d %s %s, want 401 proof replayed", r.Status, r.Header.Get("WWW-Authenticate"), r.Body)
	}
	if r := rawPost(t, atB, initBody, headers()); r.Status != http.StatusOK {
		t.Errorf("a fresh proof at B: %d %s", r.Status, r.Body)
	}
}

// TestPostgresRestart: while its PostgreSQL is down a gateway is not ready
// and refuses calls with a clear error (it could not hear a kill, nor
// write the session graph); once PostgreSQL is back it serves again, on
// the same MCP session, without being restarted itself.
func TestPostgresRestart(t *testing.T) {
	pg, err := pgtest.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pg.Stop)
	db, err := pg.NewDatabase(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	up, _ := httpFixture(t, "fx", false)
	g := startGateway(t, func(c *config.Config) {
		c.Store = db
		c.Upstreams = []config.Upstream{{Name: "fx", URL: up}}
	})
	ready := func() int {
		resp, err := http.Get(g.Base + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	cs := connect(t, g.MCP, legacy, nil)
	if res := callTool(t, cs, "fx__echo", map[string]any{"text": "before"}); toolText(res) != "before" {
		t.Fatalf("fx__echo = %q", toolText(res))
	}

	pg.Kill()
	eventually(t, "not ready with PostgreSQL down", func() bool { return ready() == http.StatusServiceUnavailable })
	res, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "fx__echo", Arguments: map[string]any{"text": "during"}})
	switch {
	case err == nil && !res.IsError:
		t.Fatalf("a call succeeded with PostgreSQL down: %q", toolText(res))
	case err != nil && !strings.Contains(err.Error(), "cannot hear the other gateways"):
		t.Errorf("call with PostgreSQL down: %v", err)
	case err == nil && !strings.Contains(toolText(res), "cannot hear the other gateways"):
		t.Errorf("call with PostgreSQL down: %q", toolText(res))
	}

	if err := pg.Restart(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "ready once PostgreSQL is back", func() bool { return ready() == http.StatusOK })
	eventually(t, "a call on the same session once PostgreSQL is back", func() bool {
		res, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "fx__echo", Arguments: map[string]any{"text": "after"}})
		return err == nil && !res.IsError && toolText(res) == "after"
	})
}
