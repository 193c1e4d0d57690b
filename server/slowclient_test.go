package server_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/sag-gateway/sag/server"
	"github.com/sag-gateway/sag/server/config"
)

// TestSlowClients: clients that never finish their headers, or their body,
// (slow loris) lose their connection after limits.request_read_timeout,
// a stalled body with 408; while they stall, other clients are served.
func TestSlowClients(t *testing.T) {
	t.Parallel()
	url, _ := httpFixture(t, "fx", false)
	tg := startGateway(t, func(c *config.Config) { c.Limits.RequestReadTimeout = config.Duration(300 * time.Millisecond) })
	tg.addUpstream(t, server.UpstreamRequest{Name: "fx", URL: url})
	addr := tg.Cfg.Listen
	dial := func(request string) net.Conn {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if _, err := io.WriteString(c, request); err != nil {
			t.Fatal(err)
		}
		return c
	}
	const n = 20
	var headers, bodies []net.Conn
	for range n {
		headers = append(headers, dial(fmt.Sprintf("POST /mcp HTTP/1.1\r\nHost: %s\r\nContent-Type: app", addr)))
		bodies = append(bodies, dial(fmt.Sprintf("POST /mcp HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"+
			"Accept: application/json, text/event-stream\r\nContent-Length: 100\r\n\r\n{\"jsonrpc\":", addr)))
	}
	cs := connect(t, tg.MCP, modern, nil)
	if res := callTool(t, cs, "fx__echo", map[string]any{"text": "served"}); toolText(res) != "served" {
		t.Errorf("a call while slow clients stall: %q", toolText(res))
	}
	// Each stalled connection is closed by the gateway, long before the
	// test would give up on it.
	cut := func(c net.Conn) []byte {
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		b, err := io.ReadAll(c)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("a stalled connection still open after 5s (read %q)", b)
		}
		return b
	}
	for _, c := range headers {
		cut(c)
	}
	for _, c := range bodies {
		if b := cut(c); !bytes.HasPrefix(b, []byte("HTTP/1.1 408 ")) {
			t.Errorf("a stalled body was answered %q, want 408", b)
		}
	}
	if res := callTool(t, cs, "fx__echo", map[string]any{"text": "after"}); toolText(res) != "after" {
		t.Errorf("a call after the slow clients: %q", toolText(res))
	}
}
