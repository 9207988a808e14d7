-- pools.lua: pools of real struct ferry_proxy cdata for strategy specs.
local ffi = require("ffi")
require("ferry.cdef")
local poolmod = require("ferry.pool")

local M = {}

M.now = 1000.0

-- n proxies; weights optional.  Stats are set directly on p.c.
function M.pool(n, weights)
  local proxies = {}
  for i = 1, n do
    local c = ffi.new("struct ferry_proxy")
    c.id = i
    c.weight = weights and weights[i] or 1
    proxies[i] = { id = i, display = "http://10.0.0." .. i .. ":3128",
                   weight = weights and weights[i] or 1, c = c }
  end
  return poolmod.new("spec", proxies, { latency_ceiling = 1000, now = function() return M.now end })
end

function M.req(tried)
  return { host = "api.example.com", port = 443, method = "GET", tried = tried or {} }
end

-- How often each proxy id is chosen over `times` selections.
function M.histogram(strategy, pool, times, req)
  local h = {}
  for _ = 1, times do
    local p = strategy.select(pool, req or M.req())
    local k = p and p.id or "none"
    h[k] = (h[k] or 0) + 1
  end
  return h
end

return M
