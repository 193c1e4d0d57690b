package store

import (
	"context"
	"database/sql"
	"testing"
)

func BenchmarkZZRawTx(b *testing.B) {
	s := openTest(b, Options{})
	rec := fullRecord()
	b.ReportAllocs()
	for b.Loop() {
		tx, err := s.w.Begin()
		if err != nil {
			b.Fatal(err)
		}
		if _, err := tx.Stmt(s.insertAudit).Exec(nanos(rec.Time), rec.Method,
			rec.USID, rec.WSID, rec.ASID, rec.MSID, rec.Sub, rec.SpiffeID, rec.Act, rec.Aud,
			rec.DPoPJTI, rec.DPoPHTU, rec.DPoPHTM, rec.DPoPATH, rec.MTLSThumbprint,
			rec.Tool, rec.Upstream, rec.SchemaVersion, rec.AllowListMatch, "[]",
			rec.PolicyID, rec.Decision, rec.Reason, rec.LatencyUS, rec.ConsentID); err != nil {
			b.Fatal(err)
		}
		if err := tx.Commit(); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkZZNoop(b *testing.B) {
	s := openTest(b, Options{})
	b.ReportAllocs()
	for b.Loop() {
		if err := s.submit(context.Background(), func(*sql.Tx) error { return nil }); err != nil {
			b.Fatal(err)
		}
	}
}
