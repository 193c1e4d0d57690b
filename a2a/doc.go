// Package a2a is SAG's A2A 1.0 agent (a2a-go v2): the JSON-RPC and
// HTTP+JSON bindings, the agent cards, and an executor that turns each
// task's message into one tool call through the request pipeline (package
// pipeline), with consent as INPUT_REQUIRED. It keeps the tasks in the
// store, each its caller's alone. It decides nothing itself and does not
// import server: it declares the small interfaces it needs.
package a2a
