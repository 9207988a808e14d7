#!/usr/bin/env bash
# make bench: ferry side by side with squid, tinyproxy and haproxy, in one run.
#
# The proxy under test is pinned to CPU 0; the load (wrk, curl, the
# connect-rate client) and the nginx origin to CPU 1.  Everything
# listens on 127.0.0.1 and every load loop is bounded in time.
set -u
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
# The build under test (an older one for an A/B run); the scripts run.sh
# calls read it too.
export FERRY_BIN=${FERRY_BIN:-$ROOT/bin/ferry}
W=$ROOT/spec/tmp/bench
DUR=${BENCH_SECONDS:-10}
rm -rf "$W"; mkdir -p "$W/www" "$W/logs"; chmod 777 "$W" "$W/logs"

P_ORIGIN=18080 P_FERRY=18081 P_SQUID=18082 P_TINY=18083 P_HAPROXY=18084
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done; sleep 0.3;
            for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done; }
trap cleanup EXIT

wait_port() { for _ in $(seq 1 100); do
  (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done
  echo "port $1 did not open" >&2; return 1; }

head -c 1024 /dev/zero | tr '\0' 'x' > "$W/www/1k"
truncate -s 1G "$W/www/1g"
gcc -O2 -o "$W/connect_rate" spec/bench/connect_rate.c || exit 1

cat > "$W/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $W/nginx.pid;
error_log $W/logs/nginx.err;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$P_ORIGIN; root $W/www; }
}
CONF
taskset -c 1 nginx -c "$W/nginx.conf" -p "$W" & PIDS+=($!)

. "$ROOT/spec/bench/peers.sh"
bench_start_ferry "$FERRY_BIN"
bench_start_squid

cat > "$W/tinyproxy.conf" <<CONF
Port $P_TINY
Listen 127.0.0.1
Timeout 60
MaxClients 200
Allow 127.0.0.1
DisableViaHeader Yes
LogLevel Critical
CONF
taskset -c 0 tinyproxy -d -c "$W/tinyproxy.conf" >/dev/null 2>&1 & TINY_PID=$!; PIDS+=($TINY_PID)

cat > "$W/haproxy.cfg" <<CONF
global
  nbthread 1
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
frontend fe
  bind 127.0.0.1:$P_HAPROXY
  default_backend be
backend be
  http-reuse always
  server origin 127.0.0.1:$P_ORIGIN
CONF
taskset -c 0 haproxy -f "$W/haproxy.cfg" -db >/dev/null 2>&1 & HAPROXY_PID=$!; PIDS+=($HAPROXY_PID)

for p in $P_ORIGIN $P_FERRY $P_SQUID $P_TINY $P_HAPROXY; do wait_port "$p" || exit 1; done
sleep 1
FERRY_IDLE_RSS=$(ps -o rss= -p "$FERRY_PID" | tr -d ' ')

cat > "$W/absolute.lua" <<CONF
wrk.path = "http://127.0.0.1:$P_ORIGIN/1k"
CONF

# CPU time (clock ticks) a process tree has used: the proxy and its workers.
cpu_ticks() {
  local total=0 p
  for p in $1 $(pgrep -P "$1"); do
    total=$((total + $(awk '{print $14 + $15}' /proc/"$p"/stat 2>/dev/null || echo 0)))
  done
  echo "$total"
}
HZ=$(getconf CLK_TCK)
# rps_cpu PID url [script]: requests/s, and the proxy's CPU use in % of one core.
rps_cpu() {
  local pid=$1 t0 t1 r
  shift
  t0=$(cpu_ticks "$pid")
  r=$(rps "$@")
  t1=$(cpu_ticks "$pid")
  echo "$r $(awk -v d=$((t1 - t0)) -v hz="$HZ" -v s="$DUR" 'BEGIN { printf "%.0f", 100 * d / hz / s }')"
}

rps() { # url [script]
  local out script=${2:-}
  if [ -n "$script" ]; then out=$(taskset -c 1 wrk -t1 -c50 -d"${DUR}"s -s "$script" "$1" 2>&1)
  else out=$(taskset -c 1 wrk -t1 -c50 -d"${DUR}"s "$1" 2>&1); fi
  echo "$out" > "$W/logs/wrk-$(echo "$1$script" | md5sum | cut -c1-8).txt"
  local non2xx; non2xx=$(echo "$out" | awk '/Non-2xx/ {print $NF}')
  [ -n "$non2xx" ] && echo "warning: $1: $non2xx non-2xx responses" >&2
  echo "$out" | awk '/Requests\/sec/ {printf "%.0f", $2}'
}
tunnel_bps() { # proxy port -> bytes/s through one CONNECT tunnel of 1 GiB, best of 3
  local best=0 v
  for _ in 1 2 3; do
    v=$(taskset -c 1 curl -s -p -x "http://127.0.0.1:$1" --max-time 60 -o /dev/null \
      -w '%{speed_download}' "http://127.0.0.1:$P_ORIGIN/1g" 2>/dev/null | cut -d. -f1)
    [ "${v:-0}" -gt "$best" ] && best=$v
  done
  echo "$best"
}
tunnel_rate() {
  taskset -c 1 "$W/connect_rate" "$1" "127.0.0.1:$P_ORIGIN" 50 "$DUR" | awk '{print $6}' | tr -d '/s'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
gbs() { awk -v a="$1" 'BEGIN { printf "%.2f GB/s", a / 1e9 }'; }

# Warm the page cache so the first tunnel run is not charged for it.
taskset -c 1 curl -s --max-time 60 -o /dev/null "http://127.0.0.1:$P_ORIGIN/1g"

echo "ferry bench: proxies on CPU 0, load and origin on CPU 1, ${DUR}s per run (tunnels: best of 3)"
echo
read -r R_FERRY U_FERRY < <(rps_cpu "$FERRY_PID" "http://127.0.0.1:$P_FERRY/" "$W/absolute.lua")
read -r R_SQUID U_SQUID < <(rps_cpu "$SQUID_PID" "http://127.0.0.1:$P_SQUID/" "$W/absolute.lua")
read -r R_TINY U_TINY < <(rps_cpu "$TINY_PID" "http://127.0.0.1:$P_TINY/" "$W/absolute.lua")
read -r R_HAPROXY U_HAPROXY < <(rps_cpu "$HAPROXY_PID" "http://127.0.0.1:$P_HAPROXY/1k")
R_NGINX=$(rps "http://127.0.0.1:$P_ORIGIN/1k")
printf '%-34s %10s %10s %10s %10s %10s\n' "absolute-form GET 1 KiB, 50 conns" ferry squid tinyproxy haproxy* nginx**
printf '%-34s %10s %10s %10s %10s %10s\n' "requests/s" "$R_FERRY" "$R_SQUID" "$R_TINY" "$R_HAPROXY" "$R_NGINX"
printf '%-34s %10s %10s %10s %10s\n' "ferry / other" "1.00" "$(ratio "$R_FERRY" "$R_SQUID")" \
  "$(ratio "$R_FERRY" "$R_TINY")" "$(ratio "$R_FERRY" "$R_HAPROXY")"
printf '%-34s %10s %10s %10s %10s\n' "proxy CPU, % of its core" "$U_FERRY" "$U_SQUID" "$U_TINY" "$U_HAPROXY"
# Requests per CPU-second: what each proxy could do with its core to itself.
per_cpu() { awk -v r="$1" -v u="$2" 'BEGIN { if (u > 0) printf "%.0f", r * 100 / u; else print "n/a" }'; }
P_F=$(per_cpu "$R_FERRY" "$U_FERRY"); P_S=$(per_cpu "$R_SQUID" "$U_SQUID")
P_T=$(per_cpu "$R_TINY" "$U_TINY"); P_H=$(per_cpu "$R_HAPROXY" "$U_HAPROXY")
printf '%-34s %10s %10s %10s %10s\n' "requests per CPU-second" "$P_F" "$P_S" "$P_T" "$P_H"
printf '%-34s %10s %10s %10s %10s\n' "ferry / other, per CPU-second" "1.00" "$(ratio "$P_F" "$P_S")" \
  "$(ratio "$P_F" "$P_T")" "$(ratio "$P_F" "$P_H")"
echo "  * haproxy as a reverse proxy (origin-form), the practical ceiling; ** the origin alone"
echo

T_FERRY=$(tunnel_bps $P_FERRY); T_SQUID=$(tunnel_bps $P_SQUID); T_TINY=$(tunnel_bps $P_TINY)
T_NONE=0
for _ in 1 2 3; do
  v=$(taskset -c 1 curl -s --max-time 60 -o /dev/null -w '%{speed_download}' \
    "http://127.0.0.1:$P_ORIGIN/1g" | cut -d. -f1)
  [ "${v:-0}" -gt "$T_NONE" ] && T_NONE=$v
done
printf '%-34s %10s %10s %10s %10s\n' "CONNECT, one 1 GiB tunnel" ferry squid tinyproxy "no proxy*"
printf '%-34s %10s %10s %10s %10s\n' "throughput" "$(gbs "$T_FERRY")" "$(gbs "$T_SQUID")" \
  "$(gbs "$T_TINY")" "$(gbs "$T_NONE")"
printf '%-34s %10s %10s %10s %10s\n' "ferry / other" "1.00" "$(ratio "$T_FERRY" "$T_SQUID")" \
  "$(ratio "$T_FERRY" "$T_TINY")" "$(ratio "$T_FERRY" "$T_NONE")"
echo "  * curl straight from nginx on the load core: the most this setup can show"
echo

C_FERRY=$(tunnel_rate $P_FERRY); C_SQUID=$(tunnel_rate $P_SQUID); C_TINY=$(tunnel_rate $P_TINY)
printf '%-34s %10s %10s %10s\n' "CONNECT setups/s, 50 conns" ferry squid tinyproxy
printf '%-34s %10s %10s %10s\n' "tunnels/s" "$C_FERRY" "$C_SQUID" "$C_TINY"
printf '%-34s %10s %10s %10s\n' "ferry / other" "1.00" "$(ratio "$C_FERRY" "$C_SQUID")" "$(ratio "$C_FERRY" "$C_TINY")"
echo
FERRY_RSS=$(ps -o rss= -p "$FERRY_PID" | tr -d ' ')
echo "ferry RSS: idle ${FERRY_IDLE_RSS} KiB, after the runs ${FERRY_RSS} KiB"
echo
. "$ROOT/spec/bench/health.sh"
echo "targets: requests/s >= 4x squid ($(ratio "$R_FERRY" "$R_SQUID")x), tunnel >= 2x squid" \
  "($(ratio "$T_FERRY" "$T_SQUID")x), setups >= tinyproxy ($(ratio "$C_FERRY" "$C_TINY")x)," \
  "idle RSS < 10240 KiB (${FERRY_IDLE_RSS})"
echo
. "$ROOT/spec/bench/metrics.sh"
. "$ROOT/spec/bench/broker.sh"
echo
echo "memory: idle bytes per keep-alive client, RSS after a burst (spec/bench/memory.sh)"
"$ROOT/spec/bench/memory.sh" "$FERRY_BIN" || echo "memory bench failed"
# Tunnels against haproxy (TCP mode) and squid: its own processes and ports.
"$ROOT/spec/bench/tunnel.sh"
echo
# SOCKS5 against dante and microsocks; chains through an upstream proxy
# (pools on and off, https:// upstreams): their own processes and ports.
"$ROOT/spec/bench/socks.sh"
echo
"$ROOT/spec/bench/chain.sh"
echo
# Ferry's CA: leaves minted per CPU-second, handshakes from the leaf cache.
"$ROOT/spec/bench/mint.sh"
