package identity

import "time"

// Ways a request was authenticated (Principal.Method).
const (
	MethodOpen   = "open"   // --auth open: no authentication, loopback only
	MethodBearer = "bearer" // a bearer token: weaker, anyone holding it may use it
	MethodDPoP   = "dpop"   // a DPoP-bound token and a proof of its key
	MethodMTLS   = "mtls"   // a certificate-bound token over mTLS (RFC 8705)
)

// Principal is who a request comes from, as authentication established it.
// Fields that the configured authentication mode does not establish are empty.
type Principal struct {
	// Issuer and User identify the end user (the token's iss and sub).
	Issuer, User string
	// Agent is the calling agent's authenticated identity (a SPIFFE ID),
	// if it presented one.
	Agent string
	// Act is the token's actor chain, nil when it names none.
	Act *Actor
	// KeyThumbprint is the RFC 7638 thumbprint of the proof-of-possession
	// key (DPoP), or the certificate thumbprint (mTLS).
	KeyThumbprint string
	// TokenID is the access token's jti.
	TokenID string
	// SessionID is the token's sid claim (the user session), if present.
	SessionID string
	// ClientID is the token's client_id.
	ClientID string
	// Scopes are the token's scopes.
	Scopes []string
	// Groups are the token's groups claim.
	Groups []string
	// Workflow is the workflow a run token binds the agent's calls to (the
	// gateway's own sag_workflow claim), "" otherwise.
	Workflow string
	// Claims are all the token's claims (decoded JSON; read-only).
	Claims map[string]any
	// IssuedAt is the token's iat, Expiry when it expires (both zero under
	// --auth open).
	IssuedAt, Expiry time.Time
	// Method is how the request was authenticated (Method* constants).
	Method string
	// Proof is the verified DPoP proof of this request, nil without DPoP.
	Proof *DPoPProof
	// CertThumbprint is the SHA-256 thumbprint of the mTLS client
	// certificate (RFC 8705 §3.1 form), "" without one.
	CertThumbprint string
}

// Anonymous is the principal of every request under "--auth open": no
// authentication, loopback only. It is one user, so all such requests share
// one user session.
func Anonymous() Principal { return Principal{Issuer: "open", User: "anonymous", Method: MethodOpen} }

// Key identifies the principal for binding state to it (parked calls,
// sessions): issuer, user and agent.
func (p Principal) Key() string { return p.Issuer + "\x00" + p.User + "\x00" + p.Agent }
