-- select.lua: selection cost of each strategy, in microseconds per
-- selection, for pools of 10, 100 and 10 000 proxies.  Proxies and their
-- (proxy, exchange) states are the core's own (build/libferry.so), so the
-- eligibility checks read the same C structs as in the daemon.  A fifth
-- of the proxies carry history (failures, latency, connections), one in
-- ten is down.  Run from the project root: luajit spec/bench/select.lua
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
plugins.set_builtin("plugins")

local STRATEGIES = { "round_robin", "random", "weighted_random", "least_conn", "least_errors",
                     "health_score", "latency", "hash", "sticky" }
local SIZES = { 10, 100, 10000 }
local BUDGET = tonumber(arg and arg[1]) or 0.3 -- seconds of selections per cell

local made = 0
local function make_pool(n)
  local list = {}
  local err = ffi.new("const char *[1]")
  for i = 1, n do
    made = made + 1
    local host = string.format("10.%d.%d.%d", made / 65536 % 256, made / 256 % 256, made % 256)
    local c = core.ferry_proxy_new("bench-" .. made, 1, host, 3128, nil, nil, nil,
      1 + i % 3, err)
    assert(c ~= nil)
    if i % 5 == 0 then
      c.successes, c.failures, c.latency_ewma_ms, c.active = 100, i % 7, 20 + i % 50, i % 4
    end
    if i % 10 == 3 then core.ferry_health_mark(c, 0, "bench") end
    list[i] = { id = tonumber(c.id), display = host, weight = 1 + i % 3, c = c, x = {} }
  end
  local pool = poolmod.new("bench" .. n, list, { latency_ceiling = 1000, now = core.ferry_now })
  pool.pair_of = core.ferry_pxstate_get
  pool.half_open = core.ferry_breaker_half_open
  pool.session_ttl = 600
  pool.members = {}
  for _, p in ipairs(list) do pool.members[p] = true end
  return pool
end

local function bench(strategy, pool)
  local reqs = {}
  for i = 1, 64 do
    reqs[i] = { host = "api" .. i .. ".example.com", port = 443, method = "GET", exid = 0,
                client = "127.0.0." .. i, session = "s" .. i, tried = {} }
  end
  local select = strategy.select
  -- Warm up (JIT traces, sticky pins), then time batches until the budget.
  for i = 1, 2000 do select(pool, reqs[i % 64 + 1]) end
  local n, t0 = 0, os.clock()
  local elapsed
  repeat
    for i = 1, 1000 do
      local p = select(pool, reqs[i % 64 + 1])
      if not p then error(strategy.name .. " found no proxy") end
    end
    n = n + 1000
    elapsed = os.clock() - t0
  until elapsed >= BUDGET
  return elapsed / n * 1e6
end

io.write(string.format("%-18s", "strategy"))
for _, n in ipairs(SIZES) do io.write(string.format("%14s", n .. " proxies")) end
io.write("\n")
local worst = 0
for _, name in ipairs(STRATEGIES) do
  local strategy = assert(plugins.load("strategies", name, { "plugins" }))
  io.write(string.format("%-18s", name))
  for _, n in ipairs(SIZES) do
    local pool = make_pool(n)
    if strategy.init then strategy.init(pool) end
    local us = bench(strategy, pool)
    if us > worst then worst = us end
    io.write(string.format("%11.3f us", us))
  end
  io.write("\n")
end
print(string.format("worst: %.3f us per selection (target: < 1000 us at 100+ proxies)", worst))
