package main

import (
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestBenchRuns: a short sag bench measures every side (the direct call,
// the floor, SAG) and reports the targets; a peer that does not exist is a
// clear error.
func TestBenchRuns(t *testing.T) {
	out, errOut, ok := sag(t, "bench", "--calls", "100", "--duration", "200ms", "--rounds", "1", "--concurrency", "2", "--idle-sessions", "0")
	if !ok {
		t.Fatalf("sag bench failed:\n%s%s", out, errOut)
	}
	for _, want := range []string{
		`(?m)^  floor \(httputil proxy\) +\d+\.\d +\d+\.\d +\d+\.\d +[+-]\d+\.\d`,
		`(?m)^    sag +\d+ +\d\.\d\d +\d+\.\d µs$`,
		`(?m)^  added p50: sag [+-]\d+\.\d µs, floor [+-]\d+\.\d µs → ≤ floor \+ 50 µs: (met|missed)$`,
	} {
		if !regexp.MustCompile(want).MatchString(out) {
			t.Errorf("output lacks %s:\n%s", want, out)
		}
	}
	if _, errOut, ok := sag(t, "bench", "--peer", "/nonexistent/peer", "--calls", "100", "--idle-sessions", "0"); ok || !regexp.MustCompile(`nonexistent`).MatchString(errOut) {
		t.Errorf("a missing peer: ok=%v %s", ok, errOut)
	}
}

// TestBenchStateless: sag bench with 2026-07-28 clients measures their
// stateless calls, and says the memory per session does not apply.
func TestBenchStateless(t *testing.T) {
	out, errOut, ok := sag(t, "bench", "--protocol", "2026-07-28", "--calls", "100", "--duration", "200ms", "--rounds", "1", "--concurrency", "2", "--idle-sessions", "10")
	if !ok {
		t.Fatalf("sag bench --protocol 2026-07-28 failed:\n%s%s", out, errOut)
	}
	for _, want := range []string{
		`protocol 2026-07-28, security none`,
		`(?m)^    sag +\d+ +\d\.\d\d +\d+\.\d µs$`,
		`(?m)^memory: not measured: 2026-07-28 clients open no sessions`,
	} {
		if !regexp.MustCompile(want).MatchString(out) {
			t.Errorf("output lacks %s:\n%s", want, out)
		}
	}
}

// TestBenchOnPostgres: sag bench --store postgres measures the
// full-security path with the gateway's state in a throwaway PostgreSQL.
func TestBenchOnPostgres(t *testing.T) {
	out, errOut, ok := sag(t, "bench", "--store", "postgres", "--security", "full", "--calls", "100", "--duration", "200ms", "--rounds", "1", "--concurrency", "2", "--idle-sessions", "0")
	if !ok {
		t.Fatalf("sag bench --store postgres failed:\n%s%s", out, errOut)
	}
	for _, want := range []string{
		`security full, store postgres,`,
		`(?m)^    sag +\d+ +\d\.\d\d +\d+\.\d µs$`,
		`\(\d+\.\d µs each to make\),\n +verified by the gateway and by the upstream \(\d+\.\d µs each\): \d+ µs a call`,
	} {
		if !regexp.MustCompile(want).MatchString(out) {
			t.Errorf("output lacks %s:\n%s", want, out)
		}
	}
	if _, errOut, ok := sag(t, "bench", "--store", "mysql", "--calls", "100", "--idle-sessions", "0"); ok || !strings.Contains(errOut, `--store "mysql": want sqlite or postgres`) {
		t.Errorf("an unknown store: ok=%v %s", ok, errOut)
	}
}

// TestBenchSoak: a short soak through the full-security path samples the
// gateway's goroutines, heap and open files and judges them.
func TestBenchSoak(t *testing.T) {
	out, errOut, ok := sag(t, "bench", "--soak", "3s", "--soak-every", "1s", "--soak-concurrency", "4", "--security", "full", "--idle-sessions", "0")
	if !ok {
		t.Fatalf("sag bench --soak failed:\n%s%s", out, errOut)
	}
	for _, want := range []string{
		`(?m)^  \d+s +\d+ +\d+ +\d+\.\d +\d+$`,
		`(?m)^calls: [1-9]\d* \(0 failed\)$`,
		`(?m)^(flat|growing): `,
		`(?m)^after the load: \d+ goroutines and \d+ open files, against \d+ and \d+ before: released within \d+s$`,
	} {
		if !regexp.MustCompile(want).MatchString(out) {
			t.Errorf("output lacks %s:\n%s", want, out)
		}
	}
}

// TestSoakVerdict: the warm-up is not judged; growth after it is.
func TestSoakVerdict(t *testing.T) {
	series := func(heap ...float64) []soakSample {
		var out []soakSample
		for i, h := range heap {
			out = append(out, soakSample{at: time.Duration(i+1) * 30 * time.Second, goroutines: 300, heapMiB: h, fds: 100})
		}
		return out
	}
	for _, tc := range []struct {
		heap []float64
		want string
	}{
		{[]float64{5, 20, 30, 30, 31, 30, 30, 31, 30}, "flat: "},         // fills during the warm-up, flat after
		{[]float64{5, 20, 30, 35, 40, 45, 50, 55, 60}, "growing: heap "}, // keeps growing
		{[]float64{5, 20, 30}, "flat: too few samples"},
	} {
		if got := soakVerdict(series(tc.heap...)); !strings.HasPrefix(got, tc.want) {
			t.Errorf("soakVerdict(%v) = %q, want %q…", tc.heap, got, tc.want)
		}
	}
}

// TestBenchKillFanout: kills sent to one gateway end calls on another
// sharing the PostgreSQL store, and the bench reports how long that took.
func TestBenchKillFanout(t *testing.T) {
	out, errOut, ok := sag(t, "bench", "--store", "postgres", "--kill-fanout", "5")
	if !ok {
		t.Fatalf("sag bench --kill-fanout failed:\n%s%s", out, errOut)
	}
	if !regexp.MustCompile(`(?m)^until the call on B ends \(ms\) +p50 \d+\.\d +p90 \d+\.\d +p99 \d+\.\d +max \d+\.\d$`).MatchString(out) ||
		!regexp.MustCompile(`(?m)^target: p99 ≤ 1000 ms: (met|missed)$`).MatchString(out) {
		t.Errorf("output lacks the fan-out figures:\n%s", out)
	}
	if _, errOut, ok := sag(t, "bench", "--kill-fanout", "5"); ok || !strings.Contains(errOut, "--kill-fanout and --replicas need --store postgres") {
		t.Errorf("--kill-fanout on SQLite: ok=%v %s", ok, errOut)
	}
}

// TestBenchReplicas: the bench compares gateways sharing PostgreSQL with
// one, the requests spread round robin.
func TestBenchReplicas(t *testing.T) {
	out, errOut, ok := sag(t, "bench", "--store", "postgres", "--replicas", "2", "--concurrency", "2", "--rounds", "1", "--duration", "300ms")
	if !ok {
		t.Fatalf("sag bench --replicas failed:\n%s%s", out, errOut)
	}
	if !regexp.MustCompile(`(?m)^  concurrency 2 +\d+ +\d+ +\d+ +\d+\.\d\d×$`).MatchString(out) ||
		!regexp.MustCompile(`(?m)^target: 2 gateways ≥ 2\.5 × one: best \d+\.\d\d×, (met|missed)$`).MatchString(out) {
		t.Errorf("output lacks the replicas' figures:\n%s", out)
	}
}
