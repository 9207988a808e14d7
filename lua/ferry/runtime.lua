-- runtime.lua: what the core calls.  load() validates a config and,
-- when asked, applies it through the ferry_* FFI functions; dispatch()
-- answers "which proxy?" for one request.  Every user-supplied hook
-- (route, strategies) runs under pcall: a failing script falls back to
-- a built-in choice, is counted, and is logged at most once per window.
local ffi = require("ffi")
local cdef = require("ferry.cdef")
local config = require("ferry.config")
local plugins = require("ferry.plugins")
local poolmod = require("ferry.pool")

local C = ffi.C
local ffi_string = ffi.string
local pcall, type, tostring, setmetatable = pcall, type, tostring, setmetatable

local M = {}

-- Negative answers understood by the core (bridge.h).
local NO_PROXY, ROUTE_ERROR, DENY = -1, -2, -3

-- Hook-error kinds counted by the core.
local HOOK_ROUTE, HOOK_STRATEGY = 1, 2

local LOG_WINDOW = 10 -- seconds between two log lines about the same fault

local root = "."
local active = nil -- { cfg, pools = {name=pool}, by_index = {pool} }

function M.set_root(r)
  root = r
  plugins.set_builtin(r .. "/plugins")
end

local last_logged = {}
local suppressed = {}

-- Log a recurring fault once per window, with how often it was hidden.
local function log_once(key, level, code, msg)
  local now = C.ferry_now()
  local last = last_logged[key]
  if last and now - last < LOG_WINDOW then
    suppressed[key] = (suppressed[key] or 0) + 1
    return
  end
  local hidden = suppressed[key]
  if hidden and hidden > 0 then
    msg = msg .. " (" .. hidden .. " more since the last report)"
  end
  last_logged[key], suppressed[key] = now, 0
  C.ferry_log(level, code, msg)
end

local function plugin_dirs(cfg)
  local dirs = {}
  for i, d in ipairs(cfg.plugin_dirs or {}) do
    dirs[i] = d
  end
  dirs[#dirs + 1] = root .. "/plugins"
  return dirs
end

-- Header lines a proxy adds to what it sends, CRLF-terminated.
local function header_block(headers)
  if not headers then return nil end
  local names = {}
  for k in pairs(headers) do names[#names + 1] = k end
  if #names == 0 then return nil end
  table.sort(names)
  local out = {}
  for _, k in ipairs(names) do
    out[#out + 1] = k .. ": " .. tostring(headers[k]) .. "\r\n"
  end
  return table.concat(out)
end

local LEVELS = { debug = 0, info = 1, warn = 2, error = 3 }

local function ms(seconds)
  return seconds and math.floor(seconds * 1000 + 0.5) or 0
end

-- Build pools (and, when applying, the C proxies behind them).
local function build_pools(cfg, apply)
  local dirs = plugin_dirs(cfg)
  local pools, by_index = {}, {}
  for idx, name in ipairs(cfg.pool_order) do
    local pc = cfg.pools[name]
    local strategy, perr = plugins.load("strategies", pc.strategy, dirs)
    if not strategy then
      return nil, string.format("%s:%d: pool \"%s\": unknown strategy \"%s\" (%s)",
        cfg.file, pc.line, name, pc.strategy, perr)
    end
    local proxies = {}
    for i, px in ipairs(pc.proxies) do
      local c
      if apply then
        local err = ffi.new("const char *[1]")
        c = C.ferry_proxy_new(px.id or px.url, cdef.SCHEME[px.scheme] or 0, px.host, px.port,
          px.user, px.pass, header_block(px.headers), px.weight or 1, err)
        if c == nil then
          return nil, string.format("%s:%d: pool \"%s\": proxies[%d]: %s",
            cfg.file, pc.line, name, i, ffi_string(err[0]))
        end
      else
        c = ffi.new("struct ferry_proxy")
        c.id, c.weight = i, px.weight or 1
      end
      proxies[i] = { id = tonumber(c.id), display = px.display, weight = px.weight or 1,
                     region = px.region, c = c }
    end
    local pool = poolmod.new(name, proxies, {
      latency_ceiling = pc.latency_ceiling or 1000,
      now = C.ferry_now,
    })
    pool.index = idx
    pool.strategy = strategy
    pool.retries = pc.retries or 2
    pool.connect_timeout_ms = pc.timeouts and ms(pc.timeouts.connect) or 0
    pool.first_byte_timeout_ms = pc.timeouts and ms(pc.timeouts.first_byte) or 0
    pool.members = {}
    for _, p in ipairs(proxies) do pool.members[p] = true end
    if strategy.init then
      local ok, ierr = pcall(strategy.init, pool)
      if not ok then
        return nil, string.format("%s:%d: pool \"%s\": strategy \"%s\" init failed: %s",
          cfg.file, pc.line, name, pc.strategy, tostring(ierr))
      end
    end
    pools[name], by_index[idx] = pool, pool
  end
  return pools, by_index
end

local function open_listeners(cfg)
  for _, l in ipairs(cfg.listeners) do
    local err = ffi.new("const char *[1]")
    local idx = C.ferry_listen(l.name, l.host, l.port, l.protocol, l.open and 1 or 0, err)
    if idx < 0 then
      return nil, string.format("%s:%d: listen \"%s\": cannot listen on %s:%d: %s",
        cfg.file, l.line or 0, l.name, l.host, l.port, ffi_string(err[0]))
    end
    for _, u in ipairs(l.users or {}) do
      if C.ferry_listener_add_user(idx, u.user, u.pass, err) ~= 0 then
        return nil, string.format("%s:%d: listen \"%s\": %s", cfg.file, l.line or 0,
          l.name, ffi_string(err[0]))
      end
    end
  end
  return true
end

-- Validate path; with apply, make it the running configuration.
function M.load(path, apply)
  plugins.reset()
  local cfg, err = config.load(path, {})
  if not cfg then return nil, err end
  local pools, by_index = build_pools(cfg, apply)
  if not pools then return nil, by_index end
  if apply then
    local t = cfg.timeouts
    C.ferry_set_timeouts(ms(t.client_head), ms(t.connect), ms(t.first_byte), ms(t.idle),
      ms(t.keepalive), ms(t.request))
    C.ferry_set_log(LEVELS[cfg.log.level] or 1, cfg.log.access and 1 or 0)
    local ok, lerr = open_listeners(cfg)
    if not ok then return nil, lerr end
    active = { cfg = cfg, pools = pools, by_index = by_index }
  end
  return true
end

-- The request as route() and strategies see it: fields are read from
-- the C struct on first use, so an unused field costs nothing.
local req_ptr = ffi.typeof("struct ferry_req *")

local function lstr(p, n)
  if p == nil then return nil end
  return ffi_string(p, n)
end

local readers = {
  host = function(r) return ffi_string(r.host, r.host_len) end,
  port = function(r) return tonumber(r.port) end,
  method = function(r) return ffi_string(r.method, r.method_len) end,
  path = function(r) return ffi_string(r.path, r.path_len) end,
  client = function(r) return ffi_string(r.client, r.client_len) end,
  user = function(r) return lstr(r.user, r.user_len) end,
  listener = function(r) return ffi_string(r.listener, r.listener_len) end,
  is_connect = function(r) return r.is_connect ~= 0 end,
  attempt = function(r) return tonumber(r.attempt) end,
  tried = function(r)
    local t = {}
    for i = 0, r.ntried - 1 do t[tonumber(r.tried[i])] = true end
    return t
  end,
}

local req_mt = {
  __index = function(t, k)
    local read = readers[k]
    if not read then return nil end
    local v = read(rawget(t, "_r"))
    rawset(t, k, v)
    return v
  end,
}

local function choose_pool(cfg, req)
  local ex = cfg.exchanges and #cfg.exchanges > 0 and config.match_exchange(cfg, req.host)
  if ex then
    req.exchange = ex.name
    return ex.pool
  end
  local route = cfg.route
  if not route then return "direct" end
  local ok, res = pcall(route, req)
  if not ok then
    C.ferry_count_hook_error(HOOK_ROUTE)
    log_once("route", 3, "FERRY-4002", "route() failed: " .. tostring(res))
    return nil, ROUTE_ERROR
  end
  if res == false then return nil, DENY end
  if type(res) ~= "string" then
    C.ferry_count_hook_error(HOOK_ROUTE)
    log_once("route-type", 3, "FERRY-4003",
      "route() returned a " .. type(res) .. ", expected a pool name")
    return nil, ROUTE_ERROR
  end
  return res
end

function M.dispatch(ud)
  local cur = active
  if not cur then return ROUTE_ERROR end
  local r = ffi.cast(req_ptr, ud)
  local req = setmetatable({ _r = r }, req_mt)
  local name, why = choose_pool(cur.cfg, req)
  if not name then return why end
  if name == "direct" then
    r.pool = 0
    return 0
  end
  local pool = cur.pools[name]
  if not pool then
    log_once("pool:" .. name, 3, "FERRY-4004", "route() named unknown pool \"" .. name .. "\"")
    return ROUTE_ERROR
  end
  r.pool = pool.index
  r.retries = pool.retries
  r.connect_timeout_ms = pool.connect_timeout_ms
  r.first_byte_timeout_ms = pool.first_byte_timeout_ms
  local ok, p = pcall(pool.strategy.select, pool, req)
  if not ok then
    C.ferry_count_hook_error(HOOK_STRATEGY)
    log_once("select:" .. name, 3, "FERRY-4005", "strategy \"" .. pool.strategy.name ..
      "\" of pool \"" .. name .. "\" failed, using round_robin: " .. tostring(p))
    p = poolmod.round_robin(pool, req)
  elseif p ~= nil and (type(p) ~= "table" or not pool.members[p] or not pool:eligible(p, req)) then
    C.ferry_count_hook_error(HOOK_STRATEGY)
    log_once("select-bad:" .. name, 3, "FERRY-4006", "strategy \"" .. pool.strategy.name ..
      "\" of pool \"" .. name .. "\" returned something that is not an eligible proxy" ..
      " of the pool, using round_robin")
    p = poolmod.round_robin(pool, req)
  end
  if not p then
    log_once("empty:" .. name, 2, "FERRY-2002", "pool \"" .. name .. "\" has no usable proxy")
    return NO_PROXY
  end
  return p.id
end

-- For specs and the console: the running pools.
function M.pools()
  return active and active.pools or {}
end

return M
