-- least_errors: the eligible proxy with the fewest failures, then the
-- fewest consecutive failures; ties rotate.  Two keys, not one number:
-- a tie-breaker folded into the fraction of a large failure count
-- would be rounded away.
local tonumber = tonumber

local function failures(p) return tonumber(p.c.failures) end
local function consecutive(p) return p.c.consecutive_failures end

return {
  name = "least_errors",
  version = "1",
  select = function(pool, req) return pool:lowest(req, failures, consecutive) end,
}
