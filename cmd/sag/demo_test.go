package main

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
)

// TestFixtureConflicts checks that the demo's logger turns only the
// conflicts between its own fixtures into debug records.
func TestFixtureConflicts(t *testing.T) {
	const fixtures = "resource fixture://readme from upstream beta left out: already served by upstream alpha"
	for _, level := range []slog.Level{slog.LevelInfo, slog.LevelDebug} {
		var buf bytes.Buffer
		log := slog.New(fixtureConflicts{slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: level})}).With("component", "test")
		log.Warn("catalog conflict", "detail", fixtures)
		log.Warn("upstream conflict", "upstream", "beta", "detail", fixtures)
		log.Warn("catalog conflict", "detail", "resource fixture://readme from upstream mine left out: already served by upstream alpha")
		log.Warn("upstream conflict", "upstream", "beta", "detail", "tool echo from upstream beta left out: name already taken by upstream alpha")
		log.Warn("upstream not reachable yet; retrying in the background", "upstream", "beta")
		out := buf.String()
		if n := strings.Count(out, "level=WARN"); n != 3 {
			t.Errorf("at level %s: %d warnings, want 3 (all but the fixtures' own conflicts):\n%s", level, n, out)
		}
		if n := strings.Count(out, "level=DEBUG"); (level == slog.LevelDebug) != (n == 2) || (level == slog.LevelInfo && n != 0) {
			t.Errorf("at level %s: %d debug records:\n%s", level, n, out)
		}
	}
}
