package policy

import "testing"

func TestRisk(t *testing.T) {
	r := DefaultRisk()
	for _, tc := range []struct {
		counters map[string]int64
		score    float64
		level    Level
	}{
		{nil, 0, LevelNormal},
		{map[string]int64{CountValidationFailure: 4}, 2, LevelNormal},
		{map[string]int64{CountDenials: 6, CountDLPHits: 2}, 10, LevelStepUp},
		{map[string]int64{CountConsentDenied: 12, CountRateLimited: 2}, 25, LevelBlock},
		{map[string]int64{"unknown": 3}, 3, LevelNormal}, // unweighted counters count 1
	} {
		if s := r.Score(tc.counters); s != tc.score {
			t.Errorf("Score(%v) = %v, want %v", tc.counters, s, tc.score)
		}
		if l := r.Level(tc.score); l != tc.level {
			t.Errorf("Level(%v) = %v, want %v", tc.score, l, tc.level)
		}
	}
	if l := (Risk{}).Level(1e9); l != LevelNormal {
		t.Errorf("zero thresholds: %v, want normal", l)
	}
}
