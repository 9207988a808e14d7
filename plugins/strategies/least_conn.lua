-- least_conn: the eligible proxy with the fewest active connections;
-- ties rotate (pool:lowest) so equally loaded proxies share the load.
local function active(p) return p.c.active end

return {
  name = "least_conn",
  version = "1",
  select = function(pool, req) return pool:lowest(req, active) end,
}
