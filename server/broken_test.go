package server_test

import (
	"context"
	"fmt"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/sag-gateway/sag/fixtures"
	"github.com/sag-gateway/sag/server"
	"github.com/sag-gateway/sag/server/config"
)

// TestBrokenUpstreams puts each kind of broken upstream next to a healthy
// one: calls get clear tool errors (or complete), the healthy upstream and
// the gateway keep working.
func TestBrokenUpstreams(t *testing.T) {
	// Not parallel to other tests: the flood's heap measure is the
	// process's (parallel tests wait until this one is done), and so is
	// the count of goroutines: once the gateway and the fixtures stopped
	// (the cleanups before this one), none of the faults left any.
	http.DefaultClient.CloseIdleConnections()
	runtime.GC()
	before, baseline := goroutineIDs(), runtime.NumGoroutine()
	t.Cleanup(func() {
		http.DefaultClient.CloseIdleConnections()
		waitNoLeaks(t, before, baseline)
	})
	okURL, _ := httpFixture(t, "ok", true)
	const hangTimeout = time.Second
	tg := startGateway(t, func(c *config.Config) {
		c.Upstreams = []config.Upstream{
			{Name: "ok", URL: okURL},
			{Name: "garbage", URL: brokenFixture(t, fixtures.BrokenGarbage)},
			{Name: "hang", URL: brokenFixture(t, fixtures.BrokenHang), Timeout: config.Duration(hangTimeout)},
			{Name: "die", URL: brokenFixture(t, fixtures.BrokenDie)},
			{Name: "flood", URL: brokenFixture(t, fixtures.BrokenFlood)},
		}
	})
	healthy := func(t *testing.T, cs *mcp.ClientSession) {
		t.Helper()
		if res := callTool(t, cs, "ok__echo", map[string]any{"text": "still here"}); toolText(res) != "still here" {
			t.Errorf("healthy upstream: echo = %q", toolText(res))
		}
		if rb := readyz(t, tg); rb.code != http.StatusOK || !rb.Ready {
			t.Errorf("/readyz %d %+v", rb.code, rb)
		}
	}
	status := func(name string) server.UpstreamResponse {
		for _, s := range tg.upstreamStatuses(t) {
			if s.Name == name {
				return s
			}
		}
		t.Fatalf("upstream %s not registered", name)
		return server.UpstreamResponse{}
	}

	t.Run("garbage", func(t *testing.T) {
		t.Parallel()
		cs := connect(t, tg.MCP, legacy, nil)
		st := status("garbage")
		if st.Connected || st.LastError == "" {
			t.Errorf("garbage upstream: connected=%v last_error=%q, want not connected with an error", st.Connected, st.LastError)
		}
		for name := range toolNames(t, cs) {
			if strings.HasPrefix(name, "garbage__") {
				t.Errorf("tool %s listed from an upstream that never answered", name)
			}
		}
		healthy(t, cs)
	})

	t.Run("hang", func(t *testing.T) {
		t.Parallel()
		for _, version := range []string{legacy, modern} {
			cs := connect(t, tg.MCP, version, nil)
			for i := range 2 { // the second call must time out the same way
				start := time.Now()
				res := callTool(t, cs, "hang__hang", map[string]any{})
				took := time.Since(start)
				want := fmt.Sprintf("upstream hang: no answer within %s", hangTimeout)
				if !res.IsError || toolText(res) != want {
					t.Errorf("%s call %d: %q (isError %v), want tool error %q", version, i, toolText(res), res.IsError, want)
				}
				if took > hangTimeout+3*time.Second {
					t.Errorf("%s call %d took %s with a %s timeout", version, i, took, hangTimeout)
				}
			}
			healthy(t, cs)
		}
	})

	t.Run("die", func(t *testing.T) {
		t.Parallel()
		for _, version := range []string{legacy, modern} {
			cs := connect(t, tg.MCP, version, nil)
			for i := range 2 {
				ctx, cancel := context.WithTimeout(context.Background(), waitFor)
				res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "die__die", Arguments: map[string]any{}})
				cancel()
				if err != nil {
					t.Fatalf("%s call %d: protocol error %v, want a tool error", version, i, err)
				}
				if text := toolText(res); !res.IsError || !strings.HasPrefix(text, "upstream die: ") || strings.Contains(text, "://") {
					t.Errorf("%s call %d: %q (isError %v), want a tool error naming the upstream, without its URL", version, i, text, res.IsError)
				}
			}
			healthy(t, cs)
		}
		// The gateway reconnects its control session.
		eventually(t, "die reconnected", func() bool { return status("die").Connected })
	})

	t.Run("flood", func(t *testing.T) {
		// Not parallel to the other subtests: the heap it measures is the
		// process's.
		var before runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		for _, version := range []string{legacy, modern} {
			ev := newClientEvents()
			cs := connect(t, tg.MCP, version, clientOptions(ev, ""))
			if version == legacy {
				if err := cs.SetLoggingLevel(context.Background(), &mcp.SetLoggingLevelParams{Level: "debug"}); err != nil {
					t.Fatal(err)
				}
			}
			res := callTool(t, cs, "flood__flood", map[string]any{})
			if want := fmt.Sprintf("flooded %d notifications", fixtures.FloodCount); res.IsError || toolText(res) != want {
				t.Errorf("%s: flood = %q (isError %v), want %q", version, toolText(res), res.IsError, want)
			}
			healthy(t, cs)
		}
		var after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&after)
		grown := int64(after.HeapInuse) - int64(before.HeapInuse)
		if grown > 64<<20 {
			t.Errorf("heap in use grew by %d MiB during the flood", grown>>20)
		}
		t.Logf("heap in use grew by %d KiB", grown>>10)
	})
}

// TestUpstreamDownAtStart starts a gateway whose only upstream is not
// listening: it starts and is ready; an upstream added later that is down
// too gives a clear error; once a real upstream is registered its tools work.
func TestUpstreamDownAtStart(t *testing.T) {
	t.Parallel()
	downURL := closedPortURL(t)
	tg := startGateway(t, func(c *config.Config) {
		c.Upstreams = []config.Upstream{{Name: "down", URL: downURL}}
	})
	if rb := readyz(t, tg); rb.code != http.StatusOK || !rb.Ready || rb.connected["down"] {
		t.Errorf("/readyz %d %+v", rb.code, rb)
	}
	st := tg.upstreamStatuses(t)
	if len(st) != 1 || st[0].Connected || !strings.Contains(st[0].LastError, "connect") || strings.Contains(st[0].LastError, "://") {
		t.Errorf("status of down: %+v", st)
	}

	// It comes up: the gateway connects (with backoff), connected clients
	// get list_changed and its tools work.
	ev := newClientEvents()
	early := connect(t, tg.MCP, legacy, clientOptions(ev, ""))
	if len(toolNames(t, early)) != 0 {
		t.Error("tools listed while the only upstream is down")
	}
	addr := strings.TrimSuffix(strings.TrimPrefix(downURL, "http://"), "/mcp")
	if _, stopLate, err := fixtures.NewServer(fixtures.Options{Name: "down"}).ListenHTTP(addr, true); err != nil {
		t.Fatal(err)
	} else {
		t.Cleanup(stopLate)
	}
	select {
	case <-ev.toolsChanged:
	case <-time.After(waitFor):
		t.Error("no tools/list_changed when the upstream came up")
	}
	eventually(t, "down__echo listed", func() bool { return toolNames(t, early)["down__echo"] != nil })
	if res := callTool(t, early, "down__echo", map[string]any{"text": "late"}); toolText(res) != "late" {
		t.Errorf("down__echo once up = %q", toolText(res))
	}

	// An upstream that answers at registration and then goes away: its
	// tools stay listed and calls get a clear error.
	f := fixtures.NewServer(fixtures.Options{Name: "later"})
	url, stop, err := f.StartHTTP(true)
	if err != nil {
		t.Fatal(err)
	}
	rep := tg.addUpstream(t, server.UpstreamRequest{Name: "later", URL: url})
	if !rep.Connected {
		t.Fatalf("later not connected: %+v", rep)
	}
	cs := connect(t, tg.MCP, legacy, nil)
	if res := callTool(t, cs, "later__echo", map[string]any{"text": "up"}); toolText(res) != "up" {
		t.Fatalf("later__echo = %q", toolText(res))
	}
	stop()
	res := callTool(t, cs, "later__echo", map[string]any{"text": "down"})
	if text := toolText(res); !res.IsError || !strings.HasPrefix(text, "upstream later: ") || strings.Contains(text, "://") {
		t.Errorf("call of a stopped upstream: %q (isError %v), want a tool error naming the upstream, without its URL", text, res.IsError)
	}
	if rb := readyz(t, tg); rb.code != http.StatusOK || !rb.Ready {
		t.Errorf("/readyz after the upstream went down: %d %+v", rb.code, rb)
	}

	// Registering an unreachable upstream succeeds and reports why.
	rep = tg.addUpstream(t, server.UpstreamRequest{Name: "down2", URL: closedPortURL(t)})
	if rep.Connected || rep.ConnectError == "" {
		t.Errorf("down2: connected=%v connect_error=%q", rep.Connected, rep.ConnectError)
	}
}

// TestWithdrawWhenDown checks both behaviours for an upstream that goes
// away: by default its tools stay listed and calls get a tool error; with
// withdraw_when_down they leave the catalog and clients are told.
func TestWithdrawWhenDown(t *testing.T) {
	t.Parallel()
	f := fixtures.NewServer(fixtures.Options{Name: "w"})
	url, stop, err := f.StartHTTP(true)
	if err != nil {
		t.Fatal(err)
	}
	keepURL, stopKeep, err := fixtures.NewServer(fixtures.Options{Name: "k"}).StartHTTP(true)
	if err != nil {
		t.Fatal(err)
	}
	tg := startGateway(t, nil)
	tg.addUpstream(t, server.UpstreamRequest{Name: "w", URL: url, WithdrawWhenDown: true})
	ev := newClientEvents()
	cs := connect(t, tg.MCP, legacy, clientOptions(ev, "x"))
	eventually(t, "w's tools listed while it is up", func() bool {
		_, listed := toolNames(t, cs)["w__echo"]
		return listed
	})
	tg.addUpstream(t, server.UpstreamRequest{Name: "k", URL: keepURL})
	eventually(t, "k's tools listed", func() bool {
		_, listed := toolNames(t, cs)["k__echo"]
		return listed
	})
	drain(ev.toolsChanged)

	stop()
	stopKeep()
	for _, name := range []string{"w__echo", "k__echo"} {
		if res := callTool(t, cs, name, map[string]any{"text": "gone"}); !res.IsError {
			t.Errorf("%s on a stopped upstream: %q, want a tool error", name, toolText(res))
		}
	}
	eventually(t, "w__echo withdrawn", func() bool {
		_, listed := toolNames(t, cs)["w__echo"]
		return !listed
	})
	if _, listed := toolNames(t, cs)["k__echo"]; !listed {
		t.Error("k__echo withdrawn; by default tools stay listed while their upstream is down")
	}
	select {
	case <-ev.toolsChanged:
	case <-time.After(waitFor):
		t.Error("no tools/list_changed when w's tools were withdrawn")
	}
}
