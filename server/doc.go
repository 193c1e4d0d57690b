// Package server is the composition root of SAG: it builds every component
// from its config and dependencies (New), mounts the HTTP routes (the MCP
// front at /mcp, health, metrics, the admin API), implements the steps of
// the protocol-neutral pipeline over those components (steps.go), owns the
// one sessions component (sessions.go), and adapts MCP to the pipeline
// (mcp.go): requests in as pipeline.Call, Outcome back as MCP. It decides
// nothing the pipeline should. Nothing below server imports it.
package server
