package server_test

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/sag-gateway/sag/server"
	"github.com/sag-gateway/sag/server/config"
)

// TestAdminAuth refuses every admin route without the admin token.
func TestAdminAuth(t *testing.T) {
	t.Parallel()
	tg := startGateway(t, nil)
	routes := []struct{ method, path string }{
		{http.MethodGet, "/admin/upstreams"},
		{http.MethodPost, "/admin/upstreams"},
		{http.MethodDelete, "/admin/upstreams/x"},
		{http.MethodGet, "/admin/audit"},
		{http.MethodGet, "/admin/sessions/x"},
	}
	for _, r := range routes {
		for _, tok := range []string{"", "wrong", adminToken + "x"} {
			code, body := tg.adminDoToken(t, r.method, r.path, nil, tok)
			if code != http.StatusUnauthorized {
				t.Errorf("%s %s with token %q: %d %s, want 401", r.method, r.path, tok, code, body)
				continue
			}
			var e struct{ Error string }
			if json.Unmarshal(body, &e) != nil || e.Error != "invalid_token" {
				t.Errorf("%s %s: 401 body %s, want error invalid_token", r.method, r.path, body)
			}
		}
	}
	// The token under another scheme is not accepted.
	req, _ := http.NewRequest(http.MethodGet, tg.Base+"/admin/upstreams", nil)
	req.Header.Set("Authorization", "Basic "+adminToken)
	if r := rawDo(t, req); r.Status != http.StatusUnauthorized {
		t.Errorf("Basic scheme: %d, want 401", r.Status)
	}
}

// TestAdminUpstreams adds and removes an upstream at run time while clients
// of both generations are connected: they get list_changed and see the
// catalog change; errors have the documented codes.
func TestAdminUpstreams(t *testing.T) {
	t.Parallel()
	cfgURL, _ := httpFixture(t, "cfg", true)
	newURL, _ := httpFixture(t, "added", true)
	tg := startGateway(t, func(c *config.Config) {
		c.Upstreams = []config.Upstream{{Name: "cfg", URL: cfgURL}}
	})

	type client struct {
		version string
		ev      *clientEvents
		cs      *mcp.ClientSession
	}
	var clients []client
	for _, version := range []string{legacy, modern} {
		ev := newClientEvents()
		cs := connect(t, tg.MCP, version, clientOptions(ev, ""))
		if toolNames(t, cs)["cfg__echo"] == nil {
			t.Fatalf("%s: cfg__echo not listed", version)
		}
		clients = append(clients, client{version, ev, cs})
	}

	waitChanged := func(what string) {
		t.Helper()
		for _, c := range clients {
			select {
			case <-c.ev.toolsChanged:
			case <-time.After(waitFor):
				t.Errorf("%s: no tools/list_changed after %s", c.version, what)
			}
		}
	}

	rep := tg.addUpstream(t, server.UpstreamRequest{Name: "added", URL: newURL, Timeout: "5s"})
	if !rep.Connected || rep.Source != "api" || rep.Tools != len(fixtureTools) {
		t.Errorf("added: connected=%v source=%q tools=%d", rep.Connected, rep.Source, rep.Tools)
	}
	waitChanged("adding an upstream")
	for _, c := range clients {
		if toolNames(t, c.cs)["added__echo"] == nil {
			t.Errorf("%s: added__echo not listed after registration", c.version)
		}
	}

	t.Run("list", func(t *testing.T) {
		got := map[string]server.UpstreamResponse{}
		for _, s := range tg.upstreamStatuses(t) {
			got[s.Name] = s
		}
		if got["cfg"].Source != "config" || got["added"].Source != "api" {
			t.Errorf("sources: cfg %q, added %q", got["cfg"].Source, got["added"].Source)
		}
		if !got["added"].Connected || got["added"].Timeout != 5*time.Second {
			t.Errorf("added: %+v", got["added"])
		}
	})

	t.Run("errors", func(t *testing.T) {
		cases := []struct {
			name   string
			method string
			path   string
			body   any
			status int
			code   string
		}{
			{"duplicate", http.MethodPost, "/admin/upstreams", server.UpstreamRequest{Name: "added", URL: newURL}, http.StatusConflict, "conflict"},
			{"config name", http.MethodPost, "/admin/upstreams", server.UpstreamRequest{Name: "cfg", URL: newURL}, http.StatusConflict, "conflict"},
			{"not JSON", http.MethodPost, "/admin/upstreams", "{not json", http.StatusBadRequest, "invalid_request"},
			{"unknown field", http.MethodPost, "/admin/upstreams", `{"name":"x","url":"` + newURL + `","colour":"red"}`, http.StatusBadRequest, "invalid_request"},
			{"bad name", http.MethodPost, "/admin/upstreams", server.UpstreamRequest{Name: "a__b", URL: newURL}, http.StatusBadRequest, "invalid_request"},
			{"empty name", http.MethodPost, "/admin/upstreams", server.UpstreamRequest{URL: newURL}, http.StatusBadRequest, "invalid_request"},
			{"bad url", http.MethodPost, "/admin/upstreams", server.UpstreamRequest{Name: "x", URL: "ftp://example"}, http.StatusBadRequest, "invalid_request"},
			{"credentials in url", http.MethodPost, "/admin/upstreams", server.UpstreamRequest{Name: "x", URL: "http://u:p@127.0.0.1:1/mcp"}, http.StatusBadRequest, "invalid_request"},
			{"bad prefix", http.MethodPost, "/admin/upstreams", server.UpstreamRequest{Name: "x", URL: newURL, Prefix: "sometimes"}, http.StatusBadRequest, "invalid_request"},
			{"bad timeout", http.MethodPost, "/admin/upstreams", server.UpstreamRequest{Name: "x", URL: newURL, Timeout: "-1s"}, http.StatusBadRequest, "invalid_request"},
			{"bad protocol version", http.MethodPost, "/admin/upstreams", server.UpstreamRequest{Name: "x", URL: newURL, ProtocolVersion: "1999-01-01"}, http.StatusBadRequest, "invalid_request"},
			{"delete config upstream", http.MethodDelete, "/admin/upstreams/cfg", nil, http.StatusConflict, "conflict"},
			{"delete unknown", http.MethodDelete, "/admin/upstreams/nope", nil, http.StatusNotFound, "not_found"},
			{"bad audit limit", http.MethodGet, "/admin/audit?limit=0", nil, http.StatusBadRequest, "invalid_request"},
			{"unknown session", http.MethodGet, "/admin/sessions/nope", nil, http.StatusNotFound, "not_found"},
		}
		for _, tc := range cases {
			code, body := tg.adminDo(t, tc.method, tc.path, tc.body)
			var e struct {
				Error       string `json:"error"`
				Description string `json:"error_description"`
			}
			if err := json.Unmarshal(body, &e); err != nil {
				t.Errorf("%s: body %s is not a JSON error: %v", tc.name, body, err)
			}
			if code != tc.status || e.Error != tc.code || e.Description == "" {
				t.Errorf("%s: %d %s, want %d with error %q and a description", tc.name, code, body, tc.status, tc.code)
			}
		}
		// Failed registrations leave nothing behind.
		if n := len(tg.upstreamStatuses(t)); n != 2 {
			t.Errorf("%d upstreams registered after the failed requests, want 2", n)
		}
	})

	t.Run("remove", func(t *testing.T) {
		for _, c := range clients {
			drain(c.ev.toolsChanged)
		}
		if code, body := tg.adminDo(t, http.MethodDelete, "/admin/upstreams/added", nil); code != http.StatusNoContent {
			t.Fatalf("DELETE: %d %s", code, body)
		}
		waitChanged("removing an upstream")
		for _, c := range clients {
			tools := toolNames(t, c.cs)
			if tools["added__echo"] != nil || tools["cfg__echo"] == nil {
				t.Errorf("%s: after removal added__echo listed=%v, cfg__echo listed=%v", c.version, tools["added__echo"] != nil, tools["cfg__echo"] != nil)
			}
		}
		if code, _ := tg.adminDo(t, http.MethodDelete, "/admin/upstreams/added", nil); code != http.StatusNotFound {
			t.Errorf("second DELETE: %d, want 404", code)
		}
		// The name is free again.
		tg.addUpstream(t, server.UpstreamRequest{Name: "added", URL: newURL})
	})
}

// TestAdminStdioRegistration checks that the admin API refuses stdio:
// upstreams, which run a command on the gateway's host, without running
// anything, unless the operator allowed it (allow_stdio_registration, the
// --allow-stdio-registration flag of sag serve).
func TestAdminStdioRegistration(t *testing.T) {
	t.Parallel()
	marker := filepath.Join(t.TempDir(), "ran")
	touch := server.UpstreamRequest{Name: "touch", URL: "stdio:/bin/sh -c 'touch " + marker + "'"}

	tg := startGateway(t, nil)
	code, body := tg.adminDo(t, http.MethodPost, "/admin/upstreams", touch)
	var e struct {
		Error       string `json:"error"`
		Description string `json:"error_description"`
	}
	if code != http.StatusForbidden || json.Unmarshal(body, &e) != nil || e.Error != "forbidden" ||
		!strings.Contains(e.Description, "--allow-stdio-registration") {
		t.Errorf("POST of a stdio upstream: %d %s, want 403 forbidden naming --allow-stdio-registration", code, body)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Error("the refused stdio command ran")
	}
	if n := len(tg.upstreamStatuses(t)); n != 0 {
		t.Errorf("%d upstreams after the refusal, want 0", n)
	}
	// HTTP upstreams are not concerned.
	httpURL, _ := httpFixture(t, "web", true)
	tg.addUpstream(t, server.UpstreamRequest{Name: "web", URL: httpURL})

	dir := t.TempDir()
	allowed := startGateway(t, func(c *config.Config) { c.AllowStdioRegistration = true; c.DataDir = dir })
	if rep := allowed.addUpstream(t, server.UpstreamRequest{Name: "local", URL: stdioFixture(t, "local")}); !rep.Connected {
		t.Errorf("stdio upstream registered with allow_stdio_registration: %+v", rep)
	}
	allowed.addUpstream(t, server.UpstreamRequest{Name: "touch", URL: touch.URL})
	os.Remove(marker)
	if err := allowed.stop(); err != nil {
		t.Fatal(err)
	}
	// Restarted without the permission, the gateway does not run the
	// commands registered while it had it.
	restarted := startGateway(t, func(c *config.Config) { c.DataDir = dir })
	if n := len(restarted.upstreamStatuses(t)); n != 0 {
		t.Errorf("%d upstreams started without allow_stdio_registration, want 0", n)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Error("a stored stdio command ran without allow_stdio_registration")
	}
}

// TestAdminPersistence registers an upstream, restarts the gateway on the
// same data directory and finds it back, serving its tools; a removed one
// stays removed.
func TestAdminPersistence(t *testing.T) {
	t.Parallel()
	keepURL, _ := httpFixture(t, "keep", false)
	dropURL, _ := httpFixture(t, "drop", true)
	dir := t.TempDir()
	mutate := func(c *config.Config) { c.DataDir = dir }

	first := startGateway(t, mutate)
	first.addUpstream(t, server.UpstreamRequest{Name: "keep", URL: keepURL, Prefix: "always", Timeout: "7s", ProtocolVersion: legacy})
	first.addUpstream(t, server.UpstreamRequest{Name: "drop", URL: dropURL})
	// A refused re-registration of a taken name must not replace what is
	// stored: after the restart, keep still has its own URL and settings.
	if code, body := first.adminDo(t, http.MethodPost, "/admin/upstreams", server.UpstreamRequest{Name: "keep", URL: dropURL}); code != http.StatusConflict {
		t.Fatalf("POST of a taken name: %d %s, want 409", code, body)
	}
	if code, body := first.adminDo(t, http.MethodDelete, "/admin/upstreams/drop", nil); code != http.StatusNoContent {
		t.Fatalf("DELETE drop: %d %s", code, body)
	}
	if err := first.stop(); err != nil {
		t.Fatalf("first gateway: %v", err)
	}

	second := startGateway(t, mutate)
	got := map[string]server.UpstreamResponse{}
	for _, s := range second.upstreamStatuses(t) {
		got[s.Name] = s
	}
	keep, ok := got["keep"]
	if !ok {
		t.Fatalf("registered upstream not back after restart; have %v", got)
	}
	if _, ok := got["drop"]; ok {
		t.Error("removed upstream is back after restart")
	}
	// The fixture would negotiate 2026-07-28 if the pin were lost. (The
	// admin API's JSON shows only the negotiated version: Status's
	// protocol_version hides the embedded Spec's.)
	if keep.Source != "api" || keep.URL != keepURL || keep.Prefix != "always" || keep.Timeout != 7*time.Second || keep.Negotiated != legacy || !keep.Connected {
		t.Errorf("keep after restart: %+v", keep)
	}
	cs := connect(t, second.MCP, legacy, nil)
	if res := callTool(t, cs, "keep__echo", map[string]any{"text": "back"}); toolText(res) != "back" {
		t.Errorf("keep__echo after restart = %q", toolText(res))
	}
	// Its per-session connection uses the pinned revision.
	eventually(t, "a per-session upstream connection", func() bool {
		for _, s := range second.upstreamStatuses(t) {
			if s.Name == "keep" {
				return s.Sessions == 1
			}
		}
		return false
	})
	if !strings.HasPrefix(second.Cfg.DataDir, dir) {
		t.Fatal("second gateway on another data directory")
	}
}
