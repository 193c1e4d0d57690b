package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
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
	"github.com/sag-gateway/sag/internal/pgtest"
	"github.com/sag-gateway/sag/store"
)

// cmdBench measures what the gateway adds to a tool call, side by side in
// one run: the direct call to a fixture upstream; the floor of any HTTP
// gateway here, a byte-level reverse proxy (net/http/httputil, never reading
// a message); SAG; and with --peer a peer proxy binary (TBXark/mcp-proxy).
// Latency at concurrency 1 and throughput at several concurrencies are
// interleaved; each proxy's CPU per call is read from /proc; the gateway's
// memory per idle downstream session is measured last. The proxies run as
// child processes; the upstream and the clients run here.
func cmdBench(args []string) error {
	if len(args) > 0 && args[0] == "floor" {
		return benchFloor(args[1:])
	}
	fs := flag.NewFlagSet("sag bench", flag.ContinueOnError)
	calls := fs.Int("calls", 4000, "latency samples per side at concurrency 1")
	dur := fs.Duration("duration", 2*time.Second, "length of each throughput round")
	rounds := fs.Int("rounds", 3, "interleaved rounds per side and concurrency")
	conc := fs.String("concurrency", "1,8,32,128", "throughput concurrencies")
	idle := fs.Int("idle-sessions", 1000, "idle downstream sessions for the memory figure (0 skips)")
	protocol := fs.String("protocol", "2025-11-25", "MCP revision the clients speak")
	upProtocol := fs.String("upstream-protocol", "", "pin the MCP revision the gateway speaks to the upstream (default: negotiate)")
	gogc := fs.String("gateway-gogc", "", "GOGC for the gateway process only (default: inherited)")
	security := fs.String("security", "none", "none: --auth open, a plain upstream that takes no token (auth: none); full: DPoP on the client, token verification, per-upstream tokens minted and verified by the upstream")
	peer := fs.String("peer", "", "a peer proxy `BINARY` to measure too: TBXark/mcp-proxy (v2 JSON config)")
	cpuProfile := fs.String("cpuprofile", "", "write the gateway process's CPU profile (its whole run) to `FILE`")
	memProfile := fs.String("memprofile", "", "write the gateway process's allocation profile (its whole run) to `FILE`")
	storeKind := fs.String("store", "sqlite", "the gateway's store: sqlite (its data directory), or postgres (a throwaway PostgreSQL, Debian's, started for the run as the tests start it)")
	soak := fs.Duration("soak", 0, "instead of the measurements, load the gateway alone for `DURATION` and watch its goroutines, heap and open files")
	soakConc := fs.Int("soak-concurrency", 32, "concurrent clients of the soak")
	soakEvery := fs.Duration("soak-every", 30*time.Second, "how often the soak samples the gateway")
	replicas := fs.Int("replicas", 0, "instead of the measurements, compare the throughput of `N` gateways sharing one PostgreSQL (--store postgres), the clients' requests spread round robin, with one's")
	killFanout := fs.Int("kill-fanout", 0, "instead of the measurements, send `N` kills to one gateway for sessions with a call in flight on another (--store postgres) and report how long the calls took to end")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if (*killFanout > 0 || *replicas > 0) && *storeKind != "postgres" {
		return errors.New("--kill-fanout and --replicas need --store postgres: gateways share a store only on PostgreSQL")
	}
	if *security != "none" && *security != "full" {
		return fmt.Errorf("--security %q: want none or full", *security)
	}
	storeURL := ""
	switch *storeKind {
	case "sqlite":
	case "postgres":
		pg, err := pgtest.Start()
		if err != nil {
			return err
		}
		defer pg.Stop()
		if storeURL, err = pg.NewDatabase(context.Background()); err != nil {
			return err
		}
	default:
		return fmt.Errorf("--store %q: want sqlite or postgres", *storeKind)
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

	// The direct side, the floor and the peer call a plain fixture; the
	// gateway's upstream is another one that, with --security full,
	// verifies every token and proof the gateway sends it.
	upURL, stopUp, err := fixtures.NewServer(fixtures.Options{Name: "bench"}).StartHTTP(false)
	if err != nil {
		return err
	}
	defer stopUp()
	if *killFanout > 0 {
		return benchKillFanout(context.Background(), *killFanout, upURL, storeURL)
	}
	if *replicas > 0 {
		return benchReplicas(context.Background(), *replicas, upURL, storeURL, *protocol, concs, *rounds, *dur)
	}
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
	gw, err := startChildGateway(addr, gwUpURL, *upProtocol, *gogc, *security, storeURL, map[string]string{cpuProfileEnv: *cpuProfile, memProfileEnv: *memProfile})
	if err != nil {
		return err
	}
	defer gw.stop()
	floor, err := startFloor(upURL)
	if err != nil {
		return err
	}
	defer floor.stop()

	ctx := context.Background()
	// One HTTP transport for every side's clients, keeping an idle
	// connection per concurrent client, so that no side measures
	// connection churn (net/http keeps 2 per host by default).
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 512
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
		{name: "floor (httputil proxy)", url: floor.url, tool: "echo", http: hc, proc: floor.cmd},
		{name: "sag", url: gw.url, tool: "up__echo", http: gwc, proc: gw.cmd},
	}
	if *peer != "" {
		p, err := startPeer(*peer, upURL)
		if err != nil {
			return err
		}
		defer p.stop()
		sides = append(sides, side{name: "peer (" + filepath.Base(*peer) + ")", url: p.url, tool: "echo", http: hc, proc: p.cmd})
	}
	// A verifying upstream fetches the gateway's keys only once the gateway
	// serves, so its first discovery may fail and be retried; a peer
	// connects to its upstream in the background: wait for the tools.
	for _, s := range sides {
		if err := s.waitForTool(ctx, *protocol); err != nil {
			return err
		}
	}
	if *soak > 0 {
		return soakRun(ctx, sides[2], gw, *protocol, *security, *soakConc, *soak, *soakEvery)
	}
	fmt.Printf("sag bench: echo tool, protocol %s, security %s, store %s, GOMAXPROCS=%d, one machine (clients, proxies, upstream share the cores)\n\n", *protocol, *security, *storeKind, runtime.GOMAXPROCS(0))

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
	fmt.Println("latency, concurrency 1 (µs)        p50      p90      p99   added p50  added p99")
	p := make([][3]float64, len(sides))
	for i, s := range sides {
		p[i] = percentiles(lat[i])
		fmt.Printf("  %-30s %8.1f %8.1f %8.1f", s.name, p[i][0], p[i][1], p[i][2])
		if i > 0 {
			fmt.Printf("   %+9.1f  %+9.1f", p[i][0]-p[0][0], p[i][2]-p[0][2])
		}
		fmt.Println()
	}

	// Throughput and CPU per call, interleaved rounds.
	fmt.Printf("\nthroughput (calls/s; share of direct; proxy CPU µs per call)\n")
	shares := map[int][]float64{}
	cpus := map[int][]float64{}
	for _, c := range concs {
		total := make([]float64, len(sides))
		cpu := make([]time.Duration, len(sides))
		n := make([]int64, len(sides))
		for range *rounds {
			for i, s := range sides {
				r, err := s.throughput(ctx, *protocol, c, *dur)
				if err != nil {
					return err
				}
				total[i] += r.rate
				cpu[i] += r.cpu
				n[i] += r.calls
			}
		}
		fmt.Printf("  concurrency %d\n", c)
		for i, s := range sides {
			rate := total[i] / float64(*rounds)
			share := rate / (total[0] / float64(*rounds))
			shares[c] = append(shares[c], share)
			line := fmt.Sprintf("    %-28s %9.0f   %5.2f", s.name, rate, share)
			perCall := 0.0
			if s.proc != nil && n[i] > 0 {
				perCall = float64(cpu[i].Microseconds()) / float64(n[i])
				line += fmt.Sprintf("   %7.1f µs", perCall)
			}
			cpus[c] = append(cpus[c], perCall)
			fmt.Println(line)
		}
	}

	// The targets (issue 11): relative to the floor, and to the peer when
	// one ran, all from this run.
	const iFloor, iSAG, iPeer = 1, 2, 3
	margin, shareMin, cpuMax := 50.0, 0.85, 1.0
	if *security == "full" {
		margin, shareMin, cpuMax = 200.0, 0.70, 1.5
	}
	added := func(i int) float64 { return p[i][0] - p[0][0] }
	verdict := func(ok bool) string {
		if ok {
			return "met"
		}
		return "missed"
	}
	fmt.Printf("\ntargets (security %s)\n", *security)
	fmt.Printf("  added p50: sag %+.1f µs, floor %+.1f µs → ≤ floor + %.0f µs: %s\n", added(iSAG), added(iFloor), margin, verdict(added(iSAG) <= added(iFloor)+margin))
	fmt.Printf("  added p99: sag %+.1f µs → ≤ 2000 µs: %s\n", p[iSAG][2]-p[0][2], verdict(p[iSAG][2]-p[0][2] <= 2000))
	if s := shares[8]; s != nil {
		fmt.Printf("  throughput at C=8: sag %.2f of direct, floor %.2f → ≥ %.2f × floor's: %.2f, %s\n", s[iSAG], s[iFloor], shareMin, s[iSAG]/s[iFloor], verdict(s[iSAG] >= shareMin*s[iFloor]))
	}
	if len(sides) > iPeer {
		fmt.Printf("  added p50 vs the peer: sag %+.1f µs, peer %+.1f µs\n", added(iSAG), added(iPeer))
		if c := cpus[8]; c != nil && c[iPeer] > 0 {
			fmt.Printf("  CPU per call at C=8: sag %.1f µs, peer %.1f µs → ≤ %.1f × peer's: %.2f, %s\n", c[iSAG], c[iPeer], cpuMax, c[iSAG]/c[iPeer], verdict(c[iSAG] <= cpuMax*c[iPeer]))
		}
	}

	if *security == "full" {
		sign, verify, err := proofCosts(time.Second)
		if err != nil {
			return err
		}
		fmt.Printf("  signatures on each call's path (ES256, measured here): the client's proof and the gateway's proof for the upstream (%.1f µs each to make),\n"+
			"    verified by the gateway and by the upstream (%.1f µs each): %.0f µs a call, against the target's %.0f µs over the floor\n", sign, verify, 2*sign+2*verify, margin)
	}

	switch {
	case *idle > 0 && *protocol >= "2026-07-28":
		fmt.Printf("\nmemory: not measured: %s clients open no sessions (the figure is for session-based revisions)\n", *protocol)
	case *idle > 0:
		per, err := gw.idleSessionCost(ctx, *protocol, *idle, gwc)
		if err != nil {
			return err
		}
		fmt.Printf("\nmemory: %.1f KiB per idle downstream session (%d sessions, gateway RSS delta) → %.1f MiB per 1,000 (target: ≤ 64 MiB)\n",
			per/1024, *idle, per*1000/(1<<20))
	}
	return nil
}

// side is one way of reaching the echo tool: directly or through a proxy
// (proc, whose CPU time is accounted).
type side struct {
	name, url, tool string
	http            *http.Client
	proc            *exec.Cmd
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
	deadline := time.Now().Add(30 * time.Second)
	for ; time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		cs, err := s.connect(ctx, protocol)
		if err != nil {
			continue
		}
		for t, err := range cs.Tools(ctx, nil) {
			if err == nil && t.Name == s.tool {
				cs.Close()
				return nil
			}
		}
		cs.Close()
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
		var text string
		if len(res.Content) > 0 {
			if tc, ok := res.Content[0].(*mcp.TextContent); ok {
				text = tc.Text
			}
		}
		return 0, fmt.Errorf("%s: tool error: %s", s.name, text)
	}
	return d, nil
}

// round is one throughput round of a side.
type round struct {
	rate  float64       // calls per second
	calls int64         // calls made
	cpu   time.Duration // the side's process CPU time during the round
}

// throughput runs c workers, each with its own session, for d.
func (s side) throughput(ctx context.Context, protocol string, c int, d time.Duration) (round, error) {
	css := make([]*mcp.ClientSession, c)
	for i := range css {
		cs, err := s.connect(ctx, protocol)
		if err != nil {
			return round{}, err
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
	cpu0 := processCPU(s.proc)
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
	elapsed := time.Since(start)
	return round{rate: float64(n.Load()) / elapsed.Seconds(), calls: n.Load(), cpu: processCPU(s.proc) - cpu0}, firstErr
}

// processCPU is the user and system CPU time a child process has used so
// far (0 for none), from /proc/PID/stat.
func processCPU(cmd *exec.Cmd) time.Duration {
	if cmd == nil || cmd.Process == nil {
		return 0
	}
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(cmd.Process.Pid), "stat"))
	if err != nil {
		return 0
	}
	// The command name (field 2) may hold spaces; fields count from its
	// closing parenthesis. utime and stime are fields 14 and 15, in clock
	// ticks of 1/100 s on Linux.
	i := strings.LastIndexByte(string(b), ')')
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}

func percentiles(ds []time.Duration) [3]float64 {
	s := slices.Clone(ds)
	slices.Sort(s)
	at := func(q float64) float64 {
		return float64(s[int(q*float64(len(s)-1))].Nanoseconds()) / 1e3
	}
	return [3]float64{at(0.50), at(0.90), at(0.99)}
}

// child is a proxy running as a child process: the gateway ('sag serve'),
// the floor ('sag bench floor') or a peer. data, when set, is removed when
// it stops.
type child struct {
	cmd  *exec.Cmd
	url  string
	data string
	// admin is a gateway's admin token (its /metrics).
	admin string
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

// startChild starts cmd, stopped with the bench, and waits until ready
// answers 200 (or, for "", until addr accepts connections).
func startChild(cmd *exec.Cmd, url, data, addr, ready string) (*child, error) {
	if cmd.Stdout == nil {
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		if data != "" {
			os.RemoveAll(data)
		}
		return nil, err
	}
	c := &child{cmd: cmd, url: url, data: data}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if ready == "" {
			if conn, err := net.Dial("tcp", addr); err == nil {
				conn.Close()
				return c, nil
			}
		} else if resp, err := http.Get(ready); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return c, nil
			}
		}
		if time.Now().After(deadline) {
			c.stop()
			return nil, fmt.Errorf("%s did not become ready within 30s", filepath.Base(cmd.Path))
		}
	}
}

// startChildGateway starts 'sag serve' for the bench; profiles maps the
// profile environment variables to the files they name ("" for none).
func startChildGateway(addr, upstreamURL, upstreamProtocol, gogc, security, storeURL string, profiles map[string]string) (*child, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	data, err := os.MkdirTemp("", "sag-bench-")
	if err != nil {
		return nil, err
	}
	conf := filepath.Join(data, "bench.yaml")
	admin := identity.NewID()
	yaml := fmt.Sprintf("admin_token: %q\nstore: %q\nupstreams:\n  - name: up\n    url: %q\n    protocol_version: %q\n", admin, storeURL, upstreamURL, upstreamProtocol)
	if security != "full" {
		// Open mode is security off on both sides: the plain upstream
		// takes no token, so none is minted for it.
		yaml += "    auth: none\n"
	}
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
	cmd.Env = os.Environ()
	if gogc != "" {
		cmd.Env = append(cmd.Env, "GOGC="+gogc)
	}
	for env, file := range profiles {
		if file == "" {
			continue
		}
		abs, err := filepath.Abs(file)
		if err != nil {
			return nil, err
		}
		cmd.Env = append(cmd.Env, env+"="+abs)
	}
	c, err := startChild(cmd, "http://"+addr+"/mcp", data, addr, "http://"+addr+"/readyz")
	if c != nil {
		c.admin = admin
	}
	return c, err
}

// startFloor runs 'sag bench floor' in front of upstreamURL.
func startFloor(upstreamURL string) (*child, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	addr, err := freeLoopbackAddr()
	if err != nil {
		return nil, err
	}
	u, err := url.Parse(upstreamURL)
	if err != nil {
		return nil, err
	}
	return startChild(exec.Command(exe, "bench", "floor", addr, u.Scheme+"://"+u.Host), "http://"+addr+u.Path, "", addr, "")
}

// benchFloor serves 'sag bench floor ADDR UPSTREAM': a byte-level reverse
// proxy (net/http/httputil) that forwards every request to UPSTREAM as it
// is and streams the answer back, never reading a message: the least any
// HTTP gateway adds here.
func benchFloor(args []string) error {
	if len(args) != 2 {
		return errors.New("usage: sag bench floor ADDR UPSTREAM_BASE_URL")
	}
	target, err := url.Parse(args[1])
	if err != nil {
		return err
	}
	rp := httputil.NewSingleHostReverseProxy(target)
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 512
	rp.Transport = tr
	rp.FlushInterval = -1 // stream SSE answers as they come
	return http.ListenAndServe(args[0], rp)
}

// startPeer runs a peer proxy binary (TBXark/mcp-proxy, v2 JSON config) in
// front of upstreamURL, serving it as upstream "up".
func startPeer(bin, upstreamURL string) (*child, error) {
	addr, err := freeLoopbackAddr()
	if err != nil {
		return nil, err
	}
	data, err := os.MkdirTemp("", "sag-bench-peer-")
	if err != nil {
		return nil, err
	}
	conf := filepath.Join(data, "config.json")
	body := fmt.Sprintf(`{"mcpProxy": {"baseURL": "http://%[1]s", "addr": "%[1]s", "name": "peer", "version": "1", "type": "streamable-http"},
"mcpServers": {"up": {"transportType": "streamable-http", "url": %[2]q}}}`, addr, upstreamURL)
	if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "--config", conf)
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard // it logs every tool it adds
	return startChild(cmd, "http://"+addr+"/up/mcp", data, addr, "")
}

// base is the child's base URL (its MCP endpoint without /mcp).
func (g *child) base() string { return strings.TrimSuffix(g.url, "/mcp") }

func (g *child) stop() {
	g.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { g.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		g.cmd.Process.Kill()
		<-done
	}
	if g.data != "" {
		os.RemoveAll(g.data)
	}
}

// idleSessionCost opens n sessions (initialize only; clients keep their
// standalone GET stream, as real clients do) and returns the gateway's RSS
// growth per session in bytes.
func (g *child) idleSessionCost(ctx context.Context, protocol string, n int, hc *http.Client) (float64, error) {
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

// proofCosts measures, for about d each, what making one DPoP proof and
// verifying one costs in this process (µs), with the gateway's own code:
// each full-security call makes two and verifies two.
func proofCosts(d time.Duration) (sign, verify float64, err error) {
	key, err := identity.NewDPoPKey()
	if err != nil {
		return 0, 0, err
	}
	const u, tok = "http://127.0.0.1:1/mcp", "token"
	var proofs []string
	start := time.Now()
	for time.Since(start) < d {
		pr, err := key.Proof(http.MethodPost, u, tok, "")
		if err != nil {
			return 0, 0, err
		}
		proofs = append(proofs, pr)
	}
	sign = float64(time.Since(start).Microseconds()) / float64(len(proofs))
	v, err := identity.NewDPoPVerifier(identity.DPoPOptions{Replay: store.NewMemoryReplay(len(proofs), nil)})
	if err != nil {
		return 0, 0, err
	}
	start = time.Now()
	for _, pr := range proofs {
		if _, err := v.Verify(context.Background(), identity.DPoPRequest{Proofs: []string{pr}, Method: http.MethodPost, URL: u, AccessToken: tok}); err != nil {
			return 0, 0, err
		}
	}
	verify = float64(time.Since(start).Microseconds()) / float64(len(proofs))
	return sign, verify, nil
}
