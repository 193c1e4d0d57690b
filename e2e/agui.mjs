// AG-UI interop: the real @ag-ui/client 1.0.0 HttpAgent follows SAG's consent
// stream (POST /agui) while `sag call` makes a call that needs the user's
// consent; the agent sees the interrupt, resumes with an approval, and the
// call completes. Every raw event is validated with @ag-ui/core's schemas.
//
// Environment: SAG_BIN, AGUI_URL (the gateway's base URL, --auth bearer),
// AGUI_DATA (its data directory, for `sag token`).
import { spawn, execFileSync } from "node:child_process";
import { HttpAgent } from "@ag-ui/client";
import { EventSchemas } from "@ag-ui/core/schemas";

const { SAG_BIN, AGUI_URL, AGUI_DATA } = process.env;
let passed = 0;
let failed = 0;
const ok = (what) => { passed++; console.log(`ok   ${what}`); };
const bad = (what) => { failed++; console.log(`FAIL ${what}`); };

const token = (sub) => execFileSync(SAG_BIN, ["token", "--data", AGUI_DATA, "--url", AGUI_URL, "--sub", sub]).toString().trim();
const alice = token("alice");
const bob = token("bob");

// run starts one run of a fresh agent and collects its raw events,
// each validated against the AG-UI 1.0 schemas.
async function run(tok, params, onEvent = () => {}) {
  const agent = new HttpAgent({ url: `${AGUI_URL}/agui`, threadId: "sag:all", headers: { Authorization: `Bearer ${tok}` } });
  const events = [];
  let error;
  try {
    await agent.runAgent(params, {
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
  return { agent, events, error, finished: events.find((e) => e.type === "RUN_FINISHED"), runError: events.find((e) => e.type === "RUN_ERROR") };
}

// call runs `sag call` of tool for alice and resolves with its exit code and
// output.
function call(tool = "everything__test_simple_text") {
  return new Promise((resolve) => {
    const p = spawn(SAG_BIN, ["call", "--url", `${AGUI_URL}/mcp`, "--token", alice, tool, "{}"]);
    let out = "";
    p.stdout.on("data", (d) => { out += d; });
    p.stderr.on("data", (d) => { out += d; });
    p.on("close", (code) => resolve({ code, out }));
  });
}

// The stream follows: a call without consent shows as a STATE_DELTA, then
// the call that needs consent interrupts the run.
let pending;
const first = await run(alice, { runId: "r1" }, (e) => {
  if (e.type === "STATE_SNAPSHOT" && !pending) {
    pending = call("everything__test_image_content").then(() => call());
  }
});
const delta = first.events.find((e) => e.type === "STATE_DELTA");
if (delta?.delta?.[0]?.value?.name === "everything__test_image_content") ok("a call without consent shows in the state as it happens (STATE_DELTA)");
else bad(`no STATE_DELTA for the call without consent: ${first.events.map((e) => e.type).join(" ")}`);
const interrupts = first.finished?.outcome?.type === "interrupt" ? first.finished.outcome.interrupts : [];
if (first.error || interrupts.length !== 1 || interrupts[0].reason !== "tool_call") {
  bad(`first run: want RUN_FINISHED with one tool_call interrupt, got ${JSON.stringify(first.finished ?? first.error?.message)}`);
} else {
  ok(`a call needing consent ends the run with an interrupt (${first.events.map((e) => e.type).join(" ")})`);
}
const id = interrupts[0]?.id;
const types = first.events.map((e) => e.type);
if (types.includes("TOOL_CALL_START") && types.includes("MESSAGES_SNAPSHOT") && first.agent.pendingInterrupts?.length === 1) {
  ok("the interrupt is shown as its tool call, and the agent holds it as pending");
} else {
  bad(`the interrupting run: events ${types.join(" ")}, pendingInterrupts ${JSON.stringify(first.agent.pendingInterrupts)}`);
}

// Bob cannot answer alice's interrupt.
const foreign = await run(bob, { runId: "b1", resume: [{ interruptId: id, status: "resolved", payload: { approved: true } }] });
if (foreign.runError?.code === "UNKNOWN_INTERRUPT") ok("another user's answer is a RUN_ERROR");
else bad(`bob's answer: ${JSON.stringify(foreign.runError ?? foreign.finished)}`);

// Alice approves; the call completes.
const approve = [{ interruptId: id, status: "resolved", payload: { approved: true } }];
const second = await run(alice, { runId: "r2", resume: approve });
if (second.finished?.outcome?.type === "success" && !second.runError) ok("the resumed run finishes with success");
else bad(`resumed run: ${JSON.stringify(second.runError ?? second.finished ?? second.error?.message)}`);
const result0 = second.events.find((e) => e.type === "TOOL_CALL_RESULT");
if (result0 && result0.toolCallId === interrupts[0]?.toolCallId) ok(`the resumed run shows the call's result against its tool call: ${String(result0.content).slice(0, 40)}`);
else bad(`no TOOL_CALL_RESULT for ${interrupts[0]?.toolCallId}: ${second.events.map((e) => e.type).join(" ")}`);
const result = await pending;
if (result?.code === 0) ok(`the approved call completed: ${result.out.trim().slice(0, 60)}`);
else bad(`sag call after the approval: exit ${result?.code}: ${result?.out}`);

// An identical replay is harmless; a different answer is a RUN_ERROR.
const replay = await run(alice, { runId: "r3", resume: approve });
if (replay.finished && !replay.runError) ok("an identical replay of the resume is harmless");
else bad(`replay: ${JSON.stringify(replay.runError)}`);
const conflict = await run(alice, { runId: "r4", resume: [{ interruptId: id, status: "resolved", payload: { approved: false } }] });
if (conflict.runError?.code === "STALE_INTERRUPT") ok("a different answer after the first is a RUN_ERROR");
else bad(`conflicting answer: ${JSON.stringify(conflict.runError ?? conflict.finished)}`);

console.log(`agui interop: ${passed} passed, ${failed} failed`);
process.exit(failed === 0 && passed > 0 ? 0 : 1);
