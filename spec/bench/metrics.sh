# metrics.sh: the data plane's request rate while /metrics is scraped
# every second, against the same ferry unscraped.  Sourced by run.sh
# (which provides W, ROOT, DUR, P_ORIGIN, PIDS, wait_port, rps, ratio).
# The config holds 1 000 proxies (never used by the direct route), so
# each scrape renders a realistic inventory.
P_MF=18095 P_MA=18096
{
  echo "listen { name = \"m\", addr = \"127.0.0.1:$P_MF\" }"
  echo "admin { addr = \"127.0.0.1:$P_MA\" }"
  echo "log { level = \"warn\", access = false }"
  echo "pool \"big\" { proxies = {"
  for i in $(seq 1 1000); do echo "  \"socks5://127.0.0.1:$((20000 + i))\","; done
  echo "} }"
  echo "route(function() return \"direct\" end)"
} > "$W/metrics.lua"
taskset -c 0 "$FERRY_BIN" -c "$W/metrics.lua" 2>"$W/logs/metrics.log" & M_PID=$!; PIDS+=("$M_PID")
wait_port $P_MF && wait_port $P_MA || return 1
M_BYTES=$(curl -s "http://127.0.0.1:$P_MA/metrics" | wc -c)
M_MS=$(curl -s -o /dev/null -w '%{time_total}' "http://127.0.0.1:$P_MA/metrics" |
  awk '{printf "%.1f", $1 * 1000}')
R_QUIET=$(rps "http://127.0.0.1:$P_MF/" "$W/absolute.lua")
( end=$((SECONDS + DUR + 1))
  while [ "$SECONDS" -lt "$end" ]; do
    taskset -c 1 curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$P_MA/metrics"; sleep 1
  done ) & SCRAPER=$!
R_SCRAPED=$(rps "http://127.0.0.1:$P_MF/" "$W/absolute.lua")
kill "$SCRAPER" 2>/dev/null; wait "$SCRAPER" 2>/dev/null
kill "$M_PID"; wait "$M_PID" 2>/dev/null
echo "data plane while /metrics is scraped every second (1 000 proxies, ${M_BYTES} bytes, ${M_MS} ms a scrape)"
printf '%-34s %10s %10s %10s\n' "" unscraped scraped "ratio"
printf '%-34s %10s %10s %10s\n' "requests/s" "$R_QUIET" "$R_SCRAPED" "$(ratio "$R_SCRAPED" "$R_QUIET")"
echo
