// A2A interop: the real @a2a-js/sdk 1.3.0 client (ClientFactory, JSON-RPC
// transport, A2A 1.0) against SAG's A2A endpoints (`sag serve --auth
// bearer`): it resolves the public agent card, calls tools with SendMessage
// and SendStreamingMessage (a data part {"tool", "arguments"}), reads and
// lists tasks, cancels one; the calls that need consent wait in
// INPUT_REQUIRED, their user decides them as agui.mjs does (an
// @ag-ui/client HttpAgent resume on the request's own thread
// sag:consent:<id>), and the task's next message goes on. Two users: bob
// must not see or touch alice's tasks.
//
// Environment: A2A_URL (the gateway's base URL), A2A_ALICE_TOKEN and
// A2A_BOB_TOKEN (`sag token --sub alice|bob` of that gateway; never
// printed). The allow-list (run.sh writes it): alice may call
// test_simple_text and test_error_handling without consent and
// json_schema_2020_12_tool (which echoes its arguments) with her consent;
// bob may call test_simple_text; nobody test_audio_content.
import { randomUUID } from "node:crypto";
import { isDeepStrictEqual } from "node:util";
import { setTimeout as sleep } from "node:timers/promises";
import { ListTasksRequest, Role, TaskState } from "@a2a-js/sdk";
import { ClientFactory, ClientFactoryOptions, DefaultAgentCardResolver, JsonRpcTransportFactory } from "@a2a-js/sdk/client";
import { TaskNotFoundError } from "@a2a-js/sdk/errors";
import { HttpAgent } from "@ag-ui/client";

const { A2A_URL, A2A_ALICE_TOKEN, A2A_BOB_TOKEN } = process.env;
if (!A2A_URL || !A2A_ALICE_TOKEN || !A2A_BOB_TOKEN) {
  console.log("a2a.mjs: set A2A_URL, A2A_ALICE_TOKEN and A2A_BOB_TOKEN");
  process.exit(2);
}
let passed = 0;
let failed = 0;
const ok = (what) => { passed++; console.log(`ok   ${what}`); };
const bad = (what) => { failed++; console.log(`FAIL ${what}`); };
const check = (cond, good, fail) => (cond ? ok(good) : bad(fail));

// The tools of the cases (upstream everything, as the allow-list names them).
const TOOL = {
  text: "everything__test_simple_text", // alice and bob, consent: never
  error: "everything__test_error_handling", // alice, consent: never; the tool fails
  consent: "everything__json_schema_2020_12_tool", // alice, consent: always; echoes its arguments
  denied: "everything__test_audio_content", // no rule
};
const SIMPLE_TEXT = "This is a simple text response for testing.";

// Every request the SDK makes goes through this fetch: it adds the bearer
// token (none for `anonymous`) and records the method, URL and A2A-Version
// header (never the token).
const sent = [];
function fetchAs(token) {
  return (url, init = {}) => {
    const headers = new Headers(init.headers);
    if (token) headers.set("Authorization", `Bearer ${token}`);
    sent.push({ method: init.method ?? "GET", url: String(url), version: headers.get("A2A-Version") });
    return fetch(url, { ...init, headers });
  };
}

// Each SDK call gets 10 s, so that a hang is a failure and not a stuck run.
const opts = () => ({ signal: AbortSignal.timeout(10000) });
const stateName = (t) => TaskState[t?.status?.state] ?? `state ${t?.status?.state}`;
const partsOf = (x) => x?.parts ?? [];
const textOf = (parts) => parts.filter((p) => p.content?.$case === "text").map((p) => p.content.value).join(" ");
const dataOf = (parts) => parts.filter((p) => p.content?.$case === "data").map((p) => p.content.value);
const artifactText = (t) => (t?.artifacts ?? []).map((a) => textOf(a.parts)).join(" ");
const statusText = (t) => textOf(partsOf(t?.status?.message));
const showTask = (t) => JSON.stringify({ id: t?.id, state: stateName(t), status: statusText(t), artifacts: artifactText(t) });
const showErr = (e) => `${e?.constructor?.name}${e?.envelopeCode ? ` ${e.envelopeCode}` : ""}: ${e?.message}`;
// attempt resolves with what p resolves with, or with the error it throws.
const attempt = (p) => p.then((value) => ({ value }), (error) => ({ error }));

// A user message: a tool call (a data part), or a text part that goes on
// with a task (taskId and contextId set).
const toolMessage = (tool, args = {}) => ({
  messageId: randomUUID(), role: Role.ROLE_USER, parts: [{ content: { $case: "data", value: { tool, arguments: args } } }],
});
const followUp = (task, text) => ({
  messageId: randomUUID(), role: Role.ROLE_USER, taskId: task.id, contextId: task.contextId,
  parts: [{ content: { $case: "text", value: text } }],
});

// The tasks each user made, to check ListTasks against.
const tasksOf = { alice: new Set(), bob: new Set() };

// send sends a message and returns the task it answers with (a Message
// answer is a failure of its own).
async function send(client, who, message) {
  const res = await client.sendMessage({ message }, opts());
  if (!res || !("status" in res)) throw new Error(`SendMessage answered with a Message, not a Task: ${JSON.stringify(res)}`);
  tasksOf[who].add(res.id);
  return res;
}

// decide answers consent request id as alice would, like agui.mjs: an
// AG-UI HttpAgent resume on the request's own thread.
async function decide(id, approved, runId) {
  const agent = new HttpAgent({ url: `${A2A_URL}/agui`, threadId: `sag:consent:${id}`, headers: { Authorization: `Bearer ${A2A_ALICE_TOKEN}` } });
  const abortController = new AbortController();
  const timer = setTimeout(() => abortController.abort(), 10000);
  const events = [];
  let error;
  try {
    await agent.runAgent({ runId, resume: [{ interruptId: id, status: "resolved", payload: { approved } }], abortController },
      { onEvent({ event }) { events.push(event); } });
  } catch (e) {
    error = e;
  }
  clearTimeout(timer);
  const finished = events.find((e) => e.type === "RUN_FINISHED");
  const runError = events.find((e) => e.type === "RUN_ERROR");
  return {
    finished, runError, types: events.map((e) => e.type).join(" "),
    succeeded: finished?.outcome?.type === "success" && !runError,
    show: JSON.stringify(runError ?? finished ?? (abortController.signal.aborted ? "timed out" : error?.message)),
  };
}

// pending is the consent data part of a task in INPUT_REQUIRED, checked:
// its request's id, console page and message, and the call it waits with.
function pending(what, task, tool, args) {
  const msg = task?.status?.message;
  const data = dataOf(partsOf(msg)).find((d) => d?.consent);
  const id = data?.consent?.id;
  check(task?.status?.state === TaskState.TASK_STATE_INPUT_REQUIRED && typeof id === "string" && id !== "" &&
      data.consent.url === `${A2A_URL}/console/#${id}` && data.consent.message.includes(data.consent.url) &&
      data.tool === tool && isDeepStrictEqual(data.arguments, args) &&
      msg.role === Role.ROLE_AGENT && msg.taskId === task.id && msg.contextId === task.contextId,
    `${what}: the call waits in TASK_STATE_INPUT_REQUIRED with the data part {consent: {id: ${id}, url: <base>/console/#${id}, message}, tool, arguments}`,
    `${what}: want TASK_STATE_INPUT_REQUIRED with a consent data part for ${tool} ${JSON.stringify(args)}: ${showTask(task)} ${JSON.stringify(dataOf(partsOf(msg)))}`);
  return id;
}

try {
  // ------------------------------------------------------------ card --
  // The public card, fetched without credentials by the SDK's resolver.
  const card = await new DefaultAgentCardResolver().resolve(A2A_URL);
  const ifaces = card.supportedInterfaces ?? [];
  const jsonrpc = ifaces.find((i) => i.protocolBinding === "JSONRPC" && i.protocolVersion === "1.0");
  const rest = ifaces.find((i) => i.protocolBinding === "HTTP+JSON");
  check(card.name === "SAG" && jsonrpc?.url === `${A2A_URL}/a2a` && rest?.url === `${A2A_URL}/a2a/rest` &&
      card.capabilities?.streaming === true && card.skills?.some((s) => s.id === "call-tool"),
    `card: GET /.well-known/agent-card.json without a token: ${card.name}, JSON-RPC 1.0 at <base>/a2a, HTTP+JSON at <base>/a2a/rest, streaming, skill call-tool`,
    `card: ${JSON.stringify({ name: card.name, ifaces, capabilities: card.capabilities, skills: card.skills?.map((s) => s.id) })}`);
  const scheme = card.securitySchemes?.bearer?.scheme;
  check(scheme?.$case === "httpAuthSecurityScheme" && scheme.value.scheme === "Bearer" &&
      card.securityRequirements?.some((r) => r.schemes?.bearer !== undefined),
    "card: it declares and requires the Bearer HTTP auth scheme (--auth bearer)",
    `card: security ${JSON.stringify({ schemes: card.securitySchemes, requirements: card.securityRequirements })}`);

  // One client per user, from that card, over JSON-RPC with the user's token.
  const clientFor = (token) => new ClientFactory(ClientFactoryOptions.createFrom(ClientFactoryOptions.default, {
    transports: [new JsonRpcTransportFactory({ fetchImpl: fetchAs(token) })],
    preferredTransports: ["JSONRPC"],
  })).createFromAgentCard(card);
  const alice = await clientFor(A2A_ALICE_TOKEN);
  const bob = await clientFor(A2A_BOB_TOKEN);
  const anonymous = await clientFor(undefined);
  check(alice.transport.protocolName === "JSONRPC" && alice.protocolVersion === "1.0",
    `client: ClientFactory picked ${alice.transport.protocolName} A2A ${alice.protocolVersion}`,
    `client: want JSONRPC 1.0, got ${alice.transport.protocolName} ${alice.protocolVersion}`);

  // Without a token: 401, no task.
  const anon = await attempt(anonymous.sendMessage({ message: toolMessage(TOOL.text) }, opts()));
  check(anon.error && /Status: 401/.test(anon.error.message),
    "auth: SendMessage without a token is refused (HTTP 401)",
    `auth: SendMessage without a token: ${anon.error ? showErr(anon.error) : `answered ${showTask(anon.value)}`}`);

  // ----------------------------------------------------- extended card --
  const ext = await alice.getAgentCard(opts());
  const skills = (ext.skills ?? []).map((s) => s.id).sort();
  check(isDeepStrictEqual(skills, ["call-tool", TOOL.consent, TOOL.error, TOOL.text].sort()),
    `extended card: alice's skills are call-tool and her three tools (GetExtendedAgentCard): ${skills.join(", ")}`,
    `extended card: alice's skills ${JSON.stringify(skills)}`);
  const bobSkills = ((await bob.getAgentCard(opts())).skills ?? []).map((s) => s.id).sort();
  check(isDeepStrictEqual(bobSkills, ["call-tool", TOOL.text]),
    `extended card: bob's skills are ${bobSkills.join(", ")}`,
    `extended card: bob's skills ${JSON.stringify(bobSkills)}`);

  // --------------------------------------------------------- complete --
  const done = await send(alice, "alice", toolMessage(TOOL.text));
  check(done.status?.state === TaskState.TASK_STATE_COMPLETED && done.artifacts?.length === 1 && artifactText(done) === SIMPLE_TEXT,
    `complete: SendMessage ${TOOL.text} ends TASK_STATE_COMPLETED with the tool's result as its artifact ("${artifactText(done)}")`,
    `complete: ${showTask(done)}`);

  // ----------------------------------------------------------- failed --
  const failedTask = await send(alice, "alice", toolMessage(TOOL.error));
  check(failedTask.status?.state === TaskState.TASK_STATE_FAILED && /intentionally returns an error/.test(statusText(failedTask)) &&
      (failedTask.artifacts ?? []).length === 0,
    `failed: a tool error ends TASK_STATE_FAILED with no artifact ("${statusText(failedTask)}")`,
    `failed: ${showTask(failedTask)}`);

  // --------------------------------------------------------- rejected --
  const rejected = await send(alice, "alice", toolMessage(TOOL.denied));
  check(rejected.status?.state === TaskState.TASK_STATE_REJECTED && /unknown tool/.test(statusText(rejected)) &&
      (rejected.artifacts ?? []).length === 0,
    `rejected: a tool no rule allows ends TASK_STATE_REJECTED ("${statusText(rejected)}")`,
    `rejected: ${showTask(rejected)}`);

  // -------------------------------------------------------- streaming --
  {
    const events = [];
    let streamError;
    try {
      for await (const ev of alice.sendMessageStream({ message: toolMessage(TOOL.text) }, opts())) events.push(ev.payload);
    } catch (e) {
      streamError = e;
    }
    const ids = new Set(events.map((p) => (p?.$case === "task" ? p.value.id : p?.value?.taskId)));
    const [id] = ids;
    if (id) tasksOf.alice.add(id);
    // The stream ends COMPLETED either with a status update after an
    // artifact update, or with the whole task (its artifact in it).
    const last = events.at(-1);
    const artifact = last?.$case === "task" ? last.value.artifacts?.[0] : events.find((p) => p?.$case === "artifactUpdate")?.value?.artifact;
    check(!streamError && events[0]?.$case === "task" && (last?.$case === "statusUpdate" || last?.$case === "task") &&
        last.value.status?.state === TaskState.TASK_STATE_COMPLETED && textOf(partsOf(artifact)) === SIMPLE_TEXT &&
        ids.size === 1,
      `streaming: SendStreamingMessage yields ${events.map((p) => p?.$case).join(", ")} of one task, the artifact with the result, the last event TASK_STATE_COMPLETED`,
      `streaming: ${streamError ? showErr(streamError) : ""} events ${JSON.stringify(events).slice(0, 1500)}`);

    // GetTask of one's own task.
    const got = await attempt(alice.getTask({ id }, opts()));
    check(got.value?.id === id && got.value.status?.state === TaskState.TASK_STATE_COMPLETED && artifactText(got.value) === SIMPLE_TEXT,
      "get: GetTask of alice's streamed task: TASK_STATE_COMPLETED with its artifact",
      `get: GetTask ${id}: ${got.error ? showErr(got.error) : showTask(got.value)}`);
  }

  // -------------------------------------------------- consent: approve --
  let approvedTask;
  {
    const args = { name: `approve-${randomUUID().slice(0, 8)}`, email: "alice@example.org" };
    const waiting = await send(alice, "alice", toolMessage(TOOL.consent, args));
    const id = pending("approve", waiting, TOOL.consent, args);
    // Bob cannot read, continue or cancel it.
    const peek = await attempt(bob.getTask({ id: waiting.id }, opts()));
    check(peek.error instanceof TaskNotFoundError && peek.error.envelopeCode === -32001,
      `isolation: bob's GetTask of alice's task is TaskNotFoundError, JSON-RPC -32001 (${peek.error?.message})`,
      `isolation: bob's GetTask of alice's task: ${peek.error ? showErr(peek.error) : showTask(peek.value)}`);
    const steal = await attempt(bob.cancelTask({ id: waiting.id }, opts()));
    const still = await attempt(alice.getTask({ id: waiting.id }, opts()));
    check(steal.error instanceof TaskNotFoundError && steal.error.envelopeCode === -32001 &&
        still.value?.status?.state === TaskState.TASK_STATE_INPUT_REQUIRED,
      "isolation: bob's CancelTask of alice's task is TaskNotFoundError -32001, and her task still waits",
      `isolation: bob's CancelTask: ${steal.error ? showErr(steal.error) : showTask(steal.value)}; alice's task then ${showTask(still.value)}`);

    if (id) {
      const answer = await decide(id, true, "a2a-approve");
      check(answer.succeeded,
        `approve: alice approves on sag:consent:${id} (AG-UI resume finishes with success: ${answer.types})`,
        `approve: the AG-UI resume: ${answer.show}`);
      approvedTask = await send(alice, "alice", followUp(waiting, "approved: go on"));
      const text = artifactText(approvedTask);
      check(approvedTask.id === waiting.id && approvedTask.contextId === waiting.contextId &&
          approvedTask.status?.state === TaskState.TASK_STATE_COMPLETED && text.includes(args.name) && text.includes(args.email),
        `approve: the task's next message (taskId + contextId) completes it with the waiting call's result: "${text}"`,
        `approve: the follow-up: ${showTask(approvedTask)}`);
    }
  }

  // ----------------------------------------------------- consent: deny --
  {
    const args = { name: `deny-${randomUUID().slice(0, 8)}`, email: "alice@example.org" };
    const waiting = await send(alice, "alice", toolMessage(TOOL.consent, args));
    const id = pending("deny", waiting, TOOL.consent, args);
    if (id) {
      const answer = await decide(id, false, "a2a-deny");
      check(answer.succeeded,
        `deny: alice denies on sag:consent:${id} (AG-UI resume finishes with success)`,
        `deny: the AG-UI resume: ${answer.show}`);
      const after = await send(alice, "alice", followUp(waiting, "denied?"));
      check(after.id === waiting.id && after.status?.state === TaskState.TASK_STATE_REJECTED && /denied by alice/.test(statusText(after)) &&
          (after.artifacts ?? []).length === 0,
        `deny: the task's next message ends it TASK_STATE_REJECTED ("${statusText(after)}"), no artifact`,
        `deny: the follow-up: ${showTask(after)}`);
    }
  }

  // --------------------------------------------------- consent: cancel --
  let cancelledId;
  {
    const args = { name: `cancel-${randomUUID().slice(0, 8)}`, email: "alice@example.org" };
    const waiting = await send(alice, "alice", toolMessage(TOOL.consent, args));
    const id = pending("cancel", waiting, TOOL.consent, args);
    cancelledId = waiting.id;
    const cancelled = await attempt(alice.cancelTask({ id: waiting.id }, opts()));
    check(cancelled.value?.id === waiting.id && cancelled.value.status?.state === TaskState.TASK_STATE_CANCELED,
      "cancel: CancelTask of the waiting task answers TASK_STATE_CANCELED",
      `cancel: CancelTask: ${cancelled.error ? showErr(cancelled.error) : showTask(cancelled.value)}`);
    const got = await attempt(alice.getTask({ id: waiting.id }, opts()));
    check(got.value?.status?.state === TaskState.TASK_STATE_CANCELED,
      "cancel: GetTask shows it TASK_STATE_CANCELED",
      `cancel: GetTask: ${got.error ? showErr(got.error) : showTask(got.value)}`);
    if (id) {
      // The consent request is withdrawn: approving it now is refused.
      const late = await decide(id, true, "a2a-cancelled");
      check(late.runError?.code === "STALE_INTERRUPT",
        `cancel: its consent request is withdrawn: approving it afterwards is a RUN_ERROR ${late.runError?.code} (${late.runError?.message})`,
        `cancel: approving the cancelled task's consent request: ${late.show}`);
    }
    const more = await attempt(alice.sendMessage({ message: followUp(waiting, "go on anyway") }, opts()));
    check(more.error && !more.value,
      `cancel: a message on the cancelled task is refused (${more.error ? showErr(more.error) : ""})`,
      `cancel: a message on the cancelled task: ${more.value ? showTask(more.value) : ""}`);
  }

  // ---------------------------------- consent: follow-up before deciding --
  // The task's next message, sent before alice decides, waits for her
  // decision (the retry names the request) and completes once she approves.
  {
    const args = { name: `early-${randomUUID().slice(0, 8)}`, email: "alice@example.org" };
    const waiting = await send(alice, "alice", toolMessage(TOOL.consent, args));
    const id = pending("early", waiting, TOOL.consent, args);
    if (id) {
      let settled = false;
      const early = attempt(alice.sendMessage({ message: followUp(waiting, "are we there yet?") }, { signal: AbortSignal.timeout(15000) }))
        .finally(() => { settled = true; });
      await sleep(500);
      if (!settled) ok("early: a message on the task before the decision waits for it (still open after 500 ms)");
      else {
        const r = await early;
        bad(`early: a message on the task before the decision answered at once: ${r.error ? showErr(r.error) : showTask(r.value)}`);
      }
      const answer = await decide(id, true, "a2a-early");
      const res = await early;
      const text = artifactText(res.value);
      check(answer.succeeded && res.value?.id === waiting.id && res.value.status?.state === TaskState.TASK_STATE_COMPLETED && text.includes(args.name),
        `early: once alice approves, that waiting message completes the task: "${text}"`,
        `early: resume ${answer.show}; the waiting message: ${res.error ? showErr(res.error) : showTask(res.value)}`);
    }
  }

  // --------------------------------------------------------- GetTask --
  if (approvedTask) {
    const got = await attempt(alice.getTask({ id: approvedTask.id }, opts()));
    const roles = (got.value?.history ?? []).map((m) => Role[m.role]);
    check(got.value?.status?.state === TaskState.TASK_STATE_COMPLETED && artifactText(got.value) === artifactText(approvedTask) &&
        roles.filter((r) => r === "ROLE_USER").length >= 2,
      `get: GetTask of the approved task: TASK_STATE_COMPLETED, the same artifact, history ${roles.join(", ")}`,
      `get: GetTask of the approved task: ${got.error ? showErr(got.error) : `${showTask(got.value)} history ${roles}`}`);
  }
  const peek = await attempt(bob.getTask({ id: done.id }, opts()));
  check(peek.error instanceof TaskNotFoundError && peek.error.envelopeCode === -32001,
    `isolation: bob's GetTask of alice's completed task is TaskNotFoundError -32001 (${peek.error?.message})`,
    `isolation: bob's GetTask of alice's completed task: ${peek.error ? showErr(peek.error) : showTask(peek.value)}`);

  // -------------------------------------------------------- ListTasks --
  // The SDK's request types are complete protobuf messages: a partial
  // {pageSize} would go out as status "UNRECOGNIZED" (its toJSON writes any
  // status but 0), so the requests are built with the SDK's own
  // ListTasksRequest.fromJSON, which fills in the defaults.
  const bobs = await send(bob, "bob", toolMessage(TOOL.text));
  check(bobs.status?.state === TaskState.TASK_STATE_COMPLETED && artifactText(bobs) === SIMPLE_TEXT,
    `bob: his own call of ${TOOL.text} completes`,
    `bob: ${showTask(bobs)}`);
  {
    const list = await attempt(alice.listTasks(ListTasksRequest.fromJSON({ pageSize: 100 }), opts()));
    const ids = new Set((list.value?.tasks ?? []).map((t) => t.id));
    check(list.value && ids.size === tasksOf.alice.size && [...tasksOf.alice].every((id) => ids.has(id)) &&
        list.value.totalSize === tasksOf.alice.size && !ids.has(bobs.id),
      `list: alice's ListTasks holds exactly her ${tasksOf.alice.size} tasks (totalSize ${list.value?.totalSize}), not bob's`,
      `list: alice's ListTasks: ${list.error ? showErr(list.error) : `${[...ids]} (total ${list.value.totalSize}); want ${[...tasksOf.alice]}`}`);
    const bobList = await attempt(bob.listTasks(ListTasksRequest.fromJSON({ pageSize: 100 }), opts()));
    const bobIds = (bobList.value?.tasks ?? []).map((t) => t.id);
    check(isDeepStrictEqual(bobIds, [bobs.id]) && bobList.value.totalSize === 1,
      "list: bob's ListTasks holds only his one task",
      `list: bob's ListTasks: ${bobList.error ? showErr(bobList.error) : `${JSON.stringify(bobIds)} (total ${bobList.value.totalSize}); want [${bobs.id}]`}`);
    const byState = await attempt(alice.listTasks(ListTasksRequest.fromJSON({ status: "TASK_STATE_CANCELED" }), opts()));
    const cancelledIds = (byState.value?.tasks ?? []).map((t) => t.id);
    check(isDeepStrictEqual(cancelledIds, [cancelledId]),
      "list: alice's ListTasks with status TASK_STATE_CANCELED holds only the cancelled task",
      `list: by status CANCELED: ${byState.error ? showErr(byState.error) : JSON.stringify(cancelledIds)}; want [${cancelledId}]`);
  }

  // ---------------------------------------------------- A2A-Version --
  // What the SDK sent: every A2A request says A2A-Version 1.0 (the card
  // request too).
  const rpc = sent.filter((r) => r.url === `${A2A_URL}/a2a`);
  const other = sent.filter((r) => r.url !== `${A2A_URL}/a2a` && !r.url.startsWith(`${A2A_URL}/agui`));
  check(rpc.length > 0 && rpc.every((r) => r.method === "POST" && r.version === "1.0") && other.length === 0,
    `version: all ${rpc.length} JSON-RPC requests were POST /a2a with A2A-Version: 1.0`,
    `version: requests ${JSON.stringify(sent.filter((r) => r.version !== "1.0" || r.url !== `${A2A_URL}/a2a`))}`);
} catch (e) {
  bad(`unexpected error: ${showErr(e)}\n${e?.stack ?? ""}`);
}

console.log(`a2a interop: ${passed} passed, ${failed} failed`);
process.exit(failed === 0 && passed > 0 ? 0 : 1);
