//go:build browser

// The consent console in a real browser: Debian's chromium driven by
// chromedp (e2e/run.sh console installs chromium when it is missing and runs
// this with -tags browser).

package server_test

import (
	"context"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/sag-gateway/sag/identity"
)

// chromium is the browser the test drives ($SAG_CHROMIUM, else Debian's).
func chromium() string {
	if p := os.Getenv("SAG_CHROMIUM"); p != "" {
		return p
	}
	return "/usr/bin/chromium"
}

// browser starts a headless chromium on a fresh profile; its page's
// console messages and uncaught exceptions go to the test log (an
// exception fails the test).
func browser(t *testing.T) context.Context {
	t.Helper()
	if _, err := os.Stat(chromium()); err != nil {
		t.Fatalf("no browser at %s (e2e/chromium.sh installs Debian's chromium): %v", chromium(), err)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium()),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.NoSandbox,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-quic", true),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx, chromedp.WithLogf(t.Logf))
	t.Cleanup(func() {
		cancel()
		cancelAlloc()
	})
	err := chromedp.Listen(ctx, func(ev any) {
		switch ev := ev.(type) {
		case *runtime.EventConsoleAPICalled:
			var args []string
			for _, a := range ev.Args {
				args = append(args, string(a.Value))
			}
			t.Logf("console.%s: %s", ev.Type, strings.Join(args, " "))
		case *runtime.EventExceptionThrown:
			t.Errorf("page exception: %s %v", ev.ExceptionDetails.Text, ev.ExceptionDetails.Exception)
		}
	})
	if err != nil {
		t.Fatalf("start %s: %v", chromium(), err)
	}
	return ctx
}

// stepper returns a function that runs actions in page, bounded by waitFor;
// a failure ends the test with what the page shows.
func stepper(t *testing.T, page context.Context) func(what string, actions ...chromedp.Action[chromedp.Void]) {
	return func(what string, actions ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		sctx, scancel := context.WithTimeout(page, waitFor)
		defer scancel()
		if err := chromedp.Do(sctx, actions...); err != nil {
			html, _ := chromedp.Run(page, chromedp.OuterHTML(chromedp.CSS("body")))
			t.Fatalf("%s: %v\n%s", what, err, html)
		}
	}
}

// countdown is how the console shows the time a request has left (the
// consent_ttl is 5 minutes).
var countdown = regexp.MustCompile(`^in [45]:[0-5][0-9]$`)

// TestConsoleInBrowser: alice signs in to the console in chromium; while
// her agent's MCP calls wait, she sees each pending call and approves one
// (the call completes and the page shows its result), denies one (the call
// ends with the reason) and approves one with edited arguments (the page
// refuses an edit that breaks the tool's schema first); then she kills
// her agent's session from the graph and the agent's next call is
// refused.
func TestConsoleInBrowser(t *testing.T) {
	tg, _ := startPolicyGateway(t, consentPolicy, devLoginOn)
	alice := newAgent(t, tg, identity.Claims{Subject: "alice"})
	page := browser(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*waitFor)
	defer cancel()
	step := stepper(t, page)
	textOf := func(sel string) string {
		t.Helper()
		sctx, scancel := context.WithTimeout(page, waitFor)
		defer scancel()
		s, err := chromedp.Run(sctx, chromedp.Text(chromedp.CSS(sel)))
		if err != nil {
			t.Fatalf("text of %s: %v", sel, err)
		}
		return s
	}
	step("sign in",
		chromedp.Navigate(tg.Base+"/console/"),
		chromedp.WaitVisible(chromedp.ID("user")),
		chromedp.SendKeys(chromedp.ID("user"), "alice"),
		chromedp.Click(chromedp.ID("signin-button")),
		chromedp.WaitVisible(chromedp.ID("app")),
		chromedp.WaitVisible(chromedp.ID("no-pending")),
	)
	// The console follows alice's stream before her agent calls.
	eventually(t, "the console's stream open", func() bool { return tg.GW.StreamsOpen(identity.Principal{Issuer: tg.Base, User: "alice"}) })

	decideInPage := func(text, button string) *mcp.CallToolResult {
		t.Helper()
		res := workflowCall(t, ctx, tg, alice, "wf-browser", text)
		step("see the pending call "+text, chromedp.WaitVisible(chromedp.CSS(`#pending li.pending`)))
		shown := textOf(`#pending li.pending`)
		if !strings.Contains(shown, "echo on fx") || !strings.Contains(shown, text) || !strings.Contains(shown, "rule\necho-with-consent") {
			t.Errorf("the pending card shows %q", shown)
		}
		if left := textOf(`#pending li.pending .countdown`); !countdown.MatchString(left) {
			t.Errorf("the pending card's countdown shows %q", left)
		}
		step("click "+button, chromedp.Click(chromedp.CSS(`#pending li.pending button.`+button)))
		select {
		case r := <-res:
			return r
		case <-ctx.Done():
			t.Fatalf("the call %q did not return", text)
		}
		return nil
	}

	if r := decideInPage("approve me", "approve"); r.IsError || toolText(r) != "approve me" {
		t.Errorf("approved call: %s", toolText(r))
	}
	step("see the result", chromedp.WaitVisible(chromedp.CSS(`#results li.result`)))
	result := textOf(`#results li.result .result-text`)
	if result != "approve me" {
		t.Errorf("the page shows the result %q", result)
	}

	if r := decideInPage("deny me", "deny"); !r.IsError || !strings.Contains(toolText(r), "denied by alice") {
		t.Errorf("denied call: %v %s", r.IsError, toolText(r))
	}

	// Edit and approve: an edit breaking the schema is refused in the page.
	res := workflowCall(t, ctx, tg, alice, "wf-browser", "edit me")
	step("open the editor with a bad edit",
		chromedp.WaitVisible(chromedp.CSS(`#pending li.pending button.edit-open`)),
		chromedp.Click(chromedp.CSS(`#pending li.pending button.edit-open`)),
		chromedp.WaitVisible(chromedp.CSS(`#pending li.pending textarea.edit`)),
		chromedp.SetValue(chromedp.CSS(`#pending li.pending textarea.edit`), `{"text": 42}`),
		chromedp.Click(chromedp.CSS(`#pending li.pending button.edited`)),
	)
	problems := textOf(`#pending li.pending .edit-errors`)
	if !strings.Contains(problems, "arguments.text must be string") {
		t.Errorf("the page's schema check says %q", problems)
	}
	step("approve a good edit",
		chromedp.SetValue(chromedp.CSS(`#pending li.pending textarea.edit`), `{"text": "edited in Chromium"}`),
		chromedp.Click(chromedp.CSS(`#pending li.pending button.edited`)),
	)
	select {
	case r := <-res:
		if r.IsError || toolText(r) != "edited in Chromium" {
			t.Errorf("call approved with edits: %s", toolText(r))
		}
	case <-ctx.Done():
		t.Fatal("the edited call did not return")
	}

	// Kill from the graph: the agent's MCP session, then the agent's call
	// on it is refused (the console, on other nodes, goes on).
	cs := connectWorkflow(t, alice, tg.MCP, "wf-browser")
	if res := callTool(t, cs, "fx__add", map[string]any{"a": 1, "b": 2}); res.IsError {
		t.Fatalf("add: %s", toolText(res))
	}
	node := `#graph .node.mcp[data-id="` + cs.ID() + `"]`
	step("kill the agent's MCP session",
		chromedp.WaitVisible(chromedp.CSS(node+` button.kill`)),
		chromedp.Click(chromedp.CSS(node+` button.kill`)),
		chromedp.WaitVisible(chromedp.CSS(node+`.revoked`)),
	)
	if msg := textOf("#graph-error"); msg != "" {
		t.Errorf("the console after the kill: %s", msg)
	}
	cctx, ccancel := context.WithTimeout(ctx, waitFor)
	defer ccancel()
	if r, err := cs.CallTool(cctx, &mcp.CallToolParams{Name: "fx__add", Arguments: map[string]any{"a": 1, "b": 2}}); err == nil && !r.IsError {
		t.Errorf("the agent's call after the kill: %s", toolText(r))
	}
}

// TestConsoleSignInBrowser: the console signs in through the gateway's
// authorization server in chromium (code + PKCE, a non-extractable
// WebCrypto key named by dpop_jkt, the token DPoP-bound), shows alice's
// sessions, and refuses an answer that names another issuer (mix-up).
func TestConsoleSignInBrowser(t *testing.T) {
	tg := asGateway(t, nil)
	page := browser(t)
	step := stepper(t, page)
	text := func(sel string) string {
		t.Helper()
		s, err := chromedp.Run(page, chromedp.Text(chromedp.CSS(sel)))
		if err != nil {
			t.Fatalf("text of %s: %v", sel, err)
		}
		return s
	}
	step("open the console and go to the sign-in page",
		chromedp.Navigate(tg.Base+"/console/"),
		chromedp.WaitVisible(chromedp.ID("signin-sag")),
		chromedp.Click(chromedp.ID("signin-sag")),
		chromedp.WaitVisible(chromedp.ID("password")),
	)
	step("sign in as alice",
		chromedp.SendKeys(chromedp.ID("username"), signInUser),
		chromedp.SendKeys(chromedp.ID("password"), signInPassword),
		chromedp.Click(chromedp.CSS(`button[value="signin"]`)),
		chromedp.WaitVisible(chromedp.ID("app")),
		chromedp.WaitVisible(chromedp.CSS(`#graph li`)),
	)
	if who := text("#who"); who != "signed in as alice" {
		t.Fatalf("the console shows %q", who)
	}
	// The console's stream stands on a token from the sign-in.
	eventually(t, "the console's stream open", func() bool { return tg.GW.StreamsOpen(identity.Principal{Issuer: tg.Base, User: signInUser}) })

	// A page that started a sign-in (its state s1) gets an answer naming
	// another issuer.
	if _, err := chromedp.Run(page, chromedp.Evaluate[bool](`sessionStorage.setItem("sag.signin", JSON.stringify({verifier: "v".repeat(43), state: "s1"})), true`)); err != nil {
		t.Fatal(err)
	}
	step("an answer from another issuer",
		chromedp.Navigate(tg.Base+"/console/?code=stolen&state=s1&iss=https%3A%2F%2Fevil.example"),
		chromedp.WaitVisible(chromedp.ID("signin")),
	)
	if e := text("#signin-error"); !strings.Contains(e, "mix-up") {
		t.Fatalf("the console shows %q, want the mix-up refused", e)
	}
}
