package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"time"

	"github.com/sag-gateway/sag/identity"
)

// cmdAgent runs an AG-UI agent through the gateway for the user: the
// agent's messages and tool calls are printed as they come, and when a call
// of the agent needs the user's consent, the user answers here and the run
// goes on.
func cmdAgent(args []string) error {
	fs := flag.NewFlagSet("sag agent", flag.ContinueOnError)
	url := fs.String("url", defaultURL, "gateway MCP `URL` (the agent runs at its /agui/agents/NAME)")
	thread := fs.String("thread", "", "the run's thread (workflow) `ID` (default: a new one)")
	answer := fs.String("answer", "", "answer every consent request without asking: approve or deny")
	timeout := fs.Duration("timeout", 10*time.Minute, "give up after this long")
	var auth clientAuth
	auth.register(fs)
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: sag agent [--url URL] [--token T [--dpop-key F] | --data DIR --sub USER] [--thread ID] [--answer approve|deny] NAME MESSAGE")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 2 {
		fs.Usage()
		return errors.New("want the agent's name and a message")
	}
	if *answer != "" && *answer != "approve" && *answer != "deny" {
		return errors.New("--answer is approve or deny")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	hc, release, err := auth.client(ctx, *url)
	if err != nil {
		return err
	}
	defer release()
	if *thread == "" {
		*thread = "sag-agent-" + identity.NewID()[:8]
	}
	endpoint := strings.TrimSuffix(*url, "/mcp") + "/agui/agents/" + fs.Arg(0)
	in := map[string]any{
		"threadId": *thread, "runId": identity.NewID(), "state": map[string]any{}, "tools": []any{}, "context": []any{},
		"messages": []any{map[string]any{"id": identity.NewID(), "role": "user", "content": fs.Arg(1)}},
	}
	ask := bufio.NewReader(os.Stdin)
	for {
		interrupts, err := agentRun(ctx, hc, endpoint, in, os.Stdout)
		if err != nil || len(interrupts) == 0 {
			return err
		}
		var resume []any
		for _, it := range interrupts {
			fmt.Printf("\n%s\n", it.Message)
			approved := *answer == "approve"
			if *answer == "" {
				fmt.Print("approve? [y/N] ")
				line, _ := ask.ReadString('\n')
				approved = strings.HasPrefix(strings.ToLower(strings.TrimSpace(line)), "y")
			}
			resume = append(resume, map[string]any{"interruptId": it.ID, "status": "resolved", "payload": map[string]any{"approved": approved}})
		}
		in["runId"], in["resume"] = identity.NewID(), resume
	}
}

// agentInterrupt is an interrupt a run ended with.
type agentInterrupt struct {
	ID      string `json:"id"`
	Message string `json:"message"`
}

// agentRun runs one run and prints its events; it returns the interrupts
// it ended with.
func agentRun(ctx context.Context, hc *http.Client, endpoint string, in map[string]any, out io.Writer) ([]agentInterrupt, error) {
	body, _ := json.Marshal(in) // plain data
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "text/event-stream")
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Description string `json:"error_description"`
		}
		json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&e)
		return nil, fmt.Errorf("%s: HTTP %d: %s", endpoint, resp.StatusCode, e.Description)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		var ev struct {
			Type, Delta, ToolCallName, Content, Message, Code string
			Outcome                                           struct {
				Type       string
				Interrupts []agentInterrupt
			}
		}
		if json.Unmarshal([]byte(data), &ev) != nil {
			return nil, fmt.Errorf("the gateway sent an event that is not JSON")
		}
		switch ev.Type {
		case "TEXT_MESSAGE_CONTENT":
			fmt.Fprint(out, ev.Delta)
		case "TEXT_MESSAGE_END":
			fmt.Fprintln(out)
		case "TOOL_CALL_START":
			fmt.Fprintf(out, "→ %s\n", ev.ToolCallName)
		case "TOOL_CALL_RESULT":
			fmt.Fprintf(out, "← %s\n", ev.Content)
		case "RUN_ERROR":
			return nil, fmt.Errorf("the run failed: %s (%s)", ev.Message, ev.Code)
		case "RUN_FINISHED":
			if ev.Outcome.Type == "interrupt" {
				return ev.Outcome.Interrupts, nil
			}
			return nil, nil
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return nil, errors.New("the run's stream ended before it finished")
}
