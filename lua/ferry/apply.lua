-- apply.lua: turn a validated config into a running one, in two steps.
--
-- prepare() does everything that can fail without touching the core:
-- plugins, exchange scripts, strategy init against stand-in proxies.
-- commit() then makes the core match: listeners opened first (the one
-- step that can still fail, and is undone if it does), then proxies
-- created or updated by identity (id, else URL), health and probes set,
-- proxies that left the config flagged REMOVED, listeners that left it
-- closed.  C keeps every proxy's counters, health, breakers and bans, so
-- an unchanged proxy carries them through a reload.
local ffi = require("ffi")
local bit = require("bit")
local cdef = require("ferry.cdef")
local plugins = require("ferry.plugins")
local poolmod = require("ferry.pool")
local exchange = require("ferry.exchange")

local C = ffi.C
local ffi_string = ffi.string
local format = string.format
local pairs, ipairs, tostring, tonumber, pcall = pairs, ipairs, tostring, tonumber, pcall

local M = {}

-- Pool indexes and exchange ids stay the same across reloads, so a
-- result reported for a request sent before a reload still finds its
-- pool by index.
local pool_index, next_pool_index = {}, 1

local function index_of(name)
  local i = pool_index[name]
  if not i then
    i = next_pool_index
    pool_index[name] = i
    next_pool_index = i + 1
    C.ferry_set_pool_name(i, name) -- for logs and metrics
  end
  return i
end

-- Backend pools' connection defaults (per backend).
M.BACKEND_MAX, M.BACKEND_IDLE_TIMEOUT = 100, 90

local function ms(seconds)
  return seconds and math.floor(seconds * 1000 + 0.5) or 0
end
M.ms = ms

-- Header lines a proxy adds to what it sends, CRLF-terminated.
-- A pool's retry settings (config.lua's parse_retry) to the core.
local JITTER = { none = C.FERRY_JITTER_NONE, equal = C.FERRY_JITTER_EQUAL,
  full = C.FERRY_JITTER_FULL }
local RETRY_ON_BITS = { ["connect-failure"] = C.FERRY_RETRY_ON_CONNECT,
  refused = C.FERRY_RETRY_ON_REFUSED, reset = C.FERRY_RETRY_ON_RESET,
  timeout = C.FERRY_RETRY_ON_TIMEOUT }
local function retry_policy(index, r)
  if not r then return end
  local on = 0
  for name in pairs(r.on) do on = bit.bor(on, tonumber(RETRY_ON_BITS[name])) end
  local statuses = ffi.new("uint8_t[100]")
  for st in pairs(r.statuses) do statuses[st - 500] = 1 end
  C.ferry_pool_retry(index, on, statuses, r.backoff, r.max_backoff, JITTER[r.jitter],
    r.budget or -1, r.budget_min)
end

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

local function plugin_dirs(cfg, root)
  local dirs = {}
  for i, d in ipairs(cfg.plugin_dirs or {}) do dirs[i] = d end
  dirs[#dirs + 1] = root .. "/plugins"
  return dirs
end

-- The breaker of a pool: its plugin and the settings it runs with (the
-- plugin's defaults under the pool's own).
local function load_breaker(cfg, pc, dirs)
  local bc = pc.breaker
  if not bc then return nil end
  local where = format('%s:%d: pool "%s": breaker', cfg.file, pc.line, pc.name)
  local plugin, err = plugins.load("breakers", bc.policy or "consecutive", dirs)
  if not plugin then return nil, format('%s: unknown policy "%s" (%s)', where,
    tostring(bc.policy), err) end
  local settings = {}
  for k, v in pairs(plugin.defaults or {}) do settings[k] = v end
  for k, v in pairs(bc) do settings[k] = v end
  settings.cooldown = settings.cooldown or 30
  settings.trials = settings.trials or 1
  settings.max_cooldown = settings.max_cooldown or settings.cooldown * 16
  if plugin.check then
    local ok, msg = pcall(plugin.check, settings)
    if not ok then return nil, format("%s: check failed: %s", where, tostring(msg)) end
    if msg then return nil, format("%s: %s", where, tostring(msg)) end
  end
  return { plugin = plugin, settings = settings }
end

-- Ferry's CA (tls { ca_cert, ca_key }), loaded and checked by the core
-- before anything changes: a CA that does not load refuses the config,
-- and on a reload the running one keeps minting.  The handle is
-- released when the prepared config is collected; the core holds its
-- own reference to the CA in use.
local function load_ca(cfg)
  local t = cfg.tls
  if not t or not t.ca_cert then return nil end
  local err = ffi.new("const char *[1]")
  local ca = C.ferry_ca_load(t.ca_cert, t.ca_key, err)
  if ca == nil then
    return nil, format("%s:%d: tls: %s", cfg.file, t.line or 0, ffi_string(err[0]))
  end
  return ffi.gc(ca, C.ferry_ca_release)
end

-- Everything that can fail, without touching the core.  Returns a
-- prepared table or nil, "file:line: message".
function M.prepare(cfg, root)
  plugins.reset()
  local dirs = plugin_dirs(cfg, root)
  local prep = { cfg = cfg, pools = {}, exchanges = {} }
  local ca, caerr = load_ca(cfg)
  if caerr then return nil, caerr end
  prep.ca = ca
  for _, name in ipairs(cfg.pool_order) do
    local pc = cfg.pools[name]
    local strategy, perr = plugins.load("strategies", pc.strategy, dirs)
    if not strategy then
      return nil, format('%s:%d: pool "%s": unknown strategy "%s" (%s)', cfg.file, pc.line,
        name, pc.strategy, perr)
    end
    local breaker, berr = load_breaker(cfg, pc, dirs)
    if berr then return nil, berr end
    -- Try the strategy's init on stand-ins now: a failure must refuse
    -- the config before anything changes.
    if strategy.init then
      local fake = {}
      for i, px in ipairs(pc.proxies) do
        local c = ffi.new("struct ferry_proxy")
        c.id, c.weight = i, px.weight or 1
        fake[i] = { id = i, display = px.display, weight = px.weight or 1, region = px.region,
                    backup = px.backup or false, c = c, x = {} }
      end
      local ok, ierr = pcall(strategy.init, poolmod.new(name, fake, { now = C.ferry_now }))
      if not ok then
        return nil, format('%s:%d: pool "%s": strategy "%s" init failed: %s', cfg.file,
          pc.line, name, pc.strategy, tostring(ierr))
      end
    end
    prep.pools[name] = { cfg = pc, strategy = strategy, breaker = breaker }
  end
  for _, ex in ipairs(cfg.exchanges) do
    local hooks
    if ex.script then
      local err
      hooks, err = exchange.load_script(ex.script, ex.name)
      if not hooks then
        return nil, format("%s:%d: exchange \"%s\": script: %s", cfg.file, ex.line, ex.name, err)
      end
    end
    local ban = ex.ban
    if ban and ban.status then
      ban.status_set = {}
      for _, st in ipairs(ban.status) do ban.status_set[st] = true end
    end
    -- The origin's TLS context, loaded now: a CA file that does not
    -- load refuses the config before anything changes.
    local tls = ex.tls or { verify = true }
    local terr = ffi.new("const char *[1]")
    local tls_ctx = C.ferry_origin_tls_ctx(tls.verify and 1 or 0, tls.ca, terr)
    if tls_ctx == nil then
      return nil, format('%s:%d: exchange "%s": tls: %s [FERRY-0190]', cfg.file, ex.line,
        ex.name, ffi_string(terr[0]))
    end
    prep.exchanges[ex.name] = { cfg = ex, hooks = hooks or {}, ban = ban, tls_ctx = tls_ctx }
  end
  return prep
end

local function errbuf()
  return ffi.new("const char *[1]")
end

-- Listeners, in two steps so a config refused half-way changes nothing
-- that matters.  open_listeners keeps those whose address (and kind:
-- proxy or admin) stays and opens new ones; a failed bind closes what it
-- opened.  finish_listeners, once the rest of the config is built, sets
-- names and users on the kept ones and closes the ones that left.
local function abandon_listeners(plan)
  for _, o in ipairs(plan.opened) do C.ferry_listener_close(o) end
  for l, ctx in pairs(plan.tls) do
    C.ferry_tls_ctx_free(ctx)
    plan.tls[l] = nil
  end
end

-- TLS contexts of the new config's listeners, loaded before anything
-- changes: a cert that does not load fails the reload, and the running
-- listeners keep the contexts they have.
local function load_tls(cfg, plan)
  for _, l in ipairs(cfg.listeners) do
    if l.tls then
      local err = errbuf()
      local ctx = C.ferry_tls_server_new(l.tls.cert, l.tls.key, err)
      if ctx == nil then
        abandon_listeners(plan)
        return nil, format('%s:%d: listen "%s": tls: %s [FERRY-0150]', cfg.file, l.line or 0,
          l.name, ffi_string(err[0]))
      end
      plan.tls[l] = ctx
    end
  end
  return true
end

local function open_listeners(cfg, old_idx)
  local plan = { kept = {}, opened = {}, idx_of = {}, tls = {} }
  local tok, terr = load_tls(cfg, plan)
  if not tok then return nil, terr end
  for _, l in ipairs(cfg.listeners) do
    local idx
    if l.path then
      idx = C.ferry_listener_find_unix(l.path)
    else
      idx = C.ferry_listener_find(l.host, l.port)
    end
    local admin = l.protocol == "admin" and 1 or 0
    if idx >= 0 and old_idx and C.ferry_listener_is_admin(idx) ~= admin then
      -- Same address, other kind: the old one must go before the new binds.
      C.ferry_listener_close(idx)
      idx = -1
    end
    if idx >= 0 and old_idx then
      plan.kept[#plan.kept + 1] = { idx = idx, l = l }
    else
      local err = errbuf()
      if l.path then
        idx = C.ferry_listen_unix(l.name, l.path, err)
      else
        idx = C.ferry_listen(l.name, l.host, l.port, l.protocol, l.open and 1 or 0, err)
      end
      if idx < 0 then
        abandon_listeners(plan)
        local where = l.path and ("unix:" .. l.path) or (l.host .. ":" .. l.port)
        return nil, format('%s:%d: %s "%s": cannot listen on %s: %s', cfg.file,
          l.line or 0, l.protocol == "admin" and "admin" or "listen", l.name, where,
          ffi_string(err[0]))
      end
      plan.opened[#plan.opened + 1] = idx
    end
    plan.idx_of[l] = idx
  end
  return plan
end

local function finish_listeners(cfg, plan, old_idx)
  for _, k in ipairs(plan.kept) do
    C.ferry_listener_reset(k.idx, k.l.name, k.l.open and 1 or 0)
    -- The kind stays (open_listeners reopens across it); the protocol may change.
    if not k.l.path then C.ferry_listener_set_protocol(k.idx, k.l.protocol) end
  end
  for _, l in ipairs(cfg.listeners) do
    local err = errbuf()
    if not l.path and l.protocol ~= "admin" then
      -- The listener owns its context from here; none makes it plain.
      local ctx = plan.tls[l]
      plan.tls[l] = nil
      if C.ferry_listener_set_tls(plan.idx_of[l], ctx) ~= 0 and ctx ~= nil then
        C.ferry_tls_ctx_free(ctx)
      end
    end
    if l.protocol == "reverse" then
      local fwd = 0
      for k, on in pairs(l.forwarded) do
        if on then fwd = bit.bor(fwd, cdef.FWD[k]) end
      end
      C.ferry_listener_set_reverse(plan.idx_of[l], l.pool and index_of(l.pool) or 0, fwd,
        l.trust_forwarded and 1 or 0)
    end
    if l.auth_fail_limit then
      -- config.lua checked the bounds.
      C.ferry_listener_set_auth_throttle(plan.idx_of[l], l.auth_fail_limit, l.auth_fail_window)
    end
    for _, u in ipairs(l.users or {}) do
      -- config.lua checked the bounds: only memory can fail here.
      if C.ferry_listener_add_user(plan.idx_of[l], u.user, u.pass, err) ~= cdef.OK then
        C.ferry_log(cdef.LOG.error, "FERRY-0104", format('%s:%d: listen "%s": %s; closing it rather ' ..
          'than serving it without its users', cfg.file, l.line or 0, l.name,
          ffi_string(err[0])))
        C.ferry_listener_close(plan.idx_of[l])
        break
      end
    end
  end
  -- Listeners of the old config that the new one does not have.
  if old_idx then
    local keep = {}
    for _, idx in pairs(plan.idx_of) do keep[idx] = true end
    for idx in pairs(old_idx) do
      if not keep[idx] then C.ferry_listener_close(idx) end
    end
  end
  local now_idx = {}
  for _, idx in pairs(plan.idx_of) do now_idx[idx] = true end
  return now_idx
end

local function expect_list(h)
  if not h.expect then return nil end
  local t = {}
  for i, s in ipairs(h.expect) do t[i] = tostring(s) end
  return table.concat(t, ",")
end

-- Health of a proxy: rise/fall for everyone, a probe when the pool has
-- a check.  A proxy in several pools follows the last pool declaring it.
-- A backend pool's http check (h.backend) asks each backend itself:
-- Host is the check's host, else the backend's own host and port.
local function set_health(c, h, err, px)
  h = h or {}
  local kind = cdef.PROBE[h.check or "none"] or 0
  local interval = h.interval or 2
  local host, port = h.host, h.port
  if h.backend then
    port = px.port
    host = h.host
    if not host then
      host = px.host:find(":", 1, true) and ("[" .. px.host .. "]") or px.host
      local default = cdef.SCHEME[px.scheme] == cdef.SCHEME.backend_tls and 443 or 80
      if port ~= default then host = host .. ":" .. port end
    end
  end
  if C.ferry_probe_set(c, kind, host, port or 0, h.path, expect_list(h), interval,
      h.timeout or math.min(2, interval), err) ~= cdef.OK then
    return nil, ffi_string(err[0])
  end
  C.ferry_health_set(c, h.rise or 2, h.fall or 3, interval)
  return true
end

-- Build the pools around C proxies (creating or updating them).
local function build_pools(prep)
  local cfg = prep.cfg
  local pools, by_index, proxies_seen = {}, {}, {}
  local concurrency = 0
  for _, name in ipairs(cfg.pool_order) do
    local pp = prep.pools[name]
    local pc = pp.cfg
    local list, has_backup = {}, nil
    for i, px in ipairs(pc.proxies) do
      local err = errbuf()
      -- A backend's URL may also name an HTTP proxy elsewhere: its
      -- identity in the core says it is a backend.
      local key = px.id or (pc.kind == "backends" and ("backend " .. px.url)) or px.url
      local c = C.ferry_proxy_new(key, cdef.SCHEME[px.scheme] or 0, px.host,
        px.port, px.user, px.pass, header_block(px.headers), px.weight or 1, err)
      if c == nil then
        return nil, format('%s:%d: pool "%s": proxies[%d]: %s', cfg.file, pc.line, name, i,
          ffi_string(err[0]))
      end
      C.ferry_proxy_set_label(c, px.id)
      if px.tls and C.ferry_proxy_set_tls(c, px.tls.verify and 1 or 0, px.tls.ca, px.tls.sni,
          err) ~= cdef.OK then
        return nil, format('%s:%d: pool "%s": proxies[%d]: tls: %s [FERRY-0151]', cfg.file,
          pc.line, name, i, ffi_string(err[0]))
      end
      local ok, herr = set_health(c, pc.health, err, px)
      if not ok then
        return nil, format('%s:%d: pool "%s": health: %s', cfg.file, pc.line, name, herr)
      end
      local id = tonumber(c.id)
      proxies_seen[id] = c
      px.cid = id -- the inventory (ferry.inventory) finds its proxies by it
      list[i] = { id = id, display = px.display, label = px.id or tostring(id),
                  weight = px.weight or 1, region = px.region, c = c, x = {},
                  runtime = px.runtime, backup = px.backup or false }
      if px.backup then has_backup = true end
    end
    if pc.health and pc.health.concurrency and pc.health.concurrency > concurrency then
      concurrency = pc.health.concurrency
    end
    local pool = poolmod.new(name, list, { latency_ceiling = pc.latency_ceiling or 1000,
      now = C.ferry_now, slowstart = pc.slowstart, max_ejected = pc.max_ejected,
      has_backup = has_backup, epoch = C.ferry_health_epoch })
    pool.index = index_of(name)
    -- "proxies" or "backends" (a reverse listener's pools).
    pool.kind = pc.kind or "proxies"
    if C.ferry_pool_set_host(pool.index, pc.host) ~= cdef.OK then
      return nil, format('%s:%d: pool "%s": out of memory', cfg.file, pc.line, name)
    end
    pool.strategy = pp.strategy
    pool.breaker = pp.breaker
    -- Successes of requests without an exchange need no result call
    -- (runtime.lua, FERRY_REQ_QUIET_OK) when no breaker or one that a
    -- success never opens decides for the pool.
    pool.quiet_ok = not pp.breaker or pp.breaker.plugin.ignores_successes == true
    pool.trials = pp.breaker and pp.breaker.settings.trials or 1
    pool.pair_of = C.ferry_pxstate_get
    pool.half_open = C.ferry_breaker_half_open
    pool.retries = pc.retries or 2
    pool.all_down = pc.all_down or "any"
    pool.panic = pc.panic or 0
    pool.session_ttl = pc.session_ttl or 600
    pool.connect_timeout_ms = pc.timeouts and ms(pc.timeouts.connect) or 0
    pool.first_byte_timeout_ms = pc.timeouts and ms(pc.timeouts.first_byte) or 0
    pool.members, pool.by_id = {}, {}
    for _, p in ipairs(list) do pool.members[p], pool.by_id[p.id] = true, p end
    if pp.strategy.init then
      local ok, ierr = pcall(pp.strategy.init, pool)
      if not ok then
        return nil, format('%s:%d: pool "%s": strategy "%s" init failed: %s', cfg.file,
          pc.line, name, pc.strategy, tostring(ierr))
      end
    end
    pools[name], by_index[pool.index] = pool, pool
  end
  if concurrency > 0 then C.ferry_probe_set_concurrency(concurrency) end
  return pools, by_index, proxies_seen
end

local LEVELS = cdef.LOG

-- Make prep the running config.  old: the running one, or nil at start.
-- Returns the new running table, or nil and a message (the core is then
-- as before, but for proxies created or updated along the way).
function M.commit(prep, old)
  local cfg = prep.cfg
  -- Log files first, so the lines about opening listeners land in them.
  local ferr = errbuf()
  if C.ferry_set_log_files(cfg.log.file, cfg.log.access_file, ferr) ~= cdef.OK then
    return nil, format("%s: log: cannot open %s: %s", cfg.file,
      tostring(cfg.log.file or cfg.log.access_file), ffi_string(ferr[0]))
  end
  local plan, lerr = open_listeners(cfg, old and old.listeners)
  if not plan then return nil, lerr end
  -- Raised errors too (memory a budget refused): the new listeners go.
  local bok, pools, by_index, seen = pcall(build_pools, prep)
  if not bok or not pools then
    abandon_listeners(plan)
    return nil, bok and by_index or tostring(pools)
  end
  local listeners = finish_listeners(cfg, plan, old and old.listeners)
  if old then
    -- Proxies that left the config take no new work; their tunnels and
    -- requests in flight finish, and their probes stop.
    local err = errbuf()
    for id, c in pairs(old.proxies) do
      if not seen[id] then
        C.ferry_proxy_set_flag(c, cdef.PROXY_REMOVED, 1)
        C.ferry_probe_set(c, 0, nil, 0, nil, nil, 1, 1, err)
      end
    end
  end
  local exchanges, by_id = {}, {}
  for name, e in pairs(prep.exchanges) do
    e.id = C.ferry_exchange_id(name)
    e.name = name
    e.pool = e.cfg.pool
    e.capture = e.hooks.on_response ~= nil or (e.ban ~= nil and e.ban.body ~= nil)
    local rt = e.cfg.rate
    if rt then
      -- The buckets learn from the answers' headers: the head is needed.
      e.capture = true
      e.rate = { rate = rt.limit / rt.per, cap = rt.burst, limit = rt.limit, per = rt.per }
      C.ferry_rate_set(e.id, rt.limit, rt.per, rt.burst, rt.queue, rt.queue_timeout)
    else
      e.rate = nil
      C.ferry_rate_set(e.id, 0, 0, 0, 0, 0)
    end
    e.upgrade_tls = e.cfg.upgrade_tls
    local tls = e.cfg.tls or { verify = true }
    C.ferry_exchange_set_tls(e.id, e.tls_ctx, tls.verify and 1 or 0, tls.sni)
    exchanges[name], by_id[e.id] = e, e
  end
  -- Exchanges of the old config that left take the defaults; contexts
  -- no exchange uses any more are freed (SSLs in flight hold their own);
  -- their rate waiters go on without a budget.
  for name, e in pairs(old and old.exchanges or {}) do
    if not exchanges[name] then
      C.ferry_exchange_set_tls(e.id, nil, 1, nil)
      if e.id then C.ferry_rate_set(e.id, 0, 0, 0, 0, 0) end
    end
  end
  C.ferry_origin_tls_sweep()
  -- Upstream connection limits: every pool, and index 0 for direct.
  -- Backend pools default to 100 connections per backend kept 90 s idle.
  local function connections(index, c, kind)
    c = c or {}
    local backends = kind == "backends"
    C.ferry_pool_connections(index, c.max or (backends and M.BACKEND_MAX or -1), c.queue or -1,
      c.queue_timeout or 0, c.idle or -1,
      c.idle_timeout or (backends and M.BACKEND_IDLE_TIMEOUT or 0), c.max_requests or -1)
  end
  connections(0, cfg.direct and cfg.direct.connections)
  for name, pool in pairs(pools) do
    connections(pool.index, cfg.pools[name].connections, pool.kind)
  end
  -- Retry policies and budgets (core/retry.c), by pool index.
  for name, pool in pairs(pools) do retry_policy(pool.index, cfg.pools[name].retry) end
  -- HTTP caches (core/cache.c): kept with their entries when the config
  -- keeps them (a smaller size evicts), dropped when it does not.
  C.ferry_cache_reload_begin()
  local function cache(kind, name, index, cc)
    if cc then
      C.ferry_cache_set(kind, name, index, cc.size, cc.max_object, cc.ttl, cc.lock_timeout)
    end
  end
  cache(C.FERRY_CACHE_POOL, "direct", 0, cfg.direct and cfg.direct.cache)
  for name, pool in pairs(pools) do cache(C.FERRY_CACHE_POOL, name, pool.index, cfg.pools[name].cache) end
  for _, l in ipairs(cfg.listeners) do cache(C.FERRY_CACHE_LISTENER, l.name, -1, l.cache) end
  C.ferry_cache_reload_end()
  C.ferry_cache_fixed_sites(cfg.route == nil and 1 or 0)
  local t = cfg.timeouts
  C.ferry_set_timeouts(ms(t.client_head), ms(t.connect), ms(t.first_byte), ms(t.idle),
    ms(t.keepalive), ms(t.request), ms(t.upstream_idle))
  C.ferry_set_log(LEVELS[cfg.log.level] or LEVELS.info, cfg.log.access and 1 or 0)
  C.ferry_set_http(cfg.http.via and 1 or 0, cfg.http.via_name)
  -- Ferry's CA last: nothing after it can refuse the config.  Only memory
  -- can fail here, and then the CA that was in use stays.
  local caerr = errbuf()
  if C.ferry_ca_use(prep.ca, cfg.tls and cfg.tls.leaf_cache or 0, caerr) ~= cdef.OK then
    C.ferry_log(LEVELS.error, "FERRY-0180", format("%s: tls: %s", cfg.file,
      ffi_string(caerr[0])))
  end

  return { cfg = cfg, pools = pools, by_index = by_index, proxies = seen,
           exchanges = exchanges, exchange_by_id = by_id, listeners = listeners }
end

return M
