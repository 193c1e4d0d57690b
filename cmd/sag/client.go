package main

import (
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
	"sync"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

const defaultURL = "http://127.0.0.1:8080/mcp"

// connect opens an MCP client session to a gateway.
// The returned close ends the session and releases what auth holds.
func connect(ctx context.Context, url string, auth *clientAuth, opts *mcp.ClientOptions) (cs *mcp.ClientSession, close func(), err error) {
	hc, release, err := auth.client(ctx, url)
	if err != nil {
		return nil, nil, err
	}
	refusal := &refusals{base: hc.Transport}
	if refusal.base == nil {
		refusal.base = http.DefaultTransport
	}
	hc = &http.Client{Transport: refusal}
	c := mcp.NewClient(&mcp.Implementation{Name: "sag-cli", Version: version}, opts)
	cs, err = c.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: url, HTTPClient: hc, DisableStandaloneSSE: true}, nil)
	if err != nil {
		release()
		return nil, nil, fmt.Errorf("connect to %s: %w%s", url, err, refusal.reason())
	}
	return cs, func() { cs.Close(); release() }, nil
}

// refusals remembers why the gateway last refused a request (its OAuth
// error and description), which the MCP client reports only as a status.
type refusals struct {
	base http.RoundTripper
	mu   sync.Mutex
	last string
}

func (r *refusals) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := r.base.RoundTrip(req)
	if err != nil || (resp.StatusCode != http.StatusUnauthorized && resp.StatusCode != http.StatusForbidden) {
		return resp, err
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	resp.Body = io.NopCloser(bytes.NewReader(body))
	var e struct {
		Code string `json:"error"`
		Desc string `json:"error_description"`
	}
	if json.Unmarshal(body, &e) == nil && e.Code != "" {
		r.mu.Lock()
		r.last = e.Code + ": " + e.Desc
		r.mu.Unlock()
	}
	return resp, nil
}

// reason is " (error: description)" of the last refusal, or "".
func (r *refusals) reason() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.last == "" {
		return ""
	}
	return " (" + r.last + ")"
}

// errNoTools is what sag tools says when the gateway lists no tool.
var errNoTools = errors.New("no tools are available to this caller (no allow-list rule names it, or no upstream offers any)")

func cmdTools(args []string) error {
	fs := flag.NewFlagSet("sag tools", flag.ContinueOnError)
	url := fs.String("url", defaultURL, "gateway MCP `URL`")
	var auth clientAuth
	auth.register(fs)
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: sag tools [--url URL] [--token T [--dpop-key F] | --data DIR --sub USER]")
		fmt.Fprintln(fs.Output(), "Lists the tools the gateway offers this caller. Exits 1 when there is none, saying so on stderr.")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cs, done, err := connect(ctx, *url, &auth, nil)
	if err != nil {
		return err
	}
	defer done()
	n := 0
	for t, err := range cs.Tools(ctx, nil) {
		if err != nil {
			return err
		}
		fmt.Printf("%-32s %s\n", t.Name, t.Description)
		n++
	}
	if n == 0 {
		return errNoTools
	}
	return nil
}

func cmdCall(args []string) error {
	fs := flag.NewFlagSet("sag call", flag.ContinueOnError)
	url := fs.String("url", defaultURL, "gateway MCP `URL`")
	timeout := fs.Duration("timeout", time.Minute, "give up after this long")
	var auth clientAuth
	auth.register(fs)
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: sag call [--url URL] [--token T [--dpop-key F] | --data DIR --sub USER] TOOL ['{\"arg\": \"value\"}' | - | @FILE]")
		fmt.Fprintln(fs.Output(), "The arguments are a JSON object: given inline, read from stdin (-) or from FILE (@FILE).")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() < 1 || fs.NArg() > 2 {
		fs.Usage()
		return errors.New("want a tool name and optional JSON arguments")
	}
	var arguments map[string]any
	if fs.NArg() == 2 {
		var err error
		if arguments, err = readArguments(fs.Arg(1), os.Stdin); err != nil {
			return err
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	// What the gateway says while the call waits (for a user's consent,
	// say) goes to stderr.
	cs, done, err := connect(ctx, *url, &auth, &mcp.ClientOptions{
		ProgressNotificationHandler: func(_ context.Context, n *mcp.ProgressNotificationClientRequest) {
			if n.Params.Message != "" {
				fmt.Fprintf(os.Stderr, "sag call: %s\n", n.Params.Message)
			}
		},
	})
	if err != nil {
		return err
	}
	defer done()
	params := &mcp.CallToolParams{Name: fs.Arg(0), Arguments: arguments}
	params.SetProgressToken("sag-call")
	res, err := cs.CallTool(ctx, params)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(res); err != nil {
		return err
	}
	if res.IsError {
		return errors.New("the tool reported an error")
	}
	return nil
}

// maxArguments bounds the arguments read from stdin or a file.
const maxArguments = 64 << 20

// readArguments decodes the arguments of sag call: a JSON object given
// inline, "-" for one read from stdin, or "@FILE" for one read from FILE.
func readArguments(arg string, stdin io.Reader) (map[string]any, error) {
	what, raw := "arguments", []byte(arg)
	var src io.Reader
	switch {
	case arg == "-":
		what, src = "arguments from stdin", stdin
	case strings.HasPrefix(arg, "@"):
		f, err := os.Open(arg[1:])
		if err != nil {
			return nil, fmt.Errorf("arguments: %w", err)
		}
		defer f.Close()
		what, src = "arguments from "+arg[1:], f
	}
	if src != nil {
		var err error
		if raw, err = io.ReadAll(io.LimitReader(src, maxArguments+1)); err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
		if len(raw) > maxArguments {
			return nil, fmt.Errorf("%s: more than %d MiB", what, maxArguments>>20)
		}
	}
	var arguments map[string]any
	if err := json.Unmarshal(raw, &arguments); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field == "" {
			return nil, fmt.Errorf("%s: got a JSON %s, want an object", what, te.Value)
		}
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return arguments, nil
}
