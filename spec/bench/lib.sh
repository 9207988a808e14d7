# shellcheck shell=bash
# lib.sh: helpers sourced by socks.sh and chain.sh (the side-by-side rows
# of make bench that start their own processes).  Needs W and the PIDS
# array of the sourcing script.

HZ=$(getconf CLK_TCK)

bench_cleanup() { local p; for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done; sleep 0.3;
                  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done; }

wait_port() { for _ in $(seq 1 100); do
  (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done
  echo "port $1 did not open" >&2; return 1; }

# PID and every process below it (dante forks a process per role).
proc_tree() { local p; echo "$1"; for p in $(pgrep -P "$1"); do proc_tree "$p"; done; }

# CPU clock ticks a process tree has used: utime + stime of every live
# process (all its threads, live or gone), plus cutime + cstime, what the
# children it reaped had used.
cpu_ticks() {
  local total=0 p
  for p in $(proc_tree "$1"); do
    total=$((total + $(awk '{print $14 + $15 + $16 + $17}' /proc/"$p"/stat 2>/dev/null || echo 0)))
  done
  echo "$total"
}
cpu_secs() { awk -v d="$1" -v hz="$HZ" 'BEGIN { printf "%.3f", d / hz }'; }

# bench_start_origin PORT: nginx serving $W/www on CPU 1, the origin every
# side-by-side row reads from (PID added to PIDS).
bench_start_origin() {
  cat > "$W/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $W/nginx.pid;
error_log $W/logs/nginx.err;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$1; root $W/www; }
}
CONF
  taskset -c 1 nginx -c "$W/nginx.conf" -p "$W" & PIDS+=($!)
}

# Figures are numbers, or "-" for a column that was skipped.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/ && b > 0)
  printf "%.2f", a / b; else print "-" }'; }
one() { [ "$1" = "-" ] && echo "-" || echo "1.00"; }
gbs() { awk -v a="$1" 'BEGIN { if (a ~ /^[0-9.]+$/) printf "%.2f GB/s", a / 1e9; else print "-" }'; }
gb() { awk -v a="$1" 'BEGIN { if (a ~ /^[0-9.]+$/) printf "%.2f GB", a / 1e9; else print "-" }'; }
# per_cpu WORK CPU_SECONDS: work done per CPU-second of the proxy.
per_cpu() { awk -v w="$1" -v c="$2" 'BEGIN { if (w ~ /^[0-9.]+$/ && c > 0) printf "%.0f", w / c; else print "-" }'; }

# ferry_accepts BIN FILE: does this ferry build take the config?  When
# not, prints why (the first line of `ferry check`) and fails: a row
# whose feature is not in this build is skipped, not failed.
ferry_accepts() {
  local out
  if out=$("$1" check -c "$2" 2>&1); then return 0; fi
  echo "$out" | grep -v '^\s*$' | head -1 | sed "s|^$W/||"
  return 1
}

# A self-signed certificate for 127.0.0.1 and localhost: $W/tls.crt, $W/tls.key.
make_cert() {
  [ -s "$W/tls.crt" ] && return 0
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$W/tls.key" -out "$W/tls.crt" >/dev/null 2>&1
}

# row LABEL FIGURE...: one line of a table, the label 36 wide, figures 11.
row() { local l=$1; shift; printf '%-36s' "$l"; printf ' %11s' "$@"; echo; }
