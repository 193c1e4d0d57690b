// Package policy decides what an authenticated caller may do: allow-list
// rules, conditions, rate limits, DLP redaction, tool pinning and session risk.
// It returns obligations for the pipeline to enforce and never performs calls.
package policy
