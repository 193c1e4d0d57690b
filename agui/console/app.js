// The SAG consent console: an AG-UI client of POST /agui. It follows the
// signed-in user's consent stream (thread sag:all), shows what waits for
// their approval and answers each interrupt on its own thread
// (sag:consent:<id>); it shows the user's session graph with a kill per
// node. Requests carry DPoP proofs (RFC 9449) made with a non-extractable
// WebCrypto key; no cookie carries authority.
"use strict";

const $ = (id) => document.getElementById(id);
const enc = new TextEncoder();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

let cfg;          // GET /console/config
let keys = null;  // the DPoP key pair (private key not extractable)
let jwk = null;   // its public JWK
let token = null; // the access token, bound to that key
let refreshToken = null; // from the authorization server, bound to the key too
let nonce = null; // the server's DPoP nonce, when it asks for one
let pending = new Map(); // open interrupts by id
let calls = [];   // the stream's state: recent calls
const toolArgs = new Map(); // toolCallId → arguments text (TOOL_CALL_ARGS)

// --- DPoP (RFC 9449 §4.2) -------------------------------------------------

function b64u(bytes) {
  let s = "";
  for (const b of new Uint8Array(bytes)) s += String.fromCharCode(b);
  return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

async function useKeys(k) {
  keys = k;
  const pub = await crypto.subtle.exportKey("jwk", keys.publicKey);
  jwk = { kty: pub.kty, crv: pub.crv, x: pub.x, y: pub.y };
}

async function newKey() {
  await useKeys(await crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, false, ["sign", "verify"]));
}

// thumbprint is the key's RFC 7638 thumbprint (dpop_jkt).
async function thumbprint() {
  const canonical = JSON.stringify({ crv: jwk.crv, kty: jwk.kty, x: jwk.x, y: jwk.y });
  return b64u(await crypto.subtle.digest("SHA-256", enc.encode(canonical)));
}

// The key pair survives the trip to the sign-in page in IndexedDB: the
// private key stays a non-extractable CryptoKey there.
function keyStore(mode, fn) {
  return new Promise((resolve, reject) => {
    const open = indexedDB.open("sag-console", 1);
    open.onupgradeneeded = () => open.result.createObjectStore("keys");
    open.onerror = () => reject(open.error);
    open.onsuccess = () => {
      const tx = open.result.transaction("keys", mode);
      const req = fn(tx.objectStore("keys"));
      tx.oncomplete = () => resolve(req.result);
      tx.onerror = () => reject(tx.error);
    };
  });
}

async function proof(method, path) {
  const claims = { jti: crypto.randomUUID(), htm: method, htu: cfg.publicURL + path, iat: Math.floor(Date.now() / 1000) };
  if (token) claims.ath = b64u(await crypto.subtle.digest("SHA-256", enc.encode(token)));
  if (nonce) claims.nonce = nonce;
  const input = b64u(enc.encode(JSON.stringify({ typ: "dpop+jwt", alg: "ES256", jwk }))) + "." + b64u(enc.encode(JSON.stringify(claims)));
  const sig = await crypto.subtle.sign({ name: "ECDSA", hash: "SHA-256" }, keys.privateKey, enc.encode(input));
  return input + "." + b64u(sig);
}

// send makes an authenticated request; a use_dpop_nonce answer is retried
// once with the nonce it carries.
async function send(method, path, body) {
  for (let attempt = 0; ; attempt++) {
    const headers = { "Content-Type": "application/json", Accept: "text/event-stream, application/json" };
    if (keys) {
      headers.DPoP = await proof(method, path);
      if (token) headers.Authorization = "DPoP " + token;
    }
    const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: "no-store", credentials: "omit" });
    const n = res.headers.get("DPoP-Nonce");
    if (n) nonce = n;
    if (res.status === 401 && n && attempt === 0) continue;
    if (res.status === 401 && !n && attempt === 0 && refreshToken && (await refresh())) continue;
    return res;
  }
}

async function errorText(res) {
  try {
    const e = await res.json();
    return e.error_description || e.error || res.statusText;
  } catch {
    return res.status + " " + res.statusText;
  }
}

// --- AG-UI over SSE ------------------------------------------------------

async function* events(res) {
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value.replace(/\r\n/g, "\n");
    let i;
    while ((i = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, i);
      buf = buf.slice(i + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).replace(/^ /, "")).join("\n");
      if (data) yield JSON.parse(data);
    }
  }
}

function runInput(threadId, extra) {
  return { threadId, runId: crypto.randomUUID(), messages: [], tools: [], context: [], state: {}, forwardedProps: {}, ...extra };
}

class SignedOut extends Error {}

// follow keeps a run attached to all of the user's threads, run after run:
// each ends when the set of open interrupts changes.
async function follow() {
  let backoff = 500;
  for (;;) {
    try {
      const res = await send("POST", "/agui", runInput(cfg.allThreads, { forwardedProps: { knownInterrupts: [...pending.keys()] } }));
      if (res.status === 401 || res.status === 403) throw new SignedOut(await errorText(res));
      if (!res.ok) throw new Error(await errorText(res));
      status("live");
      for await (const ev of events(res)) onEvent(ev);
      backoff = 500;
    } catch (e) {
      if (e instanceof SignedOut) return signedOut(e.message);
      status("reconnecting: " + e.message);
      await sleep(backoff);
      backoff = Math.min(backoff * 2, 10000);
    }
  }
}

function onEvent(ev) {
  switch (ev.type) {
    case "STATE_SNAPSHOT":
      calls = ev.snapshot.calls || [];
      renderActivity();
      refreshGraph();
      break;
    case "STATE_DELTA":
      applyPatch(ev.delta);
      renderActivity();
      refreshGraph();
      break;
    case "TOOL_CALL_START":
      toolArgs.set(ev.toolCallId, "");
      break;
    case "TOOL_CALL_ARGS":
      toolArgs.set(ev.toolCallId, (toolArgs.get(ev.toolCallId) || "") + ev.delta);
      break;
    case "RUN_FINISHED":
      pending = new Map(ev.outcome && ev.outcome.type === "interrupt" ? ev.outcome.interrupts.map((i) => [i.id, i]) : []);
      renderPending();
      break;
    case "RUN_ERROR":
      throw new Error(ev.message);
  }
}

// applyPatch applies the JSON Patch (RFC 6902) operations the stream sends
// to its state.
function applyPatch(ops) {
  const state = { calls };
  for (const op of ops) {
    const parts = op.path.split("/").slice(1).map((p) => p.replace(/~1/g, "/").replace(/~0/g, "~"));
    const last = parts.pop();
    let target = state;
    for (const p of parts) target = target[p];
    if (Array.isArray(target)) {
      const at = last === "-" ? target.length : Number(last);
      if (op.op === "add") target.splice(at, 0, op.value);
      else if (op.op === "remove") target.splice(at, 1);
      else if (op.op === "replace") target[at] = op.value;
    } else if (op.op === "remove") {
      delete target[last];
    } else {
      target[last] = op.value;
    }
  }
  calls = state.calls;
}

// decide answers one interrupt on its own thread and shows how the call
// ended (TOOL_CALL_RESULT) or why the answer was refused (RUN_ERROR).
async function decide(it, payload, card) {
  for (const b of card.querySelectorAll("button")) b.disabled = true;
  const say = (text, isError) => {
    const p = card.querySelector(".outcome");
    p.textContent = text;
    p.className = "outcome" + (isError ? " error" : "");
  };
  say(payload.approved ? "approved; waiting for the result…" : "denying…");
  let result = null;
  try {
    const res = await send("POST", "/agui", runInput(cfg.requestThreadPrefix + it.id, { resume: [{ interruptId: it.id, status: "resolved", payload }] }));
    if (!res.ok) throw new Error(await errorText(res));
    for await (const ev of events(res)) {
      if (ev.type === "TOOL_CALL_RESULT") result = ev.content;
      if (ev.type === "RUN_ERROR") throw new Error(ev.message);
    }
  } catch (e) {
    say("not decided: " + e.message, true);
    for (const b of card.querySelectorAll("button")) b.disabled = false;
    return;
  }
  const verdict = !payload.approved ? "Denied" : payload.editedArgs ? "Approved with edits" : "Approved";
  addResult(it, verdict, result);
  card.remove();
  pending.delete(it.id);
  renderPending();
}

// --- JSON Schema, the part an edit is checked against in the page (the
// gateway checks it again, with the allow-list's schema too) ---------------

function schemaErrors(schema, v, path = "arguments") {
  if (!schema || typeof schema !== "object") return [];
  const errs = [];
  const type = Array.isArray(v) ? "array" : v === null ? "null" : typeof v;
  const types = schema.type === undefined ? null : [].concat(schema.type);
  if (types && !types.some((t) => t === type || (t === "integer" && Number.isInteger(v)) || (t === "number" && type === "number"))) {
    return [`${path} must be ${types.join(" or ")}`];
  }
  if (schema.enum && !schema.enum.some((e) => JSON.stringify(e) === JSON.stringify(v))) errs.push(`${path} must be one of ${JSON.stringify(schema.enum)}`);
  if (type === "number") {
    if (schema.minimum !== undefined && v < schema.minimum) errs.push(`${path} must be at least ${schema.minimum}`);
    if (schema.maximum !== undefined && v > schema.maximum) errs.push(`${path} must be at most ${schema.maximum}`);
  }
  if (type === "string") {
    if (schema.minLength !== undefined && v.length < schema.minLength) errs.push(`${path} is shorter than ${schema.minLength}`);
    if (schema.maxLength !== undefined && v.length > schema.maxLength) errs.push(`${path} is longer than ${schema.maxLength}`);
  }
  if (type === "array" && schema.items) v.forEach((x, i) => errs.push(...schemaErrors(schema.items, x, `${path}[${i}]`)));
  if (type === "object") {
    for (const r of schema.required || []) if (!(r in v)) errs.push(`${path}.${r} is required`);
    const props = schema.properties || {};
    for (const [k, x] of Object.entries(v)) {
      if (k in props) errs.push(...schemaErrors(props[k], x, `${path}.${k}`));
      else if (schema.additionalProperties === false) errs.push(`${path}.${k} is not allowed`);
    }
  }
  return errs;
}

// --- rendering (textContent only: nothing from the stream is HTML) --------

function el(tag, attrs = {}, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const k of kids) e.append(k);
  return e;
}

function status(text) {
  $("status").textContent = text;
}

function pretty(text) {
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch {
    return text;
  }
}

function renderPending() {
  const list = $("pending");
  const shown = new Set();
  for (const card of [...list.children]) {
    if (!pending.has(card.dataset.id)) card.remove();
    else shown.add(card.dataset.id);
  }
  for (const it of pending.values()) {
    if (shown.has(it.id)) continue;
    const card = pendingCard(it);
    list.append(card);
    // An agent's client sent its user here for this request
    // (/console/#<id>, MCP URL-mode elicitation).
    if (location.hash === "#" + it.id) {
      card.classList.add("focus");
      card.scrollIntoView();
    }
  }
  $("no-pending").hidden = pending.size > 0;
}

function pendingCard(it) {
  const m = it.metadata || {};
  const args = pretty(toolArgs.get(it.toolCallId) || "{}");
  const countdown = el("span", { class: "countdown", "data-expires": it.expiresAt });
  const card = el("li", { class: "card pending", "data-id": it.id },
    el("h3", {}, `${m.tool} on ${m.upstream}`),
    el("p", {}, it.message),
    el("dl", {},
      el("dt", {}, "agent"), el("dd", {}, m.agent || "(not identified)"),
      el("dt", {}, "for"), el("dd", {}, m.user || ""),
      el("dt", {}, "rule"), el("dd", {}, m.rule || ""),
      el("dt", {}, "risk"), el("dd", {}, (m.risk || 0).toFixed(1)),
      el("dt", {}, "expires"), el("dd", {}, countdown)),
    el("pre", { class: "args" }, args),
    el("div", { class: "actions" },
      el("button", { class: "approve", onclick: () => decide(it, { approved: true }, card) }, "Approve"),
      el("button", { class: "deny", onclick: () => decide(it, { approved: false }, card) }, "Deny")),
    el("p", { class: "outcome" }));
  if (m.allowEdits) {
    const area = el("textarea", { class: "edit", spellcheck: "false", "aria-label": "edited arguments" });
    area.value = args;
    const problems = el("p", { class: "error edit-errors" });
    const editor = el("div", { class: "editor", hidden: "" }, area, problems,
      el("button", {
        class: "approve edited", onclick: () => {
          let edited;
          try {
            edited = JSON.parse(area.value);
          } catch (e) {
            problems.textContent = "not JSON: " + e.message;
            return;
          }
          const schema = it.responseSchema && it.responseSchema.properties && it.responseSchema.properties.editedArgs;
          const errs = type(edited) === "object" ? schemaErrors(schema, edited) : ["the arguments must be a JSON object"];
          problems.textContent = errs.join("\n");
          if (errs.length === 0) decide(it, { approved: true, editedArgs: edited }, card);
        },
      }, "Approve with these arguments"));
    card.querySelector(".actions").append(el("button", { class: "edit-open", onclick: () => { editor.hidden = !editor.hidden; } }, "Edit…"));
    card.querySelector(".actions").after(editor);
  }
  tick(countdown);
  return card;
}

// tick shows how long a pending request has left; every countdown on the
// page is updated each second.
function tick(countdown) {
  const left = Math.round((Date.parse(countdown.dataset.expires) - Date.now()) / 1000);
  countdown.textContent = left > 0 ? `in ${Math.floor(left / 60)}:${String(left % 60).padStart(2, "0")}` : "expired";
}
setInterval(() => document.querySelectorAll(".countdown").forEach(tick), 1000);

function type(v) {
  return Array.isArray(v) ? "array" : v === null ? "null" : typeof v;
}

function addResult(it, verdict, result) {
  const m = it.metadata || {};
  $("results").prepend(el("li", { class: "card result", "data-id": it.id },
    el("h3", {}, `${verdict}: ${m.tool} on ${m.upstream}`),
    el("pre", { class: "result-text" }, result === null ? (verdict === "Denied" ? "nothing was sent to the upstream" : "(no result yet)") : result)));
}

function renderActivity() {
  const body = $("activity").querySelector("tbody");
  body.replaceChildren(...[...calls].reverse().map((c) => el("tr", {},
    el("td", {}, new Date(c.time).toLocaleTimeString()),
    el("td", {}, `${c.method} ${c.name}`),
    el("td", {}, c.agent || ""),
    el("td", {}, c.decision),
    el("td", {}, c.reason || ""))));
}

let graphTimer = null;
function refreshGraph() {
  if (graphTimer) return;
  graphTimer = setTimeout(async () => {
    graphTimer = null;
    await loadGraph();
  }, 300);
}

async function loadGraph() {
  const res = await send("GET", "/console/api/graph");
  if (!res.ok) {
    $("graph-error").textContent = "session graph: " + (await errorText(res));
    return;
  }
  $("graph-error").textContent = "";
  const g = await res.json();
  renderGraph(g.nodes, new Set(g.self));
}

const kindNames = { user: "user session", workflow: "workflow", agent: "agent session", mcp: "MCP session" };

function renderGraph(nodes, self) {
  const byParent = new Map();
  for (const n of nodes) {
    const k = n.parent || "";
    if (!byParent.has(k)) byParent.set(k, []);
    byParent.get(k).push(n);
  }
  const order = { workflow: 0, agent: 1, mcp: 2, user: 3 };
  const branch = (parent) => (byParent.get(parent) || []).sort((a, b) => order[a.kind] - order[b.kind] || a.id.localeCompare(b.id)).map((n) => {
    const label = el("span", { class: "node " + n.kind + (n.state === "revoked" ? " revoked" : ""), "data-id": n.id, "data-kind": n.kind },
      el("span", { class: "kind" }, kindNames[n.kind] || n.kind),
      el("code", {}, n.id),
      el("span", {}, [n.agent, n.state, n.risk ? "risk " + n.risk.toFixed(1) : ""].filter(Boolean).join(" · ")));
    if (self.has(n.id)) label.append(el("span", { class: "self" }, "this console"));
    if (n.state !== "revoked") label.append(el("button", { class: "kill", onclick: () => kill(n) }, self.has(n.id) ? "Kill (signs you out)" : "Kill"));
    const kids = el("ul", {}, ...branch(n.id));
    if (n.kind === "workflow") {
      for (const c of calls.filter((c) => c.wsid === n.id).slice(-5)) kids.append(el("li", { class: "call" }, `${c.method} ${c.name}: ${c.decision}`));
    }
    return el("li", {}, label, kids);
  });
  const roots = nodes.filter((n) => !n.parent || !nodes.some((p) => p.id === n.parent)).map((n) => n.parent || "");
  $("graph").replaceChildren(...[...new Set(roots)].flatMap(branch));
  if (nodes.length === 0) $("graph").replaceChildren(el("li", { class: "note" }, "No sessions yet."));
}

async function kill(n) {
  const res = await send("POST", "/console/api/kill", { session: n.id });
  if (!res.ok) {
    $("graph-error").textContent = `kill ${n.id}: ` + (await errorText(res));
    return;
  }
  const r = await res.json();
  status(`killed ${r.revoked.length} sessions, ${r.cancelled_calls} calls, ${r.cancelled_consents} consent requests`);
  await loadGraph();
}

// --- sign-in ---------------------------------------------------------------

function signedOut(why) {
  token = null;
  refreshToken = null;
  $("app").hidden = true;
  $("signin").hidden = false;
  $("signin-error").textContent = why ? "Signed out: " + why : "";
  status("");
}

// --- sign-in through the gateway's authorization server (code + PKCE,
// DPoP-bound tokens: dpop_jkt at the authorization endpoint, RFC 9449 §10)

const random = (n) => b64u(crypto.getRandomValues(new Uint8Array(n)));

async function startSignIn() {
  await newKey();
  await keyStore("readwrite", (st) => st.put(keys, "dpop"));
  const verifier = random(32), state = random(16);
  sessionStorage.setItem("sag.signin", JSON.stringify({ verifier, state }));
  const q = new URLSearchParams({
    response_type: "code", client_id: cfg.signIn.clientID, redirect_uri: cfg.signIn.redirectURI, state,
    code_challenge: b64u(await crypto.subtle.digest("SHA-256", enc.encode(verifier))), code_challenge_method: "S256",
    resource: cfg.publicURL, dpop_jkt: await thumbprint(),
  });
  location.assign(cfg.signIn.authorize + "?" + q);
}

// tokenRequest posts a grant to the token endpoint with a proof (no ath),
// retrying once with a nonce it asks for.
async function tokenRequest(form) {
  const path = new URL(cfg.signIn.token).pathname;
  for (let attempt = 0; ; attempt++) {
    const held = token;
    token = null; // a token request's proof has no ath
    const headers = { "Content-Type": "application/x-www-form-urlencoded", DPoP: await proof("POST", path) };
    token = held;
    const res = await fetch(cfg.signIn.token, { method: "POST", headers, body: new URLSearchParams(form), cache: "no-store", credentials: "omit" });
    const n = res.headers.get("DPoP-Nonce");
    if (n) nonce = n;
    const body = await res.json();
    if (res.status === 400 && body.error === "use_dpop_nonce" && attempt === 0) continue;
    if (!res.ok) throw new Error(body.error_description || body.error);
    return body;
  }
}

function subjectOf(jwt) {
  const payload = jwt.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
  return JSON.parse(atob(payload)).sub;
}

// finishSignIn redeems the code the authorization server sent back, after
// checking that the answer is to this browser's request (state) and from
// this gateway (iss, RFC 9207: a mix-up is refused).
async function finishSignIn(params) {
  const saved = JSON.parse(sessionStorage.getItem("sag.signin") || "null");
  sessionStorage.removeItem("sag.signin");
  history.replaceState(null, "", location.pathname);
  if (!saved || params.get("state") !== saved.state) throw new Error("the answer is not to a sign-in this page started");
  if (params.get("iss") !== cfg.publicURL) throw new Error("the answer names another issuer than this gateway (mix-up)");
  if (params.get("error")) throw new Error(params.get("error_description") || params.get("error"));
  const k = await keyStore("readonly", (st) => st.get("dpop"));
  await keyStore("readwrite", (st) => st.delete("dpop"));
  if (!k) throw new Error("this browser lost the sign-in's key");
  await useKeys(k);
  const t = await tokenRequest({
    grant_type: "authorization_code", client_id: cfg.signIn.clientID, code: params.get("code"),
    redirect_uri: cfg.signIn.redirectURI, code_verifier: saved.verifier,
  });
  token = t.access_token;
  refreshToken = t.refresh_token || null;
  $("who").textContent = "signed in as " + subjectOf(token);
}

// refresh renews the access token with the refresh token (rotated).
async function refresh() {
  try {
    const t = await tokenRequest({ grant_type: "refresh_token", client_id: cfg.signIn.clientID, refresh_token: refreshToken });
    token = t.access_token;
    refreshToken = t.refresh_token || null;
    return true;
  } catch {
    refreshToken = null;
    return false;
  }
}

async function signIn(ev) {
  ev.preventDefault();
  const user = $("user").value.trim();
  $("signin-error").textContent = "";
  try {
    await newKey();
    const res = await send("POST", "/console/login", { user });
    if (!res.ok) throw new Error(await errorText(res));
    token = (await res.json()).access_token;
  } catch (e) {
    $("signin-error").textContent = "Sign-in failed: " + e.message;
    return;
  }
  $("who").textContent = "signed in as " + user;
  start();
}

function start() {
  $("signin").hidden = true;
  $("app").hidden = false;
  pending = new Map();
  renderPending();
  loadGraph();
  follow();
}

async function main() {
  cfg = await (await fetch("/console/config", { cache: "no-store", credentials: "omit" })).json();
  $("signin-form").addEventListener("submit", signIn);
  $("signin-sag").addEventListener("click", () => startSignIn().catch((e) => ($("signin-error").textContent = "Sign-in failed: " + e.message)));
  if (cfg.auth === "open") {
    $("who").textContent = "anonymous (open trial: no sign-in)";
    return start();
  }
  if (!cfg.devLogin && !cfg.signIn) {
    $("unavailable").hidden = false;
    $("unavailable").textContent = "No sign-in is configured for the console on this gateway: turn on identity.authorization_server, or run sag demo.";
    return;
  }
  $("signin-form").hidden = $("dev-note").hidden = !cfg.devLogin;
  $("signin-sag").hidden = !cfg.signIn;
  const params = new URLSearchParams(location.search);
  if (cfg.signIn && (params.has("code") || params.has("error"))) {
    try {
      await finishSignIn(params);
      return start();
    } catch (e) {
      signedOut("");
      $("signin-error").textContent = "Sign-in failed: " + e.message;
      return;
    }
  }
  signedOut("");
}

main();
