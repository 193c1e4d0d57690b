// Prints one DPoP proof (RFC 9449) made by npm `dpop` with the private EC P-256 JWK in a
// file (as written by `sag token --dpop-key FILE`), for a request to HTU with method HTM,
// bound to ACCESS_TOKEN (ath). Used by e2e/run.sh (part "spire") to send the agent's
// token and proof with curl but without the agent's X.509-SVID.
//
//   node e2e/spire/dpop-proof.mjs KEY_FILE HTM HTU ACCESS_TOKEN
import { readFileSync } from 'node:fs'
import * as DPoP from 'dpop'

const [keyFile, htm, htu, token] = process.argv.slice(2)
if (!keyFile || !htm || !htu || !token) {
  console.error('usage: dpop-proof.mjs KEY_FILE HTM HTU ACCESS_TOKEN')
  process.exit(2)
}
const jwk = JSON.parse(readFileSync(keyFile, 'utf8'))
if (jwk.kty !== 'EC' || jwk.crv !== 'P-256' || !jwk.d) {
  console.error(`dpop-proof.mjs: ${keyFile} is not a private EC P-256 JWK`)
  process.exit(2)
}
const alg = { name: 'ECDSA', namedCurve: 'P-256' }
const { d, ...pub } = jwk
const privateKey = await crypto.subtle.importKey('jwk', { kty: jwk.kty, crv: jwk.crv, x: jwk.x, y: jwk.y, d }, alg, false, ['sign'])
const publicKey = await crypto.subtle.importKey('jwk', { kty: pub.kty, crv: pub.crv, x: pub.x, y: pub.y }, alg, true, ['verify'])
console.log(await DPoP.generateProof({ privateKey, publicKey }, htu, htm, undefined, token))
