#!/usr/bin/env bash
# Runs each Go fuzz target (func FuzzXxx) for $FUZZTIME (default 10s), one at a time.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
GO="${GO:-go}"
FUZZTIME="${FUZZTIME:-10s}"

# `go test -list` prints the matching names of each package, then "ok  <pkg> <time>".
listing=$("$GO" test -list '^Fuzz' ./...)
targets=()
names=()
while IFS= read -r line; do
  case "$line" in
    Fuzz*) names+=("$line") ;;
    ok*)
      pkg=$(awk '{print $2}' <<<"$line")
      for n in "${names[@]}"; do targets+=("$pkg $n"); done
      names=()
      ;;
    *) names=() ;;
  esac
done <<<"$listing"

if [[ ${#targets[@]} -eq 0 ]]; then
  echo "fuzz: no Fuzz targets found"
  exit 0
fi
echo "fuzz: ${#targets[@]} targets, $FUZZTIME each"
for t in "${targets[@]}"; do
  read -r pkg name <<<"$t"
  echo "== $pkg $name"
  "$GO" test -run='^$' -fuzz="^${name}\$" -fuzztime="$FUZZTIME" "$pkg"
done
