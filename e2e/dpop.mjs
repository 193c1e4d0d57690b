// DPoP interop (RFC 9449): proofs made by independent Node libraries, npm
// `dpop` and `oauth4webapi`, must be accepted by SAG, and their replays refused.
// Thumbprints are cross-checked with a third implementation, npm `jose`.
//
// Run by e2e/run.sh (part "dpop"), which starts two gateways with --auth dpop in
// front of the everything-server and passes them in the environment:
//   SAG_BIN          the sag binary (for `sag token`)
//   DPOP_URL         base URL of the gateway without server nonces
//   DPOP_DATA        its data dir
//   DPOP_NONCE_URL   base URL of the gateway with identity.dpop_nonce: true
//   DPOP_NONCE_DATA  its data dir
// Exits non-zero on any failure; the last line is "dpop interop: N passed, M failed".
import { execFile } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { promisify } from 'node:util'
import * as DPoP from 'dpop'
import * as oauth from 'oauth4webapi'
import { calculateJwkThumbprint } from 'jose'

const execFileP = promisify(execFile)
const TIMEOUT_MS = 10_000

function env(name) {
  const v = process.env[name]
  if (!v) {
    console.error(`dpop.mjs: ${name} is not set (run it through e2e/run.sh dpop)`)
    process.exit(2)
  }
  return v
}
const SAG = env('SAG_BIN')
const PLAIN = { base: env('DPOP_URL'), data: env('DPOP_DATA') }
const NONCE = { base: env('DPOP_NONCE_URL'), data: env('DPOP_NONCE_DATA') }
for (const gw of [PLAIN, NONCE]) gw.mcp = `${gw.base}/mcp`

// ------------------------------------------------------------------ helpers --
let passed = 0
let failed = 0
const algsSeen = new Map() // library -> Set of "alg (kty/crv)"

class CheckError extends Error {}
function check(cond, msg) {
  if (!cond) throw new CheckError(msg)
}

// One case: runs fn, prints ok/FAIL, counts. A failure does not stop the others.
async function test(name, fn) {
  const t0 = performance.now()
  try {
    const note = await fn()
    passed++
    console.log(`ok   ${name}${note ? ` (${note})` : ''} [${Math.round(performance.now() - t0)} ms]`)
  } catch (err) {
    failed++
    console.log(`FAIL ${name}: ${err instanceof CheckError ? err.message : err?.stack || err}`)
  }
}

const initBody = JSON.stringify({
  jsonrpc: '2.0',
  id: 1,
  method: 'initialize',
  params: { protocolVersion: '2025-11-25', capabilities: {}, clientInfo: { name: 'node-dpop', version: '1' } },
})
const mcpHeaders = () => ({ 'content-type': 'application/json', accept: 'application/json, text/event-stream' })

// A development access token from the gateway's issuer, bound to jkt (cnf.jkt).
async function mint(gw, jkt, sub = 'alice') {
  const { stdout } = await execFileP(SAG, ['token', '--data', gw.data, '--url', gw.base, '--sub', sub, '--jkt', jkt], {
    timeout: TIMEOUT_MS,
  })
  const tok = stdout.trim()
  check(tok.split('.').length === 3, `sag token printed no JWT: ${JSON.stringify(stdout.slice(0, 200))}`)
  return tok
}

function b64uJSON(part) {
  return JSON.parse(Buffer.from(part, 'base64url').toString('utf8'))
}
function decodeProof(proof) {
  const [h, p] = proof.split('.')
  return { header: b64uJSON(h), payload: b64uJSON(p) }
}
function noteAlg(lib, proof) {
  const { header } = decodeProof(proof)
  const desc = `${header.alg} (${header.jwk?.kty}${header.jwk?.crv ? '/' + header.jwk.crv : ''})`
  if (!algsSeen.has(lib)) algsSeen.set(lib, new Set())
  algsSeen.get(lib).add(desc)
  return header.alg
}

// Thumbprint by jose from the exported public JWK, checked against the library's own.
async function joseThumbprint(publicKey) {
  return calculateJwkThumbprint(await crypto.subtle.exportKey('jwk', publicKey), 'sha256')
}

// POSTs the MCP initialize request with the given Authorization/DPoP headers.
async function post(url, headers) {
  return fetch(url, { method: 'POST', headers, body: initBody, signal: AbortSignal.timeout(TIMEOUT_MS) })
}

// Success: 200 with a JSON-RPC result for id 1 (JSON or SSE body).
async function expectOK(res) {
  const text = await res.text()
  check(res.status === 200, `want 200, got ${res.status} ${res.headers.get('www-authenticate') || ''} ${text.slice(0, 300)}`)
  const ct = res.headers.get('content-type') || ''
  let msgs
  if (ct.startsWith('text/event-stream')) {
    // Events are separated by blank lines; an event's data lines are joined. The
    // go-sdk sends a priming event with empty data first (resumability): skip it.
    msgs = text
      .split(/\r?\n\r?\n/)
      .map((ev) =>
        ev
          .split(/\r?\n/)
          .filter((l) => l.startsWith('data:'))
          .map((l) => l.slice(5).replace(/^ /, ''))
          .join('\n'),
      )
      .filter((data) => data.trim() !== '')
      .map((data) => JSON.parse(data))
  } else {
    msgs = [JSON.parse(text)]
  }
  const r = msgs.find((m) => m.id === 1 && m.result)
  check(r, `200 without an initialize result (${ct}): ${text.slice(0, 300)}`)
  check(typeof r.result.protocolVersion === 'string', `initialize result lacks protocolVersion: ${JSON.stringify(r.result)}`)
  return `${res.status} ${ct.split(';')[0]}, ${r.result.serverInfo?.name ?? '?'} ${r.result.protocolVersion}`
}

// Refusal: 401 with a DPoP challenge carrying error and a description containing desc.
async function expect401(res, error, desc) {
  const body = await res.text()
  const www = res.headers.get('www-authenticate') || ''
  check(res.status === 401, `want 401 ${error}, got ${res.status} ${www} ${body.slice(0, 300)}`)
  check(/(^|,\s*)DPoP\s/i.test(www), `401 without a DPoP challenge: ${www}`)
  check(www.includes(`error="${error}"`), `want error="${error}" in WWW-Authenticate, got: ${www}`)
  if (desc) check(www.includes(desc), `want "${desc}" in WWW-Authenticate, got: ${www}`)
  return www
}
const shortWWW = (www) => www.match(/error_description="[^"]*"/)?.[0] ?? www

// ------------------------------------------------- `dpop` library (panva/dpop) --
async function dpopLibAcceptAndReplay(alg) {
  const kp = await DPoP.generateKeyPair(alg)
  const jkt = await DPoP.calculateThumbprint(kp.publicKey)
  const jjkt = await joseThumbprint(kp.publicKey)
  check(jkt === jjkt, `thumbprint mismatch: dpop ${jkt}, jose ${jjkt}`)
  const token = await mint(PLAIN, jkt)
  const auth = (proof) => ({ ...mcpHeaders(), authorization: `DPoP ${token}`, dpop: proof })

  const proof = await DPoP.generateProof(kp, PLAIN.mcp, 'POST', undefined, token)
  const sent = noteAlg('dpop', proof)
  const { payload } = decodeProof(proof)
  check(payload.htu === PLAIN.mcp && payload.htm === 'POST' && payload.ath, `unexpected proof claims ${JSON.stringify(payload)}`)
  await test(`dpop ${alg}: fresh proof accepted`, async () => `alg ${sent}, ${await expectOK(await post(PLAIN.mcp, auth(proof)))}`)
  await test(`dpop ${alg}: same proof replayed is refused`, async () =>
    shortWWW(await expect401(await post(PLAIN.mcp, auth(proof)), 'invalid_dpop_proof', 'proof replayed')))
  await test(`dpop ${alg}: another fresh proof accepted`, async () => {
    const p2 = await DPoP.generateProof(kp, PLAIN.mcp, 'POST', undefined, token)
    return expectOK(await post(PLAIN.mcp, auth(p2)))
  })
}

// --------------------------------------------------------- oauth4webapi ------
// A protectedResourceRequest through a DPoP handle, with the request it sent
// (also recorded in capture.sent, for when the call throws).
async function o4wRequest(handle, token, url, capture = {}) {
  let sent
  const res = await oauth.protectedResourceRequest(token, 'POST', new URL(url), new Headers(mcpHeaders()), initBody, {
    DPoP: handle,
    [oauth.allowInsecureRequests]: true,
    signal: AbortSignal.timeout(TIMEOUT_MS),
    [oauth.customFetch]: (u, init) => {
      sent = capture.sent = { url: u, method: init.method, headers: { ...init.headers }, body: init.body }
      return fetch(u, init)
    },
  })
  return { res, sent }
}

async function o4wAcceptAndReplay(alg) {
  const kp = await oauth.generateKeyPair(alg)
  const handle = oauth.DPoP({}, kp)
  const jkt = await handle.calculateThumbprint()
  const jjkt = await joseThumbprint(kp.publicKey)
  check(jkt === jjkt, `thumbprint mismatch: oauth4webapi ${jkt}, jose ${jjkt}`)
  const token = await mint(PLAIN, jkt)

  let sent
  let usedAlg = '?'
  await test(`oauth4webapi ${alg}: protectedResourceRequest accepted`, async () => {
    const r = await o4wRequest(handle, token, PLAIN.mcp)
    sent = r.sent
    check(sent?.headers.dpop, 'oauth4webapi sent no DPoP header')
    check(sent.headers.authorization === `DPoP ${token}`, `Authorization ${sent.headers.authorization?.slice(0, 20)}…`)
    usedAlg = noteAlg('oauth4webapi', sent.headers.dpop)
    return `alg ${usedAlg}, ${await expectOK(r.res)}`
  })
  await test(`oauth4webapi ${alg}: its request resent verbatim is refused`, async () => {
    check(sent, 'no request captured')
    const res = await fetch(sent.url, {
      method: sent.method,
      headers: sent.headers,
      body: sent.body,
      signal: AbortSignal.timeout(TIMEOUT_MS),
    })
    return shortWWW(await expect401(res, 'invalid_dpop_proof', 'proof replayed'))
  })
  await test(`oauth4webapi ${alg}: next request accepted`, async () => expectOK((await o4wRequest(handle, token, PLAIN.mcp)).res))
}

// ------------------------------------------------------------- nonces -------
async function nonceCases() {
  await test('oauth4webapi ES256 + server nonce: use_dpop_nonce, then retry with the nonce accepted', async () => {
    const kp = await oauth.generateKeyPair('ES256')
    const handle = oauth.DPoP({}, kp)
    const token = await mint(NONCE, await handle.calculateThumbprint())
    let nonce
    let how
    const first = {}
    try {
      const { res } = await o4wRequest(handle, token, NONCE.mcp, first)
      // Some versions return the 401 instead of throwing: accept that too.
      const www = await expect401(res, 'use_dpop_nonce')
      nonce = res.headers.get('dpop-nonce')
      how = `401 returned (${shortWWW(www)})`
    } catch (err) {
      if (err instanceof CheckError) throw err
      check(oauth.isDPoPNonceError(err), `first request: want a DPoP nonce error, got ${err?.stack || err}`)
      check(err instanceof oauth.WWWAuthenticateChallengeError, `nonce error is a ${err?.constructor?.name}`)
      check(err.status === 401, `nonce error status ${err.status}`)
      nonce = err.response.headers.get('dpop-nonce')
      how = `threw ${err.constructor.name}, isDPoPNonceError`
    }
    check(first.sent && !decodeProof(first.sent.headers.dpop).payload.nonce, 'first proof missing or already carrying a nonce')
    check(nonce, 'the use_dpop_nonce response had no DPoP-Nonce header')
    const { res, sent } = await o4wRequest(handle, token, NONCE.mcp)
    const got = decodeProof(sent.headers.dpop).payload.nonce
    check(got === nonce, `retry proof nonce ${JSON.stringify(got)}, want the DPoP-Nonce ${JSON.stringify(nonce)}`)
    noteAlg('oauth4webapi', sent.headers.dpop)
    return `${how}; retry ${await expectOK(res)}`
  })

  const kp = await DPoP.generateKeyPair('Ed25519')
  const token = await mint(NONCE, await DPoP.calculateThumbprint(kp.publicKey))
  const auth = (proof) => ({ ...mcpHeaders(), authorization: `DPoP ${token}`, dpop: proof })
  let nonce
  await test('dpop Ed25519 + server nonce: proof without nonce gets use_dpop_nonce + DPoP-Nonce', async () => {
    const res = await post(NONCE.mcp, auth(await DPoP.generateProof(kp, NONCE.mcp, 'POST', undefined, token)))
    nonce = res.headers.get('dpop-nonce')
    const www = await expect401(res, 'use_dpop_nonce')
    check(nonce, 'no DPoP-Nonce header')
    return shortWWW(www)
  })
  await test('dpop Ed25519 + server nonce: proof with a made-up nonce gets use_dpop_nonce', async () => {
    const res = await post(NONCE.mcp, auth(await DPoP.generateProof(kp, NONCE.mcp, 'POST', 'not-a-server-nonce', token)))
    return shortWWW(await expect401(res, 'use_dpop_nonce'))
  })
  let proof
  await test('dpop Ed25519 + server nonce: proof with the DPoP-Nonce accepted', async () => {
    check(nonce, 'no nonce from the previous case')
    proof = await DPoP.generateProof(kp, NONCE.mcp, 'POST', nonce, token)
    noteAlg('dpop', proof)
    return expectOK(await post(NONCE.mcp, auth(proof)))
  })
  await test('dpop Ed25519 + server nonce: that proof replayed is refused', async () => {
    check(proof, 'no proof from the previous case')
    return shortWWW(await expect401(await post(NONCE.mcp, auth(proof)), 'invalid_dpop_proof', 'proof replayed'))
  })
}

// ------------------------------------------------------ key binding ---------
async function bindingCases() {
  const a = await DPoP.generateKeyPair('ES256')
  const b = await DPoP.generateKeyPair('ES256')
  const token = await mint(PLAIN, await DPoP.calculateThumbprint(a.publicKey))
  await test('token bound to key A, proof signed by key B is refused', async () => {
    const proof = await DPoP.generateProof(b, PLAIN.mcp, 'POST', undefined, token)
    const res = await post(PLAIN.mcp, { ...mcpHeaders(), authorization: `DPoP ${token}`, dpop: proof })
    return shortWWW(await expect401(res, 'invalid_dpop_proof', 'cnf.jkt'))
  })
  await test('DPoP-bound token sent as Bearer (oauth4webapi without a DPoP handle) is refused', async () => {
    try {
      const res = await oauth.protectedResourceRequest(token, 'POST', new URL(PLAIN.mcp), new Headers(mcpHeaders()), initBody, {
        [oauth.allowInsecureRequests]: true,
        signal: AbortSignal.timeout(TIMEOUT_MS),
      })
      check(false, `want 401, got ${res.status}`)
    } catch (err) {
      if (err instanceof CheckError) throw err
      check(err instanceof oauth.WWWAuthenticateChallengeError && err.status === 401, `want a 401 challenge, got ${err?.stack || err}`)
      return `401 ${err.response.headers.get('www-authenticate')?.match(/error="[^"]*"/)?.[0] ?? ''}`
    }
  })
}

// ---------------------------------------------------------------- main ------
const t0 = performance.now()
console.log(`dpop ${pkgVersion('dpop')}, oauth4webapi ${pkgVersion('oauth4webapi')}, jose ${pkgVersion('jose')}, node ${process.version}`)
console.log(`gateways: ${PLAIN.base} (no nonce), ${NONCE.base} (dpop_nonce: true)`)
const groups = [
  ['dpop ES256', () => dpopLibAcceptAndReplay('ES256')],
  ['dpop Ed25519', () => dpopLibAcceptAndReplay('Ed25519')],
  ['oauth4webapi ES256', () => o4wAcceptAndReplay('ES256')],
  ['oauth4webapi Ed25519', () => o4wAcceptAndReplay('Ed25519')],
  ['server nonces', nonceCases],
  ['key binding', bindingCases],
]
for (const [name, run] of groups) {
  try {
    await run()
  } catch (err) {
    // Setup outside a case (key generation, thumbprints, sag token) failed.
    failed++
    console.log(`FAIL ${name} setup: ${err instanceof CheckError ? err.message : err?.stack || err}`)
  }
}
for (const [lib, algs] of algsSeen) console.log(`algs sent by ${lib}: ${[...algs].join(', ')}`)
console.log(`time: ${Math.round(performance.now() - t0)} ms`)
console.log(`dpop interop: ${passed} passed, ${failed} failed`)
process.exit(failed === 0 && passed > 0 ? 0 : 1)

function pkgVersion(name) {
  try {
    return JSON.parse(readFileSync(new URL(`./node_modules/${name}/package.json`, import.meta.url), 'utf8')).version
  } catch {
    return '?'
  }
}
