package pipeline

import (
	"context"
	"encoding/json"
	"errors"

	"github.com/sag-gateway/sag/policy"
)

// NoConsent is the consent step while no consent channel exists: a call that
// needs the user's approval is refused, saying why it needed it.
type NoConsent struct{}

// Finished does nothing: NoConsent approves nothing.
func (NoConsent) Finished(string, Outcome) {}

// Await refuses.
func (NoConsent) Await(_ context.Context, c *Call, _ Target, d policy.Decision, _ json.RawMessage) (Approval, error) {
	why := d.ConsentReason
	if why == "" {
		why = "the policy asks for it"
	}
	return Approval{}, errors.New("consent required: " + c.Name + " needs the user's approval (" + why + "), and no consent channel is available yet")
}
