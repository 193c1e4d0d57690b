package policy

// Risk counters: what a session did that raises its risk.
const (
	CountDenials           = "denials"             // calls no rule allowed, conditions not met
	CountValidationFailure = "validation_failures" // arguments or results failing a schema
	CountDLPHits           = "dlp_hits"            // redactions
	CountRateLimited       = "rate_limited"        // calls past a rate limit
	CountConsentDenied     = "consent_denied"      // calls refused for lack of consent
)

// Risk turns a session's counters into a score and the score into a level.
// The zero value weighs every counter 1 and never steps up or blocks.
type Risk struct {
	// Weights per counter; a counter without a weight counts 1.
	Weights map[string]float64 `json:"weights,omitempty" yaml:"weights,omitempty"`
	// StepUp and Block are score thresholds (0: off). At StepUp every call
	// needs the user's consent; at Block every call is refused.
	StepUp float64 `json:"step_up,omitempty" yaml:"step_up,omitempty"`
	Block  float64 `json:"block,omitempty" yaml:"block,omitempty"`
}

// DefaultRisk weighs what most suggests an agent gone astray (DLP hits,
// consent denials) above mistakes a model corrects (validation failures),
// and steps up at 10 and blocks at 25.
func DefaultRisk() Risk {
	return Risk{
		Weights: map[string]float64{
			CountDenials: 1, CountValidationFailure: 0.5, CountDLPHits: 2, CountRateLimited: 0.5, CountConsentDenied: 2,
		},
		StepUp: 10,
		Block:  25,
	}
}

// Score is the weighted sum of the counters.
func (r Risk) Score(counters map[string]int64) float64 {
	s := 0.0
	for k, n := range counters {
		w, ok := r.Weights[k]
		if !ok {
			w = 1
		}
		s += w * float64(n)
	}
	return s
}

// Level is the consequence of a score.
type Level int

const (
	LevelNormal Level = iota
	LevelStepUp       // every call needs consent
	LevelBlock        // every call is refused
)

func (l Level) String() string {
	switch l {
	case LevelStepUp:
		return "step_up"
	case LevelBlock:
		return "block"
	}
	return "normal"
}

// Level returns the level of a score.
func (r Risk) Level(score float64) Level {
	switch {
	case r.Block > 0 && score >= r.Block:
		return LevelBlock
	case r.StepUp > 0 && score >= r.StepUp:
		return LevelStepUp
	}
	return LevelNormal
}
