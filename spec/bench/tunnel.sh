#!/usr/bin/env bash
# tunnel.sh: what tunnels cost ferry, side by side with squid (CONNECT) and
# haproxy in TCP mode (a fixed backend: no CONNECT to parse, the floor of
# connection setup plus relay).  Part of make bench; runs alone as well.
#   1. tunnel setups per proxy CPU-second: connect, (CONNECT, 200,)
#      "GET /1k HTTP/1.0" through the tunnel, the answer read to the
#      origin's close, 50 at a time;
#   2. proxy CPU with 100 stalled tunnels: an origin that writes small
#      segments as fast as it can, clients that never read.
# The proxies run on CPU 0, load and origins on CPU 1, all on 127.0.0.1;
# every run is bounded in time.  FERRY_BIN picks the ferry binary.
set -u
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
FERRY_BIN=${FERRY_BIN:-$ROOT/bin/ferry}
W=$ROOT/spec/tmp/bench-tunnel
DUR=${BENCH_SECONDS:-10}
STALL_SECS=${STALL_SECONDS:-5}
rm -rf "$W"; mkdir -p "$W/www" "$W/logs"; chmod 777 "$W" "$W/logs"

P_ORIGIN=18100 P_FLOOD=18101 P_FERRY=18102 P_SQUID=18103 P_HAPROXY=18104
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done; sleep 0.3;
            for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done; }
trap cleanup EXIT

wait_port() { for _ in $(seq 1 100); do
  (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done
  echo "port $1 did not open" >&2; return 1; }

head -c 1024 /dev/zero | tr '\0' 'x' > "$W/www/1k"
gcc -O2 -o "$W/connect_rate" spec/bench/connect_rate.c || exit 1

cat > "$W/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $W/nginx.pid;
error_log $W/logs/nginx.err;
events { worker_connections 4096; }
http {
  access_log off;
  server { listen 127.0.0.1:$P_ORIGIN; root $W/www; }
}
CONF
taskset -c 1 nginx -c "$W/nginx.conf" -p "$W" & PIDS+=($!)
taskset -c 1 luajit spec/helpers/tunnel_peer.lua flood $P_FLOOD "$W/flood.status" \
  >"$W/logs/flood.log" 2>&1 & PIDS+=($!)

. "$ROOT/spec/bench/peers.sh"
bench_start_ferry "$FERRY_BIN"
bench_start_squid

cat > "$W/haproxy.cfg" <<CONF
global
  nbthread 1
defaults
  mode tcp
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend fe
  bind 127.0.0.1:$P_HAPROXY
  default_backend be
backend be
  server origin 127.0.0.1:$P_ORIGIN
CONF
taskset -c 0 haproxy -f "$W/haproxy.cfg" -db >/dev/null 2>&1 & HAPROXY_PID=$!; PIDS+=($HAPROXY_PID)

for p in $P_ORIGIN $P_FLOOD $P_FERRY $P_SQUID $P_HAPROXY; do wait_port "$p" || exit 1; done
sleep 1

HZ=$(getconf CLK_TCK)
cpu_ticks() { # PID: CPU clock ticks of the process and its children (squid's workers)
  local total=0 p
  for p in $1 $(pgrep -P "$1"); do
    total=$((total + $(awk '{print $14 + $15}' /proc/"$p"/stat 2>/dev/null || echo 0)))
  done
  echo "$total"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }

# setups PID PORT MODE -> "tunnels/s  tunnels per CPU-second  errors"
setups() {
  local t0 t1 out
  t0=$(cpu_ticks "$1")
  out=$(taskset -c 1 "$W/connect_rate" "$2" "127.0.0.1:$P_ORIGIN" 50 "$DUR" "$3")
  t1=$(cpu_ticks "$1")
  echo "$out" | awk -v d=$((t1 - t0)) -v hz="$HZ" -v s="$DUR" '{
    rate = $6; sub("/s", "", rate); cpu = d / hz;
    printf "%s %.0f %s\n", rate, (cpu > 0 ? $2 / cpu : 0), $4 }'
}

# stalled PID PORT -> CPU % of one core over STALL_SECS, once the flood has
# filled every buffer (its total stopped growing).
stalled() {
  local last=-1 now t0 t1
  taskset -c 1 "$W/connect_rate" "$2" "127.0.0.1:$P_FLOOD" 100 $((STALL_SECS + 40)) stall \
    >"$W/logs/stall-$2.txt" 2>&1 & local client=$!
  for _ in $(seq 1 120); do
    sleep 0.5
    now=$(cat "$W/flood.status" 2>/dev/null || echo 0)
    [ "$now" = "$last" ] && [ "$now" != 0 ] && break
    last=$now
  done
  t0=$(cpu_ticks "$1"); sleep "$STALL_SECS"; t1=$(cpu_ticks "$1")
  kill "$client" 2>/dev/null; wait "$client" 2>/dev/null
  awk -v d=$((t1 - t0)) -v hz="$HZ" -v s="$STALL_SECS" 'BEGIN { printf "%.1f", 100 * d / hz / s }'
}

echo "tunnels: proxies on CPU 0, load and origins on CPU 1, ${DUR}s per run"
read -r S_F C_F E_F < <(setups "$FERRY_PID" $P_FERRY relay)
read -r S_S C_S E_S < <(setups "$SQUID_PID" $P_SQUID relay)
read -r S_H C_H E_H < <(setups "$HAPROXY_PID" $P_HAPROXY raw)
printf '%-40s %10s %10s %10s\n' "tunnel setup + 1 KiB relay, 50 conns" ferry squid haproxy*
printf '%-40s %10s %10s %10s\n' "tunnels/s" "$S_F" "$S_S" "$S_H"
printf '%-40s %10s %10s %10s\n' "tunnels per proxy CPU-second" "$C_F" "$C_S" "$C_H"
printf '%-40s %10s %10s %10s\n' "ferry / other, per CPU-second" "1.00" "$(ratio "$C_F" "$C_S")" \
  "$(ratio "$C_F" "$C_H")"
printf '%-40s %10s %10s %10s\n' "errors" "$E_F" "$E_S" "$E_H"
echo "  * haproxy in TCP mode to a fixed backend: no CONNECT head to read or answer"
echo

U_F=$(stalled "$FERRY_PID" $P_FERRY)
rm -f "$W/flood.status"
U_S=$(stalled "$SQUID_PID" $P_SQUID)
printf '%-40s %10s %10s\n' "100 stalled tunnels, ${STALL_SECS}s" ferry squid
printf '%-40s %10s %10s\n' "proxy CPU, % of one core" "$U_F" "$U_S"
