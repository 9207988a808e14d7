-- latency: the eligible proxy with the lowest connect+handshake latency
-- (EWMA).  A proxy without a sample yet counts as fastest, so every
-- proxy gets measured; ties rotate.
local function latency(p) return p.c.latency_ewma_ms end

return {
  name = "latency",
  version = "1",
  select = function(pool, req) return pool:lowest(req, latency) end,
}
