package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/sag-gateway/sag/identity"
)

// consoleUser is what the consent console does for a user, in Go: the
// development sign-in with a DPoP key, then AG-UI runs on /agui.
type consoleUser struct {
	base string
	hc   *http.Client
}

// signIn signs user in to the console of the gateway at base.
func signIn(t *testing.T, base, user string) *consoleUser {
	t.Helper()
	key, err := identity.NewDPoPKey()
	if err != nil {
		t.Fatal(err)
	}
	proof, err := key.Proof(http.MethodPost, base+"/console/login", "", "")
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodPost, base+"/console/login", strings.NewReader(`{"user":"`+user+`"}`))
	req.Header.Set("DPoP", proof)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var tok struct {
		AccessToken string `json:"access_token"`
	}
	if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&tok) != nil {
		t.Fatalf("console sign-in: %d", resp.StatusCode)
	}
	return &consoleUser{base: base, hc: &http.Client{Transport: &identity.DPoPTransport{Key: key,
		Token: func(context.Context) (string, error) { return tok.AccessToken, nil }}}}
}

// run posts a RunAgentInput to /agui and returns its events as they come.
func (c *consoleUser) run(ctx context.Context, input string) (<-chan map[string]any, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, c.base+"/agui", strings.NewReader(input))
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return nil, fmt.Errorf("POST /agui: %d", resp.StatusCode)
	}
	events := make(chan map[string]any, 16)
	go func() {
		defer resp.Body.Close()
		defer close(events)
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var ev map[string]any
			if data, ok := strings.CutPrefix(sc.Text(), "data: "); ok && json.Unmarshal([]byte(data), &ev) == nil {
				events <- ev
			}
		}
	}()
	return events, nil
}

// approveNext follows the user's consent stream and answers the first
// interrupt with approved; it returns once the stream follows, and done
// reports how the answer went.
func (c *consoleUser) approveNext(t *testing.T, approved bool) (done <-chan error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	events, err := c.run(ctx, `{"threadId":"sag:all","runId":"follow","messages":[]}`)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	for ev := range events {
		if ev["type"] == "STATE_SNAPSHOT" { // the stream follows
			break
		}
	}
	out := make(chan error, 1)
	go func() {
		defer cancel()
		out <- c.answer(ctx, events, approved)
	}()
	return out
}

func (c *consoleUser) answer(ctx context.Context, events <-chan map[string]any, approved bool) error {
	for ev := range events {
		if ev["type"] != "RUN_FINISHED" {
			continue
		}
		ints, _ := ev["outcome"].(map[string]any)["interrupts"].([]any)
		if len(ints) == 0 {
			return fmt.Errorf("the run finished without an interrupt: %v", ev)
		}
		id := ints[0].(map[string]any)["id"].(string)
		res, err := c.run(ctx, fmt.Sprintf(`{"threadId":"sag:consent:%s","runId":"answer","messages":[],"resume":[{"interruptId":%q,"status":"resolved","payload":{"approved":%t}}]}`, id, id, approved))
		if err != nil {
			return err
		}
		for ev := range res {
			switch ev["type"] {
			case "RUN_ERROR":
				return fmt.Errorf("the answer was refused: %v", ev)
			case "RUN_FINISHED":
				return nil
			}
		}
		return fmt.Errorf("the answer's run ended early")
	}
	return fmt.Errorf("the stream ended without an interrupt")
}
