-- store_sqlite.lua: the embedded SQLite store (core/store.c), for Lua:
-- the default backend of ferry.store.
--
-- A thin wrapper over the ferry_store_* FFI calls; core/store.h has the
-- full contract (file checks, WAL, locking, what health keeps).  Runtime
-- failures (I/O, locked, corrupt, read-only, unknown key) come back as
-- nil, err with the database path in err; wrong argument types are
-- programming errors and raise.
--
--   store.open(path[, key])                   -> true | nil, err
--       key: the 32-byte sealing key (ferry.store_key); with it, values
--       carrying credentials are sealed in the file (core/store_seal.c).
--   store.close()
--   store.is_open()                           -> boolean
--   store.put(key, url, pool, opts, enabled)  -> true | nil, err
--       opts: table (weight, region, id, headers), stored as JSON;
--       pool may be nil; enabled defaults to true.
--   store.delete(key)                         -> true | nil, err
--   store.set_enabled(key, enabled)           -> true | nil, err
--   store.proxies()                           -> { {key, url, pool, opts, enabled,
--                                                   added_at}, ... } | nil, err
--   store.save_health()                       -> number saved | nil, err
--   store.load_health()                       -> number restored | nil, err
local ffi = require("ffi")
local cjson = require("cjson")
require("ferry.cdef")

local C = ffi.C
local ffi_string = ffi.string
local type, error, pcall, ipairs, tostring = type, error, pcall, ipairs, tostring

local M = { NAME = "sqlite", ASYNC = false }

local errp = ffi.new("const char *[1]")

local function last_err()
  local e = errp[0]
  return e ~= nil and ffi_string(e) or "store: unknown error"
end

local function check_string(name, v, optional)
  if optional and v == nil then return end
  if type(v) ~= "string" or v == "" then
    error("store: " .. name .. " must be a non-empty string, got " .. tostring(v), 3)
  end
end

local function result(rc)
  if rc < 0 then return nil, last_err() end
  return true
end

function M.open(path, key)
  check_string("path", path)
  if key ~= nil and (type(key) ~= "string" or #key ~= 32) then
    error("store: key must be a string of 32 bytes", 2)
  end
  errp[0] = nil
  return result(C.ferry_store_open_key(path, key, key and #key or 0, errp))
end

function M.close()
  C.ferry_store_close()
end

function M.is_open()
  return C.ferry_store_is_open() ~= 0
end

function M.put(key, url, pool, opts, enabled)
  check_string("key", key)
  check_string("url", url)
  check_string("pool", pool, true)
  if opts ~= nil and type(opts) ~= "table" then
    error("store: opts must be a table, got " .. type(opts), 2)
  end
  if enabled ~= nil and type(enabled) ~= "boolean" then
    error("store: enabled must be a boolean, got " .. type(enabled), 2)
  end
  local ok, json = pcall(cjson.encode, opts or {})
  if not ok then
    error("store: opts cannot be encoded as JSON: " .. tostring(json), 2)
  end
  errp[0] = nil
  return result(C.ferry_store_put_proxy(key, url, pool, json, enabled == false and 0 or 1,
    errp))
end

function M.delete(key)
  check_string("key", key)
  errp[0] = nil
  return result(C.ferry_store_delete_proxy(key, errp))
end

function M.set_enabled(key, enabled)
  check_string("key", key)
  if type(enabled) ~= "boolean" then
    error("store: enabled must be a boolean, got " .. type(enabled), 2)
  end
  errp[0] = nil
  return result(C.ferry_store_set_enabled(key, enabled and 1 or 0, errp))
end

function M.proxies()
  errp[0] = nil
  local s = C.ferry_store_proxies_json(errp)
  if s == nil then return nil, last_err() end
  local ok, list = pcall(cjson.decode, ffi_string(s))
  if not ok or type(list) ~= "table" then
    return nil, "store: cannot decode the proxy list: " .. tostring(list)
  end
  for _, p in ipairs(list) do
    if p.pool == cjson.null then p.pool = nil end
    if type(p.opts) ~= "table" then p.opts = {} end
    if p.added_at == cjson.null then p.added_at = nil end
  end
  return list
end

local function count(rc)
  if rc < 0 then return nil, last_err() end
  return rc
end

function M.save_health()
  errp[0] = nil
  return count(C.ferry_store_save_health(errp))
end

function M.load_health()
  errp[0] = nil
  return count(C.ferry_store_load_health(errp))
end

return M
