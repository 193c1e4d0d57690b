// Package pipeline is SAG's protocol-neutral request pipeline. Every request
// that reaches an upstream, on every channel (MCP now; A2A and the AG-UI
// agent proxy next), is a Call, and Run takes it through DESIGN.md's steps
// in one function: session, authorize, validate, DLP on the arguments,
// consent, credentials, forward, output checks, audit. Each step is a small
// interface declared here (call.go) and implemented by the package that owns
// it; server wires them.
//
// It must not import a protocol SDK (go-sdk, a2a-go): channels translate
// their wire format into a Call and an Outcome back, and map Error codes to
// their own in one place. An architecture test in server keeps it so.
package pipeline
