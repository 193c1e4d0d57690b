// Package identity decides who is calling: access tokens, DPoP proofs,
// SPIFFE identities, and the tokens SAG mints for upstreams. It must not
// decide what a caller may do (that is policy).
package identity
