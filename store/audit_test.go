package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// fullRecord has every field set to a distinct value.
func fullRecord() AuditRecord {
	return AuditRecord{
		Time:           time.Date(2026, 7, 28, 9, 30, 0, 123456789, time.UTC),
		Method:         "tools/call",
		USID:           "usid-1",
		WSID:           "wsid-1",
		ASID:           "asid-1",
		MSID:           "msid-1",
		Sub:            "alice",
		SpiffeID:       "spiffe://example.org/agent/bot",
		Act:            `{"sub":"bot"}`,
		Aud:            "https://gh.example/mcp",
		DPoPJTI:        "jti-1",
		DPoPHTU:        "https://sag.example/mcp",
		DPoPHTM:        "POST",
		DPoPATH:        "ath-1",
		MTLSThumbprint: "x5t-1",
		Tool:           "github__create_issue",
		Upstream:       "github",
		SchemaVersion:  "sha256:abc",
		AllowListMatch: "rule-7",
		DLPActions:     []string{"redact:email", "redact:ssn"},
		PolicyID:       "policy-3",
		Decision:       "allow",
		Reason:         "matched rule-7",
		LatencyUS:      1234,
		ConsentID:      "consent-9",
	}
}

func TestAuditRoundTrip(t *testing.T) {
	ctx := context.Background()
	clock := newTestClock()
	s := openTest(t, Options{Now: clock.Now})
	full := fullRecord()
	minimal := AuditRecord{Decision: "deny", Reason: "no rule"} // zero Time from the clock
	for _, rec := range []AuditRecord{full, minimal} {
		if err := s.Append(ctx, rec); err != nil {
			t.Fatalf("Append: %v", err)
		}
	}
	got, err := s.QueryAudit(ctx, AuditQuery{})
	if err != nil {
		t.Fatalf("QueryAudit: %v", err)
	}
	full.ID = 1
	minimal.ID, minimal.Time = 2, clockBase.Add(2*time.Second) // reading 1 was Open's
	if want := []AuditRecord{minimal, full}; !reflect.DeepEqual(got, want) {
		t.Errorf("QueryAudit =\n %+v\nwant\n %+v", got, want)
	}

	// The JSON export carries DESIGN.md's field names.
	b, err := json.Marshal(got[1])
	if err != nil {
		t.Fatal(err)
	}
	var fields map[string]any
	if err := json.Unmarshal(b, &fields); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"id", "time", "method", "usid", "wsid", "asid", "msid", "sub", "spiffe_id", "act", "aud",
		"dpop_jti", "dpop_htu", "dpop_htm", "dpop_ath", "mtls_thumbprint", "tool", "upstream", "schema_version",
		"allow_list_match", "dlp_actions", "policy_id", "decision", "reason", "latency_us", "consent_id"} {
		if _, ok := fields[name]; !ok {
			t.Errorf("JSON export lacks %q: %s", name, b)
		}
	}
	if len(fields) != 26 {
		t.Errorf("JSON export has %d fields, want 26: %s", len(fields), b)
	}
}

func TestQueryAuditBySession(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{})
	// Record i carries session ids derived from i, so that each column can be
	// matched on its own.
	recs := []AuditRecord{
		{USID: "u1", WSID: "w1", ASID: "a1", MSID: "m1", Reason: "r1"},
		{USID: "u1", ASID: "a1", MSID: "m2", Reason: "r2"},
		{USID: "u1", ASID: "a2", Reason: "r3"},
		{USID: "u2", WSID: "w1", Reason: "r4"},
		{Reason: "r5"},
	}
	for _, rec := range recs {
		if err := s.Append(ctx, rec); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name string
		q    AuditQuery
		want []string // reasons, newest first
	}{
		{name: "all", q: AuditQuery{}, want: []string{"r5", "r4", "r3", "r2", "r1"}},
		{name: "by usid", q: AuditQuery{Session: "u1"}, want: []string{"r3", "r2", "r1"}},
		{name: "by wsid", q: AuditQuery{Session: "w1"}, want: []string{"r4", "r1"}},
		{name: "by asid", q: AuditQuery{Session: "a1"}, want: []string{"r2", "r1"}},
		{name: "by msid", q: AuditQuery{Session: "m2"}, want: []string{"r2"}},
		{name: "unknown session", q: AuditQuery{Session: "zz"}, want: nil},
		{name: "limit", q: AuditQuery{Limit: 2}, want: []string{"r5", "r4"}},
		{name: "page", q: AuditQuery{Limit: 2, BeforeID: 4}, want: []string{"r3", "r2"}},
		{name: "page by session", q: AuditQuery{Session: "u1", Limit: 2, BeforeID: 3}, want: []string{"r2", "r1"}},
		{name: "past the end", q: AuditQuery{BeforeID: 1}, want: nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := s.QueryAudit(ctx, tc.q)
			if err != nil {
				t.Fatalf("QueryAudit: %v", err)
			}
			var reasons []string
			for _, r := range got {
				reasons = append(reasons, r.Reason)
			}
			if !reflect.DeepEqual(reasons, tc.want) {
				t.Errorf("QueryAudit(%+v) = %v, want %v", tc.q, reasons, tc.want)
			}
		})
	}
}

func TestQueryAuditPaging(t *testing.T) {
	ctx := context.Background()
	s := openTest(t, Options{})
	const n = 250
	for i := range n {
		if err := s.Append(ctx, AuditRecord{Reason: fmt.Sprint(i)}); err != nil {
			t.Fatal(err)
		}
	}
	var (
		seen   int
		before int64
		pages  int
	)
	for {
		page, err := s.QueryAudit(ctx, AuditQuery{BeforeID: before}) // default limit 100
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			break
		}
		pages++
		for _, r := range page {
			if want := fmt.Sprint(n - 1 - seen); r.Reason != want {
				t.Fatalf("record %d has reason %s, want %s", seen, r.Reason, want)
			}
			seen++
		}
		before = page[len(page)-1].ID
	}
	if seen != n || pages != 3 {
		t.Errorf("paged through %d records in %d pages, want %d in 3", seen, pages, n)
	}
}

// BenchmarkAppend measures one caller appending records back to back: the
// latency of one commit with no batching.
func BenchmarkAppend(b *testing.B) {
	s := openTest(b, Options{})
	ctx := context.Background()
	rec := fullRecord()
	b.ReportAllocs()
	for b.Loop() {
		if err := s.Append(ctx, rec); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAppendParallel measures many callers appending at once, where
// group commit shares each transaction between them.
func BenchmarkAppendParallel(b *testing.B) {
	s := openTest(b, Options{})
	ctx := context.Background()
	rec := fullRecord()
	b.ReportAllocs()
	b.SetParallelism(8) // 8 × GOMAXPROCS callers
	start := s.commits.Load()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := s.Append(ctx, rec); err != nil {
				b.Error(err)
				return
			}
		}
	})
	if commits := s.commits.Load() - start; commits > 0 {
		b.ReportMetric(float64(b.N)/float64(commits), "records/commit")
	}
}

// TestQueryAuditUsesIndexes guards the audit indexes: a query by session
// must search audit_sessions by each session column, then the records by
// their audit_sessions row, never scan either table.
func TestQueryAuditUsesIndexes(t *testing.T) {
	s := openTestSQLite(t)
	rows, err := s.r.Query(`EXPLAIN QUERY PLAN `+selectAudit+`
		WHERE id < ?1 AND sessions IN (SELECT id FROM audit_sessions
			WHERE usid = ?3 OR wsid = ?3 OR asid = ?3 OR msid = ?3)
		ORDER BY id DESC LIMIT ?2`, 1, 1, "s")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var plan []string
	for rows.Next() {
		var id, parent, unused int
		var detail string
		if err := rows.Scan(&id, &parent, &unused, &detail); err != nil {
			t.Fatal(err)
		}
		plan = append(plan, detail)
	}
	joined := strings.Join(plan, "\n")
	for _, idx := range []string{"sqlite_autoindex_audit_sessions_1 (usid=?)", "audit_sessions_wsid", "audit_sessions_asid", "audit_sessions_msid", "audit_by_sessions"} {
		if !strings.Contains(joined, "INDEX "+idx) {
			t.Errorf("query plan does not use %s:\n%s", idx, joined)
		}
	}
	if strings.Contains(joined, "SCAN audit") {
		t.Errorf("query plan scans a table:\n%s", joined)
	}
}

// TestAuditSessionsMigration upgrades a database holding records written
// under schema version 1 (session ids in indexed audit columns): queries by
// session must find them, and records appended afterwards, alike.
func TestAuditSessionsMigration(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	db, err := sql.Open("sqlite", dsn(filepath.Join(dir, dbFile)))
	if err != nil {
		t.Fatal(err)
	}
	v1 := []string{
		migrations[0],
		`CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied INTEGER NOT NULL)`,
		`INSERT INTO schema_migrations VALUES (1, 0)`,
		`INSERT INTO audit (time, method, usid, wsid, asid, msid, sub, spiffe_id, act, aud, dpop_jti, dpop_htu, dpop_htm, dpop_ath,
			mtls_thumbprint, tool, upstream, schema_version, allow_list_match, policy_id, decision, reason, latency_us, consent_id)
		VALUES (1, 'tools/call', 'u1', 'w1', 'a1', 'm1', '', '', '', '', '', '', '', '', '', '', '', '', '', '', '', 'old1', 0, ''),
			(2, 'tools/call', 'u1', NULL, 'a2', NULL, '', '', '', '', '', '', '', '', '', '', '', '', '', '', '', 'old2', 0, ''),
			(3, 'tools/call', NULL, NULL, NULL, NULL, '', '', '', '', '', '', '', '', '', '', '', '', '', '', '', 'old3', 0, '')`,
	}
	for _, q := range v1 {
		if _, err := db.Exec(q); err != nil {
			t.Fatalf("schema version 1: %v", err)
		}
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	s, err := Open(ctx, dir, Options{})
	if err != nil {
		t.Fatalf("Open (migrate): %v", err)
	}
	defer s.Close()
	if err := s.Append(ctx, AuditRecord{USID: "u1", ASID: "a1", MSID: "m3", Reason: "new1"}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		session string
		want    []string
	}{
		{"u1", []string{"new1", "old2", "old1"}},
		{"w1", []string{"old1"}},
		{"a1", []string{"new1", "old1"}},
		{"a2", []string{"old2"}},
		{"m1", []string{"old1"}},
		{"m3", []string{"new1"}},
		{"", []string{"new1", "old3", "old2", "old1"}},
	}
	for _, tc := range tests {
		recs, err := s.QueryAudit(ctx, AuditQuery{Session: tc.session})
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, r := range recs {
			got = append(got, r.Reason)
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("session %q: %v, want %v", tc.session, got, tc.want)
		}
	}
	old, err := s.QueryAudit(ctx, AuditQuery{Session: "a2"})
	if err != nil || len(old) != 1 || old[0].USID != "u1" || old[0].WSID != "" || old[0].MSID != "" {
		t.Errorf("migrated record read back as %+v (%v)", old, err)
	}
}

// BenchmarkMoveRecords measures the journal's mover alone: one
// transaction moving 40 records (about what 20 ms gather at 2,000 calls
// a second), reported per record.
func BenchmarkMoveRecords(b *testing.B) {
	s := openTest(b, Options{})
	recs := make([]journaled, 40)
	for i := range recs {
		recs[i] = journaled{Seq: uint64(i + 1), Rec: fullRecord()}
	}
	b.ReportAllocs()
	for b.Loop() {
		if err := s.submit(context.Background(), func(tx *sql.Tx) error { return s.moveRecords(tx, recs) }); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(recs))/1000, "µs/record")
}
