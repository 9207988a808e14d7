-- endpoints.lua: what the admin plane serves.  Each module registers its
-- routes on the router (ferry.admin); this file owns the small ones:
-- /health, reload, and the console line endpoint.
local ffi = require("ffi")
local admin = require("ferry.admin")
require("ferry.cdef")
require("ferry.broker")
require("ferry.inventory")
require("ferry.rate")

local C = ffi.C
local pairs = pairs

local M = {}

local started = C.ferry_now()

-- Whether the pool has a proxy that can take a request now.
local function pool_can_serve(pool)
  if pool.all_down == "direct" or pool.all_down == "any" then
    return #pool.proxies > 0 or pool.all_down == "direct"
  end
  for _, p in ipairs(pool.proxies) do
    if p.c.flags == 0 then return true end
  end
  return false
end

-- 200 while serving; 503 while draining or when no pool can serve.
admin.route("GET", "/health", function(_, rt)
  local cur = rt.active()
  local pools, serving, total = {}, 0, 0
  for name, pool in pairs(cur and cur.pools or {}) do
    local ok = pool_can_serve(pool)
    pools[name] = ok and "up" or "down"
    total = total + 1
    if ok then serving = serving + 1 end
  end
  local status = "ok"
  if C.ferry_draining() ~= 0 then
    status = "draining"
  elseif not cur then
    status = "starting"
  elseif total > 0 and serving == 0 then
    status = "down"
  end
  local body = { status = status, uptime_s = math.floor(C.ferry_now() - started),
                 pools = next(pools) and pools or nil }
  return status == "ok" and 200 or 503, body
end)

admin.route("POST", "/api/v1/reload", function(req, rt)
  local ok, err = rt.reload_now()
  if not ok then
    return admin.err(req, 422, "FERRY-0102", "reload refused, the running config stays: " ..
      tostring(err))
  end
  return 200, { status = "reloaded" }
end)

-- One console line: 200 with the printed result, or a coded error.
admin.route("POST", "/api/v1/console", function(req, rt)
  local console = require("ferry.console")
  local ok, text = console.eval(req.body or "", rt)
  if not ok then
    -- A line a budget stopped carries its own code (FERRY-4011..4014).
    local at = text:find("[FERRY-401", 1, true)
    local code = at and text:sub(at + 1, at + 10) or "FERRY-7301"
    return admin.err(req, 400, code, text)
  end
  return 200, text, { ["Content-Type"] = "text/plain; charset=utf-8" }
end)

-- The HTTP caches: their counters, and purge by key prefix.
admin.route("GET", "/api/v1/cache", function()
  return 200, { caches = require("ferry.cache").stats() }
end)

admin.route("DELETE", "/api/v1/cache", function(req)
  local q = req.query or {}
  local n, err = require("ferry.cache").purge(q.prefix or "", q.cache)
  if not n then return admin.err(req, 400, "FERRY-7700", err) end
  return 200, { purged = n }
end)

-- The fleet's nodes as this node sees them (from memory: "stale" while
-- PostgreSQL is not up).  Without a fleet: this node alone, fleet false.
admin.route("GET", "/api/v1/nodes", function()
  local nodes = require("ferry.fleet_nodes")
  if not nodes.enabled() then
    return 200, { fleet = false }
  end
  local l = nodes.list()
  l.fleet = true
  if #l.nodes == 0 then l.nodes = nil end -- not read yet (JSON has no empty list here)
  return 200, l
end)

admin.route("GET", "/metrics", function(_, rt)
  local text = require("ferry.metrics").render(rt)
  return 200, text, { ["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8" }
end)

function M.handle(ar, rt)
  return admin.handle(ar, rt)
end

return M
