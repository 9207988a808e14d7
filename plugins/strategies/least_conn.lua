-- least_conn: the eligible proxy with the fewest active connections;
-- ties are broken by rotation so equal proxies share the load.
local function active(p) return p.c.active end

return {
  name = "least_conn",
  version = "1",
  select = function(pool, req) return pool:lowest(req, active) end,
}
