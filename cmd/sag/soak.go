package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// soakSample is the gateway's state at one moment of a soak.
type soakSample struct {
	at         time.Duration
	calls      int64
	goroutines float64
	heapMiB    float64
	fds        float64
}

// soakRun loads the gateway with c clients for d, sampling it every every,
// then stops the load and samples it once more: a gateway that leaks shows
// goroutines, heap or open files growing with the calls.
func soakRun(ctx context.Context, s side, gw *child, protocol, security string, c int, d, every time.Duration) error {
	fmt.Printf("sag bench --soak: %d clients for %v through the gateway (security %s, protocol %s), sampled every %v\n\n", c, d, security, protocol, every)
	base, err := gw.sample(ctx)
	if err != nil {
		return err
	}
	css := make([]*mcp.ClientSession, c)
	for i := range css {
		if css[i], err = s.connect(ctx, protocol); err != nil {
			return err
		}
	}
	var (
		calls    atomic.Int64
		failures atomic.Int64
		wg       sync.WaitGroup
		errMu    sync.Mutex
		errs     = map[string]int64{} // distinct failure messages and their counts
	)
	loadCtx, stop := context.WithCancel(ctx)
	for _, cs := range css {
		wg.Go(func() {
			for loadCtx.Err() == nil {
				if _, err := s.call(loadCtx, cs); err != nil {
					if loadCtx.Err() == nil {
						failures.Add(1)
						errMu.Lock()
						if _, seen := errs[err.Error()]; seen || len(errs) < 8 {
							errs[err.Error()]++
						}
						errMu.Unlock()
					}
					continue
				}
				calls.Add(1)
			}
		})
	}
	fmt.Println("  time        calls/s  goroutines  live heap MiB  open files")
	fmt.Printf("  %-9s %9s %11.0f %14.1f %11.0f   (before the load)\n", "0s", "-", base.goroutines, base.heapMiB, base.fds)
	var samples []soakSample
	start, last, lastCalls := time.Now(), time.Now(), int64(0)
	tick := time.NewTicker(every)
	for time.Since(start) < d {
		<-tick.C
		smp, err := gw.sample(ctx)
		if err != nil {
			stop()
			wg.Wait()
			return err
		}
		n := calls.Load()
		smp.at, smp.calls = time.Since(start).Round(time.Second), n
		rate := float64(n-lastCalls) / time.Since(last).Seconds()
		last, lastCalls = time.Now(), n
		samples = append(samples, smp)
		fmt.Printf("  %-9v %9.0f %11.0f %14.1f %11.0f\n", smp.at, rate, smp.goroutines, smp.heapMiB, smp.fds)
	}
	tick.Stop()
	stop()
	wg.Wait()
	for _, cs := range css {
		cs.Close()
	}
	s.http.CloseIdleConnections()
	// Closed sessions release their upstream sessions at once; the
	// gateway's idle keep-alive connections to the upstream (a file and
	// two goroutines each) close after net/http's 90 s idle timeout.
	// Anything held longer is a leak.
	stopped := time.Now()
	var after soakSample
	released := false
	for !released && time.Since(stopped) < 100*time.Second {
		time.Sleep(time.Second)
		if after, err = gw.sample(ctx); err != nil {
			return err
		}
		released = after.goroutines <= base.goroutines+16 && after.fds <= base.fds+8
	}
	fmt.Printf("  %-9s %9s %11.0f %14.1f %11.0f   (load stopped, sessions closed)\n\n", "after", "-", after.goroutines, after.heapMiB, after.fds)
	fmt.Printf("calls: %d (%d failed)\n", calls.Load(), failures.Load())
	for msg, n := range errs {
		fmt.Printf("  %d× %s\n", n, msg)
	}
	verdict := soakVerdict(samples)
	fmt.Println(verdict)
	fmt.Printf("after the load: %.0f goroutines and %.0f open files, against %.0f and %.0f before: ", after.goroutines, after.fds, base.goroutines, base.fds)
	if released {
		fmt.Printf("released within %v\n", time.Since(stopped).Round(time.Second))
	} else {
		fmt.Println("not released after 100s")
	}
	switch {
	case failures.Load() > 0:
		return fmt.Errorf("%d calls failed during the soak", failures.Load())
	case !released:
		return errors.New("the gateway kept goroutines or files after the load")
	case strings.HasPrefix(verdict, "growing"):
		return errors.New("the gateway grew under steady load")
	}
	return nil
}

// soakWarmup is left out of the verdict: the DPoP replay cache holds every
// proof for its 60 s window, so the live heap rises for the first minute
// of any load and is flat after.
const soakWarmup = 90 * time.Second

// soakVerdict compares the first and the last third of the samples under
// load after the warm-up: each figure may grow by 10 % and a small margin
// (16 goroutines, 8 MiB, 8 files) and still be flat.
func soakVerdict(samples []soakSample) string {
	for len(samples) > 0 && samples[0].at < soakWarmup {
		samples = samples[1:]
	}
	if len(samples) < 3 {
		return fmt.Sprintf("flat: too few samples after the %v warm-up to tell (soak longer)", soakWarmup)
	}
	third := len(samples) / 3
	mean := func(part []soakSample, f func(soakSample) float64) float64 {
		t := 0.0
		for _, s := range part {
			t += f(s)
		}
		return t / float64(len(part))
	}
	first, lastPart := samples[:third], samples[len(samples)-third:]
	var growing []string
	for _, m := range []struct {
		name   string
		f      func(soakSample) float64
		margin float64
	}{
		{"goroutines", func(s soakSample) float64 { return s.goroutines }, 16},
		{"heap", func(s soakSample) float64 { return s.heapMiB }, 8},
		{"open files", func(s soakSample) float64 { return s.fds }, 8},
	} {
		a, b := mean(first, m.f), mean(lastPart, m.f)
		if b > a*1.1+m.margin {
			growing = append(growing, fmt.Sprintf("%s %.1f → %.1f", m.name, a, b))
		}
	}
	if len(growing) > 0 {
		return "growing: " + strings.Join(growing, ", ")
	}
	return "flat: goroutines, heap and open files under load (first third against last third)"
}

// sample reads the gateway's goroutines, live heap and open files from
// its /metrics (the Go and process collectors).
func (g *child) sample(ctx context.Context) (soakSample, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, g.base()+"/metrics", nil)
	if err != nil {
		return soakSample{}, err
	}
	req.Header.Set("Authorization", "Bearer "+g.admin)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return soakSample{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return soakSample{}, fmt.Errorf("gateway /metrics: %s", resp.Status)
	}
	vals := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		name, v, ok := strings.Cut(sc.Text(), " ")
		if !ok || strings.HasPrefix(name, "#") {
			continue
		}
		switch name {
		case "go_goroutines", "go_gc_heap_live_bytes", "process_open_fds":
			if f, err := strconv.ParseFloat(v, 64); err == nil {
				vals[name] = f
			}
		}
	}
	if err := sc.Err(); err != nil {
		return soakSample{}, err
	}
	if len(vals) != 3 {
		return soakSample{}, fmt.Errorf("gateway /metrics lacks some of go_goroutines, go_gc_heap_live_bytes, process_open_fds")
	}
	return soakSample{goroutines: vals["go_goroutines"], heapMiB: vals["go_gc_heap_live_bytes"] / (1 << 20), fds: vals["process_open_fds"]}, nil
}
