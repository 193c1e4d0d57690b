// Package consent parks sensitive calls until a user approves, denies or
// edits them, and fans decisions out to listeners. It never executes calls.
package consent
