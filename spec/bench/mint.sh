#!/usr/bin/env bash
# mint.sh: what ferry's CA costs (core/mint.c), part of make bench; runs
# alone as well.  On CPU 0, one process at a time:
#   1. leaves minted per second and per CPU-second (`ferry ca mint
#      --bench`: issue, sign, the name-constraint check), with and
#      without name constraints;
#   2. TLS handshakes per second from the leaf cache (`ferry ca mint
#      --repeat`: both ends in one process, over a socket pair).
# FERRY_BIN picks the ferry binary; MINT_LEAVES the number of leaves.
set -u
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
FERRY_BIN=${FERRY_BIN:-$ROOT/bin/ferry}
W=$ROOT/spec/tmp/bench-mint
N=${MINT_LEAVES:-5000}
rm -rf "$W"; mkdir -p "$W"
"$FERRY_BIN" ca init "$W/plain" >/dev/null || exit 1
"$FERRY_BIN" ca init "$W/nc" --name-constraint example.com >/dev/null || exit 1

echo "ferry's CA: minting and cached handshakes (spec/bench/mint.sh, CPU 0)"
printf '%-34s %s\n' "leaves, no name constraints" \
  "$(taskset -c 0 "$FERRY_BIN" ca mint "$W/plain" bench.example.com --bench "$N")"
printf '%-34s %s\n' "leaves, name-constrained CA" \
  "$(taskset -c 0 "$FERRY_BIN" ca mint "$W/nc" bench.example.com --bench "$N")"
H=$(taskset -c 0 "$FERRY_BIN" ca mint "$W/plain" api.example.com --repeat 2000 2>&1 >/dev/null |
  sed -n 's/.*: \([0-9]*\) handshakes (both ends in this process) in \([0-9.]*\) ms/\1 \2/p')
printf '%-34s %s\n' "handshakes from the cache" \
  "$(echo "$H" | awk '{ if ($2 > 0) printf "%d in %.0f ms: %.0f per second (client and server)", $1, $2, $1 * 1000 / $2 }')"
rm -rf "$W"
