#!/usr/bin/env bash
# Makes sure Debian's chromium is installed for the consent console's browser
# test (server/console_browser_test.go); installs it with apt-get when it is
# missing (as root, or through sudo). Prints the browser's path last.
set -euo pipefail

BIN="${SAG_CHROMIUM:-/usr/bin/chromium}"
if [[ -x "$BIN" ]]; then
  echo "$BIN"
  exit 0
fi
if [[ -n "${SAG_CHROMIUM:-}" ]]; then
  echo "chromium.sh: SAG_CHROMIUM=$BIN is not an executable" >&2
  exit 1
fi
SUDO=()
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null || { echo "chromium.sh: $BIN is missing; install Debian's chromium (apt-get install chromium) as root" >&2; exit 1; }
  SUDO=(sudo -n)
fi
echo "chromium.sh: installing Debian's chromium (apt-get)" >&2
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq >&2
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends chromium >&2
[[ -x "$BIN" ]] || { echo "chromium.sh: apt-get did not install $BIN" >&2; exit 1; }
echo "$BIN"
