#!/usr/bin/env bash
# Makes sure Debian's postgresql is installed for the PostgreSQL store's
# tests (internal/pgtest starts a throwaway server from it); installs it with
# apt-get when it is missing (as root, or through sudo). Prints the
# directory of the server's programs last.
set -euo pipefail

find_bin() {
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}
BIN="$(find_bin)"
if [[ -n "$BIN" && -x "$BIN/postgres" && -x "$BIN/initdb" ]]; then
  echo "$BIN"
  exit 0
fi
SUDO=()
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null || { echo "postgres.sh: PostgreSQL is missing; install Debian's postgresql (apt-get install postgresql) as root" >&2; exit 1; }
  SUDO=(sudo -n)
fi
echo "postgres.sh: installing Debian's postgresql (apt-get)" >&2
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq >&2
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends postgresql >&2
BIN="$(find_bin)"
[[ -n "$BIN" && -x "$BIN/postgres" ]] || { echo "postgres.sh: apt-get did not install postgres" >&2; exit 1; }
echo "$BIN"
