# shellcheck shell=bash
# Real SPIRE 1.13.3 server + agent on loopback for end-to-end tests. Source this file:
#
#   source e2e/spire/lib.sh
#   trap spire_down EXIT
#   spire_up "$workdir"                      # exports SPIRE_SOCKET, SPIRE_BUNDLE, SPIRE_TRUST_DOMAIN
#   spire_register spiffe://sag.test/gateway /abs/path/to/sag
#   spire_wait_svid spiffe://sag.test/gateway
#   SPIFFE_ENDPOINT_SOCKET=$SPIRE_SOCKET /abs/path/to/sag ...
#
# Call spire_up in the script's own shell (not in $(...) or a pipeline): it sets variables
# and starts the daemons as children of that shell. See README.md in this directory.
#
# Knobs (environment, read by spire_up):
#   SPIRE_BIN_DIR           use these binaries instead of running build.sh
#   SPIRE_TRUST_DOMAIN      default sag.test
#   SPIRE_LOG_LEVEL         default INFO (DEBUG shows every attestation)
#   SPIRE_X509_SVID_TTL     default 1h   (ca_ttl is 6x this: SPIRE wants ca_ttl >= 6 * SVID TTL)
#   SPIRE_JWT_SVID_TTL      default 5m
#   SPIRE_SYNC_INTERVAL     default 1s: the server's entry-cache reload interval and the agent's
#                           sync interval (both "experimental" knobs, 5s by default in SPIRE,
#                           so a new entry would take up to ~10 s to reach a workload)
#   SPIRE_START_TIMEOUT     seconds to wait for each daemon's healthcheck, default 60
#
# Exported by spire_up: SPIRE_SOCKET (unix:///abs/agent.sock, the form go-spiffe's
# workloadapi.WithAddr and SPIFFE_ENDPOINT_SOCKET take), SPIRE_SOCKET_PATH (plain path),
# SPIRE_BUNDLE (trust bundle PEM), SPIRE_TRUST_DOMAIN, SPIRE_SERVER_SOCKET, SPIRE_SERVER_PORT,
# SPIRE_AGENT_ID, SPIRE_WORKDIR, SPIRE_BIN_DIR, SPIRE_SERVER_PID, SPIRE_AGENT_PID.

SPIRE_LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

_spire_log() { echo "spire: $*" >&2; }

# _spire_free_port prints a loopback TCP port nobody listens on right now.
_spire_free_port() {
	local p i
	for ((i = 0; i < 100; i++)); do
		p=$((20000 + RANDOM % 40000))
		# Connecting to a closed loopback port fails at once (RST).
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			echo "$p"
			return 0
		fi
	done
	_spire_log "no free port found"
	return 1
}

# _spire_alive PID: true while PID runs (a zombie counts as dead).
_spire_alive() {
	local pid=$1 state
	[[ -n "$pid" ]] || return 1
	kill -0 "$pid" 2>/dev/null || return 1
	state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || return 1
	[[ "$state" != Z ]]
}

# _spire_stop PID NAME: SIGTERM, wait up to 10 s, then SIGKILL.
_spire_stop() {
	local pid=$1 name=$2 i
	[[ -n "$pid" ]] || return 0
	if _spire_alive "$pid"; then
		kill -TERM "$pid" 2>/dev/null || true
		for ((i = 0; i < 100; i++)); do
			_spire_alive "$pid" || break
			sleep 0.1
		done
		if _spire_alive "$pid"; then
			_spire_log "$name (pid $pid) ignored SIGTERM for 10 s; killing"
			kill -KILL "$pid" 2>/dev/null || true
		fi
	fi
	# Reap it when it is our child (no-op otherwise).
	wait "$pid" 2>/dev/null || true
}

_spire_tail_log() {
	local f=$1
	[[ -f "$f" ]] || return 0
	_spire_log "last lines of $f:"
	tail -n 30 "$f" >&2 || true
}

# _spire_wait_health NAME PID LOG CMD...: run CMD until it succeeds, the process dies or
# SPIRE_START_TIMEOUT passes.
_spire_wait_health() {
	local name=$1 pid=$2 log=$3
	shift 3
	local deadline=$((SECONDS + ${SPIRE_START_TIMEOUT:-60}))
	while ((SECONDS < deadline)); do
		if ! _spire_alive "$pid"; then
			_spire_log "$name exited during startup"
			_spire_tail_log "$log"
			return 1
		fi
		if "$@" >/dev/null 2>&1; then
			return 0
		fi
		sleep 0.2
	done
	_spire_log "$name not healthy after ${SPIRE_START_TIMEOUT:-60} s"
	_spire_tail_log "$log"
	return 1
}

# spire_up WORKDIR: start spire-server and spire-agent with all state, sockets, configs
# and logs (server.log, agent.log) in WORKDIR.
spire_up() {
	local wd=${1:?usage: spire_up WORKDIR}
	mkdir -p "$wd" || return 1
	wd=$(cd "$wd" && pwd -P) || return 1

	if [[ -n "${SPIRE_SERVER_PID:-}" ]] && _spire_alive "$SPIRE_SERVER_PID"; then
		_spire_log "spire_up: already running (server pid $SPIRE_SERVER_PID); call spire_down first"
		return 1
	fi

	if [[ -z "${SPIRE_BIN_DIR:-}" ]]; then
		local out
		out=$(bash "$SPIRE_LIB_DIR/build.sh") || { _spire_log "build.sh failed"; return 1; }
		SPIRE_BIN_DIR=${out##*$'\n'}
	fi
	local server="$SPIRE_BIN_DIR/spire-server" agent="$SPIRE_BIN_DIR/spire-agent"
	[[ -x "$server" && -x "$agent" ]] || { _spire_log "no spire binaries in $SPIRE_BIN_DIR"; return 1; }

	# Set early so that spire_down (e.g. from an EXIT trap) also cleans up a half start.
	SPIRE_WORKDIR=$wd
	local td=${SPIRE_TRUST_DOMAIN:-sag.test}
	local level=${SPIRE_LOG_LEVEL:-INFO}
	local x509_ttl=${SPIRE_X509_SVID_TTL:-1h} jwt_ttl=${SPIRE_JWT_SVID_TTL:-5m}
	local sync=${SPIRE_SYNC_INTERVAL:-1s}
	local ssock="$wd/server.sock" asock="$wd/agent.sock"
	# sun_path holds 108 bytes.
	if ((${#asock} > 100 || ${#ssock} > 100)); then
		_spire_log "spire_up: WORKDIR path too long for a unix socket: $wd"
		return 1
	fi
	rm -f "$ssock" "$asock"
	mkdir -p "$wd/server-data" "$wd/agent-data" "$wd/bin" || return 1

	# ca_ttl: SPIRE needs ca_ttl >= 6 * SVID TTL or it shortens SVIDs (and warns).
	local ca_ttl
	case "$x509_ttl" in
	*h) ca_ttl="$((${x509_ttl%h} * 6))h" ;;
	*m) ca_ttl="$((${x509_ttl%m} * 6))m" ;;
	*) ca_ttl=24h ;;
	esac

	local port attempt
	SPIRE_SERVER_PID=
	for ((attempt = 1; attempt <= 3; attempt++)); do
		port=$(_spire_free_port) || return 1
		cat >"$wd/server.conf" <<EOF
server {
    bind_address = "127.0.0.1"
    bind_port = "$port"
    socket_path = "$ssock"
    trust_domain = "$td"
    data_dir = "$wd/server-data"
    log_level = "$level"
    ca_ttl = "$ca_ttl"
    default_x509_svid_ttl = "$x509_ttl"
    default_jwt_svid_ttl = "$jwt_ttl"
    experimental {
        # How often the in-memory entry cache is rebuilt from the datastore (default 5s).
        cache_reload_interval = "$sync"
    }
}

plugins {
    DataStore "sql" {
        plugin_data {
            database_type = "sqlite3"
            connection_string = "$wd/server-data/datastore.sqlite3"
        }
    }
    NodeAttestor "join_token" {
        plugin_data {}
    }
    KeyManager "memory" {
        plugin_data {}
    }
}
EOF
		"$server" run -config "$wd/server.conf" >>"$wd/server.log" 2>&1 </dev/null &
		SPIRE_SERVER_PID=$!
		echo "$SPIRE_SERVER_PID" >"$wd/server.pid"
		if _spire_wait_health spire-server "$SPIRE_SERVER_PID" "$wd/server.log" \
			"$server" healthcheck -socketPath "$ssock"; then
			break
		fi
		_spire_stop "$SPIRE_SERVER_PID" spire-server
		SPIRE_SERVER_PID=
		if ! grep -q 'address already in use' "$wd/server.log" 2>/dev/null; then
			return 1
		fi
		_spire_log "port $port taken meanwhile; retrying"
		: >"$wd/server.log"
	done
	[[ -n "$SPIRE_SERVER_PID" ]] || return 1
	SPIRE_SERVER_PORT=$port

	# Trust bundle for the agent's bootstrap and for tests (verify X.509-SVIDs, mTLS).
	"$server" bundle show -socketPath "$ssock" -format pem >"$wd/bundle.pem" ||
		{ _spire_log "bundle show failed"; return 1; }

	local tokout token
	tokout=$("$server" token generate -socketPath "$ssock" -ttl 600) ||
		{ _spire_log "token generate failed"; return 1; }
	token=$(sed -n 's/^Token: *//p' <<<"$tokout")
	[[ -n "$token" ]] || { _spire_log "no token in: $tokout"; return 1; }
	SPIRE_AGENT_ID="spiffe://$td/spire/agent/join_token/$token"

	cat >"$wd/agent.conf" <<EOF
agent {
    data_dir = "$wd/agent-data"
    log_level = "$level"
    server_address = "127.0.0.1"
    server_port = "$port"
    socket_path = "$asock"
    trust_bundle_path = "$wd/bundle.pem"
    trust_domain = "$td"
    join_token = "$token"
    experimental {
        # How often the agent fetches its entries and SVIDs from the server (default 5s).
        sync_interval = "$sync"
    }
}

plugins {
    NodeAttestor "join_token" {
        plugin_data {}
    }
    KeyManager "memory" {
        plugin_data {}
    }
    WorkloadAttestor "unix" {
        plugin_data {
            # unix:path:<binary> selectors, so that copies of one binary at different
            # paths get different SVIDs. workload_size_limit = -1 skips the unix:sha256
            # selector, which would otherwise hash the whole binary at every attestation.
            discover_workload_path = true
            workload_size_limit = -1
        }
    }
}
EOF
	"$agent" run -config "$wd/agent.conf" >>"$wd/agent.log" 2>&1 </dev/null &
	SPIRE_AGENT_PID=$!
	echo "$SPIRE_AGENT_PID" >"$wd/agent.pid"
	_spire_wait_health spire-agent "$SPIRE_AGENT_PID" "$wd/agent.log" \
		"$agent" healthcheck -socketPath "$asock" || return 1

	# A copy of spire-agent at a path of its own, used only as the readiness probe of
	# spire_wait_svid (see there). A hard link when the cache is on the same filesystem.
	ln -f "$agent" "$wd/bin/spire-ready" 2>/dev/null || cp -f "$agent" "$wd/bin/spire-ready" || return 1

	SPIRE_WORKDIR=$wd
	SPIRE_SOCKET_PATH=$asock
	SPIRE_SOCKET="unix://$asock"
	SPIRE_BUNDLE="$wd/bundle.pem"
	SPIRE_TRUST_DOMAIN=$td
	SPIRE_SERVER_SOCKET=$ssock
	export SPIRE_WORKDIR SPIRE_SOCKET SPIRE_SOCKET_PATH SPIRE_BUNDLE SPIRE_TRUST_DOMAIN \
		SPIRE_SERVER_SOCKET SPIRE_SERVER_PORT SPIRE_AGENT_ID SPIRE_BIN_DIR \
		SPIRE_SERVER_PID SPIRE_AGENT_PID
	_spire_log "up: server 127.0.0.1:$port (pid $SPIRE_SERVER_PID), agent pid $SPIRE_AGENT_PID, socket $SPIRE_SOCKET"
}

# spire_down: stop the agent and the server started by spire_up (safe to call twice, and
# from an EXIT trap). With WORKDIR, stops the daemons recorded in WORKDIR/*.pid instead.
spire_down() {
	local wd=${1:-${SPIRE_WORKDIR:-}} apid=${SPIRE_AGENT_PID:-} spid=${SPIRE_SERVER_PID:-}
	if [[ -n "${1:-}" ]]; then
		apid=$(cat "$wd/agent.pid" 2>/dev/null || true)
		spid=$(cat "$wd/server.pid" 2>/dev/null || true)
	fi
	_spire_stop "$apid" spire-agent
	_spire_stop "$spid" spire-server
	[[ -n "$wd" ]] && rm -f "$wd/agent.pid" "$wd/server.pid"
	SPIRE_AGENT_PID='' SPIRE_SERVER_PID=''
	return 0
}

# _spire_entry_create ARGS...: `entry create` that tolerates an identical existing entry.
_spire_entry_create() {
	local out
	if out=$("$SPIRE_BIN_DIR/spire-server" entry create -socketPath "$SPIRE_SERVER_SOCKET" "$@" 2>&1); then
		return 0
	fi
	if [[ "$out" == *"similar entry already exists"* || "$out" == *AlreadyExists* ]]; then
		return 0
	fi
	_spire_log "entry create $* failed: $out"
	return 1
}

# spire_register SPIFFE_ID BINARY_PATH [ENTRY_CREATE_FLAGS...]: register a workload entry,
# parent = this agent, selector unix:path:<BINARY_PATH> (symlinks resolved, as the agent
# sees /proc/PID/exe). Extra flags go to `spire-server entry create` (e.g. -x509SVIDTTL 300,
# -dns name). JWT-SVIDs need no extra setup.
#
# It also registers a readiness twin: the same SPIFFE ID for the selector
# unix:path:$SPIRE_WORKDIR/bin/spire-ready, the private spire-agent copy that
# spire_wait_svid runs. Only that copy gets the twin identities; the spire-agent binary in
# the cache dir and every other program stay unregistered. The twin gets no -hint: the
# agent serves a workload at most one SVID per hint ("Ignoring entry with duplicate hint"),
# so a shared hint would hide every twin but one.
spire_register() {
	local id=${1:?usage: spire_register SPIFFE_ID BINARY_PATH} bin=${2:?usage: spire_register SPIFFE_ID BINARY_PATH}
	shift 2
	[[ -n "${SPIRE_SERVER_SOCKET:-}" ]] || { _spire_log "spire_register: spire_up first"; return 1; }
	[[ "$bin" == /* ]] || bin="$PWD/$bin"
	bin=$(readlink -m "$bin")
	_spire_entry_create -parentID "$SPIRE_AGENT_ID" -spiffeID "$id" -selector "unix:path:$bin" "$@" || return 1
	_spire_entry_create -parentID "$SPIRE_AGENT_ID" -spiffeID "$id" \
		-selector "unix:path:$(readlink -m "$SPIRE_WORKDIR/bin/spire-ready")" "$@" || return 1
}

# spire_wait_svid SPIFFE_ID [TIMEOUT_SECONDS=60]: wait until the agent serves an X.509-SVID
# for SPIFFE_ID.
#
# The Workload API attests the calling process, so `spire-agent api fetch` returns the
# CLI's own identities, not the target workload's. We therefore run the fetch through
# $SPIRE_WORKDIR/bin/spire-ready, which spire_register gave the same SPIFFE ID (the
# readiness twin entry, created right after the real one). Once the agent serves the twin's
# SVID it has synced the entries up to it, so the real entry too; the workload's own first
# fetch still attests it and may block briefly while the agent signs its SVID (go-spiffe's
# X509Source waits for that).
spire_wait_svid() {
	local id=${1:?usage: spire_wait_svid SPIFFE_ID [TIMEOUT]} timeout=${2:-60}
	local deadline=$((SECONDS + timeout)) out
	while ((SECONDS < deadline)); do
		if out=$("$SPIRE_WORKDIR/bin/spire-ready" api fetch x509 -socketPath "$SPIRE_SOCKET_PATH" -timeout 2s 2>&1); then
			if grep -qxF "SPIFFE ID:		$id" <<<"$out"; then
				return 0
			fi
		fi
		if ! _spire_alive "${SPIRE_AGENT_PID:-}"; then
			_spire_log "spire_wait_svid: spire-agent is not running"
			_spire_tail_log "$SPIRE_WORKDIR/agent.log"
			return 1
		fi
		sleep 0.5
	done
	_spire_log "spire_wait_svid: no SVID for $id after $timeout s; last fetch: $out"
	_spire_tail_log "$SPIRE_WORKDIR/agent.log"
	return 1
}
