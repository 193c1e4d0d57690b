package identity

import (
	"testing"

	"github.com/lestrrat-go/jwx/v3/jwk"
)

func TestJWKThumbprint(t *testing.T) {
	cases := []struct{ name, jwk, want string }{
		{
			// RFC 7638 §3.1.
			name: "RFC 7638 §3.1",
			jwk:  `{"kty":"RSA","n":"0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw","e":"AQAB","alg":"RS256","kid":"2011-04-29"}`,
			want: "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs",
		},
		{
			// The key of the RFC 9449 example proofs and its cnf.jkt (figure 9).
			name: "RFC 9449 figure 9",
			jwk:  `{"kty":"EC","x":"l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFs","y":"9VE4jf_Ok_o64zbTTlcuNJajHmt6v9TDVrU0CdvGRDA","crv":"P-256"}`,
			want: rfc9449JKT,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			k, err := jwk.ParseKey([]byte(tc.jwk))
			if err != nil {
				t.Fatal(err)
			}
			got, err := JWKThumbprint(k)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("JWKThumbprint = %s, want %s", got, tc.want)
			}
		})
	}
	if _, err := JWKThumbprint(nil); err == nil {
		t.Error("JWKThumbprint(nil) succeeded")
	}
}

// TestJWKThumbprintIgnoresPrivateMembers: RFC 7638 §3.2 hashes only the
// required public members, so a key and its private form share a thumbprint.
func TestJWKThumbprintIgnoresPrivateMembers(t *testing.T) {
	s := newSigner(t, "ES256")
	priv, err := jwk.Import(s.priv)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := jwk.Import(s.priv.Public())
	if err != nil {
		t.Fatal(err)
	}
	a, err := JWKThumbprint(priv)
	if err != nil {
		t.Fatal(err)
	}
	b, err := JWKThumbprint(pub)
	if err != nil {
		t.Fatal(err)
	}
	if a != b {
		t.Errorf("private %s != public %s", a, b)
	}
}
