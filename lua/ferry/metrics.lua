-- metrics.lua: the text of GET /metrics (Prometheus text format 0.0.4).
--
--   render(rt) -> string, for rt = require("ferry.runtime") (or anything
--   with active() returning a running config: .pools of name -> pool,
--   each with .name, .index, .latency_ceiling and .proxies of
--   { id, label, c = struct ferry_proxy * }).
--
-- The core owns every counter (they survive reloads) and renders the
-- whole text in C (core/metrics_text.c): Lua only lists the running
-- pools' proxies with their health score, which is Lua's to compute
-- (ferry.health), into one reused FFI array.  Nothing here allocates per
-- proxy, so a scrape of 10 000 proxies costs one string copy.
local ffi = require("ffi")
require("ferry.cdef")
local health = require("ferry.health")
local rate = require("ferry.rate")
local lb_stats = require("ferry.lb_stats")

local C = ffi.C
local ipairs, pairs, type = ipairs, pairs, type
local sort = table.sort
local score = health.score

local M = {
  CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8",
}

local members, cap = nil, 0 -- struct ferry_metrics_member[cap], grown, reused
local len = ffi.new("size_t[1]")

local function by_name(a, b) return a.name < b.name end

-- The running pools in a stable order.
local function pool_list(cur)
  local list = {}
  for name, pool in pairs(cur and cur.pools or {}) do
    if pool.name == nil then pool.name = name end
    list[#list + 1] = pool
  end
  sort(list, by_name)
  return list
end

-- The broker's leases live in Lua (broker.lua): a few lines of their own.
local function broker_text()
  local ok, broker = pcall(require, "ferry.broker")
  if not ok or not broker.stats then return "" end
  local st = broker.stats()
  return table.concat({
    "# HELP ferry_broker_leases Proxy leases the broker holds now (each an active use).",
    "# TYPE ferry_broker_leases gauge",
    "ferry_broker_leases " .. st.leases,
    "# HELP ferry_broker_lease_events_total Leases granted, and how they ended.",
    "# TYPE ferry_broker_lease_events_total counter",
    'ferry_broker_lease_events_total{event="granted"} ' .. st.granted,
    'ferry_broker_lease_events_total{event="released"} ' .. st.released,
    'ferry_broker_lease_events_total{event="expired"} ' .. st.expired,
    'ferry_broker_lease_events_total{event="evicted"} ' .. st.evicted,
    "",
  }, "\n")
end

-- Families other modules keep (ferry_pg_*, ferry_fleet_*): name -> fn()
-- returning lines of text ending in "\n" (or ""), in name order.
local extras = {}
function M.register(name, fn)
  extras[name] = fn
end

local function extra_text()
  local names = {}
  for name in pairs(extras) do names[#names + 1] = name end
  sort(names)
  local out = {}
  for _, name in ipairs(names) do
    local ok, text = pcall(extras[name])
    if ok and type(text) == "string" then out[#out + 1] = text end
  end
  return table.concat(out)
end

function M.render(rt)
  local cur = rt and rt.active and rt.active()
  local pools = pool_list(cur)
  local n = 0
  for _, pool in ipairs(pools) do n = n + #(pool.proxies or {}) end
  if n > cap then
    members, cap = ffi.new("struct ferry_metrics_member[?]", n), n
  end
  local i = 0
  for _, pool in ipairs(pools) do
    local index = pool.index or -1
    local now = pool.now and pool.now() or os.time()
    local ceiling = pool.latency_ceiling or 1000
    for _, p in ipairs(pool.proxies or {}) do
      local c = p.c
      if c ~= nil then
        local m = members[i]
        m.proxy = c
        -- Labels are strings the pool entries hold for as long as this call.
        m.label = type(p.label) == "string" and p.label or nil
        m.pool = index
        m.score = score(c, ceiling, now)
        i = i + 1
      end
    end
  end
  local text = C.ferry_metrics_text(members, i, broker_text() ..
    require("ferry.broker_client").metrics_text() .. rate.metrics_text(cur) ..
    lb_stats.metrics_text(cur) .. extra_text(), len)
  return ffi.string(text, len[0])
end

return M
