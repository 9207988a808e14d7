-- pool.lua: the pool object strategies receive, and the built-in round
-- robin the core falls back to when a strategy raises or returns junk.
local bit = require("bit")

local band = bit.band
local setmetatable = setmetatable

-- FERRY_PROXY_DOWN | FERRY_PROXY_DISABLED | FERRY_PROXY_REMOVED
local UNUSABLE = 0x7

local M = {}

local Pool = {}
Pool.__index = Pool

-- Usable for this request: not down, disabled or removed, and not yet
-- tried by it (a retry must go through a different proxy).
function Pool:eligible(p, req)
  if band(p.c.flags, UNUSABLE) ~= 0 then return false end
  local tried = req and req.tried
  if tried and tried[p.id] then return false end
  return true
end

-- name: pool name; proxies: array of { id, display, weight, region, c };
-- opts.latency_ceiling (ms, default 1000), opts.now (seconds clock,
-- default os.time; the runtime passes ferry_now).
function M.new(name, proxies, opts)
  opts = opts or {}
  return setmetatable({
    name = name,
    proxies = proxies or {},
    -- Scratch space owned by the strategy; kept across requests.
    state = {},
    latency_ceiling = opts.latency_ceiling or 1000,
    now = opts.now or os.time,
    -- Cursor of the fallback round robin.  Kept outside `state` so a
    -- broken strategy cannot corrupt the thing that stands in for it.
    rr = 0,
  }, Pool)
end

-- The eligible proxy with the lowest key(p), and among equal keys the
-- lowest key2(p) when given.  The scan starts just after the strategy's
-- cursor (pool.state.cursor) and only a strictly lower key displaces the
-- current best, so ties go to the next proxy in rotation instead of
-- always to the first one.  The cursor moves to the winner.
-- Two keys rather than one combined number: folding a tie-breaker into
-- the fraction of a large counter loses it to double rounding.
function Pool:lowest(req, key, key2)
  local list, st = self.proxies, self.state
  local n = #list
  local start = st.cursor or 0
  local best, best_i, best_k, best_k2
  for k = 1, n do
    local i = (start + k - 1) % n + 1
    local p = list[i]
    if self:eligible(p, req) then
      local v = key(p)
      if not best or v < best_k then
        best, best_i, best_k = p, i, v
        best_k2 = key2 and key2(p)
      elseif key2 and v == best_k then
        local v2 = key2(p)
        if v2 < best_k2 then best, best_i, best_k2 = p, i, v2 end
      end
    end
  end
  if best then st.cursor = best_i end
  return best
end

-- The core's fallback: the next eligible proxy after pool.rr, or nil when
-- none is.  O(1) amortized while most proxies are eligible, O(n) at worst.
function M.round_robin(pool, req)
  local list = pool.proxies
  local n = #list
  local i = pool.rr or 0
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
