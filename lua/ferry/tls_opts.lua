-- tls_opts.lua: the `tls` tables of listeners (cert, key), of https://
-- proxies and of exchanges' origins (verify, ca, sni), checked in one place for the
-- config and the inventory API.  Files are checked for readability
-- here; the core loads them (core/transport_tls.c) and reports what it
-- cannot parse.
local type, pairs, tostring = type, pairs, tostring
local format = string.format
local url = require("ferry.url")

local M = {}

local LISTENER_FIELDS = { cert = true, key = true }
local PROXY_FIELDS = { verify = true, ca = true, sni = true }

local function unreadable(path)
  local f, err = io.open(path, "r")
  if not f then return ((err or path):gsub("^.-: ", "")) end
  local _, rerr = f:read(0)
  f:close()
  if rerr then return (rerr:gsub("^.-: ", "")) end
  return nil
end

local function unknown(t, allowed)
  for k in pairs(t) do
    if not allowed[k] then return format('tls: unknown field "%s"', tostring(k)) end
  end
  return nil
end

-- A readable file named by field; resolve turns a relative path into one.
local function file(t, field, resolve, required)
  local v = t[field]
  if v == nil then
    if required then return nil, format("tls: %s is required", field) end
    return nil
  end
  if type(v) ~= "string" or v == "" then return nil, format("tls: %s must be a file path", field) end
  local path = resolve and resolve(v) or v
  local why = unreadable(path)
  if why then return nil, format("tls: %s %s: %s", field, v, why) end
  return path
end

-- A listener's tls = { cert = "file", key = "file" } (PEM).
function M.listener(t, resolve)
  if type(t) ~= "table" then return nil, "tls must be a table { cert = ..., key = ... }" end
  local e = unknown(t, LISTENER_FIELDS)
  if e then return nil, e end
  local cert, cerr = file(t, "cert", resolve, true)
  if not cert then return nil, cerr end
  local key, kerr = file(t, "key", resolve, true)
  if not key then return nil, kerr end
  return { cert = cert, key = key }
end

-- The top-level tls { ca_cert = "file", ca_key = "file", leaf_cache = N }:
-- ferry's CA for interception (docs/https.md).  Both files are required
-- together; the core checks that they parse, match and make a CA.
local CA_FIELDS = { ca_cert = true, ca_key = true, leaf_cache = true }
M.LEAF_CACHE_DEFAULT, M.LEAF_CACHE_MAX = 1000, 100000

function M.ca(t, resolve)
  if type(t) ~= "table" then return nil, "tls must be a table { ca_cert = ..., ca_key = ... }" end
  local e = unknown(t, CA_FIELDS)
  if e then return nil, e end
  local lc = t.leaf_cache
  if lc ~= nil and (type(lc) ~= "number" or lc ~= math.floor(lc) or lc < 1 or
      lc > M.LEAF_CACHE_MAX) then
    return nil, format("tls: leaf_cache must be an integer from 1 to %d", M.LEAF_CACHE_MAX)
  end
  if (t.ca_cert == nil) ~= (t.ca_key == nil) then
    return nil, "tls: ca_cert and ca_key go together (ferry ca init DIR writes both) [FERRY-0180]"
  end
  local out = { leaf_cache = lc or M.LEAF_CACHE_DEFAULT }
  if t.ca_cert == nil then return out end
  local cert, cerr = file(t, "ca_cert", resolve, true)
  if not cert then return nil, cerr .. " [FERRY-0180]" end
  local key, kerr = file(t, "ca_key", resolve, true)
  if not key then return nil, kerr .. " [FERRY-0180]" end
  out.ca_cert, out.ca_key = cert, key
  return out
end

-- The client side's { verify = true, ca = "file", sni = "name" }, for an
-- https:// proxy and for an exchange's origin alike.
local function client(t, resolve)
  if type(t) ~= "table" then return nil, "tls must be a table { verify, ca, sni }" end
  local e = unknown(t, PROXY_FIELDS)
  if e then return nil, e end
  if t.verify ~= nil and type(t.verify) ~= "boolean" then
    return nil, "tls: verify must be true or false"
  end
  local ca, cerr = file(t, "ca", resolve, false)
  if cerr then return nil, cerr end
  if t.sni ~= nil and (type(t.sni) ~= "string" or url.host_kind(t.sni) ~= "name") then
    return nil, "tls: sni must be a host name"
  end
  return { verify = t.verify ~= false, ca = ca, sni = t.sni }
end

-- An https:// proxy's tls; nil t: the defaults (verify against the
-- system store, name = host).
local TLS_SCHEMES = { https = true, backend_tls = true }

function M.proxy(t, scheme, resolve)
  if t == nil then return TLS_SCHEMES[scheme] and { verify = true } or nil end
  if not TLS_SCHEMES[scheme] then
    return nil, scheme == "backend" and "tls is only for https:// backends"
      or "tls is only for https:// proxies"
  end
  return client(t, resolve)
end

-- A backend pool's tls { verify, ca, sni } for its https:// backends; nil
-- t: nil (each backend's own, else the defaults).
function M.backend_pool(t, resolve)
  if t == nil then return nil end
  return client(t, resolve)
end

-- An exchange's tls, for the TLS ferry originates toward its hosts; nil
-- t: the defaults (verify against the system store, SNI = the host
-- unless it is an address).
function M.origin(t, resolve)
  if t == nil then return { verify = true } end
  return client(t, resolve)
end

return M
