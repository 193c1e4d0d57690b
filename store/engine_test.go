package store

import (
	"context"
	"fmt"
	"os"
	"testing"

	"github.com/sag-gateway/sag/internal/pgtest"
)

// pg is the throwaway PostgreSQL the tests run on when SAG_TEST_POSTGRES=1
// (make unit runs the package both ways); nil means SQLite.
var pg *pgtest.Server

func TestMain(m *testing.M) {
	if os.Getenv("SAG_TEST_POSTGRES") == "1" {
		var err error
		if pg, err = pgtest.Start(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
	code := m.Run()
	if pg != nil {
		pg.Stop()
	}
	os.Exit(code)
}

// testOptions points opts at a fresh PostgreSQL database when the tests run
// on PostgreSQL.
func testOptions(t testing.TB, opts Options) Options {
	t.Helper()
	if pg != nil {
		url, err := pg.NewDatabase(context.Background())
		if err != nil {
			t.Fatalf("new database: %v", err)
		}
		opts.Postgres = url
	}
	return opts
}
