#!/usr/bin/env bash
# SAG end-to-end suite: the MCP conformance suite and an MCP Inspector CLI smoke
# test against `sag serve` in front of the go-sdk everything-server, and a DPoP
# interop test (npm dpop + oauth4webapi proofs) against `sag serve --auth dpop`.
#
# Usage: bash e2e/run.sh [conformance] [inspector] [dpop]   (default: all three)
#
# Environment:
#   E2E_DIRECT=1              test the everything-server directly (baseline), no gateway
#                             (the dpop part, which tests the gateway only, is skipped)
#   E2E_UPSTREAM_STATELESS=1  run the everything-server with -stateless=true
#                             (default -stateless=false: with conformance 0.1.16 the
#                             stateless server fails the sampling/elicitation scenarios)
#   E2E_SCENARIO=name         run one conformance scenario instead of the active suite
#   E2E_RACE=1                build sag with -race
#   E2E_OUT=dir               output directory (default e2e/out, wiped at start)
#   E2E_READY_TIMEOUT=secs    how long to wait for the servers (default 30)
#   E2E_CONFORMANCE_TIMEOUT=secs  limit for the conformance run (default 600)
#   E2E_DPOP_TIMEOUT=secs     limit for the dpop interop script (default 60)
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

RUN_CONFORMANCE=0
RUN_INSPECTOR=0
RUN_DPOP=0
if [[ $# -eq 0 ]]; then
  RUN_CONFORMANCE=1
  RUN_INSPECTOR=1
  RUN_DPOP=1
fi
for part in "$@"; do
  case "$part" in
    conformance) RUN_CONFORMANCE=1 ;;
    inspector) RUN_INSPECTOR=1 ;;
    dpop) RUN_DPOP=1 ;;
    -h | --help) sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "e2e: unknown part '$part' (want: conformance, inspector, dpop)" >&2; exit 2 ;;
  esac
done
if [[ "$E2E_DIRECT" == 1 && $RUN_DPOP == 1 ]]; then
  RUN_DPOP=0
  DPOP_SKIPPED=1
fi

log() { printf '[e2e %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { printf '[e2e %s] FAIL: %s\n' "$(date +%H:%M:%S)" "$*" >&2; exit 1; }

# ---------------------------------------------------------------- cleanup --
PIDS=()
WORK=""
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
wait_http() {
  local url=$1 want=$2 pid=$3 logfile=$4 code
  local deadline=$((SECONDS + READY_TIMEOUT))
  while ((SECONDS < deadline)); do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 30 "$logfile" >&2 || true
      die "process $pid exited before $url was ready (log: $logfile)"
    fi
    code=$(curl -s -o /dev/null -m 2 -w '%{http_code}' "$url" || true)
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
log "node $NODE_VERSION, conformance $(pkgver @modelcontextprotocol/conformance), inspector $(pkgver @modelcontextprotocol/inspector), dpop $(pkgver dpop), oauth4webapi $(pkgver oauth4webapi)"

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
  if [[ "${DPOP_SKIPPED:-0}" == 1 ]]; then log "E2E_DIRECT=1: dpop part skipped (it tests the gateway)"; fi
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

if [[ ${#FAILED[@]} -gt 0 ]]; then
  die "failed: ${FAILED[*]}"
fi
