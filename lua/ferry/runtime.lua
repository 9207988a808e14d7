-- runtime.lua: what the core calls.
--   load(path, apply)  validate a config and, with apply, start it;
--   reload(path)       SIGHUP: validate everything, then switch;
--   dispatch(req)      which pool, which proxy, for one request;
--   result(res)        the outcome of an attempt: breakers, bans, on_response.
-- Every user-supplied hook (route, strategies, breakers, exchange
-- scripts) runs under pcall: a failing script falls back to a built-in
-- choice, is counted, and is logged at most once per window.
local ffi = require("ffi")
local cdef = require("ferry.cdef")
local config = require("ferry.config")
local plugins = require("ferry.plugins")
local poolmod = require("ferry.pool")
local apply = require("ferry.apply")
local breaker = require("ferry.breaker")
local exchange = require("ferry.exchange")
local inventory = require("ferry.inventory")
local fleet_shared = require("ferry.fleet_shared")
local fleet_bans = require("ferry.fleet_bans")
local broker_client = require("ferry.broker_client")
local timer = require("ferry.timer")
local fleet = require("ferry.fleet")
local pg = require("ferry.pg")

local C = ffi.C
local ffi_string = ffi.string
local bor, band = require("bit").bor, require("bit").band
local REQ_TLS = cdef.REQ_TLS
local REQ_REVERSE, REQ_CLIENT_TLS = cdef.REQ_REVERSE, cdef.REQ_CLIENT_TLS
local REQ_QUIET_OK = cdef.REQ_QUIET_OK
local find = string.find
local pcall, type, tostring, tonumber, setmetatable, rawget, rawset =
  pcall, type, tostring, tonumber, setmetatable, rawget, rawset

local M = {}

-- Negative answers understood by the core (enum ferry_dispatch).
local NO_PROXY, ROUTE_ERROR, DENY, ALL_DOWN = cdef.DISPATCH.no_proxy, cdef.DISPATCH.route_error,
  cdef.DISPATCH.deny, cdef.DISPATCH.all_down
local RATE = cdef.DISPATCH.rate
local POOL_REFUSED, POOL_UNKNOWN, NO_REGION = cdef.DISPATCH.pool_refused,
  cdef.DISPATCH.pool_unknown, cdef.DISPATCH.no_region
local NO_SITE, NOT_BACKENDS = cdef.DISPATCH.no_site, cdef.DISPATCH.not_backends

-- Hook-error kinds counted by the core (enum ferry_hook_kind).
local HOOK_ROUTE, HOOK_STRATEGY, HOOK_BREAKER, HOOK_EXCHANGE = cdef.HOOK.route,
  cdef.HOOK.strategy, cdef.HOOK.breaker, cdef.HOOK.exchange
local DEBUG, INFO, WARN, ERROR = cdef.LOG.debug, cdef.LOG.info, cdef.LOG.warn, cdef.LOG.error

local LOG_WINDOW = 10 -- seconds between two log lines about the same fault
local PANIC_RECOUNT = 0.1 -- seconds a large pool's healthy count is reused
local PANIC_SCAN = 1000   -- pools up to this size recount on every health change

local root = "."
local active = nil -- the running config (apply.commit's table)
-- Broker leases end lazily: before anything reads the active counters
-- (a dispatch, an admin request), due_fn(now) runs once now >= due_at.
local due_at, due_fn = math.huge, nil

function M.set_root(r)
  root = r
  plugins.set_builtin(r .. "/plugins")
end

-- Log a recurring fault once per window, with how often it was hidden.
local log_window = require("ferry.log_once").new(LOG_WINDOW,
  function() return C.ferry_now() end,
  function(level, code, msg) C.ferry_log(level, code, msg) end)
local function log_once(key, level, code, msg)
  if find(msg, "not enough memory", 1, true) then
    msg = msg .. " (a hook may add at most 64 MiB of Lua heap per call, core/budget.c)"
  end
  log_window(key, level, code, msg)
end

-- Proxies that join the config's pools at runtime: the store's
-- (inventory) and the broker clients' leases.
local function merge_runtime(cfg)
  inventory.merge(cfg)
  broker_client.merge(cfg)
end

-- A part that follows the running config (shared state, the node list):
-- a failure there is logged and must not undo a commit that happened.
local function follow(fn, run, code, what)
  local ok, err = pcall(fn, run)
  if not ok then C.ferry_log(ERROR, code, what .. ": " .. tostring(err)) end
end

-- Validate path; with apply, make it the running configuration.
-- A committed config becomes the running one; prep is kept so a runtime
-- inventory change can commit it again (recommit).
local function switch_to(run, prep)
  run.prep = prep
  active = run
  inventory.committed(run)
  broker_client.committed(run, M)
  -- store { postgres }: the fleet follows the committed config (the same
  -- conninfo keeps its connection).
  fleet.apply(prep.cfg)
  -- Shared bans, leases and pins follow the running proxies and
  -- exchanges; the node list and probe division the running proxies.
  follow(fleet_shared.committed, run, "FERRY-8073", "fleet shared state")
  follow(require("ferry.fleet_nodes").committed, run, "FERRY-8030", "fleet nodes")
end

function M.load(path, do_apply)
  local cfg, err = config.load(path, {})
  if not cfg then return nil, err end
  if do_apply then
    -- The store's runtime proxies join the config's pools (inventory).
    local ok, serr = inventory.open_store(cfg)
    if not ok then return nil, serr end
    merge_runtime(cfg)
  end
  local prep, perr = apply.prepare(cfg, root)
  if not prep then return nil, perr end
  if not do_apply then
    -- ferry check: what ferry run opens before it binds.
    local ferr = require("ferry.preflight").check(cfg)
    if ferr then return nil, ferr end
    return true
  end
  local run, cerr = apply.commit(prep, nil)
  if not run then return nil, cerr end
  switch_to(run, prep)
  inventory.load_health()
  -- From now on a proxy that comes back up (or joins) starts slowly.
  C.ferry_health_started()
  return true
end

-- SIGHUP.  The new config is loaded and checked whole (plugins and
-- scripts included) before anything changes; on error the running one
-- stays, untouched.
local function reload(path)
  if not active then return M.load(path, true) end
  local cfg, err = config.load(path, {})
  if not cfg then return nil, err end
  local undo, serr = inventory.reload_store(cfg)
  if not undo then return nil, serr end
  -- An error raised on the way (memory a budget refused in the middle,
  -- core/budget.c) undoes the store switch as a refusal does.
  local ok, run, prep = pcall(function()
    merge_runtime(cfg)
    local p, perr = apply.prepare(cfg, root)
    if not p then return nil, perr end
    local r, cerr = apply.commit(p, active)
    if not r then return nil, cerr end
    return r, p
  end)
  if not ok or not run then
    undo()
    return nil, ok and prep or run
  end
  switch_to(run, prep)
  return true
end

-- The running config applied again with the inventory merged in: how a
-- proxy added or removed at runtime joins or leaves its pool.  Nothing
-- is read from disk; counters, health and pins carry over as on reload.
function M.recommit()
  local cur = active
  if not cur or not cur.prep then return nil, "no config is running" end
  C.ferry_budget_enter_load() -- an admin request: the load's bounds, once
  merge_runtime(cur.prep.cfg)
  local run, err = apply.commit(cur.prep, cur)
  if not run then return nil, err end
  switch_to(run, cur.prep)
  return true
end

-- Each drain tick after SIGTERM (core/main.c): true holds the loop a
-- little longer (bounded): the fleet's last changes go out first.
function M.drain(busy)
  busy = tonumber(busy) or 0
  -- Both run every tick: the node's own "stopped" mark waits for busy 0.
  local flushing = fleet.drain(busy)
  local marking = require("ferry.fleet_nodes").drain_tick(busy)
  return flushing or marking
end

-- Graceful stop (called by the core once the loop has drained): the
-- store keeps the last known health of every proxy.
function M.stop()
  local ok, err = inventory.stop()
  fleet.stop()
  return ok, err
end

-- Every reload (SIGHUP, console, admin API) is counted for metrics,
-- including one that raised.
function M.reload(path)
  local ok, res, err = pcall(reload, path)
  C.ferry_metrics_count_reload((ok and res) and 1 or 0)
  if not ok then error(res, 0) end
  return res, err
end

---------------------------------------------------------------------------
-- The request as route(), hooks and strategies see it: fields are read
-- from the C struct on first use, so an unused field costs nothing.
local req_ptr = ffi.typeof("struct ferry_req *")

local function lstr(p, n)
  if p == nil then return nil end
  return ffi_string(p, n)
end

local parse_headers = require("ferry.headers").parse

local readers = {
  host = function(r) return ffi_string(r.host, r.host_len) end,
  port = function(r) return tonumber(r.port) end,
  method = function(r) return ffi_string(r.method, r.method_len) end,
  path = function(r) return ffi_string(r.path, r.path_len) end,
  client = function(r) return ffi_string(r.client, r.client_len) end,
  user = function(r) return lstr(r.user, r.user_len) end,
  session = function(r) return lstr(r.session, r.session_len) end,
  pool_header = function(r) return lstr(r.pool_header, r.pool_header_len) end,
  rotate = function(r) return r.rotate ~= 0 end,
  listener = function(r) return ffi_string(r.listener, r.listener_len) end,
  is_connect = function(r) return r.is_connect ~= 0 end,
  -- "https" when ferry sends the request over TLS it originates (an
  -- https:// target, upgrade_tls, interception); nil for CONNECT.
  -- On a reverse listener: the scheme the client used (the listener's TLS).
  scheme = function(r)
    if r.is_connect ~= 0 then return nil end
    if band(r.flags, REQ_REVERSE) ~= 0 then
      return band(r.flags, REQ_CLIENT_TLS) ~= 0 and "https" or "http"
    end
    return band(r.flags, REQ_TLS) ~= 0 and "https" or "http"
  end,
  -- true on a reverse listener (origin-form requests for backend pools).
  reverse = function(r) return band(r.flags, REQ_REVERSE) ~= 0 end,
  attempt = function(r) return tonumber(r.attempt) end,
  headers = function(r)
    return parse_headers(r.head ~= nil and ffi_string(r.head, r.head_len) or "")
  end,
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

-- Strings handed to the core must outlive the dispatch call until the
-- core has copied them: they are anchored here until the next dispatch.
local anchored = {} -- luacheck: ignore 241 (held, never read)

-- Run on_request of exchange e.  Returns a pool name override or nil,
-- and false when the hook denies the request.
local function run_on_request(e, req, r)
  local ok, res = pcall(e.hooks.on_request, req)
  if not ok then
    C.ferry_count_hook_error(HOOK_EXCHANGE)
    log_once("on_request:" .. e.name, ERROR, "FERRY-4008", "exchange \"" .. e.name ..
      "\": on_request failed: " .. tostring(res))
    return nil
  end
  if res == nil then return nil end
  if res == false then return nil, false end
  if type(res) ~= "table" then
    C.ferry_count_hook_error(HOOK_EXCHANGE)
    log_once("on_request-type:" .. e.name, ERROR, "FERRY-4008", "exchange \"" .. e.name ..
      "\": on_request returned a " .. type(res) .. ", expected nil, false or a table")
    return nil
  end
  local hok, add, drop = pcall(exchange.header_edits, res.headers)
  if not hok then
    C.ferry_count_hook_error(HOOK_EXCHANGE)
    log_once("on_request-headers:" .. e.name, ERROR, "FERRY-4008", "exchange \"" .. e.name ..
      "\": on_request: " .. tostring(add))
  else
    anchored[1], anchored[2] = add, drop
    if add then r.add_headers, r.add_headers_len = add, #add end
    if drop then r.drop_headers, r.drop_headers_len = drop, #drop end
  end
  if res.pool ~= nil and type(res.pool) ~= "string" then
    log_once("on_request-pool:" .. e.name, ERROR, "FERRY-4008", "exchange \"" .. e.name ..
      "\": on_request returned a pool that is not a name")
    return nil
  end
  return res.pool
end

-- choose_pool's answer for a CONNECT that ferry intercepts (no pool).
local INTERCEPTED = {}
-- Tokens request req costs on exchange e's budget: its weight hook's
-- answer, or 1 (no hook, or a hook that failed: counted and logged once
-- per window).  Never more than the bucket holds, so a request can
-- always pass once a bucket is full.
local function request_weight(e, req)
  local w = 1
  local hook = e.hooks.weight
  if hook then
    local ok, v = pcall(hook, req)
    local why
    if ok then
      w, why = exchange.weight_of(v)
    else
      w, why = nil, "weight failed: " .. tostring(v)
    end
    if not w then
      w = 1
      C.ferry_count_hook_error(HOOK_EXCHANGE)
      log_once("weight:" .. e.name, ERROR, "FERRY-4020", "exchange \"" .. e.name .. "\": " ..
        why .. "; counting the request as weight 1")
    end
  end
  local cap = e.rate.cap
  return w < cap and w or cap
end

-- The pool name for req, or nil and a negative answer.
local function choose_pool(cur, req, r)
  local cfg = cur.cfg
  local ex = #cfg.exchanges > 0 and config.match_exchange(cfg, req.host)
  if ex then
    local e = cur.exchanges[ex.name]
    req.exchange, req.exid = e.name, e.id
    r.exchange = e.id
    if e.cfg.intercept and r.is_connect ~= 0 and
       band(r.flags, cdef.REQ_NO_INTERCEPT) == 0 then
      -- Ferry answers this CONNECT itself; each request inside is
      -- dispatched on its own (hooks, pool, strategy), not the tunnel.
      r.flags = bor(r.flags, cdef.REQ_INTERCEPT)
      return INTERCEPTED
    end
    if e.capture then r.flags = bor(r.flags, cdef.REQ_CAPTURE) end
    -- upgrade_tls: a plain request of this exchange goes out over TLS.
    if e.upgrade_tls and r.is_connect == 0 then r.flags = bor(r.flags, REQ_TLS) end
    if e.hooks.on_request then
      local pool, deny = run_on_request(e, req, r)
      if deny == false then return nil, DENY end
      if pool then return pool end
    end
    return e.pool
  end
  local route = cfg.route
  if not route then return "direct" end
  local ok, res = pcall(route, req)
  if not ok then
    C.ferry_count_hook_error(HOOK_ROUTE)
    log_once("route", ERROR, "FERRY-4002", "route() failed: " .. tostring(res))
    return nil, ROUTE_ERROR
  end
  if res == false then return nil, DENY end
  if type(res) ~= "string" then
    C.ferry_count_hook_error(HOOK_ROUTE)
    log_once("route-type", ERROR, "FERRY-4003",
      "route() returned a " .. type(res) .. ", expected a pool name")
    return nil, ROUTE_ERROR
  end
  return res
end

-- The pool of a request to a reverse listener: route()'s answer when
-- there is a route and it names one, else the listener's own pool
-- (nil and NO_SITE without one: 404).  Exchanges are for destinations
-- of forward traffic: a reverse request matches none.
local function choose_site(cur, req, r)
  local route = cur.cfg.route
  if route then
    local ok, res = pcall(route, req)
    if not ok then
      C.ferry_count_hook_error(HOOK_ROUTE)
      log_once("route", ERROR, "FERRY-4002", "route() failed: " .. tostring(res))
      return nil, ROUTE_ERROR
    end
    if res == false then return nil, DENY end
    if type(res) == "string" then return res end
    if res ~= nil then
      C.ferry_count_hook_error(HOOK_ROUTE)
      log_once("route-type", ERROR, "FERRY-4003",
        "route() returned a " .. type(res) .. ", expected a pool name or nil")
      return nil, ROUTE_ERROR
    end
  end
  local pool = cur.by_index[tonumber(r.site_pool)]
  if not pool then return nil, NO_SITE end
  return pool.name
end

-- A strategy's (or a select hook's) answer: the proxy, or the fallback
-- round robin's when it raised or answered something that is not an
-- eligible proxy of the pool.
local function checked_pick(pool, req, fn, who, code)
  local ok, p = pcall(fn, pool, req)
  if not ok then
    C.ferry_count_hook_error(HOOK_STRATEGY)
    log_once("select:" .. who .. pool.name, ERROR, code, who .. " of pool \"" .. pool.name ..
      "\" failed, using round_robin: " .. tostring(p))
    return poolmod.round_robin(pool, req)
  end
  if p ~= nil and (type(p) ~= "table" or not pool.members[p] or not pool:eligible(p, req)) then
    C.ferry_count_hook_error(HOOK_STRATEGY)
    log_once("select-bad:" .. who .. pool.name, ERROR, code == "FERRY-4005" and "FERRY-4006" or code,
      who .. " of pool \"" .. pool.name .. "\" returned something that is not an eligible" ..
      " proxy of the pool, using round_robin")
    return poolmod.round_robin(pool, req)
  end
  return p
end

local function select_in(pool, req, e)
  if e and e.hooks.select then
    local p = checked_pick(pool, req, e.hooks.select, "exchange \"" .. e.name .. "\" select",
      "FERRY-4009")
    if p then return p end
  end
  return checked_pick(pool, req, pool.strategy.select,
    "strategy \"" .. pool.strategy.name .. "\"", "FERRY-4005")
end

-- Share of the pool's proxies that are up and enabled, 0..100.  Counted
-- again only when some proxy's flags changed (the core's health epoch);
-- large pools recount at most every PANIC_RECOUNT seconds (it is O(n)).
local function healthy_share(pool, now)
  local epoch = C.ferry_health_epoch()
  local n = #pool.proxies
  if pool.healthy_epoch == epoch or
     (n > PANIC_SCAN and pool.healthy_at and now - pool.healthy_at < PANIC_RECOUNT) then
    return pool.healthy
  end
  local up = 0
  for i = 1, n do
    if pool.proxies[i].c.flags == 0 then up = up + 1 end
  end
  pool.healthy, pool.healthy_at, pool.healthy_epoch = n > 0 and up * 100 / n or 0, now, epoch
  return pool.healthy
end

-- Choose among all proxies, health aside (panic, all_down = "any").
local function select_relaxed(pool, req, e)
  pool.relaxed = true
  local ok, p = pcall(select_in, pool, req, e)
  pool.relaxed = false
  if not ok then return nil end
  return p
end

local function pick(pool, req, e)
  local now = C.ferry_now()
  if pool.panic > 0 and healthy_share(pool, now) < pool.panic then
    log_once("panic:" .. pool.name, WARN, "FERRY-6008", "pool \"" .. pool.name .. "\": only " ..
      math.floor(pool.healthy) .. " % healthy, below panic " .. pool.panic ..
      " %: ignoring health")
    return select_relaxed(pool, req, e)
  end
  -- Tiers (backups), max_ejected and slow start: ferry.pool.
  local p = pool:select(req, select_in, e)
  if p then
    if pool.has_backup then
      local on = p.backup or false
      if on ~= (pool.backup_serving or false) then
        pool.backup_serving = on
        C.ferry_log(on and WARN or INFO, on and "FERRY-3121" or "FERRY-3122", "pool \"" ..
          pool.name .. "\": " .. (on and "no primary can serve: backups take the traffic" or
          "a primary serves again: backups stand by"))
      end
    end
    if pool.spared then
      log_once("spared:" .. pool.name, WARN, "FERRY-3120", "pool \"" .. pool.name ..
        "\": more members ejected than max_ejected allows: " .. pool.spared ..
        " ejected last stay eligible")
    end
    return p
  end
  local policy = pool.all_down
  -- A healthy proxy that only lacks rate budget is not "all down": the
  -- request waits for that budget or gets the 429 (the caller), rather
  -- than going out through a proxy the exchange banned or that is down.
  if policy == "any" and req.rate and pool:rate_wait(req) then return nil, policy end
  if policy == "any" then
    p = select_relaxed(pool, req, e)
    if p then
      -- Per (pool, exchange): a pool shared by exchanges reports each one.
      local ex = e and e.name
      log_once("all-down:" .. pool.name .. ":" .. (ex or ""), WARN, "FERRY-6007", "pool \"" ..
        pool.name .. "\"" .. (ex and (", exchange \"" .. ex .. "\"") or "") ..
        ": no healthy proxy, all_down = any: using one anyway")
    end
    return p
  end
  return nil, policy
end

-- X-Ferry-Pool (or a user name's -pool-): 1 when the request's listener
-- allows the pool it names (allow_pool_header = true: any configured
-- pool; a list: those names, "direct" included when listed), else
-- POOL_REFUSED or POOL_UNKNOWN.  Per config, listeners by name.
local function pool_header_allowed(cur, req)
  local allow = cur.pool_header_allow
  if not allow then
    allow = {}
    for _, l in ipairs(cur.cfg.listeners) do
      if l.allow_pool_header then allow[l.name] = l.allow_pool_header end
    end
    cur.pool_header_allow = allow
  end
  local a, name = allow[req.listener], req.pool_header
  if a == true then
    if name == "direct" then return POOL_REFUSED end
  elseif not a or not a[name] then
    return POOL_REFUSED
  end
  if name ~= "direct" and not cur.pools[name] then return POOL_UNKNOWN end
  return 1
end

function M.dispatch(_ud)
  local cur = active
  if not cur then return ROUTE_ERROR end
  if due_fn then
    local now = C.ferry_now()
    if now >= due_at then due_fn(now) end
  end
  -- ud is the same pointer as ferry_bridge_arg(): casting a lightuserdata
  -- is not compiled (NYI), casting the FFI void * is.
  local r = ffi.cast(req_ptr, C.ferry_bridge_arg())
  -- region and rate are set up front: eligibility reads them for every
  -- candidate (rate: the exchange's budget, set once the exchange is known).
  local req = setmetatable({ _r = r, exid = 0, region = lstr(r.region, r.region_len),
                             rate = false }, req_mt)
  anchored[1], anchored[2] = nil, nil
  local asked = r.pool_header ~= nil and pool_header_allowed(cur, req) or nil
  if asked and asked < 0 then return asked end
  local reverse = band(r.flags, REQ_REVERSE) ~= 0
  local name, why
  if reverse then
    -- An allowed X-Ferry-Pool comes first; route() is not asked then.
    if asked then name = req.pool_header else name, why = choose_site(cur, req, r) end
  else
    name, why = choose_pool(cur, req, r)
  end
  if not name then return why end
  if name == INTERCEPTED then
    r.pool = 0 -- no pool, no proxy: each request inside is dispatched on its own
    return 0
  end
  if asked then name = req.pool_header end
  local region = req.region
  if reverse and (name == "direct" or (cur.pools[name] and cur.pools[name].kind ~= "backends")) then
    log_once("not-backends:" .. name, ERROR, "FERRY-3100", "pool \"" .. name .. "\" (named by " ..
      (asked and "X-Ferry-Pool" or "route()") .. ") has no backends: a reverse listener's " ..
      "requests go to backend pools only")
    return NOT_BACKENDS
  end
  if name == "direct" then
    -- Going direct leaves every region: a region asked for is refused.
    if region then return NO_REGION end
    r.pool = 0
    return 0
  end
  local pool = cur.pools[name]
  if not pool then
    log_once("pool:" .. name, ERROR, "FERRY-4004", "no pool \"" .. name .. "\" (named by " ..
      (req.exchange and ("exchange \"" .. req.exchange .. "\"") or "route()") .. ")")
    return ROUTE_ERROR
  end
  r.pool = pool.index
  r.retries = pool.retries
  local ban = req.exchange and cur.exchanges[req.exchange].ban
  if ban and ban.retry and ban.retry > 0 then r.ban_retry = ban.retry end
  r.connect_timeout_ms = pool.connect_timeout_ms
  r.first_byte_timeout_ms = pool.first_byte_timeout_ms
  if region and pool:region_size(region) == 0 then return NO_REGION end
  local e = req.exchange and cur.exchanges[req.exchange]
  local rt = e and e.rate
  if rt then
    req.weight = request_weight(e, req)
    req.now = C.ferry_now()
    req.rate = rt
  end
  local p, policy = pick(pool, req, e)
  if not p and rt then
    -- Is it the budget?  Then the core queues the request or answers 429.
    local wait = pool:rate_wait(req)
    if not wait and policy == "any" then
      pool.relaxed = true
      wait = pool:rate_wait(req)
      pool.relaxed = false
    end
    if wait then
      r.rate_wait = wait
      return RATE
    end
  end
  if not p then
    -- With a region asked, all_down = "direct" would leave it: "fail".
    if policy == "direct" and region then policy = "fail" end
    if policy == "direct" then
      log_once("all-down-direct:" .. name, WARN, "FERRY-6007", "pool \"" .. name ..
        "\": no healthy proxy, all_down = direct: going direct")
      r.pool = 0
      return 0
    end
    if policy == "fail" and req.attempt == 0 then
      log_once("all-down-fail:" .. name, WARN, "FERRY-2005", "pool \"" .. name ..
        "\": no healthy proxy, all_down = fail")
      return ALL_DOWN
    end
    log_once("empty:" .. name, WARN, "FERRY-2002", "pool \"" .. name .. "\" has no usable proxy")
    return NO_PROXY
  end
  -- A half-open breaker lets a bounded number of trials through.
  local x = pool:pair(p, req.exid)
  if x ~= nil and x.breaker == cdef.BREAKER_HALF_OPEN then C.ferry_breaker_trial(x) end
  -- Tokens go when the request is dispatched to p (a tunnel: once).
  if rt and x ~= nil then C.ferry_rate_take(x, req.weight) end
  -- M.result would do nothing with a success of this request: the core
  -- skips the call (anything M.result learns to do with successes must
  -- clear pool.quiet_ok, set in apply.lua).
  if pool.quiet_ok and not e then r.flags = bor(r.flags, REQ_QUIET_OK) end
  if cur.cfg.log.level == "debug" then
    -- The selection event: at debug only, it would double the log volume.
    C.ferry_log(DEBUG, "FERRY-0201", "pool \"" .. name .. "\"" .. (req.exchange and
      (", exchange \"" .. req.exchange .. "\"") or "") .. ": selected proxy " ..
      (p.display and p.display:gsub("//[^@/]*@", "//") or tostring(p.id)) .. " (attempt " ..
      tostring(req.attempt + 1) .. ")")
  end
  return p.id
end

---------------------------------------------------------------------------
-- Results.

local res_ptr = ffi.typeof("struct ferry_result *")
local KIND_NAMES = cdef.FAIL_KINDS

local function report_breaker(msg)
  C.ferry_count_hook_error(HOOK_BREAKER)
  log_once("breaker:" .. msg:sub(1, 40), ERROR, "FERRY-4007", msg)
end

-- on_response of exchange e: "ok", "failure", "ban" (+ seconds) or nil.
local function run_on_response(e, r, pool, ok)
  local head = r.head ~= nil and ffi_string(r.head, r.head_len) or nil
  local res = {
    status = tonumber(r.status), ok = ok, latency_ms = tonumber(r.latency_ms),
    kind = not ok and KIND_NAMES[tonumber(r.kind) + 1] or nil,
    body = r.body ~= nil and ffi_string(r.body, r.body_len) or nil,
    header = exchange.header_reader(head), host = ffi_string(r.host, r.host_len),
  }
  local entry = pool and pool.by_id and pool.by_id[tonumber(r.proxy_id)]
  local c = C.ferry_proxy_get(r.proxy_id)
  local proxy = { id = tonumber(r.proxy_id), label = ffi_string(C.ferry_proxy_label(c)),
                  display = entry and entry.display or nil }
  local cok, v = pcall(e.hooks.on_response, res, proxy)
  if cok then
    local vok, verdict, secs, used = pcall(exchange.verdict, v)
    if vok then return verdict, secs, res, used end
    v = verdict
  end
  C.ferry_count_hook_error(HOOK_EXCHANGE)
  log_once("on_response:" .. e.name, ERROR, "FERRY-4010", "exchange \"" .. e.name ..
    "\": on_response failed: " .. tostring(v))
  return nil, nil, res
end

local rres = {} -- the result as breaker plugins see it, reused

-- An exchange's Retry-After (or reset) empties a bucket for at most this.
local RATE_LEARN_MAX = 3600
-- X-RateLimit-Reset values from this on are Unix times, below it seconds.
local EPOCH_FROM = 1e9
local RETRY_STATUS = { [429] = true, [418] = true, [503] = true }

-- What the exchange's answer says about pair x's budget: Retry-After on
-- a 429, 418 or 503 (delta-seconds or an HTTP-date) empties the bucket
-- until then; X-RateLimit-Remaining caps the tokens, and with 0 left
-- X-RateLimit-Reset keeps the bucket empty until the reset;
-- on_response's { used = N } caps the tokens at limit - N.  Values that
-- are not numbers >= 0 are ignored; waits are capped at RATE_LEARN_MAX
-- seconds.
local function rate_learn(e, x, r, status, used)
  local max, untl = -1, 0
  if used then max = math.max(0, e.rate.limit - used) end
  if r.head ~= nil then
    local header = exchange.header_reader(ffi_string(r.head, r.head_len))
    local now = C.ferry_now()
    if RETRY_STATUS[status] then
      -- delta-seconds or an HTTP-date, as for bans (exchange.retry_after)
      local ra = exchange.retry_after(header("retry-after"), os.time(), RATE_LEARN_MAX)
      if ra then untl = now + ra end
    end
    local left = tonumber(header("x-ratelimit-remaining"))
    if left and left >= 0 then
      if max < 0 or left < max then max = left end
      local reset = left < 1 and tonumber(header("x-ratelimit-reset"))
      if reset and reset >= 0 then
        if reset >= EPOCH_FROM then reset = reset - os.time() end
        if reset > 0 then
          local u = now + math.min(reset, RATE_LEARN_MAX)
          if u > untl then untl = u end
        end
      end
    end
  end
  if max >= 0 or untl > 0 then
    C.ferry_rate_learn(x, max >= 0 and max or -1, untl)
  end
end

-- The ban's length from the banning answer's Retry-After, or nil (the
-- doubling backoff applies).  Unusable or out-of-range values are
-- logged once per window and exchange.
local function retry_after_secs(e, head, max)
  if not head then return nil end
  local raw = exchange.header_reader(head)("retry-after")
  if not raw then return nil end
  local secs, why = exchange.retry_after(raw, os.time(), max)
  if why == "unusable" then
    log_once("retry-after:" .. e.name, WARN, "FERRY-6034", "exchange \"" .. e.name ..
      "\": Retry-After \"" .. raw:sub(1, 64) .. "\" is not delta-seconds or an HTTP-date" ..
      " in the future: ignored, the backoff applies")
  elseif why == "clamped" then
    log_once("retry-after-clamp:" .. e.name, WARN, "FERRY-3075", "exchange \"" .. e.name ..
      "\": Retry-After \"" .. raw:sub(1, 64) .. "\" is outside 1.." .. max ..
      " s (max_backoff): the ban lasts " .. secs .. " s")
  end
  return secs
end

-- Ban pair x for exchange e.  Bans in a row double the backoff; a ban
-- long after the last one starts over.  A ban of the rule (secs nil)
-- lasts the banning answer's Retry-After when it has a usable one.
local function ban_pair(e, x, secs, reason, head)
  local now = C.ferry_now()
  local max = e.ban and e.ban.max_backoff or 3600
  if x.bans > 0 and now - x.banned_until > max then C.ferry_ban(x, 0, nil) end
  local ra = not secs and retry_after_secs(e, head, max)
  if x.banned_until > now and x.bans > 0 then
    -- Banned already: this answer is to a request that was in flight when
    -- the ban began, part of the same ban.  It may lengthen the ban to its
    -- own length, never double it (a burst of N answers would otherwise
    -- ban for backoff * 2^N).
    local len = ra or exchange.ban_seconds(e.ban, secs, x.bans - 1)
    if now + len > x.banned_until then
      x.banned_until = now + len
      fleet_bans.banned(x, reason)
    end
    return
  end
  if ra then
    C.ferry_ban(x, ra, reason .. ", Retry-After")
  else
    C.ferry_ban(x, exchange.ban_seconds(e.ban, secs, x.bans), reason)
  end
  -- The fleet learns it (fleet_bans): the exchange bans the exit IP.
  fleet_bans.banned(x, reason)
end

-- The pool's breaker policy on one result of pair x.
local function feed_breaker(pool, x, ok, status, latency_ms, kind)
  local b = pool and pool.breaker
  if not b then return end
  rres.ok, rres.status, rres.latency_ms = ok, status, latency_ms
  rres.kind = not ok and (kind or "http5xx") or nil
  breaker.on_result(b, x, rres, report_breaker)
end

function M.result(_ud)
  local cur = active
  if not cur then return end
  local r = ffi.cast(res_ptr, C.ferry_bridge_arg()) -- ud, compiled (see M.dispatch)
  local ok = r.ok ~= 0
  local status = tonumber(r.status)
  local e = r.exchange ~= 0 and cur.exchange_by_id[tonumber(r.exchange)] or nil
  local pool = cur.by_index[tonumber(r.pool)]
  local x = C.ferry_pxstate_get(r.proxy_id, r.exchange)
  if x == nil then return end
  local verdict, secs
  if e then
    local body = e.ban and e.ban.body and r.body ~= nil and ffi_string(r.body, r.body_len) or nil
    local reason = exchange.ban_reason(e.ban, status, body)
    if reason then verdict = "ban" end
    local used
    if e.hooks.on_response then
      local v, s, _, u = run_on_response(e, r, pool, ok)
      if v then
        verdict, secs, reason = v, s, v == "ban" and "on_response" or reason
      end
      used = u
    end
    if e.rate then rate_learn(e, x, r, status, used) end
    if verdict == "ban" then
      ban_pair(e, x, secs, reason, r.head ~= nil and ffi_string(r.head, r.head_len) or nil)
      r.banned = 1 -- the core may send the request again elsewhere (retry on ban)
      if pool and pool.broker_client then
        broker_client.outcome(pool, tonumber(r.proxy_id), false, tonumber(r.latency_ms),
          "ban", status)
      end
      return
    end
  end
  if verdict == "ok" then ok = true elseif verdict == "failure" then ok = false end
  local kind = KIND_NAMES[tonumber(r.kind) + 1]
  feed_breaker(pool, x, ok, status, tonumber(r.latency_ms), kind)
  -- A leased proxy's outcome goes to its broker (queued, sent in batches).
  if pool and pool.broker_client then
    broker_client.outcome(pool, tonumber(r.proxy_id), ok, tonumber(r.latency_ms), kind, status)
  end
end

---------------------------------------------------------------------------
-- The broker (ferry.broker): choices and results from outside the data
-- plane, through the same exchanges, pools, strategies, select hooks,
-- health, breakers, bans, panic and all_down policies as dispatch.

-- The proxy for exchange `name`.  req: a plain table standing for the
-- request (client, session, host...; tried: proxy ids to leave out).
-- Returns p, pool, e; or nil, pool, e, why: "unknown" (no such
-- exchange), "no-pool", "direct" (the exchange goes direct), or the
-- pool's all_down policy ("any", "direct", "fail").
function M.choose(name, req)
  local cur = active
  if not cur then return nil, nil, nil, "unknown" end
  local e = cur.exchanges[name]
  if not e then return nil, nil, nil, "unknown" end
  req.exchange, req.exid = e.name, e.id
  if e.pool == "direct" then return nil, nil, e, "direct" end
  local pool = cur.pools[e.pool]
  if not pool then return nil, nil, e, "no-pool" end
  local p, policy = pick(pool, req, e)
  if not p then return nil, pool, e, policy or pool.all_down end
  local x = pool:pair(p, e.id)
  if x ~= nil and x.breaker == cdef.BREAKER_HALF_OPEN then C.ferry_breaker_trial(x) end
  return p, pool, e
end

-- One result reported by a broker client for proxy `id` on exchange e
-- (from M.choose) in `pool`: the same passive health as real traffic
-- (C), then the exchange's ban rules on `status` when given, else the
-- pool's breaker.  kind: a FAIL_KINDS name when not ok.
function M.feedback(id, e, pool, ok, latency_ms, kind, status)
  local kind_no = 5 -- reset
  for i, k in ipairs(KIND_NAMES) do
    if k == kind then kind_no = i - 1 end
  end
  C.ferry_proxy_report(id, e.id, ok and 1 or 0, kind_no, latency_ms or -1)
  local x = C.ferry_pxstate_get(id, e.id)
  if x == nil then return end
  local reason = status and exchange.ban_reason(e.ban, status, nil)
  if reason then
    ban_pair(e, x, nil, reason)
    return "ban"
  end
  feed_breaker(pool, x, ok, status or 0, latency_ms, kind)
end

-- Work due before a choice reads the proxies' active counters: the
-- broker's leases that ran out (set by ferry.broker; due_at and due_fn
-- are declared at the top, for dispatch).
function M.set_due(at, fn)
  due_at, due_fn = at or math.huge, fn
end
function M.run_due(now)
  if now >= due_at and due_fn then due_fn(now) end
end

---------------------------------------------------------------------------
-- Admin plane: every request of an admin listener (admin.c).

local admin_ptr = ffi.typeof("struct ferry_admin_req *")
local endpoints -- loaded on the first admin request

function M.admin(ud)
  if not endpoints then endpoints = require("ferry.endpoints") end
  M.run_due(C.ferry_now())
  return endpoints.handle(ffi.cast(admin_ptr, ud), M)
end

-- reload() of the console and POST /api/v1/reload: the SIGHUP path, from
-- inside the runtime (the core's own reload would re-enter Lua).
function M.reload_now()
  if C.ferry_draining() ~= 0 then
    return nil, "ferry is stopping: no reload while draining"
  end
  local path = ffi_string(C.ferry_config_path())
  -- Inside an admin request: the config load's bounds on top, once.
  C.ferry_budget_enter_load()
  local t0 = os.clock()
  local ok, err = M.reload(path)
  if not ok then
    C.ferry_log(cdef.LOG.error, "FERRY-0102", "reload failed, keeping the running config: " .. tostring(err))
    return nil, err
  end
  C.ferry_log(cdef.LOG.info, "FERRY-0101", string.format("reloaded %s in %.1f ms (admin)", path,
    (os.clock() - t0) * 1000))
  return true
end

-- A timer of ferry.timer expired (core/timer.c).
M.timer = timer.fire
-- Something happened on the PostgreSQL connection (core/pg.c).
M.pg_event = pg.event

-- For specs and the console: the running pools.
function M.pools()
  return active and active.pools or {}
end

function M.active()
  return active
end

return M
