#!/usr/bin/env bash
# chain.sh: ferry in front of an upstream proxy, side by side with squid
# in front of the same upstream (cache_peer parent).  Part of make bench;
# runs alone as well.
#   1. absolute-form GET 1 KiB through an upstream HTTP proxy (a second
#      ferry, direct), with ferry's shared upstream pools on (the pool's
#      defaults) and off ($POOL_OFF), squid with server persistent
#      connections on and off; once with 50 keep-alive clients, once with
#      a new client connection per request (where only a pool shared
#      across clients can save the upstream connection);
#   2. an https:// upstream: TLS from ferry to the proxy (ferry's own TLS
#      listener, and stunnel4 in front of the plain upstream ferry), the
#      plain http:// upstream for reference: CONNECT setups per second and
#      the throughput of one 1 GiB tunnel.
# The front proxy, the upstreams and stunnel on CPU 0; load (wrk,
# connect_rate, socks_load) and the nginx origin on CPU 1; every run is
# bounded in time.  A column whose feature this ferry build lacks prints
# "skipped: <why>" (from `ferry check`).  Work per CPU-second is the front
# proxy's; "chain" adds the upstream's (and stunnel's).
set -u
cd "$(dirname "$0")/../.." || exit 1
ROOT=$(pwd)
FERRY_BIN=${FERRY_BIN:-$ROOT/bin/ferry}
W=$ROOT/spec/tmp/bench-chain
DUR=${BENCH_SECONDS:-10}
BYTES=${CHAIN_BYTES:-1073741824}
# The pool field that turns reuse off.
POOL_OFF=${POOL_OFF:-'connections = { idle = 0 }'}
rm -rf "$W"; mkdir -p "$W/www" "$W/logs"; chmod 777 "$W" "$W/logs"

P_ORIGIN=18120 P_UP=18121 P_UPTLS=18122 P_STUNNEL=18123 P_ADMIN=18124
P_ON=18125 P_OFF=18126 P_TLSF=18127 P_TLSS=18128 P_SQ_ON=18129 P_SQ_OFF=18130
PIDS=()
. "$ROOT/spec/bench/lib.sh"
trap bench_cleanup EXIT

head -c 1024 /dev/zero | tr '\0' 'x' > "$W/www/1k"
truncate -s "$BYTES" "$W/www/big"
gcc -O2 -o "$W/connect_rate" spec/bench/connect_rate.c || exit 1
gcc -O2 -o "$W/socks_load" spec/bench/socks_load.c || exit 1
make_cert || { echo "chain bench: openssl could not make a certificate"; exit 1; }

bench_start_origin "$P_ORIGIN"

# The upstream: a ferry going direct, plain and (when this build has one)
# a TLS listener.
QUIET='log { level = "warn", access = false }'
UP_PLAIN="listen { name = \"up\", addr = \"127.0.0.1:$P_UP\" }"
UP_TLS="listen { name = \"uptls\", addr = \"127.0.0.1:$P_UPTLS\",
         tls = { cert = \"$W/tls.crt\", key = \"$W/tls.key\" } }"
DIRECT='route(function(req) return "direct" end)'
printf '%s\n' "$UP_PLAIN" "$UP_TLS" "$QUIET" "$DIRECT" > "$W/up.lua"
if ! SKIP_UPTLS=$(ferry_accepts "$FERRY_BIN" "$W/up.lua"); then
  printf '%s\n' "$UP_PLAIN" "$QUIET" "$DIRECT" > "$W/up.lua"
else SKIP_UPTLS=""; fi
taskset -c 0 "$FERRY_BIN" -c "$W/up.lua" 2>"$W/logs/up.err" & UP_PID=$!; PIDS+=("$UP_PID")

cat > "$W/stunnel.conf" <<CONF
foreground = yes
pid = $W/stunnel.pid
output = $W/logs/stunnel.log
debug = 3
[up]
accept = 127.0.0.1:$P_STUNNEL
connect = 127.0.0.1:$P_UP
cert = $W/tls.crt
key = $W/tls.key
CONF
taskset -c 0 stunnel4 "$W/stunnel.conf" >/dev/null 2>&1 & STUNNEL_PID=$!; PIDS+=("$STUNNEL_PID")

# The front ferry: a listener per column, each routed to its own pool.
# A pool this build refuses is left out and its column skipped.
front_part() { # name port pool-body
  printf 'listen { name = "%s", addr = "127.0.0.1:%s" }\npool "%s" { %s }\n' "$1" "$2" "$1" "$3"
}
FRONT_BASE="admin { addr = \"127.0.0.1:$P_ADMIN\" }
$QUIET
route(function(req) return req.listener end)"
PART_ON=$(front_part on $P_ON "proxies = { \"http://127.0.0.1:$P_UP\" }")
PART_OFF=$(front_part off $P_OFF "proxies = { \"http://127.0.0.1:$P_UP\" }, $POOL_OFF")
TLS_PROXY="tls = { ca = \"$W/tls.crt\" }"
PART_TLSF=$(front_part tlsf $P_TLSF "proxies = { { url = \"https://127.0.0.1:$P_UPTLS\", $TLS_PROXY } }")
PART_TLSS=$(front_part tlss $P_TLSS "proxies = { { url = \"https://127.0.0.1:$P_STUNNEL\", $TLS_PROXY } }")
FRONT="$FRONT_BASE
$PART_ON"
try_part() { # part -> prints why when refused
  printf '%s\n%s\n' "$FRONT_BASE" "$1" > "$W/try.lua"
  ferry_accepts "$FERRY_BIN" "$W/try.lua"
}
if SKIP_OFF=$(try_part "$PART_OFF"); then SKIP_OFF=""; FRONT="$FRONT
$PART_OFF"; fi
if SKIP_TLSS=$(try_part "$PART_TLSS"); then SKIP_TLSS=""; FRONT="$FRONT
$PART_TLSS"; fi
SKIP_TLSF=$SKIP_TLSS
if [ -z "$SKIP_TLSS" ]; then
  if [ -n "$SKIP_UPTLS" ]; then SKIP_TLSF="upstream TLS listener: $SKIP_UPTLS"
  else FRONT="$FRONT
$PART_TLSF"; fi
fi
echo "$FRONT" > "$W/front.lua"
taskset -c 0 "$FERRY_BIN" -c "$W/front.lua" 2>"$W/logs/front.err" & FRONT_PID=$!; PIDS+=("$FRONT_PID")

squid_conf() { # name port persistent(on|off)
  cat > "$W/squid-$1.conf" <<CONF
http_port 127.0.0.1:$2
acl all_ports port 1-65535
http_access allow all
cache deny all
cache_mem 8 MB
access_log none
cache_log $W/logs/squid-$1.log
pid_filename $W/squid-$1.pid
coredump_dir $W
cache_effective_user proxy
shutdown_lifetime 1 seconds
workers 1
cache_peer 127.0.0.1 parent $P_UP 0 no-query no-digest default name=up
never_direct allow all
server_persistent_connections $3
CONF
}
squid_conf on $P_SQ_ON on; squid_conf off $P_SQ_OFF off
taskset -c 0 squid -N -f "$W/squid-on.conf" & SQ_ON_PID=$!; PIDS+=("$SQ_ON_PID")
taskset -c 0 squid -N -f "$W/squid-off.conf" & SQ_OFF_PID=$!; PIDS+=("$SQ_OFF_PID")

PORTS="$P_ORIGIN $P_UP $P_STUNNEL $P_ADMIN $P_ON $P_SQ_ON $P_SQ_OFF"
[ -z "$SKIP_OFF" ] && PORTS="$PORTS $P_OFF"
[ -z "$SKIP_TLSS" ] && PORTS="$PORTS $P_TLSS"
[ -z "$SKIP_TLSF" ] && PORTS="$PORTS $P_TLSF $P_UPTLS"
for p in $PORTS; do wait_port "$p" || exit 1; done
sleep 1

echo "wrk.path = \"http://127.0.0.1:$P_ORIGIN/1k\"" > "$W/absolute.lua"

# get FRONT_PID PORT CHAIN_PIDS CLIENT(keepalive|close)
#   -> "requests/s requests-per-front-CPU-s requests-per-chain-CPU-s non2xx"
get() {
  local t0 c0 t1 c1 out hdr=() p n
  [ "$4" = close ] && hdr=(-H "Connection: close")
  t0=$(cpu_ticks "$1"); c0=0; for p in $3; do c0=$((c0 + $(cpu_ticks "$p"))); done
  out=$(taskset -c 1 wrk -t1 -c50 -d"${DUR}"s "${hdr[@]}" -s "$W/absolute.lua" \
        "http://127.0.0.1:$2/" 2>&1)
  t1=$(cpu_ticks "$1"); c1=0; for p in $3; do c1=$((c1 + $(cpu_ticks "$p"))); done
  echo "$out" > "$W/logs/wrk-$2-$4.txt"
  n=$(echo "$out" | awk '/requests in/ {print $1}')
  echo "$(echo "$out" | awk '/Requests\/sec/ {printf "%.0f", $2}')" \
    "$(per_cpu "$n" "$(cpu_secs $((t1 - t0)))")" \
    "$(per_cpu "$n" "$(cpu_secs $((t1 - t0 + c1 - c0)))")" \
    "$(echo "$out" | awk '/Non-2xx/ {print $NF} END {}' | grep . || echo 0)"
}
# pool_counts POOL -> "opened reused": the front's upstream-connection
# counters of that pool, or "- -" when this build exports none.
pool_counts() {
  curl -s --max-time 5 "http://127.0.0.1:$P_ADMIN/metrics" | awk -v pool="pool=\"$1\"" '
    index($0, pool) && /^ferry_upstream_connections_opened_total/ { o = $NF }
    index($0, pool) && /^ferry_upstream_connections_reused_total/ { r = $NF }
    END { print (o == "" ? "-" : o), (r == "" ? "-" : r) }'
}
# A pool's counters appear once it has used a connection: absent before is 0.
delta() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-") a = 0;
  if (a ~ /^[0-9]+$/ && b ~ /^[0-9]+$/) print b - a; else print "-" }'; }

echo "upstream chains: front proxy, upstream and stunnel on CPU 0; load and origin on CPU 1; ${DUR}s per run"
[ -n "$SKIP_OFF" ] && echo "ferry pools off ($POOL_OFF): skipped: $SKIP_OFF"
for client in keepalive close; do
  read -r O0_ON U0_ON < <(pool_counts on)
  read -r R_ON P_ON_ C_ON X_ON < <(get "$FRONT_PID" $P_ON "$UP_PID" $client)
  read -r O1_ON U1_ON < <(pool_counts on)
  if [ -z "$SKIP_OFF" ]; then
    read -r O0_OFF U0_OFF < <(pool_counts off)
    read -r R_OFF P_OFF_ C_OFF X_OFF < <(get "$FRONT_PID" $P_OFF "$UP_PID" $client)
    read -r O1_OFF U1_OFF < <(pool_counts off)
  else R_OFF=- P_OFF_=- C_OFF=- X_OFF=- O0_OFF=- O1_OFF=- U0_OFF=- U1_OFF=-; fi
  read -r R_SON P_SON C_SON X_SON < <(get "$SQ_ON_PID" $P_SQ_ON "$UP_PID" $client)
  read -r R_SOFF P_SOFF C_SOFF X_SOFF < <(get "$SQ_OFF_PID" $P_SQ_OFF "$UP_PID" $client)
  if [ $client = keepalive ]; then title="GET 1 KiB via upstream, keep-alive"
  else title="GET 1 KiB via upstream, conn/req"; fi
  row "$title" "ferry pool" "ferry off" "squid pers." "squid off"
  row "requests/s" "$R_ON" "$R_OFF" "$R_SON" "$R_SOFF"
  row "ferry pool / other" "1.00" "$(ratio "$R_ON" "$R_OFF")" "$(ratio "$R_ON" "$R_SON")" \
    "$(ratio "$R_ON" "$R_SOFF")"
  row "requests per front CPU-second" "$P_ON_" "$P_OFF_" "$P_SON" "$P_SOFF"
  row "ferry pool / other, per CPU-s" "1.00" "$(ratio "$P_ON_" "$P_OFF_")" "$(ratio "$P_ON_" "$P_SON")" \
    "$(ratio "$P_ON_" "$P_SOFF")"
  row "requests per chain CPU-second" "$C_ON" "$C_OFF" "$C_SON" "$C_SOFF"
  row "non-2xx answers" "$X_ON" "$X_OFF" "$X_SON" "$X_SOFF"
  row "upstream connections opened" "$(delta "$O0_ON" "$O1_ON")" "$(delta "$O0_OFF" "$O1_OFF")"
  row "requests on a reused connection" "$(delta "$U0_ON" "$U1_ON")" "$(delta "$U0_OFF" "$U1_OFF")"
  echo
done
echo "  front CPU: the proxy wrk talks to; chain: the front plus the upstream ferry"
echo

# 2. https:// upstreams: CONNECT through the front, TLS to the proxy.
[ -n "$SKIP_TLSF" ] && echo "ferry -> ferry TLS listener: skipped: $SKIP_TLSF"
[ -n "$SKIP_TLSS" ] && echo "ferry -> stunnel (https:// upstream): skipped: $SKIP_TLSS"
# setups PORT CHAIN_PIDS -> "tunnels/s per-front-CPU-s per-chain-CPU-s errors"
setups() {
  local t0 c0 t1 c1 out p
  t0=$(cpu_ticks "$FRONT_PID"); c0=0; for p in $2; do c0=$((c0 + $(cpu_ticks "$p"))); done
  out=$(taskset -c 1 "$W/connect_rate" "$1" "127.0.0.1:$P_ORIGIN" 50 "$DUR" relay)
  t1=$(cpu_ticks "$FRONT_PID"); c1=0; for p in $2; do c1=$((c1 + $(cpu_ticks "$p"))); done
  echo "$out" > "$W/logs/setups-$1.txt"
  echo "$out" | awk -v f=$((t1 - t0)) -v c=$((t1 - t0 + c1 - c0)) -v hz="$HZ" '{
    rate = $6; sub("/s", "", rate);
    printf "%s %.0f %.0f %s\n", rate, (f > 0 ? $2 * hz / f : 0), (c > 0 ? $2 * hz / c : 0), $4 }'
}
# stream PORT CHAIN_PIDS -> "best-bytes/s bytes-per-front-CPU-s bytes-per-chain-CPU-s failures"
stream() {
  local best=0 bytes=0 f=0 c=0 t0 c0 t1 c1 out p fails=0
  for _ in 1 2 3; do
    t0=$(cpu_ticks "$FRONT_PID"); c0=0; for p in $2; do c0=$((c0 + $(cpu_ticks "$p"))); done
    if out=$(taskset -c 1 "$W/socks_load" stream connect "$1" $P_ORIGIN /big "$BYTES" 120 \
             2>>"$W/logs/stream-$1.err"); then
      t1=$(cpu_ticks "$FRONT_PID"); c1=0; for p in $2; do c1=$((c1 + $(cpu_ticks "$p"))); done
      read -r _ b _ _ _ r <<<"$out"
      bytes=$(awk -v a="$bytes" -v b="$b" 'BEGIN { printf "%.0f", a + b }')
      f=$((f + t1 - t0)); c=$((c + t1 - t0 + c1 - c0))
      [ "${r%.*}" -gt "$best" ] && best=${r%.*}
    else fails=$((fails + 1)); fi
  done
  echo "$best $(per_cpu "$bytes" "$(cpu_secs $f)") $(per_cpu "$bytes" "$(cpu_secs $c)") $fails"
}
taskset -c 1 "$W/socks_load" stream none $P_ORIGIN $P_ORIGIN /big "$BYTES" 120 >/dev/null
read -r S_P F_P C_P E_P < <(setups $P_ON "$UP_PID")
read -r T_P TF_P TC_P X_P < <(stream $P_ON "$UP_PID")
if [ -z "$SKIP_TLSF" ]; then
  read -r S_F F_F C_F E_F < <(setups $P_TLSF "$UP_PID")
  read -r T_F TF_F TC_F X_F < <(stream $P_TLSF "$UP_PID")
else S_F=- F_F=- C_F=- E_F=- T_F=- TF_F=- TC_F=- X_F=-; fi
if [ -z "$SKIP_TLSS" ]; then
  read -r S_S F_S C_S E_S < <(setups $P_TLSS "$UP_PID $STUNNEL_PID")
  read -r T_S TF_S TC_S X_S < <(stream $P_TLSS "$UP_PID $STUNNEL_PID")
else S_S=- F_S=- C_S=- E_S=- T_S=- TF_S=- TC_S=- X_S=-; fi
row "CONNECT via upstream: setup + 1 KiB" "https ferry" "https stunl" "http"
row "tunnels/s" "$S_F" "$S_S" "$S_P"
row "https / http" "$(ratio "$S_F" "$S_P")" "$(ratio "$S_S" "$S_P")" "1.00"
row "tunnels per front CPU-second" "$F_F" "$F_S" "$F_P"
row "https / http, per front CPU-s" "$(ratio "$F_F" "$F_P")" "$(ratio "$F_S" "$F_P")" "1.00"
row "tunnels per chain CPU-second" "$C_F" "$C_S" "$C_P"
row "errors" "$E_F" "$E_S" "$E_P"
echo
row "CONNECT via upstream: $((BYTES >> 20)) MiB, best/3" "https ferry" "https stunl" "http"
row "throughput" "$(gbs "$T_F")" "$(gbs "$T_S")" "$(gbs "$T_P")"
row "https / http" "$(ratio "$T_F" "$T_P")" "$(ratio "$T_S" "$T_P")" "1.00"
row "bytes per front CPU-second" "$(gb "$TF_F")" "$(gb "$TF_S")" "$(gb "$TF_P")"
row "bytes per chain CPU-second" "$(gb "$TC_F")" "$(gb "$TC_S")" "$(gb "$TC_P")"
row "failed runs (of 3)" "$X_F" "$X_S" "$X_P"
echo "  https ferry: to ferry's TLS listener; https stunl: to stunnel4 in front of the plain"
echo "  upstream ferry; http: the plain upstream.  chain: front + upstream ferry (+ stunnel)"
