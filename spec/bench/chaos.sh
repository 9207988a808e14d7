#!/usr/bin/env bash
# make chaos: ferry in front of a pool of four real upstream proxies (two
# tinyproxy, two microsocks) and an nginx origin, under a steady load of
# idempotent GETs, while two upstreams are killed (SIGKILL) and one is
# stopped (SIGSTOP) and later resumed (SIGCONT).  A benchmark, not a
# timed test: it prints what happened and exits non-zero unless it is
# clean, i.e.
#   - no client-visible error (a non-200 answer, a wrong body, a lost or
#     timed-out request), and
#   - ferry's outcome counter (ferry_requests_total of the load listener,
#     summed over its labels) equals the requests the clients sent.
# It also prints ferry's RSS before and after, and ferry's CPU while
# CHAOS_TUNNELS silent CONNECT tunnels are held CHAOS_HOLD seconds.
#
# Knobs: CHAOS_SECONDS (60), CHAOS_RATE requests/s (500), CHAOS_CONNS
# keep-alive client connections (64), CHAOS_TUNNELS (100), CHAOS_HOLD (5),
# CHAOS_RETRIES of the pool (3; 0 shows what the retries save); FERRY_BIN
# (bin/ferry) to run another build.
#
# ferry is pinned to CPU 0; the load, the upstreams and the origin to CPU 1.
# Everything listens on 127.0.0.1, every wait is bounded, and every
# process this script starts is stopped by its PID on exit.
set -u
cd "$(dirname "$0")/../.." || exit 2
ROOT=$(pwd)
W=$ROOT/spec/tmp/chaos
DUR=${CHAOS_SECONDS:-60}
RATE=${CHAOS_RATE:-500}
CONNS=${CHAOS_CONNS:-64}
TUNNELS=${CHAOS_TUNNELS:-100}
HOLD=${CHAOS_HOLD:-5}
RETRIES=${CHAOS_RETRIES:-3}
FERRY=${FERRY_BIN:-$ROOT/bin/ferry} # another build, for an A/B run
range() { # NAME VALUE MIN MAX
  case $2 in ''|*[!0-9]*) echo "chaos: $1 must be a whole number (got '$2')" >&2; exit 2 ;; esac
  if [ "$2" -lt "$3" ] || [ "$2" -gt "$4" ]; then echo "chaos: $1 must be $3..$4" >&2; exit 2; fi
}
range CHAOS_SECONDS "$DUR" 10 3600; range CHAOS_RATE "$RATE" 0 100000
range CHAOS_CONNS "$CONNS" 1 1000; range CHAOS_TUNNELS "$TUNNELS" 1 1000
range CHAOS_HOLD "$HOLD" 1 600; range CHAOS_RETRIES "$RETRIES" 0 8
rm -rf "$W"; mkdir -p "$W/www" "$W/logs"; chmod 777 "$W" "$W/logs"

PIDS=()
# Only children of this shell are signalled: a PID that was reaped and
# reused by another process is left alone.
# shellcheck disable=SC2317  # also run by the EXIT trap
ours() { [ "$(ps -o ppid= -p "$1" 2>/dev/null | tr -d ' ')" = "$$" ]; }
# shellcheck disable=SC2317  # run by the EXIT trap
cleanup() {
  local p alive
  for p in "${PIDS[@]}"; do ours "$p" && kill -CONT "$p" && kill "$p"; done 2>/dev/null
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    alive=0
    for p in "${PIDS[@]}"; do ours "$p" && kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for p in "${PIDS[@]}"; do ours "$p" && kill -9 "$p"; done 2>/dev/null
}
trap cleanup EXIT

wait_port() { for _ in $(seq 1 100); do
  (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done
  echo "chaos: port $1 did not open" >&2; return 1; }

# Nine distinct free ports on 127.0.0.1 (bound and released at once).
read -r P_ORIGIN P_FERRY P_IDLE P_ADMIN P_T1 P_S1 P_T2 P_S2 _ < <(luajit -e '
  local socket = require("socket")
  math.randomseed(os.time() + tonumber(tostring({}):match("0x(%x+)"), 16) % 1000)
  local held, out = {}, {}
  for _ = 1, 2000 do
    if #out == 9 then break end
    local p = math.random(20000, 32000)
    local s = not held[p] and socket.bind("127.0.0.1", p)
    if s then held[p] = s; out[#out + 1] = p end
  end
  for _, s in pairs(held) do s:close() end
  print(table.concat(out, " "))')
[ -n "${P_S2:-}" ] || { echo "chaos: no free ports" >&2; exit 1; }

gcc -O2 -Wall -Wextra -o "$W/chaos_load" spec/bench/chaos_load.c || exit 1
# 512 bytes: with nginx's head the answer fits microsocks's 1 KiB relay
# buffer, so microsocks relays it in one write; a larger one is relayed in
# two, and the second waits for ferry's delayed ACK (~40 ms a request),
# which would pace the load by microsocks, not by ferry.
BODY=512
head -c $BODY /dev/zero | tr '\0' 'x' > "$W/www/body"

# --- the origin: nginx, one process, keep-alive without a request cap ---
cat > "$W/nginx.conf" <<CONF
worker_processes 1;
master_process off;
daemon off;
pid $W/nginx.pid;
error_log $W/logs/nginx.err;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 120s;
  client_header_timeout 120s;
  server { listen 127.0.0.1:$P_ORIGIN; root $W/www; }
}
CONF
taskset -c 1 nginx -c "$W/nginx.conf" -p "$W" 2>>"$W/logs/nginx.err" & PIDS+=($!)

# --- four upstreams ---
# Started in this shell (not in a $(...) subshell) so that each is a child
# of it: $! is its PID, and cleanup can tell it is ours.
tinyproxy_start() { # port name
  cat > "$W/$2.conf" <<CONF
Port $1
Listen 127.0.0.1
Timeout 60
MaxClients 400
Allow 127.0.0.1
DisableViaHeader Yes
LogLevel Critical
CONF
  taskset -c 1 tinyproxy -d -c "$W/$2.conf" >"$W/logs/$2.log" 2>&1 &
}
socks_start() { taskset -c 1 microsocks -i 127.0.0.1 -p "$1" >"$W/logs/$2.log" 2>&1 & }
tinyproxy_start "$P_T1" tiny-a; PID_T1=$!; PIDS+=("$PID_T1")
socks_start "$P_S1" socks-a; PID_S1=$!; PIDS+=("$PID_S1")
tinyproxy_start "$P_T2" tiny-b; PID_T2=$!; PIDS+=("$PID_T2")
socks_start "$P_S2" socks-b; PID_S2=$!; PIDS+=("$PID_S2")

# --- ferry: retries on the other proxies, a first-byte timeout short
# enough to notice a stopped proxy, http probes (a stopped proxy still
# accepts TCP, so a tcp probe would call it up), a breaker that lets a
# resumed proxy back after a few seconds ---
cat > "$W/ferry.lua" <<CONF
listen { name = "chaos", addr = "127.0.0.1:$P_FERRY" }
listen { name = "idle", addr = "127.0.0.1:$P_IDLE" }
admin { addr = "127.0.0.1:$P_ADMIN" }
log { level = "info", access = false }
timeouts { connect = 1, first_byte = 1.5, request = 20 }
pool "chaos" {
  strategy = "round_robin",
  retries = $RETRIES,
  timeouts = { connect = 1, first_byte = 1.5 },
  health = { check = "http", url = "http://127.0.0.1:$P_ORIGIN/body", interval = 1,
             timeout = 0.5, rise = 2, fall = 2 },
  breaker = { policy = "consecutive", failures = 5, cooldown = 3 },
  proxies = {
    { url = "http://127.0.0.1:$P_T1", id = "tiny-a" },
    { url = "socks5://127.0.0.1:$P_S1", id = "socks-a" },
    { url = "http://127.0.0.1:$P_T2", id = "tiny-b" },
    { url = "socks5://127.0.0.1:$P_S2", id = "socks-b" },
  },
}
route(function(req)
  if req.listener == "idle" then return "direct" end
  return "chaos"
end)
CONF
taskset -c 0 "$FERRY" -c "$W/ferry.lua" 2>"$W/logs/ferry.log" & FERRY_PID=$!; PIDS+=("$FERRY_PID")

for p in $P_ORIGIN $P_T1 $P_S1 $P_T2 $P_S2 $P_FERRY $P_IDLE $P_ADMIN; do wait_port "$p" || exit 1; done

metrics() { curl -s --max-time 5 "http://127.0.0.1:$P_ADMIN/metrics"; }
# metric NAME LABEL-FILTER: the sum of a family's samples whose labels match.
metric() { metrics | awk -v n="$1" -v f="$2" \
  'index($0, n "{") == 1 && index($0, f) { s += $NF } END { printf "%d", s }'; }

# Every proxy up by the probes before the load starts (at most 10 s).
for _ in $(seq 1 100); do
  [ "$(metric ferry_pool_proxies_up 'pool="chaos"')" = 4 ] && break; sleep 0.1
done
UP0=$(metric ferry_pool_proxies_up 'pool="chaos"')
[ "$UP0" = 4 ] || { echo "chaos: only $UP0 of 4 upstreams came up" >&2; exit 1; }

rss() { awk '/^VmRSS:/ {print $2}' /proc/"$FERRY_PID"/status 2>/dev/null; }
RSS_BEFORE=$(rss)

echo "ferry chaos: 4 upstreams (tiny-a, tiny-b: tinyproxy; socks-a, socks-b: microsocks), nginx origin"
echo "load: GET $BODY bytes (absolute form), ${RATE}/s over ${CONNS} keep-alive connections, ${DUR} s;" \
  "ferry on CPU 0, the rest on CPU 1"
echo "ferry: round_robin, retries $RETRIES, first_byte 1.5 s, connect 1 s, http probes every 1 s (fall 2, rise 2)"
echo

# ferry's CPU time in clock ticks (utime + stime of /proc/PID/stat).
ticks() { awk '{ print $14 + $15 }' /proc/"$FERRY_PID"/stat 2>/dev/null; }
TICKS0=$(ticks)
T0=$(date +%s%3N)
taskset -c 1 "$W/chaos_load" load "$P_FERRY" "http://127.0.0.1:$P_ORIGIN/body" "$CONNS" "$RATE" \
  "$DUR" 10 $BODY > "$W/load.out" 2>"$W/logs/load.err" & LOAD_PID=$!; PIDS+=("$LOAD_PID")

elapsed() { local ms=$(( $(date +%s%3N) - T0 )); printf '%d.%d' $((ms / 1000)) $((ms % 1000 / 100)); }
# at PERMILLE: sleep until that part of the run (in thousandths) has passed.
at() { local left=$(( T0 + DUR * $1 - $(date +%s%3N) ))
  [ "$left" -gt 0 ] && sleep "$(printf '%d.%03d' $((left / 1000)) $((left % 1000)))"
}
event() { echo "  t=$(elapsed) s  $1"; }
succ() { metric ferry_proxy_successes_total "proxy=\"$1\""; }

# The stopped one is a microsocks: tinyproxy closes its client connection
# after every answer, so passive health keeps taking a tinyproxy down and
# up again under load (see docs/benchmarks.md), and a stopped tinyproxy
# might see no traffic at all.  From 50 % to 65 % of the run, socks-b is
# the only upstream that answers.
signal() { # SIG PID NAME: signal a process of ours, reap it if it was killed
  ours "$2" || { event "$3 (pid $2) is gone: not signalled"; return; }
  kill -"$1" "$2"; event "SIG$1 $3 (pid $2)"
  [ "$1" = KILL ] && wait "$2" 2>/dev/null
}
at 200; signal KILL "$PID_T2" tiny-b
at 350; signal STOP "$PID_S1" socks-a
at 500; signal KILL "$PID_T1" tiny-a
at 650; signal CONT "$PID_S1" socks-a
SUCC_RESUMED=$(succ socks-a)
wait "$LOAD_PID"; LOAD_RC=$?
LOAD_MS=$(( $(date +%s%3N) - T0 )); TICKS1=$(ticks)
event "load done (exit $LOAD_RC)"
echo
grep '^progress' "$W/load.out" | sed 's/^/  /'
echo

val() { awk -v k="$1" '$1 == k { print $2; f = 1 } END { if (!f) print 0 }' "$W/load.out"; }
SENT=$(val sent); ANSWERED=$(val answered)
OK=$(awk '$1 == "status" && $2 == 200 { print $3 }' "$W/load.out"); OK=${OK:-0}
NON200=$(awk '$1 == "status" && $2 != 200 { s += $3 } END { print s + 0 }' "$W/load.out")
LOST=$(( $(val closed) + $(val timeouts) + $(val bad_answer) ))
BAD_BODY=$(val bad_body); CONN_ERR=$(val connect_errors)
ERRORS=$(( NON200 + LOST + BAD_BODY + CONN_ERR ))

# ferry counts a request when its access line is written: poll (at most 5 s).
COUNTED=0
for _ in $(seq 1 50); do
  COUNTED=$(metric ferry_requests_total 'listener="chaos"')
  [ "$COUNTED" = "$SENT" ] && break; sleep 0.1
done
RSS_AFTER=$(rss)
M=$(metrics)
BY_CODE=$(echo "$M" | awk 'index($0, "ferry_requests_total{") == 1 && index($0, "listener=\"chaos\"") {
  match($0, /code="[^"]*"/); c = substr($0, RSTART + 6, RLENGTH - 7)
  match($0, /status_class="[^"]*"/); k = substr($0, RSTART + 14, RLENGTH - 15)
  n[c " " k] += $NF } END { for (x in n) printf "%s %s %d\n", x, "", n[x] }' | sort |
  awk '{ printf "%s%s/%s %d", (NR > 1 ? ", " : ""), $1, $2, $3 }')
RETRIED=$(echo "$M" | awk 'index($0, "ferry_retries_total{") == 1 && index($0, "pool=\"chaos\"") { s += $NF } END { printf "%d", s }')

SCHED="scheduled $((RATE * DUR)); fewer when every client connection was busy"
[ "$RATE" = 0 ] && SCHED="no rate: as fast as the connections went"
printf '%-56s %10s   %s\n' "requests the clients sent" "$SENT" "($SCHED)"
printf '%-56s %10s\n' "answered 200 with the right body" "$((OK - BAD_BODY))"
printf '%-56s %10s   %s\n' "client-visible errors (goal 0)" "$ERRORS" \
  "(non-200 $NON200, lost $LOST, wrong body $BAD_BODY, connect $CONN_ERR)"
awk '$1 == "code" { printf "    X-Ferry-Error %s: %s\n", $2, $3 }' "$W/load.out"
printf '%-56s %10s\n' "ferry_requests_total{listener=\"chaos\"} (goal = sent)" "$COUNTED"
echo "    by code/status class: ${BY_CODE:-none}"
printf '%-56s %10s\n' "retries (ferry_retries_total{pool=\"chaos\"})" "$RETRIED"
printf '%-56s %10s\n' "requests/s achieved" \
  "$(awk -v s="$SENT" -v t="$(val seconds)" 'BEGIN { if (t > 0) printf "%.0f", s / t }')"
CPU_LOAD="n/a (ferry died)"
[ -n "$TICKS1" ] && CPU_LOAD=$(awk -v t=$((TICKS1 - TICKS0)) -v hz="$(getconf CLK_TCK)" \
  -v ms="$LOAD_MS" 'BEGIN { printf "%.1f", 100 * t / hz / (ms / 1000) }')
printf '%-56s %10s\n' "ferry CPU during the load, % of a core" "$CPU_LOAD"
awk '$1 == "latency_ms" { printf "%-56s %10s\n", "latency ms: p50 / p99 / p99.9 / max (bucket bounds)", $3 " / " $5 " / " $7 " / " $9 }' "$W/load.out"
echo "    per upstream: successes (since socks-a resumed), up"
for id in tiny-a socks-a tiny-b socks-b; do
  s=$(echo "$M" | awk -v f="proxy=\"$id\"" 'index($0, "ferry_proxy_successes_total{") == 1 && index($0, f) { s += $NF } END { printf "%d", s }')
  u=$(echo "$M" | awk -v f="proxy=\"$id\"" 'index($0, "ferry_proxy_up{") == 1 && index($0, f) { print $NF; exit }')
  extra=""
  [ "$id" = socks-a ] && extra=" ($((s - SUCC_RESUMED)))"
  printf '    %-8s %8s%s, up %s\n' "$id" "$s" "$extra" "${u:-?}"
done
echo "    ferry log lines by code: $(grep -o '"code":"FERRY-[0-9]*"' "$W/logs/ferry.log" | sort | uniq -c |
  awk '{ gsub(/"code":|"/, "", $2); printf "%s%s x%d", (NR > 1 ? ", " : ""), $2, $1 }')"
echo

# --- idle tunnels: CPU while they are held, against ferry idle alone ---
taskset -c 1 "$W/chaos_load" tunnels "$P_IDLE" "127.0.0.1:$P_ORIGIN" "$TUNNELS" "$HOLD" \
  "$FERRY_PID" > "$W/tunnels.out" 2>"$W/logs/tunnels.err"
tval() { awk -v k="$1" '$1 == k { print $2; f = 1 } END { if (!f) print 0 }' "$W/tunnels.out"; }
TUP=$(tval tunnels_up); TOPEN=$(tval tunnels_open_after)
# Each tunnel is one outcome too, counted when it ends (at most 5 s).
TCOUNTED=0
for _ in $(seq 1 50); do
  TCOUNTED=$(metric ferry_requests_total 'listener="idle"')
  [ "$TCOUNTED" = "$TUNNELS" ] && break; sleep 0.1
done
RSS_END=$(rss)
printf '%-56s %10s\n' "ferry RSS before the load, KiB" "$RSS_BEFORE"
printf '%-56s %10s\n' "ferry RSS after the load, KiB" "$RSS_AFTER"
printf '%-56s %10s\n' "ferry RSS after the tunnels closed, KiB" "$RSS_END"
printf '%-56s %10s\n' "CONNECT tunnels up / still open after the hold" "$TUP / $TOPEN"
printf '%-56s %10s\n' "ferry_requests_total{listener=\"idle\"} after they closed" "$TCOUNTED"
printf '%-56s %10s\n' "ferry CPU, ${HOLD} s without tunnels, ms (%)" "$(tval idle_cpu_ms) ($(tval idle_cpu_pct))"
printf '%-56s %10s\n' "ferry CPU, ${HOLD} s with ${TUNNELS} idle tunnels, ms (%)" "$(tval cpu_ms) ($(tval cpu_pct))"
printf '%-56s %10s\n' "    same, in clock ticks of 1/$(tval clk_tck) s (/proc/PID/stat)" "$(tval cpu_ticks)"
echo

WHY=""
[ "$LOAD_RC" = 0 ] || WHY="$WHY load client failed (exit $LOAD_RC);"
[ "$ERRORS" = 0 ] || WHY="$WHY $ERRORS client-visible errors;"
[ "$SENT" -gt 0 ] || WHY="$WHY no request sent;"
[ "$COUNTED" = "$SENT" ] || WHY="$WHY ferry counted $COUNTED outcomes for $SENT requests;"
[ "$ANSWERED" -le "$SENT" ] || WHY="$WHY more answers ($ANSWERED) than requests;"
if [ "$TUP" != "$TUNNELS" ] || [ "$TOPEN" != "$TUNNELS" ]; then
  WHY="$WHY tunnels up $TUP, open $TOPEN of $TUNNELS;"
fi
[ "$TCOUNTED" = "$TUNNELS" ] || WHY="$WHY ferry counted $TCOUNTED outcomes for $TUNNELS tunnels;"
kill -0 "$FERRY_PID" 2>/dev/null || WHY="$WHY ferry died;"
if [ -z "$WHY" ]; then
  echo "chaos: clean ($SENT requests, 0 errors, $COUNTED counted)"
  exit 0
fi
echo "chaos: NOT clean:$WHY (logs in $W/logs)"
exit 1
