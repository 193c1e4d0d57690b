package identity

import (
	"context"
	"testing"

	"github.com/sag-gateway/sag/store"

	"github.com/sag-gateway/sag/internal/testutil"
)

// BenchmarkVerifyDPoP measures one proof verification (parse, signature,
// claims, replay cache) per algorithm; proofs are signed before the timer.
//
//	go test -run '^$' -bench VerifyDPoP -benchmem ./identity/
func BenchmarkVerifyDPoP(b *testing.B) {
	for _, alg := range []string{"ES256", "EdDSA", "RS256"} {
		b.Run(alg, func(b *testing.B) {
			clock := testutil.NewClock(testNow, 0)
			v := newTestVerifier(b, clock, func(o *DPoPOptions) { o.Replay = store.NewMemoryReplay(b.N+1, clock.Now) })
			s := newSigner(b, alg)
			proofs := make([]string, b.N)
			for i := range proofs {
				proofs[i] = s.sign(b, nil, validClaims(b))
			}
			ctx := context.Background()
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				if _, err := v.Verify(ctx, DPoPRequest{Proofs: proofs[i : i+1], Method: "POST", URL: testURL, AccessToken: testToken}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
