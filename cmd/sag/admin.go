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
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sag-gateway/sag/server"
)

// adminClient talks to a gateway's admin API.
type adminClient struct {
	base  string
	token string
}

func adminFlags(fs *flag.FlagSet) func() (*adminClient, error) {
	srv := fs.String("server", "http://127.0.0.1:8080", "gateway base `URL`")
	tok := fs.String("admin-token", "", "admin `token` (default: $SAG_ADMIN_TOKEN, else DATA/admin.token)")
	data := fs.String("data", "./sag-data", "gateway data `directory`, to read the generated admin token from")
	return func() (*adminClient, error) {
		t := *tok
		if t == "" {
			t = os.Getenv("SAG_ADMIN_TOKEN")
		}
		if t == "" {
			b, err := os.ReadFile(filepath.Join(*data, server.AdminTokenFile))
			if err != nil {
				return nil, fmt.Errorf("no admin token: pass --admin-token, set SAG_ADMIN_TOKEN, or point --data at the gateway's data directory")
			}
			t = strings.TrimSpace(string(b))
		}
		return &adminClient{base: strings.TrimRight(*srv, "/"), token: t}, nil
	}
}

// yamlBody is a request body sent as it is, as YAML.
type yamlBody []byte

// do sends one admin request and decodes a JSON answer into out (if non-nil).
func (c *adminClient) do(method, path string, body, out any) error {
	data, err := c.send(method, path, body)
	if err != nil || out == nil {
		return err
	}
	return json.Unmarshal(data, out)
}

// send sends one admin request and returns the answer's body.
func (c *adminClient) send(method, path string, body any) ([]byte, error) {
	var rd io.Reader
	contentType := "application/json"
	switch b := body.(type) {
	case nil:
	case yamlBody:
		rd, contentType = bytes.NewReader(b), "application/yaml"
	default:
		j, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(j)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	if body != nil {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode >= 300 {
		var e struct {
			Code string `json:"error"`
			Desc string `json:"error_description"`
		}
		if json.Unmarshal(data, &e) == nil && e.Code != "" {
			return nil, fmt.Errorf("%s: %s (HTTP %d)", e.Code, e.Desc, resp.StatusCode)
		}
		return nil, fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	return data, nil
}

func cmdUpstreams(args []string) error {
	const use = "usage: sag upstreams add [flags] NAME URL | list [flags] | remove [flags] NAME | allowlist [flags] NAME FILE|--remove | tools [flags] NAME | approve [flags] NAME TOOL [HASH]"
	if len(args) == 0 {
		return errors.New(use)
	}
	fs := flag.NewFlagSet("sag upstreams "+args[0], flag.ContinueOnError)
	client := adminFlags(fs)
	// open parses the subcommand's flags, checks that it got between min
	// and max arguments, and returns the admin client.
	open := func(min, max int, want string) (*adminClient, error) {
		if err := fs.Parse(args[1:]); err != nil {
			return nil, err
		}
		if fs.NArg() < min || fs.NArg() > max {
			return nil, errors.New("want " + want + "\n" + use)
		}
		return client()
	}
	switch args[0] {
	case "add":
		prefix := fs.String("prefix", "", "naming override: always, conditional or none")
		kind := fs.String("kind", "", "mcp (default); a2a: URL is an A2A agent's base URL, each skill of its card a tool; agui: URL is an AG-UI agent's run endpoint")
		agentKey := fs.String("agent-key", "", "an AG-UI agent's DPoP key thumbprint (RFC 7638)")
		cardJWKS := fs.String("card-jwks", "", "a JWK Set `FILE` of the public keys an A2A agent's card is signed with")
		timeout := fs.String("timeout", "", "per-call timeout (Go duration)")
		var env repeated
		fs.Var(&env, "env", "environment `VAR` passed to a stdio upstream (repeatable)")
		c, err := open(2, 2, "NAME and URL")
		if err != nil {
			return err
		}
		var keys []byte
		if *cardJWKS != "" {
			if keys, err = os.ReadFile(*cardJWKS); err != nil {
				return err
			}
		}
		var out server.UpstreamResponse
		req := server.UpstreamRequest{Name: fs.Arg(0), Kind: *kind, AgentKey: *agentKey, CardJWKS: keys, URL: fs.Arg(1), Prefix: *prefix, Env: env, Timeout: *timeout}
		if err := c.do(http.MethodPost, "/admin/upstreams", req, &out); err != nil {
			return err
		}
		fmt.Printf("registered %s (%s, connected: %v, %d tools)\n", out.Name, out.Transport, out.Connected, out.Tools)
		if out.ConnectError != "" {
			fmt.Printf("not reachable yet, retrying in the background: %s\n", out.ConnectError)
		}
		for _, c := range out.Conflicts {
			fmt.Println("conflict:", c)
		}
		return nil
	case "list":
		c, err := open(0, 0, "no arguments")
		if err != nil {
			return err
		}
		var out []server.UpstreamResponse
		if err := c.do(http.MethodGet, "/admin/upstreams", nil, &out); err != nil {
			return err
		}
		tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tTRANSPORT\tCONNECTED\tTOOLS\tSESSIONS\tSOURCE\tURL")
		for _, u := range out {
			fmt.Fprintf(tw, "%s\t%s\t%v\t%d\t%d\t%s\t%s\n", u.Name, u.Transport, u.Connected, u.Tools, u.Sessions, u.Source, u.URL)
		}
		return tw.Flush()
	case "remove":
		c, err := open(1, 1, "NAME")
		if err != nil {
			return err
		}
		if err := c.do(http.MethodDelete, "/admin/upstreams/"+url.PathEscape(fs.Arg(0)), nil, nil); err != nil {
			return err
		}
		fmt.Println("removed", fs.Arg(0))
		return nil
	case "allowlist":
		remove := fs.Bool("remove", false, "remove the upstream's allow-list")
		c, err := open(1, 2, "NAME and FILE (or NAME --remove)")
		if err != nil {
			return err
		}
		if *remove != (fs.NArg() == 1) {
			return errors.New("want NAME and FILE (or NAME --remove)\n" + use)
		}
		path := "/admin/upstreams/" + url.PathEscape(fs.Arg(0)) + "/allowlist"
		if *remove {
			if err := c.do(http.MethodDelete, path, nil, nil); err != nil {
				return err
			}
			fmt.Println("removed the allow-list of", fs.Arg(0))
			return nil
		}
		doc, err := os.ReadFile(fs.Arg(1))
		if err != nil {
			return err
		}
		var out server.AllowListResponse
		if err := c.do(http.MethodPut, path, yamlBody(doc), &out); err != nil {
			return err
		}
		fmt.Printf("allow-list %s (version %q, %d rules) registered with %s\n", out.ID, out.Version, out.Rules, out.Upstream)
		return nil
	case "tools":
		c, err := open(1, 1, "NAME")
		if err != nil {
			return err
		}
		var out []server.ToolPinResponse
		if err := c.do(http.MethodGet, "/admin/upstreams/"+url.PathEscape(fs.Arg(0))+"/tools", nil, &out); err != nil {
			return err
		}
		tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "TOOL\tSTATE\tAPPROVED\tPENDING")
		for _, p := range out {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", p.Tool, p.State, p.Approved, p.Pending)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		for _, p := range out {
			if p.State == "quarantined" {
				fmt.Printf("\n%s changed; its new definition (approve with: sag upstreams approve %s %s %s):\n%s\n", p.Tool, fs.Arg(0), p.Tool, p.Pending, p.PendingDef)
			}
		}
		return nil
	case "approve":
		c, err := open(2, 3, "NAME TOOL [HASH]")
		if err != nil {
			return err
		}
		path := "/admin/upstreams/" + url.PathEscape(fs.Arg(0)) + "/tools/" + url.PathEscape(fs.Arg(1)) + "/approve"
		if err := c.do(http.MethodPost, path, map[string]string{"hash": fs.Arg(2)}, nil); err != nil {
			return err
		}
		fmt.Printf("approved the new definition of %s on %s\n", fs.Arg(1), fs.Arg(0))
		return nil
	}
	return fmt.Errorf("unknown subcommand %q\n%s", args[0], use)
}

// cmdAudit prints audit records from the data directory, newest first.
func cmdAudit(args []string) error {
	fs := flag.NewFlagSet("sag audit", flag.ContinueOnError)
	client := adminFlags(fs)
	session := fs.String("session", "", "only records of this session (USID, WSID, ASID or MSID)")
	limit := fs.Int("limit", 50, "at most this many records")
	if err := fs.Parse(args); err != nil {
		return err
	}
	c, err := client()
	if err != nil {
		return err
	}
	// The gateway's admin API, not its database file: the store may be
	// another machine's (or PostgreSQL), and the gateway holds it open.
	q := url.Values{"limit": {strconv.Itoa(*limit)}}
	if *session != "" {
		q.Set("session", *session)
	}
	lines, err := c.send(http.MethodGet, "/admin/audit?"+q.Encode(), nil)
	if err != nil {
		return err
	}
	_, err = os.Stdout.Write(lines)
	return err
}

// cmdKill calls the kill-switch: it revokes a session (or every session of a
// user or an agent) and everything hanging off it.
func cmdKill(args []string) error {
	fs := flag.NewFlagSet("sag kill", flag.ContinueOnError)
	client := adminFlags(fs)
	var req server.KillRequest
	fs.StringVar(&req.Session, "session", "", "a session `ID` (USID, WSID, ASID or MSID)")
	fs.StringVar(&req.User, "user", "", "every session of this user (`sub`)")
	fs.StringVar(&req.Agent, "agent", "", "every session of this agent (`SPIFFE_ID`)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	c, err := client()
	if err != nil {
		return err
	}
	var res server.KillResult
	if err := c.do(http.MethodPost, "/admin/kill", req, &res); err != nil {
		return err
	}
	fmt.Printf("revoked %d sessions, cancelled %d calls, closed %d MCP sessions\n", len(res.Revoked), res.CancelledCalls, res.ClosedSessions)
	for _, id := range res.Revoked {
		fmt.Println("  " + id)
	}
	if len(res.Issuers) > 0 {
		fmt.Printf("every token of %s issued until now is refused, from these issuers:\n", req.User)
		for _, iss := range res.Issuers {
			fmt.Println("  " + iss)
		}
	}
	return nil
}

// verbCommand parses "sag NAME VERB ARG… [flags]" for an admin command
// with one verb: it returns the admin client and the positional arguments
// (exactly nargs, none of them a flag).
func verbCommand(name, verb string, nargs int, usage string, args []string) (*adminClient, []string, error) {
	fs := flag.NewFlagSet("sag "+name, flag.ContinueOnError)
	client := adminFlags(fs)
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), usage)
		fs.PrintDefaults()
	}
	want := fmt.Errorf("want: sag %s %s%s", name, verb, strings.Repeat(" ID", nargs))
	if len(args) < 1+nargs || args[0] != verb || slices.ContainsFunc(args[1:1+nargs], func(a string) bool { return strings.HasPrefix(a, "-") }) {
		fs.Usage()
		return nil, nil, want
	}
	if err := fs.Parse(args[1+nargs:]); err != nil {
		return nil, nil, err
	}
	if fs.NArg() > 0 {
		return nil, nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	c, err := client()
	return c, args[1 : 1+nargs], err
}

// cmdRisk clears a session-graph node's risk: "sag risk clear ID".
func cmdRisk(args []string) error {
	c, pos, err := verbCommand("risk", "clear", 1, "usage: sag risk clear ID [--server URL] [--admin-token T | --data DIR]\n\n"+
		"resets the risk score and counters of a workflow, agent or MCP session (audited)", args)
	if err != nil {
		return err
	}
	if err := c.do(http.MethodDelete, "/admin/sessions/"+url.PathEscape(pos[0])+"/risk", nil, nil); err != nil {
		return err
	}
	fmt.Println("risk of", pos[0], "cleared")
	return nil
}

// cmdKeys manages the gateway's signing keys: "sag keys rotate".
func cmdKeys(args []string) error {
	c, _, err := verbCommand("keys", "rotate", 0, "usage: sag keys rotate [--server URL] [--admin-token T | --data DIR]", args)
	if err != nil {
		return err
	}
	var res server.KeysResponse
	if err := c.do(http.MethodPost, "/admin/keys/rotate", nil, &res); err != nil {
		return err
	}
	fmt.Printf("active signing key %s; published: %s\n", res.Active, strings.Join(res.Published, ", "))
	return nil
}
