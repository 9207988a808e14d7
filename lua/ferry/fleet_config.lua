-- fleet_config.lua: the fleet's config fields, checked for config.lua
-- (so `ferry check` refuses what `ferry run` would):
--   store { postgres = "conninfo or postgresql:// URI", resync = 30, queue = 10000,
--           timeout = 5 }                      (with path, key, key_file as before)
--   node { id = "fra-1", advertise = "10.0.0.5:9090", heartbeat = 2 }
-- Each function returns the checked table, or nil and a message ending
-- with its code.  A message never quotes the conninfo (it holds a password).
local url = require("ferry.url")

local M = {}

local function number(t, field, lo, hi, integer)
  local v = t[field]
  if v == nil then return true end
  if type(v) ~= "number" or v ~= v or v < lo or v > hi or (integer and v % 1 ~= 0) then
    return nil, string.format("%s must be a %s from %s to %s", field,
      integer and "whole number" or "number", tostring(lo), tostring(hi))
  end
  return true
end

-- The libpq parser when the core is there (ferry run, ferry check).
local function libpq_check(s)
  local ok, ffi = pcall(require, "ffi")
  if not ok then return true end
  local found, fn = pcall(function() return ffi.C.ferry_pg_check end)
  if not found or fn == nil then return true end
  local err = ffi.new("const char *[1]")
  if fn(s, err) ~= 0 then return nil, ffi.string(err[0]) end
  return true
end

-- store.postgres / resync / queue / timeout: into s (the store table).
function M.store(t, s)
  local pgs = t.postgres
  if pgs == nil then
    for _, k in ipairs { "resync", "queue", "timeout" } do
      if t[k] ~= nil then return nil, k .. " needs postgres [FERRY-0251]" end
    end
    return s
  end
  if type(pgs) ~= "string" then
    return nil, "postgres must be a string (a libpq connection string or postgresql:// URI), " ..
      "got a " .. type(pgs) .. " [FERRY-0250]"
  end
  if pgs == "" or #pgs > 4096 or pgs:find("[%z\r\n]") then
    return nil, "postgres must be a connection string of 1 to 4096 bytes on one line [FERRY-0250]"
  end
  if not (pgs:match("^postgres://") or pgs:match("^postgresql://") or pgs:find("=", 1, true)) then
    return nil, "postgres must be key=value pairs (host=... dbname=...) or a postgresql:// URI " ..
      "[FERRY-0250]"
  end
  local ok, why = libpq_check(pgs)
  if not ok then return nil, "postgres: " .. why .. " [FERRY-0250]" end
  for _, f in ipairs {
    { "resync", 1, 86400, false }, { "queue", 1, 1000000, true }, { "timeout", 0.1, 600, false },
  } do
    local nok, nwhy = number(t, f[1], f[2], f[3], f[4])
    if not nok then return nil, nwhy .. " [FERRY-0251]" end
  end
  s.postgres, s.resync, s.queue, s.timeout = pgs, t.resync, t.queue, t.timeout
  return s
end

function M.node(t)
  if type(t) ~= "table" then return nil, "expected a table, got a " .. type(t) .. " [FERRY-0254]" end
  for k in pairs(t) do
    if k ~= "id" and k ~= "advertise" and k ~= "heartbeat" then
      return nil, string.format('unknown field "%s" [FERRY-0254]', tostring(k))
    end
  end
  local n = {}
  if t.id ~= nil then
    if type(t.id) ~= "string" or #t.id < 1 or #t.id > 64 or t.id:find("[^%w._-]") then
      return nil, "id must be 1 to 64 letters, digits, . _ - [FERRY-0252]"
    end
    n.id = t.id
  end
  if t.advertise ~= nil then
    local host, port
    if type(t.advertise) == "string" then host, port = url.parse_hostport(t.advertise) end
    if not host or type(port) ~= "number" or port < 1 then
      return nil, 'advertise must be "host:port" (how other nodes reach this one) [FERRY-0253]'
    end
    n.advertise = t.advertise
  end
  if t.heartbeat ~= nil then
    local v = t.heartbeat
    if type(v) ~= "number" or v ~= v or v <= 0 or v > 3600 then
      return nil, "heartbeat must be a number of seconds above 0, at most 3600 [FERRY-0254]"
    end
    n.heartbeat = v
  end
  return n
end

return M
