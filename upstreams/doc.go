// Package upstreams owns the upstream MCP servers behind the gateway: the
// registry, the connections (Streamable HTTP, stdio, legacy SSE), the
// aggregated catalog (naming, collisions, list_changed) and the forwarding of
// progress, logging, cancellation, elicitation and sampling. It knows nothing
// of HTTP routes, policy or identity; credentials reach it through an
// interface it declares.
//
// Routing tables here hold contexts (progress routes, in-flight calls, the
// request holding a pooled connection), against the usual rule: a
// notification or a request for the client must be sent under the context
// of the client's own request to travel on that request's response stream.
// An upstream's elicitation or sampling request on a session-based
// connection cannot say which call it belongs to; it travels with the most
// recent call in flight on that connection (the same downstream session),
// and is cancelled if that call ends first.
package upstreams
