package server_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/sag-gateway/sag/fixtures"
	"github.com/sag-gateway/sag/server"
	"github.com/sag-gateway/sag/server/config"
	"github.com/sag-gateway/sag/store"

	"github.com/sag-gateway/sag/internal/testutil"
)

// The two client generations: session-based (initialize, Mcp-Session-Id) and
// stateless (server/discover, per-request _meta).
const (
	legacy = "2025-11-25"
	modern = "2026-07-28"
)

// adminToken is the admin API token of every test gateway.
const adminToken = "test-admin-token"

// waitFor bounds every wait for something asynchronous.
const waitFor = 10 * time.Second

func TestMain(m *testing.M) {
	code := m.Run()
	testutil.Cleanup()
	os.Exit(code)
}

// fixtureBinary is fixtures/cmd/sag-fixture, built once per test run.
func fixtureBinary(t testing.TB) string {
	t.Helper()
	return testutil.Build(t, "github.com/sag-gateway/sag/fixtures/cmd/sag-fixture")
}

// testGateway is a gateway serving on a loopback port for one test.
type testGateway struct {
	GW      *server.Gateway
	Cfg     *config.Config
	Base    string // http://127.0.0.1:PORT
	MCP     string // Base + "/mcp"
	DataDir string
	// HTTP is the client of admin requests; nil means http.DefaultClient.
	HTTP *http.Client

	cancel   context.CancelFunc
	done     chan error
	stopOnce sync.Once
	stopErr  error
}

// testLogger discards the gateway's logs unless SAG_TEST_LOG is set.
func testLogger() *slog.Logger {
	if os.Getenv("SAG_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// startGateway builds a gateway from the default config (data in a fresh
// temporary directory, the test admin token), lets mutate adjust it, and
// serves it on an ephemeral loopback port until the test ends.
func startGateway(t testing.TB, mutate func(*config.Config)) *testGateway {
	t.Helper()
	return startGatewayDeps(t, server.Deps{}, mutate)
}

// startGatewayDeps is startGateway with dependencies injected.
func startGatewayDeps(t testing.TB, deps server.Deps, mutate func(*config.Config)) *testGateway {
	t.Helper()
	cfg := config.Default()
	cfg.Auth = config.AuthOpen
	cfg.DataDir = t.TempDir()
	cfg.AdminToken = adminToken
	if mutate != nil {
		mutate(cfg)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Listen = ln.Addr().String()
	return launch(t, cfg, deps, ln, 5*time.Second)
}

// startGatewayConfig serves a gateway for cfg; cfg.Listen is set to the
// ephemeral port it listens on.
func startGatewayConfig(t *testing.T, cfg *config.Config) *testGateway {
	t.Helper()
	return startGatewayGrace(t, cfg, 5*time.Second)
}

// startGatewayGrace is startGatewayConfig with the shutdown grace given to
// Serve.
func startGatewayGrace(t *testing.T, cfg *config.Config, grace time.Duration) *testGateway {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Listen = ln.Addr().String()
	return launch(t, cfg, server.Deps{}, ln, grace)
}

// launch builds a gateway for cfg (validated here) and deps and serves it on
// ln until the test ends.
func launch(t testing.TB, cfg *config.Config, deps server.Deps, ln net.Listener, grace time.Duration) *testGateway {
	t.Helper()
	if err := cfg.Validate(); err != nil {
		ln.Close()
		t.Fatalf("config: %v", err)
	}
	deps.Log, deps.Version = testLogger(), "test"
	ctx, cancel := context.WithCancel(context.Background())
	newCtx, newCancel := context.WithTimeout(ctx, 30*time.Second)
	gw, err := server.New(newCtx, cfg, deps)
	newCancel()
	if err != nil {
		cancel()
		ln.Close()
		t.Fatalf("server.New: %v", err)
	}
	tg := &testGateway{
		GW: gw, Cfg: cfg, DataDir: cfg.DataDir,
		Base:   cfg.ResolvedPublicURL(),
		cancel: cancel,
		done:   make(chan error, 1),
	}
	tg.MCP = tg.Base + "/mcp"
	go func() { tg.done <- gw.Serve(ctx, ln, grace) }()
	t.Cleanup(func() {
		if err := tg.stop(); err != nil {
			t.Errorf("gateway shutdown: %v", err)
		}
	})
	return tg
}

// stop cancels Serve and waits (bounded) for it to return.
func (tg *testGateway) stop() error {
	tg.stopOnce.Do(func() {
		tg.cancel()
		select {
		case err := <-tg.done:
			tg.stopErr = err
		case <-time.After(20 * time.Second):
			tg.stopErr = fmt.Errorf("Serve did not return within 20s of cancellation")
		}
	})
	return tg.stopErr
}

// adminDo sends an admin API request with the admin token and returns the
// status and body.
func (tg *testGateway) adminDo(t *testing.T, method, path string, body any) (int, []byte) {
	t.Helper()
	return tg.adminDoToken(t, method, path, body, adminToken)
}

func (tg *testGateway) adminDoToken(t *testing.T, method, path string, body any, token string) (int, []byte) {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		buf, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(buf)
	}
	req, err := http.NewRequest(method, tg.Base+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	client := http.DefaultClient
	if tg.HTTP != nil {
		client = tg.HTTP
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return resp.StatusCode, out
}

// addUpstream registers an upstream through the admin API and fails the test
// unless it is created.
func (tg *testGateway) addUpstream(t *testing.T, req server.UpstreamRequest) server.UpstreamResponse {
	t.Helper()
	code, body := tg.adminDo(t, http.MethodPost, "/admin/upstreams", req)
	if code != http.StatusCreated {
		t.Fatalf("POST /admin/upstreams %s: %d %s", req.Name, code, body)
	}
	var out server.UpstreamResponse
	if err := json.Unmarshal(body, &out); err != nil {
		t.Fatalf("POST /admin/upstreams: decode %s: %v", body, err)
	}
	return out
}

// upstreamStatuses returns GET /admin/upstreams.
func (tg *testGateway) upstreamStatuses(t *testing.T) []server.UpstreamResponse {
	t.Helper()
	code, body := tg.adminDo(t, http.MethodGet, "/admin/upstreams", nil)
	if code != http.StatusOK {
		t.Fatalf("GET /admin/upstreams: %d %s", code, body)
	}
	var out []server.UpstreamResponse
	if err := json.Unmarshal(body, &out); err != nil {
		t.Fatalf("GET /admin/upstreams: decode %s: %v", body, err)
	}
	return out
}

// audit returns the audit records of a session (all when session is ""),
// newest first, through the admin API.
func (tg *testGateway) audit(t *testing.T, session string) []store.AuditRecord {
	t.Helper()
	path := "/admin/audit?limit=10000"
	if session != "" {
		path += "&session=" + session
	}
	code, body := tg.adminDo(t, http.MethodGet, path, nil)
	if code != http.StatusOK {
		t.Fatalf("GET %s: %d %s", path, code, body)
	}
	var out []store.AuditRecord
	sc := bufio.NewScanner(bytes.NewReader(body))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if len(bytes.TrimSpace(sc.Bytes())) == 0 {
			continue
		}
		var rec store.AuditRecord
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			t.Fatalf("audit line %q: %v", sc.Bytes(), err)
		}
		out = append(out, rec)
	}
	return out
}

// countAudit counts the audit records of a tool with the given reason.
func countAudit(t *testing.T, tg *testGateway, tool, reason string) int {
	t.Helper()
	n := 0
	for _, rec := range tg.audit(t, "") {
		if rec.Tool == tool && rec.Reason == reason {
			n++
		}
	}
	return n
}

// metrics returns the text of GET /metrics.
func (tg *testGateway) metrics(t *testing.T) string {
	t.Helper()
	resp, err := http.Get(tg.Base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %d %s", resp.StatusCode, b)
	}
	return string(b)
}

// metricValue returns the value of the first sample line of /metrics text
// that starts with series (a name with or without labels), or "".
func metricValue(text, series string) string {
	for line := range strings.SplitSeq(text, "\n") {
		if rest, ok := strings.CutPrefix(line, series); ok && (strings.HasPrefix(rest, " ") || strings.HasPrefix(rest, "{")) {
			if i := strings.LastIndexByte(line, ' '); i >= 0 {
				return line[i+1:]
			}
		}
	}
	return ""
}

// Fixture upstreams.

// httpFixture serves a fixture over Streamable HTTP until the test ends.
func httpFixture(t testing.TB, name string, stateless bool) (url string, f *fixtures.Fixture) {
	t.Helper()
	f = fixtures.NewServer(fixtures.Options{Name: name})
	url, stop, err := f.StartHTTP(stateless)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	return url, f
}

// sseFixture serves a fixture over legacy HTTP+SSE and returns the upstream
// URL the gateway takes (sse+http://…).
func sseFixture(t *testing.T, name string) string {
	t.Helper()
	url, stop, err := fixtures.NewServer(fixtures.Options{Name: name}).StartSSE()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	return "sse+" + url
}

// stdioFixture returns the upstream URL of a sag-fixture child process.
func stdioFixture(t *testing.T, name string) string {
	t.Helper()
	return "stdio:" + fixtureBinary(t) + " -stdio -name " + name
}

// closedPortURL returns an MCP URL on a loopback port nothing listens on.
func closedPortURL(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return "http://" + addr + "/mcp"
}

// brokenFixture starts a deliberately broken upstream.
func brokenFixture(t *testing.T, mode string) string {
	t.Helper()
	url, stop, err := fixtures.StartBroken(mode)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	return url
}

// Clients.

// clientEvents records what the server sent a client.
type clientEvents struct {
	mu           sync.Mutex
	progress     []*mcp.ProgressNotificationParams
	logs         []*mcp.LoggingMessageParams
	toolsChanged chan struct{}
}

func newClientEvents() *clientEvents {
	return &clientEvents{toolsChanged: make(chan struct{}, 100)}
}

func (ev *clientEvents) progressSnapshot() []*mcp.ProgressNotificationParams {
	ev.mu.Lock()
	defer ev.mu.Unlock()
	return append([]*mcp.ProgressNotificationParams(nil), ev.progress...)
}

func (ev *clientEvents) logSnapshot() []*mcp.LoggingMessageParams {
	ev.mu.Lock()
	defer ev.mu.Unlock()
	return append([]*mcp.LoggingMessageParams(nil), ev.logs...)
}

// clientOptions are a test client's options: every notification recorded
// in ev, elicitation answered with answer and sampling with "model: "+answer.
func clientOptions(ev *clientEvents, answer string) *mcp.ClientOptions {
	return &mcp.ClientOptions{
		ProgressNotificationHandler: func(_ context.Context, req *mcp.ProgressNotificationClientRequest) {
			ev.mu.Lock()
			ev.progress = append(ev.progress, req.Params)
			ev.mu.Unlock()
		},
		LoggingMessageHandler: func(_ context.Context, req *mcp.LoggingMessageRequest) {
			ev.mu.Lock()
			ev.logs = append(ev.logs, req.Params)
			ev.mu.Unlock()
		},
		ToolListChangedHandler: func(context.Context, *mcp.ToolListChangedRequest) {
			select {
			case ev.toolsChanged <- struct{}{}:
			default:
			}
		},
		ElicitationHandler: func(_ context.Context, req *mcp.ElicitRequest) (*mcp.ElicitResult, error) {
			return &mcp.ElicitResult{Action: "accept", Content: map[string]any{"answer": answer}}, nil
		},
		CreateMessageHandler: func(_ context.Context, req *mcp.CreateMessageRequest) (*mcp.CreateMessageResult, error) {
			return &mcp.CreateMessageResult{Model: "test-model", Role: "assistant", Content: &mcp.TextContent{Text: "model: " + answer}}, nil
		},
	}
}

// connect opens a go-sdk client session to url with the given protocol
// version ("" lets the client negotiate, which picks 2026-07-28).
func connect(t *testing.T, url, version string, opts *mcp.ClientOptions) *mcp.ClientSession {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	c := mcp.NewClient(&mcp.Implementation{Name: "sag-test", Version: "1"}, opts)
	cs, err := c.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: url}, &mcp.ClientSessionOptions{ProtocolVersion: version})
	if err != nil {
		t.Fatalf("connect %s (%s): %v", url, version, err)
	}
	t.Cleanup(func() { cs.Close() })
	if version != "" {
		if got := cs.InitializeResult().ProtocolVersion; got != version {
			t.Fatalf("negotiated %s, want %s", got, version)
		}
	}
	return cs
}

// toolText returns the concatenated text content of a tool result.
func toolText(res *mcp.CallToolResult) string {
	var parts []string
	for _, c := range res.Content {
		if tc, ok := c.(*mcp.TextContent); ok {
			parts = append(parts, tc.Text)
		}
	}
	return strings.Join(parts, "")
}

// callTool calls a tool with a bounded context and fails the test on a
// protocol error.
func callTool(t *testing.T, cs *mcp.ClientSession, name string, args map[string]any) *mcp.CallToolResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: name, Arguments: args})
	if err != nil {
		t.Fatalf("tools/call %s: %v", name, err)
	}
	return res
}

// toolNames lists a session's tools (every page).
func toolNames(t *testing.T, cs *mcp.ClientSession) map[string]*mcp.Tool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	out := map[string]*mcp.Tool{}
	for tool, err := range cs.Tools(ctx, nil) {
		if err != nil {
			t.Fatalf("tools/list: %v", err)
		}
		out[tool.Name] = tool
	}
	return out
}

// eventually polls cond until it holds or waitFor passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	eventuallyWithin(t, waitFor, what, cond)
}

func eventuallyWithin(t *testing.T, bound time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(bound)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", bound, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Raw HTTP.

// rawResponse is an HTTP response to a raw MCP request, with the JSON-RPC
// message found in it (from a JSON body or the first SSE data line).
type rawResponse struct {
	Status int
	Header http.Header
	Body   []byte
	RPC    struct {
		ID     json.RawMessage `json:"id"`
		Result json.RawMessage `json:"result"`
		Error  *struct {
			Code    int    `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
}

// rawPost POSTs body to url with the MCP headers plus extra ones, and
// decodes the JSON-RPC response when there is one.
func rawPost(t *testing.T, url string, body string, header http.Header) rawResponse {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	for k, vs := range header {
		req.Header[k] = vs
	}
	if h := header.Get("Host"); h != "" {
		req.Host = h
	}
	return rawDo(t, req)
}

func rawDo(t *testing.T, req *http.Request) rawResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(req.Context(), waitFor)
	defer cancel()
	resp, err := http.DefaultClient.Do(req.WithContext(ctx))
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", req.Method, req.URL, err)
	}
	out := rawResponse{Status: resp.StatusCode, Header: resp.Header, Body: b}
	payload := b
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		payload = nil
		for line := range strings.SplitSeq(string(b), "\n") {
			if data, ok := strings.CutPrefix(line, "data:"); ok {
				data = strings.TrimSpace(data)
				if strings.Contains(data, `"id"`) {
					payload = []byte(data)
					break
				}
			}
		}
	}
	if len(payload) > 0 {
		_ = json.Unmarshal(payload, &out.RPC)
	}
	return out
}

// legacySession opens a 2025-11-25 session with raw HTTP and returns its
// Mcp-Session-Id.
func legacySession(t *testing.T, mcpURL string) string {
	t.Helper()
	init := `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"` + legacy + `","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}`
	r := rawPost(t, mcpURL, init, nil)
	sid := r.Header.Get("Mcp-Session-Id")
	if r.Status != http.StatusOK || sid == "" {
		t.Fatalf("initialize: %d, session %q, body %s", r.Status, sid, r.Body)
	}
	r = rawPost(t, mcpURL, `{"jsonrpc":"2.0","method":"notifications/initialized"}`, http.Header{
		"Mcp-Session-Id":       {sid},
		"Mcp-Protocol-Version": {legacy},
	})
	if r.Status != http.StatusAccepted {
		t.Fatalf("notifications/initialized: %d %s", r.Status, r.Body)
	}
	return sid
}

// sessionHeader is the header set of a request in a raw legacy session.
func sessionHeader(sid string) http.Header {
	return http.Header{"Mcp-Session-Id": {sid}, "Mcp-Protocol-Version": {legacy}}
}
