package server_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/sag-gateway/sag/fixtures"
	"github.com/sag-gateway/sag/identity"
	"github.com/sag-gateway/sag/server"
	"github.com/sag-gateway/sag/server/config"
)

// verifyingUpstream starts a DPoP gateway and registers a fixture that
// accepts only tokens the gateway minted for it (checked at the gateway's
// introspection endpoint on every request).
func verifyingUpstream(t *testing.T, stateless bool) (*testGateway, *fixtures.Fixture, string) {
	t.Helper()
	tg := startGateway(t, func(c *config.Config) { c.Auth = config.AuthDPoP; allowAll(t, c) })
	f := fixtures.NewServer(fixtures.Options{Name: "fx", Verify: &fixtures.Verify{
		JWKSURL: tg.Base + "/.well-known/jwks.json", Issuer: tg.Base, Actor: tg.Base,
		IntrospectURL: tg.Base + "/oauth/introspect", IntrospectToken: adminToken,
	}})
	up, stop, err := f.StartHTTP(stateless)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	tg.addUpstream(t, server.UpstreamRequest{Name: "fx", URL: up})
	return tg, f, up
}

// TestUpstreamTokens: every request the upstream receives carries a token the
// gateway minted for it (aud = the upstream, sub = the user, act = the gateway
// with the agent before it, DPoP-bound with a fresh proof); the caller's own
// token never reaches it.
func TestUpstreamTokens(t *testing.T) {
	for _, stateless := range []bool{false, true} {
		t.Run(map[bool]string{false: "session", true: "stateless"}[stateless], func(t *testing.T) {
			tg, f, up := verifyingUpstream(t, stateless)
			a := newAgent(t, tg, identity.Claims{Subject: "alice", Scope: "files"})
			cs := a.connect(t, tg.MCP)
			for i := 0; i < 3; i++ {
				res := callTool(t, cs, "fx__whoami", nil)
				if res.IsError || !strings.Contains(res.Content[0].(*mcp.TextContent).Text, `"sub":"alice"`) {
					t.Fatalf("whoami: %+v", res.Content[0])
				}
			}
			v := f.Verified()
			if n := v.Refused.Load(); n != 0 {
				t.Fatalf("the upstream refused %d requests: %v", n, v.Reasons())
			}
			users := 0
			for _, c := range v.Claims() {
				if len(c.Audience) != 1 || c.Audience[0] != up || c.Issuer != tg.Base || c.Cnf == nil || c.Cnf.JKT == "" {
					t.Errorf("token not audience-restricted or not bound: %+v", c)
				}
				if c.Expiry-c.IssuedAt > int64(5*time.Minute/time.Second) {
					t.Errorf("token lives %ds", c.Expiry-c.IssuedAt)
				}
				if c.Subject == "alice" {
					users++
					if c.Act == nil || c.Act.Sub != tg.Base || c.Scope != "files" {
						t.Errorf("user token without the gateway as actor: %+v", c)
					}
				}
			}
			if users < 3 {
				t.Errorf("%d accepted requests carried alice's token, want at least 3", users)
			}
			// The caller's own token does not open the upstream.
			h := a.headers(t, "POST", up)
			if r := rawPost(t, up, initBody, h); r.Status != http.StatusUnauthorized {
				t.Errorf("upstream accepted the caller's token: %d", r.Status)
			}
		})
	}
}

// TestKillSwitch kills an MCP session while a call is in flight and measures
// how long until every effect is observed: the call returns, the upstream's
// handler is cancelled, the session is gone, the minted token is inactive at
// introspection and refused by the upstream, and later requests are refused.
func TestKillSwitch(t *testing.T) {
	tg, f, up := verifyingUpstream(t, false)
	started, ended := blockTool(f)
	// The new tool reaches the catalog through list_changed.
	a := newAgent(t, tg, identity.Claims{Subject: "alice"})
	cs := a.connectVersion(t, tg.MCP, legacy)
	if cs.ID() == "" {
		t.Fatal("no MCP session id")
	}
	eventually(t, "fx__block in the catalog", func() bool {
		res, err := cs.ListTools(context.Background(), nil)
		if err != nil {
			return false
		}
		for _, tool := range res.Tools {
			if tool.Name == "fx__block" {
				return true
			}
		}
		return false
	})
	callDone := make(chan error, 1)
	go func() {
		_, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "fx__block", Arguments: map[string]any{}})
		callDone <- err
	}()
	select {
	case <-started:
	case <-time.After(waitFor):
		t.Fatal("the call never reached the upstream")
	}
	minted := f.Verified().Tokens()
	tok := minted[len(minted)-1]

	start := time.Now()
	code, body := tg.adminDo(t, http.MethodPost, "/admin/kill", server.KillRequest{Session: cs.ID()})
	if code != http.StatusOK {
		t.Fatalf("kill: %d %s", code, body)
	}
	var res server.KillResult
	if err := json.Unmarshal(body, &res); err != nil {
		t.Fatal(err)
	}
	if res.CancelledCalls != 1 || res.ClosedSessions != 1 {
		t.Errorf("kill result %+v, want 1 call cancelled and 1 session closed", res)
	}
	t.Logf("%s after %s", "kill API", time.Since(start))
	select {
	case err := <-callDone:
		if err == nil {
			t.Error("the killed call succeeded")
		}
	case <-time.After(waitFor):
		t.Fatal("the killed call did not return")
	}
	t.Logf("%s after %s", "call returned", time.Since(start))
	select {
	case <-ended:
	case <-time.After(waitFor):
		t.Fatal("the upstream never saw the cancellation")
	}
	t.Logf("%s after %s", "upstream cancelled", time.Since(start))
	if introspect(t, tg, tok) {
		t.Error("the killed session's minted token is still active at introspection")
	}
	t.Logf("%s after %s", "introspection", time.Since(start))
	// The upstream refuses it even with a valid proof of the gateway's key.
	key, err := identity.LoadOrCreateDPoPKey(filepath.Join(tg.DataDir, server.DPoPKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	proof, _ := key.Proof("POST", up, tok, "")
	if r := rawPost(t, up, initBody, http.Header{"Authorization": {"DPoP " + tok}, "Dpop": {proof}}); r.Status != http.StatusUnauthorized || !strings.Contains(string(r.Body), "not active") {
		t.Errorf("upstream with the killed token: %d %s", r.Status, r.Body)
	}
	t.Logf("%s after %s", "upstream refused", time.Since(start))
	// The session is gone: the client's next request fails, and a raw
	// request on the session id is refused.
	if _, err := cs.ListTools(context.Background(), nil); err == nil {
		t.Error("the killed session still answers")
	}
	t.Logf("%s after %s", "session gone", time.Since(start))
	elapsed := time.Since(start)
	t.Logf("time to kill (API call until every effect observed): %s", elapsed)
	h := a.headers(t, "POST", tg.MCP)
	h.Set("Mcp-Session-Id", cs.ID())
	h.Set("Mcp-Protocol-Version", legacy)
	if r := rawPost(t, tg.MCP, `{"jsonrpc":"2.0","id":9,"method":"tools/list"}`, h); r.Status != http.StatusNotFound {
		t.Errorf("request on the killed session: %d, want 404", r.Status)
	}
	// The audit trail has the kill, and the killed call says why it ended.
	if recs := auditMethod(t, tg, "admin/kill"); len(recs) != 1 {
		t.Errorf("%d kill records, want 1", len(recs))
	}
	if recs := auditRecords(t, tg, "fx__block"); len(recs) != 1 || recs[0].Decision != "error" || recs[0].Reason != "session killed" {
		t.Errorf("the killed call's record: %+v", recs)
	}
}

// TestKillUser kills every session of a user: new sessions of that user are
// refused too, other users are untouched.
func TestKillUser(t *testing.T) {
	tg, _, _ := verifyingUpstream(t, true)
	alice := newAgent(t, tg, identity.Claims{Subject: "alice"})
	bob := newAgent(t, tg, identity.Claims{Subject: "bob"})
	csA, csB := alice.connect(t, tg.MCP), bob.connect(t, tg.MCP)
	callTool(t, csA, "fx__echo", map[string]any{"text": "a"})
	callTool(t, csB, "fx__echo", map[string]any{"text": "b"})
	if code, body := tg.adminDo(t, http.MethodPost, "/admin/kill", server.KillRequest{User: "alice"}); code != http.StatusOK {
		t.Fatalf("kill: %d %s", code, body)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	c := mcp.NewClient(&mcp.Implementation{Name: "again", Version: "1"}, nil)
	// Refused at the edge, before the SDK opens a session for it.
	if cs, err := c.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: tg.MCP, HTTPClient: alice.client()}, nil); err == nil {
		cs.Close()
		t.Error("a killed user opened a new MCP session")
	}
	if res := callTool(t, csB, "fx__echo", map[string]any{"text": "b"}); res.IsError {
		t.Errorf("bob was hit by alice's kill: %+v", res)
	}
	for _, bad := range []server.KillRequest{{}, {User: "a", Agent: "b"}} {
		if code, _ := tg.adminDo(t, http.MethodPost, "/admin/kill", bad); code != http.StatusBadRequest {
			t.Errorf("kill %+v: %d, want 400", bad, code)
		}
	}
	if code, _ := tg.adminDo(t, http.MethodPost, "/admin/kill", server.KillRequest{User: "nobody"}); code != http.StatusOK {
		t.Errorf("kill of a user never seen (their tokens are refused from now on): %d, want 200", code)
	}
}

// introspect reports whether the gateway's introspection endpoint says tok
// is active.
func introspect(t *testing.T, tg *testGateway, tok string) bool {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, tg.Base+"/oauth/introspect", strings.NewReader(url.Values{"token": {tok}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Authorization", "Bearer "+adminToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct {
		Active bool `json:"active"`
	}
	if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&out) != nil {
		t.Fatalf("introspect: %d", resp.StatusCode)
	}
	return out.Active
}

func auditMethod(t *testing.T, tg *testGateway, method string) []map[string]any {
	t.Helper()
	code, body := tg.adminDo(t, http.MethodGet, "/admin/audit?limit=1000", nil)
	if code != http.StatusOK {
		t.Fatalf("audit: %d", code)
	}
	var out []map[string]any
	for line := range strings.SplitSeq(strings.TrimSpace(string(body)), "\n") {
		var r map[string]any
		if json.Unmarshal([]byte(line), &r) == nil && r["method"] == method {
			out = append(out, r)
		}
	}
	return out
}

// TestRevocation: a token revoked at /oauth/revoke (RFC 7009) is refused on
// the next request and inactive at introspection; both endpoints need a
// client credential, and malformed requests get invalid_request.
func TestRevocation(t *testing.T) {
	tg, _, _ := verifyingUpstream(t, true)
	a := newAgent(t, tg, identity.Claims{Subject: "alice"})
	if !introspect(t, tg, a.token) {
		t.Fatal("a fresh token is inactive")
	}
	form := func(path, body, auth string) int {
		req, _ := http.NewRequest(http.MethodPost, tg.Base+path, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	tokenForm := url.Values{"token": {a.token}}.Encode()
	if code := form("/oauth/revoke", tokenForm, ""); code != http.StatusUnauthorized {
		t.Errorf("revoke without a client credential: %d, want 401", code)
	}
	if code := form("/oauth/introspect", tokenForm, "Bearer wrong"); code != http.StatusUnauthorized {
		t.Errorf("introspect with a wrong credential: %d, want 401", code)
	}
	if code := form("/oauth/revoke", "token=a&token=b", "Bearer "+adminToken); code != http.StatusBadRequest {
		t.Errorf("two token parameters: %d, want 400", code)
	}
	if code := form("/oauth/revoke", "token=not-a-token", "Bearer "+adminToken); code != http.StatusOK {
		t.Errorf("revoking garbage: %d, want 200 (RFC 7009 §2.2)", code)
	}
	if code := form("/oauth/revoke", tokenForm, "Bearer "+adminToken); code != http.StatusOK {
		t.Fatalf("revoke: %d", code)
	}
	if introspect(t, tg, a.token) {
		t.Error("a revoked token is active")
	}
	r := rawPost(t, tg.MCP, initBody, a.headers(t, "POST", tg.MCP))
	if r.Status != http.StatusUnauthorized || !strings.Contains(r.Header.Get("WWW-Authenticate"), "token revoked") {
		t.Errorf("request with a revoked token: %d %v", r.Status, r.Header.Values("WWW-Authenticate"))
	}
	// A resource server may introspect with a token carrying sag:introspect.
	rs := newAgent(t, tg, identity.Claims{Subject: "fixture", Scope: server.IntrospectScope})
	req, _ := http.NewRequest(http.MethodPost, tg.Base+"/oauth/introspect", strings.NewReader(tokenForm))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := rs.client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("introspection with a sag:introspect token: %d", resp.StatusCode)
	}
}
