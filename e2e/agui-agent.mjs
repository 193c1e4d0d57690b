// AG-UI agent proxy interop: the real @ag-ui/client 1.0.0 HttpAgent runs an
// upstream AG-UI agent through SAG (POST <base>/agui/agents/<name>) as alice.
// The agent is the sag-fixture process (-agui): each run says what it does,
// announces a tool call of AGENT_TOOL with {"text": the last user message},
// makes that call through SAG's MCP endpoint with the DPoP-bound run token
// SAG put in forwardedProps.sag, and shows the result (or "error: ...").
// alice's calls of the tool need her consent, so SAG ends her run with an
// interrupt while the agent waits; her resume on the thread decides it and
// the same agent run goes on in the resumed run. Cases: approve, deny, an
// admin kill of the run's workflow, and the audit of who made the agent's
// calls. Every raw event is validated with @ag-ui/core's EventSchemas.
//
// Environment (run.sh sets it): AGENT_GW_URL (the gateway, --auth bearer),
// AGENT_DATA (its data directory: the admin token is read from
// admin.token there), AGENT_GW_LOG (its log), AGENT_NAME (the agent's
// upstream name), AGENT_TOOL (the tool the agent calls, as the gateway names
// it), AGENT_RUN_URL (the fixture agent's own run endpoint) and
// AGENT_ALICE_TOKEN (alice's bearer token; never printed).
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { HttpAgent } from "@ag-ui/client";
import { EventSchemas } from "@ag-ui/core/schemas";

const { AGENT_GW_URL, AGENT_DATA, AGENT_GW_LOG, AGENT_NAME, AGENT_TOOL, AGENT_RUN_URL, AGENT_ALICE_TOKEN: alice } = process.env;
for (const [k, v] of Object.entries({ AGENT_GW_URL, AGENT_DATA, AGENT_GW_LOG, AGENT_NAME, AGENT_TOOL, AGENT_RUN_URL, AGENT_ALICE_TOKEN: alice })) {
  if (!v) {
    console.log(`FAIL ${k} is not set`);
    console.log("agui agent interop: 0 passed, 1 failed");
    process.exit(1);
  }
}
const adminToken = readFileSync(join(AGENT_DATA, "admin.token"), "utf8").trim();

let passed = 0;
let failed = 0;
const ok = (what) => { passed++; console.log(`ok   ${what}`); };
const bad = (what) => { failed++; console.log(`FAIL ${what}`); };
const check = (cond, good, fail) => (cond ? ok(good) : bad(fail));

// The agent's identity in SAG's session graph, consent requests and audit.
const AGENT_ID = `${AGENT_GW_URL}/agui/agents/${AGENT_NAME}`;
const UPSTREAM_TOOL = AGENT_TOOL.replace(/^everything__/, "");
// test_simple_text's one answer (the go-sdk everything-server's): its input
// schema takes any object, so the fixture's {"text": ...} is accepted and
// ignored. No tool of the everything-server echoes a "text" argument.
const TOOL_RESULT = "This is a simple text response for testing.";

// newAgent is alice's HttpAgent for one thread of the agent.
const newAgent = (threadId, text, url = `${AGENT_GW_URL}/agui/agents/${AGENT_NAME}`) =>
  new HttpAgent({
    url, threadId, headers: { Authorization: `Bearer ${alice}` },
    initialMessages: [{ id: `u-${threadId}`, role: "user", content: text }],
  });

// run runs agent once and collects its raw events, each validated against
// the AG-UI 1.0 schemas, and the outcome the client saw. A run that has not
// ended after timeout ms is aborted (timedOut).
let events = 0;
let invalid = 0;
async function run(agent, params, { timeout = 10000 } = {}) {
  const abortController = new AbortController();
  const timer = setTimeout(() => abortController.abort(), timeout);
  const seen = [];
  let error;
  let outcome;
  try {
    await agent.runAgent({ ...params, abortController }, {
      onEvent({ event }) {
        events++;
        const res = EventSchemas.safeParse(event);
        if (!res.success) {
          invalid++;
          bad(`${event.type} does not match @ag-ui/core's schema: ${res.error.message}`);
        }
        seen.push(event);
      },
      onRunFinishedEvent(e) { outcome = e.outcome; },
    });
  } catch (e) {
    error = e;
  }
  clearTimeout(timer);
  return {
    events: seen, error, outcome, timedOut: abortController.signal.aborted,
    types: seen.map((e) => e.type).join(" "),
    finished: seen.find((e) => e.type === "RUN_FINISHED"),
    runError: seen.find((e) => e.type === "RUN_ERROR"),
    results: seen.filter((e) => e.type === "TOOL_CALL_RESULT"),
  };
}

const interruptsOf = (r) => (r.finished?.outcome?.type === "interrupt" ? r.finished.outcome.interrupts : []);
// AG-UI 1.0: a RUN_FINISHED without an outcome is a success; the client
// reports it as such.
const succeeded = (r) => r.finished && !r.runError && r.outcome === "success" && (r.finished.outcome?.type ?? "success") === "success";
const show = (r) => JSON.stringify(r.runError ?? r.finished ?? (r.timedOut ? "timed out" : r.error?.message)) + ` (${r.types})`;
const resolved = (id, payload) => [{ interruptId: id, status: "resolved", payload }];

// The admin API.
async function admin(method, path, body) {
  const resp = await fetch(`${AGENT_GW_URL}${path}`, {
    method, headers: { Authorization: `Bearer ${adminToken}`, ...(body ? { "Content-Type": "application/json" } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  return { status: resp.status, text: await resp.text() };
}
async function audit() {
  const { status, text } = await admin("GET", "/admin/audit?limit=1000");
  if (status !== 200) throw new Error(`GET /admin/audit: HTTP ${status}: ${text.slice(0, 200)}`);
  return text.split("\n").filter(Boolean).map((l) => JSON.parse(l));
}
// until polls f (async) until it returns a truthy value, for up to ms.
async function until(f, ms = 5000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v || Date.now() >= deadline) return v;
    await sleep(100);
  }
}
const requested = (recs, id) => recs.find((a) => a.method === "consent.requested" && a.consent_id === id);
const callsOf = (recs, id) => recs.filter((a) => a.method === "tools/call" && a.consent_id === id);
// callOf waits for the tools/call record of consent request id: SAG
// records a call when it ends, which may be just after the agent got its
// result.
const callOf = (id) => until(async () => callsOf(await audit(), id)[0]);

// interrupted runs a first run of a new thread and checks that it ends
// with the interrupt of the agent's call; returns the agent, the run and
// the interrupt.
async function interrupted(label, threadId, text, runId) {
  const agent = newAgent(threadId, text);
  const r = await run(agent, { runId });
  const ints = interruptsOf(r);
  const it = ints[0];
  check(ints.length === 1 && it.reason === "tool_call" && it.metadata?.agent === AGENT_ID && it.metadata?.user === "alice" &&
      it.metadata?.tool === UPSTREAM_TOOL && agent.pendingInterrupts?.length === 1 && agent.pendingInterrupts[0].id === it.id,
    `${label}: the run ends with RUN_FINISHED outcome interrupt for the agent's call (interrupt ${it?.id}, agent ${it?.metadata?.agent}), held by the client as pending`,
    `${label}: want RUN_FINISHED with one tool_call interrupt of ${AGENT_ID}: ${show(r)}, interrupts ${JSON.stringify(ints)}, pending ${JSON.stringify(agent.pendingInterrupts)}`);
  return { agent, run: r, interrupt: it };
}

// --------------------------------------------------------- (a) interrupt --
const T1 = "agent-approve";
const text1 = "hello from alice";
const a = await interrupted("run 1", T1, text1, "r1");
{
  const r = a.run;
  check(r.events[0]?.type === "RUN_STARTED" && r.events[0].threadId === T1 && r.events[0].runId === "r1",
    "run 1: the first event is RUN_STARTED with the run's own threadId and runId",
    `run 1: first event ${JSON.stringify(r.events[0])}`);
  // The agent's own events, relayed as it sent them, before SAG's interrupt.
  const agentPart = r.events.slice(1, 7);
  const [ms, mc, me, ts, ta, te] = agentPart;
  let args;
  try { args = JSON.parse(ta?.delta ?? "null"); } catch { /* checked below */ }
  check(agentPart.map((e) => e.type).join(" ") === "TEXT_MESSAGE_START TEXT_MESSAGE_CONTENT TEXT_MESSAGE_END TOOL_CALL_START TOOL_CALL_ARGS TOOL_CALL_END" &&
      ms.role === "assistant" && mc.messageId === ms.messageId && mc.delta === `calling ${AGENT_TOOL}` &&
      ts.toolCallName === AGENT_TOOL && ta.toolCallId === ts.toolCallId && te.toolCallId === ts.toolCallId &&
      JSON.stringify(args) === JSON.stringify({ text: text1 }),
    `run 1: the agent's events are relayed: its text message "${mc?.delta}" and its tool call ${ts?.toolCallName} ${ta?.delta}`,
    `run 1: the agent's relayed events: ${JSON.stringify(agentPart)}`);
  a.toolCallId = ts?.toolCallId;
  // The interrupt is the consent request: SAG's audit records it.
  const rec = requested(await audit(), a.interrupt?.id);
  check(rec && rec.sub === "alice" && rec.spiffe_id === AGENT_ID && rec.tool === AGENT_TOOL && rec.decision === "pending" && rec.wsid,
    `run 1: the interrupt id is a consent request of the agent's call (audit consent.requested: sub ${rec?.sub}, spiffe_id ${rec?.spiffe_id}, tool ${rec?.tool})`,
    `run 1: no consent.requested audit record of the agent for ${a.interrupt?.id}: ${JSON.stringify(rec)}`);
  a.wsid = rec?.wsid;
  // While the agent waits, a fresh run (no resume) on the thread is refused.
  // (The client logs the HTTP error it throws with console.error: quiet.)
  const logError = console.error;
  console.error = () => {};
  const again = await run(newAgent(T1, text1), { runId: "r1b" });
  console.error = logError;
  check(again.error?.status === 409 && again.events.length === 0,
    "run 1: a new run on the waiting thread without resume is refused (HTTP 409)",
    `run 1: a new run on the waiting thread: ${again.error?.status ?? ""} ${show(again)}`);
}

// ------------------------------------------------------------ (b) approve --
if (a.interrupt) {
  const r = await run(a.agent, { runId: "r2", resume: resolved(a.interrupt.id, { approved: true }) });
  const res = r.results[0];
  check(r.events[0]?.type === "RUN_STARTED" && r.events[0].runId === "r2" && r.results.length === 1 &&
      res.toolCallId === a.toolCallId && res.content === TOOL_RESULT,
    `approve: the resumed run gets the agent's TOOL_CALL_RESULT with the tool's real result: "${res?.content}"`,
    `approve: the resumed run's results ${JSON.stringify(r.results)}: ${show(r)}`);
  check(succeeded(r) && r.finished.threadId === T1 && r.finished.runId === "r2" && r.events.at(-1)?.type === "RUN_FINISHED" &&
      a.agent.pendingInterrupts.length === 0,
    `approve: the resumed run ends with RUN_FINISHED success under its own ids (${r.types})`,
    `approve: the resumed run: ${show(r)}, outcome ${r.outcome}, pending ${JSON.stringify(a.agent.pendingInterrupts)}`);
  const msg = a.agent.messages.find((m) => m.role === "tool" && m.toolCallId === a.toolCallId);
  check(msg?.content === TOOL_RESULT,
    "approve: the client's messages hold the tool result on the agent's tool call",
    `approve: the client's messages: ${JSON.stringify(a.agent.messages)}`);
}

// --------------------------------------------------------------- (c) deny --
const T2 = "agent-deny";
const d = await interrupted("deny", T2, "please do not", "d1");
if (d.interrupt) {
  const r = await run(d.agent, { runId: "d2", resume: resolved(d.interrupt.id, { approved: false }) });
  const res = r.results[0];
  check(r.results.length === 1 && typeof res.content === "string" && res.content.startsWith("error:") && succeeded(r) && r.finished.runId === "d2",
    `deny: the resumed run gets the agent's result "${res?.content}" and RUN_FINISHED success`,
    `deny: the resumed run's results ${JSON.stringify(r.results)}: ${show(r)}`);
  const rec = await callOf(d.interrupt.id);
  check(rec?.decision === "deny" && rec.spiffe_id === AGENT_ID && rec.sub === "alice",
    `deny: the audit records the agent's call as denied (${rec?.reason})`,
    `deny: audit tools/call record of ${d.interrupt.id}: ${JSON.stringify(rec)}`);
}

// --------------------------------------------------------------- (d) kill --
const T3 = "agent-kill";
const k = await interrupted("kill", T3, "doomed", "k1");
if (k.interrupt) {
  const rec = requested(await audit(), k.interrupt.id);
  const wsid = rec?.wsid;
  check(wsid && rec.spiffe_id === AGENT_ID,
    `kill: the consent request's audit record names the run's workflow session (wsid ${wsid})`,
    `kill: no consent.requested record with a wsid for ${k.interrupt.id}: ${JSON.stringify(rec)}`);
  const killed = await admin("POST", "/admin/kill", { session: wsid });
  let res = {};
  try { res = JSON.parse(killed.text); } catch { /* checked below */ }
  check(killed.status === 200 && res.revoked?.includes(wsid) && res.cancelled_consents >= 1,
    `kill: POST /admin/kill {"session": wsid} revokes ${res.revoked?.length} nodes and cancels ${res.cancelled_consents} consent request(s)`,
    `kill: POST /admin/kill: HTTP ${killed.status} ${killed.text.slice(0, 300)}`);
  // The agent's call ends (SAG side: its tools/call is audited, not allowed).
  const ended = await callOf(k.interrupt.id);
  check(ended && ended.decision !== "allow" && ended.spiffe_id === AGENT_ID,
    `kill: the agent's waiting call ends refused (audit: ${ended?.decision}, ${ended?.reason})`,
    `kill: the agent's call after the kill: ${JSON.stringify(ended)}`);
  const late = await run(k.agent, { runId: "k2", resume: resolved(k.interrupt.id, { approved: true }) });
  check(late.events[0]?.type === "RUN_STARTED" && late.runError?.code === "NO_WAITING_RUN" && late.results.length === 0,
    `kill: a later resume gets RUN_ERROR NO_WAITING_RUN (${late.runError?.message})`,
    `kill: the resume after the kill: ${show(late)}`);
}

// ------------------------------------------------- (e) the agent's identity --
{
  const c = a.interrupt && await callOf(a.interrupt.id);
  check(c?.decision === "allow" && c.sub === "alice" && c.spiffe_id === AGENT_ID &&
      String(c.act).includes(AGENT_ID) && c.dpop_jti && c.tool === AGENT_TOOL && c.wsid === a.wsid,
    `audit: the approved tools/call was alice's, made by the agent (spiffe_id ${c?.spiffe_id}, act ${c?.act}) with a DPoP proof of its key, in the run's workflow`,
    `audit: the approved call's record: ${JSON.stringify(c)}`);
  // Every call and consent request SAG recorded: one of each per case,
  // each the agent's for alice (a call made with alice's own bearer token
  // would have no spiffe_id, act or DPoP proof).
  const byAgent = (r) => r.spiffe_id === AGENT_ID && r.sub === "alice" && String(r.act).includes(AGENT_ID);
  const recorded = async () => (await audit()).filter((r) => r.method === "tools/call" || r.method === "consent.requested");
  const summary = (recs) => JSON.stringify(recs.map(({ method, sub, spiffe_id, act, decision, dpop_jti }) => ({ method, sub, spiffe_id, act, decision, dpop_jti: !!dpop_jti })));
  const recs = await recorded();
  const calls = recs.filter((r) => r.method === "tools/call");
  check(calls.length === 3 && recs.length === 6 && recs.every(byAgent) && calls.every((r) => r.dpop_jti),
    `audit: all ${calls.length} tools/call and ${recs.length - calls.length} consent.requested records are the agent's for alice, each call DPoP-proven (none made with alice's own token)`,
    `audit: tools/call and consent.requested records: ${summary(recs)}`);

  // Had the agent received alice's token, could it have made that call?
  // Send it her token ourselves, on the agent's own run URL (the fixture
  // checks no token) with a forwardedProps.sag naming it as the token to
  // use: the agent's MCP call with it is refused by SAG (alice's token is
  // a bearer token, not bound to the agent's DPoP key), so the call above
  // was not made with alice's token.
  const before = readFileSync(AGENT_GW_LOG, "utf8").split("token is not DPoP-bound").length;
  const direct = newAgent("agent-direct", "with alice's own token", AGENT_RUN_URL);
  const r = await run(direct, { runId: "x1", forwardedProps: { sag: { mcpUrl: `${AGENT_GW_URL}/mcp`, token: alice, workflow: "agent-direct" } } });
  const res = r.results[0];
  check(succeeded(r) && r.results.length === 1 && typeof res.content === "string" && res.content.startsWith("error:"),
    `direct: alice's token given to the agent itself: its call through SAG fails ("${res?.content?.slice(0, 80)}")`,
    `direct: the agent's run with alice's token: ${show(r)}, results ${JSON.stringify(r.results)}`);
  const refused = await until(() => readFileSync(AGENT_GW_LOG, "utf8").split("token is not DPoP-bound").length > before, 3000);
  const after = await recorded();
  check(refused && after.length === recs.length && after.every(byAgent),
    "direct: SAG refused it at authentication (\"token is not DPoP-bound\"), no call or consent request recorded",
    `direct: SAG's log has a new "token is not DPoP-bound" refusal: ${refused}; the records now: ${summary(after)}`);
}

check(events > 0 && invalid === 0,
  `every one of the ${events} raw events passed EventSchemas.safeParse of @ag-ui/core`,
  `${invalid} of ${events} raw events failed EventSchemas.safeParse`);

console.log(`agui agent interop: ${passed} passed, ${failed} failed`);
process.exit(failed === 0 && passed > 0 ? 0 : 1);
