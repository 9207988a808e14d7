-- proxy_entry.lua: the one validator of a proxy entry, for the config
-- (pool "x" { proxies = { ... } }) and the inventory (console
-- proxy.add, POST /api/v1/proxies, rows of the store) alike.  Each field
-- has one rule in FIELDS; a rule returns nil, or a message that starts
-- with the field's name ("id: ...").  Callers say which fields they take
-- and prefix their own context (the config: FILE:LINE: pool: proxies[i]).
local url = require("ferry.url")
local tls_opts = require("ferry.tls_opts")

local format, type, pairs, ipairs, tostring = string.format, type, pairs, ipairs, tostring

local M = {}

M.MAX_ID = 64
M.MAX_REGION = 64
M.MAX_URL = 2048
M.MAX_WEIGHT = 1000

-- To add a field: a rule in FIELDS, its place in ORDER, and the sets of
-- CONFIG and INVENTORY that take it.

-- An id travels in X-Ferry-Proxy, log lines and metric labels; all digits
-- would read as ferry's own proxy numbers in the console and the API.
local ID = "^[%w._:@/-]+$"
local TOKEN = "^[!#$%%&'*+%-.^_`|~%w]+$"

-- The rules, by field.  check(v, px, ctx): v is the value given (never
-- nil); px is the entry being built: a rule may store what it derives;
-- ctx is the caller's (resolve: a relative file name to a path).  A
-- rule's absent(px, ctx), when it has one, runs when the field is not
-- given (a default that depends on other fields).
M.FIELDS = {
  -- ctx.kind "backends": a backend's http(s):// URL (url.parse_backend).
  url = { check = function(v, px, ctx)
    if type(v) ~= "string" then return "url: expected a string" end
    if #v > M.MAX_URL then return format("url: longer than %d bytes", M.MAX_URL) end
    local p, err
    if ctx.kind == "backends" then
      p, err = url.parse_backend(v)
    else
      p, err = url.parse(v)
    end
    if not p then return "url: " .. err end
    for k, x in pairs(p) do px[k] = x end
    px.url = v
  end },
  id = { check = function(v, px)
    if type(v) ~= "string" then return "id: expected a string" end
    if #v == 0 or #v > M.MAX_ID or not v:match(ID) then
      return format("id: 1 to %d letters, digits or . _ : @ / -", M.MAX_ID)
    end
    if v:match("^%d+$") then return "id: must not be all digits (numbers are ferry's own ids)" end
    px.id = v
  end },
  weight = { check = function(v, px)
    if type(v) ~= "number" or v % 1 ~= 0 or v < 1 or v > M.MAX_WEIGHT then
      return format("weight: expected an integer from 1 to %d", M.MAX_WEIGHT)
    end
    px.weight = v
  end },
  region = { check = function(v, px)
    if type(v) ~= "string" then return "region: expected a string" end
    if #v == 0 or #v > M.MAX_REGION or v:find("%c") then
      return format("region: 1 to %d printable characters", M.MAX_REGION)
    end
    px.region = v
  end },
  headers = { check = function(v, px)
    if type(v) ~= "table" then return "headers: expected a table" end
    for k, h in pairs(v) do
      if type(k) ~= "string" or not k:match(TOKEN) then
        return format('headers: name "%s" is not a valid token', tostring(k))
      end
      if type(h) ~= "string" and type(h) ~= "number" then
        return format('headers: "%s" must be a string', k)
      end
      if tostring(h):find("[\r\n%z]") then
        return format('headers: "%s" must not contain CR, LF or NUL', k)
      end
    end
    px.headers = v
  end },
  -- A member kept for when no primary of its pool can serve (ferry.pool,
  -- Pool:select); proxy pools and backend pools alike.
  backup = { check = function(v, px)
    if type(v) ~= "boolean" then return "backup: expected true or false" end
    px.backup = v
  end },
  tls = {
    check = function(v, px, ctx)
      local t, err = tls_opts.proxy(v, px.scheme, ctx.resolve)
      if err then return err end
      px.tls = t
    end,
    -- A backend pool's tls (ctx.pool_tls) holds for its https:// backends.
    absent = function(px, ctx)
      px.tls = (px.scheme == "backend_tls" and ctx.pool_tls) or tls_opts.proxy(nil, px.scheme)
    end,
  },
 }

-- The order fields are checked in, so that the first error is stable.
M.ORDER = { "url", "id", "weight", "region", "headers", "backup", "tls" }

-- Fields a config entry and an inventory entry take.
M.CONFIG = { url = true, id = true, weight = true, region = true, headers = true, tls = true,
  backup = true }
M.INVENTORY = { url = true, id = true, weight = true, region = true, tls = true }
-- Backends (pool { backends = ... }): ctx.kind = "backends" with these.
M.BACKEND_CONFIG = { url = true, id = true, weight = true, region = true, backup = true,
  tls = true }
M.BACKEND_INVENTORY = { url = true, id = true, weight = true, region = true, backup = true,
  tls = true }

local function known(allowed)
  local ks = {}
  for _, k in ipairs(M.ORDER) do
    if allowed[k] then ks[#ks + 1] = k end
  end
  return table.concat(ks, ", ")
end

-- spec: a table of fields (url required); allowed: M.CONFIG or
-- M.INVENTORY; ctx: see FIELDS (optional).  Returns the entry as
-- apply.build_pools wants it (the parsed URL's fields, url, id, weight,
-- region, headers, tls, display), or nil and the message of the first
-- field at fault.
function M.validate(spec, allowed, ctx)
  ctx = ctx or {}
  if type(spec) ~= "table" then
    return nil, format("expected a URL string or a table, got a %s", type(spec))
  end
  for k in pairs(spec) do
    if type(k) ~= "string" or not allowed[k] or not M.FIELDS[k] then
      return nil, format('unknown field "%s" (known: %s)', tostring(k), known(allowed))
    end
  end
  if spec.url == nil then return nil, "url: required" end
  local px = {}
  for _, k in ipairs(M.ORDER) do
    local v, rule = spec[k], M.FIELDS[k]
    if v ~= nil then
      local err = rule.check(v, px, ctx)
      if err then return nil, err end
    elseif rule.absent then
      rule.absent(px, ctx)
    end
  end
  px.weight = px.weight or 1
  px.display = url.display(px)
  return px
end

return M
