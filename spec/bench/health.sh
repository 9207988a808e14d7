# health.sh: the health part of make bench, sourced by run.sh (which
# provides W, ROOT, DUR, P_ORIGIN, PIDS, wait_port, rps and ratio).
#   1. selection cost per strategy, 10 / 100 / 10 000 proxies, and with
#      rate budgets on at 10 000 (rate_select.lua);
#   2. time from a proxy's death to its exclusion: passive (under load)
#      and by probes alone (no traffic);
#   3. request rate while probes run against 1 000 proxies.
P_S1=18090 P_S2=18091 P_HF=18085 P_HP=18086 P_HN=18087

echo "selection cost, us per selection (C proxies and pair states, one in ten down)"
(cd "$ROOT" && luajit spec/bench/select.lua 0.3) || echo "select bench failed"
echo
echo "selection cost with rate budgets, us per request (10 000 proxies, a third without budget)"
(cd "$ROOT" && luajit spec/bench/rate_select.lua 0.3) || echo "rate select bench failed"
echo

start_socks() { taskset -c 1 microsocks -i 127.0.0.1 -p "$1" >/dev/null 2>&1 & echo $!; }
S1_PID=$(start_socks $P_S1); PIDS+=("$S1_PID")
S2_PID=$(start_socks $P_S2); PIDS+=("$S2_PID")
wait_port $P_S1 && wait_port $P_S2 || return 1

# ms since the epoch of the first log line with a code, or empty.
first_event_ms() { # log code
  local t
  t=$(grep -m1 "\"code\":\"$2\"" "$1" | sed 's/.*"time":"\([^"]*\)".*/\1/')
  [ -n "$t" ] && date -u -d "$t" +%s%3N
}
now_ms() { date -u +%s%3N; }

run_ferry() { # name config-text -> PID
  echo "$2" > "$W/$1.lua"
  taskset -c 0 "$FERRY_BIN" -c "$W/$1.lua" >/dev/null 2>"$W/logs/$1.log" & echo $!
}

# 2a. Passive: traffic through both proxies, then one is killed.
F_PID=$(run_ferry passive "
listen { name = \"b\", addr = \"127.0.0.1:$P_HF\" }
log { level = \"info\", access = false }
pool \"p\" { strategy = \"round_robin\", proxies = {
  \"socks5://127.0.0.1:$P_S1\", \"socks5://127.0.0.1:$P_S2\" } }
route(function() return \"p\" end)")
PIDS+=("$F_PID"); wait_port $P_HF || return 1
taskset -c 1 wrk -t1 -c10 -d3s -s "$W/absolute.lua" "http://127.0.0.1:$P_HF/" > "$W/logs/wrk-passive.txt" 2>&1 &
WRK=$!
sleep 1
T_KILL=$(now_ms); kill -9 "$S2_PID"
wait "$WRK"
T_OUT=$(first_event_ms "$W/logs/passive.log" FERRY-6001)
NON2XX=$(awk '/Non-2xx/ {print $NF}' "$W/logs/wrk-passive.txt")
kill "$F_PID"; wait "$F_PID" 2>/dev/null
PASSIVE_MS=$([ -n "$T_OUT" ] && echo $((T_OUT - T_KILL)) || echo "n/a")

# 2b. Probes alone: no traffic, tcp check every 1 s, fall 1.
S2_PID=$(start_socks $P_S2); PIDS+=("$S2_PID"); wait_port $P_S2
F_PID=$(run_ferry probed "
listen { name = \"b\", addr = \"127.0.0.1:$P_HF\" }
log { level = \"info\", access = false }
pool \"p\" { strategy = \"round_robin\",
  health = { check = \"tcp\", interval = 1, timeout = 0.5, rise = 1, fall = 1 },
  proxies = { \"socks5://127.0.0.1:$P_S1\", \"socks5://127.0.0.1:$P_S2\" } }
route(function() return \"p\" end)")
PIDS+=("$F_PID"); wait_port $P_HF || return 1
sleep 2.3
T_KILL=$(now_ms); kill -9 "$S2_PID"
sleep 3
T_OUT=$(first_event_ms "$W/logs/probed.log" FERRY-6001)
kill "$F_PID"; wait "$F_PID" 2>/dev/null
PROBE_MS=$([ -n "$T_OUT" ] && echo $((T_OUT - T_KILL)) || echo "n/a")

printf '%-44s %12s\n' "death to exclusion" "ms"
printf '%-44s %12s\n' "passive, under load (10 conns)" "$PASSIVE_MS"
printf '%-44s %12s\n' "probes only, tcp every 1 s, fall 1" "$PROBE_MS"
echo "  requests failed while the proxy died (passive run): ${NON2XX:-0} (they are retried on the other proxy)"
echo "  target: < 1000 ms"
echo

# 3. Request rate, direct to nginx, with and without 1000 probed proxies.
pool_of_1000() {
  local i out=""
  for i in $(seq 1 1000); do out="$out{ url = \"socks5://127.0.0.1:$P_S1\", id = \"p$i\" },"; done
  echo "$out"
}
PROXIES=$(pool_of_1000)
F_PID=$(run_ferry noprobes "
listen { name = \"b\", addr = \"127.0.0.1:$P_HN\" }
log { level = \"warn\", access = false }
pool \"big\" { proxies = { $PROXIES } }
route(function() return \"direct\" end)")
PIDS+=("$F_PID"); wait_port $P_HN || return 1
R_NOPROBE=$(rps "http://127.0.0.1:$P_HN/" "$W/absolute.lua")
kill "$F_PID"; wait "$F_PID" 2>/dev/null
F_PID=$(run_ferry probes1000 "
listen { name = \"b\", addr = \"127.0.0.1:$P_HP\" }
log { level = \"warn\", access = false }
pool \"big\" { health = { check = \"connect\", target = \"127.0.0.1:$P_ORIGIN\", interval = 1,
  timeout = 0.5 }, proxies = { $PROXIES } }
route(function() return \"direct\" end)")
PIDS+=("$F_PID"); wait_port $P_HP || return 1
sleep 1.5
R_PROBE=$(rps "http://127.0.0.1:$P_HP/" "$W/absolute.lua")
kill "$F_PID"; wait "$F_PID" 2>/dev/null
printf '%-44s %12s %12s %8s\n' "GET 1 KiB, 50 conns, direct" "no probes" "1000 probed" "ratio"
printf '%-44s %12s %12s %8s\n' "requests/s (connect probes, 1 000 per second)" "$R_NOPROBE" "$R_PROBE" \
  "$(ratio "$R_PROBE" "$R_NOPROBE")"
echo
