#!/usr/bin/env bash
# shellcheck disable=SC2119 # spire_down takes an optional WORKDIR, not the script args
# Self-test of e2e/spire: build SPIRE (cached), start server + agent on loopback, give two
# copies of one probe binary different SPIFFE IDs by path, fetch X.509- and JWT-SVIDs
# through the Workload API with go-spiffe, then stop everything and check nothing is left.
#
#   bash e2e/spire/selftest.sh
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
source "$HERE/lib.sh"

pass=0 fail=0
ok() { pass=$((pass + 1)); echo "ok: $*"; }
bad() { fail=$((fail + 1)); echo "FAIL: $*"; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# Short path: the sockets live in it (sun_path is 108 bytes).
TMP=$(mktemp -d /tmp/sag-spire.XXXXXX)
cleanup() {
	local rc=$?
	spire_down
	if ((rc != 0)) && [[ -d "$TMP/spire" ]]; then
		for f in server.log agent.log; do
			[[ -f "$TMP/spire/$f" ]] && { echo "--- $f (last 40 lines)"; tail -n 40 "$TMP/spire/$f"; }
		done
	fi
	rm -rf "$TMP"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

t=$(now)
SPIRE_BIN_DIR=$(bash "$HERE/build.sh" | tail -n 1)
export SPIRE_BIN_DIR
echo "timing: build.sh $(since "$t") s"

t=$(now)
(
	cd "$HERE/svidprobe"
	GOWORK=off GOFLAGS=-mod=mod go build -trimpath -o "$TMP/a/svidprobe" .
)
mkdir -p "$TMP/b" "$TMP/c"
cp "$TMP/a/svidprobe" "$TMP/b/svidprobe"
cp "$TMP/a/svidprobe" "$TMP/c/svidprobe" # never registered
echo "timing: svidprobe build $(since "$t") s"

t0=$(now)
spire_up "$TMP/spire"
echo "timing: spire_up (server + agent healthy) $(since "$t0") s"

t=$(now)
spire_register spiffe://sag.test/agent "$TMP/a/svidprobe"
spire_register spiffe://sag.test/gateway "$TMP/b/svidprobe"
spire_wait_svid spiffe://sag.test/agent
echo "timing: register -> first SVID served $(since "$t") s"
spire_wait_svid spiffe://sag.test/gateway
echo "timing: register -> both SVIDs served $(since "$t") s (since spire_up start $(since "$t0") s)"

for pair in a:spiffe://sag.test/agent b:spiffe://sag.test/gateway; do
	dir=${pair%%:*} want=${pair#*:}
	t=$(now)
	if got=$("$TMP/$dir/svidprobe" -timeout 20s "sag-selftest-$dir"); then
		if [[ "$got" == "$want" ]]; then
			ok "$TMP/$dir/svidprobe is $got (X.509 verified against \$SPIRE_BUNDLE, JWT aud sag-selftest-$dir) in $(since "$t") s"
		else
			bad "$TMP/$dir/svidprobe is $got, want $want"
		fi
	else
		bad "$TMP/$dir/svidprobe failed"
	fi
done

# An unregistered copy of the same binary gets no identity.
if got=$("$TMP/c/svidprobe" -timeout 3s aud 2>"$TMP/c.err"); then
	bad "unregistered copy got an identity: $got"
else
	if grep -q 'no identity issued\|context deadline exceeded' "$TMP/c.err"; then
		ok "unregistered copy at another path gets no identity"
	else
		bad "unregistered copy failed oddly: $(cat "$TMP/c.err")"
	fi
fi

# The cached spire-agent binary itself (not the readiness copy) has no identity either.
if "$SPIRE_BIN_DIR/spire-agent" api fetch x509 -socketPath "$SPIRE_SOCKET_PATH" -timeout 2s >/dev/null 2>&1; then
	bad "the cached spire-agent CLI got an identity"
else
	ok "readiness twins do not leak to the cached spire-agent CLI"
fi

spid=$SPIRE_SERVER_PID apid=$SPIRE_AGENT_PID
spire_down
left=""
for pid in "$spid" "$apid"; do
	if _spire_alive "$pid"; then left+=" $pid"; fi
done
# Any process still running from this run's work dir (configs, readiness copy).
if others=$(pgrep -f -- "$TMP/" 2>/dev/null); then left+=" $others"; fi
if [[ -z "$left" ]]; then
	ok "spire_down left no spire process"
else
	bad "processes left after spire_down:$left"
fi
if [[ -S "$TMP/spire/agent.sock" ]] && "$SPIRE_BIN_DIR/spire-agent" healthcheck -socketPath "$SPIRE_SOCKET_PATH" >/dev/null 2>&1; then
	bad "agent still answers after spire_down"
fi

echo "spire-selftest: $pass passed, $fail failed"
((fail == 0))
