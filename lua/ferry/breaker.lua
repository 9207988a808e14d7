-- breaker.lua: drives the circuit breaker of a (proxy, exchange) pair
-- from each result.  The pool's breaker plugin decides when a closed
-- breaker opens; the rest is fixed here, the same for every plugin:
--   open       never selected until the cooldown ends (pool.lua turns it
--              half-open at the first look after that);
--   half-open  `trials` trial requests at a time; a success closes it, a
--              failure reopens it with the cooldown doubled, capped at
--              max_cooldown.
local C = require("ffi").C
local cdef = require("ferry.cdef")
local fleet_bans = require("ferry.fleet_bans")

local pcall, type, tostring, tonumber = pcall, type, tostring, tonumber
local uint32x2 = require("ffi").typeof("uint32_t[2]")

local OPEN, HALF_OPEN = cdef.BREAKER_OPEN, cdef.BREAKER_HALF_OPEN

local M = {}

-- The cooldown of the next open: doubled per open since the last close.
function M.cooldown(settings, opens)
  local s = settings.cooldown * 2 ^ (opens or 0)
  local cap = settings.max_cooldown or settings.cooldown * 16
  if s > cap then s = cap end
  return s
end

-- window(seconds) -> successes, failures of the pair being decided on
-- (one function for all calls: no closure per result).
local counts = uint32x2()
local current
local function window(seconds)
  C.ferry_pxstate_window(current, tonumber(seconds) or 1, counts)
  return tonumber(counts[0]), tonumber(counts[1])
end

-- Apply one result to pair x.  b = { plugin, settings } of the pool;
-- r = { ok, kind, status, latency_ms }.  report(msg) is called when the
-- plugin fails; the breaker then stays as it is.
function M.on_result(b, x, r, report)
  local state = x.breaker
  local s = b.settings
  if state == HALF_OPEN then
    if r.ok then
      C.ferry_breaker_close(x)
      fleet_bans.breaker_closed(x)
    else
      C.ferry_breaker_open(x, M.cooldown(s, x.opens))
      fleet_bans.breaker_opened(x, r)
    end
    return
  end
  -- Open: a late result of a request sent before it opened.
  if state == OPEN then return end
  current = x
  local ok, open = pcall(b.plugin.should_open, s, x, r, window)
  if not ok then
    report("breaker \"" .. b.plugin.name .. "\" failed: " .. tostring(open))
    return
  end
  if open ~= nil and type(open) ~= "boolean" then
    report("breaker \"" .. b.plugin.name .. "\" returned a " .. type(open) ..
      ", expected true or false")
    return
  end
  if open then
    C.ferry_breaker_open(x, M.cooldown(s, x.opens))
    -- Shared with the fleet when the exchange's answers opened it.
    fleet_bans.breaker_opened(x, r)
  end
end

return M
