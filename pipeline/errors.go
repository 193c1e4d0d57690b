package pipeline

import (
	"context"
	"errors"
)

// Code classifies a protocol error; each channel maps it to its own wire
// code in one place.
type Code uint8

// Error codes.
const (
	CodeInternal       Code = iota // a failure of the gateway: nothing about it is told
	CodeNotFound                   // no such tool, prompt or resource for this caller
	CodeInvalidParams              // the request's parameters are malformed
	CodeInvalidRequest             // the request cannot be served as sent (a bad workflow id, too many workflows)
	CodeRevoked                    // a session on the call's path was killed
	CodeDenied                     // a known target refused by policy (non-tool calls)
	CodeRateLimited                // a rate limit refused the call
	CodeConsent                    // consent was required and not given
	CodeUnavailable                // the audit store failed: the call is refused
	CodeUpstream                   // the upstream did not answer (down, timed out, broke)
	CodePassThrough                // the upstream's own protocol error, in Cause
	CodeCancelled                  // the caller cancelled, the session closed or the gateway shut down
)

// Error is a refusal or failure with a message safe to show the caller (no
// token, rule content or path). Cause is for the channel that must pass an
// upstream's own error on, and for logs; it is never shown as is.
type Error struct {
	Code    Code
	Message string
	Cause   error
}

func (e *Error) Error() string { return e.Message }

func (e *Error) Unwrap() error { return e.Cause }

// AsError classifies any error of a step as an *Error (channels use it for
// the steps they call themselves, as a notification stream does).
func AsError(ctx context.Context, err error) *Error {
	var e *Error
	switch {
	case errors.As(err, &e):
		return e
	case context.Cause(ctx) != nil && context.Cause(ctx) != context.Canceled && ctx.Err() != nil:
		// The kill-switch, the session's end or shutdown: say which.
		return &Error{Code: CodeCancelled, Message: context.Cause(ctx).Error(), Cause: err}
	case errors.Is(err, context.Canceled):
		return &Error{Code: CodeCancelled, Message: "cancelled by the client", Cause: err}
	}
	return &Error{Code: CodeInternal, Message: "internal error", Cause: err}
}
