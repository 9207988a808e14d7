-- console_cmds.lua: the commands of the console environment.
--
-- proxy.list/health/add/remove/enable/disable, pool.list/stats,
-- exchange.list, reload and stats, over the running config (rt.active())
-- and the live inventory.  What they return is plain data marked to print
-- as aligned tables (console_fmt.view); misuse and refusals raise a
-- message without a position.  begin(rt) and finish() bracket each
-- console line: the commands read the line's runtime from here (not
-- their own upvalues) so a function kept in a variable still acts for the
-- line that calls it; a line makes at most MAX_CHANGES inventory changes
-- (reload() counts as one).
local ffi = require("ffi")
local bit = require("bit")
local cdef = require("ferry.cdef")
local inventory = require("ferry.inventory")
local health = require("ferry.health")
local connstats = require("ferry.connstats")
local lb_stats = require("ferry.lb_stats")
local fmt = require("ferry.console_fmt")

local C = ffi.C
local band = bit.band
local format, concat = string.format, table.concat
local pairs, ipairs, type, tostring, tonumber, error = pairs, ipairs, type, tostring, tonumber,
  error
local floor = math.floor
local as_view = fmt.view

local M = {
  MAX_CHANGES = 100,         -- proxy.add/remove/enable/disable per line
}

---------------------------------------------------------------------------
-- State of the line being evaluated.

local cur_rt, changes

function M.begin(rt)
  cur_rt, changes = rt, 0
end

function M.finish()
  cur_rt = nil
end

local function fail(msg) error(msg, 0) end

local function active()
  local cur = cur_rt and cur_rt.active()
  if not cur then fail("no config is running") end
  return cur
end

local function count_change()
  changes = changes + 1
  if changes > M.MAX_CHANGES then
    fail(format("at most %d inventory changes per console line", M.MAX_CHANGES))
  end
end

---------------------------------------------------------------------------
-- Commands.

local DOWN, DISABLED, REMOVED = cdef.PROXY_DOWN, cdef.PROXY_DISABLED, cdef.PROXY_REMOVED
local BREAKERS = { [0] = "closed", "open", "half-open" }
local PROBES = { [0] = "none", "tcp", "http", "connect" }

local function ms(v)
  if v == nil or v <= 0 then return nil end
  return floor(v * 10 + 0.5) / 10
end

local function ago(t, now)
  if t == nil or t <= 0 then return nil end
  return format("%.0fs ago", now - t)
end

local function pct(part, whole)
  if not whole or whole == 0 then return nil end
  return floor(part * 1000 / whole + 0.5) / 10
end

local PROXY_COLUMNS = {
  { "id", "ID", right = true }, { "name", "NAME" }, { "pool", "POOL" }, { "url", "URL" },
  { "region", "REGION" }, { "weight", "W", right = true }, { "state", "STATE" },
  { "score", "SCORE", right = true }, { "active", "ACTIVE", right = true },
  { "requests", "REQUESTS", right = true }, { "failures", "FAILURES", right = true },
  { "latency_ms", "LAT_MS", right = true, fmt = function(v) return ms(v) end },
  { "source", "SOURCE" },
}

local function copy_columns(extra)
  local t = {}
  for i, c in ipairs(PROXY_COLUMNS) do t[i] = c end
  for _, c in ipairs(extra or {}) do t[#t + 1] = c end
  return t
end

local EXCHANGE_COLUMNS = copy_columns {
  { "breaker", "BREAKER" }, { "banned_s", "BANNED_S", right = true },
  { "ex_requests", "EX_REQ", right = true }, { "ex_failures", "EX_FAIL", right = true },
}

-- Columns with KIND after the third ("backend" or "proxy") when a row is a
-- backend (reverse pools); tables of proxies alone keep their shape.
local function with_kind(columns, rows, key)
  local any = false
  for _, r in ipairs(rows) do
    if r.kind == key then any = true end
  end
  if not any then return columns end
  local t = {}
  for i, c in ipairs(columns) do
    t[#t + 1] = c
    if i == (columns == PROXY_COLUMNS and 3 or 1) then t[#t + 1] = { "kind", "KIND" } end
  end
  return t
end

local function name_arg(v, what, cmd)
  if type(v) ~= "string" then
    fail(format("%s: expected a %s name (a string), got a %s", cmd, what, type(v)))
  end
  return v
end

local function waiting_footer()
  local w = inventory.waiting()
  if #w == 0 then return nil end
  local lines = { format("%d runtime %s waiting (pool missing, or declared by the config):",
    #w, #w == 1 and "proxy" or "proxies") }
  for i, e in ipairs(w) do
    if i > 10 then
      lines[#lines + 1] = format("  ... %d more", #w - 10)
      break
    end
    lines[#lines + 1] = format('  %s  pool "%s"  %s%s', e.url, e.pool, e.why,
      e.name and ("  id " .. e.name) or "")
  end
  return lines
end

local proxy, pool, exchange = {}, {}, {}
M.proxy, M.pool, M.exchange = proxy, pool, exchange

-- The fleet's nodes (ferry.fleet_nodes): node.list(), node.self().
local node = {}
M.node = node

local NODE_COLUMNS = {
  { "id", "ID" }, { "advertise", "ADVERTISE" }, { "version", "VERSION" }, { "state", "STATE" },
  { "heartbeat_age_s", "HB_AGE_S", right = true }, { "probes", "PROBES", right = true },
  { "started", "STARTED" }, { "config_hash", "CONFIG" },
  { "self", "SELF", fmt = function(v) return v and "*" or "" end },
}

local function fleet_nodes()
  local nodes = require("ferry.fleet_nodes")
  if not nodes.enabled() then
    fail("no fleet: store { postgres = ... } is not configured")
  end
  return nodes
end

function node.list()
  local l = fleet_nodes().list()
  return as_view(l.nodes, {
    kind = "table", columns = NODE_COLUMNS, empty = "(the node list was not read yet)",
    title = l.stale and format("stale: PostgreSQL is not up; the list is %s old",
      l.view_age_s and format("%.1f s", l.view_age_s) or "never read") or nil,
  })
end

function node.self()
  local l = fleet_nodes().list()
  local me = { id = l.self, heartbeat_s = l.heartbeat_s, stale = l.stale }
  for _, r in ipairs(l.nodes) do
    if r.self then
      for k, v in pairs(r) do me[k] = v end
    end
  end
  me.self = nil
  me.probes = tonumber(C.ferry_probe_duties())
  me.probe_runs = tonumber(C.ferry_probe_runs())
  return as_view(me, { kind = "record", fields = {
    { "id", "id" }, { "advertise", "advertise", optional = true },
    { "version", "version", optional = true }, { "state", "state", optional = true },
    { "started", "started", optional = true }, { "config_hash", "config hash", optional = true },
    { "heartbeat_s", "heartbeat (s)" }, { "heartbeat_age_s", "heartbeat age (s)", optional = true },
    { "probes", "probe duties" }, { "probe_runs", "probes run here" }, { "stale", "stale view" },
  } })
end

function proxy.list(name)
  local cur = active()
  local names, ex
  if name == nil then
    names = cur.cfg.pool_order
  else
    name_arg(name, "pool or exchange", "proxy.list")
    local e = cur.exchanges[name]
    if cur.pools[name] then
      names = { name }
      if e and e.pool == name then ex = e end
    elseif e then
      if e.pool == "direct" or not cur.pools[e.pool] then
        fail(format('exchange "%s" has no pool of proxies (it goes %s)', name, e.pool))
      end
      names, ex = { e.pool }, e
    else
      fail(format('no pool or exchange "%s" (pool.list() and exchange.list() show them)',
        name:sub(1, 64)))
    end
  end
  local rows = inventory.records(cur, names)
  if ex then
    local now = C.ferry_now()
    local p = cur.pools[names[1]]
    for _, r in ipairs(rows) do
      local x = p:pair(p.by_id[r.id], ex.id)
      if x ~= nil then
        r.breaker = BREAKERS[tonumber(x.breaker)] or tostring(x.breaker)
        local left = x.banned_until - now
        r.banned_s = left > 0 and floor(left + 0.5) or nil
        r.ex_requests, r.ex_failures = tonumber(x.requests), tonumber(x.failures)
      end
    end
  end
  local hint = name == nil and 'use proxy.list("pool")' or "the API pages them: GET " ..
    "/api/v1/proxies?pool=" .. names[1] .. "&offset=200"
  return as_view(rows, {
    kind = "table", columns = ex and EXCHANGE_COLUMNS or with_kind(PROXY_COLUMNS, rows, "backend"),
    hint = hint,
    title = ex and format('exchange "%s", pool "%s"', ex.name, names[1]) or nil,
    empty = "(no proxies)", footer = name == nil and waiting_footer() or nil,
  })
end

local HEALTH_COLUMNS = {
  { "id", "ID", right = true }, { "name", "NAME" }, { "url", "URL" }, { "state", "STATE" },
  { "score", "SCORE", right = true }, { "health", "HEALTH" },
  { "consecutive_failures", "FAILS_IN_ROW", right = true }, { "probe", "PROBE" },
  { "probes_ok", "PROBES_OK", right = true }, { "probes_failed", "PROBES_FAILED", right = true },
  { "probe_ms", "PROBE_MS", right = true }, { "last_probe", "LAST_PROBE" },
  { "down_for", "DOWN_FOR" },
}

local function health_record(cur, cid, c, now)
  local info = inventory.info(cid)
  local first = cur.pools[info.pools[1]]
  local flags = tonumber(c.flags)
  local down_since = tonumber(c.down_since)
  local kinds = {}
  for i, k in ipairs(cdef.FAIL_KINDS) do
    local v = tonumber(c.fail_kind[i - 1])
    if v > 0 then kinds[#kinds + 1] = k .. "=" .. v end
  end
  return {
    id = cid, name = info.label, url = info.display, pools = info.pools,
    state = inventory.state(flags), enabled = band(flags, DISABLED) == 0,
    up = band(flags, DOWN) == 0,
    score = floor(health.score(c, first and first.latency_ceiling or 1000, now) + 0.5),
    health = format("%d/%d", tonumber(c.health), tonumber(c.rise) + tonumber(c.fall) - 1),
    rise = tonumber(c.rise), fall = tonumber(c.fall),
    consecutive_failures = tonumber(c.consecutive_failures),
    requests = tonumber(c.requests), successes = tonumber(c.successes),
    failures = tonumber(c.failures), failure_kinds = #kinds > 0 and concat(kinds, " ") or nil,
    active = tonumber(c.active), latency_ms = ms(tonumber(c.latency_ewma_ms)),
    last_success = ago(tonumber(c.last_success_at), now),
    last_failure = ago(tonumber(c.last_failure_at), now),
    probe = PROBES[tonumber(c.probe_kind)] or tostring(c.probe_kind),
    probes_ok = tonumber(c.probes_ok), probes_failed = tonumber(c.probes_failed),
    probe_ms = ms(tonumber(c.probe_latency_ms)), last_probe = ago(tonumber(c.last_probe_at), now),
    downs = tonumber(c.downs),
    down_for = band(flags, DOWN) ~= 0 and down_since > 0 and format("%.0fs", now - down_since)
      or nil,
    retry_in = tonumber(c.retry_at) > now and format("%.0fs", tonumber(c.retry_at) - now) or nil,
    source = info.entry and "runtime" or "config",
    connections = connstats.proxy(cid),
    slow_start = lb_stats.proxy(cur, cid, now),
  }
end

local HEALTH_FIELDS = {
  { "id", "id" }, { "name", "name" }, { "url", "url" },
  { "pools", "pools", fmt = function(v) return concat(v, ", ") end },
  { "source", "source" }, { "state", "state" }, { "score", "score" },
  { "health", "health (counter/max)" }, { "rise", "rise" }, { "fall", "fall" },
  { "consecutive_failures", "failures in a row" }, { "active", "active" },
  { "requests", "requests" }, { "successes", "successes" }, { "failures", "failures" },
  { "failure_kinds", "failures by kind", optional = true },
  { "latency_ms", "latency (ms, EWMA)" }, { "last_success", "last success" },
  { "last_failure", "last failure" }, { "probe", "probe" }, { "probes_ok", "probes ok" },
  { "probes_failed", "probes failed" }, { "probe_ms", "probe latency (ms)" },
  { "last_probe", "last probe" }, { "downs", "times down" },
  { "down_for", "down for", optional = true }, { "retry_in", "retry in", optional = true },
  { "slow_start", "slow start (ramp, effective weight)", optional = true },
  { "connections", "upstream connections", fmt = connstats.line },
}

local PAIR_COLUMNS = {
  { "exchange", "EXCHANGE" }, { "breaker", "BREAKER" }, { "opens", "OPENS", right = true },
  { "banned_s", "BANNED_S", right = true }, { "bans", "BANS", right = true },
  { "requests", "REQUESTS", right = true }, { "failures", "FAILURES", right = true },
  { "latency_ms", "LAT_MS", right = true },
}

function proxy.health(id)
  local cur = active()
  local now = C.ferry_now()
  if id == nil then
    local rows, seen = {}, {}
    for _, name in ipairs(cur.cfg.pool_order) do
      for _, p in ipairs(cur.pools[name].proxies) do
        if not seen[p.id] then
          seen[p.id] = true
          rows[#rows + 1] = health_record(cur, p.id, p.c, now)
        end
      end
    end
    return as_view(rows, { kind = "table", columns = HEALTH_COLUMNS, empty = "(no proxies)",
                           hint = "proxy.health(id) shows one" })
  end
  local cid, c = inventory.resolve(cur, id)
  if not cid then fail(c.message) end
  local rec = health_record(cur, cid, c, now)
  local pairs_rows = {}
  for _, ename in ipairs(cur.cfg.exchanges) do
    local e = cur.exchanges[ename.name]
    local p = e and cur.pools[e.pool]
    if p and p.by_id[cid] then
      local x = p:pair(p.by_id[cid], e.id)
      if x ~= nil then
        local left = x.banned_until - now
        pairs_rows[#pairs_rows + 1] = {
          exchange = e.name, breaker = BREAKERS[tonumber(x.breaker)],
          opens = tonumber(x.opens), banned_s = left > 0 and floor(left + 0.5) or nil,
          bans = tonumber(x.bans_total), requests = tonumber(x.requests),
          failures = tonumber(x.failures), latency_ms = ms(tonumber(x.latency_ewma_ms)),
        }
      end
    end
  end
  if #pairs_rows > 0 then
    rec.exchanges = as_view(pairs_rows, { kind = "table", columns = PAIR_COLUMNS })
  end
  return as_view(rec, { kind = "record", fields = HEALTH_FIELDS, after = { "exchanges" } })
end

local function change_message(text, rec)
  return as_view(rec, { kind = "message", text = text .. "; " .. rec.note })
end

local function check(res, err)
  if not res then fail(err.message) end
  return res
end

-- proxy.add(pool, url, opts) or proxy.add{ pool = ..., url = ..., id = ... }.
function proxy.add(pool_name, u, opts)
  count_change()
  if type(pool_name) == "table" and u == nil and opts == nil then
    local t = pool_name
    pool_name, u, opts = t.pool, t.url, {}
    for k, v in pairs(t) do
      if k ~= "pool" and k ~= "url" then opts[k] = v end
    end
  end
  if opts ~= nil and type(opts) ~= "table" then
    fail("proxy.add: opts must be a table { id = ..., weight = ..., region = ... }")
  end
  local f = check(inventory.check_fields(opts or {}, { id = true, weight = true, region = true,
    backup = true }))
  f.pool, f.url = pool_name, u
  if type(u) ~= "string" then fail("proxy.add: url must be a string") end
  local res = check(inventory.add(cur_rt, f, "console"))
  return change_message(format('added %s %d (%s) to pool "%s"', res.kind or "proxy", res.id,
    res.url, res.pool), res)
end

function proxy.remove(id)
  count_change()
  local res = check(inventory.remove(cur_rt, id, "console"))
  return change_message(format('removed proxy %s (%s) from pool "%s"',
    tostring(res.id or res.name), res.url, res.pool), res)
end

local function toggle(id, on)
  count_change()
  local res = check(inventory.set_enabled(cur_rt, id, on, "console"))
  local word = on and "enabled" or "disabled"
  return change_message(format("%s proxy %d (%s)%s", word, res.id, res.url,
    res.changed and "" or (" (it already was " .. word .. ")")), res)
end

function proxy.enable(id) return toggle(id, true) end
function proxy.disable(id) return toggle(id, false) end

-- Add one proxy (its cdata c) to the totals s: up, down or disabled, and
-- its counters.
local function tally(s, c)
  local flags = tonumber(c.flags)
  if band(flags, DISABLED + REMOVED) ~= 0 then
    s.disabled = s.disabled + 1
  elseif band(flags, DOWN) ~= 0 then
    s.down = s.down + 1
  else
    s.up = s.up + 1
  end
  s.active = s.active + tonumber(c.active)
  s.requests = s.requests + tonumber(c.requests)
  s.successes = s.successes + tonumber(c.successes)
  s.failures = s.failures + tonumber(c.failures)
end

local function pool_summary(cur, p)
  local s = { name = p.name, strategy = p.strategy and p.strategy.name,
              proxies = #p.proxies, up = 0, down = 0, disabled = 0, runtime = 0, active = 0,
              requests = 0, successes = 0, failures = 0, all_down = p.all_down,
              retries = p.retries, panic = p.panic,
              breaker = p.breaker and p.breaker.plugin.name or "none" }
  local pc = cur.cfg.pools[p.name]
  s.check = pc and pc.health and pc.health.check or "none"
  local lat_sum, lat_n = 0, 0
  local kinds = {}
  for _, x in ipairs(p.proxies) do
    local c = x.c
    tally(s, c)
    if x.runtime then s.runtime = s.runtime + 1 end
    local l = tonumber(c.latency_ewma_ms)
    if l > 0 then lat_sum, lat_n = lat_sum + l, lat_n + 1 end
    for i = 1, #cdef.FAIL_KINDS do kinds[i] = (kinds[i] or 0) + tonumber(c.fail_kind[i - 1]) end
  end
  s.failure_pct = pct(s.failures, s.successes + s.failures)
  s.latency_ms = lat_n > 0 and ms(lat_sum / lat_n) or nil
  local parts = {}
  for i, k in ipairs(cdef.FAIL_KINDS) do
    if kinds[i] > 0 then parts[#parts + 1] = k .. "=" .. kinds[i] end
  end
  s.failure_kinds = #parts > 0 and concat(parts, " ") or nil
  local ex = {}
  for _, e in ipairs(cur.cfg.exchanges) do
    if e.pool == p.name then ex[#ex + 1] = e.name end
  end
  s.exchanges = ex
  s.kind = p.kind or "proxies"
  s.connections = connstats.pool(p.index)
  for k, v in pairs(lb_stats.pool(p)) do s[k] = v end
  return s
end

local POOL_COLUMNS = {
  { "name", "NAME" }, { "strategy", "STRATEGY" }, { "proxies", "PROXIES", right = true },
  { "up", "UP", right = true }, { "down", "DOWN", right = true },
  { "disabled", "OFF", right = true }, { "runtime", "RUNTIME", right = true },
  { "active", "ACTIVE", right = true }, { "requests", "REQUESTS", right = true },
  { "failure_pct", "FAIL_%", right = true }, { "breaker", "BREAKER" }, { "check", "CHECK" },
  { "all_down", "ALL_DOWN" }, { "exchanges", "EXCHANGES" },
}

function pool.list()
  local cur = active()
  local rows = {}
  for _, name in ipairs(cur.cfg.pool_order) do
    rows[#rows + 1] = pool_summary(cur, cur.pools[name])
  end
  return as_view(rows, { kind = "table", columns = with_kind(POOL_COLUMNS, rows, "backends"),
                         empty = "(no pools)",
                         hint = "pool.stats(name) shows one" })
end

local POOL_FIELDS = {
  { "name", "pool" }, { "kind", "kind", optional = true }, { "strategy", "strategy" },
  { "breaker", "breaker" },
  { "check", "health check" }, { "all_down", "all_down" }, { "panic", "panic (%)" },
  { "retries", "retries" }, { "proxies", "proxies" }, { "up", "up" }, { "down", "down" },
  { "disabled", "disabled or removed" }, { "runtime", "added at runtime" },
  { "active", "active" }, { "requests", "requests" }, { "successes", "successes" },
  { "failures", "failures" }, { "failure_pct", "failure rate (%)" },
  { "failure_kinds", "failures by kind", optional = true },
  { "latency_ms", "mean latency (ms)" },
  { "slowstart", "slow start (s)", optional = true },
  { "ramping", "ramping (share, effective weight)", optional = true },
  { "max_ejected", "max_ejected", optional = true },
  { "ejected", "ejected (down or breaker open)", optional = true },
  { "spared", "kept eligible by max_ejected", optional = true },
  { "backups", "backups", optional = true },
  { "backup_serving", "backups serving", optional = true,
    fmt = function(v) return v and "yes" or "no" end },
  { "connections", "upstream connections", fmt = connstats.line },
  { "exchanges", "exchanges", fmt = function(v) return #v > 0 and concat(v, ", ") or "-" end },
}

local WORST_COLUMNS = {
  { "id", "ID", right = true }, { "name", "NAME" }, { "url", "URL" }, { "state", "STATE" },
  { "score", "SCORE", right = true }, { "requests", "REQUESTS", right = true },
  { "failures", "FAILURES", right = true },
}

-- A backend pool's connections, backend by backend (core/uppool.c).
local BACKEND_CONN_COLUMNS = {
  { "id", "ID", right = true }, { "name", "NAME" }, { "url", "URL" }, { "state", "STATE" },
  { "active", "ACTIVE", right = true }, { "idle", "IDLE", right = true },
  { "opened", "OPENED", right = true }, { "reused", "REUSED", right = true },
  { "waiting", "WAITING", right = true }, { "queue_timeouts", "Q_TIMEOUTS", right = true },
  { "queue_full", "REFUSED", right = true },
}

local function backend_rows(recs)
  local rows = {}
  for i, r in ipairs(recs) do
    local cs = r.connections or {}
    rows[i] = { id = r.id, name = r.name, url = r.url, state = r.state, active = cs.active,
                idle = cs.idle, opened = cs.opened, reused = cs.reused, waiting = cs.waiting,
                queue_timeouts = cs.queue_timeouts, queue_full = cs.queue_full }
  end
  return rows
end

function pool.stats(name)
  local cur = active()
  name_arg(name, "pool", "pool.stats")
  if name == "direct" then
    -- The pseudo-pool without proxies: only its upstream connections.
    return as_view({ name = "direct", connections = connstats.pool(0) }, { kind = "record",
      fields = { { "name", "pool" }, { "connections", "upstream connections",
                                       fmt = connstats.line } } })
  end
  local p = cur.pools[name]
  if not p then fail(format('no pool "%s" (pool.list() shows the pools)', name:sub(1, 64))) end
  local s = pool_summary(cur, p)
  if p.kind ~= "backends" then s.kind = nil end -- said for backend pools only
  if p.kind == "backends" then
    s.backends = as_view(backend_rows(inventory.records(cur, { name })), { kind = "table",
      columns = BACKEND_CONN_COLUMNS, title = "connections per backend:" })
  end
  -- The five proxies with the lowest score.
  local recs = inventory.records(cur, { name })
  table.sort(recs, function(a, b)
    if a.score ~= b.score then return a.score < b.score end
    return a.id < b.id
  end)
  local worst = {}
  for i = 1, math.min(5, #recs) do worst[i] = recs[i] end
  if #worst > 0 then
    s.worst = as_view(worst, { kind = "table", columns = WORST_COLUMNS,
                               title = "lowest scores:" })
  end
  return as_view(s, { kind = "record", fields = POOL_FIELDS, after = { "worst", "backends" } })
end

local EXCHANGE_LIST_COLUMNS = {
  { "name", "NAME" }, { "pool", "POOL" }, { "hosts", "HOSTS" }, { "script", "SCRIPT" },
  { "ban_status", "BAN_STATUS" }, { "banned", "BANNED_NOW", right = true },
  { "open", "OPEN_BREAKERS", right = true },
}

function exchange.list()
  local cur = active()
  local now = C.ferry_now()
  local rows = {}
  for _, ec in ipairs(cur.cfg.exchanges) do
    local e = cur.exchanges[ec.name]
    local r = { name = ec.name, pool = e.pool, hosts = ec.hosts,
                script = ec.script and ec.script:match("[^/]*$") or nil,
                ban_status = e.ban and e.ban.status or nil, banned = 0, open = 0 }
    local p = cur.pools[e.pool]
    for _, x in ipairs(p and p.proxies or {}) do
      local st = p:pair(x, e.id)
      if st ~= nil then
        if st.banned_until > now then r.banned = r.banned + 1 end
        if st.breaker ~= cdef.BREAKER_CLOSED then r.open = r.open + 1 end
      end
    end
    rows[#rows + 1] = r
  end
  return as_view(rows, { kind = "table", columns = EXCHANGE_LIST_COLUMNS,
                         empty = "(no exchanges)", hint = "proxy.list(name) shows one" })
end

local RATE_COLUMNS = {
  { "id", "ID", right = true }, { "proxy", "PROXY" }, { "tokens", "TOKENS", right = true },
  { "capacity", "CAPACITY", right = true }, { "next_s", "NEXT_TOKEN_S", right = true },
  { "empty_s", "EMPTY_S", right = true },
}

-- The rate budget of every (proxy, exchange) pair of exchange `name`.
function M.rate(name)
  local cur = active()
  local rate = require("ferry.rate")
  local rows, e = rate.pairs(cur, name_arg(name, "exchange", "rate"))
  if not rows then fail(e) end
  local s = rate.stats(e) or {}
  return as_view(rows, { kind = "table", columns = RATE_COLUMNS, empty = "(no proxies)",
    title = format('exchange "%s": %s per %ss, waiting %d, waited %d, rejected %d',
      e.name, tostring(e.rate.limit), tostring(e.rate.per), s.waiting or 0, s.waited or 0,
      s.rejected or 0) })
end

-- The HTTP caches (core/cache.c): counters, and purge by key prefix.
local cachemod = require("ferry.cache")
local CACHE_COLUMNS = {
  { "name", "CACHE" }, { "kind", "KIND" }, { "entries", "ENTRIES", right = true },
  { "bytes", "BYTES", right = true }, { "size", "SIZE", right = true },
  { "hits", "HITS", right = true }, { "misses", "MISSES", right = true },
  { "stale", "STALE", right = true }, { "revalidated", "REVALIDATED", right = true },
  { "coalesced", "COALESCED", right = true }, { "evictions", "EVICTIONS", right = true },
}
M.cache = {}

-- broker_client.stats([pool]): leases, endpoints and feedback of the
-- pools that lease their proxies (ferry.broker_client; no credential).
M.broker_client = {}
function M.broker_client.stats(name)
  active()
  if name ~= nil then name_arg(name, "pool", "broker_client.stats") end
  local s = require("ferry.broker_client").stats(name)
  if s == nil then fail(format('pool "%s" takes no leases from a broker', tostring(name))) end
  return s
end

function M.cache.stats()
  active()
  return as_view(cachemod.stats(), { kind = "table", columns = CACHE_COLUMNS,
    empty = "(no cache configured)" })
end

function M.cache.purge(prefix, name)
  active()
  local n, err = cachemod.purge(prefix, name)
  if not n then fail("cache.purge: " .. err) end
  return as_view({ purged = n }, { kind = "message",
    text = format("purged %d entr%s", n, n == 1 and "y" or "ies") })
end

function M.reload()
  count_change()
  local ok, err = cur_rt.reload_now()
  if not ok then fail("reload refused, the running config stays: " .. tostring(err)) end
  return as_view({ reloaded = true }, { kind = "message",
    text = "reloaded " .. tostring(active().cfg.file) })
end

local STATS_FIELDS = {
  { "config", "config" }, { "store", "store" }, { "pools", "pools" },
  { "exchanges", "exchanges" }, { "proxies", "proxies" }, { "up", "up" }, { "down", "down" },
  { "disabled", "disabled" }, { "runtime", "added at runtime" },
  { "waiting", "runtime, waiting", optional = true }, { "active", "active" },
  { "requests", "requests" }, { "successes", "successes" }, { "failures", "failures" },
  { "failure_pct", "failure rate (%)" }, { "sticky", "sticky pins" },
  { "probes", "probes in flight" }, { "draining", "draining" },
  { "leaves", "TLS leaves (ferry's CA)", optional = true },
  { "postgres", "postgres (fleet)", optional = true },
}

-- Ferry's CA at work (core/mint.c), when one is loaded.
local function leaves_line()
  local m = ffi.new("struct ferry_mint_stats")
  C.ferry_mint_stats(m)
  if m.ready == 0 then return nil end
  return string.format("%d cached of %d; minted %d, cache hits %d, evictions %d, " ..
    "refused by clients %d", tonumber(m.cached), tonumber(m.cap), tonumber(m.minted),
    tonumber(m.hits), tonumber(m.evictions), tonumber(m.refused))
end

-- The fleet's connection, never with its credentials (host:port/dbname).
local function postgres_line()
  local fleet = require("ferry.fleet")
  if not fleet.enabled() then return nil end
  local p = fleet.stats()
  return string.format("%s %s, node %s; queued %d, dropped %d, queries %d, errors %d, " ..
    "reconnects %d", p.state, p.target or "?", tostring(p.node), p.queued, p.dropped, p.queries,
    p.errors, p.reconnects)
end

function M.stats()
  local cur = active()
  local s = { config = cur.cfg.file, pools = #cur.cfg.pool_order,
              exchanges = #cur.cfg.exchanges, proxies = 0, up = 0, down = 0, disabled = 0,
              runtime = 0, active = 0, requests = 0, successes = 0, failures = 0,
              sticky = tonumber(C.ferry_sticky_count()), probes = tonumber(C.ferry_probe_inflight()),
              draining = C.ferry_draining() ~= 0,
              store = inventory.store_path() or "none (runtime changes live in memory only)" }
  for _, c in pairs(cur.proxies) do
    s.proxies = s.proxies + 1
    tally(s, c)
  end
  s.runtime = inventory.count()
  local w = #inventory.waiting()
  s.waiting = w > 0 and w or nil
  s.failure_pct = pct(s.failures, s.successes + s.failures)
  s.leaves = leaves_line()
  s.postgres = postgres_line()
  return as_view(s, { kind = "record", fields = STATS_FIELDS })
end

return M
