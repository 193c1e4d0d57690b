package identity

import (
	"crypto"
	"encoding/base64"
	"errors"
	"fmt"

	"github.com/lestrrat-go/jwx/v3/jwk"
)

// JWKThumbprint returns the RFC 7638 JWK SHA-256 thumbprint of key,
// base64url-encoded without padding: the form RFC 9449 §6.1 uses for the
// cnf.jkt confirmation member. Only the required members of the key type
// enter the hash (RFC 7638 §3.2), so private and optional members do not
// change it.
func JWKThumbprint(key jwk.Key) (string, error) {
	if key == nil {
		return "", errors.New("identity: thumbprint of nil key")
	}
	sum, err := key.Thumbprint(crypto.SHA256)
	if err != nil {
		return "", fmt.Errorf("identity: jwk thumbprint: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(sum), nil
}
