package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"math"
	"time"
)

// AuditRecord is one decision of the gateway (DESIGN.md, "Audit record").
// Its JSON form is the export format (JSON lines).
type AuditRecord struct {
	ID     int64     `json:"id,omitempty"`
	Time   time.Time `json:"time"`
	Method string    `json:"method,omitempty"` // MCP method, e.g. "tools/call"

	USID     string `json:"usid,omitempty"`
	WSID     string `json:"wsid,omitempty"`
	ASID     string `json:"asid,omitempty"`
	MSID     string `json:"msid,omitempty"`
	Sub      string `json:"sub,omitempty"`
	SpiffeID string `json:"spiffe_id,omitempty"`
	Act      string `json:"act,omitempty"`
	Aud      string `json:"aud,omitempty"`

	DPoPJTI        string `json:"dpop_jti,omitempty"`
	DPoPHTU        string `json:"dpop_htu,omitempty"`
	DPoPHTM        string `json:"dpop_htm,omitempty"`
	DPoPATH        string `json:"dpop_ath,omitempty"`
	MTLSThumbprint string `json:"mtls_thumbprint,omitempty"`

	Tool           string   `json:"tool,omitempty"`
	Upstream       string   `json:"upstream,omitempty"`
	SchemaVersion  string   `json:"schema_version,omitempty"`
	AllowListMatch string   `json:"allow_list_match,omitempty"`
	DLPActions     []string `json:"dlp_actions,omitempty"` // stored as JSON text; empty reads back as nil

	PolicyID  string `json:"policy_id,omitempty"`
	Decision  string `json:"decision,omitempty"` // "allow", "deny" or "error"
	Reason    string `json:"reason,omitempty"`
	LatencyUS int64  `json:"latency_us"`
	ConsentID string `json:"consent_id,omitempty"`
}

// AuditQuery selects audit records, newest first.
type AuditQuery struct {
	// Session, when not empty, matches records whose usid, wsid, asid or
	// msid equals it.
	Session string
	// Limit caps the number of records; 100 when <= 0.
	Limit int
	// BeforeID returns only records with a smaller ID, for paging: pass the
	// ID of the last record of the previous page. 0 starts at the newest.
	BeforeID int64
}

// insertAuditSessionsSQL makes sure audit_sessions has the row of a
// record's session ids (usid, wsid, asid, msid; empty when absent), and
// selectAuditSessionSQL reads its id. Plain ? placeholders throughout: the
// SQLite driver looks up the name of every numbered one on every
// execution.
const (
	insertAuditSessionsSQL = `INSERT INTO audit_sessions (usid, wsid, asid, msid) VALUES (?, ?, ?, ?)
ON CONFLICT DO NOTHING`
	selectAuditSessionSQL = `SELECT id FROM audit_sessions WHERE usid = ? AND wsid = ? AND asid = ? AND msid = ?`
)

// insertAuditSQL stores a record with the id of its audit_sessions row.
// Absent session ids are stored as NULL, as schema version 1 did.
const insertAuditSQL = `INSERT INTO audit (time, method, usid, wsid, asid, msid, sub, spiffe_id, act, aud,
	dpop_jti, dpop_htu, dpop_htm, dpop_ath, mtls_thumbprint,
	tool, upstream, schema_version, allow_list_match, dlp_actions,
	policy_id, decision, reason, latency_us, consent_id, sessions)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`

// selectAudit is the column list QueryAudit scans.
const selectAudit = `SELECT id, time, method,
	COALESCE(usid, ''), COALESCE(wsid, ''), COALESCE(asid, ''), COALESCE(msid, ''), sub, spiffe_id, act, aud,
	dpop_jti, dpop_htu, dpop_htm, dpop_ath, mtls_thumbprint,
	tool, upstream, schema_version, allow_list_match, dlp_actions,
	policy_id, decision, reason, latency_us, consent_id
FROM audit`

// Append stores rec and returns only once it is written to the audit
// journal (journal.go), so a caller may acknowledge the decision it records;
// any error means the record may not be stored and the caller must fail
// closed. A zero Time is set from the store's clock; rec.ID is ignored (the
// store assigns it).
func (s *DB) Append(ctx context.Context, rec AuditRecord) error {
	if rec.Time.IsZero() {
		rec.Time = s.now()
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := s.journal.append(rec); err != nil {
		return fmt.Errorf("store: append audit: %w", err)
	}
	return nil
}

// QueryAudit returns the audit records q selects, newest first.
func (s *DB) QueryAudit(ctx context.Context, q AuditQuery) ([]AuditRecord, error) {
	if err := s.journal.flush(ctx); err != nil {
		return nil, fmt.Errorf("store: query audit: %w", err)
	}
	if q.Limit <= 0 {
		q.Limit = 100
	}
	before := q.BeforeID
	if before <= 0 {
		before = math.MaxInt64
	}
	if err := s.acquire(); err != nil {
		return nil, err
	}
	defer s.release()

	var (
		rows *sql.Rows
		err  error
	)
	if q.Session == "" {
		rows, err = s.r.QueryContext(ctx, selectAudit+`
			WHERE id < ?1 ORDER BY id DESC LIMIT ?2`, before, q.Limit)
	} else {
		rows, err = s.r.QueryContext(ctx, selectAudit+`
			WHERE id < ?1 AND sessions IN (SELECT id FROM audit_sessions
				WHERE usid = ?3 OR wsid = ?3 OR asid = ?3 OR msid = ?3)
			ORDER BY id DESC LIMIT ?2`, before, q.Limit, q.Session)
	}
	if err != nil {
		return nil, fmt.Errorf("store: query audit: %w", err)
	}
	defer rows.Close()

	var out []AuditRecord
	for rows.Next() {
		var (
			r   AuditRecord
			t   int64
			dlp []byte
		)
		if err := rows.Scan(&r.ID, &t, &r.Method,
			&r.USID, &r.WSID, &r.ASID, &r.MSID, &r.Sub, &r.SpiffeID, &r.Act, &r.Aud,
			&r.DPoPJTI, &r.DPoPHTU, &r.DPoPHTM, &r.DPoPATH, &r.MTLSThumbprint,
			&r.Tool, &r.Upstream, &r.SchemaVersion, &r.AllowListMatch, &dlp,
			&r.PolicyID, &r.Decision, &r.Reason, &r.LatencyUS, &r.ConsentID); err != nil {
			return nil, fmt.Errorf("store: query audit: %w", err)
		}
		if dlp != nil {
			if err := json.Unmarshal(dlp, &r.DLPActions); err != nil {
				return nil, fmt.Errorf("store: query audit: record %d: dlp actions: %w", r.ID, err)
			}
		}
		r.Time = fromNanos(t)
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: query audit: %w", err)
	}
	return out, nil
}
