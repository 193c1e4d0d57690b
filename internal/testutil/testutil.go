// Package testutil holds the test helpers SAG's packages share: one fake
// clock and one way to build a command of the module for a test. Only tests
// import it.
package testutil

import (
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// Clock is a clock tests move by hand. Now returns the time set, and then
// moves it on by Step (zero: it stays). Safe for concurrent use.
type Clock struct {
	mu   sync.Mutex
	t    time.Time
	step time.Duration
}

// NewClock returns a clock at t that moves on by step after each reading.
func NewClock(t time.Time, step time.Duration) *Clock { return &Clock{t: t, step: step} }

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.t
	c.t = c.t.Add(c.step)
	return now
}

// Add moves the clock by d.
func (c *Clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

var builds struct {
	sync.Mutex
	dir   string
	paths map[string]string
}

// Build builds the command pkg (an import path, or a directory relative to
// the test's package) once per test binary and returns its path. Call
// Cleanup from TestMain to remove what was built.
func Build(t testing.TB, pkg string) string {
	t.Helper()
	builds.Lock()
	defer builds.Unlock()
	if p, ok := builds.paths[pkg]; ok {
		return p
	}
	if builds.dir == "" {
		dir, err := os.MkdirTemp("", "sag-test-bin-")
		if err != nil {
			t.Fatal(err)
		}
		builds.dir, builds.paths = dir, map[string]string{}
	}
	out := filepath.Join(builds.dir, fmt.Sprintf("%d-%s", len(builds.paths), path.Base(filepath.ToSlash(pkg))))
	if b, err := exec.Command("go", "build", "-o", out, pkg).CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
	builds.paths[pkg] = out
	return out
}

// Cleanup removes every command Build built.
func Cleanup() {
	builds.Lock()
	defer builds.Unlock()
	if builds.dir != "" {
		_ = os.RemoveAll(builds.dir)
		builds.dir, builds.paths = "", nil
	}
}
