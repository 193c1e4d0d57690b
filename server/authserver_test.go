package server_test

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/sag-gateway/sag/identity"
	"github.com/sag-gateway/sag/server"
	"github.com/sag-gateway/sag/server/config"
)

const (
	signInUser     = "alice"
	signInPassword = "correct horse battery staple"
	testRedirect   = "http://127.0.0.1:7777/callback"
)

var (
	hashOnce   sync.Once
	signInHash string
)

// asGateway starts a DPoP gateway with the authorization server on, one
// local user and the mcp-go fixture behind it.
func asGateway(t testing.TB, mutate func(*config.Config)) *testGateway {
	t.Helper()
	hashOnce.Do(func() {
		var err error
		if signInHash, err = identity.HashPassword(signInPassword); err != nil {
			t.Fatal(err)
		}
	})
	up, _ := httpFixture(t, "alpha", false)
	return startGateway(t, func(c *config.Config) {
		c.Auth = config.AuthDPoP
		allowAll(t, c)
		c.Upstreams = []config.Upstream{{Name: "alpha", URL: up}}
		c.Identity.AuthorizationServer.Enabled = true
		c.Identity.AuthorizationServer.Users = []config.LocalUser{{Name: signInUser, PasswordHash: signInHash, Groups: []string{"finance"}}}
		if mutate != nil {
			mutate(c)
		}
	})
}

// webBrowser is a person's browser: cookies, and redirects not followed.
type webBrowser struct {
	t testing.TB
	c *http.Client
}

func newBrowser(t testing.TB) *webBrowser {
	jar, _ := cookiejar.New(nil)
	return &webBrowser{t: t, c: &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

func (b *webBrowser) do(req *http.Request) (*http.Response, string) {
	b.t.Helper()
	resp, err := b.c.Do(req)
	if err != nil {
		b.t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(body)
}

func (b *webBrowser) get(u string) (*http.Response, string) {
	b.t.Helper()
	req, _ := http.NewRequest(http.MethodGet, u, nil)
	return b.do(req)
}

func (b *webBrowser) post(u string, form url.Values) (*http.Response, string) {
	b.t.Helper()
	req, _ := http.NewRequest(http.MethodPost, u, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	return b.do(req)
}

var hiddenField = regexp.MustCompile(`name="(request|csrf)" value="([^"]+)"`)

// formFields returns the hidden request and csrf fields of a page.
func formFields(t testing.TB, page string) url.Values {
	t.Helper()
	f := url.Values{}
	for _, m := range hiddenField.FindAllStringSubmatch(page, -1) {
		f.Set(m[1], m[2])
	}
	if f.Get("request") == "" || f.Get("csrf") == "" {
		t.Fatalf("no form on the page:\n%s", page)
	}
	return f
}

// pkce returns a verifier and its S256 challenge.
func pkce() (string, string) {
	verifier := identity.NewID() + identity.NewID()
	sum := sha256.Sum256([]byte(verifier))
	return verifier, base64.RawURLEncoding.EncodeToString(sum[:])
}

// authorizeURL builds an authorization request; extra overrides or removes
// (empty value) parameters.
func authorizeURL(tg *testGateway, clientID, challenge string, extra map[string]string) string {
	q := url.Values{"response_type": {"code"}, "client_id": {clientID}, "redirect_uri": {testRedirect},
		"code_challenge": {challenge}, "code_challenge_method": {"S256"}, "resource": {tg.Base}, "state": {"st-123"}}
	for k, v := range extra {
		if v == "" {
			q.Del(k)
		} else {
			q.Set(k, v)
		}
	}
	return tg.Base + identity.AuthorizePath + "?" + q.Encode()
}

// redirectParams checks that resp redirects to the client and returns the
// parameters it carries.
func redirectParams(t testing.TB, resp *http.Response) url.Values {
	t.Helper()
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("status %d, want a 303 redirect to the client", resp.StatusCode)
	}
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil || !strings.HasPrefix(loc.String(), "http://127.0.0.1:7777/callback?") {
		t.Fatalf("redirect to %q, want the client's redirect URI", resp.Header.Get("Location"))
	}
	return loc.Query()
}

// signInAndApprove walks the pages: sign in, allow the client (unless the
// user allowed it before); it returns the redirect's parameters.
func (b *webBrowser) signInAndApprove(tg *testGateway, authorize string) url.Values {
	b.t.Helper()
	resp, page := b.get(authorize)
	if resp.StatusCode != http.StatusOK || !strings.Contains(page, `name="password"`) {
		b.t.Fatalf("authorize: status %d, want the sign-in page:\n%s", resp.StatusCode, page)
	}
	f := formFields(b.t, page)
	f.Set("action", "signin")
	f.Set("username", signInUser)
	f.Set("password", signInPassword)
	resp, page = b.post(tg.Base+identity.AuthorizePath, f)
	if resp.StatusCode == http.StatusSeeOther {
		return redirectParams(b.t, resp) // allowed before: no consent page
	}
	if resp.StatusCode != http.StatusOK || !strings.Contains(page, `value="approve"`) {
		b.t.Fatalf("sign-in: status %d, want the consent page:\n%s", resp.StatusCode, page)
	}
	f = formFields(b.t, page)
	f.Set("action", "approve")
	resp, _ = b.post(tg.Base+identity.AuthorizePath, f)
	return redirectParams(b.t, resp)
}

// register registers a client dynamically and returns its id.
func register(t testing.TB, tg *testGateway, meta map[string]any) (int, map[string]any) {
	t.Helper()
	body, _ := json.Marshal(meta)
	return postProved(t, tg, identity.RegisterPath, "application/json", string(body), nil)
}

func publicClient(t testing.TB, tg *testGateway) string {
	t.Helper()
	code, out := register(t, tg, map[string]any{"redirect_uris": []string{testRedirect}, "client_name": "Test Client", "grant_types": []string{"authorization_code", "refresh_token"}})
	if code != http.StatusCreated {
		t.Fatalf("register: %d %v", code, out)
	}
	return out["client_id"].(string)
}

// tokenRequest posts form to the token endpoint, with a DPoP proof of key
// when key is not nil.
func tokenRequest(t testing.TB, tg *testGateway, key *identity.DPoPKey, form url.Values) (int, map[string]any) {
	t.Helper()
	return postProved(t, tg, identity.TokenPath, "application/x-www-form-urlencoded", form.Encode(), key)
}

// postProved posts body to the gateway's path with a DPoP proof of key (nil:
// none) and returns the status and the JSON answer.
func postProved(t testing.TB, tg *testGateway, path, contentType, body string, key *identity.DPoPKey) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, tg.Base+path, strings.NewReader(body))
	req.Header.Set("Content-Type", contentType)
	if key != nil {
		proof, err := key.Proof(http.MethodPost, tg.Base+path, "", "")
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("DPoP", proof)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

func redeem(t testing.TB, tg *testGateway, key *identity.DPoPKey, client, code, verifier string) (int, map[string]any) {
	t.Helper()
	return tokenRequest(t, tg, key, url.Values{"grant_type": {"authorization_code"}, "client_id": {client}, "code": {code},
		"redirect_uri": {testRedirect}, "code_verifier": {verifier}})
}

func refresh(t testing.TB, tg *testGateway, key *identity.DPoPKey, client, token string) (int, map[string]any) {
	t.Helper()
	return tokenRequest(t, tg, key, url.Values{"grant_type": {"refresh_token"}, "client_id": {client}, "refresh_token": {token}})
}

func wantTokenError(t testing.TB, code int, out map[string]any, status int, oauthErr string) {
	t.Helper()
	if code != status || out["error"] != oauthErr {
		t.Fatalf("got %d %v, want %d %s", code, out, status, oauthErr)
	}
	if _, issued := out["access_token"]; issued {
		t.Fatalf("a token was issued with the error: %v", out)
	}
}

// TestSignInFlow is the whole flow a client such as VS Code runs: metadata,
// registration, sign-in and consent, code with PKCE, a DPoP-bound token that
// works at /mcp, refresh with rotation, and the remembered consent.
func TestSignInFlow(t *testing.T) {
	tg := asGateway(t, nil)

	var prm, asm map[string]any
	getJSON(t, tg.Base+"/.well-known/oauth-protected-resource", &prm)
	if s, _ := prm["authorization_servers"].([]any); len(s) == 0 || s[0] != tg.Base {
		t.Fatalf("protected resource metadata names no authorization server: %v", prm)
	}
	getJSON(t, tg.Base+"/.well-known/oauth-authorization-server", &asm)
	for k, want := range map[string]any{"issuer": tg.Base, "authorization_endpoint": tg.Base + "/oauth/authorize", "token_endpoint": tg.Base + "/oauth/token",
		"registration_endpoint": tg.Base + "/oauth/register", "client_id_metadata_document_supported": true, "authorization_response_iss_parameter_supported": true} {
		if asm[k] != want {
			t.Errorf("metadata %s = %v, want %v", k, asm[k], want)
		}
	}
	if m, _ := asm["code_challenge_methods_supported"].([]any); len(m) != 1 || m[0] != "S256" {
		t.Errorf("code_challenge_methods_supported = %v, want [S256]", asm["code_challenge_methods_supported"])
	}

	client := publicClient(t, tg)
	b := newBrowser(t)
	verifier, challenge := pkce()
	got := b.signInAndApprove(tg, authorizeURL(tg, client, challenge, nil))
	if got.Get("state") != "st-123" || got.Get("iss") != tg.Base || got.Get("code") == "" {
		t.Fatalf("authorization response %v: want code, state st-123 and iss %s (RFC 9207)", got, tg.Base)
	}
	key, _ := identity.NewDPoPKey()
	code, tok := redeem(t, tg, key, client, got.Get("code"), verifier)
	if code != http.StatusOK || tok["token_type"] != "DPoP" || tok["refresh_token"] == nil {
		t.Fatalf("token: %d %v", code, tok)
	}
	claims := decodeClaims(t, tok["access_token"].(string))
	if claims.Subject != signInUser || claims.ClientID != client || claims.SessionID == "" || claims.Cnf == nil || claims.Cnf.JKT != key.Thumbprint() ||
		len(claims.Audience) != 1 || claims.Audience[0] != tg.Base || len(claims.Groups) != 1 {
		t.Fatalf("access token claims %+v", claims)
	}

	// The token works at /mcp, DPoP-bound.
	a := &agent{key: key, token: tok["access_token"].(string)}
	cs := a.connectVersion(t, tg.MCP, "2025-11-25")
	if names := toolNames(t, cs); len(names) == 0 {
		t.Fatal("no tools listed")
	}

	// Refresh rotates; the old refresh token is then spent, and using it
	// again revokes the family (the new one too).
	code, tok2 := refresh(t, tg, key, client, tok["refresh_token"].(string))
	if code != http.StatusOK || tok2["refresh_token"] == tok["refresh_token"] {
		t.Fatalf("refresh: %d %v", code, tok2)
	}
	if c2 := decodeClaims(t, tok2["access_token"].(string)); c2.SessionID != claims.SessionID {
		t.Fatalf("refreshed token has sid %q, want the sign-in's %q", c2.SessionID, claims.SessionID)
	}
	code, out := refresh(t, tg, key, client, tok["refresh_token"].(string))
	wantTokenError(t, code, out, http.StatusBadRequest, "invalid_grant")
	code, out = refresh(t, tg, key, client, tok2["refresh_token"].(string))
	wantTokenError(t, code, out, http.StatusBadRequest, "invalid_grant")

	// Signed in and allowed before: the next request goes straight back
	// with a code.
	verifier, challenge = pkce()
	resp, _ := b.get(authorizeURL(tg, client, challenge, map[string]string{"state": "again"}))
	again := redirectParams(t, resp)
	if again.Get("code") == "" || again.Get("state") != "again" {
		t.Fatalf("second authorization: %v", again)
	}
	code, tok3 := redeem(t, tg, key, client, again.Get("code"), verifier)
	if code != http.StatusOK {
		t.Fatalf("second token: %d %v", code, tok3)
	}

	// The user withdraws what they allowed the client: its refresh
	// token for them stops working, and the next request asks again.
	del, _ := http.NewRequest(http.MethodDelete, tg.Base+"/console/api/clients/"+client, nil)
	if resp, err := a.client().Do(del); err != nil || resp.StatusCode != http.StatusNoContent {
		t.Fatalf("withdraw the client: %v %v", resp, err)
	}
	code, out = refresh(t, tg, key, client, tok3["refresh_token"].(string))
	wantTokenError(t, code, out, http.StatusBadRequest, "invalid_grant")
	verifier, challenge = pkce()
	if resp, page := b.get(authorizeURL(tg, client, challenge, nil)); resp.StatusCode != http.StatusOK || !strings.Contains(page, `value="approve"`) {
		t.Fatalf("after withdrawing: status %d, want the consent page again", resp.StatusCode)
	}
	if resp, err := a.client().Do(del); err != nil || resp.StatusCode != http.StatusNotFound {
		t.Fatalf("withdraw again: %v %v", resp, err)
	}
	_, page := b.get(authorizeURL(tg, client, challenge, nil))
	f := formFields(t, page)
	f.Set("action", "approve")
	resp, _ = b.post(tg.Base+identity.AuthorizePath, f)
	code, tok3 = redeem(t, tg, key, client, redirectParams(t, resp).Get("code"), verifier)
	if code != http.StatusOK {
		t.Fatalf("token after allowing again: %d %v", code, tok3)
	}

	// Killing the user ends the sign-in: its refresh tokens and its
	// browser session stop working.
	if code, body := tg.adminDo(t, http.MethodPost, "/admin/kill", server.KillRequest{User: signInUser}); code != http.StatusOK {
		t.Fatalf("kill: %d %s", code, body)
	}
	code, out = refresh(t, tg, key, client, tok3["refresh_token"].(string))
	wantTokenError(t, code, out, http.StatusBadRequest, "invalid_grant")
	_, challenge = pkce()
	if resp, page := b.get(authorizeURL(tg, client, challenge, nil)); resp.StatusCode != http.StatusOK || !strings.Contains(page, `name="password"`) {
		t.Fatalf("after the kill: status %d, want the sign-in page again", resp.StatusCode)
	}
}

func decodeClaims(t testing.TB, tok string) identity.Claims {
	t.Helper()
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("not a JWT")
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var c identity.Claims
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	return c
}

// TestSignInAttacks: each attack is refused with the RFC's error, and
// nothing is issued.
func TestSignInAttacks(t *testing.T) {
	tg := asGateway(t, nil)
	client := publicClient(t, tg)
	key, _ := identity.NewDPoPKey()
	b := newBrowser(t)
	// One sign-in for the browser; later requests need consent only.
	verifier, challenge := pkce()
	first := b.signInAndApprove(tg, authorizeURL(tg, client, challenge, nil))
	code, tok := redeem(t, tg, key, client, first.Get("code"), verifier)
	if code != http.StatusOK {
		t.Fatalf("token: %d %v", code, tok)
	}
	// freshCode runs a request through (signed in, allowed) and returns
	// its code and verifier.
	freshCode := func(extra map[string]string) (string, string) {
		t.Helper()
		verifier, challenge := pkce()
		resp, _ := b.get(authorizeURL(tg, client, challenge, extra))
		return redirectParams(t, resp).Get("code"), verifier
	}

	t.Run("code replay revokes what the code issued", func(t *testing.T) {
		c, v := freshCode(nil)
		status, tok := redeem(t, tg, key, client, c, v)
		if status != http.StatusOK {
			t.Fatalf("first redemption: %d %v", status, tok)
		}
		status, out := redeem(t, tg, key, client, c, v)
		wantTokenError(t, status, out, http.StatusBadRequest, "invalid_grant")
		status, out = refresh(t, tg, key, client, tok["refresh_token"].(string))
		wantTokenError(t, status, out, http.StatusBadRequest, "invalid_grant")
		a := &agent{key: key, token: tok["access_token"].(string)}
		req, _ := http.NewRequest(http.MethodPost, tg.MCP, strings.NewReader(`{"jsonrpc":"2.0","id":1,"method":"ping"}`))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json, text/event-stream")
		resp, err := a.client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("the replayed code's access token still works at /mcp: %d", resp.StatusCode)
		}
	})
	t.Run("PKCE missing, plain or wrong", func(t *testing.T) {
		resp, _ := b.get(authorizeURL(tg, client, "", map[string]string{"code_challenge": ""}))
		if p := redirectParams(t, resp); p.Get("error") != "invalid_request" || p.Get("code") != "" {
			t.Fatalf("no challenge: %v", p)
		}
		_, ch := pkce()
		resp, _ = b.get(authorizeURL(tg, client, ch, map[string]string{"code_challenge_method": "plain"}))
		if p := redirectParams(t, resp); p.Get("error") != "invalid_request" || p.Get("code") != "" {
			t.Fatalf("plain: %v", p)
		}
		c, _ := freshCode(nil)
		other, _ := pkce()
		status, out := redeem(t, tg, key, client, c, other)
		wantTokenError(t, status, out, http.StatusBadRequest, "invalid_grant")
		c, _ = freshCode(nil)
		status, out = redeem(t, tg, key, client, c, "")
		wantTokenError(t, status, out, http.StatusBadRequest, "invalid_request")
	})
	t.Run("redirect URI mismatch and open redirects are never followed", func(t *testing.T) {
		_, ch := pkce()
		for _, r := range []string{"http://127.0.0.1:7777/other", "https://evil.example/callback", "http://evil.example:7777/callback", testRedirect + "?next=https://evil.example"} {
			resp, page := b.get(authorizeURL(tg, client, ch, map[string]string{"redirect_uri": r}))
			if resp.StatusCode != http.StatusBadRequest || resp.Header.Get("Location") != "" || !strings.Contains(page, "redirect_uri") {
				t.Errorf("redirect_uri %s: status %d, Location %q", r, resp.StatusCode, resp.Header.Get("Location"))
			}
		}
		// RFC 8252 §7.3: a loopback redirect URI matches at any port.
		resp, _ := b.get(authorizeURL(tg, client, ch, map[string]string{"redirect_uri": "http://127.0.0.1:40123/callback"}))
		if resp.StatusCode != http.StatusSeeOther || !strings.HasPrefix(resp.Header.Get("Location"), "http://127.0.0.1:40123/callback?code=") {
			t.Errorf("loopback port flexibility: %d %s", resp.StatusCode, resp.Header.Get("Location"))
		}
		// The token request must name the same redirect URI.
		c, v := freshCode(nil)
		status, out := tokenRequest(t, tg, key, url.Values{"grant_type": {"authorization_code"}, "client_id": {client}, "code": {c},
			"redirect_uri": {"http://127.0.0.1:7777/other"}, "code_verifier": {v}})
		wantTokenError(t, status, out, http.StatusBadRequest, "invalid_grant")
	})
	t.Run("resource missing or another", func(t *testing.T) {
		_, ch := pkce()
		resp, _ := b.get(authorizeURL(tg, client, ch, map[string]string{"resource": ""}))
		if p := redirectParams(t, resp); p.Get("error") != "invalid_request" {
			t.Fatalf("no resource: %v", p)
		}
		resp, _ = b.get(authorizeURL(tg, client, ch, map[string]string{"resource": "https://other.example/mcp"}))
		if p := redirectParams(t, resp); p.Get("error") != "invalid_target" {
			t.Fatalf("another resource: %v", p)
		}
		c, v := freshCode(nil)
		status, out := tokenRequest(t, tg, key, url.Values{"grant_type": {"authorization_code"}, "client_id": {client}, "code": {c},
			"redirect_uri": {testRedirect}, "code_verifier": {v}, "resource": {"https://other.example"}})
		wantTokenError(t, status, out, http.StatusBadRequest, "invalid_target")
	})
	t.Run("another client's code", func(t *testing.T) {
		c, v := freshCode(nil)
		status, out := redeem(t, tg, key, publicClient(t, tg), c, v)
		wantTokenError(t, status, out, http.StatusBadRequest, "invalid_grant")
	})
	t.Run("no DPoP proof where only DPoP-bound tokens are issued", func(t *testing.T) {
		c, v := freshCode(nil)
		status, out := redeem(t, tg, nil, client, c, v)
		wantTokenError(t, status, out, http.StatusBadRequest, "invalid_request")
	})
	t.Run("dpop_jkt names another key", func(t *testing.T) {
		other, _ := identity.NewDPoPKey()
		c, v := freshCode(map[string]string{"dpop_jkt": other.Thumbprint()})
		status, out := redeem(t, tg, key, client, c, v)
		wantTokenError(t, status, out, http.StatusBadRequest, "invalid_dpop_proof")
	})
	t.Run("a DPoP-bound refresh token without its key", func(t *testing.T) {
		c, v := freshCode(nil)
		status, tok := redeem(t, tg, key, client, c, v)
		if status != http.StatusOK {
			t.Fatal(status, tok)
		}
		other, _ := identity.NewDPoPKey()
		status, out := refresh(t, tg, other, client, tok["refresh_token"].(string))
		wantTokenError(t, status, out, http.StatusBadRequest, "invalid_grant")
		status, out = refresh(t, tg, nil, client, tok["refresh_token"].(string))
		wantTokenError(t, status, out, http.StatusBadRequest, "invalid_grant")
		// Neither attempt spent it: its holder still refreshes.
		if status, out := refresh(t, tg, key, client, tok["refresh_token"].(string)); status != http.StatusOK {
			t.Fatalf("the rightful refresh: %d %v", status, out)
		}
	})
	t.Run("CSRF on the sign-in and consent forms", func(t *testing.T) {
		fresh := newBrowser(t)
		_, ch := pkce()
		// A client alice never allowed, so that the consent page comes.
		_, page := fresh.get(authorizeURL(tg, publicClient(t, tg), ch, nil))
		f := formFields(t, page)
		f.Set("action", "signin")
		f.Set("username", signInUser)
		f.Set("password", signInPassword)
		bad := url.Values{}
		for k, v := range f {
			bad[k] = v
		}
		bad.Set("csrf", identity.NewID())
		if resp, _ := fresh.post(tg.Base+identity.AuthorizePath, bad); resp.StatusCode != http.StatusForbidden {
			t.Errorf("wrong CSRF token: %d", resp.StatusCode)
		}
		// The right token from another browser (no cookie of this one).
		if resp, _ := newBrowser(t).post(tg.Base+identity.AuthorizePath, f); resp.StatusCode != http.StatusForbidden {
			t.Errorf("form from another browser: %d", resp.StatusCode)
		}
		req, _ := http.NewRequest(http.MethodPost, tg.Base+identity.AuthorizePath, strings.NewReader(f.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Origin", "https://evil.example")
		if resp, _ := fresh.do(req); resp.StatusCode != http.StatusForbidden {
			t.Errorf("form from a foreign origin: %d", resp.StatusCode)
		}
		// The consent form, signed in, with a wrong token.
		resp, page := fresh.post(tg.Base+identity.AuthorizePath, f)
		if resp.StatusCode != http.StatusOK || !strings.Contains(page, `value="approve"`) {
			t.Fatalf("sign-in: %d", resp.StatusCode)
		}
		f = formFields(t, page)
		f.Set("action", "approve")
		f.Set("csrf", identity.NewID())
		if resp, _ := fresh.post(tg.Base+identity.AuthorizePath, f); resp.StatusCode != http.StatusForbidden || resp.Header.Get("Location") != "" {
			t.Errorf("consent with a wrong CSRF token: %d", resp.StatusCode)
		}
	})
	t.Run("wrong passwords end the request", func(t *testing.T) {
		fresh := newBrowser(t)
		_, ch := pkce()
		_, page := fresh.get(authorizeURL(tg, client, ch, nil))
		f := formFields(t, page)
		f.Set("action", "signin")
		f.Set("username", signInUser)
		f.Set("password", "wrong")
		for i := 1; i < 5; i++ {
			if resp, page := fresh.post(tg.Base+identity.AuthorizePath, f); resp.StatusCode != http.StatusOK || !strings.Contains(page, "Wrong name or password") {
				t.Fatalf("attempt %d: %d", i, resp.StatusCode)
			}
		}
		resp, _ := fresh.post(tg.Base+identity.AuthorizePath, f)
		if p := redirectParams(t, resp); p.Get("error") != "access_denied" {
			t.Fatalf("fifth wrong password: %v", p)
		}
	})
	t.Run("denied", func(t *testing.T) {
		fresh := newBrowser(t)
		_, ch := pkce()
		_, page := fresh.get(authorizeURL(tg, client, ch, nil))
		f := formFields(t, page)
		f.Set("action", "signin")
		f.Set("username", signInUser)
		f.Set("password", signInPassword)
		// This browser's sign-in is new, but the user allowed the client
		// before: no consent page.
		resp, _ := fresh.post(tg.Base+identity.AuthorizePath, f)
		if p := redirectParams(t, resp); p.Get("code") == "" {
			t.Fatalf("remembered consent: %v", p)
		}
		other := publicClient(t, tg)
		_, page = fresh.get(authorizeURL(tg, other, ch, nil))
		f = formFields(t, page)
		f.Set("action", "deny")
		resp, _ = fresh.post(tg.Base+identity.AuthorizePath, f)
		if p := redirectParams(t, resp); p.Get("error") != "access_denied" || p.Get("code") != "" {
			t.Fatalf("deny: %v", p)
		}
	})
	t.Run("registration refuses bad metadata", func(t *testing.T) {
		for _, meta := range []map[string]any{
			{"redirect_uris": []string{"javascript:alert(1)"}},
			{"redirect_uris": []string{"http://evil.example/cb"}},
			{"redirect_uris": []string{}},
			{"redirect_uris": []string{testRedirect}, "grant_types": []string{"password"}},
		} {
			if code, out := register(t, tg, meta); code != http.StatusBadRequest || out["client_id"] != nil {
				t.Errorf("register %v: %d %v", meta, code, out)
			}
		}
	})
	t.Run("unknown client", func(t *testing.T) {
		_, ch := pkce()
		resp, _ := b.get(authorizeURL(tg, "no-such-client", ch, nil))
		if resp.StatusCode != http.StatusBadRequest || resp.Header.Get("Location") != "" {
			t.Fatalf("unknown client: %d %s", resp.StatusCode, resp.Header.Get("Location"))
		}
	})
	t.Run("metadata document at a private address", func(t *testing.T) {
		// The document server is on loopback: refused without
		// metadata_allow_private, and nothing is fetched from it.
		var fetched atomic.Bool
		doc := httptest.NewTLSServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { fetched.Store(true) }))
		defer doc.Close()
		_, ch := pkce()
		resp, page := b.get(authorizeURL(tg, doc.URL+"/client.json", ch, nil))
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(page, "not public") || fetched.Load() {
			t.Fatalf("private document: %d fetched=%v\n%s", resp.StatusCode, fetched.Load(), page)
		}
	})
}

// TestConsoleClient: the console is a first-party client of the
// authorization server: its config points at it, and signing in is the
// consent (no consent page).
func TestConsoleClient(t *testing.T) {
	tg := asGateway(t, nil)
	var cc server.ConsoleConfig
	getJSON(t, tg.Base+"/console/config", &cc)
	if cc.SignIn == nil || cc.SignIn.ClientID != server.ConsoleClientID || cc.SignIn.RedirectURI != tg.Base+"/console/" || cc.SignIn.Authorize != tg.Base+identity.AuthorizePath {
		t.Fatalf("console config: %+v", cc.SignIn)
	}
	b := newBrowser(t)
	_, challenge := pkce()
	q := url.Values{"response_type": {"code"}, "client_id": {server.ConsoleClientID}, "redirect_uri": {tg.Base + "/console/"},
		"code_challenge": {challenge}, "code_challenge_method": {"S256"}, "resource": {tg.Base}, "state": {"c1"}}
	_, page := b.get(tg.Base + identity.AuthorizePath + "?" + q.Encode())
	f := formFields(t, page)
	f.Set("action", "signin")
	f.Set("username", signInUser)
	f.Set("password", signInPassword)
	resp, _ := b.post(tg.Base+identity.AuthorizePath, f)
	if loc := resp.Header.Get("Location"); resp.StatusCode != http.StatusSeeOther || !strings.HasPrefix(loc, tg.Base+"/console/?code=") {
		t.Fatalf("console sign-in: %d to %q, want straight back to the console with a code", resp.StatusCode, loc)
	}
}

// TestSignInBearerAndNoRegistration: under --auth bearer a client without a
// DPoP key gets a bearer token that works at /mcp; with
// dynamic_registration off there is no registration endpoint.
func TestSignInBearerAndNoRegistration(t *testing.T) {
	tg := asGateway(t, func(c *config.Config) {
		c.Auth = config.AuthBearer
		c.Identity.AuthorizationServer.DynamicRegistration = false
		c.Identity.AuthorizationServer.Clients = []config.OAuthClient{{ID: "old-cli", Name: "Old CLI", RedirectURIs: []string{testRedirect}}}
	})
	var asm map[string]any
	getJSON(t, tg.Base+"/.well-known/oauth-authorization-server", &asm)
	if _, ok := asm["registration_endpoint"]; ok {
		t.Fatalf("metadata names a registration endpoint: %v", asm["registration_endpoint"])
	}
	if code, _ := register(t, tg, map[string]any{"redirect_uris": []string{testRedirect}}); code != http.StatusNotFound && code != http.StatusMethodNotAllowed {
		t.Fatalf("registration while off: %d", code)
	}
	verifier, challenge := pkce()
	got := newBrowser(t).signInAndApprove(tg, authorizeURL(tg, "old-cli", challenge, nil))
	code, tok := redeem(t, tg, nil, "old-cli", got.Get("code"), verifier)
	if code != http.StatusOK || tok["token_type"] != "Bearer" {
		t.Fatalf("token without a proof under --auth bearer: %d %v", code, tok)
	}
	if c := decodeClaims(t, tok["access_token"].(string)); c.Cnf != nil {
		t.Fatalf("a bearer token with cnf: %+v", c.Cnf)
	}
	h := http.Header{"Authorization": {"Bearer " + tok["access_token"].(string)}}
	if r := rawPost(t, tg.MCP, initBody, h); r.Status != http.StatusOK {
		t.Fatalf("the bearer token at /mcp: %d %s", r.Status, r.Body)
	}
}

// BenchmarkTokenRefresh measures the token endpoint: refresh_token grants
// with a DPoP proof each (made in this process too), from 8 clients at
// once, each rotating its own refresh token; req/s is the figure
// BENCHMARKS.md reports.
func BenchmarkTokenRefresh(b *testing.B) {
	tg := asGateway(b, nil)
	client := publicClient(b, tg)
	const clients = 8
	type chain struct {
		key     *identity.DPoPKey
		refresh string
	}
	chains := make(chan *chain, clients)
	for range clients {
		verifier, challenge := pkce()
		got := newBrowser(b).signInAndApprove(tg, authorizeURL(tg, client, challenge, nil))
		key, _ := identity.NewDPoPKey()
		code, tok := redeem(b, tg, key, client, got.Get("code"), verifier)
		if code != http.StatusOK {
			b.Fatalf("token: %d %v", code, tok)
		}
		chains <- &chain{key: key, refresh: tok["refresh_token"].(string)}
	}
	b.SetParallelism((clients + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		c := <-chains
		defer func() { chains <- c }()
		for pb.Next() {
			code, tok := refresh(b, tg, c.key, client, c.refresh)
			if code != http.StatusOK {
				b.Errorf("refresh: %d %v", code, tok)
				return
			}
			c.refresh = tok["refresh_token"].(string)
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
}
