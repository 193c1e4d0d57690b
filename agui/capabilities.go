package agui

import (
	"encoding/json"
	"net/http"
)

// CapabilitiesPath is where the consent stream's AG-UI capabilities are
// served.
const CapabilitiesPath = "/agui/capabilities"

// capabilities is the part of AG-UI's AgentCapabilities the stream
// declares (absent fields are not declared).
type capabilities struct {
	Identity struct {
		Name        string `json:"name"`
		Type        string `json:"type"`
		Description string `json:"description"`
		Version     string `json:"version,omitempty"`
	} `json:"identity"`
	Transport struct {
		Streaming bool `json:"streaming"`
		WebSocket bool `json:"websocket"`
	} `json:"transport"`
	State struct {
		Snapshots bool `json:"snapshots"`
		Deltas    bool `json:"deltas"`
	} `json:"state"`
	HumanInTheLoop struct {
		Supported        bool `json:"supported"`
		Approvals        bool `json:"approvals"`
		Interrupts       bool `json:"interrupts"`
		ApproveWithEdits bool `json:"approveWithEdits"`
	} `json:"humanInTheLoop"`
}

// Capabilities serves the stream's AG-UI AgentCapabilities: SSE and
// WebSocket transports, state snapshots and JSON Patch deltas, and human in
// the loop: approvals, as interrupts a run ends with and a resume answers,
// with edited arguments where the rule allows them.
func Capabilities(version string) http.Handler {
	var c capabilities
	c.Identity.Name, c.Identity.Type, c.Identity.Version = "SAG consent stream", "sag", version
	c.Identity.Description = "The calls agents make for this user through SAG that need the user's consent, as interrupts; the user's live activity as state."
	c.Transport.Streaming, c.Transport.WebSocket = true, true
	c.State.Snapshots, c.State.Deltas = true, true
	h := &c.HumanInTheLoop
	h.Supported, h.Approvals, h.Interrupts, h.ApproveWithEdits = true, true, true, true
	body, _ := json.Marshal(c) // plain data always encodes
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write(body)
	})
}
