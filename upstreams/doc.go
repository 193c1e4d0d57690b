// Package upstreams owns the upstream MCP servers behind the gateway: the
// registry, the connections (Streamable HTTP, stdio, legacy SSE), the
// aggregated catalog (naming, collisions, list_changed) and the forwarding of
// progress, logging, cancellation, elicitation and sampling. It knows nothing
// of HTTP routes, policy or identity; credentials reach it through an interface
// it declares.
package upstreams
