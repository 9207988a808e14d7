#!/usr/bin/env bash
# socks.sh: SOCKS5 tunnels through ferry's SOCKS5 listener, side by side
# with dante (danted) and microsocks in the same run, and ferry's HTTP
# CONNECT listener and no proxy at all for reference.  Part of make bench;
# runs alone as well.
#   1. one tunnel carrying SOCKS_BYTES (1 GiB) from nginx: the best rate of
#      3 runs, and bytes per proxy CPU-second over the 3;
#   2. setups: 50 connections at a time open a tunnel and close it;
#   3. setups with a relay: each tunnel carries "GET /1k" and its answer.
# The load is spec/bench/socks_load.c.  Proxies on CPU 0, load and origin
# on CPU 1, all on 127.0.0.1; every run is bounded in time.  A ferry build
# without the SOCKS5 listener prints "skipped" for its column.
set -u
cd "$(dirname "$0")/../.." || exit 1
ROOT=$(pwd)
FERRY_BIN=${FERRY_BIN:-$ROOT/bin/ferry}
W=$ROOT/spec/tmp/bench-socks
DUR=${BENCH_SECONDS:-10}
BYTES=${SOCKS_BYTES:-1073741824}
rm -rf "$W"; mkdir -p "$W/www" "$W/logs"; chmod 777 "$W" "$W/logs"

P_ORIGIN=18110 P_FSOCKS=18111 P_FHTTP=18112 P_DANTE=18113 P_MICRO=18114
PIDS=()
. "$ROOT/spec/bench/lib.sh"
trap bench_cleanup EXIT

head -c 1024 /dev/zero | tr '\0' 'x' > "$W/www/1k"
truncate -s "$BYTES" "$W/www/big"
gcc -O2 -o "$W/socks_load" spec/bench/socks_load.c || exit 1

bench_start_origin "$P_ORIGIN"

# ferry: one process, a SOCKS5 listener when this build has one.
HTTP_LISTEN="listen { name = \"http\", addr = \"127.0.0.1:$P_FHTTP\" }"
SOCKS_LISTEN="listen { name = \"socks\", addr = \"127.0.0.1:$P_FSOCKS\", protocol = \"socks5\" }"
TAIL='log { level = "warn", access = false }
route(function(req) return "direct" end)'
printf '%s\n%s\n%s\n' "$HTTP_LISTEN" "$SOCKS_LISTEN" "$TAIL" > "$W/ferry.lua"
if ! SOCKS_SKIP=$(ferry_accepts "$FERRY_BIN" "$W/ferry.lua"); then
  printf '%s\n%s\n' "$HTTP_LISTEN" "$TAIL" > "$W/ferry.lua"
else
  SOCKS_SKIP=""
fi
taskset -c 0 "$FERRY_BIN" -c "$W/ferry.lua" 2>"$W/logs/ferry.err" & FERRY_PID=$!; PIDS+=("$FERRY_PID")

# dante binds every outgoing socket to its external address before it
# connects, and bind() to port 0 cannot take a port held by a TIME_WAIT
# socket of the same address: after the other runs' tens of thousands of
# connections on 127.0.0.1 it runs out of ports.  127.0.0.2 (loopback too)
# gives it a port space of its own.
DANTE_USERS=""
[ "$(id -u)" = 0 ] && DANTE_USERS="user.privileged: root
user.unprivileged: nobody"
cat > "$W/danted.conf" <<CONF
logoutput: $W/logs/danted.log
internal: 127.0.0.1 port = $P_DANTE
external: 127.0.0.2
socksmethod: none
clientmethod: none
$DANTE_USERS
client pass { from: 127.0.0.0/8 to: 0.0.0.0/0 }
socks pass { from: 127.0.0.0/8 to: 0.0.0.0/0 command: connect }
CONF
taskset -c 0 danted -f "$W/danted.conf" -p "$W/danted.pid" >"$W/logs/danted.out" 2>&1 &
DANTE_PID=$!; PIDS+=("$DANTE_PID")
taskset -c 0 microsocks -i 127.0.0.1 -p $P_MICRO >/dev/null 2>&1 & MICRO_PID=$!; PIDS+=("$MICRO_PID")

PORTS="$P_ORIGIN $P_FHTTP $P_DANTE $P_MICRO"
[ -z "$SOCKS_SKIP" ] && PORTS="$PORTS $P_FSOCKS"
for p in $PORTS; do wait_port "$p" || exit 1; done
sleep 1
# Warm the page cache so the first run is not charged for it.
taskset -c 1 "$W/socks_load" stream none $P_ORIGIN $P_ORIGIN /big "$BYTES" 120 >/dev/null

# stream PID PROTO PORT -> "best-bytes/s bytes-per-CPU-second failures"
stream() {
  local best=0 bytes=0 ticks=0 fails=0 t0 t1 out
  for _ in 1 2 3; do
    t0=$(cpu_ticks "$1")
    if out=$(taskset -c 1 "$W/socks_load" stream "$2" "$3" $P_ORIGIN /big "$BYTES" 120 \
             2>>"$W/logs/stream-$3.err"); then
      t1=$(cpu_ticks "$1")
      read -r _ b _ _ _ r <<<"$out"
      bytes=$(awk -v a="$bytes" -v b="$b" 'BEGIN { printf "%.0f", a + b }')
      ticks=$((ticks + t1 - t0))
      [ "${r%.*}" -gt "$best" ] && best=${r%.*}
    else
      fails=$((fails + 1))
    fi
  done
  echo "$best $(per_cpu "$bytes" "$(cpu_secs "$ticks")") $fails"
}
# setups PID PROTO PORT MODE -> "setups/s setups-per-CPU-second errors"
setups() {
  local t0 t1 out
  t0=$(cpu_ticks "$1")
  out=$(taskset -c 1 "$W/socks_load" setup "$2" "$3" $P_ORIGIN 50 "$DUR" "$4" 2>&1)
  t1=$(cpu_ticks "$1")
  echo "$out" >> "$W/logs/setup-$3-$4.txt"
  read -r _ n _ e _ r <<<"$out"
  echo "${r%/s} $(per_cpu "$n" "$(cpu_secs $((t1 - t0)))") $e"
}

echo "SOCKS5: proxies on CPU 0, load and origin on CPU 1 (socks_load), ${DUR}s per setup run"
[ -n "$SOCKS_SKIP" ] && echo "ferry SOCKS5 listener: skipped: $SOCKS_SKIP"

# 1. throughput
if [ -z "$SOCKS_SKIP" ]; then read -r T_F B_F X_F < <(stream "$FERRY_PID" socks5 $P_FSOCKS)
else T_F=- B_F=- X_F=-; fi
read -r T_D B_D X_D < <(stream "$DANTE_PID" socks5 $P_DANTE)
read -r T_M B_M X_M < <(stream "$MICRO_PID" socks5 $P_MICRO)
read -r T_C B_C X_C < <(stream "$FERRY_PID" connect $P_FHTTP)
read -r T_N _ X_N < <(stream "$FERRY_PID" none $P_ORIGIN)
row "one tunnel, $((BYTES >> 20)) MiB, best of 3" "ferry SOCKS5" dante microsocks "ferry HTTP*" "no proxy**"
row "throughput" "$(gbs "$T_F")" "$(gbs "$T_D")" "$(gbs "$T_M")" "$(gbs "$T_C")" "$(gbs "$T_N")"
row "ferry / other" "$(one "$T_F")" "$(ratio "$T_F" "$T_D")" "$(ratio "$T_F" "$T_M")" \
  "$(ratio "$T_F" "$T_C")" "$(ratio "$T_F" "$T_N")"
row "bytes per proxy CPU-second" "$(gb "$B_F")" "$(gb "$B_D")" "$(gb "$B_M")" "$(gb "$B_C")"
row "ferry / other, per CPU-second" "$(one "$B_F")" "$(ratio "$B_F" "$B_D")" "$(ratio "$B_F" "$B_M")" \
  "$(ratio "$B_F" "$B_C")"
row "failed runs (of 3)" "$X_F" "$X_D" "$X_M" "$X_C" "$X_N"
echo "  * ferry's HTTP CONNECT listener, same client; ** the client straight from nginx"
echo

# 2. and 3. setups
for mode in close relay; do
  if [ -z "$SOCKS_SKIP" ]; then read -r S_F C_F E_F < <(setups "$FERRY_PID" socks5 $P_FSOCKS $mode)
  else S_F=- C_F=- E_F=-; fi
  read -r S_D C_D E_D < <(setups "$DANTE_PID" socks5 $P_DANTE $mode)
  read -r S_M C_M E_M < <(setups "$MICRO_PID" socks5 $P_MICRO $mode)
  read -r S_C C_C E_C < <(setups "$FERRY_PID" connect $P_FHTTP $mode)
  if [ $mode = close ]; then title="setups, 50 conns (open, close)"
  else title="setup + GET 1 KiB, 50 conns"; fi
  row "$title" "ferry SOCKS5" dante microsocks "ferry HTTP*"
  row "tunnels/s" "$S_F" "$S_D" "$S_M" "$S_C"
  row "ferry / other" "$(one "$S_F")" "$(ratio "$S_F" "$S_D")" "$(ratio "$S_F" "$S_M")" "$(ratio "$S_F" "$S_C")"
  row "tunnels per proxy CPU-second" "$C_F" "$C_D" "$C_M" "$C_C"
  row "ferry / other, per CPU-second" "$(one "$C_F")" "$(ratio "$C_F" "$C_D")" "$(ratio "$C_F" "$C_M")" \
    "$(ratio "$C_F" "$C_C")"
  row "errors" "$E_F" "$E_D" "$E_M" "$E_C"
  [ $mode = close ] && { S_CLOSE_F=$S_F; S_CLOSE_M=$S_M; C_CLOSE_F=$C_F; C_CLOSE_M=$C_M; }
  echo
done
if [ -n "$SOCKS_SKIP" ]; then
  echo "SOCKS5 targets: skipped (no SOCKS5 listener in this build)"
else
  echo "SOCKS5 targets: throughput >= 2x dante ($(ratio "$T_F" "$T_D")x, per CPU-second" \
    "$(ratio "$B_F" "$B_D")x), setups >= microsocks ($(ratio "$S_CLOSE_F" "$S_CLOSE_M")x," \
    "per CPU-second $(ratio "$C_CLOSE_F" "$C_CLOSE_M")x)"
fi
