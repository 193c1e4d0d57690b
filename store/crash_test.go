package store

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

// crashDirEnv names the store directory of the child process of TestCrash;
// TestCrashChild does nothing without it.
const crashDirEnv = "SAG_STORE_CRASH_CHILD_DIR"

// TestCrash proves that an acknowledged Append survives the process being
// killed: the child appends from 8 goroutines and prints a record's reason
// only after Append returned nil; the parent kills it with SIGKILL once ~300
// records are acknowledged and then finds every acknowledged record.
func TestCrash(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashDirEnv+"="+dir)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}

	const killAfter = 300
	acked := map[string]bool{}
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		reason, ok := strings.CutPrefix(sc.Text(), "ack ")
		if !ok {
			continue
		}
		acked[reason] = true
		if len(acked) == killAfter {
			// SIGKILL: no deferred Close, no flush; only what was
			// committed may survive. Keep reading: lines already in
			// the pipe were acknowledged before the kill.
			if err := cmd.Process.Kill(); err != nil {
				t.Fatalf("kill child: %v", err)
			}
		}
	}
	waitErr := cmd.Wait()
	if ctx.Err() != nil {
		t.Fatalf("child did not acknowledge %d records within 30s (got %d)", killAfter, len(acked))
	}
	if len(acked) < killAfter {
		t.Fatalf("child exited (%v) after %d acknowledged records, want at least %d", waitErr, len(acked), killAfter)
	}

	s, err := Open(context.Background(), dir, Options{})
	if err != nil {
		t.Fatalf("reopen after crash: %v", err)
	}
	defer s.Close()
	stored := map[string]bool{}
	var before int64
	for {
		page, err := s.QueryAudit(context.Background(), AuditQuery{Limit: 1000, BeforeID: before})
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			break
		}
		for _, r := range page {
			stored[r.Reason] = true
		}
		before = page[len(page)-1].ID
	}
	var lost int
	for reason := range acked {
		if !stored[reason] {
			lost++
			if lost <= 10 {
				t.Errorf("acknowledged record %s lost", reason)
			}
		}
	}
	if lost > 0 {
		t.Fatalf("%d of %d acknowledged records lost", lost, len(acked))
	}
	t.Logf("%d acknowledged, %d stored (some committed but unacknowledged is fine)", len(acked), len(stored))
}

// TestCrashChild is the process TestCrash kills. It appends until killed;
// run any other way (no crashDirEnv) it is the parent's helper and has
// nothing to check, so it returns at once.
func TestCrashChild(t *testing.T) {
	dir := os.Getenv(crashDirEnv)
	if dir == "" {
		return
	}
	s, err := Open(context.Background(), dir, Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, "crash child: open:", err)
		os.Exit(2)
	}
	var mu sync.Mutex // one whole line per write
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := 0; ; i++ {
				reason := fmt.Sprintf("g%d-%d", g, i)
				if err := s.Append(context.Background(), AuditRecord{Reason: reason, Decision: "allow"}); err != nil {
					fmt.Fprintln(os.Stderr, "crash child: append:", err)
					os.Exit(2)
				}
				mu.Lock()
				fmt.Fprintln(os.Stdout, "ack", reason)
				mu.Unlock()
			}
		})
	}
	wg.Wait() // never returns: the parent kills this process
}
