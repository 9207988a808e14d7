#!/usr/bin/env bash
# run.sh: a 3-node ferry fleet on this machine (see README.md).
#
# Starts, all on 127.0.0.1:
#   - a throwaway PostgreSQL 15 in a temporary directory (as the postgres
#     user when run as root), on a free port, with a random password;
#   - origin.py (an origin that answers 200 on / and 429 on /429);
#   - exits.lua (four exit proxies going direct: three are the shared
#     pool, the fourth is there to be added at runtime);
#   - node-a.lua, node-b.lua, node-c.lua with FERRY_PG pointing at the
#     database;
# prints how to talk to each node, and stops everything it started (by
# PID) on Ctrl-C, SIGTERM or exit.  Nothing is left behind but what
# FLEET_KEEP=1 keeps (the temporary directory, logs included).
#
# Environment: FERRY_BIN (default bin/ferry of this tree, else ferry on
# PATH), FLEET_PORT (base port, default 8300: proxies base+1..3, admin
# base+11..13, exits base+21..24, origin base+30), PG_BIN (the directory
# of initdb and postgres; default the newest /usr/lib/postgresql/*/bin),
# FLEET_SECONDS (stop by itself after that many seconds; default: run
# until interrupted).
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
if [ -z "${FERRY_BIN:-}" ]; then
  if [ -x "$ROOT/bin/ferry" ]; then FERRY_BIN=$ROOT/bin/ferry; else FERRY_BIN=$(command -v ferry || true); fi
fi
[ -x "${FERRY_BIN:-}" ] || { echo "run.sh: no ferry binary (make, or set FERRY_BIN)" >&2; exit 1; }
export FLEET_PORT=${FLEET_PORT:-8300}
B=$FLEET_PORT

if [ -z "${PG_BIN:-}" ]; then
  for d in /usr/lib/postgresql/15/bin $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -rV); do
    [ -x "$d/postgres" ] && { PG_BIN=$d; break; }
  done
fi
[ -x "${PG_BIN:-}/postgres" ] || {
  echo "run.sh: PostgreSQL not found (apt-get install postgresql-15, or set PG_BIN)" >&2; exit 1; }

port_open() { (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null; }
wait_port() { local _; for _ in $(seq 1 150); do port_open "$1" && return 0; sleep 0.1; done
  echo "run.sh: nothing answers on 127.0.0.1:$1" >&2; return 1; }
# A port no one listens on, below the ephemeral range.
free_port() { local p _; for _ in $(seq 1 200); do p=$((20000 + RANDOM % 12000))
  port_open "$p" || { echo "$p"; return 0; }; done; return 1; }

for p in $((B + 1)) $((B + 2)) $((B + 3)) $((B + 11)) $((B + 12)) $((B + 13)) \
         $((B + 21)) $((B + 22)) $((B + 23)) $((B + 24)) $((B + 30)); do
  if port_open "$p"; then
    echo "run.sh: 127.0.0.1:$p is taken; choose other ports with FLEET_PORT=9300 $0" >&2; exit 1
  fi
done

FLEET_DIR=$(mktemp -d /tmp/ferry-fleet.XXXXXX) || exit 1
export FLEET_DIR
chmod 755 "$FLEET_DIR"
PIDS=()      # ferry and origin processes, stopped first
PG_PID=""
cleanup() {
  trap - EXIT INT TERM
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  for _ in $(seq 1 50); do
    local alive=0
    for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break; sleep 0.1
  done
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
  if [ -n "$PG_PID" ]; then
    kill -INT "$PG_PID" 2>/dev/null   # fast shutdown
    for _ in $(seq 1 100); do kill -0 "$PG_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$PG_PID" 2>/dev/null
  fi
  wait 2>/dev/null
  if [ "${FLEET_KEEP:-0}" = 1 ]; then echo "run.sh: kept $FLEET_DIR"
  else rm -rf "$FLEET_DIR"; fi
  echo "run.sh: fleet stopped"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# PostgreSQL: its own user when we are root (it refuses to run as root).
PG_PORT=$(free_port) || { echo "run.sh: no free port for PostgreSQL" >&2; exit 1; }
PG_PASS=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
mkdir -p "$FLEET_DIR/pg" "$FLEET_DIR/pgsock"
printf '%s\n' "$PG_PASS" > "$FLEET_DIR/pgpass"
chmod 700 "$FLEET_DIR/pg"; chmod 600 "$FLEET_DIR/pgpass"
AS=()
if [ "$(id -u)" = 0 ]; then
  chown postgres:postgres "$FLEET_DIR/pg" "$FLEET_DIR/pgsock" "$FLEET_DIR/pgpass"
  AS=(setpriv --reuid=postgres --regid=postgres --init-groups --)
fi
"${AS[@]}" "$PG_BIN/initdb" -D "$FLEET_DIR/pg" -U ferry --pwfile="$FLEET_DIR/pgpass" \
  --auth=scram-sha-256 --no-sync -E UTF8 >"$FLEET_DIR/initdb.log" 2>&1 || {
  echo "run.sh: initdb failed:" >&2; cat "$FLEET_DIR/initdb.log" >&2; exit 1; }
rm -f "$FLEET_DIR/pgpass"
"${AS[@]}" "$PG_BIN/postgres" -D "$FLEET_DIR/pg" -p "$PG_PORT" -k "$FLEET_DIR/pgsock" \
  -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50 \
  >"$FLEET_DIR/postgres.log" 2>&1 &
PG_PID=$!
wait_port "$PG_PORT" || { cat "$FLEET_DIR/postgres.log" >&2; exit 1; }
export PGPASSWORD=$PG_PASS
for _ in $(seq 1 50); do
  "$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U ferry ferry 2>/dev/null && break; sleep 0.2
done
unset PGPASSWORD
# The connection string carries the password: ferry never logs it.
export FERRY_PG="host=127.0.0.1 port=$PG_PORT dbname=ferry user=ferry password=$PG_PASS connect_timeout=5"

python3 "$HERE/origin.py" $((B + 30)) & PIDS+=($!)
"$FERRY_BIN" -c "$HERE/exits.lua" 2>"$FLEET_DIR/exits.log" & PIDS+=($!)
declare -A NODE_PID=()
for n in a b c; do
  "$FERRY_BIN" -c "$HERE/node-$n.lua" 2>"$FLEET_DIR/node-$n.log" & PIDS+=($!); NODE_PID[$n]=$!
done
for p in $((B + 30)) $((B + 21)) $((B + 11)) $((B + 12)) $((B + 13)); do
  wait_port "$p" || { tail -n 5 "$FLEET_DIR"/*.log >&2; exit 1; }
done

cat <<INFO
ferry fleet of 3 nodes is up (PostgreSQL on 127.0.0.1:$PG_PORT, pid $PG_PID, data in $FLEET_DIR)

  node     pid      proxy            admin API         console
  node-a   $(printf '%-8s' "${NODE_PID[a]}") 127.0.0.1:$((B + 1))   127.0.0.1:$((B + 11))   $FLEET_DIR/node-a.sock
  node-b   $(printf '%-8s' "${NODE_PID[b]}") 127.0.0.1:$((B + 2))   127.0.0.1:$((B + 12))   $FLEET_DIR/node-b.sock
  node-c   $(printf '%-8s' "${NODE_PID[c]}") 127.0.0.1:$((B + 3))   127.0.0.1:$((B + 13))   $FLEET_DIR/node-c.sock
  exits    127.0.0.1:$((B + 21))-$((B + 24))   origin 127.0.0.1:$((B + 30))
  logs     $FLEET_DIR/*.log

Try:
  curl -x http://127.0.0.1:$((B + 1)) http://127.0.0.1:$((B + 30))/
  curl -s http://127.0.0.1:$((B + 12))/api/v1/nodes
  curl -s -X POST http://127.0.0.1:$((B + 11))/api/v1/proxies \\
       -d '{"pool":"exits","url":"http://127.0.0.1:$((B + 24))","id":"exit4"}'
  curl -s http://127.0.0.1:$((B + 13))/api/v1/proxies/exit4      # on node-c at once
  curl -x http://127.0.0.1:$((B + 2)) http://127.0.0.1:$((B + 30))/429   # bans an exit ...
  $FERRY_BIN console -s $FLEET_DIR/node-c.sock -e 'exchange.list()'   # ... on every node
Ctrl-C stops the fleet and PostgreSQL.
INFO

# Until interrupted (or FLEET_SECONDS): say so when a process ends early.
START=$SECONDS
declare -A GONE=()
while :; do
  if [ -n "${FLEET_SECONDS:-}" ] && [ $((SECONDS - START)) -ge "$FLEET_SECONDS" ]; then exit 0; fi
  for p in "${PIDS[@]}" "$PG_PID"; do
    if [ -z "${GONE[$p]:-}" ] && ! kill -0 "$p" 2>/dev/null; then
      GONE[$p]=1; echo "run.sh: process $p ended (see $FLEET_DIR/*.log)" >&2
    fi
  done
  sleep 1
done
