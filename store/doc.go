// Package store owns SAG's persistence in an embedded SQLite database
// (modernc.org/sqlite, pure Go): the session graph (USID, WSID, ASID, MSID
// with parent links and kill-switch revocation), the upstream registry and the
// audit log, together with the versioned schema migrations that create them.
//
// Every write goes through one group-committing writer goroutine that owns the
// write connection: concurrent writes share a transaction, and a call returns
// only once its own change is committed (WAL with synchronous=NORMAL, so a
// commit costs no disk flush yet survives a killed process). Reads use a
// separate read-only connection pool and never queue behind the writer.
// Audit records are the exception on the way in: Append writes each to an
// append-only journal file and returns, and the writer moves them into the
// audit table in batches (journal.go); reads of the audit log wait for what
// was journaled before them.
//
// The store is the bottom of the import chain: it must not import any other
// SAG package, make policy decisions, log or wrap token values or session ids
// in its errors, or keep request contexts beyond the call that passed them.
// Consumers declare the small interfaces they need; *DB implements them.
package store
