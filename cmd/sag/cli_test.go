package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sag-gateway/sag/server/config"
	"github.com/sag-gateway/sag/store"
)

// sag runs the built binary with args and returns its stdout, stderr and
// whether it exited 0.
func sag(t *testing.T, args ...string) (stdout, stderr string, ok bool) {
	t.Helper()
	cmd := exec.Command(sagBinary(t), args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return out.String(), errb.String(), err == nil
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("sag %v did not finish in 60s", args)
		return "", "", false
	}
}

// TestUpstreamsCLI registers, lists and removes an upstream through the admin
// API with the CLI, and uses the tools, call and audit commands.
func TestUpstreamsCLI(t *testing.T) {
	p := startSag(t, startFixture(t))
	admin := []string{"--server", p.base, "--data", p.data}

	second := startFixture(t)
	out, errOut, ok := sag(t, append(append([]string{"upstreams", "add"}, admin...), "--prefix", "always", "second", second)...)
	if !ok || !strings.Contains(out, "registered second") || !strings.Contains(out, "connected: true") {
		t.Fatalf("upstreams add: ok=%v\n%s%s", ok, out, errOut)
	}
	out, errOut, ok = sag(t, append([]string{"upstreams", "add"}, append(admin, "second", second)...)...)
	if ok || !strings.Contains(errOut, "conflict") {
		t.Errorf("adding a taken name: ok=%v, want a conflict error\n%s%s", ok, out, errOut)
	}
	// The gateway was started without --allow-stdio-registration.
	out, errOut, ok = sag(t, append(append([]string{"upstreams", "add"}, admin...), "local", "stdio:/bin/true")...)
	if ok || !strings.Contains(errOut, "forbidden") || !strings.Contains(errOut, "--allow-stdio-registration") || !strings.Contains(errOut, "HTTP 403") {
		t.Errorf("adding a stdio upstream: ok=%v, want a 403 naming --allow-stdio-registration\n%s%s", ok, out, errOut)
	}
	out, _, ok = sag(t, append([]string{"upstreams", "list"}, admin...)...)
	if !ok || !strings.Contains(out, "second") || !strings.Contains(out, "fx") || !strings.Contains(out, "config") {
		t.Errorf("upstreams list:\n%s", out)
	}

	mcpURL := p.base + "/mcp"
	out, errOut, ok = sag(t, "tools", "--url", mcpURL)
	if !ok || !strings.Contains(out, "second__echo") || !strings.Contains(out, "fx__echo") {
		t.Errorf("tools:\n%s%s", out, errOut)
	}
	out, errOut, ok = sag(t, "call", "--url", mcpURL, "second__echo", `{"text":"via the CLI"}`)
	if !ok || !strings.Contains(out, "via the CLI") {
		t.Errorf("call:\n%s%s", out, errOut)
	}
	// Arguments from a file and from stdin.
	argsFile := filepath.Join(t.TempDir(), "args.json")
	if err := os.WriteFile(argsFile, []byte("{\n  \"text\": \"from a file\"\n}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, errOut, ok = sag(t, "call", "--url", mcpURL, "second__echo", "@"+argsFile)
	if !ok || !strings.Contains(out, "from a file") {
		t.Errorf("call with @FILE:\n%s%s", out, errOut)
	}
	stdinCall := exec.Command(sagBinary(t), "call", "--url", mcpURL, "second__echo", "-")
	stdinCall.Stdin = strings.NewReader(`{"text": "from stdin"}`)
	if b, err := stdinCall.CombinedOutput(); err != nil || !strings.Contains(string(b), "from stdin") {
		t.Errorf("call with - (stdin): %v\n%s", err, b)
	}
	_, errOut, ok = sag(t, "call", "--url", mcpURL, "second__fail")
	if ok || !strings.Contains(errOut, "the tool reported an error") {
		t.Errorf("call of a failing tool: ok=%v\n%s", ok, errOut)
	}

	out, errOut, ok = sag(t, append([]string{"upstreams", "remove"}, append(admin, "second")...)...)
	if !ok || !strings.Contains(out, "removed second") {
		t.Errorf("upstreams remove: ok=%v\n%s%s", ok, out, errOut)
	}
	_, errOut, ok = sag(t, append([]string{"upstreams", "remove"}, append(admin, "second")...)...)
	if ok || !strings.Contains(errOut, "not_found") {
		t.Errorf("removing an unknown upstream: ok=%v\n%s", ok, errOut)
	}
	_, errOut, ok = sag(t, "upstreams", "list", "--server", p.base, "--admin-token", "wrong")
	if ok || !strings.Contains(errOut, "invalid_token") {
		t.Errorf("a wrong admin token: ok=%v\n%s", ok, errOut)
	}

	out, errOut, ok = sag(t, "audit", "--server", p.base, "--data", p.data, "--limit", "10")
	if !ok {
		t.Fatalf("audit: %s", errOut)
	}
	var sawCall bool
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var rec store.AuditRecord
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("audit line %q: %v", line, err)
		}
		if rec.Tool == "second__echo" && rec.Upstream == "second" && rec.Decision == "allow" {
			sawCall = true
		}
	}
	if !sawCall {
		t.Errorf("audit has no record of the CLI's call:\n%s", out)
	}

	// A tool owner's allow-list: only echo stays callable.
	allow := filepath.Join(t.TempDir(), "allow.yaml")
	if err := os.WriteFile(allow, []byte("id: fx-owner\nversion: \"2\"\nrules: [{id: echo-only, tools: [echo]}]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, errOut, ok = sag(t, append([]string{"upstreams", "allowlist"}, append(admin, "fx", allow)...)...)
	if !ok || !strings.Contains(out, `allow-list fx-owner (version "2", 1 rules) registered with fx`) {
		t.Fatalf("upstreams allowlist: ok=%v\n%s%s", ok, out, errOut)
	}
	if _, _, ok = sag(t, "call", "--url", mcpURL, "fx__echo", `{"text":"allowed"}`); !ok {
		t.Error("echo is refused under the allow-list")
	}
	if _, errOut, ok = sag(t, "call", "--url", mcpURL, "fx__add", `{"a":1,"b":2}`); ok || !strings.Contains(errOut, "unknown tool") {
		t.Errorf("add under the allow-list: ok=%v %s", ok, errOut)
	}
	out, errOut, ok = sag(t, append([]string{"upstreams", "tools"}, append(admin, "fx")...)...)
	if !ok || !strings.Contains(out, "echo") || !strings.Contains(out, "approved") {
		t.Errorf("upstreams tools: ok=%v\n%s%s", ok, out, errOut)
	}
	if _, errOut, ok = sag(t, append([]string{"upstreams", "approve"}, append(admin, "fx", "echo")...)...); ok || !strings.Contains(errOut, "not_found") {
		t.Errorf("approving with nothing pending: ok=%v %s", ok, errOut)
	}

	// Clearing a session's risk: an unknown node is refused.
	if _, errOut, ok = sag(t, append([]string{"risk", "clear", "u_nosuchnode"}, admin...)...); ok || !strings.Contains(errOut, "not_found") {
		t.Errorf("risk clear of an unknown node: ok=%v %s", ok, errOut)
	}

	// The kill-switch: the (only, anonymous) user is revoked, and later
	// calls are refused.
	out, errOut, ok = sag(t, append([]string{"kill"}, append(admin, "--user", "anonymous")...)...)
	if !ok || !strings.Contains(out, "revoked ") || !strings.Contains(out, "every token of anonymous") {
		t.Fatalf("kill: ok=%v\n%s%s", ok, out, errOut)
	}
	if _, errOut, ok = sag(t, "call", "--url", mcpURL, "fx__echo", `{"text":"after the kill"}`); ok {
		t.Errorf("a call after the kill succeeded")
	} else if !strings.Contains(errOut, "session_revoked") {
		t.Errorf("a call after the kill failed without saying why: %s", errOut)
	}
	if _, errOut, ok = sag(t, append([]string{"kill"}, admin...)...); ok || !strings.Contains(errOut, "exactly one") {
		t.Errorf("kill without a target: ok=%v %s", ok, errOut)
	}
}

// TestToolsWithoutTools checks that sag tools says so, and fails, when the
// gateway offers the caller no tool.
func TestToolsWithoutTools(t *testing.T) {
	allow := filepath.Join(t.TempDir(), "allow.yaml")
	if err := os.WriteFile(allow, []byte("id: alice-only\nrules: [{id: alice, tools: ['*'], principals: {users: [alice]}}]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startSag(t, startFixture(t), "--auth", "dpop", "--policy", allow)
	mcpURL := p.base + "/mcp"
	out, errOut, ok := sag(t, "tools", "--url", mcpURL, "--data", p.data, "--sub", "bob")
	if ok || out != "" || !strings.Contains(errOut, "no tools are available to this caller") {
		t.Errorf("tools for a user no rule names: ok=%v stdout %q stderr %q; want a failure saying so", ok, out, errOut)
	}
	out, errOut, ok = sag(t, "tools", "--url", mcpURL, "--data", p.data, "--sub", "alice")
	if !ok || !strings.Contains(out, "fx__echo") {
		t.Errorf("tools for alice: ok=%v\n%s%s", ok, out, errOut)
	}
}

// TestDPoPKeyFile checks that only sag token creates a DPoP key, saying so,
// and that the client commands refuse a key file that does not exist rather
// than sending proofs from a new key.
func TestDPoPKeyFile(t *testing.T) {
	dir := t.TempDir()
	allow := filepath.Join(dir, "allow.yaml")
	if err := os.WriteFile(allow, []byte("id: alice-only\nrules: [{id: alice, tools: ['*'], principals: {users: [alice]}}]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startSag(t, startFixture(t), "--auth", "dpop", "--policy", allow)
	key := filepath.Join(dir, "alice.jwk")
	tok, errOut, ok := sag(t, "token", "--data", p.data, "--url", p.base, "--sub", "alice", "--dpop-key", key)
	if !ok || !strings.Contains(errOut, "created a new DPoP key in "+key) || strings.Count(strings.TrimSpace(tok), ".") != 2 {
		t.Fatalf("sag token --dpop-key with a new file: ok=%v stdout %q stderr %q; want the token alone on stdout and a note on stderr", ok, tok, errOut)
	}
	tok = strings.TrimSpace(tok)
	if _, errOut, _ := sag(t, "token", "--data", p.data, "--url", p.base, "--sub", "alice", "--dpop-key", key); strings.Contains(errOut, "created") {
		t.Errorf("sag token with an existing key file created one: %s", errOut)
	}
	mcpURL := p.base + "/mcp"
	if out, errOut, ok := sag(t, "call", "--url", mcpURL, "--token", tok, "--dpop-key", key, "fx__echo", `{"text":"bound"}`); !ok || !strings.Contains(out, "bound") {
		t.Errorf("call with the token's key: ok=%v\n%s%s", ok, out, errOut)
	}
	typo := key + "x"
	for _, cmd := range [][]string{
		{"tools", "--url", mcpURL, "--token", tok, "--dpop-key", typo},
		{"call", "--url", mcpURL, "--token", tok, "--dpop-key", typo, "fx__echo", `{"text":"x"}`},
	} {
		if _, errOut, ok := sag(t, cmd...); ok || !strings.Contains(errOut, "--dpop-key "+typo+": no such file") {
			t.Errorf("sag %s with a missing key file: ok=%v, want an error naming it\n%s", cmd[0], ok, errOut)
		}
		if _, err := os.Stat(typo); err == nil {
			t.Fatalf("sag %s created the missing key file", cmd[0])
		}
	}
}

// TestServeRefusesBadConfig checks that a bad start fails naming the problem.
func TestServeRefusesBadConfig(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "sag.yaml")
	if err := os.WriteFile(bad, []byte("listen: 127.0.0.1:0\nlimits:\n  call_timeout: soon\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"serve", "--config", bad}, "limits.call_timeout"},
		{[]string{"serve", "--listen", "0.0.0.0:0", "--auth", "open", "--data", t.TempDir()}, "loopback"},
		{[]string{"serve", "--upstream", "no-url"}, "NAME=URL"},
		{[]string{"serve", "--upstream", "x=ftp://example.com", "--data", t.TempDir()}, "url"},
		{[]string{"serve", "--prefix", "sometimes"}, "prefix"},
		{[]string{"serve", "--policy", "no-such-allowlist.yaml", "--listen", "127.0.0.1:0", "--data", t.TempDir()}, "policy file"},
	}
	for _, tc := range cases {
		_, errOut, ok := sag(t, tc.args...)
		if ok || !strings.Contains(errOut, tc.want) {
			t.Errorf("sag %v: ok=%v, want an error naming %q; got:\n%s", tc.args, ok, tc.want, errOut)
		}
	}
}

// TestDemoWorksAsPrinted starts `sag demo` and runs the commands it prints.
func TestDemoWorksAsPrinted(t *testing.T) {
	addr := freeAddr(t)
	cmd := exec.Command(sagBinary(t), "demo", "--listen", addr, "--log-level", "warn")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr syncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	var printed []string
	deadline := time.After(30 * time.Second)
	for ready := false; !ready; {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("demo exited; printed:\n%s", strings.Join(printed, "\n"))
			}
			printed = append(printed, l)
			ready = strings.Contains(l, "Press Ctrl-C to stop")
		case <-deadline:
			t.Fatalf("demo not ready after 30s; printed:\n%s", strings.Join(printed, "\n"))
		}
	}
	go func() {
		for range lines { // keep the pipe drained
		}
	}()

	// Every command is printed as it runs from the repository: no bare sag.
	bare := regexp.MustCompile(`(^|[\s(:])sag (serve|demo|tools|call|agent|token|upstreams|kill|keys|audit|bench)\b`)
	var ran int
	consented, ranAgent := false, false
	vars := map[string]string{}
	for _, l := range printed {
		l = strings.TrimSpace(l)
		if bare.MatchString(l) {
			t.Errorf("printed command %q does not work as printed: run it with go run ./cmd/sag", l)
		}
		// NAME=$(go run ./cmd/sag …) keeps the output for "$NAME" below.
		name, cmd, isAssign := strings.Cut(l, "=$(")
		if isAssign && strings.HasSuffix(cmd, ")") {
			l = strings.TrimSuffix(cmd, ")")
		} else {
			name = ""
		}
		args, isGoRun := strings.CutPrefix(l, "go run ./cmd/sag ")
		if !isGoRun {
			continue
		}
		argv, err := splitShellWords(args, vars)
		if err != nil {
			t.Fatalf("printed command %q: %v", l, err)
		}
		// The call that needs consent waits for alice, who approves it in
		// her consent stream, as she would in the console.
		var approved <-chan error
		if strings.Contains(l, "alpha__delete_everything") {
			approved = signIn(t, "http://"+addr, "alice").approveNext(t, true)
		}
		out, errOut, ok := sag(t, argv...)
		if !ok {
			t.Errorf("printed command %q failed:\n%s%s", l, out, errOut)
		}
		if approved != nil {
			if err := <-approved; err != nil {
				t.Errorf("approving %q: %v", l, err)
			}
			if !strings.Contains(out, "deleted (pretend)") || !strings.Contains(errOut, "waiting for alice's approval of alpha__delete_everything") {
				t.Errorf("the approved call %q:\n%s%s", l, out, errOut)
			}
			consented = true
		}
		// The agent's call waits for alice's consent; the command asks,
		// and with nothing to read it denies.
		if strings.HasPrefix(args, "agent ") {
			if !strings.Contains(out, "asks to call echo on alpha for alice") || !strings.Contains(out, "← error: denied by alice") {
				t.Errorf("the agent run %q:\n%s%s", l, out, errOut)
			}
			ranAgent = true
		}
		if name != "" {
			vars[name] = strings.TrimSpace(out)
		}
		ran++
	}
	if !consented {
		t.Error("the demo printed no call that needs consent")
	}
	if !ranAgent {
		t.Error("the demo printed no agent run")
	}
	t.Logf("ran %d printed commands", ran)
	if ran < 6 {
		t.Errorf("demo printed %d runnable commands, want at least 6:\n%s", ran, strings.Join(printed, "\n"))
	}
	if !strings.Contains(strings.Join(printed, "\n"), "--url http://"+addr+"/mcp") {
		t.Errorf("the demo listens on %s but its commands do not name --url http://%[1]s/mcp:\n%s", addr, strings.Join(printed, "\n"))
	}
	// The demo does not warn about what it does on purpose (its fixtures
	// serve the same resources); the kill it prints is worth a warning.
	for _, l := range strings.Split(stderr.String(), "\n") {
		if strings.Contains(l, "level=WARN") && !strings.Contains(l, "msg=kill-switch") {
			t.Errorf("the demo logged a warning: %s", l)
		}
	}
}

// syncBuffer is a bytes.Buffer safe for a writing process and a reading test.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// splitShellWords splits a printed command line the way a POSIX shell would
// for the simple forms the demo prints: words, single-quoted strings and
// "$NAME" (a variable of vars).
func splitShellWords(s string, vars map[string]string) ([]string, error) {
	var out []string
	for s = strings.TrimSpace(s); s != ""; s = strings.TrimSpace(s) {
		if s[0] == '\'' {
			end := strings.IndexByte(s[1:], '\'')
			if end < 0 {
				return nil, os.ErrInvalid
			}
			out = append(out, s[1:end+1])
			s = s[end+2:]
			continue
		}
		word, rest, _ := strings.Cut(s, " ")
		if name, ok := strings.CutPrefix(word, `"$`); ok && strings.HasSuffix(name, `"`) {
			v, ok := vars[strings.TrimSuffix(name, `"`)]
			if !ok {
				return nil, fmt.Errorf("%s is not set by an earlier command", word)
			}
			word = v
		}
		out = append(out, word)
		s = rest
	}
	return out, nil
}

// TestServeFlags checks that flags override the config file.
func TestServeFlags(t *testing.T) {
	load := func(args ...string) *config.Config {
		t.Helper()
		f := newServeFlags("sag serve")
		if err := f.fs.Parse(args); err != nil {
			t.Fatal(err)
		}
		cfg, err := f.load()
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	if load().AllowStdioRegistration {
		t.Error("stdio registration through the admin API is allowed by default")
	}
	if !load("--allow-stdio-registration").AllowStdioRegistration {
		t.Error("--allow-stdio-registration did not allow stdio registration")
	}
	file := filepath.Join(t.TempDir(), "sag.yaml")
	if err := os.WriteFile(file, []byte("allow_stdio_registration: true\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if !load("--config", file).AllowStdioRegistration {
		t.Error("allow_stdio_registration in the config file is lost")
	}
}
