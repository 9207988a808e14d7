-- pool.lua: the pool object strategies receive, and the built-in round
-- robin the core falls back to when a strategy fails.
local bit = require("bit")

local band = bit.band
local UNUSABLE = 0x7 -- FERRY_PROXY_DOWN | DISABLED | REMOVED

local M = {}

local Pool = {}
Pool.__index = Pool

-- Usable for this request: not down, disabled or removed, not yet tried.
function Pool:eligible(p, req)
  if band(p.c.flags, UNUSABLE) ~= 0 then return false end
  local tried = req and req.tried
  return not (tried and tried[p.id])
end

function M.new(name, proxies, opts)
  opts = opts or {}
  return setmetatable({
    name = name,
    proxies = proxies,
    state = {},
    latency_ceiling = opts.latency_ceiling or 1000,
    now = opts.now or os.time,
    rr = 0,
  }, Pool)
end

-- Next eligible proxy after the pool's own cursor, or nil.
function M.round_robin(pool, req)
  local list = pool.proxies
  local n = #list
  local i = pool.rr
  for _ = 1, n do
    i = i % n + 1
    local p = list[i]
    if pool:eligible(p, req) then
      pool.rr = i
      return p
    end
  end
  return nil
end

return M
