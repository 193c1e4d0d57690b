#!/usr/bin/env bash
# Build spire-server and spire-agent v1.13.3 from the Go module proxy into a cache dir.
#
#   bash e2e/spire/build.sh          # prints the bin dir on the last line of stdout
#
# Cache: ${SAG_SPIRE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sag/spire-v1.13.3}/bin
# Idempotent: when both binaries exist and the stamp file (bin/.stamp) names this
# version and both binaries report it, nothing is built.
#
# The module proxy lists no versions of github.com/spiffe/spire, so the build goes through
# a throwaway module that requires github.com/spiffe/spire at the exact version and builds
# both commands with -mod=mod. SPIRE's own go.mod has no replace directives that matter for
# cmd/spire-server and cmd/spire-agent, so the dependency versions it pins are the ones used.
set -euo pipefail

SPIRE_VERSION=1.13.3
CACHE_DIR="${SAG_SPIRE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sag/spire-v${SPIRE_VERSION}}"
BIN_DIR="$CACHE_DIR/bin"
STAMP="$BIN_DIR/.stamp"
STAMP_TEXT="spire v${SPIRE_VERSION} (go build -trimpath -ldflags -s -w gittag)"

log() { echo "spire-build: $*" >&2; }

version_ok() {
	local bin=$1 out
	[[ -x "$bin" ]] || return 1
	# `--version` prints the version on stderr. Without the gittag ldflag below it would be
	# "1.13.3-dev-unk"; with it, exactly "1.13.3" like a release build.
	out=$("$bin" --version 2>&1) || return 1
	[[ "$out" == "$SPIRE_VERSION" ]]
}

up_to_date() {
	[[ -f "$STAMP" ]] || return 1
	[[ "$(cat "$STAMP")" == "$STAMP_TEXT" ]] || return 1
	version_ok "$BIN_DIR/spire-server" && version_ok "$BIN_DIR/spire-agent"
}

if up_to_date; then
	log "spire v${SPIRE_VERSION} already built in $BIN_DIR"
	echo "$BIN_DIR"
	exit 0
fi

command -v go >/dev/null || { log "go not found in PATH"; exit 1; }
# The sqlite3 datastore is github.com/mattn/go-sqlite3, which needs cgo: built with
# CGO_ENABLED=0 go-sqlite3 compiles to a stub that errors at run time (not tried here).
export CGO_ENABLED=1
cc=$(go env CC)
command -v "${cc%% *}" >/dev/null || { log "C compiler '$cc' not found (cgo is needed for sqlite3; apt-get install gcc)"; exit 1; }

mkdir -p "$BIN_DIR"
# One build at a time per cache dir; a waiter reuses what the first one built.
if command -v flock >/dev/null; then
	exec 9>"$CACHE_DIR/.lock"
	flock 9
	if up_to_date; then
		log "spire v${SPIRE_VERSION} built meanwhile in $BIN_DIR"
		echo "$BIN_DIR"
		exit 0
	fi
fi
TMP=$(mktemp -d "${TMPDIR:-/tmp}/sag-spire-build.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

start=$(date +%s)
log "building spire v${SPIRE_VERSION} in $TMP (cold build takes about 5 minutes)"
(
	cd "$TMP"
	# Isolate from any surrounding workspace / module settings.
	export GOWORK=off GOFLAGS=-mod=mod GO111MODULE=on
	go mod init sag.local/spirebuild >/dev/null 2>&1
	# Exact version: the proxy has no version list for spire, so @latest would fail.
	go get "github.com/spiffe/spire@v${SPIRE_VERSION}" >&2
	# Resolve the commands' transitive imports (with -mod=mod `go build` adds them too,
	# but an explicit `go get` of the packages makes failures clearer).
	go get "github.com/spiffe/spire/cmd/spire-server@v${SPIRE_VERSION}" \
		"github.com/spiffe/spire/cmd/spire-agent@v${SPIRE_VERSION}" >&2
	# -s -w: the server is ~230 MB with symbols, ~160 MB without.
	go build -mod=mod -trimpath \
		-ldflags "-s -w -X github.com/spiffe/spire/pkg/common/version.gittag=${SPIRE_VERSION}" \
		-o "$TMP/out/" \
		github.com/spiffe/spire/cmd/spire-server \
		github.com/spiffe/spire/cmd/spire-agent >&2
)
install -m 0755 "$TMP/out/spire-server" "$BIN_DIR/spire-server.new"
install -m 0755 "$TMP/out/spire-agent" "$BIN_DIR/spire-agent.new"
mv -f "$BIN_DIR/spire-server.new" "$BIN_DIR/spire-server"
mv -f "$BIN_DIR/spire-agent.new" "$BIN_DIR/spire-agent"

for b in spire-server spire-agent; do
	if ! version_ok "$BIN_DIR/$b"; then
		log "$b --version does not report $SPIRE_VERSION: $("$BIN_DIR/$b" --version 2>&1 || true)"
		exit 1
	fi
done
echo "$STAMP_TEXT" >"$STAMP"
log "built in $(($(date +%s) - start)) s: $("$BIN_DIR/spire-server" --version 2>&1)"
echo "$BIN_DIR"
