#!/usr/bin/env bash
# SAG end-to-end suite: the MCP conformance suite and an MCP Inspector CLI smoke
# test against `sag serve` in front of the go-sdk everything-server, a DPoP
# interop test (npm dpop + oauth4webapi proofs) against `sag serve --auth dpop`,
# an OAuth test (the @modelcontextprotocol/sdk 1.32.2 client registering
# dynamically, and separately by a client ID metadata document the test
# serves, signing in through SAG's authorization server, with DPoP proofs
# added by its fetch, listing tools and refreshing),
# an AG-UI test (the @ag-ui/client 1.0.0 HttpAgent approving, denying and
# editing calls that wait in `sag call`, and AG-UI's interrupt rules), an
# AG-UI agent-proxy test (the same HttpAgent running a real AG-UI agent,
# the sag-fixture process, through POST /agui/agents/{name}: the agent's tool
# call waits for the user's consent as an interrupt, resumed, denied, killed),
# an A2A test (the @a2a-js/sdk 1.3.0 client calling tools as A2A 1.0 tasks:
# completed, rejected, waiting for consent, cancelled, each user's own), a
# SPIFFE test with a real SPIRE 1.13.3 server + agent issuing the gateway's
# and the agent's X.509-SVIDs (mTLS + DPoP + act.sub), and the consent
# console in a real browser (Debian's chromium, installed by
# e2e/chromium.sh when missing, driven by chromedp: go test -tags browser).
#
# Usage: bash e2e/run.sh [conformance] [inspector] [dpop] [oauth] [agui] [agui-agent] [a2a] [spire] [console]
#        (default: all nine)
#
# Environment:
#   E2E_DIRECT=1              test the everything-server directly (baseline), no gateway
#                             (the dpop, oauth, agui, agui-agent, a2a, spire and console parts, which test the gateway only, are skipped)
#   E2E_UPSTREAM_STATELESS=1  run the everything-server with -stateless=true
#                             (default -stateless=false: with conformance 0.1.16 the
#                             stateless server fails the sampling/elicitation scenarios)
#   E2E_SCENARIO=name         run one conformance scenario instead of the active suite
#   E2E_RACE=1                build sag with -race
#   E2E_OUT=dir               output directory (default e2e/out, wiped at start)
#   E2E_READY_TIMEOUT=secs    how long to wait for the servers (default 30)
#   E2E_CONFORMANCE_TIMEOUT=secs  limit for the conformance run (default 600)
#   E2E_DPOP_TIMEOUT=secs     limit for the dpop interop script (default 60)
#   E2E_OAUTH_TIMEOUT=secs    limit for the OAuth sign-in script (default 60)
#   E2E_AGUI_TIMEOUT=secs     limit for the AG-UI interop script (default 60)
#   E2E_AGUI_AGENT_TIMEOUT=secs  limit for the AG-UI agent-proxy script (default 60)
#   E2E_A2A_TIMEOUT=secs      limit for the A2A interop script (default 60)
#   E2E_SPIRE_TIMEOUT=secs    how long to wait for each SVID (default 60)
#   E2E_SPIRE_BUILD_TIMEOUT=secs  limit for e2e/spire/build.sh (default 1800)
#   SAG_SPIRE_CACHE=dir       where e2e/spire/build.sh caches SPIRE (default ~/.cache/sag/spire-v1.13.3;
#                             a cold build takes about 6 minutes)
set -euo pipefail

E2E_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$E2E_DIR/.." && pwd)"

E2E_DIRECT="${E2E_DIRECT:-0}"
E2E_UPSTREAM_STATELESS="${E2E_UPSTREAM_STATELESS:-0}"
E2E_SCENARIO="${E2E_SCENARIO:-}"
E2E_RACE="${E2E_RACE:-0}"
OUT="${E2E_OUT:-$E2E_DIR/out}"
READY_TIMEOUT="${E2E_READY_TIMEOUT:-30}"
CONFORMANCE_TIMEOUT="${E2E_CONFORMANCE_TIMEOUT:-600}"
EXPECTED_FAILURES="$E2E_DIR/conformance-expected-failures.yml"

DPOP_TIMEOUT="${E2E_DPOP_TIMEOUT:-60}"
OAUTH_TIMEOUT="${E2E_OAUTH_TIMEOUT:-60}"
AGUI_TIMEOUT="${E2E_AGUI_TIMEOUT:-60}"
AGUI_AGENT_TIMEOUT="${E2E_AGUI_AGENT_TIMEOUT:-60}"
A2A_TIMEOUT="${E2E_A2A_TIMEOUT:-60}"
SPIRE_SVID_TIMEOUT="${E2E_SPIRE_TIMEOUT:-60}"
SPIRE_BUILD_TIMEOUT="${E2E_SPIRE_BUILD_TIMEOUT:-1800}"

RUN_CONFORMANCE=0
RUN_INSPECTOR=0
RUN_DPOP=0
RUN_OAUTH=0
RUN_AGUI=0
RUN_AGUI_AGENT=0
RUN_A2A=0
RUN_SPIRE=0
RUN_CONSOLE=0
if [[ $# -eq 0 ]]; then
  RUN_CONSOLE=1
  RUN_CONFORMANCE=1
  RUN_INSPECTOR=1
  RUN_DPOP=1
  RUN_OAUTH=1
  RUN_AGUI=1
  RUN_AGUI_AGENT=1
  RUN_A2A=1
  RUN_SPIRE=1
fi
for part in "$@"; do
  case "$part" in
    conformance) RUN_CONFORMANCE=1 ;;
    inspector) RUN_INSPECTOR=1 ;;
    dpop) RUN_DPOP=1 ;;
    oauth) RUN_OAUTH=1 ;;
    agui) RUN_AGUI=1 ;;
    agui-agent) RUN_AGUI_AGENT=1 ;;
    a2a) RUN_A2A=1 ;;
    spire) RUN_SPIRE=1 ;;
    console) RUN_CONSOLE=1 ;;
    -h | --help) sed -n '2,/^set -euo pipefail$/{/^#/p}' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "e2e: unknown part '$part' (want: conformance, inspector, dpop, oauth, agui, agui-agent, a2a, spire, console)" >&2; exit 2 ;;
  esac
done
GATEWAY_ONLY_SKIPPED=()
if [[ "$E2E_DIRECT" == 1 && $RUN_DPOP == 1 ]]; then
  RUN_DPOP=0
  GATEWAY_ONLY_SKIPPED+=(dpop)
fi
if [[ "$E2E_DIRECT" == 1 && $RUN_OAUTH == 1 ]]; then
  RUN_OAUTH=0
  GATEWAY_ONLY_SKIPPED+=(oauth)
fi
if [[ "$E2E_DIRECT" == 1 && $RUN_AGUI == 1 ]]; then
  RUN_AGUI=0
  GATEWAY_ONLY_SKIPPED+=(agui)
fi
if [[ "$E2E_DIRECT" == 1 && $RUN_AGUI_AGENT == 1 ]]; then
  RUN_AGUI_AGENT=0
  GATEWAY_ONLY_SKIPPED+=(agui-agent)
fi
if [[ "$E2E_DIRECT" == 1 && $RUN_A2A == 1 ]]; then
  RUN_A2A=0
  GATEWAY_ONLY_SKIPPED+=(a2a)
fi
if [[ "$E2E_DIRECT" == 1 && $RUN_CONSOLE == 1 ]]; then
  RUN_CONSOLE=0
  GATEWAY_ONLY_SKIPPED+=(console)
fi
if [[ "$E2E_DIRECT" == 1 && $RUN_SPIRE == 1 ]]; then
  RUN_SPIRE=0
  GATEWAY_ONLY_SKIPPED+=(spire)
fi

log() { printf '[e2e %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { printf '[e2e %s] FAIL: %s\n' "$(date +%H:%M:%S)" "$*" >&2; exit 1; }

# ---------------------------------------------------------------- cleanup --
PIDS=()
WORK=""
SPIRE_DIR=""  # spire_up's work dir (short, under /tmp: it holds unix sockets)
if [[ $RUN_SPIRE == 1 ]]; then
  # shellcheck source-path=SCRIPTDIR source=spire/lib.sh
  source "$E2E_DIR/spire/lib.sh"  # spire_up, spire_down, spire_register, spire_wait_svid
fi
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  local pid i
  for pid in "${PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    for i in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [[ -n "$SPIRE_DIR" ]]; then
    # Stops the agent, then the server (SIGTERM, SIGKILL after 10 s), also after a
    # half start; keeps their configs and logs in $OUT/spire.
    spire_down "$SPIRE_DIR" || true
    mkdir -p "$OUT/spire"
    cp -f "$SPIRE_DIR"/*.conf "$SPIRE_DIR"/*.log "$SPIRE_DIR"/bundle.pem "$OUT/spire/" 2>/dev/null || true
    rm -rf "$SPIRE_DIR"
  fi
  if [[ -n "$WORK" ]]; then rm -rf "$WORK"; fi
  if [[ $rc -eq 0 ]]; then
    log "PASS (outputs in $OUT)"
  else
    log "FAILED with exit code $rc (outputs in $OUT)"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Runs a command in directory $1 in the background (so that traps fire at once),
# records its pid for cleanup, writes its output to log file $2 and shows it live.
run_logged() {
  local dir=$1 logfile=$2
  shift 2
  : >"$logfile"
  (cd "$dir" && exec "$@") >"$logfile" 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  tail -n +1 -s 0.2 -f --pid="$pid" "$logfile" &
  local tpid=$!
  PIDS+=("$tpid")
  local rc=0
  wait "$pid" || rc=$?
  wait "$tpid" || true
  return "$rc"
}

# Starts a long-running server in the background, output to a log file.
start_bg() {
  local logfile=$1
  shift
  "$@" >"$logfile" 2>&1 &
  PIDS+=("$!")
  LAST_PID=$!
}

# Polls URL until it answers with HTTP status $want ("any" = any answer at all).
# Further arguments go to curl (e.g. -k).
wait_http() {
  local url=$1 want=$2 pid=$3 logfile=$4 code
  shift 4
  local deadline=$((SECONDS + READY_TIMEOUT))
  while ((SECONDS < deadline)); do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 30 "$logfile" >&2 || true
      die "process $pid exited before $url was ready (log: $logfile)"
    fi
    code=$(curl -s -o /dev/null -m 2 -w '%{http_code}' "$@" "$url" || true)
    if [[ "$want" == any && "$code" != 000 && -n "$code" ]] || [[ "$code" == "$want" ]]; then
      return 0
    fi
    sleep 0.2
  done
  tail -n 30 "$logfile" >&2 || true
  die "$url not ready (want $want, last status ${code:-none}) after ${READY_TIMEOUT}s (log: $logfile)"
}

# ------------------------------------------------------- node + npm deps --
NODE_BIN="$E2E_DIR/node_modules/node/bin"
NODE="$NODE_BIN/node"
STAMP="$E2E_DIR/node_modules/.sag-e2e-stamp"

ensure_node_modules() {
  local want have=""
  want=$(cat "$E2E_DIR/package.json" "$E2E_DIR/package-lock.json" | sha256sum | cut -d' ' -f1)
  [[ -f "$STAMP" ]] && have=$(cat "$STAMP")
  if [[ "$have" == "$want" && -x "$NODE" && -e "$E2E_DIR/node_modules/.bin/conformance" ]]; then
    return 0
  fi
  log "npm ci in e2e/ (node_modules missing or older than package-lock.json)"
  local t0=$SECONDS
  (cd "$E2E_DIR" && npm ci --no-audit --no-fund --loglevel=error)
  [[ -x "$NODE" ]] || die "npm ci did not install Node 22 at $NODE"
  echo "$want" >"$STAMP"
  log "npm ci done in $((SECONDS - t0))s"
}

ensure_node_modules
NODE_VERSION=$("$NODE" --version)
[[ "$NODE_VERSION" =~ ^v(2[2-9]|[3-9][0-9]) ]] || die "need Node >= 22 at $NODE, got $NODE_VERSION"
export PATH="$NODE_BIN:$PATH"
pkgver() { "$NODE" -p "require('$E2E_DIR/node_modules/$1/package.json').version"; }
log "node $NODE_VERSION, conformance $(pkgver @modelcontextprotocol/conformance), inspector $(pkgver @modelcontextprotocol/inspector), dpop $(pkgver dpop), @modelcontextprotocol/sdk $(pkgver @modelcontextprotocol/sdk), oauth4webapi $(pkgver oauth4webapi), @a2a-js/sdk $(pkgver @a2a-js/sdk)"

# free_port VAR: sets VAR to a free loopback port, different from every port
# handed out before (not in a subshell, so that USED_PORTS remembers them).
USED_PORTS=" "
free_port() {
  local p
  while :; do
    p=$("$NODE" -e 'const s=require("net").createServer();s.listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')
    [[ "$USED_PORTS" == *" $p "* ]] || break
  done
  USED_PORTS+="$p "
  printf -v "$1" '%s' "$p"
}

# ------------------------------------------------------------------ build --
rm -rf "$OUT"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/sag-e2e.XXXXXX")
mkdir -p "$WORK/home"

t0=$SECONDS
log "building the everything-server"
(cd "$ROOT" && go build -o "$WORK/everything-server" github.com/modelcontextprotocol/go-sdk/conformance/everything-server)
if [[ "$E2E_DIRECT" != 1 ]]; then
  race=()
  [[ "$E2E_RACE" == 1 ]] && race=(-race)
  log "building ./cmd/sag ${race[*]}"
  (cd "$ROOT" && go build "${race[@]}" -o "$WORK/sag" ./cmd/sag)
fi
if [[ $RUN_AGUI_AGENT == 1 ]]; then
  log "building ./fixtures/cmd/sag-fixture (the AG-UI fixture agent)"
  (cd "$ROOT" && go build -o "$WORK/sag-fixture" ./fixtures/cmd/sag-fixture)
fi
log "build done in $((SECONDS - t0))s"

# ---------------------------------------------------------------- servers --
free_port UP_PORT
if [[ "$E2E_UPSTREAM_STATELESS" == 1 ]]; then stateless=true; else stateless=false; fi
log "starting everything-server on 127.0.0.1:$UP_PORT (-stateless=$stateless)"
start_bg "$OUT/everything-server.log" "$WORK/everything-server" -http="127.0.0.1:$UP_PORT" -stateless="$stateless"
UP_PID=$LAST_PID
wait_http "http://127.0.0.1:$UP_PORT/mcp" any "$UP_PID" "$OUT/everything-server.log"

if [[ "$E2E_DIRECT" == 1 ]]; then
  TARGET="http://127.0.0.1:$UP_PORT/mcp"
  log "E2E_DIRECT=1: testing the everything-server directly at $TARGET"
  if [[ ${#GATEWAY_ONLY_SKIPPED[@]} -gt 0 ]]; then log "E2E_DIRECT=1: ${GATEWAY_ONLY_SKIPPED[*]} skipped (these parts test the gateway)"; fi
elif [[ $RUN_CONFORMANCE == 1 || $RUN_INSPECTOR == 1 ]]; then
  free_port GW_PORT
  mkdir -p "$OUT/sag-data"
  log "starting sag serve on 127.0.0.1:$GW_PORT"
  start_bg "$OUT/sag.log" "$WORK/sag" serve \
    --listen "127.0.0.1:$GW_PORT" \
    --data "$OUT/sag-data" \
    --auth open \
    --prefix none \
    --upstream "everything=http://127.0.0.1:$UP_PORT/mcp"
  GW_PID=$LAST_PID
  t0=$SECONDS
  wait_http "http://127.0.0.1:$GW_PORT/readyz" 200 "$GW_PID" "$OUT/sag.log"
  log "sag ready in $((SECONDS - t0))s"
  TARGET="http://127.0.0.1:$GW_PORT/mcp"
fi

FAILED=()

# ------------------------------------------------------------ conformance --
if [[ $RUN_CONFORMANCE == 1 ]]; then
  if [[ -n "$E2E_SCENARIO" ]]; then which=(--scenario "$E2E_SCENARIO"); else which=(--suite active); fi
  log "conformance server --url $TARGET ${which[*]}"
  t0=$SECONDS
  rc=0
  # Run from $WORK: the CLI may write a results/ directory into its cwd.
  run_logged "$WORK" "$OUT/conformance.log" \
    timeout --kill-after=10 "$CONFORMANCE_TIMEOUT" \
    "$NODE" "$E2E_DIR/node_modules/.bin/conformance" server \
    --url "$TARGET" "${which[@]}" \
    --expected-failures "$EXPECTED_FAILURES" \
    -o "$OUT/conformance" || rc=$?
  # The suite ends with "Total: N passed, M failed"; one scenario with "Passed: N/N, M failed, ...".
  total=$(grep -E '^(Total|Passed): ' "$OUT/conformance.log" | tail -n 1 || true)
  log "conformance: ${total:-no Total line} (exit $rc, $((SECONDS - t0))s)"
  if [[ $rc -ne 0 || -z "$total" ]]; then FAILED+=("conformance"); fi
fi

# -------------------------------------------------------------- inspector --
inspector() {
  # The Inspector keeps state under $HOME/.mcp-inspector: give it a private HOME.
  # Same program as `npx @modelcontextprotocol/inspector`, run with Node 22.
  HOME="$WORK/home" MCP_STORAGE_DIR="$WORK/home/storage" MCP_CATALOG_PATH="$WORK/home/mcp.json" \
    timeout --kill-after=5 120 \
    "$NODE" "$E2E_DIR/node_modules/.bin/inspector" --cli "$TARGET" --transport http "$@" </dev/null
}

if [[ $RUN_INSPECTOR == 1 ]]; then
  log "inspector --cli $TARGET --transport http --method tools/list"
  t0=$SECONDS
  rc=0
  inspector --method tools/list >"$OUT/inspector-tools-list.json" 2>"$OUT/inspector-tools-list.err" || rc=$?
  if [[ $rc -eq 0 ]] && n=$("$NODE" -e '
      const r = JSON.parse(require("fs").readFileSync(0, "utf8"));
      if (!Array.isArray(r.tools) || r.tools.length === 0) process.exit(1);
      console.log(r.tools.length);' <"$OUT/inspector-tools-list.json"); then
    log "inspector tools/list: $n tools ($((SECONDS - t0))s)"
  else
    cat "$OUT/inspector-tools-list.err" >&2
    head -c 2000 "$OUT/inspector-tools-list.json" >&2 || true
    log "inspector tools/list: FAILED (exit $rc)"
    FAILED+=("inspector tools/list")
  fi

  log "inspector --cli $TARGET --transport http --method tools/call --tool-name test_simple_text"
  rc=0
  inspector --method tools/call --tool-name test_simple_text \
    >"$OUT/inspector-tools-call.json" 2>"$OUT/inspector-tools-call.err" || rc=$?
  if [[ $rc -eq 0 ]] && "$NODE" -e '
      const r = JSON.parse(require("fs").readFileSync(0, "utf8"));
      const ok = !r.isError && Array.isArray(r.content) &&
        r.content.some((c) => c.type === "text" && c.text === "This is a simple text response for testing.");
      process.exit(ok ? 0 : 1);' <"$OUT/inspector-tools-call.json"; then
    log "inspector tools/call test_simple_text: ok"
  else
    cat "$OUT/inspector-tools-call.err" >&2
    head -c 2000 "$OUT/inspector-tools-call.json" >&2 || true
    log "inspector tools/call test_simple_text: FAILED (exit $rc)"
    FAILED+=("inspector tools/call")
  fi
fi

# ------------------------------------------------------------------- dpop --
# Two more gateways with --auth dpop (one with server nonces, from a config
# file), then e2e/dpop.mjs: proofs by npm dpop and oauth4webapi must be accepted
# and their replays refused; `sag token` mints the DPoP-bound tokens.
if [[ $RUN_DPOP == 1 ]]; then
  t0=$SECONDS
  free_port DPOP_PORT
  free_port DPOP_NONCE_PORT
  DPOP_URL="http://127.0.0.1:$DPOP_PORT"
  DPOP_NONCE_URL="http://127.0.0.1:$DPOP_NONCE_PORT"
  mkdir -p "$OUT/sag-dpop-data" "$OUT/sag-dpop-nonce-data"
  cat >"$OUT/sag-dpop-nonce.yaml" <<EOF
listen: 127.0.0.1:$DPOP_NONCE_PORT
data_dir: $OUT/sag-dpop-nonce-data
auth: dpop
identity:
  dpop_nonce: true
upstreams:
  - name: everything
    url: http://127.0.0.1:$UP_PORT/mcp
EOF
  log "starting sag serve --auth dpop on 127.0.0.1:$DPOP_PORT, and with dpop_nonce (sag-dpop-nonce.yaml) on 127.0.0.1:$DPOP_NONCE_PORT"
  start_bg "$OUT/sag-dpop.log" "$WORK/sag" serve \
    --listen "127.0.0.1:$DPOP_PORT" \
    --data "$OUT/sag-dpop-data" \
    --auth dpop \
    --upstream "everything=http://127.0.0.1:$UP_PORT/mcp"
  DPOP_PID=$LAST_PID
  start_bg "$OUT/sag-dpop-nonce.log" "$WORK/sag" serve --config "$OUT/sag-dpop-nonce.yaml"
  DPOP_NONCE_PID=$LAST_PID
  wait_http "$DPOP_URL/readyz" 200 "$DPOP_PID" "$OUT/sag-dpop.log"
  wait_http "$DPOP_NONCE_URL/readyz" 200 "$DPOP_NONCE_PID" "$OUT/sag-dpop-nonce.log"
  log "dpop gateways ready in $((SECONDS - t0))s; node e2e/dpop.mjs"
  rc=0
  SAG_BIN="$WORK/sag" \
    DPOP_URL="$DPOP_URL" DPOP_DATA="$OUT/sag-dpop-data" \
    DPOP_NONCE_URL="$DPOP_NONCE_URL" DPOP_NONCE_DATA="$OUT/sag-dpop-nonce-data" \
    run_logged "$E2E_DIR" "$OUT/dpop.log" \
    timeout --kill-after=5 "$DPOP_TIMEOUT" "$NODE" "$E2E_DIR/dpop.mjs" </dev/null || rc=$?
  total=$(grep -E '^dpop interop: ' "$OUT/dpop.log" | tail -n 1 || true)
  log "${total:-dpop interop: no summary line} (exit $rc, $((SECONDS - t0))s)"
  if [[ $rc -ne 0 || -z "$total" ]]; then FAILED+=("dpop"); fi
fi

# ------------------------------------------------------------------ oauth --
# A gateway with auth: dpop and its authorization server on (one local user,
# alice, password from `sag hash-password`; an allow-all policy), then
# e2e/oauth.mjs: the @modelcontextprotocol/sdk client registers dynamically,
# signs alice in headlessly through the sign-in and consent pages, gets a
# DPoP-bound token (its fetch adds the proofs), lists tools, and refreshes;
# then, as a second client, it identifies itself by a client ID metadata
# document (CIMD) that oauth.mjs serves over HTTPS on 127.0.0.1 with a
# self-signed certificate made here (openssl), which the gateway trusts
# (metadata_ca_file) and may fetch from a loopback address
# (metadata_allow_private): no registration, the URL is the client_id.
if [[ $RUN_OAUTH == 1 ]]; then
  t0=$SECONDS
  free_port OAUTH_PORT
  OAUTH_URL="http://127.0.0.1:$OAUTH_PORT"
  OAUTH_PASSWORD="pw-alice"
  OAUTH_CIMD_CERT="$OUT/oauth-cimd-cert.pem"
  OAUTH_CIMD_KEY="$OUT/oauth-cimd-key.pem"
  mkdir -p "$OUT/sag-oauth-data"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
    -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
    -keyout "$OAUTH_CIMD_KEY" -out "$OAUTH_CIMD_CERT" >"$OUT/oauth-cimd-openssl.log" 2>&1 ||
    die "openssl could not make the CIMD certificate (see $OUT/oauth-cimd-openssl.log)"
  hash=$(printf '%s\n' "$OAUTH_PASSWORD" | "$WORK/sag" hash-password) || die "sag hash-password failed"
  cat >"$OUT/sag-oauth-policy.yaml" <<EOF
id: e2e-oauth-allow-all
rules: [{id: all, tools: ['*'], prompts: ['*'], resources: ['*'], consent: never}]
EOF
  cat >"$OUT/sag-oauth.yaml" <<EOF
listen: 127.0.0.1:$OAUTH_PORT
data_dir: $OUT/sag-oauth-data
auth: dpop
identity:
  authorization_server:
    enabled: true
    users: [{name: alice, password_hash: "$hash", groups: [finance]}]
    metadata_allow_private: true
    metadata_ca_file: $OAUTH_CIMD_CERT
policy:
  files: [$OUT/sag-oauth-policy.yaml]
upstreams:
  - name: everything
    url: http://127.0.0.1:$UP_PORT/mcp
EOF
  log "starting sag serve --config sag-oauth.yaml (auth dpop, authorization server) on 127.0.0.1:$OAUTH_PORT"
  start_bg "$OUT/sag-oauth.log" "$WORK/sag" serve --config "$OUT/sag-oauth.yaml"
  OAUTH_PID=$LAST_PID
  wait_http "$OAUTH_URL/readyz" 200 "$OAUTH_PID" "$OUT/sag-oauth.log"
  log "oauth gateway ready in $((SECONDS - t0))s; node e2e/oauth.mjs"
  rc=0
  OAUTH_URL="$OAUTH_URL" OAUTH_USER=alice OAUTH_PASSWORD="$OAUTH_PASSWORD" \
    OAUTH_CIMD_CERT="$OAUTH_CIMD_CERT" OAUTH_CIMD_KEY="$OAUTH_CIMD_KEY" \
    run_logged "$E2E_DIR" "$OUT/oauth.log" \
    timeout --kill-after=5 "$OAUTH_TIMEOUT" "$NODE" "$E2E_DIR/oauth.mjs" </dev/null || rc=$?
  total=$(grep -E '^oauth: ' "$OUT/oauth.log" | tail -n 1 || true)
  log "${total:-oauth: no summary line} (exit $rc, $((SECONDS - t0))s)"
  if [[ $rc -ne 0 || "$total" != "oauth: ok" ]]; then FAILED+=("oauth"); fi
fi

# ------------------------------------------------------------------- agui --
# A gateway with --auth bearer (the AG-UI HttpAgent sends a bearer token, no
# DPoP proofs) and an allow-list that gives each case of e2e/agui.mjs its own
# tool of the everything-server, so that their interrupts do not meet: alice's
# calls of them need her consent (one rule allows edits, one has a 2 s
# consent_ttl), and one tool needs none. e2e/agui.mjs follows the consent
# stream with @ag-ui/client 1.0.0, makes the calls with `sag call`, answers the
# interrupts (approve, deny, edit, one per thread) or lets them vanish (the
# caller's SIGINT, expiry), and validates every event with @ag-ui/core.
if [[ $RUN_AGUI == 1 ]]; then
  t0=$SECONDS
  free_port AGUI_PORT
  AGUI_URL="http://127.0.0.1:$AGUI_PORT"
  mkdir -p "$OUT/sag-agui-data"
  cat >"$OUT/sag-agui-allow.yaml" <<EOF
id: agui-e2e
rules:
  - id: alice-needs-consent
    upstream: everything
    tools: [test_simple_text]
    principals: {users: [alice]}
    consent: always
  - id: alice-images
    upstream: everything
    tools: [test_image_content]
    principals: {users: [alice]}
    consent: never
  - id: alice-deny
    upstream: everything
    tools: [test_audio_content]
    principals: {users: [alice]}
    consent: always
  - id: alice-edits
    upstream: everything
    tools: [json_schema_2020_12_tool]
    principals: {users: [alice]}
    consent: always
    consent_edits: true
  - id: alice-cancel
    upstream: everything
    tools: [test_embedded_resource]
    principals: {users: [alice]}
    consent: always
  - id: alice-pair
    upstream: everything
    tools: [test_multiple_content_types]
    principals: {users: [alice]}
    consent: always
  - id: alice-expires
    upstream: everything
    tools: [test_tool_with_logging]
    principals: {users: [alice]}
    consent: always
    consent_ttl: 2s
EOF
  log "starting sag serve --auth bearer with consent rules (sag-agui-allow.yaml) on 127.0.0.1:$AGUI_PORT"
  start_bg "$OUT/sag-agui.log" "$WORK/sag" serve \
    --listen "127.0.0.1:$AGUI_PORT" \
    --data "$OUT/sag-agui-data" \
    --auth bearer \
    --policy "$OUT/sag-agui-allow.yaml" \
    --upstream "everything=http://127.0.0.1:$UP_PORT/mcp"
  AGUI_PID=$LAST_PID
  wait_http "$AGUI_URL/readyz" 200 "$AGUI_PID" "$OUT/sag-agui.log"
  log "agui gateway ready in $((SECONDS - t0))s; node e2e/agui.mjs"
  rc=0
  SAG_BIN="$WORK/sag" AGUI_URL="$AGUI_URL" AGUI_DATA="$OUT/sag-agui-data" \
    run_logged "$E2E_DIR" "$OUT/agui.log" \
    timeout --kill-after=5 "$AGUI_TIMEOUT" "$NODE" "$E2E_DIR/agui.mjs" </dev/null || rc=$?
  total=$(grep -E '^agui interop: ' "$OUT/agui.log" | tail -n 1 || true)
  log "${total:-agui interop: no summary line} (exit $rc, $((SECONDS - t0))s)"
  if [[ $rc -ne 0 || -z "$total" ]]; then FAILED+=("agui"); fi
fi

# ------------------------------------------------------------- agui-agent --
# SAG's AG-UI agent proxy (POST /agui/agents/{name}) in front of a real AG-UI
# agent: the sag-fixture process (-agui), whose every run says what it does,
# calls everything__test_simple_text through the gateway's MCP endpoint with
# the DPoP-bound run token SAG put in forwardedProps.sag (bound to the
# agent's own key, whose thumbprint it prints), and shows the result. A
# gateway with --auth bearer and an allow-list by which alice's calls of
# test_simple_text need her consent; the agent is registered with
# `sag upstreams add --kind agui --agent-key THUMBPRINT` (the admin token is
# read from the data directory, never on a command line). e2e/agui-agent.mjs
# runs the agent as alice with @ag-ui/client 1.0.0: interrupt, approve, deny,
# an admin kill of the run's workflow, and the audit of the agent's calls.
# alice's token (sag token) reaches it in its environment, never in a log.
if [[ $RUN_AGUI_AGENT == 1 ]]; then
  t0=$SECONDS
  free_port AGENT_GW_PORT
  free_port AGENT_FIXTURE_PORT
  AGENT_GW_URL="http://127.0.0.1:$AGENT_GW_PORT"
  AGENT_DATA="$OUT/sag-agui-agent-data"
  AGENT_NAME=helper
  AGENT_TOOL=everything__test_simple_text
  mkdir -p "$AGENT_DATA"
  cat >"$OUT/sag-agui-agent-allow.yaml" <<EOF2
id: agui-agent-e2e
rules:
  - id: alice-agent-needs-consent
    upstream: everything
    tools: [test_simple_text]
    principals: {users: [alice]}
    consent: always
EOF2
  log "starting the AG-UI fixture agent (sag-fixture -agui 127.0.0.1:$AGENT_FIXTURE_PORT -agui-tool $AGENT_TOOL)"
  start_bg "$OUT/agui-agent-fixture.log" "$WORK/sag-fixture" \
    -agui "127.0.0.1:$AGENT_FIXTURE_PORT" -agui-tool "$AGENT_TOOL"
  AGENT_FIXTURE_PID=$LAST_PID
  log "starting sag serve --auth bearer with the agent's consent rule (sag-agui-agent-allow.yaml) on 127.0.0.1:$AGENT_GW_PORT"
  start_bg "$OUT/sag-agui-agent.log" "$WORK/sag" serve \
    --listen "127.0.0.1:$AGENT_GW_PORT" \
    --data "$AGENT_DATA" \
    --auth bearer \
    --policy "$OUT/sag-agui-agent-allow.yaml" \
    --upstream "everything=http://127.0.0.1:$UP_PORT/mcp"
  AGENT_GW_PID=$LAST_PID
  # The fixture prints "listening URL" and "agent key THUMBPRINT" on stderr.
  AGENT_KEY=""
  deadline=$((SECONDS + READY_TIMEOUT))
  while ((SECONDS < deadline)); do
    AGENT_KEY=$(sed -n 's/^agent key \([A-Za-z0-9_-]\{43\}\)$/\1/p' "$OUT/agui-agent-fixture.log")
    [[ -n "$AGENT_KEY" ]] && break
    kill -0 "$AGENT_FIXTURE_PID" 2>/dev/null || break
    sleep 0.1
  done
  AGENT_RUN_URL=$(sed -n 's/^listening \(http:.*\)$/\1/p' "$OUT/agui-agent-fixture.log")
  wait_http "$AGENT_GW_URL/readyz" 200 "$AGENT_GW_PID" "$OUT/sag-agui-agent.log"
  rc=0
  if [[ -z "$AGENT_KEY" || "$AGENT_RUN_URL" != "http://127.0.0.1:$AGENT_FIXTURE_PORT/run" ]]; then
    cat "$OUT/agui-agent-fixture.log" >&2
    log "agui-agent: the fixture agent did not print its run URL and key (log: $OUT/agui-agent-fixture.log)"
    rc=1
  elif ! "$WORK/sag" upstreams add --server "$AGENT_GW_URL" --data "$AGENT_DATA" \
    --kind agui --agent-key "$AGENT_KEY" "$AGENT_NAME" "$AGENT_RUN_URL" >"$OUT/agui-agent-register.log" 2>&1; then
    cat "$OUT/agui-agent-register.log" >&2
    log "agui-agent: sag upstreams add --kind agui failed"
    rc=1
  else
    log "agui-agent: $(cat "$OUT/agui-agent-register.log")"
    AGENT_ALICE_TOKEN=$("$WORK/sag" token --data "$AGENT_DATA" --url "$AGENT_GW_URL" --sub alice 2>"$OUT/agui-agent-token.err") || rc=$?
    if [[ $rc -ne 0 || -z "${AGENT_ALICE_TOKEN:-}" ]]; then
      cat "$OUT/agui-agent-token.err" >&2
      log "agui-agent: sag token --sub alice failed (exit $rc)"
      rc=1
    fi
  fi
  if [[ $rc -ne 0 ]]; then
    FAILED+=("agui-agent")
  else
    log "agui-agent: gateway and agent ready in $((SECONDS - t0))s; node e2e/agui-agent.mjs"
    AGENT_GW_URL="$AGENT_GW_URL" AGENT_DATA="$AGENT_DATA" AGENT_GW_LOG="$OUT/sag-agui-agent.log" \
      AGENT_NAME="$AGENT_NAME" AGENT_TOOL="$AGENT_TOOL" AGENT_RUN_URL="$AGENT_RUN_URL" \
      AGENT_ALICE_TOKEN="$AGENT_ALICE_TOKEN" \
      run_logged "$E2E_DIR" "$OUT/agui-agent.log" \
      timeout --kill-after=5 "$AGUI_AGENT_TIMEOUT" "$NODE" "$E2E_DIR/agui-agent.mjs" </dev/null || rc=$?
    total=$(grep -E '^agui agent interop: ' "$OUT/agui-agent.log" | tail -n 1 || true)
    log "${total:-agui agent interop: no summary line} (exit $rc, $((SECONDS - t0))s)"
    if [[ $rc -ne 0 || -z "$total" ]]; then FAILED+=("agui-agent"); fi
  fi
  unset AGENT_ALICE_TOKEN
fi

# -------------------------------------------------------------------- a2a --
# A gateway with --auth bearer and an allow-list for e2e/a2a.mjs, in front of
# the same everything-server: alice may call test_simple_text and
# test_error_handling without consent and json_schema_2020_12_tool (which
# echoes its arguments) with her consent, bob test_simple_text; no rule allows
# test_audio_content. e2e/a2a.mjs drives the A2A endpoints with the
# @a2a-js/sdk 1.3.0 client (JSON-RPC, A2A 1.0) as alice and bob, and decides
# alice's consent requests with @ag-ui/client as agui.mjs does. The tokens
# (sag token) reach it in its environment, never on a command line or in a log.
if [[ $RUN_A2A == 1 ]]; then
  t0=$SECONDS
  free_port A2A_PORT
  A2A_URL="http://127.0.0.1:$A2A_PORT"
  mkdir -p "$OUT/sag-a2a-data"
  cat >"$OUT/sag-a2a-allow.yaml" <<EOF
id: a2a-e2e
rules:
  - id: alice-free
    upstream: everything
    tools: [test_simple_text, test_error_handling]
    principals: {users: [alice]}
    consent: never
  - id: alice-needs-consent
    upstream: everything
    tools: [json_schema_2020_12_tool]
    principals: {users: [alice]}
    consent: always
    consent_ttl: 30s
  - id: bob-free
    upstream: everything
    tools: [test_simple_text]
    principals: {users: [bob]}
    consent: never
EOF
  log "starting sag serve --auth bearer with the A2A rules (sag-a2a-allow.yaml) on 127.0.0.1:$A2A_PORT"
  start_bg "$OUT/sag-a2a.log" "$WORK/sag" serve \
    --listen "127.0.0.1:$A2A_PORT" \
    --data "$OUT/sag-a2a-data" \
    --auth bearer \
    --policy "$OUT/sag-a2a-allow.yaml" \
    --upstream "everything=http://127.0.0.1:$UP_PORT/mcp"
  A2A_PID=$LAST_PID
  wait_http "$A2A_URL/readyz" 200 "$A2A_PID" "$OUT/sag-a2a.log"
  rc=0
  A2A_ALICE_TOKEN=$("$WORK/sag" token --data "$OUT/sag-a2a-data" --url "$A2A_URL" --sub alice 2>"$OUT/a2a-token.err") &&
    A2A_BOB_TOKEN=$("$WORK/sag" token --data "$OUT/sag-a2a-data" --url "$A2A_URL" --sub bob 2>>"$OUT/a2a-token.err") || rc=$?
  if [[ $rc -ne 0 || -z "${A2A_ALICE_TOKEN:-}" || -z "${A2A_BOB_TOKEN:-}" ]]; then
    cat "$OUT/a2a-token.err" >&2
    log "a2a: sag token --sub alice / --sub bob failed (exit $rc)"
    FAILED+=("a2a")
  else
    log "a2a gateway ready in $((SECONDS - t0))s; node e2e/a2a.mjs"
    A2A_URL="$A2A_URL" A2A_ALICE_TOKEN="$A2A_ALICE_TOKEN" A2A_BOB_TOKEN="$A2A_BOB_TOKEN" \
      run_logged "$E2E_DIR" "$OUT/a2a.log" \
      timeout --kill-after=5 "$A2A_TIMEOUT" "$NODE" "$E2E_DIR/a2a.mjs" </dev/null || rc=$?
    total=$(grep -E '^a2a interop: ' "$OUT/a2a.log" | tail -n 1 || true)
    log "${total:-a2a interop: no summary line} (exit $rc, $((SECONDS - t0))s)"
    if [[ $rc -ne 0 || -z "$total" ]]; then FAILED+=("a2a"); fi
  fi
  unset A2A_ALICE_TOKEN A2A_BOB_TOKEN
fi

# ------------------------------------------------------------------ spire --
# A real SPIRE 1.13.3 server + agent (e2e/spire) issue X.509-SVIDs to two copies
# of the sag binary, told apart by path (unix:path selectors): $D/gw/sag is
# spiffe://sag.test/gateway, $D/agent/sag spiffe://sag.test/agent. The gateway
# serves HTTPS with its SVID and takes agent client certificates; alice's token
# for the agent (sag token --agent, DPoP-bound) must work over the agent's mTLS
# only.
spire_now() { date +%s.%N; }
spire_since() { awk -v a="$1" -v b="$(spire_now)" 'BEGIN { printf "%.2fs", b - a }'; }
SPIRE_PASS=0
SPIRE_FAIL=0
spire_ok() { SPIRE_PASS=$((SPIRE_PASS + 1)); log "spire: ok: $*"; }
spire_bad() { SPIRE_FAIL=$((SPIRE_FAIL + 1)); log "spire: FAIL: $*"; }

# spire_part runs the checks and counts them; when setup fails it counts a
# failure and returns early. Called as a plain command (not in `if` or `||`) so
# that set -e stays in force inside: what it expects to fail is caught explicitly.
spire_part() {
  local t0 t rc tok out code proof
  local D="$WORK/spire"
  local GW_DATA="$OUT/sag-spire-data"
  mkdir -p "$D/gw" "$D/agent" "$GW_DATA"

  t=$(spire_now)
  log "spire: bash e2e/spire/build.sh (cached in ${SAG_SPIRE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sag/spire-v1.13.3}; a cold build from the Go module proxy takes about 6 minutes)"
  # In the background through timeout(1), like the other long steps: a signal to
  # run.sh then stops the build at once (timeout signals its own process group,
  # so go build and the compilers stop too).
  rc=0
  run_logged "$ROOT" "$OUT/spire-build.log" \
    timeout --kill-after=10 "$SPIRE_BUILD_TIMEOUT" bash "$E2E_DIR/spire/build.sh" </dev/null || rc=$?
  # build.sh prints the bin dir last.
  SPIRE_BIN_DIR=$(tail -n 1 "$OUT/spire-build.log")
  if [[ $rc -ne 0 || ! -x "$SPIRE_BIN_DIR/spire-server" || ! -x "$SPIRE_BIN_DIR/spire-agent" ]]; then
    spire_bad "e2e/spire/build.sh failed (exit $rc; log: $OUT/spire-build.log)"
    return
  fi
  export SPIRE_BIN_DIR
  log "spire: timing: build.sh $(spire_since "$t") ($SPIRE_BIN_DIR)"

  # A short path of its own: it holds the unix sockets (sun_path is 108 bytes),
  # and $TMPDIR or $OUT may be long. cleanup stops SPIRE, copies the logs to
  # $OUT/spire and removes it.
  SPIRE_DIR=$(mktemp -d /tmp/sag-spire.XXXXXX)
  t0=$(spire_now)
  rc=0
  spire_up "$SPIRE_DIR" || rc=$?
  if [[ $rc -ne 0 ]]; then
    spire_bad "spire_up failed (logs in $OUT/spire)"
    return
  fi
  log "spire: timing: spire_up (server + agent healthy) $(spire_since "$t0")"

  cp "$WORK/sag" "$D/gw/sag"
  cp "$WORK/sag" "$D/agent/sag"
  t=$(spire_now)
  rc=0
  spire_register spiffe://sag.test/gateway "$D/gw/sag" &&
    spire_register spiffe://sag.test/agent "$D/agent/sag" &&
    spire_wait_svid spiffe://sag.test/gateway "$SPIRE_SVID_TIMEOUT" &&
    spire_wait_svid spiffe://sag.test/agent "$SPIRE_SVID_TIMEOUT" || rc=$?
  if [[ $rc -ne 0 ]]; then
    spire_bad "registering the gateway and the agent, or waiting for their SVIDs, failed (logs in $OUT/spire)"
    return
  fi
  spire_ok "SPIRE serves spiffe://sag.test/gateway to $D/gw/sag and spiffe://sag.test/agent to $D/agent/sag"
  log "spire: timing: register -> both SVIDs served $(spire_since "$t") (since spire_up: $(spire_since "$t0"))"

  free_port SPIRE_GW_PORT
  local base="https://127.0.0.1:$SPIRE_GW_PORT"
  local mcp="$base/mcp"
  {
    echo "listen: 127.0.0.1:$SPIRE_GW_PORT"
    echo "data_dir: $GW_DATA"
    echo "auth: dpop"
    echo "identity:"
    echo "  spiffe:"
    echo "    trust_domain: sag.test"
    echo "    workload_api: \"$SPIRE_SOCKET\""
    echo "policy:"
    echo "  files: [\"$OUT/sag-spire-allow.yaml\"]"
    echo "upstreams:"
    echo "  - name: everything"
    echo "    url: http://127.0.0.1:$UP_PORT/mcp"
  } >"$OUT/sag-spire.yaml"
  # The allow-list: only the agent's SPIFFE ID may call the upstream's tools.
  {
    echo "id: spire-e2e"
    echo "rules:"
    echo "  - id: agent-everything"
    echo "    upstream: everything"
    echo "    tools: [\"*\"]"
    echo "    principals: {agents: [spiffe://sag.test/agent]}"
    echo "    consent: never"
  } >"$OUT/sag-spire-allow.yaml"
  t=$(spire_now)
  log "spire: starting $D/gw/sag serve --config $OUT/sag-spire.yaml ($base)"
  start_bg "$OUT/sag-spire.log" "$D/gw/sag" serve --config "$OUT/sag-spire.yaml"
  local gw_pid=$LAST_PID
  # -k only here: the gateway's SVID has a URI SAN and no DNS/IP SAN, so curl
  # cannot check it by name. The sag CLI below verifies it as a SPIFFE ID.
  wait_http "$base/readyz" 200 "$gw_pid" "$OUT/sag-spire.log" -k
  log "spire: timing: gateway ready over HTTPS $(spire_since "$t")"

  # Its certificate must be its X.509-SVID, chained to SPIRE's bundle (Node's
  # TLS verifies the chain; the name check is skipped: SVIDs have no DNS/IP SAN).
  out=$("$NODE" -e '
    const tls = require("tls"), fs = require("fs");
    const s = tls.connect({ host: "127.0.0.1", port: +process.argv[1], ca: fs.readFileSync(process.argv[2]),
      checkServerIdentity: () => undefined }, () => { console.log(s.getPeerCertificate().subjectaltname); s.end() });
    s.setTimeout(5000, () => { console.error("timeout"); process.exit(1) });
    s.on("error", (e) => { console.error(e.message); process.exit(1) });' "$SPIRE_GW_PORT" "$SPIRE_BUNDLE" 2>&1 || true)
  if [[ "$out" == "URI:spiffe://sag.test/gateway" ]]; then
    spire_ok "the gateway serves HTTPS with its X.509-SVID (URI:spiffe://sag.test/gateway, chain verified with SPIRE's bundle)"
  else
    spire_bad "the gateway's certificate is not its SVID: ${out:-no certificate}"
  fi

  rc=0
  tok=$("$D/gw/sag" token --data "$GW_DATA" --url "$base" --sub alice \
    --agent spiffe://sag.test/agent --dpop-key "$D/agent.jwk" 2>"$OUT/spire-token.err") || rc=$?
  if [[ $rc -ne 0 || -z "$tok" ]]; then
    cat "$OUT/spire-token.err" >&2
    spire_bad "sag token --sub alice --agent spiffe://sag.test/agent --dpop-key failed (exit $rc)"
    return
  fi
  spire_ok "sag token: alice's token for act.sub spiffe://sag.test/agent, bound to the DPoP key $D/agent.jwk"

  # As the agent: its X.509-SVID over mTLS (it checks the gateway is in sag.test),
  # the token, DPoP proofs.
  local auth=(--workload-api "$SPIRE_SOCKET" --token "$tok" --dpop-key "$D/agent.jwk")
  t=$(spire_now)
  rc=0
  "$D/agent/sag" tools --url "$mcp" "${auth[@]}" >"$OUT/spire-tools.txt" 2>"$OUT/spire-tools.err" || rc=$?
  if [[ $rc -eq 0 ]] && grep -q '^everything__test_simple_text ' "$OUT/spire-tools.txt"; then
    spire_ok "agent: sag tools --workload-api lists $(wc -l <"$OUT/spire-tools.txt") tools ($(spire_since "$t"))"
  else
    cat "$OUT/spire-tools.err" "$OUT/spire-tools.txt" >&2
    spire_bad "agent: sag tools --workload-api (exit $rc; want everything__test_simple_text in the list)"
  fi

  t=$(spire_now)
  rc=0
  "$D/agent/sag" call --url "$mcp" "${auth[@]}" everything__test_simple_text '{}' \
    >"$OUT/spire-call.json" 2>"$OUT/spire-call.err" || rc=$?
  if [[ $rc -eq 0 ]] && grep -q 'This is a simple text response for testing.' "$OUT/spire-call.json"; then
    spire_ok "agent: sag call --workload-api everything__test_simple_text ($(spire_since "$t"))"
  else
    cat "$OUT/spire-call.err" "$OUT/spire-call.json" >&2
    spire_bad "agent: sag call --workload-api everything__test_simple_text (exit $rc)"
  fi

  # The same token and DPoP key from the gateway's binary: a valid SVID of
  # sag.test, but not the agent the token names (act.sub).
  local why="authenticated agent is not the token's actor" seen
  seen=$(grep -cF "$why" "$OUT/sag-spire.log" || true)
  t=$(spire_now)
  rc=0
  "$D/gw/sag" call --url "$mcp" "${auth[@]}" everything__test_simple_text '{}' \
    >"$OUT/spire-wrong-agent.json" 2>"$OUT/spire-wrong-agent.err" || rc=$?
  # The CLI shows the 401 as "Unauthorized" (go-sdk); the gateway logs the reason.
  if [[ $rc -ne 0 ]] && grep -qE '\b(Unauthorized|401)\b' "$OUT/spire-wrong-agent.err" &&
    (($(grep -cF "$why" "$OUT/sag-spire.log" || true) > seen)); then
    spire_ok "another workload (spiffe://sag.test/gateway) with the agent's token and key: 401, exit $rc ($(spire_since "$t")); gateway: \"$why\""
  else
    cat "$OUT/spire-wrong-agent.err" "$OUT/spire-wrong-agent.json" >&2
    grep -F 'request refused' "$OUT/sag-spire.log" >&2 || true
    spire_bad "another workload (spiffe://sag.test/gateway) with the agent's token and key: want 401 (\"$why\") and a non-zero exit, got exit $rc"
  fi

  # The agent's token with a valid DPoP proof (npm dpop, the agent's key) but no
  # client certificate at all: refused too, the token names an agent.
  rc=0
  proof=$("$NODE" "$E2E_DIR/spire/dpop-proof.mjs" "$D/agent.jwk" POST "$mcp" "$tok") || rc=$?
  code=$(curl -sk -o "$OUT/spire-no-svid.body" -D "$OUT/spire-no-svid.headers" -m 10 -w '%{http_code}' \
    -X POST "$mcp" -H "Authorization: DPoP $tok" -H "DPoP: $proof" \
    -H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream' \
    --data '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"curl","version":"1"}}}' || true)
  if [[ $rc -eq 0 && "$code" == 401 ]]; then
    spire_ok "the agent's token and proof without its X.509-SVID (curl, no client certificate): 401 $(grep -i '^www-authenticate:' "$OUT/spire-no-svid.headers" | tr -d '\r' | head -c 300)"
  else
    cat "$OUT/spire-no-svid.headers" "$OUT/spire-no-svid.body" >&2 2>/dev/null || true
    spire_bad "the agent's token and proof without its X.509-SVID: want 401, got ${code:-nothing} (proof exit $rc)"
  fi

  # Audit: the agent's call is recorded with its SPIFFE ID.
  t=$(spire_now)
  local deadline=$((SECONDS + 10)) found=""
  while ((SECONDS < deadline)); do
    # The admin API (what sag audit reads), over the gateway's HTTPS.
    curl -sk -m 10 -H "Authorization: Bearer $(cat "$GW_DATA/admin.token")" "$base/admin/audit?limit=20" \
      >"$OUT/spire-audit.jsonl" 2>"$OUT/spire-audit.err" || true
    if found=$("$NODE" -e '
        const recs = require("fs").readFileSync(0, "utf8").split("\n").filter(Boolean).map((l) => JSON.parse(l));
        const r = recs.find((r) => r.method === "tools/call" && r.tool === "everything__test_simple_text" &&
          r.spiffe_id === "spiffe://sag.test/agent");
        if (!r) process.exit(1);
        const { sub, spiffe_id, act, decision, mtls_thumbprint } = r;
        console.log(JSON.stringify({ sub, spiffe_id, act, decision, mtls_thumbprint }));' \
      <"$OUT/spire-audit.jsonl" 2>/dev/null); then
      break
    fi
    found=""
    sleep 0.5
  done
  if [[ -n "$found" ]]; then
    spire_ok "audit: the tools/call is recorded with \"spiffe_id\":\"spiffe://sag.test/agent\" ($(spire_since "$t")): $found"
  else
    cat "$OUT/spire-audit.err" "$OUT/spire-audit.jsonl" >&2
    spire_bad "audit: no tools/call record of everything__test_simple_text with \"spiffe_id\":\"spiffe://sag.test/agent\" (GET /admin/audit)"
  fi
}

if [[ $RUN_SPIRE == 1 ]]; then
  t_spire=$(spire_now)
  spire_part
  log "spire e2e: $SPIRE_PASS passed, $SPIRE_FAIL failed ($(spire_since "$t_spire"))"
  if [[ $SPIRE_FAIL -ne 0 ]]; then FAILED+=("spire"); fi
fi

# ---------------------------------------------------------------- console --
# The consent console in Debian's chromium (chromedp): sign in, approve, deny
# and edit waiting MCP calls, kill an MCP session from the graph.
if [[ $RUN_CONSOLE == 1 ]]; then
  t0=$SECONDS
  rc=0
  run_logged "$ROOT" "$OUT/chromium-install.log" bash "$E2E_DIR/chromium.sh" </dev/null || rc=$?
  if [[ $rc -ne 0 ]]; then
    log "console: e2e/chromium.sh failed (exit $rc; log: $OUT/chromium-install.log)"
    FAILED+=("console")
  else
    SAG_CHROMIUM=$(tail -n 1 "$OUT/chromium-install.log")
    log "console: go test -tags browser -run TestConsoleInBrowser ./server/ ($("$SAG_CHROMIUM" --version 2>/dev/null || echo "$SAG_CHROMIUM"))"
    SAG_CHROMIUM="$SAG_CHROMIUM" run_logged "$ROOT" "$OUT/console.log" \
      go test -tags browser -count=1 -run 'TestConsoleInBrowser' -v ./server/ </dev/null || rc=$?
    log "console: exit $rc ($((SECONDS - t0))s)"
    if [[ $rc -ne 0 ]]; then FAILED+=("console"); fi
  fi
fi

if [[ ${#FAILED[@]} -gt 0 ]]; then
  die "failed: ${FAILED[*]}"
fi
