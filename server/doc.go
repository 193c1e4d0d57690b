// Package server is the composition root of SAG: it builds every component
// from its config, mounts the HTTP routes (the MCP front at /mcp, health,
// metrics, the admin API) and owns the tool-call pipeline, which calls into the
// packages that own each step. Nothing below server imports it.
package server
