// AG-UI interop: the real @ag-ui/client 1.0.0 HttpAgent follows SAG's consent
// stream (POST /agui) while `sag call` makes calls that need the user's
// consent; the agent sees each interrupt and answers it: approve, deny,
// approve with edited arguments (valid, and breaking the tool's schema),
// answers on each request's own thread, and the interrupts that vanish when
// the caller gives up or the request expires. Every raw event is validated
// with @ag-ui/core's schemas, the capabilities with its AgentCapabilities
// schema.
//
// Environment: SAG_BIN, AGUI_URL (the gateway's base URL, --auth bearer),
// AGUI_DATA (its data directory, for `sag token` and `sag audit`). The
// allow-list (run.sh writes it) gives each case its own tool of the
// everything-server, so that their interrupts do not meet.
import { spawn, execFileSync } from "node:child_process";
import { setTimeout as sleep } from "node:timers/promises";
import { HttpAgent } from "@ag-ui/client";
import { AgentCapabilitiesSchema, EventSchemas } from "@ag-ui/core/schemas";

const { SAG_BIN, AGUI_URL, AGUI_DATA } = process.env;
let passed = 0;
let failed = 0;
const ok = (what) => { passed++; console.log(`ok   ${what}`); };
const bad = (what) => { failed++; console.log(`FAIL ${what}`); };
const check = (cond, good, fail) => (cond ? ok(good) : bad(fail));

const token = (sub) => execFileSync(SAG_BIN, ["token", "--data", AGUI_DATA, "--url", AGUI_URL, "--sub", sub]).toString().trim();
const alice = token("alice");
const bob = token("bob");

// The tools of the cases (upstream everything, as the allow-list names them).
const TOOL = {
  approve: "everything__test_simple_text", // consent: always
  free: "everything__test_image_content", // consent: never
  deny: "everything__test_audio_content", // consent: always
  edit: "everything__json_schema_2020_12_tool", // consent: always, consent_edits: true (it echoes its arguments)
  cancel: "everything__test_embedded_resource", // consent: always
  pair: "everything__test_multiple_content_types", // consent: always
  expire: "everything__test_tool_with_logging", // consent: always, consent_ttl: 2s
};

// run starts one run of a fresh agent on threadId and collects its raw
// events, each validated against the AG-UI 1.0 schemas. A run that has not
// ended after timeout ms is aborted (timedOut).
async function run(tok, params, { threadId = "sag:all", onEvent = () => {}, timeout = 10000 } = {}) {
  const agent = new HttpAgent({ url: `${AGUI_URL}/agui`, threadId, headers: { Authorization: `Bearer ${tok}` } });
  const abortController = new AbortController();
  const timer = setTimeout(() => abortController.abort(), timeout);
  const events = [];
  let error;
  try {
    await agent.runAgent({ ...params, abortController }, {
      onEvent({ event }) {
        const res = EventSchemas.safeParse(event);
        if (!res.success) bad(`${event.type} does not match @ag-ui/core's schema: ${res.error.message}`);
        events.push(event);
        onEvent(event);
      },
    });
  } catch (e) {
    error = e;
  }
  clearTimeout(timer);
  return {
    agent, events, error, timedOut: abortController.signal.aborted,
    types: events.map((e) => e.type).join(" "),
    finished: events.find((e) => e.type === "RUN_FINISHED"),
    runError: events.find((e) => e.type === "RUN_ERROR"),
    results: events.filter((e) => e.type === "TOOL_CALL_RESULT"),
  };
}

const interruptsOf = (r) => (r.finished?.outcome?.type === "interrupt" ? r.finished.outcome.interrupts : []);
const succeeded = (r) => r.finished?.outcome?.type === "success" && !r.runError;
const show = (r) => JSON.stringify(r.runError ?? r.finished ?? (r.timedOut ? "timed out" : r.error?.message));
const resolved = (id, payload) => [{ interruptId: id, status: "resolved", payload }];

// call runs `sag call` of tool for alice; done resolves with its exit code
// and output once it ends.
function call(tool, args = {}) {
  const proc = spawn(SAG_BIN, ["call", "--url", `${AGUI_URL}/mcp`, "--token", alice, tool, JSON.stringify(args)]);
  let out = "";
  proc.stdout.on("data", (d) => { out += d; });
  proc.stderr.on("data", (d) => { out += d; });
  const done = new Promise((resolve) => proc.on("close", (code, signal) => resolve({ code, signal, out })));
  return { proc, done };
}

// danglingRefs returns the JSON Pointer $refs ("#/...") of schema that do
// not resolve in it.
function danglingRefs(schema) {
  // A "#/…" reference resolves against its schema resource: the nearest
  // enclosing schema with an $id, else the root (JSON Schema 2020-12 §8.2).
  const out = [];
  const walk = (v, resource) => {
    if (Array.isArray(v)) return v.forEach((x) => walk(x, resource));
    if (!v || typeof v !== "object") return;
    if (typeof v.$id === "string") resource = v;
    if (typeof v.$ref === "string" && v.$ref.startsWith("#/")) {
      let at = resource;
      for (const part of v.$ref.slice(1).split("/").slice(1)) {
        at = at?.[decodeURIComponent(part).replaceAll("~1", "/").replaceAll("~0", "~")];
      }
      if (at === undefined) out.push(v.$ref);
    }
    Object.values(v).forEach((x) => walk(x, resource));
  };
  walk(schema, schema);
  return out;
}

// within resolves with what p resolves with, or with undefined after ms.
const within = (p, ms) => Promise.race([p, sleep(ms).then(() => undefined)]);

// ended waits up to ms for a `sag call` to end; one still waiting then is
// interrupted (which cancels its consent request, so that it does not
// reach the next case) and counts as not ended (undefined).
async function ended(c, ms = 10000) {
  const res = await within(c.done, ms);
  if (!res) {
    c.proc.kill("SIGINT");
    await within(c.done, 2000);
  }
  return res;
}
const exit = (res) => (res ? `exit ${res.code}: ${res.out}` : "still running (interrupted)");

// waitInterrupt follows sag:all until an open interrupt of tool (other than
// those in skip) shows: each attach run names the interrupts it already saw
// in forwardedProps.knownInterrupts, so that it waits for the next change.
let runs = 0;
async function waitInterrupt(tool, skip = [], ms = 10000) {
  const deadline = Date.now() + ms;
  let known = [];
  while (Date.now() < deadline) {
    const r = await run(alice, { runId: `w${++runs}`, forwardedProps: { knownInterrupts: known } }, { timeout: deadline - Date.now() });
    const ints = interruptsOf(r);
    const hit = ints.find((i) => i.metadata?.tool === tool.replace(/^everything__/, "") && !skip.includes(i.id));
    if (hit) return { interrupt: hit, all: ints, run: r };
    if (r.runError || r.timedOut) return { run: r };
    known = ints.map((i) => i.id);
  }
  return {};
}

// ------------------------------------------------------------ approve --
// The stream follows: a call without consent shows as a STATE_DELTA, then
// the call that needs consent interrupts the run.
let pending;
const first = await run(alice, { runId: "r1" }, {
  onEvent: (e) => {
    if (e.type === "STATE_SNAPSHOT" && !pending) {
      pending = call(TOOL.free).done.then(() => call(TOOL.approve).done);
    }
  },
});
const delta = first.events.find((e) => e.type === "STATE_DELTA");
if (delta?.delta?.[0]?.value?.name === TOOL.free) ok("a call without consent shows in the state as it happens (STATE_DELTA)");
else bad(`no STATE_DELTA for the call without consent: ${first.types}`);
const interrupts = interruptsOf(first);
if (first.error || interrupts.length !== 1 || interrupts[0].reason !== "tool_call") {
  bad(`first run: want RUN_FINISHED with one tool_call interrupt, got ${show(first)}`);
} else {
  ok(`a call needing consent ends the run with an interrupt (${first.types})`);
}
const id = interrupts[0]?.id;
if (first.types.includes("TOOL_CALL_START") && first.types.includes("MESSAGES_SNAPSHOT") && first.agent.pendingInterrupts?.length === 1) {
  ok("the interrupt is shown as its tool call, and the agent holds it as pending");
} else {
  bad(`the interrupting run: events ${first.types}, pendingInterrupts ${JSON.stringify(first.agent.pendingInterrupts)}`);
}

// Bob cannot answer alice's interrupt.
const foreign = await run(bob, { runId: "b1", resume: resolved(id, { approved: true }) });
if (foreign.runError?.code === "UNKNOWN_INTERRUPT") ok("another user's answer is a RUN_ERROR");
else bad(`bob's answer: ${show(foreign)}`);

// Alice approves; the call completes.
const approve = resolved(id, { approved: true });
const second = await run(alice, { runId: "r2", resume: approve });
if (succeeded(second)) ok("the resumed run finishes with success");
else bad(`resumed run: ${show(second)}`);
const result0 = second.results[0];
if (result0 && result0.toolCallId === interrupts[0]?.toolCallId) ok(`the resumed run shows the call's result against its tool call: ${String(result0.content).slice(0, 40)}`);
else bad(`no TOOL_CALL_RESULT for ${interrupts[0]?.toolCallId}: ${second.types}`);
const result = await within(pending, 10000);
if (result?.code === 0) ok(`the approved call completed: ${result.out.trim().slice(0, 60)}`);
else bad(`sag call after the approval: exit ${result?.code}: ${result?.out}`);

// An identical replay is harmless; a different answer is a RUN_ERROR.
const replay = await run(alice, { runId: "r3", resume: approve });
if (replay.finished && !replay.runError) ok("an identical replay of the resume is harmless");
else bad(`replay: ${show(replay)}`);
const conflict = await run(alice, { runId: "r4", resume: resolved(id, { approved: false }) });
if (conflict.runError?.code === "STALE_INTERRUPT") ok("a different answer after the first is a RUN_ERROR");
else bad(`conflicting answer: ${show(conflict)}`);

// --------------------------------------------------------------- deny --
{
  const c = call(TOOL.deny);
  const { interrupt: it, run: r } = await waitInterrupt(TOOL.deny);
  if (!it) {
    bad(`deny: no interrupt for ${TOOL.deny}: ${show(r ?? {})}`);
  } else {
    // Its rule has no consent_edits: an approval with edits is refused,
    // and decides nothing.
    const edits = await run(alice, { runId: "d0", resume: resolved(it.id, { approved: true, editedArgs: {} }) });
    check(edits.runError?.code === "INVALID_RESUME" && it.metadata?.allowEdits === false,
      `deny: edited arguments on a rule without consent_edits are a RUN_ERROR INVALID_RESUME (${edits.runError?.message})`,
      `deny: edits where the rule allows none: ${show(edits)} (allowEdits ${it.metadata?.allowEdits})`);
    const denied = await run(alice, { runId: "d1", resume: resolved(it.id, { approved: false }) });
    check(succeeded(denied) && denied.results.length === 0,
      `deny: the resumed run finishes with success and no tool result (${denied.types})`,
      `deny: the resumed run: ${show(denied)}, results ${JSON.stringify(denied.results)}`);
  }
  const res = await ended(c);
  check(res && res.code !== 0 && /denied by alice/.test(res.out) && /"isError": true/.test(res.out),
    `deny: the waiting sag call ends with a tool error, exit ${res?.code}: ${res?.out.match(/"text": "([^"]*)"/)?.[1]}`,
    `deny: sag call: ${exit(res)}`);
}

// --------------------------------------------------------------- edit --
{
  const original = { name: "original-name", email: "original@example.org" };
  const edited = { name: "edited-by-alice", email: "alice@example.org" };
  const c = call(TOOL.edit, original);
  const { interrupt: it, run: r } = await waitInterrupt(TOOL.edit);
  if (!it) {
    bad(`edit: no interrupt for ${TOOL.edit}: ${show(r ?? {})}`);
  } else {
    const args = r.events.find((e) => e.type === "TOOL_CALL_ARGS" && e.toolCallId === it.toolCallId);
    check(it.metadata?.allowEdits === true && it.responseSchema?.properties?.editedArgs?.properties?.email?.type === "string" &&
        JSON.stringify(JSON.parse(args?.delta ?? "null")) === JSON.stringify({ email: original.email, name: original.name }),
      "edit: the interrupt allows edits, its responseSchema carries the tool's input schema for editedArgs, TOOL_CALL_ARGS the call's arguments",
      `edit: interrupt ${JSON.stringify(it)}, args ${args?.delta}`);
    // The tool's input schema has "#/$defs/address": inside the
    // responseSchema it must still resolve (its own resource, an $id).
    const dangling = danglingRefs(it.responseSchema);
    check(dangling.length === 0,
      "edit: every $ref of the responseSchema resolves in it",
      `edit: $refs of the responseSchema that do not resolve: ${JSON.stringify(dangling)}`);
    const approved = await run(alice, { runId: "e1", resume: resolved(it.id, { approved: true, editedArgs: edited }) });
    const text = String(approved.results[0]?.content ?? "");
    check(succeeded(approved) && approved.results[0]?.toolCallId === it.toolCallId && text.includes(edited.name) && !text.includes(original.name),
      `edit: the resumed run shows the result of the edited call: ${text}`,
      `edit: the resumed run: ${show(approved)}, results ${JSON.stringify(approved.results)}`);
  }
  const res = await ended(c);
  check(res?.code === 0 && res.out.includes(edited.name) && res.out.includes(edited.email) && !res.out.includes(original.email),
    "edit: the waiting sag call completes with the edited arguments (the tool echoes them)",
    `edit: sag call: ${exit(res)}`);

  // An edit that breaks the tool's input schema (name must be a string) is
  // refused before anything is sent.
  const c2 = call(TOOL.edit, original);
  const w = await waitInterrupt(TOOL.edit, it ? [it.id] : []);
  if (!w.interrupt) {
    bad(`edit: no second interrupt for ${TOOL.edit}: ${show(w.run ?? {})}`);
  } else {
    // The refused call reports how it ended to the resumed run at once
    // (it would otherwise wait for it, 2 minutes): 3 s after the call ended.
    const brokenRun = run(alice, { runId: "e2", resume: resolved(w.interrupt.id, { approved: true, editedArgs: { name: 5, email: edited.email } }) }, { timeout: 15000 });
    await within(c2.done, 10000);
    const start = Date.now();
    const broken = await within(brokenRun, 3000);
    const text = String(broken?.results[0]?.content ?? "");
    check(broken && succeeded(broken) && /edited arguments/.test(text),
      `edit: the resumed run of a schema-breaking edit finishes with the call's tool error as its result: ${text}`,
      `edit: the resumed run of a schema-breaking edit: ${broken ? `${show(broken)} (${broken.types}) ${text}` : "still open"}`);
  }
  const res2 = await ended(c2);
  check(res2 && res2.code !== 0 && /"edited arguments: [^"]*\/name: got number, want string"/.test(res2.out) && !res2.out.includes("tool called with"),
    `edit: the call with a schema-breaking edit ends with a tool error: ${res2?.out.match(/"text": "([^"]*)"/)?.[1]}`,
    `edit: sag call with a schema-breaking edit: ${exit(res2)}`);
  // The gateway's audit: that call was denied, not forwarded.
  if (w.interrupt) {
    const audit = execFileSync(SAG_BIN, ["audit", "--server", AGUI_URL, "--data", AGUI_DATA, "--limit", "50"]).toString().split("\n").filter(Boolean).map((l) => JSON.parse(l));
    const recs = audit.filter((a) => a.consent_id === w.interrupt.id && a.method === "tools/call");
    check(recs.length === 1 && recs[0].decision === "deny" && /^edited arguments/.test(recs[0].reason ?? ""),
      `edit: the audit records the call as denied, nothing forwarded: ${JSON.stringify({ decision: recs[0]?.decision, reason: recs[0]?.reason })}`,
      `edit: audit records of the call: ${JSON.stringify(recs)}`);
  }
}

// ------------------------------------------------------------- cancel --
// The MCP client gives up (SIGINT: sag call cancels its request): the
// interrupt vanishes from the stream, and answering it is a RUN_ERROR.
{
  const c = call(TOOL.cancel);
  const { interrupt: it, run: r } = await waitInterrupt(TOOL.cancel);
  if (!it) {
    bad(`cancel: no interrupt for ${TOOL.cancel}: ${show(r ?? {})}`);
    c.proc.kill("SIGKILL");
  } else {
    // An attach run that already shows the interrupt waits for a change.
    const watch = run(alice, { runId: "c1", forwardedProps: { knownInterrupts: [it.id] } });
    await sleep(300);
    c.proc.kill("SIGINT");
    const res = await within(c.done, 5000);
    if (!res) c.proc.kill("SIGKILL");
    check(res && res.code !== 0,
      `cancel: sag call stops at SIGINT (exit ${res?.code}${res?.signal ? `, ${res.signal}` : ""})`,
      `cancel: sag call after SIGINT: ${res ? `exit ${res.code}: ${res.out}` : "still running (killed)"}`);
    const gone = await watch;
    const snap = gone.events.filter((e) => e.type === "STATE_SNAPSHOT").at(-1);
    check(succeeded(gone) && snap?.snapshot?.pendingConsents === 0,
      `cancel: the attach run knowing the interrupt ends when it vanishes (${gone.types})`,
      `cancel: the attach run knowing ${it.id}: ${show(gone)} (${gone.types})`);
    const late = await run(alice, { runId: "c2", resume: resolved(it.id, { approved: true }) });
    check(late.runError?.code === "STALE_INTERRUPT",
      `cancel: approving it afterwards is a RUN_ERROR STALE_INTERRUPT (${late.runError?.message})`,
      `cancel: approving the cancelled interrupt: ${show(late)}`);
  }
}

// --------------------------------------------------------- unaddressed --
// Two open interrupts on sag:all: a resume must answer both; each answered
// on its own sag:consent:<id> thread works.
{
  const a = call(TOOL.pair, {});
  const wa = await waitInterrupt(TOOL.pair);
  let b, both = [];
  if (wa.interrupt) {
    // An attach run that shows the first waits; the second call ends it.
    const watch = run(alice, { runId: "p0", forwardedProps: { knownInterrupts: [wa.interrupt.id] } });
    await sleep(300);
    b = call(TOOL.pair, {});
    const w = await watch;
    both = interruptsOf(w);
    check(both.length === 2 && both[0].id === wa.interrupt.id && both[1].metadata?.tool === wa.interrupt.metadata?.tool,
      "pair: the attach run knowing the first interrupt ends when the second opens, with both",
      `pair: the attach run knowing the first: ${show(w)}`);
  }
  if (both.length !== 2) {
    bad(`pair: want two interrupts for ${TOOL.pair}: ${show(wa.run ?? {})}`);
  } else {
    const [ia, ib] = both;
    const partial = await run(alice, { runId: "p1", resume: resolved(ib.id, { approved: false }) });
    check(partial.runError?.code === "INTERRUPTS_UNADDRESSED" && partial.runError.message.includes(ia.id),
      `pair: a resume on sag:all answering one of two is a RUN_ERROR INTERRUPTS_UNADDRESSED (${partial.runError?.message})`,
      `pair: a resume answering one of two: ${show(partial)}`);
    const onA = await run(alice, { runId: "p2", resume: resolved(ia.id, { approved: true }) }, { threadId: `sag:consent:${ia.id}` });
    check(succeeded(onA) && onA.results[0]?.toolCallId === ia.toolCallId,
      `pair: approving the first on its own thread sag:consent:${ia.id} works (${onA.types})`,
      `pair: approving the first on its own thread: ${show(onA)} (${onA.types})`);
    const onB = await run(alice, { runId: "p3", resume: resolved(ib.id, { approved: false }) }, { threadId: `sag:consent:${ib.id}` });
    check(succeeded(onB),
      `pair: denying the second on its own thread sag:consent:${ib.id} works (${onB.types})`,
      `pair: denying the second on its own thread: ${show(onB)}`);
  }
  const [ra, rb] = await Promise.all([ended(a), b && ended(b)]);
  check(ra?.code === 0 && rb && rb.code !== 0 && /denied by alice/.test(rb.out),
    "pair: the first call completed, the second was denied",
    `pair: first call: ${exit(ra)}; second call: ${exit(rb)}`);
}

// ------------------------------------------------------------- expire --
// A rule with consent_ttl 2s: nobody answers, the call ends expired, the
// interrupt vanishes, and answering it afterwards is a RUN_ERROR.
{
  const c = call(TOOL.expire);
  const { interrupt: it, run: r } = await waitInterrupt(TOOL.expire);
  if (!it) {
    bad(`expire: no interrupt for ${TOOL.expire}: ${show(r ?? {})}`);
  } else {
    const left = Date.parse(it.expiresAt) - Date.now();
    check(left > 0 && left <= 2000,
      `expire: the interrupt expires in ${left} ms (expiresAt ${it.expiresAt}, consent_ttl 2s)`,
      `expire: expiresAt ${it.expiresAt} is ${left} ms away, want (0, 2000]`);
    const gone = await run(alice, { runId: "x1", forwardedProps: { knownInterrupts: [it.id] } }, { timeout: 6000 });
    check(succeeded(gone) && Date.now() >= Date.parse(it.expiresAt),
      `expire: the attach run knowing the interrupt ends when it expires (${gone.types})`,
      `expire: the attach run knowing ${it.id}: ${show(gone)} (${gone.types})`);
  }
  const res = await ended(c, 6000);
  check(res && res.code !== 0 && /consent request expired: no decision within 2s/.test(res.out),
    `expire: the waiting sag call ends with a tool error, exit ${res?.code}: ${res?.out.match(/"text": "([^"]*)"/)?.[1]}`,
    `expire: sag call: ${exit(res)}`);
  if (it) {
    const late = await run(alice, { runId: "x2", resume: resolved(it.id, { approved: true }) });
    check(late.runError?.code === "INTERRUPT_EXPIRED",
      `expire: approving it after its expiry is a RUN_ERROR ${late.runError?.code} (${late.runError?.message})`,
      `expire: approving the expired interrupt: ${show(late)}`);
  }
}

// ------------------------------------------------------- capabilities --
{
  const resp = await fetch(`${AGUI_URL}/agui/capabilities`);
  const body = await resp.json().catch(() => undefined);
  const parsed = AgentCapabilitiesSchema.safeParse(body);
  check(resp.ok && parsed.success,
    `capabilities: GET /agui/capabilities matches @ag-ui/core's AgentCapabilitiesSchema (${Object.keys(body ?? {}).join(", ")})`,
    `capabilities: ${resp.status} ${JSON.stringify(body)}: ${parsed.error?.message}`);
  check(parsed.data?.humanInTheLoop?.approvals === true && parsed.data?.transport?.streaming === true,
    `capabilities: humanInTheLoop ${JSON.stringify(parsed.data?.humanInTheLoop)}, transport ${JSON.stringify(parsed.data?.transport)}`,
    `capabilities: want humanInTheLoop.approvals and transport.streaming true: ${JSON.stringify(body)}`);
  // AG-UI 1.0's flags for what the stream does (interrupts: it ends runs
  // with interrupts and takes resume; approveWithEdits: tool-call
  // interrupts take editedArgs).
  const hitl = parsed.data?.humanInTheLoop ?? {};
  check(hitl.interrupts === true && hitl.approveWithEdits === true,
    "capabilities: humanInTheLoop.interrupts and approveWithEdits are declared",
    `capabilities: want humanInTheLoop.interrupts and approveWithEdits true: ${JSON.stringify(hitl)}`);
}

console.log(`agui interop: ${passed} passed, ${failed} failed`);
process.exit(failed === 0 && passed > 0 ? 0 : 1);
