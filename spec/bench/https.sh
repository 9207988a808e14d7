#!/usr/bin/env bash
# https.sh: GET 1 KiB over TLS through a proxy, side by side: ferry's
# blind CONNECT tunnel, ferry intercepting (exchange with intercept =
# true, its CA from `ferry ca init`), squid ssl-bump (squid-openssl,
# security_file_certgen, a CA of its own) and mitmproxy (mitmdump, its
# confdir CA), in one run.  Part of make bench; runs alone as well.
#   1. keep-alive: CONC client TLS connections, each sending GETs one
#      after another (KEEP per connection), measured once all are open;
#   2. handshake-heavy: a new client TLS connection (full handshake, no
#      resumption) per GET;
#   3. leaf minting: a new client TLS connection per GET, each to the next
#      of MINT_NAMES distinct host names in a cycle, more names than the
#      proxy keeps leaf certificates for: every handshake mints one
#      (squid keys its leaves on the origin's certificate, not the name:
#      behind one origin certificate it mints once, which the row shows).
# The origin is nginx with TLS on 127.0.0.1 (an ECDSA P-256 certificate
# from a private CA made with openssl, for localhost and *.bench.localhost);
# each intercepting proxy verifies it against that CA.  The load is
# spec/bench/tls_load.c (the client verifies each proxy's CA).  Proxies on
# CPU 0, load and origin on CPU 1, all on 127.0.0.1; every run is bounded
# in time; work per proxy CPU-second counts every process of a proxy
# (squid's certgen helpers too).  The proxies run in a mount namespace
# whose /etc/hosts also names n1..nN.bench.localhost as 127.0.0.1 (each
# proxy resolves the CONNECT host itself; nothing else sees that file).
# A ferry build without interception or `ferry ca init` prints "skipped:
# <why>" for that column.
set -u
cd "$(dirname "$0")/../.." || exit 1
ROOT=$(pwd)
FERRY_BIN=${FERRY_BIN:-$ROOT/bin/ferry}
W=$ROOT/spec/tmp/bench-https
DUR=${BENCH_SECONDS:-10}
# mitmproxy does a few hundred requests a second: one short run says enough.
MITM_DUR=${MITM_SECONDS:-5}
CONC=${HTTPS_CONC:-50}
KEEP=${HTTPS_KEEP:-1000}
MINT_NAMES=${MINT_NAMES:-256}
# ferry's leaf cache for the minting run: smaller than the name set.
MINT_CACHE=${MINT_CACHE:-64}
ROUNDS=${HTTPS_ROUNDS:-3}
rm -rf "$W"; mkdir -p "$W/www" "$W/logs"; chmod 777 "$W" "$W/logs"

P_ORIGIN=18140 P_FTUN=18141 P_FINT=18142 P_SQUID=18143 P_MITM=18144 P_FMINT=18145
P_FADMIN=18147
PIDS=()
. "$ROOT/spec/bench/lib.sh"
trap bench_cleanup EXIT

head -c 1024 /dev/zero | tr '\0' 'x' > "$W/www/1k"
gcc -std=c11 -O2 -Wall -Wextra -Wshadow -o "$W/tls_load" spec/bench/tls_load.c -lssl -lcrypto || exit 1

# ---- certificates: the origin's private CA and leaf, squid's CA ----
ec_ca() { # name subject
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=$2" -addext basicConstraints=critical,CA:TRUE \
    -addext keyUsage=critical,keyCertSign,cRLSign \
    -keyout "$W/$1.key" -out "$W/$1.crt" >/dev/null 2>&1
}
ec_ca origin-ca "bench origin CA" && ec_ca squid-ca "bench squid CA" || {
  echo "https bench: openssl could not make the CAs"; exit 1; }
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
  -keyout "$W/origin.key" -out "$W/origin.csr" >/dev/null 2>&1 &&
printf 'subjectAltName=DNS:localhost,DNS:*.bench.localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' \
  > "$W/origin.ext" &&
openssl x509 -req -in "$W/origin.csr" -CA "$W/origin-ca.crt" -CAkey "$W/origin-ca.key" \
  -CAcreateserial -days 2 -extfile "$W/origin.ext" -out "$W/origin.crt" >/dev/null 2>&1 || {
  echo "https bench: openssl could not make the origin certificate"; exit 1; }

# ---- the hosts file the proxies see ----
{ echo "127.0.0.1 localhost"
  for i in $(seq 1 "$MINT_NAMES"); do echo "127.0.0.1 n$i.bench.localhost"; done; } > "$W/hosts"
NS=1
unshare -m sh -c "mount --bind '$W/hosts' /etc/hosts && getent hosts n1.bench.localhost" \
  >/dev/null 2>&1 || NS=0
# in_ns CMD...: CMD (same PID) on CPU 0, seeing $W/hosts as /etc/hosts.
in_ns() {
  if [ $NS = 1 ]; then
    exec unshare -m sh -c 'mount --bind "$0" /etc/hosts && exec taskset -c 0 "$@"' "$W/hosts" "$@"
  fi
  exec taskset -c 0 "$@"
}

# ---- the origin: nginx with TLS on CPU 1 ----
cat > "$W/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $W/nginx.pid;
error_log $W/logs/nginx.err;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  ssl_session_tickets off;
  ssl_session_cache off;
  server {
    listen 127.0.0.1:$P_ORIGIN ssl;
    ssl_certificate $W/origin.crt;
    ssl_certificate_key $W/origin.key;
    root $W/www;
  }
}
CONF
taskset -c 1 nginx -c "$W/nginx.conf" -p "$W" & PIDS+=($!)

# ---- the proxies, each on CPU 0 in the namespace ----
QUIET='log { level = "warn", access = false }
route(function(req) return "direct" end)'
printf 'listen { name = "tun", addr = "127.0.0.1:%s" }\n%s\n' $P_FTUN "$QUIET" > "$W/ferry-tunnel.lua"
in_ns "$FERRY_BIN" -c "$W/ferry-tunnel.lua" 2>"$W/logs/ferry-tunnel.err" & FTUN_PID=$!
PIDS+=("$FTUN_PID")

# ferry intercepting: its CA from `ferry ca init`, one exchange for the
# origin's names.  ferry_int_conf PORT [tls-extra] writes $W/ferry-int-PORT.lua.
FERRY_CA=$W/ferry-ca
INT_SKIP=""
if ! out=$("$FERRY_BIN" ca init "$FERRY_CA" 2>&1); then
  INT_SKIP="no ferry ca init in this build (no interception): $(echo "$out" | grep -v "^\s*$" | head -1)"
fi
FERRY_CA_CERT=$FERRY_CA/ca.crt FERRY_CA_KEY=$FERRY_CA/ca.key
[ -z "$INT_SKIP" ] && { [ ! -s "$FERRY_CA_CERT" ] || [ ! -s "$FERRY_CA_KEY" ]; } &&
  INT_SKIP="ferry ca init wrote no ca.crt and ca.key in $FERRY_CA"
ferry_int_conf() {
  cat > "$W/ferry-int-$1.lua" <<CONF
listen { name = "int", addr = "127.0.0.1:$1" }
tls { ca_cert = "$FERRY_CA_CERT", ca_key = "$FERRY_CA_KEY"${2:+, $2} }
exchange "origin" { hosts = { "localhost", "*.bench.localhost" }, pool = "direct",
                    intercept = true, tls = { ca = "$W/origin-ca.crt" } }
$QUIET
CONF
  echo "$W/ferry-int-$1.lua"
}
if [ -z "$INT_SKIP" ]; then
  if INT_SKIP=$(ferry_accepts "$FERRY_BIN" "$(ferry_int_conf $P_FINT)"); then
    INT_SKIP=""
    in_ns "$FERRY_BIN" -c "$W/ferry-int-$P_FINT.lua" 2>"$W/logs/ferry-int.err" & FINT_PID=$!
    PIDS+=("$FINT_PID")
    # The minting run's ferry: a leaf cache smaller than the name set,
    # and /metrics to count the leaves it signed.
    MINT_CONF=$(ferry_int_conf $P_FMINT "leaf_cache = $MINT_CACHE")
    echo "admin { addr = \"127.0.0.1:$P_FADMIN\" }" >> "$MINT_CONF"
    in_ns "$FERRY_BIN" -c "$MINT_CONF" 2>"$W/logs/ferry-mint.err" & FMINT_PID=$!
    PIDS+=("$FMINT_PID")
  fi
fi

# squid ssl-bump: peek at the SNI, bump; leaves minted by
# security_file_certgen (its database fresh each run), checked against the
# origin's CA.
CERTGEN=/usr/lib/squid/security_file_certgen
SQUID_SKIP=""
if ! squid -v 2>/dev/null | grep -q -- '--with-openssl'; then
  SQUID_SKIP="this squid has no OpenSSL (install squid-openssl)"
elif [ ! -x "$CERTGEN" ]; then
  SQUID_SKIP="no $CERTGEN"
else
  # squid_bump NAME PORT: an ssl-bump squid with a certgen database of
  # its own.
  squid_bump() {
    "$CERTGEN" -c -s "$W/ssldb-$1" -M 16MB >>"$W/logs/certgen.out" 2>&1
    chown -R proxy "$W/ssldb-$1" "$W/squid-ca.key" 2>/dev/null
    cat > "$W/squid-$1.conf" <<CONF
http_port 127.0.0.1:$2 ssl-bump tls-cert=$W/squid-ca.crt tls-key=$W/squid-ca.key generate-host-certificates=on dynamic_cert_mem_cache_size=4MB
sslcrtd_program $CERTGEN -s $W/ssldb-$1 -M 16MB
sslcrtd_children 8 startup=1 idle=1
acl step1 at_step SslBump1
ssl_bump peek step1
ssl_bump bump all
tls_outgoing_options cafile=$W/origin-ca.crt
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
CONF
    in_ns squid -N -f "$W/squid-$1.conf" >"$W/logs/squid-$1.out" 2>&1
  }
  squid_bump main $P_SQUID & SQUID_PID=$!; PIDS+=("$SQUID_PID")
fi

# mitmproxy: mitmdump in regular mode; it makes its CA in its confdir.
MITM_SKIP=""
if command -v mitmdump >/dev/null; then
  in_ns mitmdump -q --listen-host 127.0.0.1 --listen-port $P_MITM --set confdir="$W/mitm" \
    --set ssl_verify_upstream_trusted_ca="$W/origin-ca.crt" --set flow_detail=0 \
    >"$W/logs/mitmdump.out" 2>&1 & MITM_PID=$!; PIDS+=("$MITM_PID")
else
  MITM_SKIP="no mitmdump (install mitmproxy)"
fi

PORTS="$P_ORIGIN $P_FTUN"
[ -z "$INT_SKIP" ] && PORTS="$PORTS $P_FINT $P_FMINT"
[ -z "$SQUID_SKIP" ] && PORTS="$PORTS $P_SQUID"
[ -z "$MITM_SKIP" ] && PORTS="$PORTS $P_MITM"
for p in $PORTS; do wait_port "$p" || exit 1; done
sleep 1
# Which process each measured PID is, and its children (logs/pids.txt).
for p in "${PIDS[@]}"; do ps -o pid=,args= -p "$(proc_tree "$p" | paste -sd,)"; echo; done \
  > "$W/logs/pids.txt" 2>&1
[ -z "$MITM_SKIP" ] && [ ! -s "$W/mitm/mitmproxy-ca-cert.pem" ] && MITM_SKIP="mitmdump made no CA"

# Warm each proxy up (mitmproxy's first connections are slow; squid and
# ferry open their first origin connections): one unmeasured second.
warm() { # PORT CAFILE
  taskset -c 1 "$W/tls_load" "$1" localhost $P_ORIGIN "$2" "$CONC" 1 10 >>"$W/logs/warm.txt" 2>&1
}
[ -z "$INT_SKIP" ] && warm $P_FINT "$FERRY_CA_CERT"
warm $P_FTUN "$W/origin-ca.crt"
[ -z "$SQUID_SKIP" ] && warm $P_SQUID "$W/squid-ca.crt"
[ -z "$MITM_SKIP" ] && warm $P_MITM "$W/mitm/mitmproxy-ca-cert.pem"

# Each table's runs are interleaved: ROUNDS rounds, each running every
# column for its share of the time, the figures summed over the rounds.  A
# load burst from elsewhere on the machine then falls on every column
# alike rather than on one.  mitmproxy runs once, in the first round, for
# MITM_SECONDS: its first 50 handshakes alone take a second or two, which
# would swallow a short run.
# run_into KEY PID PORT HOST CAFILE SECONDS REQS [NAMES]: one tls_load
# run, its requests, errors, handshakes, seconds and the proxy's CPU ticks
# added to KEY's totals (a run that printed nothing marks KEY failed).
# With NAMES, each run goes on in the name cycle past every name the run
# before could have started (handshakes, errors, and CONC in flight), so
# that no name comes back before NAMES others.
declare -A T_N T_E T_H T_S T_K T_FAIL T_NEXT
run_into() {
  local key=$1 pid=$2 t0 t1 out n e h secs
  shift 2
  if [ "$5" = 1 ]; then
    t0=$(cpu_ticks "$pid")
    out=$(taskset -c 1 "$W/tls_load" "$1" "$2" $P_ORIGIN "$3" "$CONC" "$4" "$5" \
          ${6:+"$6" "${T_NEXT[$key]:-1}"} 2>>"$W/logs/tls_load-$1.err")
    t1=$(cpu_ticks "$pid")
  else
    # Keep-alive: measured from the moment every connection is open.
    rm -f "$W/ready"
    READY_FILE=$W/ready taskset -c 1 "$W/tls_load" "$1" "$2" $P_ORIGIN "$3" "$CONC" "$4" "$5" \
      >"$W/load.out" 2>>"$W/logs/tls_load-$1.err" & local lp=$!
    while [ ! -e "$W/ready" ] && kill -0 $lp 2>/dev/null; do sleep 0.05; done
    t0=$(cpu_ticks "$pid")
    wait $lp
    t1=$(cpu_ticks "$pid")
    out=$(cat "$W/load.out")
  fi
  echo "$key $out" >> "$W/logs/tls_load-$1.txt"
  read -r _ n _ e _ h _ secs _ <<<"$out"
  if [ -z "${n:-}" ]; then T_FAIL[$key]=1; return; fi
  T_N[$key]=$(( ${T_N[$key]:-0} + n )); T_E[$key]=$(( ${T_E[$key]:-0} + e ))
  T_H[$key]=$(( ${T_H[$key]:-0} + h )); T_K[$key]=$(( ${T_K[$key]:-0} + t1 - t0 ))
  T_S[$key]=$(awk -v a="${T_S[$key]:-0}" -v b="$secs" 'BEGIN { printf "%.3f", a + b }')
  [ -n "${6:-}" ] && T_NEXT[$key]=$(( (${T_NEXT[$key]:-1} - 1 + h + e + CONC) % $6 + 1 ))
}
# totals KEY -> "requests/s requests-per-CPU-second errors handshakes/s", or
# "- - - -" for a column skipped or failed.
totals() {
  if [ -z "${T_N[$1]:-}" ] || [ -n "${T_FAIL[$1]:-}" ]; then echo "- - - -"; return; fi
  awk -v n="${T_N[$1]}" -v h="${T_H[$1]}" -v s="${T_S[$1]}" -v e="${T_E[$1]}" \
      -v c="$(cpu_secs "${T_K[$1]}")" -v pid_cpu="${2:-1}" 'BEGIN {
    printf "%.0f %s %d %.0f\n", n / s, (pid_cpu && c > 0) ? sprintf("%.0f", n / c) : "-", e, h / s }'
}
# share SECONDS: one round's part of a run of SECONDS.
share() { awk -v d="$1" -v r="$ROUNDS" 'BEGIN { v = d / r; printf "%.2f", v < 1 ? 1 : v }'; }
MITM_CA=$W/mitm/mitmproxy-ca-cert.pem

echo "HTTPS: proxies on CPU 0, load (tls_load, $CONC conns) and the nginx TLS origin on CPU 1;" \
  "${DUR}s per column and table in $ROUNDS interleaved rounds (mitmproxy: ${MITM_DUR}s, once)"
[ -n "$INT_SKIP" ] && echo "ferry intercept: skipped: $INT_SKIP"
[ -n "$SQUID_SKIP" ] && echo "squid ssl-bump: skipped: $SQUID_SKIP"
[ -n "$MITM_SKIP" ] && echo "mitmproxy: skipped: $MITM_SKIP"
[ $NS = 0 ] && echo "no mount namespace for the proxies' hosts file: *.bench.localhost names unresolved"

SH=$(share "$DUR")
for reqs in "$KEEP" 1; do
  for round in $(seq 1 "$ROUNDS"); do
    [ -z "$INT_SKIP" ] && run_into "int$reqs" "$FINT_PID" $P_FINT localhost "$FERRY_CA_CERT" "$SH" "$reqs"
    run_into "tun$reqs" "$FTUN_PID" $P_FTUN localhost "$W/origin-ca.crt" "$SH" "$reqs"
    [ -z "$SQUID_SKIP" ] && run_into "squid$reqs" "$SQUID_PID" $P_SQUID localhost "$W/squid-ca.crt" "$SH" "$reqs"
    [ -z "$MITM_SKIP" ] && [ "$round" = 1 ] &&
      run_into "mitm$reqs" "$MITM_PID" $P_MITM localhost "$MITM_CA" "$MITM_DUR" "$reqs"
    # No proxy: the CPU figure is nginx's, not a proxy's; only the rate is shown.
    run_into "none$reqs" $$ 0 localhost "$W/origin-ca.crt" "$SH" "$reqs"
  done
  read -r R_I C_I E_I _ < <(totals "int$reqs")
  read -r R_T C_T E_T _ < <(totals "tun$reqs")
  read -r R_S C_S E_S _ < <(totals "squid$reqs")
  read -r R_M C_M E_M _ < <(totals "mitm$reqs")
  read -r R_N _ E_N _ < <(totals "none$reqs" 0)
  if [ "$reqs" = 1 ]; then title="GET 1 KiB, new TLS conn per GET"
  else title="GET 1 KiB, keep-alive ($reqs/conn)"; fi
  row "$title" "ferry int" "ferry tun*" "squid bump" mitmproxy "no proxy**"
  row "requests/s" "$R_I" "$R_T" "$R_S" "$R_M" "$R_N"
  row "requests per proxy CPU-second" "$C_I" "$C_T" "$C_S" "$C_M"
  row "ferry int / other, per CPU-second" "$(one "$C_I")" "$(ratio "$C_I" "$C_T")" \
    "$(ratio "$C_I" "$C_S")" "$(ratio "$C_I" "$C_M")"
  row "ferry int / other, requests/s" "$(one "$R_I")" "$(ratio "$R_I" "$R_T")" \
    "$(ratio "$R_I" "$R_S")" "$(ratio "$R_I" "$R_M")" "$(ratio "$R_I" "$R_N")"
  row "errors" "$E_I" "$E_T" "$E_S" "$E_M" "$E_N"
  echo
  [ "$reqs" = 1 ] || { K_CI=$C_I K_CS=$C_S K_CM=$C_M; }
done
echo "  * blind CONNECT tunnel: the client's TLS goes to the origin, ferry relays bytes"
echo "  ** the client straight to nginx, sharing its core: the most this setup can show"
echo
# ---- 3. leaf minting ----
# mint_count: leaves ferry's minting instance has signed (its /metrics), or "-".
mint_count() {
  local v
  v=$(curl -s --max-time 5 "http://127.0.0.1:$P_FADMIN/metrics" 2>/dev/null |
      awk '/^ferry_[a-z_]*minted[a-z_]*(\{[^}]*\})? / { s += $NF } END { if (NR) printf "%.0f", s }')
  echo "${v:--}"
}
NAMES_FMT=n%d.bench.localhost
M0=$( [ -z "$INT_SKIP" ] && mint_count || echo -)
for round in $(seq 1 "$ROUNDS"); do
  [ -z "$INT_SKIP" ] && run_into mint_int "$FMINT_PID" $P_FMINT $NAMES_FMT "$FERRY_CA_CERT" "$SH" 1 "$MINT_NAMES"
  [ -z "$SQUID_SKIP" ] && run_into mint_squid "$SQUID_PID" $P_SQUID $NAMES_FMT "$W/squid-ca.crt" "$SH" 1 "$MINT_NAMES"
  [ -z "$MITM_SKIP" ] && [ "$round" = 1 ] &&
    run_into mint_mitm "$MITM_PID" $P_MITM $NAMES_FMT "$MITM_CA" "$MITM_DUR" 1 "$MINT_NAMES"
done
M1=$( [ -z "$INT_SKIP" ] && mint_count || echo -)
read -r _ C_I E_I H_I < <(totals mint_int)
read -r _ C_S E_S H_S < <(totals mint_squid)
read -r _ C_M E_M H_M < <(totals mint_mitm)
row "leaf minting: a new name per conn" "ferry int" "squid bump" "mitmproxy"
row "handshakes/s" "$H_I" "$H_S" "$H_M"
row "handshakes per proxy CPU-second" "$C_I" "$C_S" "$C_M"
row "ferry / other, per CPU-second" "$(one "$C_I")" "$(ratio "$C_I" "$C_S")" "$(ratio "$C_I" "$C_M")"
row "errors" "$E_I" "$E_S" "$E_M"
MINTED=-
[ "$M0" != - ] && [ "$M1" != - ] && MINTED=$((M1 - M0))
echo "  ferry: $MINT_NAMES names in a cycle, leaf cache $MINT_CACHE (leaves minted in the run: $MINTED);"
echo "  squid: the same $MINT_NAMES names; it mimics the origin's certificate and keys its"
echo "    leaves on that certificate, not on the name: one origin certificate, one leaf"
echo "    (certgen database entries after the runs: $(wc -l < "$W/ssldb-main/index.txt" 2>/dev/null || echo -));"
echo "  mitmproxy: $MINT_NAMES names in a cycle, its certificate store keeps 100"
echo "  (requests per CPU-second here count a GET per handshake, as in the rows above)"
echo
if [ -n "$INT_SKIP" ]; then
  echo "HTTPS target: skipped (no interception in this build)"
else
  echo "HTTPS target: intercepted keep-alive GET >= 3x squid ssl-bump per proxy CPU-second" \
    "($(ratio "$K_CI" "$K_CS")x; vs mitmproxy $(ratio "$K_CI" "$K_CM")x)"
fi
