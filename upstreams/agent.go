package upstreams

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"time"

	spec "github.com/a2aproject/a2a-go/v2/a2a"
	"github.com/a2aproject/a2a-go/v2/a2aclient"
	"github.com/a2aproject/a2a-go/v2/a2acompat/a2av0"
	"github.com/lestrrat-go/jwx/v3/jwk"
	"github.com/lestrrat-go/jwx/v3/jws"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/sag-gateway/sag/internal/jcs"
)

// An A2A upstream (Spec.Kind KindA2A) is an agent SAG calls on behalf of
// its callers: its card is read at registration and refreshed now and then,
// each skill becomes a tool (message in, the agent's answer out), and every
// call carries a token minted for the agent, like any upstream's.

// AgentCardPath is where an agent's card is, under its base URL.
const AgentCardPath = "/.well-known/agent-card.json"

// Limits of reading an agent card (it comes from another party's server).
const (
	maxCardBytes     = 1 << 20
	cardRefreshEvery = 5 * time.Minute
)

// agentArgs are the arguments of an agent skill's tool.
type agentArgs struct {
	Message   string `json:"message"`
	ContextID string `json:"contextId,omitempty"`
	TaskID    string `json:"taskId,omitempty"`
}

// agentInputSchema is the input schema of every agent skill's tool.
var agentInputSchema = json.RawMessage(`{"type":"object","properties":{` +
	`"message":{"type":"string","minLength":1,"description":"What to ask the agent."},` +
	`"contextId":{"type":"string","description":"Continue this conversation with the agent."},` +
	`"taskId":{"type":"string","description":"Continue this task: the agent asked for input (its answer's a2a.state is input-required)."}},` +
	`"required":["message"],"additionalProperties":false}`)

// AgentState is what a skill's tool result reports of the agent's task, in
// structuredContent under "a2a": how to continue it.
type AgentState struct {
	State     string `json:"state"` // completed, input-required, …
	TaskID    string `json:"taskId,omitempty"`
	ContextID string `json:"contextId,omitempty"`
}

// superviseAgent keeps an A2A upstream's card: read it, list its skills,
// read it again every cardRefreshEvery (with backoff while it fails).
func (u *upstream) superviseAgent() {
	defer close(u.done)
	base, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-u.stop
		cancel()
	}()
	backoff := 100 * time.Millisecond
	for {
		ctx, cancelTry := context.WithTimeout(base, min(u.timeout(), 10*time.Second))
		card, err := u.m.fetchCard(ctx, u.tgt.endpoint, u.spec.CardJWKS)
		cancelTry()
		wait := cardRefreshEvery
		u.mu.Lock()
		if err == nil {
			changed := u.card == nil
			u.card, u.lastErr = card, ""
			u.listing.tools = skillTools(card)
			u.mu.Unlock()
			if changed {
				u.log.Info("agent card read", "skills", len(card.Skills))
			}
			backoff = 100 * time.Millisecond
		} else {
			u.lastErr = safeError(err)
			u.mu.Unlock()
			u.log.Warn("agent card not read", "error", safeError(err), "retry_in", backoff)
			wait, backoff = backoff, min(backoff*2, 30*time.Second)
		}
		u.m.rebuild()
		u.firstOnce.Do(func() { close(u.firstTry) })
		select {
		case <-u.stop:
			return
		case <-time.After(wait):
		}
	}
}

// fetchCard reads an agent's card with SSRF limits: no redirects, at most
// maxCardBytes, within ctx's deadline, and every interface it names on the
// card's own origin (a card cannot send SAG's requests, and the tokens
// minted for the agent, anywhere else).
func (m *Manager) fetchCard(ctx context.Context, base string, keys json.RawMessage) (*spec.AgentCard, error) {
	hc := *m.opts.HTTPClient
	hc.CheckRedirect = func(*http.Request, []*http.Request) error { return errors.New("the agent card redirects: refused") }
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+AgentCardPath, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("agent card: HTTP %d", resp.StatusCode)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxCardBytes+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxCardBytes {
		return nil, fmt.Errorf("agent card larger than %d bytes: refused", maxCardBytes)
	}
	card, err := parseCard(b)
	if err != nil {
		return nil, err
	}
	origin, _ := url.Parse(base)
	for _, in := range card.SupportedInterfaces {
		if err := sameOrigin(origin, in.URL); err != nil {
			return nil, err
		}
	}
	if len(card.SupportedInterfaces) == 0 {
		return nil, errors.New("agent card lists no interface")
	}
	if err := verifyCard(b, card, keys); err != nil {
		return nil, err
	}
	return card, nil
}

// cardKeys parses the public keys a card is signed with.
func cardKeys(raw json.RawMessage) (jwk.Set, error) {
	set, err := jwk.Parse(raw)
	if err != nil {
		return nil, err
	}
	if set.Len() == 0 {
		return nil, errors.New("no keys")
	}
	for i := range set.Len() {
		k, _ := set.Key(i)
		if _, ok := k.(jwk.SymmetricKey); ok {
			return nil, errors.New("a symmetric key cannot verify a card signature")
		}
		if pub, err := k.PublicKey(); err != nil || !jwk.Equal(pub, k) {
			return nil, errors.New("a private key: give only public keys")
		}
	}
	return set, nil
}

// verifyCard checks a card's signatures (A2A §8.4): each is a JWS whose
// detached payload is the card without "signatures" in the canonical form
// of RFC 8785. With keys registered, one signature must verify with one of
// them; a signed card without registered keys, or an unsigned one when keys
// are registered, is refused.
func verifyCard(raw []byte, card *spec.AgentCard, keys json.RawMessage) error {
	switch {
	case len(card.Signatures) == 0 && len(keys) == 0:
		return nil
	case len(card.Signatures) == 0:
		return errors.New("agent card is not signed, and the agent is registered with card_jwks: refused")
	case len(keys) == 0:
		return errors.New("agent card is signed: register the agent with card_jwks (the keys it is signed with) so that SAG can verify it: refused")
	}
	set, err := cardKeys(keys)
	if err != nil {
		return err
	}
	var doc map[string]any
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(&doc); err != nil {
		return fmt.Errorf("agent card: %w", err)
	}
	delete(doc, "signatures")
	payload, err := jcs.Value(doc)
	if err != nil {
		return fmt.Errorf("agent card: %w", err)
	}
	body := base64.RawURLEncoding.EncodeToString(payload)
	for _, sig := range card.Signatures {
		compact := sig.Protected + "." + body + "." + sig.Signature
		if _, err := jws.Verify([]byte(compact), jws.WithKeySet(set, jws.WithInferAlgorithmFromKey(true))); err == nil {
			return nil
		}
	}
	return errors.New("no signature of the agent card verifies with the agent's registered card_jwks: refused")
}

// parseCard reads an A2A 1.0 card, or a 0.3 one.
func parseCard(b []byte) (*spec.AgentCard, error) {
	var card spec.AgentCard
	if err := json.Unmarshal(b, &card); err == nil && len(card.SupportedInterfaces) > 0 {
		return &card, nil
	}
	c, err := a2av0.NewAgentCardParser()(b)
	if err != nil {
		return nil, fmt.Errorf("agent card: %w", err)
	}
	return c, nil
}

// sameOrigin refuses an interface URL off the card's origin, naming a
// private address as such.
func sameOrigin(origin *url.URL, raw string) error {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("agent card interface URL %q is not an http(s) URL: refused", raw)
	}
	if strings.EqualFold(u.Scheme, origin.Scheme) && strings.EqualFold(u.Host, origin.Host) {
		return nil
	}
	if ip := net.ParseIP(u.Hostname()); ip != nil && (ip.IsPrivate() || ip.IsLoopback() || ip.IsLinkLocalUnicast() || ip.IsUnspecified()) {
		return fmt.Errorf("agent card interface URL points at a private address (%s), off the card's origin %s: refused", u.Host, origin.Host)
	}
	return fmt.Errorf("agent card interface URL is on %s, off the card's origin %s: refused", u.Host, origin.Host)
}

var skillNameRE = regexp.MustCompile(`[^A-Za-z0-9_.-]`)

// skillTools are a card's skills as tools.
func skillTools(card *spec.AgentCard) []*mcp.Tool {
	out := make([]*mcp.Tool, 0, len(card.Skills))
	for _, s := range card.Skills {
		name := skillNameRE.ReplaceAllString(s.ID, "_")
		if name == "" || len(name) > 64 {
			continue // reported as a conflict by no one: a skill id no tool can carry
		}
		desc := s.Name
		if s.Description != "" {
			desc += ": " + s.Description
		}
		out = append(out, &mcp.Tool{Name: name, Description: desc, InputSchema: agentInputSchema,
			Annotations: &mcp.ToolAnnotations{Title: card.Name + ": " + s.Name, OpenWorldHint: ptr(true)},
			Meta:        mcp.Meta{"sag/a2a-skill": s.ID}})
	}
	return out
}

func ptr[T any](v T) *T { return &v }

type progressKey struct{}

// WithProgress returns ctx carrying where a call of another channel than
// MCP hears of its progress (an agent's status updates).
func WithProgress(ctx context.Context, fn func(message string)) context.Context {
	return context.WithValue(ctx, progressKey{}, fn)
}

// callAgent sends a skill tool's message to its agent and answers with the
// agent's reply: the artifacts of a completed task, its question when it
// asks for input (continue with taskId), a tool error when it fails,
// refuses, is cancelled or asks for credentials (SAG never passes the
// caller's). Status updates are relayed as progress; a call that ends
// before the agent does cancels the agent's task.
func (m *Manager) callAgent(ctx context.Context, u *upstream, down *mcp.ServerSession, t *Tool, p *mcp.CallToolParamsRaw) (*mcp.CallToolResult, error) {
	u.mu.Lock()
	card := u.card
	u.mu.Unlock()
	if card == nil {
		return nil, &Error{Upstream: u.spec.Name, Msg: "unavailable: its agent card was not read"}
	}
	var in agentArgs
	if err := json.Unmarshal(p.Arguments, &in); err != nil || in.Message == "" {
		return toolError(fmt.Sprintf("%s needs a message", t.Name)), nil
	}
	// A caller goes on only with the agent's tasks and contexts it was
	// given: the agent may not tell its callers apart.
	owner := callerKeyOf(ctx)
	for _, id := range []string{"t:" + in.TaskID, "c:" + in.ContextID} {
		if len(id) > 2 && !m.ownsAgentTask(u.spec.Name, id, owner) {
			return toolError(fmt.Sprintf("agent %s has no task or context %s of yours", u.spec.Name, id[2:])), nil
		}
	}
	skill, _ := t.Def.Meta["sag/a2a-skill"].(string)
	ctx, cancel := context.WithTimeout(ctx, u.timeout())
	defer cancel()
	hc := m.agentClient(u, callerOf(ctx))
	client, err := a2aclient.NewFromCard(ctx, card, a2aclient.WithDefaultsDisabled(),
		a2aclient.WithJSONRPCTransport(hc), a2aclient.WithRESTTransport(hc))
	if err != nil {
		return nil, &Error{Upstream: u.spec.Name, Msg: "no interface of its card can be used: " + safeError(err)}
	}
	defer client.Destroy()
	msg := spec.NewMessage(spec.MessageRoleUser, spec.NewTextPart(in.Message))
	msg.ContextID, msg.TaskID = in.ContextID, spec.TaskID(in.TaskID)
	msg.Metadata = map[string]any{"skillId": skill}
	req := &spec.SendMessageRequest{Message: msg}

	progress := func(string) {}
	if fn, ok := ctx.Value(progressKey{}).(func(string)); ok {
		progress = fn
	} else if tok, ok := p.Meta["progressToken"]; ok && down != nil {
		n := 0.0
		progress = func(s string) {
			n++
			_ = down.NotifyProgress(ctx, &mcp.ProgressNotificationParams{ProgressToken: tok, Progress: n, Message: s})
		}
	}
	var task *spec.Task
	var reply *spec.Message
	if card.Capabilities.Streaming {
		task, reply, err = streamAgent(ctx, client, req, progress)
	} else {
		var res spec.SendMessageResult
		if res, err = client.SendMessage(ctx, req); err == nil {
			task, _ = res.(*spec.Task)
			reply, _ = res.(*spec.Message)
		}
	}
	if err != nil {
		if task != nil && !task.Status.State.Terminal() {
			// The caller gave up (or the timeout struck): the agent stops too.
			cctx, ccancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			_, _ = client.CancelTask(cctx, &spec.CancelTaskRequest{ID: task.ID})
			ccancel()
		}
		if ctx.Err() != nil {
			return nil, u.failure(ctx, ctx.Err())
		}
		return nil, &Error{Upstream: u.spec.Name, Msg: "the agent answered an error: " + safeError(err)}
	}
	if task != nil {
		m.giveAgentTask(u.spec.Name, "t:"+string(task.ID), owner)
		m.giveAgentTask(u.spec.Name, "c:"+task.ContextID, owner)
	} else if reply != nil {
		m.giveAgentTask(u.spec.Name, "c:"+reply.ContextID, owner)
	}
	return agentResult(u.spec.Name, task, reply), nil
}

// maxAgentTasks bounds the agents' task and context ids remembered with
// the caller they were given to (the oldest are forgotten: their callers
// can no longer go on with them).
const maxAgentTasks = 100_000

// giveAgentTask records that an agent's task or context id went to owner.
func (m *Manager) giveAgentTask(agent, id, owner string) {
	if len(id) > 2 {
		m.agentTasks.Add(agent+"\x00"+id, owner)
	}
}

// ownsAgentTask reports whether an agent's task or context id went to
// owner.
func (m *Manager) ownsAgentTask(agent, id, owner string) bool {
	got, ok := m.agentTasks.Get(agent + "\x00" + id)
	return ok && got == owner
}

// streamAgent sends req on the agent's stream and folds its events into the
// task (or the one message it answers with).
func streamAgent(ctx context.Context, client *a2aclient.Client, req *spec.SendMessageRequest, progress func(string)) (*spec.Task, *spec.Message, error) {
	var task *spec.Task
	for ev, err := range client.SendStreamingMessage(ctx, req) {
		if err != nil {
			return task, nil, err
		}
		switch e := ev.(type) {
		case *spec.Message:
			return nil, e, nil
		case *spec.Task:
			if task = e; settled(e.Status.State) {
				return task, nil, nil
			}
		case *spec.TaskStatusUpdateEvent:
			if task == nil {
				task = &spec.Task{ID: e.TaskID, ContextID: e.ContextID}
			}
			task.Status = e.Status
			if settled(e.Status.State) {
				return task, nil, nil
			}
			if s := partsText(e.Status.Message); s != "" {
				progress(s)
			}
		case *spec.TaskArtifactUpdateEvent:
			if task == nil {
				task = &spec.Task{ID: e.TaskID, ContextID: e.ContextID}
			}
			task.Artifacts = append(task.Artifacts, e.Artifact)
		}
	}
	if task == nil {
		return nil, nil, errors.New("the agent's stream ended without a task")
	}
	return task, nil, nil
}

// settled reports whether a task waits for nothing more from the agent:
// it ended, or it waits for its caller (input, or credentials).
func settled(s spec.TaskState) bool {
	return s.Terminal() || s == spec.TaskStateInputRequired || s == spec.TaskStateAuthRequired
}

// agentResult is the tool result of an agent's answer.
func agentResult(name string, task *spec.Task, reply *spec.Message) *mcp.CallToolResult {
	if reply != nil {
		return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: partsText(reply)}},
			StructuredContent: map[string]any{"a2a": AgentState{State: "message", ContextID: reply.ContextID}}}
	}
	st := AgentState{State: stateName(task.Status.State), TaskID: string(task.ID), ContextID: task.ContextID}
	structured := map[string]any{"a2a": st}
	status := partsText(task.Status.Message)
	switch task.Status.State {
	case spec.TaskStateCompleted:
		var texts []string
		for _, a := range task.Artifacts {
			if s := partsText(&spec.Message{Parts: a.Parts}); s != "" {
				texts = append(texts, s)
			}
		}
		if len(texts) == 0 && status != "" {
			texts = append(texts, status)
		}
		return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: strings.Join(texts, "\n")}}, StructuredContent: structured}
	case spec.TaskStateInputRequired:
		return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: fmt.Sprintf("agent %s asks: %s (answer with taskId %s)", name, status, task.ID)}},
			StructuredContent: structured}
	case spec.TaskStateAuthRequired:
		return toolError(fmt.Sprintf("agent %s asks for credentials of its own (AUTH_REQUIRED); SAG never passes the caller's: refused", name))
	}
	msg := fmt.Sprintf("agent %s: task %s", name, st.State)
	if status != "" {
		msg += ": " + status
	}
	return toolError(msg)
}

// stateName is a task state as the result reports it ("input-required").
func stateName(s spec.TaskState) string {
	return strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(string(s), "TASK_STATE_")), "_", "-")
}

func toolError(text string) *mcp.CallToolResult {
	return &mcp.CallToolResult{IsError: true, Content: []mcp.Content{&mcp.TextContent{Text: text}}}
}

// partsText is the text of a message's parts (data parts as JSON).
func partsText(m *spec.Message) string {
	if m == nil {
		return ""
	}
	var out []string
	for _, p := range m.Parts {
		if s := p.Text(); s != "" {
			out = append(out, s)
		} else if d := p.Data(); d != nil {
			if b, err := json.Marshal(d); err == nil {
				out = append(out, string(b))
			}
		}
	}
	return strings.Join(out, "\n")
}

// agentClient is the HTTP client of one call to an agent: credentials
// for the call's caller on every request (never the caller's own token).
func (m *Manager) agentClient(u *upstream, cl *caller) *http.Client {
	hc := m.baseClient(u)
	// A redirect would take the caller's message, and a token minted for
	// the agent, somewhere else: refused.
	hc.CheckRedirect = func(*http.Request, []*http.Request) error {
		return fmt.Errorf("agent %s redirects: refused", u.spec.Name)
	}
	if u.credentialed() {
		hc.Transport = &credentialTransport{base: hc.Transport, u: u, caller: func() *caller { return cl }}
	}
	return &hc
}

// superviseRunEndpoint holds an AG-UI agent: nothing to read ahead (it is
// reached run by run), so the first try is at once.
func (u *upstream) superviseRunEndpoint() {
	defer close(u.done)
	u.firstOnce.Do(func() { close(u.firstTry) })
	<-u.stop
}

// RunAgent is an AG-UI agent as a run through SAG needs it.
type RunAgent struct {
	URL string
	// Key is the agent's DPoP key thumbprint.
	Key string
	// Client authenticates SAG to the agent on behalf of ctx's caller
	// (WithCaller): a token minted for the agent, never the caller's.
	Client *http.Client
}

// RunAgent returns the AG-UI agent name for a run on behalf of ctx's
// caller.
func (m *Manager) RunAgent(ctx context.Context, name string) (RunAgent, bool) {
	u, ok := m.lookup(name)
	if !ok || u.spec.Kind != KindAGUI {
		return RunAgent{}, false
	}
	return RunAgent{URL: u.tgt.endpoint, Key: u.spec.AgentKey, Client: m.agentClient(u, callerOf(ctx))}, true
}

// AgentCard returns the card of the A2A upstream name as last read, and
// the catalog name of each of its skills' tools (by skill id).
func (m *Manager) AgentCard(name string) (*spec.AgentCard, map[string]string, bool) {
	u, ok := m.lookup(name)
	if !ok || u.spec.Kind != KindA2A {
		return nil, nil, false
	}
	u.mu.Lock()
	card := u.card
	u.mu.Unlock()
	if card == nil {
		return nil, nil, false
	}
	tools := map[string]string{}
	for _, t := range m.Catalog().Tools {
		if t.Upstream == name {
			if skill, ok := t.Def.Meta["sag/a2a-skill"].(string); ok {
				tools[skill] = t.Name
			}
		}
	}
	return card, tools, true
}
