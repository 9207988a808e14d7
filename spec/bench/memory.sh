#!/usr/bin/env bash
# memory.sh: what ferry's memory costs per idle client, and what stays
# after a burst.  127.0.0.1 only; every process started here is stopped
# by PID.  Prints:
#   idle bytes/client  RSS growth / N for N idle keep-alive clients that
#                      made one request each (N = IDLE_N, 2000)
#   RSS after burst    RSS once BURST_N clients (9000: client and upstream
#                      sockets must fit the 20 000-descriptor limit) that
#                      each fetched 64 KiB have all left
# Usage: spec/bench/memory.sh [FERRY_BIN]
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${1:-bin/ferry}
IDLE_N=${IDLE_N:-2000}
BURST_N=${BURST_N:-9000}
P_F=${P_F:-18301} P_O=${P_O:-18302} P_A=${P_A:-18303}
W=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT

wait_port() { for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }
rss_kb() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status"; }
conns() { curl -s "http://127.0.0.1:$P_A/metrics" | awk '/^ferry_connections_open / { print $2 }'; }

cat > "$W/ferry.lua" <<EOF
listen { name = "p", addr = "127.0.0.1:$P_F" }
admin { addr = "127.0.0.1:$P_A" }
log { level = "warn", access = false }
EOF
python3 spec/bench/memory_peers.py origin "$P_O" & PIDS+=($!)
"$BIN" -c "$W/ferry.lua" 2>"$W/ferry.log" & F=$!; PIDS+=($F)
wait_port "$P_O" && wait_port "$P_F" && wait_port "$P_A" || { cat "$W/ferry.log"; exit 1; }
curl -s -o /dev/null -x "http://127.0.0.1:$P_F" "http://127.0.0.1:$P_O/?n=2"

# clients N SIZE: start them, wait for "ready"; the FIFO's writer end on fd 7 holds them.
start_clients() {
  rm -f "$W/in" "$W/out"; mkfifo "$W/in"
  python3 spec/bench/memory_peers.py clients "$P_F" "$P_O" "$1" "$2" <"$W/in" >"$W/out" &
  CL=$!; PIDS+=($CL)
  exec 7>"$W/in"
  for _ in $(seq 600); do grep -q ready "$W/out" 2>/dev/null && return 0; sleep 0.1; done
  echo "clients did not get ready" >&2; return 1
}
stop_clients() {
  echo >&7; exec 7>&-
  wait "$CL" || true
}
settle() { # wait until ferry holds at most $1 connections
  for _ in $(seq 100); do [ "$(conns)" -le "$1" ] && return 0; sleep 0.1; done
}

cold=$(rss_kb "$F")
# Warm-up: the same requests on connections that then close, so the
# figure below is what holding idle clients costs, not what first use of
# the allocator and the Lua heap costs.
start_clients "$IDLE_N" 100
stop_clients
settle 1
sleep 2
base=$(rss_kb "$F")
start_clients "$IDLE_N" 100
sleep 3 # past ferry's after-burst trim (1 s after use falls)
idle=$(rss_kb "$F")
echo "idle clients:       $IDLE_N (each after one request), ferry conns $(conns)"
echo "RSS cold / warm / idle: ${cold} kB / ${base} kB / ${idle} kB"
echo "idle bytes/client:  $(( (idle - base) * 1024 / IDLE_N ))" \
  "(from cold: $(( (idle - cold) * 1024 / IDLE_N )))"
stop_clients
settle 1

start_clients "$BURST_N" 65536
peak=$(rss_kb "$F") # all connected, every answer read
stop_clients
settle 1
sleep 1
after=$(rss_kb "$F")
echo "burst clients:      $BURST_N (64 KiB each)"
echo "RSS held / after:   ${peak} kB / ${after} kB"
echo "RSS after burst:    $(( after / 1024 )) MB"
