-- least_errors: the eligible proxy with the fewest failures, then the
-- fewest consecutive failures; ties rotate.
local function errors(p)
  -- Consecutive failures only break ties: they weigh less than one failure.
  return tonumber(p.c.failures) + p.c.consecutive_failures / 4294967296
end

return {
  name = "least_errors",
  version = "1",
  select = function(pool, req) return pool:lowest(req, errors) end,
}
