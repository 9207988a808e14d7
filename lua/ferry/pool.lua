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

-- The eligible proxy with the lowest key(p), scanning from just after
-- the strategy's cursor (pool.state.cursor) so that ties rotate instead
-- of always landing on the first proxy.  The cursor moves to the winner.
function Pool:lowest(req, key)
  local list, st = self.proxies, self.state
  local n = #list
  local start = st.cursor or 0
  local best, best_i, best_key
  for k = 1, n do
    local i = (start + k - 1) % n + 1
    local p = list[i]
    if self:eligible(p, req) then
      local v = key(p)
      if not best or v < best_key then
        best, best_i, best_key = p, i, v
      end
    end
  end
  if best then st.cursor = best_i end
  return best
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
