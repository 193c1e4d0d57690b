package identity

import (
	"net/http/httptest"
	"testing"
	"time"
)

// The cost of each identity step on a tool call with full security
// (BENCHMARKS.md):
//
//	go test -run '^$' -bench 'Proof|Mint|MinterApply|TokenVerify' -benchmem ./identity/

// BenchmarkProof signs one DPoP proof (client side; the gateway signs one per
// upstream request).
func BenchmarkProof(b *testing.B) {
	k, err := NewDPoPKey()
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := k.Proof("POST", "http://127.0.0.1:8080/mcp", "token", ""); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkMint signs one access token (once per session and upstream).
func BenchmarkMint(b *testing.B) {
	keys, err := LoadKeys(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	iss := &Issuer{URL: "http://gw", Keys: keys}
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := iss.Mint(Claims{Subject: "alice", Audience: Audience{"http://up/mcp"}}, time.Minute); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkMinterApply is the gateway's work per upstream request: a cached
// on-behalf-of token and a fresh proof.
func BenchmarkMinterApply(b *testing.B) {
	keys, err := LoadKeys(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	key, _ := NewDPoPKey()
	m, err := NewMinter(MinterOptions{Issuer: &Issuer{URL: "http://gw", Keys: keys}, Key: key, Self: "http://gw", TTL: time.Minute})
	if err != nil {
		b.Fatal(err)
	}
	p := &Principal{Issuer: "http://gw", User: "alice"}
	req := httptest.NewRequest("POST", "http://up/mcp", nil)
	b.ReportAllocs()
	for b.Loop() {
		if err := m.Apply(req, OnBehalfOf{Upstream: "up", Audience: "http://up/mcp", Principal: p, Session: "s1"}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkTokenVerifyCached is an access token seen before: a hash and a
// map lookup.
func BenchmarkTokenVerifyCached(b *testing.B) {
	keys, err := LoadKeys(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	v, err := NewTokenVerifier(TokenOptions{Audience: "http://gw", Issuers: map[string]KeySource{"http://gw": StaticKeys{Set: keys.PublicSet}}})
	if err != nil {
		b.Fatal(err)
	}
	tok, _, err := (&Issuer{URL: "http://gw", Keys: keys}).Mint(Claims{Subject: "alice", Audience: Audience{"http://gw"}}, time.Hour)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := v.Verify(b.Context(), tok); err != nil {
			b.Fatal(err)
		}
	}
}
