package identity

import (
	"net/http"
	"strings"
)

// OAuthError is every OAuth refusal at SAG's HTTP edges, of a resource
// request (RFC 6750 §3.1, RFC 9449 §7.1: an access token, a DPoP proof, an
// agent credential, a missing scope) or of a token request (RFC 6749 §5.2,
// RFC 8693 §2.2.2, RFC 9449 §5). Each edge renders it in one place: the
// Authenticator's WriteError (WWW-Authenticate challenges) or the token
// service's (an RFC 6749 §5.2 body).
type OAuthError struct {
	// Status is the HTTP status.
	Status int
	// Code is the OAuth error code; "" when a resource request carried no
	// credentials at all (RFC 6750 §3.1: no error in the challenge).
	Code string
	// Description is short and safe to show the client: it never holds a
	// token, a proof or another value of the request.
	Description string
	// Scheme is the authorization scheme the error is about ("DPoP",
	// "Bearer", or for the token endpoint the client's); "" for the
	// default.
	Scheme string
	// Scope lists the scopes needed, for insufficient_scope.
	Scope []string
	// cause is the internal reason, for logs only: it may hold request
	// values.
	cause error
}

func (e *OAuthError) Error() string {
	if e.Code == "" {
		return "authentication required"
	}
	return e.Code + ": " + e.Description
}

// Unwrap returns the internal cause, if any. It may contain request values:
// log it, never send it.
func (e *OAuthError) Unwrap() error { return e.cause }

// Challenge returns the DPoP WWW-Authenticate value for this error (RFC
// 9449 §7.1), for example
//
//	DPoP error="invalid_dpop_proof", error_description="proof replayed", algs="ES256 EdDSA"
//
// Characters that RFC 6750 §3 does not allow inside the quoted values are
// dropped. algs may be nil to leave the algs parameter out.
func (e *OAuthError) Challenge(algs []string) string {
	var b strings.Builder
	b.WriteString("DPoP error=")
	writeQuoted(&b, e.Code)
	if e.Description != "" {
		b.WriteString(", error_description=")
		writeQuoted(&b, e.Description)
	}
	if len(algs) > 0 {
		b.WriteString(", algs=")
		writeQuoted(&b, strings.Join(algs, " "))
	}
	return b.String()
}

// writeQuoted writes s as a quoted string keeping only the characters
// %x20-21 / %x23-5B / %x5D-7E (RFC 6750 §3), so no escaping is needed.
func writeQuoted(b *strings.Builder, s string) {
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c <= 0x7e && c != '"' && c != '\\' {
			b.WriteByte(c)
		}
	}
	b.WriteByte('"')
}

func oauthErr(status int, code, desc string) *OAuthError {
	return &OAuthError{Status: status, Code: code, Description: desc}
}

// invalidToken is RFC 6750 §3.1's invalid_token (401).
func invalidToken(desc string) *OAuthError {
	return oauthErr(http.StatusUnauthorized, ErrCodeInvalidToken, desc)
}

// invalidProof is RFC 9449 §7.1's invalid_dpop_proof (401).
func invalidProof(desc string, cause error) *OAuthError {
	return &OAuthError{Status: http.StatusUnauthorized, Code: ErrCodeInvalidDPoPProof, Description: desc, Scheme: "DPoP", cause: cause}
}
