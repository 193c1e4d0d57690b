package server_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sag-gateway/sag/identity"
	"github.com/sag-gateway/sag/server"
	"github.com/sag-gateway/sag/server/config"
	"github.com/sag-gateway/sag/store"
)

const legacyIssuer = "https://legacy-as.example"

// introspector is an RFC 7662 endpoint of an existing authorization server:
// it knows a few opaque tokens and requires its client's credentials.
func introspector(t *testing.T, tokens map[string]map[string]any) (*httptest.Server, *atomic.Int32) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		if id, secret, ok := r.BasicAuth(); !ok || id != "sag" || secret != "intro-secret" {
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		r.ParseForm()
		resp, ok := tokens[r.PostForm.Get("token")]
		if !ok {
			resp = map[string]any{"active": false}
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(resp)
	}))
	t.Cleanup(srv.Close)
	return srv, &calls
}

// exchangeLegacy posts a token exchange with subject token tok and a proof
// of key (nil: none).
func exchangeLegacy(t *testing.T, tg *testGateway, key *identity.DPoPKey, tok string, extra url.Values) (int, map[string]any) {
	t.Helper()
	form := url.Values{"grant_type": {identity.GrantTypeTokenExchange}, "subject_token": {tok}, "subject_token_type": {identity.TokenTypeAccessToken}}
	for k, v := range extra {
		form[k] = v
	}
	return tokenRequest(t, tg, key, form)
}

// TestLegacyShim: clients of an existing identity provider exchange its
// tokens (opaque ones by RFC 7662 introspection, JWTs of a configured
// issuer) for short-lived DPoP-bound SAG tokens that stand for the user as
// their own issuer named them.
func TestLegacyShim(t *testing.T) {
	now := time.Now()
	intro, calls := introspector(t, map[string]map[string]any{
		"opaque-dave":      {"active": true, "sub": "dave", "iss": legacyIssuer, "scope": "read write", "exp": now.Add(time.Hour).Unix(), "iat": now.Add(-time.Minute).Unix(), "client_id": "old-app"},
		"opaque-soon":      {"active": true, "sub": "dave", "exp": now.Unix()},
		"opaque-other-iss": {"active": true, "sub": "dave", "iss": "https://elsewhere.example", "exp": now.Add(time.Hour).Unix()},
		"opaque-no-iat":    {"active": true, "sub": "erin", "exp": now.Add(time.Hour).Unix()},
	})
	idpKeys, err := identity.LoadKeys(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	jwksFile := filepath.Join(t.TempDir(), "jwks.json")
	b, _ := idpKeys.JWKS()
	os.WriteFile(jwksFile, b, 0o600)
	secret := filepath.Join(t.TempDir(), "secret")
	os.WriteFile(secret, []byte("intro-secret\n"), 0o600)
	const idp = "https://idp.example.com"
	tg := startSecureGateway(t, config.AuthDPoP, func(c *config.Config) {
		c.Identity.Issuers = []config.Issuer{{Issuer: idp, JWKSFile: jwksFile}}
		c.Identity.Legacy = config.Legacy{Enabled: true, TTL: config.Duration(5 * time.Minute),
			Introspection: config.Introspection{URL: intro.URL, ClientID: "sag", ClientSecretFile: secret, Issuer: legacyIssuer}}
	})
	key, _ := identity.NewDPoPKey()

	// An opaque token: introspected, exchanged, DPoP-bound, at most the
	// shim's lifetime; it works at /mcp as dave of the legacy issuer.
	code, out := exchangeLegacy(t, tg, key, "opaque-dave", url.Values{"scope": {"read"}})
	if code != http.StatusOK || out["token_type"] != "DPoP" || calls.Load() != 1 {
		t.Fatalf("exchange: %d %v (introspections %d)", code, out, calls.Load())
	}
	c := decodeClaims(t, out["access_token"].(string))
	if c.Subject != "dave" || c.Cnf == nil || c.Cnf.JKT != key.Thumbprint() || c.Scope != "read" || c.Expiry-c.IssuedAt > 300 || c.ClientID != "old-app" {
		t.Fatalf("exchanged token claims %+v", c)
	}
	dave := &agent{key: key, token: out["access_token"].(string)}
	if got := toolText(callTool(t, dave.connectVersion(t, tg.MCP, "2025-11-25"), "fx__echo", map[string]any{"text": "legacy"})); got != "legacy" {
		t.Fatalf("echo: %q", got)
	}
	code, body := tg.adminDo(t, http.MethodGet, "/admin/sessions/"+server.UserSessionID(legacyIssuer, "dave"), nil)
	var s store.Session
	json.Unmarshal(body, &s)
	if code != http.StatusOK || s.Issuer != legacyIssuer || s.Subject != "dave" {
		t.Fatalf("dave's user session under the legacy issuer: %d %s", code, body)
	}

	// A JWT of a configured issuer, bound to the caller's key.
	carolKey, _ := identity.NewDPoPKey()
	jwt, _, _ := (&identity.Issuer{URL: idp, Keys: idpKeys}).Mint(identity.Claims{Subject: "carol", Audience: identity.Audience{tg.Base},
		Cnf: &identity.Confirmation{JKT: carolKey.Thumbprint()}, Groups: []string{"eng"}}, time.Hour)
	if code, out := exchangeLegacy(t, tg, carolKey, jwt, nil); code != http.StatusOK || decodeClaims(t, out["access_token"].(string)).Subject != "carol" {
		t.Fatalf("JWT exchange: %d %v", code, out)
	}
	if code, out := exchangeLegacy(t, tg, key, jwt, nil); code != http.StatusBadRequest || out["access_token"] != nil {
		t.Fatalf("a bound JWT exchanged with another key: %d %v", code, out)
	}

	for name, tc := range map[string]struct {
		tok    string
		key    *identity.DPoPKey
		extra  url.Values
		status int
		err    string
	}{
		"no DPoP proof":         {"opaque-dave", nil, nil, http.StatusBadRequest, "invalid_dpop_proof"},
		"inactive token":        {"opaque-unknown", key, nil, http.StatusBadRequest, "invalid_request"},
		"expiring now":          {"opaque-soon", key, nil, http.StatusBadRequest, "invalid_request"},
		"another issuer":        {"opaque-other-iss", key, nil, http.StatusBadRequest, "invalid_request"},
		"another audience":      {"opaque-dave", key, url.Values{"resource": {"https://other.example"}}, http.StatusBadRequest, "invalid_target"},
		"a wider scope":         {"opaque-dave", key, url.Values{"scope": {"admin"}}, http.StatusBadRequest, "invalid_scope"},
		"the gateway's own":     {mint(t, tg, identity.Claims{Subject: "x"}), key, nil, http.StatusBadRequest, "unsupported_grant_type"},
		"an unknown JWT issuer": {mustMint(t, "https://unknown.example", tg.Base), key, nil, http.StatusBadRequest, "invalid_request"},
	} {
		if code, out := exchangeLegacy(t, tg, tc.key, tc.tok, tc.extra); code != tc.status || out["error"] != tc.err || out["access_token"] != nil {
			t.Errorf("%s: %d %v, want %d %s", name, code, out, tc.status, tc.err)
		}
	}

	// A kill of the user covers the legacy issuer: the exchanged token
	// stops working, and the legacy token (issued before the kill) is not
	// exchanged again; an introspection without iat is refused for good.
	code, body = tg.adminDo(t, http.MethodPost, "/admin/kill", server.KillRequest{User: "dave"})
	if code != http.StatusOK || !strings.Contains(string(body), legacyIssuer) {
		t.Fatalf("kill: %d %s", code, body)
	}
	if r := rawPost(t, tg.MCP, initBody, dave.headers(t, "POST", tg.MCP)); r.Status != http.StatusForbidden && r.Status != http.StatusUnauthorized {
		t.Fatalf("the exchanged token after the kill: %d", r.Status)
	}
	if code, out := exchangeLegacy(t, tg, key, "opaque-dave", nil); code != http.StatusBadRequest || out["access_token"] != nil {
		t.Fatalf("exchange after the kill: %d %v", code, out)
	}
	tg.adminDo(t, http.MethodPost, "/admin/kill", server.KillRequest{User: "erin"})
	if code, out := exchangeLegacy(t, tg, key, "opaque-no-iat", nil); code != http.StatusBadRequest || out["access_token"] != nil {
		t.Fatalf("an introspection without iat after a kill: %d %v", code, out)
	}
}

// mustMint signs a token for aud by a fresh key of iss.
func mustMint(t *testing.T, iss, aud string) string {
	t.Helper()
	keys, err := identity.LoadKeys(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	tok, _, err := (&identity.Issuer{URL: iss, Keys: keys}).Mint(identity.Claims{Subject: "x", Audience: identity.Audience{aud}}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}
