package server_test

import (
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/sag-gateway/sag/server"
	"github.com/sag-gateway/sag/server/config"
	"github.com/sag-gateway/sag/store"
)

// TestAudit makes calls from a session of each client generation and reads
// them back from /admin/audit by session id.
func TestAudit(t *testing.T) {
	t.Parallel()
	url, _ := httpFixture(t, "up", false)
	tg := startGateway(t, nil)
	tg.addUpstream(t, server.UpstreamRequest{Name: "up", URL: url, ProtocolVersion: legacy})

	for _, version := range []string{legacy, modern} {
		t.Run(version, func(t *testing.T) {
			var last int64
			if prev := tg.audit(t, ""); len(prev) > 0 {
				last = prev[0].ID
			}
			cs := connect(t, tg.MCP, version, nil)
			callTool(t, cs, "up__echo", map[string]any{"text": "audited"})
			callTool(t, cs, "up__fail", map[string]any{})

			// The ASID of this (anonymous) agent: it is in every record.
			all := tg.audit(t, "")
			if len(all) == 0 {
				t.Fatal("no audit records")
			}
			session := all[0].ASID
			if version == legacy {
				session = cs.ID()
				if session == "" {
					t.Fatal("legacy session without an id")
				}
			}
			var recs []store.AuditRecord
			for _, rec := range tg.audit(t, session) {
				if rec.ID > last {
					recs = append(recs, rec)
				}
			}
			byTool := map[string]int{}
			for _, rec := range recs {
				byTool[rec.Tool]++
				if rec.USID == "" || rec.ASID == "" || rec.MSID == "" {
					t.Errorf("record %d: usid %q asid %q msid %q, want all set", rec.ID, rec.USID, rec.ASID, rec.MSID)
				}
				if version == legacy && rec.MSID != cs.ID() {
					t.Errorf("record %d: msid %q, want the MCP session id %q", rec.ID, rec.MSID, cs.ID())
				}
				if version == modern && rec.MSID != rec.ASID {
					t.Errorf("record %d: stateless msid %q, want the asid %q", rec.ID, rec.MSID, rec.ASID)
				}
				if rec.Method != "tools/call" || rec.Upstream != "up" || rec.Decision != "allow" || rec.PolicyID == "" || rec.Time.IsZero() {
					t.Errorf("record %+v", rec)
				}
				if rec.LatencyUS <= 0 {
					t.Errorf("record %d: latency_us %d", rec.ID, rec.LatencyUS)
				}
				if rec.Tool == "up__fail" && rec.Reason != "upstream returned a tool error" {
					t.Errorf("fail record reason %q", rec.Reason)
				}
			}
			if byTool["up__echo"] < 1 || byTool["up__fail"] < 1 {
				t.Errorf("records by tool %v, want up__echo and up__fail", byTool)
			}
			if len(recs) != 2 {
				t.Errorf("%d records for session %s, want 2", len(recs), session)
			}
			// The session node is in the graph.
			code, body := tg.adminDo(t, http.MethodGet, "/admin/sessions/"+session, nil)
			if code != http.StatusOK {
				t.Errorf("GET /admin/sessions/%s: %d %s", session, code, body)
			}
		})
	}

	t.Run("paging", func(t *testing.T) {
		all := tg.audit(t, "")
		code, body := tg.adminDo(t, http.MethodGet, "/admin/audit?limit=1", nil)
		if code != http.StatusOK || strings.Count(strings.TrimSpace(string(body)), "\n") != 0 {
			t.Fatalf("limit=1: %d %s", code, body)
		}
		code, body = tg.adminDo(t, http.MethodGet, "/admin/audit?limit=10000&before="+strconv.FormatInt(all[0].ID, 10), nil)
		if code != http.StatusOK || strings.Count(strings.TrimSpace(string(body)), "\n")+1 != len(all)-1 {
			t.Errorf("before newest: %d, %d lines, want %d", code, strings.Count(string(body), "\n"), len(all)-1)
		}
	})
}

// TestHealthAndMetrics checks /healthz, /readyz and the Prometheus series
// that tool calls and upstreams produce.
func TestHealthAndMetrics(t *testing.T) {
	t.Parallel()
	url, _ := httpFixture(t, "up", true)
	tg := startGateway(t, func(c *config.Config) {
		c.Upstreams = []config.Upstream{{Name: "up", URL: url}, {Name: "down", URL: closedPortURL(t)}}
	})

	resp, err := http.Get(tg.Base + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || strings.TrimSpace(string(b)) != "ok" {
		t.Errorf("/healthz: %d %q", resp.StatusCode, b)
	}

	ready := readyz(t, tg)
	if ready.code != http.StatusOK || !ready.Ready || ready.Store != "ok" {
		t.Errorf("/readyz: %d %+v", ready.code, ready)
	}
	if !ready.connected["up"] || ready.connected["down"] {
		t.Errorf("/readyz upstreams %v, want up connected and down not", ready.connected)
	}

	cs := connect(t, tg.MCP, legacy, nil)
	callTool(t, cs, "up__echo", map[string]any{"text": "m"})
	callTool(t, cs, "up__fail", map[string]any{})

	m := tg.metrics(t)
	for series, want := range map[string]string{
		`sag_tool_calls_total{outcome="ok",tool="up__echo",upstream="up"}`:         "1",
		`sag_tool_calls_total{outcome="tool_error",tool="up__fail",upstream="up"}`: "1",
		`sag_upstream_up{upstream="up"}`:                                           "1",
		`sag_upstream_up{upstream="down"}`:                                         "0",
		`sag_upstream_tools{upstream="up"}`:                                        strconv.Itoa(len(fixtureTools)),
		`sag_mcp_sessions`:                                                         "1",
	} {
		if got := metricValue(m, series); got != want {
			t.Errorf("%s = %q, want %q", series, got, want)
		}
	}
	for _, name := range []string{"sag_http_requests_total", "sag_tool_call_duration_seconds_bucket", "go_goroutines"} {
		if !strings.Contains(m, name) {
			t.Errorf("/metrics has no %s", name)
		}
	}
}

type readyBody struct {
	code      int
	connected map[string]bool
	Ready     bool   `json:"ready"`
	Store     string `json:"store"`
	Upstreams []struct {
		Name      string `json:"name"`
		Connected bool   `json:"connected"`
	} `json:"upstreams"`
}

func readyz(t *testing.T, tg *testGateway) readyBody {
	t.Helper()
	resp, err := http.Get(tg.Base + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var rb readyBody
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("/readyz Content-Type %q", ct)
	}
	if err := json.NewDecoder(resp.Body).Decode(&rb); err != nil {
		t.Fatalf("/readyz: %v", err)
	}
	rb.code = resp.StatusCode
	rb.connected = map[string]bool{}
	for _, u := range rb.Upstreams {
		rb.connected[u.Name] = u.Connected
	}
	return rb
}
