-- broker_client_resolve.lua: what resolving a proxy costs a pool that
-- leases its proxies from a broker, once the leases are cached, in
-- microseconds per request, in process:
--   resolve  broker_client.resolve(): the next valid cached lease (round
--            robin, expiry checked) straight from the client's memory;
--   pick     the pool's strategy choosing among the leased members, as
--            dispatch does for every request (the leases are the pool's
--            members: no broker call, no timer, nothing else runs).
-- Three leases, as a default pool holds.  Each figure is the best of
-- five rounds.  Target: < 10 us (the broker-client requirement is < 10 ms).
-- Run from the project root after make build/libferry.so:
--   luajit spec/bench/broker_client_resolve.lua [seconds]
package.path = "lua/?.lua;" .. package.path
local ffi = require("ffi")
require("ferry.cdef")
ffi.cdef[[
struct ev_loop;
struct ev_loop *ev_default_loop(unsigned int flags);
extern struct ev_loop *loop;
void log_init(int fd);
int open(const char *path, int flags, int mode);
]]
local core = ffi.load("./build/libferry.so", true)
core.loop = core.ev_default_loop(0)
core.log_init(core.open("/dev/null", 1, 0))

local plugins = require("ferry.plugins")
local poolmod = require("ferry.pool")
local bc = require("ferry.broker_client")
plugins.set_builtin("plugins")

local BUDGET = tonumber(arg and arg[1]) or 0.3
local URLS = { "socks5://u1:p1@10.1.0.1:1080", "http://10.1.0.2:3128", "socks5://10.1.0.3:1080" }

local function best_of(fn)
  local best = math.huge
  for _ = 1, 5 do
    for _ = 1, 2000 do fn() end -- warm up (JIT traces)
    local n, t0 = 0, os.clock()
    local elapsed
    repeat
      for _ = 1, 1000 do fn() end
      n = n + 1000
      elapsed = os.clock() - t0
    until elapsed >= BUDGET / 5
    local us = elapsed / n * 1e6
    if us < best then best = us end
  end
  return best
end

local now = core.ferry_now()
local st = bc._seed("bench", URLS, 3600, now)
assert(#st.members == 3)
local resolve = bc.resolve
local resolve_us = best_of(function()
  if not resolve("bench", now) then error("no lease resolved") end
end)

-- The pool dispatch picks from: the leased proxies as its members.
local list, err = {}, ffi.new("const char *[1]")
for i, px in ipairs(st.members) do
  local c = core.ferry_proxy_new(px.url, px.scheme == "http" and 1 or 2, px.host, px.port,
    px.user, px.pass, nil, 1, err)
  assert(c ~= nil)
  list[i] = { id = tonumber(c.id), display = px.display, weight = 1, c = c, x = {} }
end
local pool = poolmod.new("bench", list, { latency_ceiling = 1000, now = core.ferry_now })
pool.pair_of = core.ferry_pxstate_get
pool.half_open = core.ferry_breaker_half_open
pool.session_ttl = 600
pool.members = {}
for _, p in ipairs(list) do pool.members[p] = true end
local strategy = assert(plugins.load("strategies", "round_robin", { "plugins" }))
if strategy.init then strategy.init(pool) end
local req = { host = "api.example.com", port = 443, method = "GET", exid = 0,
              client = "127.0.0.1", tried = {} }
local pick_us = best_of(function()
  if not strategy.select(pool, req) then error("no proxy picked") end
end)

print(string.format("broker client, 3 cached leases: resolve %.3f us, pool pick " ..
  "(round_robin) %.3f us per request", resolve_us, pick_us))
if resolve_us > 10 or pick_us > 10 then
  print("over the 10 us target")
  os.exit(1)
end
