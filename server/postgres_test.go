package server_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	mcpgo "github.com/mark3labs/mcp-go/mcp"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/sag-gateway/sag/consent"
	"github.com/sag-gateway/sag/fixtures"
	"github.com/sag-gateway/sag/identity"
	"github.com/sag-gateway/sag/internal/pgtest"
	"github.com/sag-gateway/sag/server"
	"github.com/sag-gateway/sag/server/config"
	"github.com/sag-gateway/sag/store"
)

// startPostgres starts a throwaway PostgreSQL for the test and returns it
// with the URL of a fresh database on it.
func startPostgres(t *testing.T) (*pgtest.Server, string) {
	t.Helper()
	pg, err := pgtest.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pg.Stop)
	db, err := pg.NewDatabase(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return pg, db
}

// TestGatewaysShareOnePostgres: two gateways on one PostgreSQL database,
// each with its own data directory, see one registry, one audit trail and
// one session graph: what one records and kills, the other finds.
func TestGatewaysShareOnePostgres(t *testing.T) {
	_, db := startPostgres(t)
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

// replicaURL is the public URL of test replicas, as a load balancer in
// front of them would serve it.
const replicaURL = "http://sag.test"

// replicas are gateways sharing one PostgreSQL database, one public URL and
// one set of signing keys, in --auth dpop in front of the fixture fx.
type replicas struct {
	gws  []*testGateway
	keys *identity.Keys
	fx   *fixtures.Fixture // the upstream fx
}

func startReplicas(t *testing.T, n int, mutate func(*config.Config)) *replicas {
	t.Helper()
	_, db := startPostgres(t)
	up, fx := httpFixture(t, "fx", false)
	r := &replicas{fx: fx}
	for i := range n {
		dir := t.TempDir()
		if i > 0 { // replicas share their signing keys' directory, as they share the public URL
			if err := os.Symlink(filepath.Join(r.gws[0].DataDir, server.KeysDir), filepath.Join(dir, server.KeysDir)); err != nil {
				t.Fatal(err)
			}
		}
		tg := startGateway(t, func(c *config.Config) {
			c.Auth, c.Store, c.PublicURL, c.DataDir = config.AuthDPoP, db, replicaURL, dir
			c.Upstreams = []config.Upstream{{Name: "fx", URL: up}}
			if mutate != nil {
				mutate(c)
			} else {
				allowAll(t, c)
			}
		})
		// The test reaches each on its own port (admin API, raw requests).
		tg.Base = "http://" + tg.Cfg.Listen
		tg.MCP = tg.Base + "/mcp"
		r.gws = append(r.gws, tg)
	}
	keys, err := identity.LoadKeys(filepath.Join(r.gws[0].DataDir, server.KeysDir))
	if err != nil {
		t.Fatal(err)
	}
	r.keys = keys
	return r
}

// agent returns an agent of the replicas' issuer.
func (r *replicas) agent(t *testing.T, subject string) *agent {
	t.Helper()
	key, err := identity.NewDPoPKey()
	if err != nil {
		t.Fatal(err)
	}
	tok, _, err := (&identity.Issuer{URL: replicaURL, Keys: r.keys}).Mint(identity.Claims{
		Subject: subject, Audience: identity.Audience{replicaURL}, Cnf: &identity.Confirmation{JKT: key.Thumbprint()},
	}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return &agent{key: key, token: tok}
}

// via returns a's client for replicaURL whose requests go to replica i:
// proofs name replicaURL, requests reach i's loopback port, as through the
// load balancer.
func (r *replicas) via(a *agent, i int) *http.Client {
	addr := r.gws[i].Cfg.Listen
	toReplica := roundTripper(func(req *http.Request) (*http.Response, error) {
		req = req.Clone(req.Context())
		req.URL.Host, req.Host = addr, ""
		return http.DefaultTransport.RoundTrip(req)
	})
	return &http.Client{Transport: &identity.DPoPTransport{Base: toReplica, Key: a.key, Token: func(context.Context) (string, error) { return a.token, nil }}}
}

// connect opens a's MCP session (version "" for the newest) through
// replica i, closed when the test ends.
func (r *replicas) connect(t *testing.T, ctx context.Context, a *agent, i int, version string) *mcp.ClientSession {
	t.Helper()
	c := mcp.NewClient(&mcp.Implementation{Name: "sag-replica-test", Version: "1"}, nil)
	cs, err := c.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: replicaURL + "/mcp", HTTPClient: r.via(a, i)}, &mcp.ClientSessionOptions{ProtocolVersion: version})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cs.Close() })
	return cs
}

type roundTripper func(*http.Request) (*http.Response, error)

func (f roundTripper) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// TestReplicasShareReplayCache: behind one public URL, a DPoP proof one
// gateway accepted is refused as a replay by another sharing the store
// (RFC 9449 §11.1), while a fresh proof is accepted there.
func TestReplicasShareReplayCache(t *testing.T) {
	r := startReplicas(t, 2, nil)
	alice := r.agent(t, "alice")
	// Each is reached on its own loopback port, as the load balancer would.
	atA, atB := r.gws[0].MCP, r.gws[1].MCP
	h := alice.headers(t, http.MethodPost, replicaURL+"/mcp")
	if resp := rawPost(t, atA, initBody, h); resp.Status != http.StatusOK {
		t.Fatalf("first use at A: %d %s", resp.Status, resp.Body)
	}
	if resp := rawPost(t, atB, initBody, h); resp.Status != http.StatusUnauthorized || !strings.Contains(string(resp.Body)+resp.Header.Get("WWW-Authenticate"), "replayed") {
		t.Errorf("the same proof at B: %d %s %s, want 401 proof replayed", resp.Status, resp.Header.Get("WWW-Authenticate"), resp.Body)
	}
	if resp := rawPost(t, atB, initBody, alice.headers(t, http.MethodPost, replicaURL+"/mcp")); resp.Status != http.StatusOK {
		t.Errorf("a fresh proof at B: %d %s", resp.Status, resp.Body)
	}
}

// TestReplicasShareConsent: a user following her consent requests on B
// is asked for a call made on A, and her approval through B releases it.
func TestReplicasShareConsent(t *testing.T) {
	file := filepath.Join(t.TempDir(), "consent.yaml")
	if err := os.WriteFile(file, []byte(consentPolicy), 0o600); err != nil {
		t.Fatal(err)
	}
	r := startReplicas(t, 2, func(c *config.Config) { c.Policy.Files = []string{file} })
	user := identity.Principal{Issuer: replicaURL, User: "alice"}
	// Alice follows her requests on B, where the load balancer sent her
	// console: A hears it, and asks her.
	if server.Following(r.gws[0].GW, user) {
		t.Fatal("A counts alice as following before she does")
	}
	pending, decide := server.ConsentChannel(t, r.gws[1].GW, user)
	eventually(t, "A hearing that alice follows on B", func() bool { return server.Following(r.gws[0].GW, user) })
	ctx, cancel := context.WithTimeout(context.Background(), 3*waitFor)
	defer cancel()
	cs := r.connect(t, ctx, r.agent(t, "alice"), 0, legacy)
	done := make(chan *mcp.CallToolResult, 1)
	go func() {
		res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "fx__echo", Arguments: map[string]any{"text": "across"}})
		if err != nil {
			t.Error(err)
		}
		done <- res
	}()
	req := pendingFor(t, ctx, pending, "across")
	if _, err := decide(ctx, req.ID, consent.Decision{Approved: true, By: user, Channel: "test"}); err != nil {
		t.Fatal(err)
	}
	select {
	case res := <-done:
		if res == nil || res.IsError || toolText(res) != "across" {
			t.Errorf("the call on A after approval through B: %+v", res)
		}
	case <-time.After(waitFor):
		t.Fatal("the call on A still waits after its approval through B")
	}
}

// TestPostgresRestart: while its PostgreSQL is down a gateway is not ready
// and refuses calls with a clear error (it could not hear a kill, nor
// write the session graph); once PostgreSQL is back it serves again, on
// the same MCP session, without being restarted itself.
func TestPostgresRestart(t *testing.T) {
	pg, db := startPostgres(t)
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
	// Refused for whichever the gateway notices first: it cannot hear the
	// others, or cannot write the audit record.
	refused := regexp.MustCompile(`cannot hear the other gateways|audit unavailable`)
	switch {
	case err == nil && !res.IsError:
		t.Fatalf("a call succeeded with PostgreSQL down: %q", toolText(res))
	case err != nil && !refused.MatchString(err.Error()):
		t.Errorf("call with PostgreSQL down: %v", err)
	case err == nil && !refused.MatchString(toolText(res)):
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

// deafStore is the real store, deaf to other gateways on demand.
type deafStore struct {
	server.Store
	deaf atomic.Bool
}

func (s *deafStore) Listening() bool { return !s.deaf.Load() && s.Store.Listening() }

// TestDeafGatewayFailsClosed: a gateway that cannot hear the other
// gateways' kills refuses calls with a clear error and is not ready, until
// it hears them again.
func TestDeafGatewayFailsClosed(t *testing.T) {
	up, _ := httpFixture(t, "fx", false)
	dir := t.TempDir()
	st, err := store.Open(context.Background(), dir, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ds := &deafStore{Store: st}
	g := startGatewayDeps(t, server.Deps{Store: ds}, func(c *config.Config) {
		c.DataDir = dir
		c.Upstreams = []config.Upstream{{Name: "fx", URL: up}}
	})
	cs := connect(t, g.MCP, legacy, nil)
	ds.deaf.Store(true)
	res, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "fx__echo", Arguments: map[string]any{"text": "deaf"}})
	switch {
	case err == nil && !res.IsError:
		t.Errorf("a call while deaf succeeded: %q", toolText(res))
	case err != nil && !strings.Contains(err.Error(), "cannot hear the other gateways"):
		t.Errorf("a call while deaf: %v", err)
	case err == nil && !strings.Contains(toolText(res), "cannot hear the other gateways"):
		t.Errorf("a call while deaf: %q", toolText(res))
	}
	resp, err := http.Get(g.Base + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("/readyz while deaf: %d", resp.StatusCode)
	}
	ds.deaf.Store(false)
	if res := callTool(t, cs, "fx__echo", map[string]any{"text": "hearing"}); toolText(res) != "hearing" {
		t.Errorf("a call once hearing again: %q", toolText(res))
	}
}

// TestReplicasSharePolicy: an allow-list registered through A's admin API
// decides calls on B, and its removal through B on A.
func TestReplicasSharePolicy(t *testing.T) {
	r := startReplicas(t, 2, func(*config.Config) {}) // no allow-list: everything denied
	a, b := r.gws[0], r.gws[1]
	alice := r.agent(t, "alice")
	ctx, cancel := context.WithTimeout(context.Background(), 3*waitFor)
	defer cancel()
	onA, onB := r.connect(t, ctx, alice, 0, ""), r.connect(t, ctx, alice, 1, "")
	allowed := func(cs *mcp.ClientSession) bool {
		res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "fx__echo", Arguments: map[string]any{"text": "hi"}})
		return err == nil && !res.IsError && toolText(res) == "hi"
	}
	if allowed(onB) {
		t.Fatal("B allowed a call before any allow-list")
	}
	doc := "id: fx-owner\nrules: [{id: alice-echo, tools: [echo], principals: {users: [alice]}}]\n"
	if code, body := a.adminDo(t, http.MethodPut, "/admin/upstreams/fx/allowlist", doc); code != http.StatusOK {
		t.Fatalf("register on A: %d %s", code, body)
	}
	eventually(t, "B allowing alice's echo under the allow-list registered on A", func() bool { return allowed(onB) })
	if code, body := b.adminDo(t, http.MethodDelete, "/admin/upstreams/fx/allowlist", nil); code != http.StatusNoContent {
		t.Fatalf("remove on B: %d %s", code, body)
	}
	eventually(t, "A denying alice's echo once B removed the allow-list", func() bool { return !allowed(onA) })
}

// TestReplicasContinueSessions: a 2025 client's MCP session opened on A
// goes on through B without affinity, with what the client established
// (its elicitation capability, its log level); it stays its caller's (to
// another it does not exist on either replica), and a kill on A ends it on
// B.
func TestReplicasContinueSessions(t *testing.T) {
	r := startReplicas(t, 3, nil)
	alice := r.agent(t, "alice")
	var at atomic.Int32 // the replica the load balancer sends alice to
	toReplica := roundTripper(func(req *http.Request) (*http.Response, error) {
		req = req.Clone(req.Context())
		req.URL.Host, req.Host = r.gws[at.Load()].Cfg.Listen, ""
		return http.DefaultTransport.RoundTrip(req)
	})
	logs := make(chan string, 8)
	c := mcp.NewClient(&mcp.Implementation{Name: "alice", Version: "1"}, &mcp.ClientOptions{
		ElicitationHandler: func(context.Context, *mcp.ElicitRequest) (*mcp.ElicitResult, error) {
			return &mcp.ElicitResult{Action: "accept", Content: map[string]any{"answer": "from alice"}}, nil
		},
		LoggingMessageHandler: func(_ context.Context, req *mcp.LoggingMessageRequest) {
			b, _ := json.Marshal(req.Params.Data)
			logs <- string(b)
		},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 3*waitFor)
	defer cancel()
	cs, err := c.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: replicaURL + "/mcp", MaxRetries: -1,
		HTTPClient: &http.Client{Transport: &identity.DPoPTransport{Base: toReplica, Key: alice.key, Token: func(context.Context) (string, error) { return alice.token, nil }}}},
		&mcp.ClientSessionOptions{ProtocolVersion: legacy})
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	if err := cs.SetLoggingLevel(ctx, &mcp.SetLoggingLevelParams{Level: "info"}); err != nil {
		t.Fatal(err)
	}
	if res := callTool(t, cs, "fx__echo", map[string]any{"text": "on A"}); toolText(res) != "on A" {
		t.Fatalf("echo on A = %q", toolText(res))
	}

	at.Store(1)
	if res := callTool(t, cs, "fx__echo", map[string]any{"text": "on B"}); toolText(res) != "on B" {
		t.Fatalf("echo on B, the session opened on A = %q", toolText(res))
	}
	// A's record reaches the shared audit table when A moves its journal.
	eventually(t, "both calls in the audit trail, in one MCP session", func() bool {
		recs := auditRecords(t, r.gws[1], "fx__echo")
		return len(recs) == 2 && recs[0].MSID == cs.ID() && recs[1].MSID == cs.ID()
	})
	if res := callTool(t, cs, "fx__ask", map[string]any{"question": "name?"}); toolText(res) != "answer: from alice" {
		t.Errorf("elicitation on B = %q, want the answer of alice's client", toolText(res))
	}
	if res := callTool(t, cs, "fx__log", map[string]any{"message": "logged on B"}); toolText(res) != "logged" {
		t.Errorf("log on B = %q", toolText(res))
	}
	select {
	case l := <-logs:
		if !strings.Contains(l, "logged on B") {
			t.Errorf("log message on B = %s", l)
		}
	case <-time.After(5 * time.Second):
		t.Error("the log level alice set on A did not hold on B: no log message")
	}

	// To another caller the session does not exist: on A which opened
	// it, on B which now serves it, and on C which has not seen it.
	bob := r.agent(t, "bob")
	for i, g := range r.gws {
		h := bob.headers(t, http.MethodPost, replicaURL+"/mcp")
		h.Set("Mcp-Session-Id", cs.ID())
		h.Set("Mcp-Protocol-Version", legacy)
		if resp := rawPost(t, g.MCP, `{"jsonrpc":"2.0","id":2,"method":"tools/list"}`, h); resp.Status != http.StatusNotFound {
			t.Errorf("bob using alice's session on replica %d: %d %s, want 404", i, resp.Status, resp.Body)
		}
	}

	if code, body := r.gws[0].adminDo(t, http.MethodPost, "/admin/kill", server.KillRequest{Session: cs.ID()}); code != http.StatusOK {
		t.Fatalf("kill on A: %d %s", code, body)
	}
	eventually(t, "the killed session refused on B", func() bool {
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		_, err := cs.CallTool(cctx, &mcp.CallToolParams{Name: "fx__echo", Arguments: map[string]any{"text": "after the kill"}})
		return err != nil
	})
}

// TestReplicasShareKeys: a key rotation on A is loaded by B (they share the
// keys directory): B accepts a token signed with the new key at once.
func TestReplicasShareKeys(t *testing.T) {
	r := startReplicas(t, 2, nil)
	var rotated server.KeysResponse
	code, body := r.gws[0].adminDo(t, http.MethodPost, "/admin/keys/rotate", nil)
	if code != http.StatusOK || json.Unmarshal(body, &rotated) != nil {
		t.Fatalf("rotate on A: %d %s", code, body)
	}
	keys, err := identity.LoadKeys(filepath.Join(r.gws[0].DataDir, server.KeysDir))
	if err != nil || keys.KeyID() != rotated.Active {
		t.Fatalf("the keys after the rotation: %v, active %s, want %s", err, keys.KeyID(), rotated.Active)
	}
	r.keys = keys
	alice := r.agent(t, "alice") // her token is signed with the new key
	eventually(t, "B accepting a token signed with the key A rotated to", func() bool {
		h := alice.headers(t, http.MethodPost, replicaURL+"/mcp")
		return rawPost(t, r.gws[1].MCP, initBody, h).Status == http.StatusOK
	})
}

// TestReplicasShareRateLimits: a rule's rate limit holds across replicas:
// the one call a minute alice may make on A leaves her none on B.
func TestReplicasShareRateLimits(t *testing.T) {
	file := filepath.Join(t.TempDir(), "limit.yaml")
	if err := os.WriteFile(file, []byte("id: limit\nrules: [{id: one-a-minute, tools: [echo], rate_limit: {per_minute: 1, burst: 1}, consent: never}]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := startReplicas(t, 2, func(c *config.Config) { c.Policy.Files = []string{file} })
	alice := r.agent(t, "alice")
	ctx, cancel := context.WithTimeout(context.Background(), 3*waitFor)
	defer cancel()
	call := func(i int) *mcp.CallToolResult {
		res, err := r.connect(t, ctx, alice, i, "").CallTool(ctx, &mcp.CallToolParams{Name: "fx__echo", Arguments: map[string]any{"text": "hi"}})
		if err != nil {
			return toolError(err.Error())
		}
		return res
	}
	if res := call(0); res.IsError || toolText(res) != "hi" {
		t.Fatalf("the first call, on A: %s", toolText(res))
	}
	if res := call(1); !res.IsError || !strings.Contains(toolText(res), "rate limit of rule one-a-minute exceeded") {
		t.Errorf("the second call, on B: %s; want the limit A's call spent", toolText(res))
	}
}

// TestReplicasShareSignIns: a person's sign-in goes from replica to replica
// (the authorization request on A, the password on B, the consent on C),
// the code is redeemed on A, and a replay of it on B is refused and revokes
// what it issued, on C too.
func TestReplicasShareSignIns(t *testing.T) {
	const base = "http://127.0.0.1:9" // the load balancer's address
	hash, err := identity.HashPassword(signInPassword)
	if err != nil {
		t.Fatal(err)
	}
	r := startReplicas(t, 3, func(c *config.Config) {
		allowAll(t, c)
		c.Identity.AuthorizationServer.Enabled = true
		c.Identity.AuthorizationServer.Users = []config.LocalUser{{Name: signInUser, PasswordHash: hash}}
		// Sign-in needs an https public URL, or a loopback one.
		c.PublicURL = base
	})
	var at atomic.Int32 // the replica the load balancer sends the next request to
	route := roundTripper(func(req *http.Request) (*http.Response, error) {
		req = req.Clone(req.Context())
		req.URL.Host, req.Host = r.gws[at.Load()].Cfg.Listen, ""
		return http.DefaultTransport.RoundTrip(req)
	})
	jar, _ := cookiejar.New(nil)
	b := &webBrowser{t: t, c: &http.Client{Jar: jar, Transport: route, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
	post := func(path, contentType, body string, key *identity.DPoPKey) (int, map[string]any) {
		req, _ := http.NewRequest(http.MethodPost, base+path, strings.NewReader(body))
		req.Header.Set("Content-Type", contentType)
		if key != nil {
			proof, err := key.Proof(http.MethodPost, base+path, "", "")
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("DPoP", proof)
		}
		resp, body2 := b.do(req)
		var out map[string]any
		_ = json.Unmarshal([]byte(body2), &out)
		return resp.StatusCode, out
	}

	at.Store(2)
	code, out := post(identity.RegisterPath, "application/json", `{"redirect_uris":["`+testRedirect+`"],"client_name":"Test Client","grant_types":["authorization_code","refresh_token"]}`, nil)
	if code != http.StatusCreated {
		t.Fatalf("register on C: %d %v", code, out)
	}
	client := out["client_id"].(string)
	verifier, challenge := pkce()
	q := url.Values{"response_type": {"code"}, "client_id": {client}, "redirect_uri": {testRedirect}, "code_challenge": {challenge},
		"code_challenge_method": {"S256"}, "resource": {base}, "state": {"st"}}
	at.Store(0)
	resp, page := b.get(base + identity.AuthorizePath + "?" + q.Encode())
	if resp.StatusCode != http.StatusOK || !strings.Contains(page, `name="password"`) {
		t.Fatalf("authorize on A: %d, want the sign-in page:\n%s", resp.StatusCode, page)
	}
	f := formFields(t, page)
	f.Set("action", "signin")
	f.Set("username", signInUser)
	f.Set("password", signInPassword)
	at.Store(1)
	resp, page = b.post(base+identity.AuthorizePath, f)
	if resp.StatusCode != http.StatusOK || !strings.Contains(page, `value="approve"`) {
		t.Fatalf("sign-in on B: %d, want the consent page:\n%s", resp.StatusCode, page)
	}
	f = formFields(t, page)
	f.Set("action", "approve")
	at.Store(2)
	resp, _ = b.post(base+identity.AuthorizePath, f)
	got := redirectParams(t, resp)
	if got.Get("code") == "" || got.Get("state") != "st" {
		t.Fatalf("approval on C: %v", got)
	}

	key, _ := identity.NewDPoPKey()
	redeemAt := func(i int) (int, map[string]any) {
		at.Store(int32(i))
		form := url.Values{"grant_type": {"authorization_code"}, "client_id": {client}, "code": {got.Get("code")},
			"redirect_uri": {testRedirect}, "code_verifier": {verifier}}
		return post(identity.TokenPath, "application/x-www-form-urlencoded", form.Encode(), key)
	}
	code, tok := redeemAt(0)
	if code != http.StatusOK || tok["access_token"] == nil {
		t.Fatalf("the code redeemed on A: %d %v", code, tok)
	}
	a := &agent{key: key, token: tok["access_token"].(string)}
	if resp := rawPost(t, r.gws[2].MCP, initBody, a.headers(t, http.MethodPost, base+"/mcp")); resp.Status != http.StatusOK {
		t.Fatalf("the token on C: %d %s", resp.Status, resp.Body)
	}
	code, out = redeemAt(1)
	wantTokenError(t, code, out, http.StatusBadRequest, "invalid_grant")
	eventually(t, "the replayed code's token refused on C", func() bool {
		return rawPost(t, r.gws[2].MCP, initBody, a.headers(t, http.MethodPost, base+"/mcp")).Status == http.StatusUnauthorized
	})
}

// TestReplicasSharePinApprovals: a tool whose definition changed is
// quarantined on every replica; its owner's approval through A brings it
// back on B.
func TestReplicasSharePinApprovals(t *testing.T) {
	r := startReplicas(t, 2, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 3*waitFor)
	defer cancel()
	onB := r.connect(t, ctx, r.agent(t, "alice"), 1, legacy)
	offered := func() bool { _, ok := toolNames(t, onB)["fx__echo"]; return ok }
	if !offered() {
		t.Fatal("fx__echo not offered on B before the change")
	}
	changed := mcpgo.NewToolWithRawSchema("echo", "Echoes, and now also something else.",
		json.RawMessage(`{"type":"object","properties":{"text":{"type":"string"}},"required":["text"]}`))
	r.fx.MCPServer().AddTool(changed, func(context.Context, mcpgo.CallToolRequest) (*mcpgo.CallToolResult, error) {
		return mcpgo.NewToolResultText("changed"), nil
	})
	eventually(t, "fx__echo quarantined on B", func() bool { return !offered() })
	var pending string
	eventually(t, "the change pending on A", func() bool {
		code, body := r.gws[0].adminDo(t, http.MethodGet, "/admin/upstreams/fx/tools", nil)
		var pins []server.ToolPinResponse
		if code != http.StatusOK || json.Unmarshal(body, &pins) != nil {
			return false
		}
		for _, p := range pins {
			if p.Tool == "echo" && p.State == "quarantined" {
				pending = p.Pending
			}
		}
		return pending != ""
	})
	if code, body := r.gws[0].adminDo(t, http.MethodPost, "/admin/upstreams/fx/tools/echo/approve", map[string]string{"hash": pending}); code != http.StatusNoContent {
		t.Fatalf("approve on A: %d %s", code, body)
	}
	eventually(t, "fx__echo offered again on B", offered)
}
