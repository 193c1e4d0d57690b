package server_test

import (
	"context"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/sag-gateway/sag/fixtures"
	"github.com/sag-gateway/sag/identity"
	"github.com/sag-gateway/sag/server"
	"github.com/sag-gateway/sag/server/config"
)

// TestFederatedSignIn signs a person in through a real OpenID Provider on
// loopback (zitadel/oidc): discovery, code with PKCE and nonce, the ID token
// verified, the subject prefixed with the provider's name, and the groups
// mapped so that an allow-list rule on them decides what the token may
// call.
func TestFederatedSignIn(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	base := "http://" + ln.Addr().String()
	op, err := fixtures.StartOIDCProvider([]fixtures.OIDCUser{
		{ID: "u-bob", Username: "bob", Password: "pw-bob", Email: "bob@corp.example", Groups: []string{"corp-finance", "corp-other"}},
		{ID: "u-eve", Username: "eve", Password: "pw-eve", Email: "eve@corp.example", Groups: []string{"corp-other"}},
	}, "sag-test", "sag-secret", base+identity.CallbackPath)
	if err != nil {
		ln.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { op.Close() })
	dir := t.TempDir()
	secret := filepath.Join(dir, "oidc-secret")
	policyFile := filepath.Join(dir, "finance.yaml")
	os.WriteFile(secret, []byte("sag-secret\n"), 0o600)
	// Only the finance group may call tools.
	os.WriteFile(policyFile, []byte("id: finance-only\nrules: [{id: fin, tools: ['*'], condition: '\"finance\" in user.groups', consent: never}]\n"), 0o600)
	up, _ := httpFixture(t, "alpha", false)

	cfg := config.Default()
	cfg.DataDir, cfg.AdminToken, cfg.Listen = dir, adminToken, ln.Addr().String()
	cfg.Policy.Files = []string{policyFile}
	cfg.Upstreams = []config.Upstream{{Name: "alpha", URL: up}}
	cfg.Identity.AuthorizationServer.Enabled = true
	cfg.Identity.AuthorizationServer.Federation = []config.FederatedProvider{{Name: "corp", Label: "Corp SSO", Issuer: op.Issuer,
		ClientID: "sag-test", ClientSecretFile: secret, SubjectClaim: "email", GroupMap: map[string]string{"corp-finance": "finance"}}}
	tg := launch(t, cfg, server.Deps{}, ln, 5*time.Second)
	client := publicClient(t, tg)
	key, _ := identity.NewDPoPKey()

	signIn := func(user, password string) map[string]any {
		t.Helper()
		b := newBrowser(t)
		verifier, challenge := pkce()
		resp, page := b.get(authorizeURL(tg, client, challenge, nil))
		if resp.StatusCode != http.StatusOK || !strings.Contains(page, "Sign in with Corp SSO") || strings.Contains(page, `name="password"`) {
			t.Fatalf("sign-in page: %d, want the provider's button and no password form:\n%s", resp.StatusCode, page)
		}
		f := formFields(t, page)
		f.Set("action", "federate")
		f.Set("provider", "corp")
		resp, _ = b.post(tg.Base+identity.AuthorizePath, f)
		// At the provider: its login page, then back to the gateway.
		_, page, _ = b.follow(resp, op.Issuer)
		id := regexp.MustCompile(`name="id" value="([^"]+)"`).FindStringSubmatch(page)
		if id == nil {
			t.Fatalf("no login form at the provider:\n%s", page)
		}
		resp, _ = b.post(op.Issuer+"/login/username", url.Values{"id": {id[1]}, "username": {user}, "password": {password}})
		_, _, loc := b.follow(resp, op.Issuer)
		if !strings.HasPrefix(loc, tg.Base+identity.CallbackPath+"?") {
			t.Fatalf("the provider sent the browser to %s", loc)
		}
		resp, page = b.get(loc)
		if resp.StatusCode != http.StatusOK || !strings.Contains(page, `value="approve"`) {
			t.Fatalf("back from the provider: %d, want the consent page:\n%s", resp.StatusCode, page)
		}
		// The callback's state is good once.
		if resp, _ := b.get(loc); resp.StatusCode != http.StatusForbidden {
			t.Fatalf("callback replayed: %d", resp.StatusCode)
		}
		f = formFields(t, page)
		f.Set("action", "approve")
		resp, _ = b.post(tg.Base+identity.AuthorizePath, f)
		code, tok := redeem(t, tg, key, client, redirectParams(t, resp).Get("code"), verifier)
		if code != http.StatusOK {
			t.Fatalf("token: %d %v", code, tok)
		}
		return tok
	}

	tok := signIn("bob", "pw-bob")
	c := decodeClaims(t, tok["access_token"].(string))
	if c.Subject != "corp:bob@corp.example" || len(c.Groups) != 1 || c.Groups[0] != "finance" || c.SessionID == "" {
		t.Fatalf("claims: sub %q groups %v sid %q; want corp:bob@corp.example, [finance] (corp-other unmapped), a sid", c.Subject, c.Groups, c.SessionID)
	}
	bob := &agent{key: key, token: tok["access_token"].(string)}
	if got := toolText(callTool(t, bob.connectVersion(t, tg.MCP, "2025-11-25"), "alpha__echo", map[string]any{"text": "hi"})); !strings.Contains(got, "hi") {
		t.Fatalf("bob (finance) echo: %q", got)
	}
	tok = signIn("eve", "pw-eve")
	if c := decodeClaims(t, tok["access_token"].(string)); c.Subject != "corp:eve@corp.example" || len(c.Groups) != 0 {
		t.Fatalf("eve's claims: sub %q groups %v", c.Subject, c.Groups)
	}
	eve := &agent{key: key, token: tok["access_token"].(string)}
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	res, err := eve.connectVersion(t, tg.MCP, "2025-11-25").CallTool(ctx, &mcp.CallToolParams{Name: "alpha__echo", Arguments: map[string]any{"text": "hi"}})
	if err == nil && !res.IsError {
		t.Fatalf("eve (no mapped group) called echo: %q", toolText(res))
	}
}

// follow follows redirects while they stay under within and returns the
// response that is not one, or the URL of the first redirect out.
func (b *webBrowser) follow(resp *http.Response, within string) (*http.Response, string, string) {
	b.t.Helper()
	for range 10 {
		if resp.StatusCode < 300 || resp.StatusCode > 399 {
			return resp, "", ""
		}
		loc, err := resp.Request.URL.Parse(resp.Header.Get("Location"))
		if err != nil {
			b.t.Fatal(err)
		}
		if !strings.HasPrefix(loc.String(), within) {
			return resp, "", loc.String()
		}
		var page string
		if resp, page = b.get(loc.String()); resp.StatusCode < 300 || resp.StatusCode > 399 {
			return resp, page, ""
		}
	}
	b.t.Fatal("too many redirects")
	return nil, "", ""
}
