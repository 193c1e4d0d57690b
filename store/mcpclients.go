package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
)

// MCPClient is what a client of the session-based MCP protocol (2025
// revisions) established when it opened the MCP session Session: its
// initialize params and the log level it last set. It is all a gateway
// needs to serve the session's next request.
type MCPClient struct {
	Session    string
	Initialize json.RawMessage
	LogLevel   string
}

// PutMCPClient stores c, replacing what was stored for its session. The
// session must exist (ErrNotFound otherwise).
func (s *DB) PutMCPClient(ctx context.Context, c MCPClient) error {
	if c.Session == "" || !json.Valid(c.Initialize) {
		return errors.New("store: put MCP client: a session id and its initialize params (JSON) are required")
	}
	err := s.exec(ctx, "put MCP client", `INSERT INTO mcp_clients (session, initialize, log_level) VALUES (?1, ?2, ?3)
		ON CONFLICT (session) DO UPDATE SET initialize = excluded.initialize, log_level = excluded.log_level`,
		c.Session, string(c.Initialize), c.LogLevel)
	if isForeignKeyViolation(err) {
		return fmt.Errorf("store: put MCP client: session %w", ErrNotFound)
	}
	return err
}

// GetMCPClient returns what the client of the MCP session id established,
// or ErrNotFound.
func (s *DB) GetMCPClient(ctx context.Context, id string) (MCPClient, error) {
	if err := s.acquire(); err != nil {
		return MCPClient{}, err
	}
	defer s.release()
	c := MCPClient{Session: id}
	var init string
	err := s.r.QueryRowContext(ctx, `SELECT initialize, log_level FROM mcp_clients WHERE session = ?`, id).Scan(&init, &c.LogLevel)
	if errors.Is(err, sql.ErrNoRows) {
		return MCPClient{}, fmt.Errorf("store: get MCP client: %w", ErrNotFound)
	}
	if err != nil {
		return MCPClient{}, fmt.Errorf("store: get MCP client: %w", err)
	}
	c.Initialize = json.RawMessage(init)
	return c, nil
}

// ForgetMCPClient deletes what was stored for the MCP session id: its client
// ended it, and no gateway may continue it.
func (s *DB) ForgetMCPClient(ctx context.Context, id string) error {
	return s.exec(ctx, "forget MCP client", `DELETE FROM mcp_clients WHERE session = ?`, id)
}
