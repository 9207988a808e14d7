# broker.sh: the broker part of make bench, sourced by run.sh (which
# provides W, ROOT, DUR, PIDS and wait_port); also runs on its own:
#   bash spec/bench/broker.sh
# 50 keep-alive clients (wrk, one thread) on the broker API of a ferry
# with a 100-proxy pool: leases only, then leases and feedback in turn.
# Requests/s and p99 of each.  ferry on CPU 0, wrk on CPU 1, 127.0.0.1
# only, at most 10 s of load in all.
if [ -z "${W:-}" ]; then
  set -u
  cd "$(dirname "$0")/../.." || exit 1
  ROOT=$(pwd)
  W=$ROOT/spec/tmp/bench-broker
  DUR=${BENCH_SECONDS:-10}
  rm -rf "$W"; mkdir -p "$W/logs"
  PIDS=()
  broker_cleanup() { local p; for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done; }
  trap broker_cleanup EXIT
  wait_port() { for _ in $(seq 1 100); do
    (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done
    echo "port $1 did not open" >&2; return 1; }
fi

P_BA=18097  # metrics.sh has 18095-18096
B_TOKEN=bench-broker-token-0123
B_SECS=$(( (DUR < 10 ? DUR : 10) / 2 )); [ "$B_SECS" -ge 1 ] || B_SECS=1

{
  echo "admin { addr = \"127.0.0.1:$P_BA\", token = \"$B_TOKEN\" }"
  echo "log { level = \"warn\", access = false }"
  echo "pool \"bench\" { strategy = \"health_score\", all_down = \"any\", proxies = {"
  for i in $(seq 1 100); do
    r=$([ $((i % 2)) -eq 0 ] && echo us-east-1 || echo eu-west-1)
    echo "  { url = \"socks5://user$i:secret$i@127.0.0.1:$((21000 + i))\", id = \"p$i\", region = \"$r\" },"
  done
  echo "} }"
  echo "exchange \"binance\" { hosts = { \"*.binance.com\" }, pool = \"bench\" }"
} > "$W/broker.lua"
taskset -c 0 "$FERRY_BIN" -c "$W/broker.lua" 2>"$W/logs/broker.log" & BA_PID=$!; PIDS+=("$BA_PID")
wait_port $P_BA || return 1 2>/dev/null || exit 1

# Leases only: every request a new lease (they end at their TTL; past
# 100 000 held, the oldest ends early).
cat > "$W/broker-lease.lua" <<CONF
wrk.method = "POST"
wrk.headers["Authorization"] = "Bearer $B_TOKEN"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"exchange_id":"binance","connection_type":"websocket","region":"us-east-1",'
  .. '"client_id":"bench","metadata":{"feed_types":["trades","book"]}}'
CONF

# Leases and feedback in turn: each lease's URL comes back as feedback.
cat > "$W/broker-mix.lua" <<CONF
local auth = "Bearer $B_TOKEN"
local lease = '{"exchange_id":"binance","connection_type":"websocket","client_id":"bench"}'
local urls, n = {}, 0
function request()
  local headers = { ["Authorization"] = auth, ["Content-Type"] = "application/json" }
  if n > 0 then
    local u = urls[n]
    urls[n], n = nil, n - 1
    return wrk.format("POST", "/api/v1/proxy/feedback", headers,
      '{"proxy_url":"' .. u .. '","exchange_id":"binance","connection_type":"websocket",'
      .. '"success":true,"latency_ms":42,"client_id":"bench"}')
  end
  return wrk.format("POST", "/api/v1/proxy/request", headers, lease)
end
function response(status, headers, body)
  local u = status == 200 and body:match('"proxy_url":"([^"]+)"')
  if u and n < 1000 then n = n + 1; urls[n] = u end
end
CONF

# broker_run script path -> "requests/s p99"
broker_run() {
  local out
  out=$(taskset -c 1 wrk -t1 -c50 -d"${B_SECS}"s --latency -s "$1" \
    "http://127.0.0.1:$P_BA$2" 2>&1)
  echo "$out" > "$W/logs/wrk-$(basename "$1" .lua).txt"
  local non2xx; non2xx=$(echo "$out" | awk '/Non-2xx/ {print $NF}')
  [ -n "$non2xx" ] && echo "warning: $1: $non2xx non-2xx responses" >&2
  echo "$(echo "$out" | awk '/Requests\/sec/ {printf "%.0f", $2}')" \
    "$(echo "$out" | awk '$1 == "99%" {print $2}')"
}
read -r BR_RPS BR_P99 < <(broker_run "$W/broker-lease.lua" /api/v1/proxy/request)
read -r BM_RPS BM_P99 < <(broker_run "$W/broker-mix.lua" /)
BA_RSS=$(ps -o rss= -p "$BA_PID" | tr -d ' ')
kill "$BA_PID" 2>/dev/null; wait "$BA_PID" 2>/dev/null

echo "broker API, 50 keep-alive clients, 100 proxies, ${B_SECS}s per run"
printf '%-34s %10s %10s\n' "" "requests/s" "p99"
printf '%-34s %10s %10s\n' "POST /api/v1/proxy/request" "$BR_RPS" "$BR_P99"
printf '%-34s %10s %10s\n' "request and feedback in turn" "$BM_RPS" "$BM_P99"
echo "  ferry RSS after the runs: ${BA_RSS} KiB (leases are bounded at 100 000)"
echo
echo "broker client: resolving a proxy from cached leases (in process, us per request)"
(cd "$ROOT" && luajit spec/bench/broker_client_resolve.lua 0.3) || echo "broker client resolve bench failed"
echo
