package upstreams

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/sag-gateway/sag/identity"
)

type headerCreds struct{}

func (headerCreds) Apply(req *http.Request, o identity.OnBehalfOf) error {
	req.Header.Set("Authorization", "DPoP minted-for-"+o.Audience)
	return nil
}

// TestAgentClientRefusesRedirects: an agent that answers a call with a
// redirect gets no second request: the caller's message and the token
// minted for the agent never go where it points.
func TestAgentClientRefusesRedirects(t *testing.T) {
	reached := false
	elsewhere := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { reached = true }))
	defer elsewhere.Close()
	agent := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, elsewhere.URL+"/internal", http.StatusTemporaryRedirect)
	}))
	defer agent.Close()
	m := &Manager{opts: Options{HTTPClient: &http.Client{}, Credentials: headerCreds{}}}
	u := &upstream{m: m, spec: Spec{Name: "agent", Kind: KindA2A, Auth: AuthDPoP}, tgt: target{endpoint: agent.URL}}
	resp, err := m.agentClient(u, nil).Post(agent.URL+"/rpc", "application/json", strings.NewReader(`{"message":"private"}`))
	if err == nil {
		resp.Body.Close()
	}
	if err == nil || !strings.Contains(err.Error(), "redirects: refused") || reached {
		t.Errorf("a redirecting agent: %v, reached elsewhere %v; want refused, nothing sent on", err, reached)
	}
}
