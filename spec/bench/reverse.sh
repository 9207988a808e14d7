#!/usr/bin/env bash
# reverse.sh: ferry as a reverse proxy (a `reverse` listener in front of a
# backend pool) side by side with haproxy and nginx in one run, all three
# in front of the same two backends.  Part of make bench; runs alone as
# well (make bench-reverse).
#   1. GET 1 KiB and GET 64 KiB, no cache, keep-alive (wrk, REV_CONC
#      connections): requests/s and requests per proxy CPU-second;
#   2. the same with a warm cache: ferry `cache = {...}`, haproxy's `cache`,
#      nginx proxy_cache;
#   3. latency at a fixed rate: REV_RATE GET 1 KiB a second, open loop
#      (spec/bench/rate_load.c), p50/p99/p99.9, no cache.
# The backends are two nginx processes serving static files with
# `Cache-Control: max-age=300`; each proxy balances them round robin over
# kept connections and adds X-Forwarded-For.  Proxies on CPU 0, load and
# backends on CPU 1, all on 127.0.0.1, each run bounded in time.  When
# started as root every proxy and backend runs as nobody (setpriv).  The
# columns of a table run interleaved in REV_ROUNDS rounds so that a burst
# of load elsewhere falls on all of them.  A ferry build without the
# reverse listener (or without the cache) prints "skipped: <why>".
set -u
cd "$(dirname "$0")/../.." || exit 1
ROOT=$(pwd)
FERRY_BIN=${FERRY_BIN:-$ROOT/bin/ferry}
W=$ROOT/spec/tmp/bench-reverse
DUR=${BENCH_SECONDS:-10}
CONC=${REV_CONC:-50}
ROUNDS=${REV_ROUNDS:-3}
RATE=${REV_RATE:-2000}
LAT_DUR=${REV_LAT_SECONDS:-$DUR}
# Which tables: any of "plain cache latency" (a latency run alone, say).
PARTS=" ${REV_PARTS:-plain cache latency} "
rm -rf "$W"; mkdir -p "$W/www" "$W/logs"; chmod 777 "$W" "$W/logs"

P_B1=18160 P_B2=18161 P_FERRY=18162 P_HAPROXY=18163 P_NGINX=18164
P_FCACHE=18165 P_HCACHE=18166 P_NCACHE=18167
PIDS=()
. "$ROOT/spec/bench/lib.sh"
trap bench_cleanup EXIT
# A port some other process holds would measure that process.
for p in $P_B1 $P_B2 $P_FERRY $P_HAPROXY $P_NGINX $P_FCACHE $P_HCACHE $P_NCACHE; do
  if (exec 3<>/dev/tcp/127.0.0.1/"$p") 2>/dev/null; then
    echo "reverse bench: port $p is already in use on 127.0.0.1" >&2; exit 1
  fi
done

head -c 1024 /dev/zero | tr '\0' 'x' > "$W/www/1k"
head -c 65536 /dev/zero | tr '\0' 'x' > "$W/www/64k"
chmod -R a+rX "$W/www"
gcc -std=c11 -O2 -Wall -Wextra -Wshadow -o "$W/rate_load" spec/bench/rate_load.c || exit 1

# unpriv CMD...: CMD (same PID) as nobody when we are root, else as we are.
unpriv() {
  if [ "$(id -u)" = 0 ]; then exec setpriv --reuid=nobody --regid=nogroup --clear-groups "$@"; fi
  exec "$@"
}

# ---- the backends: two nginx on CPU 1, cacheable answers, request counts ----
backend() { # NAME PORT
  mkdir -p "$W/$1"
  cat > "$W/$1.conf" <<CONF
worker_processes 1;
pid $W/$1/nginx.pid;
error_log $W/logs/$1.err;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on;
  keepalive_requests 1000000;
  client_body_temp_path $W/$1/body;
  proxy_temp_path $W/$1/proxy;
  fastcgi_temp_path $W/$1/fastcgi;
  uwsgi_temp_path $W/$1/uwsgi;
  scgi_temp_path $W/$1/scgi;
  server {
    listen 127.0.0.1:$2;
    root $W/www;
    expires 300s;
    location = /status { stub_status; }
  }
}
CONF
  chmod 777 "$W/$1"
  (unpriv taskset -c 1 nginx -p "$W/$1" -c "$W/$1.conf" -e "$W/logs/$1.err" -g 'daemon off;' \
    >"$W/logs/$1.out" 2>&1) &
  PIDS+=($!)
}
# Requests a backend has served so far (stub_status), counted by the
# proxies' runs; "-" when it does not answer.
served() {
  curl -s --max-time 5 "http://127.0.0.1:$1/status" 2>/dev/null |
    awk 'NR == 3 { print $3; found = 1 } END { if (!found) print "-" }'
}
backend b1 $P_B1
backend b2 $P_B2

# ---- ferry: a reverse listener, a backend pool, and one with a cache ----
ferry_conf() { # FILE PORT [POOL-EXTRA]
  cat > "$1" <<CONF
listen { name = "rev", protocol = "reverse", addr = "127.0.0.1:$2", pool = "app" }
log { level = "warn", access = false }
pool "app" {
  strategy = "round_robin",
  backends = { "http://127.0.0.1:$P_B1", "http://127.0.0.1:$P_B2" },${3:+
  $3,}
}
CONF
}
FERRY_CACHE_FIELDS=${REV_FERRY_CACHE:-'cache = { size = "64MB", max_object = "1MB", ttl = 300 }'}
ferry_conf "$W/ferry.lua" $P_FERRY
ferry_conf "$W/ferry-cache.lua" $P_FCACHE "$FERRY_CACHE_FIELDS"
chmod a+r "$W"/*.lua
FERRY_SKIP="" FCACHE_SKIP=""
if ! FERRY_SKIP=$(ferry_accepts "$FERRY_BIN" "$W/ferry.lua"); then
  FCACHE_SKIP="no reverse listener"
else
  FERRY_SKIP=""
  (unpriv taskset -c 0 "$FERRY_BIN" -c "$W/ferry.lua" 2>"$W/logs/ferry.err") & FERRY_PID=$!
  PIDS+=("$FERRY_PID")
  if FCACHE_SKIP=$(ferry_accepts "$FERRY_BIN" "$W/ferry-cache.lua"); then
    FCACHE_SKIP=""
    (unpriv taskset -c 0 "$FERRY_BIN" -c "$W/ferry-cache.lua" 2>"$W/logs/ferry-cache.err") &
    FCACHE_PID=$!; PIDS+=("$FCACHE_PID")
  fi
fi

# ---- haproxy: one process per column, one thread ----
# haproxy_conf FILE PORT CACHE(0|1).  Its cache stores an object up to
# max-object-size bytes (headers and body); 1 MB fits the 64 KiB answer.
haproxy_conf() {
  local use="" store="" section=""
  if [ "$3" = 1 ]; then
    use="  http-request cache-use c"
    store="  http-response cache-store c"
    section="cache c
  total-max-size 64
  max-object-size 1048576
  max-age 300"
  fi
  cat > "$1" <<CONF
global
  nbthread 1
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
  option forwardfor
$section
frontend fe
  bind 127.0.0.1:$2
  default_backend app
backend app
  balance roundrobin
  http-reuse always
$use
$store
  server b1 127.0.0.1:$P_B1
  server b2 127.0.0.1:$P_B2
CONF
}
haproxy_conf "$W/haproxy.cfg" $P_HAPROXY 0
haproxy_conf "$W/haproxy-cache.cfg" $P_HCACHE 1
chmod a+r "$W"/*.cfg
(unpriv taskset -c 0 haproxy -f "$W/haproxy.cfg" -db >"$W/logs/haproxy.out" 2>&1) &
HAPROXY_PID=$!; PIDS+=("$HAPROXY_PID")
(unpriv taskset -c 0 haproxy -f "$W/haproxy-cache.cfg" -db >"$W/logs/haproxy-cache.out" 2>&1) &
HCACHE_PID=$!; PIDS+=("$HCACHE_PID")

# ---- nginx as the proxy: one worker, kept upstream connections ----
# nginx_conf NAME PORT CACHE(0|1).  proxy_buffers hold a 64 KiB answer in
# memory (the default 8 x 4k would spill it to a temporary file).
nginx_conf() {
  local cache_path="" cache=""
  mkdir -p "$W/$1"; chmod 777 "$W/$1"
  if [ "$3" = 1 ]; then
    cache_path="proxy_cache_path $W/$1/cache levels=1:2 keys_zone=c:10m max_size=64m inactive=10m use_temp_path=off;"
    cache="proxy_cache c;
      add_header X-Cache \$upstream_cache_status;"
  fi
  cat > "$W/$1.conf" <<CONF
worker_processes 1;
pid $W/$1/nginx.pid;
error_log $W/logs/$1.err;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $W/$1/body;
  proxy_temp_path $W/$1/proxy;
  fastcgi_temp_path $W/$1/fastcgi;
  uwsgi_temp_path $W/$1/uwsgi;
  scgi_temp_path $W/$1/scgi;
  $cache_path
  upstream app {
    server 127.0.0.1:$P_B1;
    server 127.0.0.1:$P_B2;
    keepalive 128;
    keepalive_requests 1000000;
  }
  server {
    listen 127.0.0.1:$2;
    keepalive_requests 1000000;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_buffers 32 4k;
      $cache
    }
  }
}
CONF
}
nginx_conf ngx $P_NGINX 0
nginx_conf ngx-cache $P_NCACHE 1
for n in ngx ngx-cache; do
  (unpriv taskset -c 0 nginx -p "$W/$n" -c "$W/$n.conf" -e "$W/logs/$n.err" -g 'daemon off;' \
    >"$W/logs/$n.out" 2>&1) &
  PIDS+=($!)
done
NGINX_PID=${PIDS[-2]} NCACHE_PID=${PIDS[-1]}

PORTS="$P_B1 $P_B2 $P_HAPROXY $P_HCACHE $P_NGINX $P_NCACHE"
[ -z "$FERRY_SKIP" ] && PORTS="$PORTS $P_FERRY"
[ -z "$FCACHE_SKIP" ] && PORTS="$PORTS $P_FCACHE"
for p in $PORTS; do wait_port "$p" || exit 1; done
sleep 0.5
for p in "${PIDS[@]}"; do ps -o pid=,user=,args= -p "$(proc_tree "$p" | paste -sd,)"; echo; done \
  > "$W/logs/pids.txt" 2>&1

# ---- runs ----
# wrk_into KEY PID PORT PATH SECONDS: one wrk run; its requests, errors,
# seconds, the proxy's CPU ticks and the requests each backend served
# meanwhile are added to KEY's totals (a run that printed nothing marks
# KEY failed).
declare -A T_N T_E T_S T_K T_B1 T_B2 T_FAIL
wrk_into() {
  local key=$1 pid=$2 port=$3 path=$4 secs=$5 t0 t1 b10 b20 out n e s
  b10=$(served $P_B1); b20=$(served $P_B2)
  t0=$(cpu_ticks "$pid")
  out=$(taskset -c 1 wrk -t1 -c"$CONC" -d"${secs}s" "http://127.0.0.1:$port$path" 2>&1)
  t1=$(cpu_ticks "$pid")
  echo "== $key $path" >> "$W/logs/wrk.txt"; echo "$out" >> "$W/logs/wrk.txt"
  read -r n e s < <(echo "$out" | awk '
    /requests in/ { n = $1; t = $4; sub(/,$/, "", t)
      if (t ~ /ms$/) s = t / 1000; else if (t ~ /us$/) s = t / 1e6;
      else if (t ~ /m$/) s = t * 60; else s = t + 0 }
    /Non-2xx/ { e += $NF }
    /Socket errors/ { gsub(/,/, ""); e += $4 + $6 + $8 + $10 }
    END { if (n != "") printf "%d %d %.3f\n", n, e, s }')
  if [ -z "${n:-}" ]; then T_FAIL[$key]=1; return; fi
  T_N[$key]=$(( ${T_N[$key]:-0} + n )); T_E[$key]=$(( ${T_E[$key]:-0} + e ))
  T_K[$key]=$(( ${T_K[$key]:-0} + t1 - t0 ))
  T_S[$key]=$(awk -v a="${T_S[$key]:-0}" -v b="$s" 'BEGIN { printf "%.3f", a + b }')
  local b11 b21; b11=$(served $P_B1); b21=$(served $P_B2)
  # A status count includes the request reading it: the second reading's
  # own request is not the proxy's.
  T_B1[$key]=$(( ${T_B1[$key]:-0} + b11 - b10 - 1 )); T_B2[$key]=$(( ${T_B2[$key]:-0} + b21 - b20 - 1 ))
}
# totals KEY -> "requests/s requests-per-CPU-second errors backend-share
# backend-requests-per-request", or dashes for a column skipped or failed.
totals() {
  if [ -z "${T_N[$1]:-}" ] || [ -n "${T_FAIL[$1]:-}" ]; then echo "- - - - -"; return; fi
  awk -v n="${T_N[$1]}" -v s="${T_S[$1]}" -v e="${T_E[$1]}" -v c="$(cpu_secs "${T_K[$1]}")" \
      -v b1="${T_B1[$1]}" -v b2="${T_B2[$1]}" 'BEGIN {
    percpu = "-"; split_ = "-"; per = "-"
    if (c > 0) percpu = sprintf("%.0f", n / c)
    if (b1 + b2 > 0) split_ = sprintf("%.0f/%.0f", 100 * b1 / (b1 + b2), 100 * b2 / (b1 + b2))
    if (n > 0) per = sprintf("%.3f", (b1 + b2) / n)
    printf "%.0f %s %d %s %s\n", n / s, percpu, e, split_, per }'
}
share() { awk -v d="$1" -v r="$ROUNDS" 'BEGIN { v = d / r; printf "%.0f", v < 1 ? 1 : v }'; }
SH=$(share "$DUR")

# Columns of each table: key prefix, PID, port, skip reason.
declare -A C_PID C_PORT C_SKIP C_NAME=([ferry]=ferry [haproxy]=haproxy [nginx]=nginx
  [fcache]="ferry cache" [hcache]="haproxy cache" [ncache]="nginx cache")
C_PID[ferry]=${FERRY_PID:-0}; C_PORT[ferry]=$P_FERRY; C_SKIP[ferry]=$FERRY_SKIP
C_PID[haproxy]=$HAPROXY_PID; C_PORT[haproxy]=$P_HAPROXY; C_SKIP[haproxy]=""
C_PID[nginx]=$NGINX_PID; C_PORT[nginx]=$P_NGINX; C_SKIP[nginx]=""
C_PID[fcache]=${FCACHE_PID:-0}; C_PORT[fcache]=$P_FCACHE; C_SKIP[fcache]=$FCACHE_SKIP
C_PID[hcache]=$HCACHE_PID; C_PORT[hcache]=$P_HCACHE; C_SKIP[hcache]=""
C_PID[ncache]=$NCACHE_PID; C_PORT[ncache]=$P_NCACHE; C_SKIP[ncache]=""

# Warm up every column on both paths (caches filled, upstream connections
# open): one unmeasured second each; then note what each cache answered.
for col in ferry haproxy nginx fcache hcache ncache; do
  [ -n "${C_SKIP[$col]}" ] && continue
  for path in /1k /64k; do
    taskset -c 1 wrk -t1 -c"$CONC" -d1s "http://127.0.0.1:${C_PORT[$col]}$path" >>"$W/logs/warm.txt" 2>&1
  done
done
for col in fcache ncache; do
  [ -n "${C_SKIP[$col]}" ] && continue
  curl -s -o /dev/null -D - "http://127.0.0.1:${C_PORT[$col]}/1k" | tr -d '\r' |
    sed "s/^/$col: /" >> "$W/logs/cache-headers.txt"
done

echo "reverse proxy: proxies on CPU 0, load (wrk, $CONC conns) and two nginx backends on CPU 1;" \
  "${DUR}s per column and table in $ROUNDS interleaved rounds"
[ -n "$FERRY_SKIP" ] && echo "ferry: skipped: $FERRY_SKIP"
[ -n "$FCACHE_SKIP" ] && [ -z "$FERRY_SKIP" ] && echo "ferry cache: skipped: $FCACHE_SKIP"

# table TITLE PATH COLS...: the interleaved runs of three columns, printed.
declare -A PERCPU
table() {
  local title=$1 path=$2 col
  shift 2
  for _ in $(seq 1 "$ROUNDS"); do
    for col in "$@"; do
      [ -n "${C_SKIP[$col]}" ] && continue
      wrk_into "$col$path" "${C_PID[$col]}" "${C_PORT[$col]}" "$path" "$SH"
    done
  done
  local -a R C E B P
  local i=0
  for col in "$@"; do
    read -r "R[$i]" "C[$i]" "E[$i]" "B[$i]" "P[$i]" < <(totals "$col$path")
    PERCPU[$col$path]=${C[$i]}
    i=$((i + 1))
  done
  row "$title" "${C_NAME[$1]}" "${C_NAME[$2]}" "${C_NAME[$3]}"
  row "requests/s" "${R[0]}" "${R[1]}" "${R[2]}"
  row "requests per proxy CPU-second" "${C[0]}" "${C[1]}" "${C[2]}"
  row "ferry / other, per CPU-second" "$(one "${C[0]}")" "$(ratio "${C[0]}" "${C[1]}")" \
    "$(ratio "${C[0]}" "${C[2]}")"
  row "ferry / other, requests/s" "$(one "${R[0]}")" "$(ratio "${R[0]}" "${R[1]}")" \
    "$(ratio "${R[0]}" "${R[2]}")"
  row "errors" "${E[0]}" "${E[1]}" "${E[2]}"
  row "backend b1/b2 share, %" "${B[0]}" "${B[1]}" "${B[2]}"
  row "backend requests per request" "${P[0]}" "${P[1]}" "${P[2]}"
  echo
}

if [[ $PARTS == *" plain "* ]]; then
  table "GET 1 KiB, keep-alive, no cache" /1k ferry haproxy nginx
  table "GET 64 KiB, keep-alive, no cache" /64k ferry haproxy nginx
fi
if [[ $PARTS == *" cache "* ]]; then
  table "GET 1 KiB, warm cache" /1k fcache hcache ncache
  table "GET 64 KiB, warm cache" /64k fcache hcache ncache
fi
echo "  columns: ferry (reverse listener, pool of 2 backends, round robin), haproxy 1 thread"
echo "  (roundrobin, http-reuse always), nginx 1 worker (upstream keepalive); each adds"
echo "  X-Forwarded-For.  Cache tables: ferry cache = {...}, haproxy cache, nginx proxy_cache;"
echo "  'backend requests per request' near 0 means the cache answered."
echo

if [[ $PARTS == *" latency "* ]]; then
  # ---- latency at a fixed rate ----
  # The columns run interleaved too (ROUNDS runs of LAT_DUR / ROUNDS
  # each); every latency of a column's runs is pooled for its percentiles.
  LSH=$(share "$LAT_DUR")
  declare -A L_ERR L_FAIL
  lat_run() { # KEY PORT: one run, its latencies appended to $W/lat-KEY.txt
    local out
    out=$(RATE_LOAD_LATENCIES="$W/lat-$1.txt" taskset -c 1 "$W/rate_load" "$2" /1k "$CONC" \
          "$RATE" "$LSH" 2>>"$W/logs/rate_load.err")
    echo "$1 $out" >> "$W/logs/rate_load.txt"
    local e; e=$(echo "$out" | awk '/^sent/ { print $6 }')
    if [ -z "$e" ]; then L_FAIL[$1]=1; return; fi
    L_ERR[$1]=$(( ${L_ERR[$1]:-0} + e ))
  }
  lat_totals() { # KEY -> "p50 p99 p999 max errors" or dashes
    if [ -n "${L_FAIL[$1]:-}" ] || [ ! -s "$W/lat-$1.txt" ]; then echo "- - - - -"; return; fi
    sort -n "$W/lat-$1.txt" | awk -v e="${L_ERR[$1]:-0}" '{ v[NR] = $1 }
      function at(p) { i = int(p * NR); if (i < 1) i = 1; return v[i] }
      END { printf "%.2f %.2f %.2f %.2f %d\n", at(0.5), at(0.99), at(0.999), v[NR], e }'
  }
  LCOLS="ferry haproxy nginx none"
  C_PORT[none]=$P_B1; C_SKIP[none]=""
  for _ in $(seq 1 "$ROUNDS"); do
    for col in $LCOLS; do
      [ -n "${C_SKIP[$col]}" ] || lat_run "$col" "${C_PORT[$col]}"
    done
  done
  declare -a L50 L99 L999 LMAX LERR
  i=0
  for col in $LCOLS; do
    read -r "L50[$i]" "L99[$i]" "L999[$i]" "LMAX[$i]" "LERR[$i]" < <(lat_totals "$col")
    i=$((i + 1))
  done
  row "GET 1 KiB at $RATE/s, ${LAT_DUR}s, open" ferry haproxy nginx "no proxy*"
  row "p50, ms" "${L50[@]}"
  row "p99, ms" "${L99[@]}"
  row "p99.9, ms" "${L999[@]}"
  row "max, ms" "${LMAX[@]}"
  row "errors" "${LERR[@]}"
  echo "  * rate_load straight to backend b1; latency counts from when each request was due"
  echo
fi

echo "reverse targets: no cache >= 0.95x haproxy per CPU-second (1 KiB $(ratio \
"${PERCPU[ferry/1k]:--}" "${PERCPU[haproxy/1k]:--}")x, 64 KiB $(ratio "${PERCPU[ferry/64k]:--}" \
"${PERCPU[haproxy/64k]:--}")x); warm cache >= nginx proxy_cache per CPU-second (1 KiB $(ratio \
"${PERCPU[fcache/1k]:--}" "${PERCPU[ncache/1k]:--}")x, 64 KiB $(ratio "${PERCPU[fcache/64k]:--}" \
"${PERCPU[ncache/64k]:--}")x)"
