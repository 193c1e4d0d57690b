package identity

// Principal is who a request comes from, as authentication established it.
// Fields that the configured authentication mode does not establish are empty.
type Principal struct {
	// Issuer and User identify the end user (the token's iss and sub).
	Issuer, User string
	// Agent is the calling agent's identity (a SPIFFE ID), if known.
	Agent string
	// Act is the actor chain as JSON, if the token carries one.
	Act string
	// KeyThumbprint is the RFC 7638 thumbprint of the proof-of-possession key.
	KeyThumbprint string
	// TokenID is the access token's jti.
	TokenID string
	// SessionID is the token's sid claim (the user session), if present.
	SessionID string
}

// Anonymous is the principal of every request under "--auth open": no
// authentication, loopback only. It is one user, so all such requests share
// one user session.
func Anonymous() Principal { return Principal{Issuer: "open", User: "anonymous"} }

// Key identifies the principal for binding state to it (parked calls,
// sessions): issuer, user and agent.
func (p Principal) Key() string { return p.Issuer + "\x00" + p.User + "\x00" + p.Agent }
