// OAuth sign-in with the official TypeScript MCP SDK (@modelcontextprotocol/sdk
// 1.32.2) against SAG's built-in authorization server, on a gateway with
// --auth dpop: discovery (RFC 9728 + RFC 8414), dynamic client registration
// (RFC 7591), the authorization code flow with PKCE, signed in headlessly
// through SAG's sign-in and consent pages, DPoP-bound tokens, tools/list, and
// a refresh whose new access token works too. Then a second, separate mode:
// a client ID metadata document (CIMD): a fresh provider (new storage, new
// DPoP key, new browser) whose clientMetadataUrl points at a JSON document
// this script serves over HTTPS (node:https, self-signed certificate for
// 127.0.0.1); the SDK uses that URL as its client_id instead of registering,
// SAG fetches the document, and the sign-in, token and tools/list work the
// same, with the token's client_id claim being the document's URL.
//
// The SDK has no DPoP support, so it is given a fetch that adds the proofs
// (npm dpop): a proof on every POST to the token endpoint, and on /mcp the
// SDK's "Authorization: Bearer X" becomes "Authorization: DPoP X" with a
// proof carrying ath.
//
// Run by e2e/run.sh (part "oauth"), which starts the gateway and passes:
//   OAUTH_URL       base URL of the gateway (identity.authorization_server on)
//   OAUTH_USER      the local user to sign in as (default alice)
//   OAUTH_PASSWORD  their password
//   OAUTH_CIMD_CERT the PEM certificate (IP 127.0.0.1) of the document server;
//                   the gateway trusts it (metadata_ca_file) and fetches
//                   documents from private addresses (metadata_allow_private)
//   OAUTH_CIMD_KEY  its private key
// Exits non-zero with a message on any failure; the last line is "oauth: ok".
import { createServer } from 'node:net'
import { createServer as createHTTPSServer } from 'node:https'
import { readFileSync } from 'node:fs'
import * as DPoP from 'dpop'
import { Client } from '@modelcontextprotocol/sdk/client/index.js'
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js'
import { auth, UnauthorizedError } from '@modelcontextprotocol/sdk/client/auth.js'

const TIMEOUT_MS = 10_000

function env(name, def) {
  const v = process.env[name] || def
  if (!v) {
    console.error(`oauth.mjs: ${name} is not set (run it through e2e/run.sh oauth)`)
    process.exit(2)
  }
  return v
}
const BASE = env('OAUTH_URL').replace(/\/+$/, '')
const USER = env('OAUTH_USER', 'alice')
const PASSWORD = env('OAUTH_PASSWORD')
const CIMD_CERT = env('OAUTH_CIMD_CERT')
const CIMD_KEY = env('OAUTH_CIMD_KEY')
const MCP_URL = new URL(`${BASE}/mcp`)

function fail(msg) {
  console.error(`oauth: FAIL: ${msg}`)
  process.exit(1)
}
function check(cond, msg) {
  if (!cond) fail(msg)
}
function step(msg) {
  console.log(`ok   ${msg}`)
}
function jwtPayload(tok) {
  const parts = String(tok).split('.')
  check(parts.length === 3, `access token is not a JWT: ${String(tok).slice(0, 60)}`)
  return JSON.parse(Buffer.from(parts[1], 'base64url').toString('utf8'))
}
// htu: the request URL without query and fragment (RFC 9449 4.2).
function htuOf(url) {
  const u = new URL(url)
  u.search = ''
  u.hash = ''
  return u.href
}

// A free loopback port for the redirect URI (nothing listens there: the
// redirect to it is captured, not followed).
const REDIRECT_PORT = await new Promise((resolve, reject) => {
  const s = createServer()
  s.on('error', reject)
  s.listen(0, '127.0.0.1', () => {
    const { port } = s.address()
    s.close(() => resolve(port))
  })
})
const REDIRECT_URL = `http://127.0.0.1:${REDIRECT_PORT}/callback`

// The authorization server's metadata, read once here for the issuer and the
// token endpoint (the SDK discovers it on its own).
const asm = await (await fetch(`${BASE}/.well-known/oauth-authorization-server`, { signal: AbortSignal.timeout(TIMEOUT_MS) })).json()
check(asm.issuer && asm.token_endpoint && asm.registration_endpoint, `authorization server metadata incomplete: ${JSON.stringify(asm)}`)
const ISSUER = asm.issuer
const TOKEN_URL = htuOf(asm.token_endpoint)
const REGISTRATION_URL = htuOf(asm.registration_endpoint)
step(`metadata: issuer ${ISSUER}, token endpoint ${TOKEN_URL}`)

// ------------------------------------------------------------ DPoP fetch --
const keypair = await DPoP.generateKeyPair('ES256')
const jkt = await DPoP.calculateThumbprint(keypair.publicKey)

function urlOf(input) {
  if (typeof input === 'string') return input
  if (input instanceof URL) return input.href
  return input.url // Request
}

// newDPoPFetch returns the fetch given to the SDK (auth() and the
// transport), signing with kp and counting into seen: the proofs sent, and
// the requests to the registration endpoint.
function newDPoPFetch(kp, seen) {
  return async function dpopFetch(input, init = {}) {
    const url = urlOf(input)
    const method = (init.method || (input instanceof Request ? input.method : 'GET')).toUpperCase()
    const headers = new Headers(init.headers || (input instanceof Request ? input.headers : undefined))
    const htu = htuOf(url)
    if (htu === REGISTRATION_URL) seen.registrations++
    if (method === 'POST' && htu === TOKEN_URL) {
      headers.set('DPoP', await DPoP.generateProof(kp, htu, method))
      seen.tokenProofs++
    } else if (htu === MCP_URL.href) {
      const authz = headers.get('authorization')
      const m = authz && /^Bearer\s+(.+)$/i.exec(authz)
      if (m) {
        headers.set('Authorization', `DPoP ${m[1]}`)
        headers.set('DPoP', await DPoP.generateProof(kp, htu, method, undefined, m[1]))
        seen.mcpProofs++
      }
    }
    return fetch(input, { ...init, headers })
  }
}
const seen = { tokenProofs: 0, mcpProofs: 0, registrations: 0 }
const dpopFetch = newDPoPFetch(keypair, seen)

// ------------------------------------------------------- headless sign-in --
// A browser in a few lines: a cookie jar, redirects not followed, no Origin.
function newJar() {
  const cookies = new Map()
  return {
    header: () => [...cookies].map(([k, v]) => `${k}=${v}`).join('; '),
    take(res) {
      for (const c of res.headers.getSetCookie()) {
        const [pair] = c.split(';')
        const i = pair.indexOf('=')
        if (i <= 0) continue
        const name = pair.slice(0, i).trim()
        const value = pair.slice(i + 1).trim()
        if (/;\s*max-age=(0|-\d+)/i.test(c) || value === '') cookies.delete(name)
        else cookies.set(name, value)
      }
    },
    names: () => [...cookies.keys()],
  }
}

async function browse(jar, url, form) {
  const headers = {}
  const cookie = jar.header()
  if (cookie) headers.cookie = cookie
  const init = { method: 'GET', headers, redirect: 'manual', signal: AbortSignal.timeout(TIMEOUT_MS) }
  if (form) {
    init.method = 'POST'
    headers['content-type'] = 'application/x-www-form-urlencoded'
    init.body = new URLSearchParams(form).toString()
  }
  const res = await fetch(url, init)
  jar.take(res)
  return { res, page: await res.text() }
}

function unescapeHTML(s) {
  return s
    .replace(/&#34;|&quot;/g, '"')
    .replace(/&#39;/g, "'")
    .replace(/&lt;/g, '<')
    .replace(/&gt;/g, '>')
    .replace(/&amp;/g, '&')
}
function formFields(page, what) {
  const f = {}
  for (const m of page.matchAll(/name="(request|csrf)" value="([^"]+)"/g)) f[m[1]] = unescapeHTML(m[2])
  check(f.request && f.csrf, `${what}: no request/csrf fields on the page:\n${page.slice(0, 1500)}`)
  return f
}

// signIn walks SAG's pages for the SDK's authorization URL, in a new browser
// (a fresh cookie jar), and returns the redirect's parameters (code, state,
// iss). With clientName, the consent page must show it.
async function signIn(authorizationUrl, clientName) {
  const jar = newJar()
  const authorizePath = new URL(authorizationUrl)
  authorizePath.search = ''
  let { res, page } = await browse(jar, authorizationUrl)
  check(res.status === 200 && page.includes('name="password"'), `GET authorize: status ${res.status}, want the sign-in page:\n${page.slice(0, 1500)}`)
  check(jar.names().length > 0, `GET authorize set no cookies`)
  let f = formFields(page, 'sign-in page')
  ;({ res, page } = await browse(jar, authorizePath.href, { ...f, action: 'signin', username: USER, password: PASSWORD }))
  check(res.status === 200 && page.includes('value="approve"'), `sign-in: status ${res.status}, want the consent page:\n${page.slice(0, 1500)}`)
  if (clientName) check(page.includes(clientName), `consent page does not name the client ${JSON.stringify(clientName)}:\n${page.slice(0, 1500)}`)
  f = formFields(page, 'consent page')
  ;({ res, page } = await browse(jar, authorizePath.href, { ...f, action: 'approve' }))
  check(res.status === 303, `approve: status ${res.status}, want a 303 to the client:\n${page.slice(0, 1500)}`)
  const loc = res.headers.get('location') || ''
  check(loc.startsWith(`${REDIRECT_URL}?`), `approve redirects to ${JSON.stringify(loc)}, want ${REDIRECT_URL}?…`)
  return { params: new URL(loc).searchParams, cookies: jar.names() }
}

// ----------------------------------------------------- the client provider --
class Provider {
  constructor() {
    this._client = undefined
    this._tokens = undefined
    this._verifier = undefined
    this._state = undefined
    this.registered = 0
    this.redirects = 0
    this.received = undefined // the redirect's parameters
  }
  get redirectUrl() {
    return REDIRECT_URL
  }
  get clientMetadata() {
    return {
      client_name: 'SAG e2e (@modelcontextprotocol/sdk)',
      redirect_uris: [REDIRECT_URL],
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      token_endpoint_auth_method: 'none',
    }
  }
  state() {
    this._state = crypto.randomUUID()
    return this._state
  }
  clientInformation() {
    return this._client
  }
  saveClientInformation(info) {
    if (!this._client || this._client.client_id !== info.client_id) this.registered++
    this._client = info
  }
  tokens() {
    return this._tokens
  }
  saveTokens(tokens) {
    this._tokens = tokens
  }
  saveCodeVerifier(v) {
    this._verifier = v
  }
  codeVerifier() {
    check(this._verifier, 'no code verifier saved')
    return this._verifier
  }
  async redirectToAuthorization(url) {
    this.redirects++
    const u = new URL(url)
    check(u.searchParams.get('code_challenge_method') === 'S256', `authorization URL without S256 PKCE: ${u}`)
    check(u.searchParams.get('client_id') === this._client?.client_id, `authorization URL client_id ${u.searchParams.get('client_id')}, want ${this._client?.client_id}`)
    const { params, cookies } = await signIn(u.href, this.expectClientName)
    step(`signed in as ${USER} and approved (cookies: ${cookies.join(', ')})`)
    check(params.get('code'), `redirect without code: ${params}`)
    check(params.get('state') === this._state, `redirect state ${params.get('state')}, want ${this._state}`)
    check(params.get('iss') === ISSUER, `redirect iss ${params.get('iss')}, want ${ISSUER} (RFC 9207)`)
    this.received = params
  }
}

// CIMDProvider identifies the client by a client ID metadata document: with
// clientMetadataUrl set (and the server's client_id_metadata_document_supported)
// the SDK takes the URL as client_id instead of registering.
const CIMD_CLIENT_NAME = 'E2E CIMD client'
class CIMDProvider extends Provider {
  constructor(docURL) {
    super()
    this.docURL = docURL
    this.expectClientName = CIMD_CLIENT_NAME
  }
  get clientMetadataUrl() {
    return this.docURL
  }
  get clientMetadata() {
    return { ...super.clientMetadata, client_name: CIMD_CLIENT_NAME }
  }
}

function checkTokens(tokens, what, wantJkt = jkt) {
  check(tokens?.access_token, `${what}: no access token`)
  check(String(tokens.token_type).toLowerCase() === 'dpop', `${what}: token_type ${tokens.token_type}, want DPoP`)
  const claims = jwtPayload(tokens.access_token)
  check(claims.sub === USER, `${what}: sub ${claims.sub}, want ${USER}`)
  check(typeof claims.sid === 'string' && claims.sid !== '', `${what}: no sid in ${JSON.stringify(claims)}`)
  check(claims.cnf?.jkt === wantJkt, `${what}: cnf.jkt ${claims.cnf?.jkt}, want the key's ${wantJkt}`)
  return claims
}

async function listTools(provider, what, fetchFn = dpopFetch) {
  const transport = new StreamableHTTPClientTransport(MCP_URL, { authProvider: provider, fetch: fetchFn })
  const client = new Client({ name: 'sag-e2e-oauth', version: '1.0.0' })
  await client.connect(transport)
  const { tools } = await client.listTools()
  check(Array.isArray(tools) && tools.length > 0, `${what}: tools/list returned no tools`)
  await client.close()
  return tools
}

// ------------------------------------------------------------------- flow --
const provider = new Provider()

// 1. Dynamic registration + sign-in: the first connect answers 401, the SDK
//    registers the client and sends the user to sign in (UnauthorizedError).
{
  const transport = new StreamableHTTPClientTransport(MCP_URL, { authProvider: provider, fetch: dpopFetch })
  const client = new Client({ name: 'sag-e2e-oauth', version: '1.0.0' })
  let err
  try {
    await client.connect(transport)
  } catch (e) {
    err = e
  }
  check(err instanceof UnauthorizedError, `first connect: want UnauthorizedError, got ${err?.stack || err || 'success'}`)
  check(provider.registered === 1 && provider._client?.client_id, `the SDK did not register a client dynamically (${JSON.stringify(provider._client)})`)
  step(`dynamic registration: client_id ${provider._client.client_id}`)
  check(provider.redirects === 1 && provider.received, 'the SDK did not start the authorization')
  await transport.finishAuth(provider.received.get('code'))
  await transport.close().catch(() => {})
}
check(seen.tokenProofs >= 1, 'no DPoP proof was sent to the token endpoint')
const claims1 = checkTokens(provider.tokens(), 'token')
check(provider.tokens().refresh_token, 'no refresh token issued')
step(`token: ${provider.tokens().token_type}, sub ${claims1.sub}, sid ${claims1.sid}, cnf.jkt ${claims1.cnf.jkt}`)

const tools1 = await listTools(provider, 'after sign-in')
check(seen.mcpProofs >= 1, 'no DPoP proof was sent to /mcp')
step(`tools/list: ${tools1.length} tools (${tools1.slice(0, 3).map((t) => t.name).join(', ')}, …)`)

// 2. Refresh: the SDK's auth() with a stored refresh token refreshes
//    (with a proof, through dpopFetch); the new access token must work.
const before = provider.tokens()
const proofsBefore = seen.tokenProofs
const result = await auth(provider, { serverUrl: MCP_URL, fetchFn: dpopFetch })
check(result === 'AUTHORIZED', `refresh: auth() returned ${result}, want AUTHORIZED`)
check(provider.redirects === 1, 'refresh: the SDK asked the user to sign in again')
check(seen.tokenProofs === proofsBefore + 1, 'refresh: no DPoP proof was sent to the token endpoint')
const after = provider.tokens()
check(after.access_token !== before.access_token, 'refresh: the access token did not change')
check(after.refresh_token && after.refresh_token !== before.refresh_token, 'refresh: the refresh token did not rotate')
const claims2 = checkTokens(after, 'refreshed token')
check(claims2.sid === claims1.sid, `refreshed token sid ${claims2.sid}, want the sign-in's ${claims1.sid}`)
const tools2 = await listTools(provider, 'after refresh')
check(provider.redirects === 1, 'after refresh: the SDK asked the user to sign in again')
step(`refresh: new DPoP token (sid ${claims2.sid}) lists ${tools2.length} tools`)

// 3. Client ID metadata document: a separate client, identified by the URL
//    of a document this script serves over HTTPS. A fresh provider (its own
//    storage), a fresh DPoP key and a new browser (signIn's fresh jar: the
//    sign-in page again, then consent for this new client). The SDK must use
//    the URL as client_id and not register.
{
  let docFetches = 0
  let docURL
  const docServer = createHTTPSServer({ cert: readFileSync(CIMD_CERT), key: readFileSync(CIMD_KEY) }, (req, res) => {
    if (req.method === 'GET' && new URL(req.url, 'https://127.0.0.1').pathname === '/client.json') {
      docFetches++
      res.writeHead(200, { 'Content-Type': 'application/json', 'Cache-Control': 'max-age=60' })
      res.end(
        JSON.stringify({
          client_id: docURL,
          client_name: CIMD_CLIENT_NAME,
          redirect_uris: [REDIRECT_URL],
          grant_types: ['authorization_code', 'refresh_token'],
          response_types: ['code'],
          token_endpoint_auth_method: 'none',
        }),
      )
      return
    }
    res.writeHead(404, { 'Content-Type': 'text/plain' })
    res.end('not found\n')
  })
  await new Promise((resolve, reject) => {
    docServer.on('error', reject)
    docServer.listen(0, '127.0.0.1', resolve)
  })
  docURL = `https://127.0.0.1:${docServer.address().port}/client.json`
  check(asm.client_id_metadata_document_supported === true, `authorization server metadata without client_id_metadata_document_supported: true`)

  const cimdKeypair = await DPoP.generateKeyPair('ES256')
  const cimdJkt = await DPoP.calculateThumbprint(cimdKeypair.publicKey)
  const cimdSeen = { tokenProofs: 0, mcpProofs: 0, registrations: 0 }
  const cimdFetch = newDPoPFetch(cimdKeypair, cimdSeen)
  const cimd = new CIMDProvider(docURL)

  const transport = new StreamableHTTPClientTransport(MCP_URL, { authProvider: cimd, fetch: cimdFetch })
  const client = new Client({ name: 'sag-e2e-oauth-cimd', version: '1.0.0' })
  let err
  try {
    await client.connect(transport)
  } catch (e) {
    err = e
  }
  check(err instanceof UnauthorizedError, `CIMD first connect: want UnauthorizedError, got ${err?.stack || err || 'success'}`)
  check(cimdSeen.registrations === 0, `CIMD: the SDK sent ${cimdSeen.registrations} request(s) to the registration endpoint`)
  check(cimd._client?.client_id === docURL, `CIMD: the SDK's client_id is ${cimd._client?.client_id}, want the document URL ${docURL}`)
  check(cimd.redirects === 1 && cimd.received, 'CIMD: the SDK did not start the authorization')
  await transport.finishAuth(cimd.received.get('code'))
  await transport.close().catch(() => {})
  check(cimdSeen.tokenProofs >= 1, 'CIMD: no DPoP proof was sent to the token endpoint')
  const claims = checkTokens(cimd.tokens(), 'CIMD token', cimdJkt)
  check(claims.client_id === docURL, `CIMD token client_id ${claims.client_id}, want the document URL ${docURL}`)
  const tools = await listTools(cimd, 'CIMD, after sign-in', cimdFetch)
  check(cimdSeen.mcpProofs >= 1, 'CIMD: no DPoP proof was sent to /mcp')
  check(cimdSeen.registrations === 0, `CIMD: the SDK sent ${cimdSeen.registrations} request(s) to the registration endpoint`)
  check(cimd.redirects === 1, 'CIMD: the SDK asked the user to sign in again')
  check(docFetches >= 1, 'CIMD: the gateway never fetched the client metadata document')
  step(`client ID metadata document: client_id ${docURL} (no registration; document fetched ${docFetches}x), sid ${claims.sid}, cnf.jkt ${claims.cnf.jkt}, lists ${tools.length} tools`)
  await new Promise((resolve) => docServer.close(resolve))
}

console.log('oauth: ok')
process.exit(0)
