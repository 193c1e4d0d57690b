package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/sag-gateway/sag/fixtures"
	"github.com/sag-gateway/sag/identity"
)

// cmdBench measures what the gateway adds to a tool call: latency at
// concurrency 1 and throughput at several concurrencies, directly against a
// fixture upstream and through a gateway, interleaved in one run, plus the
// gateway's memory per idle downstream session. The gateway runs as a child
// process (this binary, 'sag serve'); the upstream and the clients run here.
func cmdBench(args []string) error {
	fs := flag.NewFlagSet("sag bench", flag.ContinueOnError)
	calls := fs.Int("calls", 4000, "latency samples per side at concurrency 1")
	dur := fs.Duration("duration", 2*time.Second, "length of each throughput round")
	rounds := fs.Int("rounds", 3, "interleaved rounds per side and concurrency")
	conc := fs.String("concurrency", "1,8,32", "throughput concurrencies")
	idle := fs.Int("idle-sessions", 1000, "idle downstream sessions for the memory figure (0 skips)")
	protocol := fs.String("protocol", "2025-11-25", "MCP revision the clients speak")
	upProtocol := fs.String("upstream-protocol", "", "pin the MCP revision the gateway speaks to the upstream (default: negotiate)")
	gogc := fs.String("gateway-gogc", "", "GOGC for the gateway process only (default: inherited)")
	security := fs.String("security", "none", "none: --auth open, plain upstream; full: DPoP on the client, token verification, per-upstream tokens minted and verified by the upstream")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *security != "none" && *security != "full" {
		return fmt.Errorf("--security %q: want none or full", *security)
	}
	var concs []int
	for _, s := range strings.Split(*conc, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			return fmt.Errorf("concurrency %q: want positive integers", s)
		}
		concs = append(concs, n)
	}
	raiseFileLimit()

	// The direct side calls a plain fixture; the gateway's upstream is
	// another one that, with --security full, verifies every token and
	// proof the gateway sends it.
	upURL, stopUp, err := fixtures.NewServer(fixtures.Options{Name: "bench"}).StartHTTP(false)
	if err != nil {
		return err
	}
	defer stopUp()
	addr, err := freeLoopbackAddr()
	if err != nil {
		return err
	}
	gwUpURL := upURL
	if *security == "full" {
		base := "http://" + addr
		u, stop, err := fixtures.NewServer(fixtures.Options{Name: "bench", Verify: &fixtures.Verify{
			JWKSURL: base + "/.well-known/jwks.json", Issuer: base, Actor: base,
		}}).StartHTTP(false)
		if err != nil {
			return err
		}
		defer stop()
		gwUpURL = u
	}
	gw, err := startChildGateway(addr, gwUpURL, *upProtocol, *gogc, *security)
	if err != nil {
		return err
	}
	defer gw.stop()

	ctx := context.Background()
	// One HTTP transport for both sides' clients, keeping an idle
	// connection per concurrent client, so that neither side measures
	// connection churn (net/http keeps 2 per host by default).
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 256
	hc := &http.Client{Transport: tr}
	gwc := hc
	if *security == "full" {
		// The agent: one DPoP key and a token bound to it; a fresh proof
		// on every request.
		key, err := identity.NewDPoPKey()
		if err != nil {
			return err
		}
		tok, err := devToken(gw.data, "http://"+addr, devClaims{sub: "bench", jkt: key.Thumbprint()}, time.Hour)
		if err != nil {
			return err
		}
		gwc = &http.Client{Transport: &identity.DPoPTransport{Base: tr, Key: key, Token: func(context.Context) (string, error) { return tok, nil }}}
	}
	sides := []side{
		{name: "direct", url: upURL, tool: "echo", http: hc},
		{name: "sag", url: gw.url, tool: "up__echo", http: gwc},
	}
	// A verifying upstream fetches the gateway's keys only once the gateway
	// serves, so its first discovery may fail and be retried: wait for the
	// tool.
	if err := sides[1].waitForTool(ctx, *protocol); err != nil {
		return err
	}
	fmt.Printf("sag bench: echo tool, protocol %s, security %s, GOMAXPROCS=%d, one machine (client, gateway, upstream share the cores)\n\n", *protocol, *security, runtime.GOMAXPROCS(0))

	// Latency at concurrency 1, interleaved in blocks of 100.
	lat := make([][]time.Duration, len(sides))
	sessions := make([]*mcp.ClientSession, len(sides))
	for i, s := range sides {
		if sessions[i], err = s.connect(ctx, *protocol); err != nil {
			return err
		}
		defer sessions[i].Close()
		for range 200 { // warm-up
			if _, err := s.call(ctx, sessions[i]); err != nil {
				return err
			}
		}
	}
	for done := 0; done < *calls; done += 100 {
		for i, s := range sides {
			for range 100 {
				d, err := s.call(ctx, sessions[i])
				if err != nil {
					return err
				}
				lat[i] = append(lat[i], d)
			}
		}
	}
	fmt.Println("latency, concurrency 1 (µs)      p50      p90      p99")
	p := make([][3]float64, len(sides))
	for i, s := range sides {
		p[i] = percentiles(lat[i])
		fmt.Printf("  %-30s %8.1f %8.1f %8.1f\n", s.name, p[i][0], p[i][1], p[i][2])
	}
	targetP50, targetRatio := "150 µs", "70%"
	if *security == "full" {
		targetP50, targetRatio = "300 µs", "55%"
	}
	fmt.Printf("  %-30s %8.1f %8.1f %8.1f   (target: p50 ≤ %s)\n\n", "added by sag", p[1][0]-p[0][0], p[1][1]-p[0][1], p[1][2]-p[0][2], targetP50)

	// Throughput, interleaved rounds.
	fmt.Println("throughput (calls/s)       direct        sag    ratio")
	for _, c := range concs {
		var total [2]float64
		for range *rounds {
			for i, s := range sides {
				r, err := s.throughput(ctx, *protocol, c, *dur)
				if err != nil {
					return err
				}
				total[i] += r
			}
		}
		d, g := total[0]/float64(*rounds), total[1]/float64(*rounds)
		target := ""
		if c == 8 {
			target = "   (target: ≥ " + targetRatio + ")"
		}
		fmt.Printf("  concurrency %-4d %10.0f %10.0f   %5.1f%%%s\n", c, d, g, 100*g/d, target)
	}

	if *idle > 0 {
		per, err := gw.idleSessionCost(ctx, *protocol, *idle, gwc)
		if err != nil {
			return err
		}
		fmt.Printf("\nmemory: %.1f KiB per idle downstream session (%d sessions, gateway RSS delta) → %.1f MiB per 1,000 (target: ≤ 64 MiB)\n",
			per/1024, *idle, per*1000/(1<<20))
	}
	return nil
}

// side is one way of reaching the echo tool: directly or through SAG.
type side struct {
	name, url, tool string
	http            *http.Client
}

func (s side) connect(ctx context.Context, protocol string) (*mcp.ClientSession, error) {
	c := mcp.NewClient(&mcp.Implementation{Name: "sag-bench", Version: version}, nil)
	cs, err := c.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: s.url, HTTPClient: s.http, DisableStandaloneSSE: true}, &mcp.ClientSessionOptions{ProtocolVersion: protocol})
	if err != nil {
		return nil, fmt.Errorf("%s: connect: %w", s.name, err)
	}
	return cs, nil
}

// waitForTool polls tools/list until the side's tool is there (30 s at most).
func (s side) waitForTool(ctx context.Context, protocol string) error {
	cs, err := s.connect(ctx, protocol)
	if err != nil {
		return err
	}
	defer cs.Close()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		for t, err := range cs.Tools(ctx, nil) {
			if err == nil && t.Name == s.tool {
				return nil
			}
		}
	}
	return fmt.Errorf("%s: tool %s not offered within 30s", s.name, s.tool)
}

func (s side) call(ctx context.Context, cs *mcp.ClientSession) (time.Duration, error) {
	start := time.Now()
	res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: s.tool, Arguments: map[string]any{"text": "bench"}})
	d := time.Since(start)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", s.name, err)
	}
	if res.IsError {
		return 0, fmt.Errorf("%s: tool error", s.name)
	}
	return d, nil
}

// throughput runs c workers, each with its own session, for d and returns calls/s.
func (s side) throughput(ctx context.Context, protocol string, c int, d time.Duration) (float64, error) {
	css := make([]*mcp.ClientSession, c)
	for i := range css {
		cs, err := s.connect(ctx, protocol)
		if err != nil {
			return 0, err
		}
		defer cs.Close()
		css[i] = cs
	}
	var (
		n        atomic.Int64
		wg       sync.WaitGroup
		errOnce  sync.Once
		firstErr error
	)
	deadline := time.Now().Add(d)
	start := time.Now()
	for _, cs := range css {
		wg.Go(func() {
			for time.Now().Before(deadline) {
				if _, err := s.call(ctx, cs); err != nil {
					errOnce.Do(func() { firstErr = err })
					return
				}
				n.Add(1)
			}
		})
	}
	wg.Wait()
	return float64(n.Load()) / time.Since(start).Seconds(), firstErr
}

func percentiles(ds []time.Duration) [3]float64 {
	s := slices.Clone(ds)
	slices.Sort(s)
	at := func(q float64) float64 {
		return float64(s[int(q*float64(len(s)-1))].Nanoseconds()) / 1e3
	}
	return [3]float64{at(0.50), at(0.90), at(0.99)}
}

// childGateway is 'sag serve' running as a child process.
type childGateway struct {
	cmd  *exec.Cmd
	url  string
	data string
}

// freeLoopbackAddr returns a 127.0.0.1 address with a port that was free a
// moment ago.
func freeLoopbackAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

func startChildGateway(addr, upstreamURL, upstreamProtocol, gogc, security string) (*childGateway, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	data, err := os.MkdirTemp("", "sag-bench-")
	if err != nil {
		return nil, err
	}
	conf := filepath.Join(data, "bench.yaml")
	yaml := fmt.Sprintf("upstreams:\n  - name: up\n    url: %q\n    protocol_version: %q\n", upstreamURL, upstreamProtocol)
	if security == "full" {
		// An authenticated gateway denies everything without an
		// allow-list: this one allows the benchmark's calls.
		allow := filepath.Join(data, "allow.yaml")
		if err := os.WriteFile(allow, []byte("id: bench\nrules: [{id: all, upstream: up, tools: [echo], consent: never}]\n"), 0o600); err != nil {
			return nil, err
		}
		yaml += fmt.Sprintf("policy:\n  files: [%q]\n", allow)
	}
	if err := os.WriteFile(conf, []byte(yaml), 0o600); err != nil {
		return nil, err
	}
	auth := "open"
	if security == "full" {
		auth = "dpop"
	}
	cmd := exec.Command(exe, "serve", "--config", conf, "--listen", addr, "--data", data, "--auth", auth, "--log-level", "error")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if gogc != "" {
		cmd.Env = append(os.Environ(), "GOGC="+gogc)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		os.RemoveAll(data)
		return nil, err
	}
	g := &childGateway{cmd: cmd, url: "http://" + addr + "/mcp", data: data}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return g, nil
			}
		}
		if time.Now().After(deadline) {
			g.stop()
			return nil, errors.New("gateway did not become ready within 30s")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (g *childGateway) stop() {
	g.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { g.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		g.cmd.Process.Kill()
		<-done
	}
	os.RemoveAll(g.data)
}

// idleSessionCost opens n sessions (initialize only; clients keep their
// standalone GET stream, as real clients do) and returns the gateway's RSS
// growth per session in bytes.
func (g *childGateway) idleSessionCost(ctx context.Context, protocol string, n int, hc *http.Client) (float64, error) {
	before, err := rss(g.cmd.Process.Pid)
	if err != nil {
		return 0, err
	}
	c := mcp.NewClient(&mcp.Implementation{Name: "sag-bench-idle", Version: version}, nil)
	css := make([]*mcp.ClientSession, 0, n)
	defer func() {
		for _, cs := range css {
			cs.Close()
		}
	}()
	for range n {
		cs, err := c.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: g.url, HTTPClient: hc}, &mcp.ClientSessionOptions{ProtocolVersion: protocol})
		if err != nil {
			return 0, fmt.Errorf("idle session %d: %w", len(css), err)
		}
		css = append(css, cs)
	}
	time.Sleep(time.Second) // let standalone streams settle
	after, err := rss(g.cmd.Process.Pid)
	if err != nil {
		return 0, err
	}
	return float64(after-before) / float64(n), nil
}

// rss reads a process's resident set size from /proc.
func rss(pid int) (int64, error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		return 0, fmt.Errorf("read RSS: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb * 1024, err
		}
	}
	return 0, errors.New("read RSS: no VmRSS line")
}

// raiseFileLimit lifts the soft open-files limit to the hard one: idle
// sessions and concurrent clients each hold sockets.
func raiseFileLimit() {
	var l syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l) == nil && l.Cur < l.Max {
		l.Cur = l.Max
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
	}
}
