# peers.sh: sourced by run.sh and tunnel.sh.  Starts ferry (direct route,
# warn-level log, no access lines) and squid (no cache, one worker) on CPU 0,
# each on its port under $W, the way every bench compares them.
# Needs W, P_FERRY, P_SQUID and the PIDS array; sets FERRY_PID and SQUID_PID.

bench_start_ferry() { # $1: the ferry binary
  cat > "$W/ferry.lua" <<CONF
listen { name = "bench", addr = "127.0.0.1:$P_FERRY" }
log { level = "warn", access = false }
route(function(req) return "direct" end)
CONF
  taskset -c 0 "$1" -c "$W/ferry.lua" 2>"$W/logs/ferry.err" & FERRY_PID=$!; PIDS+=($FERRY_PID)
}

bench_start_squid() {
  cat > "$W/squid.conf" <<CONF
http_port 127.0.0.1:$P_SQUID
acl all_ports port 1-65535
http_access allow all
cache deny all
cache_mem 8 MB
access_log none
cache_log $W/logs/squid-cache.log
pid_filename $W/squid.pid
coredump_dir $W
cache_effective_user proxy
shutdown_lifetime 1 seconds
workers 1
CONF
  taskset -c 0 squid -N -f "$W/squid.conf" & SQUID_PID=$!; PIDS+=($SQUID_PID)
}
