#!/usr/bin/env bash
# fleet.sh: make bench-fleet: a fleet of ferry nodes on a throwaway
# PostgreSQL (spec/bench/pg.sh), everything on 127.0.0.1.
#   (a) propagation of an inventory change: a proxy POSTed on node A, the
#       time until every other node's admin API knows it (3 and 10 nodes;
#       median and p99 over FLEET_CHANGES changes);
#   (b) the same for a ban: a 429 through node A bans the proxy it went
#       through for the exchange; the time until every other node's
#       console counts the ban;
#   (c) database queries per second per node (ferry_pg_queries_total), at
#       rest and with FLEET_RATE req/s (open loop, rate_load.c) through
#       node A of the 3-node fleet;
#   (d) requests per CPU-second of a node with PostgreSQL connected and of
#       the same node on SQLite, both loaded at once (a wrk each, 50
#       keep-alive clients);
#   (e) the broker client's resolution of a cached lease, in process.
# A part whose feature this ferry build lacks prints "n/a (not built)".
# The fleet's nodes and PostgreSQL run on either core (on 2 cores, 10
# nodes on one would measure the queue for that core); the two nodes of
# (d) on CPU 0; load, the origins and the exit proxy on CPU 1.  Every
# wait and load loop is bounded; only the PIDs this script started are
# stopped.  About 2 minutes with the defaults:
#   FLEET_CHANGES (100), FLEET_SIZES ("3 10"), FLEET_RATE (1000),
#   FLEET_SECONDS (10, each queries window), FLEET_WRK_SECONDS (5).
set -u
cd "$(dirname "$0")/../.." || exit 1
ROOT=$(pwd)
FERRY_BIN=${FERRY_BIN:-$ROOT/bin/ferry}
W=$ROOT/spec/tmp/bench-fleet
CHANGES=${FLEET_CHANGES:-100}
SIZES=${FLEET_SIZES:-3 10}
RATE=${FLEET_RATE:-1000}
SECS=${FLEET_SECONDS:-10}
DUR=${FLEET_WRK_SECONDS:-5}
NA="n/a (not built)"
rm -rf "$W"; mkdir -p "$W/www" "$W/logs"; chmod 755 "$W"
LOAD_START=$(cut -d' ' -f1 /proc/loadavg)

P_ORIGIN=18400 P_EXIT=18401 P_BAN=18402 P_SIDE_PG=18403 P_SIDE_SQL=18404
P_SIDE_PG_ADMIN=18405 P_SIDE_SQL_ADMIN=18406
P_PROXY0=18410 P_ADMIN0=18430   # node k: proxy P_PROXY0+k, admin P_ADMIN0+k
PIDS=()
. "$ROOT/spec/bench/lib.sh"
. "$ROOT/spec/bench/pg.sh"
cleanup() { bench_cleanup; pg_stop; }
trap cleanup EXIT

head -c 1024 /dev/zero | tr '\0' 'x' > "$W/www/1k"
gcc -std=c11 -O2 -Wall -Wextra -o "$W/rate_load" spec/bench/rate_load.c || exit 1
bench_start_origin "$P_ORIGIN"
python3 examples/fleet/origin.py "$P_BAN" > "$W/logs/ban_origin.log" 2>&1 & PIDS+=($!)
printf '%s\n' "listen { name = \"exit\", addr = \"127.0.0.1:$P_EXIT\" }" \
  'log { level = "warn", access = false }' 'route(function() return "direct" end)' > "$W/exit.lua"
taskset -c 1 "$FERRY_BIN" -c "$W/exit.lua" 2> "$W/logs/exit.log" & PIDS+=($!)
for p in $P_ORIGIN $P_BAN $P_EXIT; do wait_port "$p" || exit 1; done

# Enough proxies in the banned pool that one is always left.
BAN_PROXIES=$((CHANGES + 10))

# node_conf ID PROXY_PORT ADMIN_PORT STORE: a node's config.  Traffic to
# 127.0.0.1 is the exchange "x" (pool "banned", proxies told apart by user
# name, all through the exit); runtime proxies go to pool "bench".
node_conf() {
  local i
  echo "$4"
  echo "listen { name = \"proxy\", addr = \"127.0.0.1:$2\" }"
  echo "admin { addr = \"127.0.0.1:$3\" }"
  echo 'log { level = "warn", access = false }'
  echo "pool \"bench\" { strategy = \"round_robin\", proxies = { \"http://127.0.0.1:$P_EXIT\" } }"
  echo "pool \"banned\" { strategy = \"round_robin\", proxies = {"
  for i in $(seq 1 "$BAN_PROXIES"); do
    echo "  { url = \"http://b$i@127.0.0.1:$P_EXIT\", id = \"b$i\" },"
  done
  echo "} }"
  echo "exchange \"x\" { hosts = { \"127.0.0.1\" }, pool = \"banned\","
  echo "               ban = { status = { 429 }, backoff = 3600 } }"
  echo 'route(function() return "bench" end)'
}
pg_store() { # ID -> the fleet lines of a node
  printf 'store { postgres = env "FERRY_PG" }\nnode { id = "%s", advertise = "127.0.0.1:%s", heartbeat = 2 }\n' "$1" "$2"
}

# Does this build know store { postgres } and node { }?
node_conf probe $P_PROXY0 $P_ADMIN0 "$(pg_store probe $P_ADMIN0)" > "$W/probe.lua"
if WHY=$(FERRY_PG="host=127.0.0.1" ferry_accepts "$FERRY_BIN" "$W/probe.lua"); then HAVE_PG=1
else HAVE_PG=0; echo "fleet: this build has no PostgreSQL store ($WHY)"; fi
if [ "$HAVE_PG" = 1 ]; then
  pg_start || { echo "fleet: could not start PostgreSQL (see $W/logs)"; HAVE_PG=0; }
fi

http_get() { curl -s --max-time 5 "http://127.0.0.1:$1$2"; }
# metric_sum PORT NAME: the sum of every sample of NAME, or nothing.
metric_sum() {
  http_get "$1" /metrics | awk -v n="$2" '$1 == n || index($1, n "{") == 1 { s += $NF; f = 1 }
    END { if (f) printf "%.0f", s }'
}

FLEET=()  # PIDs of the current fleet's nodes
start_fleet() { # SIZE DB
  local k conninfo
  conninfo=$(pg_conninfo "$2")
  FLEET=()
  for k in $(seq 1 "$1"); do
    node_conf "n$k" $((P_PROXY0 + k)) $((P_ADMIN0 + k)) "$(pg_store "n$k" $((P_ADMIN0 + k)))" \
      > "$W/n$k.lua"
    FERRY_PG=$conninfo "$FERRY_BIN" -c "$W/n$k.lua" 2> "$W/logs/$2-n$k.log" &
    PIDS+=($!); FLEET+=($!)
  done
  for k in $(seq 1 "$1"); do wait_port $((P_ADMIN0 + k)) || return 1; done
  # Until node A lists the whole fleet (when this build has /api/v1/nodes),
  # at most 20 s; else a fixed 3 s for the connections to come up.
  if http_get $((P_ADMIN0 + 1)) /api/v1/nodes | grep -q '"id"'; then
    for _ in $(seq 1 100); do
      [ "$(http_get $((P_ADMIN0 + 1)) /api/v1/nodes | grep -o '"id"' | wc -l)" -ge "$1" ] && return 0
      sleep 0.2
    done
    echo "fleet: node A does not list $1 nodes after 20 s" >&2
  else
    sleep 3
  fi
}
stop_fleet() {
  local p
  for p in "${FLEET[@]}"; do kill "$p" 2>/dev/null; done
  for _ in $(seq 1 50); do
    local alive=0
    for p in "${FLEET[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break; sleep 0.1
  done
  for p in "${FLEET[@]}"; do kill -9 "$p" 2>/dev/null; done
  FLEET=()
}
others() { local k; for k in $(seq 2 "$1"); do echo $((P_ADMIN0 + k)); done; }

# prop KIND SIZE DB: (a) or (b) on the running fleet; sets PROP_<field>
# from fleet_prop.py's output, or PROP_NA.  A first change, waited for at
# most 5 s, tells whether this build shares that kind at all.
prop() {
  local out
  PROP_NA="" PROP_PER="" PROP_ALL="" PROP_CHANGE="" PROP_ROUND=""
  if [ "$1" = inventory ]; then
    out=$(python3 spec/bench/fleet_prop.py inventory 1 "w$2" bench $P_EXIT $((P_ADMIN0 + 1)) \
      $(others "$2") 2>&1)
  else
    out=$(python3 spec/bench/fleet_prop.py ban 1 x $((P_PROXY0 + 1)) $P_BAN $((P_ADMIN0 + 1)) \
      $(others "$2") 2>&1)
  fi
  echo "$1 $2 warm-up: $out" >> "$W/logs/prop.txt"
  if ! echo "$out" | grep -q '^per_node' || echo "$out" | grep -q 'missed [1-9]'; then
    PROP_NA=$NA; return 0
  fi
  if [ "$1" = inventory ]; then
    out=$(python3 spec/bench/fleet_prop.py inventory "$CHANGES" "p$2" bench $P_EXIT \
      $((P_ADMIN0 + 1)) $(others "$2") 2>&1)
  else
    out=$(python3 spec/bench/fleet_prop.py ban "$CHANGES" x $((P_PROXY0 + 1)) $P_BAN \
      $((P_ADMIN0 + 1)) $(others "$2") 2>&1)
  fi
  echo "$1 $2: $out" >> "$W/logs/prop.txt"
  echo "$out" | grep -q '^per_node' || { PROP_NA="error (see $W/logs/prop.txt)"; return 0; }
  PROP_PER=$(echo "$out" | awk '$1 == "per_node" { printf "%s %s %s %s", $5, $7, $9, $11 }')
  PROP_ALL=$(echo "$out" | awk '$1 == "all_nodes" { printf "%s %s %s", $5, $7, $3 }')
  PROP_CHANGE=$(echo "$out" | awk '$1 == "change" { printf "%s %s", $5, $7 }')
  PROP_ROUND=$(echo "$out" | awk '$1 == "poll_round_ms" { print $2 }')
}

declare -A FIG=()
prop_record() { # KIND SIZE
  local key="$1 $2"
  if [ -n "$PROP_NA" ]; then FIG[$key]=$PROP_NA; return; fi
  read -r m p x missed <<< "$PROP_PER"
  read -r am ap an <<< "$PROP_ALL"
  read -r cm cp <<< "$PROP_CHANGE"
  FIG[$key]="$m $p $x $missed $am $ap $an $cm $cp $PROP_ROUND"
}

# (c): queries per second of each node over SECS, at rest then under load.
queries() { # SIZE -> Q_REST_MEAN Q_REST_MAX Q_LOAD_A Q_LOAD_OTHERS RATE_OUT
  local k a b
  declare -a q0 q1
  Q_NA=""
  [ -n "$(metric_sum $((P_ADMIN0 + 1)) ferry_pg_queries_total)" ] || { Q_NA=$NA; return; }
  for k in $(seq 1 "$1"); do q0[k]=$(metric_sum $((P_ADMIN0 + k)) ferry_pg_queries_total); done
  sleep "$SECS"
  for k in $(seq 1 "$1"); do q1[k]=$(metric_sum $((P_ADMIN0 + k)) ferry_pg_queries_total); done
  Q_REST_MEAN=$(for k in $(seq 1 "$1"); do echo "${q0[k]} ${q1[k]}"; done |
    awk -v s="$SECS" '{ t += ($2 - $1) / s; if (($2 - $1) / s > m) m = ($2 - $1) / s }
      END { printf "%.1f %.1f", t / NR, m }')
  read -r Q_REST_MEAN Q_REST_MAX <<< "$Q_REST_MEAN"
  for k in $(seq 1 "$1"); do q0[k]=$(metric_sum $((P_ADMIN0 + k)) ferry_pg_queries_total); done
  RATE_OUT=$(taskset -c 1 "$W/rate_load" $((P_PROXY0 + 1)) "http://127.0.0.1:$P_ORIGIN/1k" 50 \
    "$RATE" "$SECS" 2>> "$W/logs/rate_load.err")
  for k in $(seq 1 "$1"); do q1[k]=$(metric_sum $((P_ADMIN0 + k)) ferry_pg_queries_total); done
  echo "rate_load: $RATE_OUT" >> "$W/logs/rate_load.txt"
  a=$(awk -v x="${q0[1]}" -v y="${q1[1]}" -v s="$SECS" 'BEGIN { printf "%.1f", (y - x) / s }')
  b=$(for k in $(seq 2 "$1"); do echo "${q0[k]} ${q1[k]}"; done |
    awk -v s="$SECS" '{ t += ($2 - $1) / s } END { printf "%.1f", NR ? t / NR : 0 }')
  Q_LOAD_A=$a Q_LOAD_OTHERS=$b
}

# (d): wrk through a node on PostgreSQL and through the same node on
# SQLite; requests per CPU-second of each node.  CPU time from
# /proc/PID/task/*/schedstat (nanoseconds: a clock tick is too coarse for
# the fraction of a core a node uses here).
cpu_ns() { cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{ s += $1 } END { printf "%.0f", s }'; }
side_by_side() { # DB
  local conninfo pg_pid sql_pid r t0 t1 round
  SIDE_PG_R=0 SIDE_PG_C=0 SIDE_SQL_R=0 SIDE_SQL_C=0
  conninfo=$(pg_conninfo "$1")
  node_conf side-pg $P_SIDE_PG $P_SIDE_PG_ADMIN "$(pg_store side-pg $P_SIDE_PG_ADMIN)" > "$W/side-pg.lua"
  node_conf side-sql $P_SIDE_SQL $P_SIDE_SQL_ADMIN "store { path = \"$W/side.db\" }" > "$W/side-sql.lua"
  FERRY_PG=$conninfo taskset -c 0 "$FERRY_BIN" -c "$W/side-pg.lua" 2> "$W/logs/side-pg.log" &
  pg_pid=$!; PIDS+=($pg_pid)
  taskset -c 0 "$FERRY_BIN" -c "$W/side-sql.lua" 2> "$W/logs/side-sql.log" & sql_pid=$!; PIDS+=($sql_pid)
  wait_port $P_SIDE_PG_ADMIN || return 1; wait_port $P_SIDE_SQL_ADMIN || return 1
  # Until the PostgreSQL node is up in the fleet (at most 10 s), then a
  # warm-up run of both, not counted.
  for _ in $(seq 1 50); do
    [ "$(metric_sum $P_SIDE_PG_ADMIN ferry_pg_up)" = 1 ] && break; sleep 0.2
  done
  echo "wrk.path = \"http://127.0.0.1:$P_ORIGIN/1k\"" > "$W/absolute.lua"
  taskset -c 1 wrk -t1 -c50 -d2s -s "$W/absolute.lua" "http://127.0.0.1:$P_SIDE_PG/" > /dev/null 2>&1 &
  taskset -c 1 wrk -t1 -c50 -d2s -s "$W/absolute.lua" "http://127.0.0.1:$P_SIDE_SQL/" > /dev/null 2>&1
  wait $!
  sleep 1
  local q0; q0=$(metric_sum $P_SIDE_PG_ADMIN ferry_pg_queries_total)
  # Both at once (two wrk on CPU 1, the nodes on CPU 0), so whatever else
  # the machine does falls on both alike; three rounds, summed.
  for round in 1 2 3; do
    local tp0 ts0 tp1 ts1 rp rs
    tp0=$(cpu_ns $pg_pid); ts0=$(cpu_ns $sql_pid)
    taskset -c 1 wrk -t1 -c50 -d"${DUR}"s -s "$W/absolute.lua" "http://127.0.0.1:$P_SIDE_PG/" \
      > "$W/logs/wrk-side-pg-$round.txt" 2>&1 &
    local wp=$!
    taskset -c 1 wrk -t1 -c50 -d"${DUR}"s -s "$W/absolute.lua" "http://127.0.0.1:$P_SIDE_SQL/" \
      > "$W/logs/wrk-side-sql-$round.txt" 2>&1
    wait $wp
    tp1=$(cpu_ns $pg_pid); ts1=$(cpu_ns $sql_pid)
    rp=$(awk '/requests in/ { print $1 }' "$W/logs/wrk-side-pg-$round.txt")
    rs=$(awk '/requests in/ { print $1 }' "$W/logs/wrk-side-sql-$round.txt")
    SIDE_PG_R=$((SIDE_PG_R + ${rp:-0})) SIDE_PG_C=$((SIDE_PG_C + tp1 - tp0))
    SIDE_SQL_R=$((SIDE_SQL_R + ${rs:-0})) SIDE_SQL_C=$((SIDE_SQL_C + ts1 - ts0))
    echo "side round $round: pg ${rp:-0} req $((tp1 - tp0)) ns, sqlite ${rs:-0} req" \
      "$((ts1 - ts0)) ns" >> "$W/logs/side.txt"
  done
  SIDE_PG_Q=$(( $(metric_sum $P_SIDE_PG_ADMIN ferry_pg_queries_total) - ${q0:-0} ))
  kill $pg_pid $sql_pid 2>/dev/null
}

[ "$HAVE_PG" = 1 ] && for size in $SIZES; do
  pg_createdb "fleet$size" || { echo "fleet: createdb failed" >&2; break; }
  start_fleet "$size" "fleet$size" || { echo "fleet: $size nodes did not start" >&2; stop_fleet; continue; }
  # (d) and (c) first, while the nodes hold the config's proxies only (as
  # the SQLite node does).
  if [ "$size" = "$(echo "$SIZES" | awk '{print $1}')" ]; then
    side_by_side "fleet$size"
    queries "$size"; Q_SIZE=$size
  fi
  prop inventory "$size"; prop_record inventory "$size"
  prop ban "$size"; prop_record ban "$size"
  stop_fleet
done

# (e): the broker client's own micro-benchmark (the cached leases of a
# broker pool resolved in process; spec/bench/broker_client_resolve.lua,
# also part of make bench), when this build has it.
BC_OUT=$NA
if [ -f spec/bench/broker_client_resolve.lua ]; then
  [ -f build/libferry.so ] || make -s build/libferry.so > /dev/null 2>&1
  BC_OUT=$(timeout 120 luajit spec/bench/broker_client_resolve.lua 0.3 \
    2> "$W/logs/broker_client.err" | grep -m1 '^broker client')
fi
[ -n "$BC_OUT" ] || BC_OUT="error (see $W/logs/broker_client.err)"

echo "fleet bench: PostgreSQL 15 and the fleet's nodes on either core; load, origin and exit"
echo "  on CPU 1 (the nodes of the PostgreSQL/SQLite table on CPU 0); all on 127.0.0.1;"
echo "  $CHANGES changes per figure; $(nproc) cores shared with whatever else runs (load average"
echo "  $LOAD_START at the start, $(cut -d' ' -f1 /proc/loadavg) at the end)"
echo
printf '%-26s %8s %8s %8s %7s %10s %8s %10s %6s\n' "propagation (ms)" "median" "p99" "max" "missed" \
  "all:median" "all:p99" "change:p50" "poll"
for kind in inventory ban; do
  for size in $SIZES; do
    v=${FIG["$kind $size"]:-$NA}
    label="$kind, $size nodes"
    if [[ "$v" == n/a* || "$v" == error* ]]; then printf '%-26s %s\n' "$label" "$v"; continue; fi
    read -r m p x missed am ap an cm cp round <<< "$v"
    printf '%-26s %8s %8s %8s %7s %10s %8s %10s %6.2f\n' "$label" "$m" "$p" "$x" "$missed" "$am" "$ap" \
      "$cm" "$round"
  done
done
echo "  per other node (changes x nodes); all: until the last node saw it; change: node A's own"
echo "  answer (the POST, which waits for the database; or the 429); poll: the median poll round"
echo "  (all waiting nodes asked at once), by which a figure may be late"
echo
if [ "$HAVE_PG" = 1 ] && [ -z "${Q_NA-x}" ]; then
  echo "database queries per second per node ($Q_SIZE nodes, ${SECS}s each)"
  printf '%-34s %9s\n' "at rest, mean of the nodes" "$Q_REST_MEAN"
  printf '%-34s %9s\n' "at rest, busiest node" "$Q_REST_MAX"
  printf '%-34s %9s\n' "node A under $RATE req/s" "$Q_LOAD_A"
  printf '%-34s %9s\n' "other nodes meanwhile (mean)" "$Q_LOAD_OTHERS"
  echo "  load: $RATE_OUT"
else
  echo "database queries per second per node: ${Q_NA:-$NA}"
fi
echo
if [ "$HAVE_PG" = 1 ] && [ "${SIDE_PG_C:-0}" -gt 0 ] && [ "${SIDE_SQL_C:-0}" -gt 0 ]; then
  PG_RPC=$(awk -v r="$SIDE_PG_R" -v t="$SIDE_PG_C" 'BEGIN { printf "%.0f", r / (t / 1e9) }')
  SQL_RPC=$(awk -v r="$SIDE_SQL_R" -v t="$SIDE_SQL_C" 'BEGIN { printf "%.0f", r / (t / 1e9) }')
  printf '%-34s %11s %11s %11s\n' "absolute GET 1 KiB, 50 conns" PostgreSQL SQLite "pg/sqlite"
  printf '%-34s %11s %11s %11s\n' "requests/s" "$((SIDE_PG_R / (3 * DUR)))" \
    "$((SIDE_SQL_R / (3 * DUR)))" "$(ratio "$SIDE_PG_R" "$SIDE_SQL_R")"
  printf '%-34s %11s %11s %11s\n' "requests per node CPU-second" "$PG_RPC" "$SQL_RPC" \
    "$(ratio "$PG_RPC" "$SQL_RPC")"
  echo "  the same node config but the store, through exchange x and its pool; both loaded at once"
  echo "  (a wrk each), 3 x ${DUR}s; the PostgreSQL node is a member of the running fleet and"
  echo "  sent ${SIDE_PG_Q:-?} queries meanwhile"
else
  echo "PostgreSQL vs SQLite, requests per CPU-second: $NA"
fi
echo
echo "${BC_OUT#broker client, }" | sed 's/^/broker client: /'
