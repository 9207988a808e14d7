# shellcheck shell=bash
# pg.sh: a throwaway PostgreSQL for the benches (sourced; spec/bench/fleet.sh).
# Needs W (the bench's scratch directory).  On 127.0.0.1 and a free port,
# data in $W/pg, as the postgres user when run as root (PostgreSQL refuses
# root), fsync off (a bench database is thrown away).
#   pg_start          -> PG_PID, PG_PORT, PG_PASS; 1 when there is no PostgreSQL
#   pg_createdb NAME  -> a database owned by the ferry role
#   pg_conninfo NAME  -> the libpq connection string of that database
#   pg_stop           -> fast shutdown of the server pg_start started (by PID)

PG_PID="" PG_PORT="" PG_PASS=""

pg_bin() {
  local d
  for d in ${PG_BIN:-} /usr/lib/postgresql/15/bin $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -rV); do
    [ -x "$d/postgres" ] && { echo "$d"; return 0; }
  done
  return 1
}

pg_start() {
  local bin as=() p _
  bin=$(pg_bin) || return 1
  for _ in $(seq 1 200); do
    p=$((20000 + RANDOM % 12000))
    (exec 3<>/dev/tcp/127.0.0.1/"$p") 2>/dev/null || { PG_PORT=$p; break; }
  done
  [ -n "$PG_PORT" ] || return 1
  PG_PASS=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
  mkdir -p "$W/pg" "$W/pgsock"
  printf '%s\n' "$PG_PASS" > "$W/pgpass"
  chmod 700 "$W/pg"; chmod 600 "$W/pgpass"
  if [ "$(id -u)" = 0 ]; then
    chown postgres:postgres "$W/pg" "$W/pgsock" "$W/pgpass"
    as=(setpriv --reuid=postgres --regid=postgres --init-groups --)
  fi
  "${as[@]}" "$bin/initdb" -D "$W/pg" -U ferry --pwfile="$W/pgpass" --auth=scram-sha-256 \
    --no-sync -E UTF8 > "$W/logs/initdb.log" 2>&1 || return 1
  rm -f "$W/pgpass"
  "${as[@]}" "$bin/postgres" -D "$W/pg" -p "$PG_PORT" -k "$W/pgsock" \
    -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
    -c max_connections=60 > "$W/logs/postgres.log" 2>&1 &
  PG_PID=$!
  for _ in $(seq 1 100); do
    PGPASSWORD=$PG_PASS "$bin/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" && return 0
    sleep 0.1
  done
  return 1
}

pg_createdb() {
  PGPASSWORD=$PG_PASS "$(pg_bin)/createdb" -h 127.0.0.1 -p "$PG_PORT" -U ferry "$1"
}

pg_conninfo() {
  echo "host=127.0.0.1 port=$PG_PORT dbname=$1 user=ferry password=$PG_PASS connect_timeout=5"
}

pg_stop() {
  [ -n "$PG_PID" ] || return 0
  kill -INT "$PG_PID" 2>/dev/null
  for _ in $(seq 1 100); do kill -0 "$PG_PID" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$PG_PID" 2>/dev/null
  PG_PID=""
}
