package main

import (
	"context"
	"fmt"
	"net/http"
	"runtime"
	"sync/atomic"
	"time"
)

// benchReplicas measures what several gateways sharing one PostgreSQL
// serve against one (issue 14's target: 3 replicas ≥ 2.5× one when the
// upstream is not the bottleneck). The replicas run in open mode before
// the plain upstream; the clients' requests go round robin to them, as
// through a load balancer without session affinity.
func benchReplicas(ctx context.Context, n int, upURL, storeURL, protocol string, concs []int, rounds int, d time.Duration) error {
	gws, stop, err := startSharingGateways(n, upURL, storeURL)
	defer stop()
	if err != nil {
		return err
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 512
	var next atomic.Uint64
	balanced := &http.Client{Transport: roundTripFunc(func(req *http.Request) (*http.Response, error) {
		req = req.Clone(req.Context())
		req.URL.Host = gws[next.Add(1)%uint64(n)].base()[len("http://"):]
		return tr.RoundTrip(req)
	})}
	sides := []side{
		{name: "direct", url: upURL, tool: "echo", http: &http.Client{Transport: tr}},
		{name: "1 gateway", url: gws[0].url, tool: "up__echo", http: &http.Client{Transport: tr}},
		{name: fmt.Sprintf("%d gateways", n), url: gws[0].url, tool: "up__echo", http: balanced},
	}
	for _, s := range sides {
		if err := s.waitForTool(ctx, protocol); err != nil {
			return err
		}
	}
	fmt.Printf("sag bench: %d gateways on one PostgreSQL against one, open mode, protocol %s, GOMAXPROCS=%d on %d CPUs (clients, gateways, PostgreSQL and the upstream share them)\n\n",
		n, protocol, runtime.GOMAXPROCS(0), runtime.NumCPU())
	fmt.Printf("throughput (calls/s, %d rounds of %s)      %10s %10s %10s   ratio\n", rounds, d, sides[0].name, sides[1].name, sides[2].name)
	best := 0.0
	for _, c := range concs {
		total := make([]float64, len(sides))
		for range rounds {
			for i, s := range sides {
				r, err := s.throughput(ctx, protocol, c, d)
				if err != nil {
					return err
				}
				total[i] += r.rate / float64(rounds)
			}
		}
		ratio := total[2] / total[1]
		best = max(best, ratio)
		fmt.Printf("  concurrency %-4d                           %10.0f %10.0f %10.0f   %.2f×\n", c, total[0], total[1], total[2], ratio)
	}
	verdict := "met"
	if best < 2.5 {
		verdict = "missed"
	}
	fmt.Printf("target: %d gateways ≥ 2.5 × one: best %.2f×, %s\n", n, best, verdict)
	return nil
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// startSharingGateways starts n gateways in open mode in front of upURL,
// sharing the PostgreSQL database storeURL; stop stops those started.
func startSharingGateways(n int, upURL, storeURL string) (gws []*child, stop func(), err error) {
	stop = func() {
		for _, g := range gws {
			g.stop()
		}
	}
	for range n {
		addr, err := freeLoopbackAddr()
		if err != nil {
			return gws, stop, err
		}
		g, err := startChildGateway(addr, upURL, "", "", "none", storeURL, nil)
		if err != nil {
			return gws, stop, err
		}
		gws = append(gws, g)
	}
	return gws, stop, nil
}
