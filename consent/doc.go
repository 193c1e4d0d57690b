// Package consent owns consent requests: a call that needs its user's
// approval becomes a Request, stored before anyone is told, and waits until
// an authorized user (never an agent, never a token with an actor chain)
// approves, denies or edits it, or it expires or is cancelled (the caller
// gave up, or a kill of a node on its path). Decisions are idempotent,
// exactly one of racing decisions wins, and an approval is bound to its
// agent session and arguments and used once. It never executes calls and
// knows no protocol: the pipeline's consent step and the AG-UI stream use
// it.
package consent
