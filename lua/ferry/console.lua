-- console.lua: one console line, evaluated inside the running daemon.
--
-- eval(line, rt) compiles the line as "return <line>" (an expression),
-- else as a statement, runs it in the console environment and answers
-- true, text or false, message.  The environment holds the commands
-- (proxy.*, pool.*, exchange.list, reload, stats, help, reset) and a few
-- safe globals; variables a line sets persist for the next lines (at most
-- MAX_VARS of them; reset() forgets them).  Nothing in it reaches the
-- file system, the process, the config's credentials or the core's raw
-- state.
--
-- Bounds: the line runs interpreted (jit.off) so the core's instruction
-- budget stops a runaway loop (the error comes back as the answer); the
-- environment's pcall passes that error on instead of swallowing it;
-- string.rep is capped; output stops at MAX_OUTPUT bytes; a list prints
-- at most MAX_ROWS rows and says how many were left out; a line makes at
-- most MAX_CHANGES inventory changes.  Proxy URLs print as
-- scheme://***@host:port, and any URL userinfo in the output (a line's
-- own text echoed by an error) is masked the same way.
local ffi = require("ffi")
local bit = require("bit")
local jit = require("jit")
local cdef = require("ferry.cdef")
local inventory = require("ferry.inventory")
local health = require("ferry.health")
local budget = require("ferry.budget")

local C = ffi.C
local band = bit.band
local format, concat, rep = string.format, table.concat, string.rep
local pairs, ipairs, type, tostring, tonumber, select, next = pairs, ipairs, type, tostring,
  tonumber, select, next
local pcall, error, setmetatable, getmetatable, setfenv, loadstring =
  pcall, error, setmetatable, getmetatable, setfenv, loadstring
local floor, huge = math.floor, math.huge

local M = {
  MAX_ROWS = 200,            -- rows a list prints
  MAX_OUTPUT = 1024 * 1024,  -- bytes of output per line
  MAX_LINE = 16 * 1024,      -- bytes of a line
  MAX_CHANGES = 100,         -- proxy.add/remove/enable/disable per line
  MAX_VARS = 100,            -- variables kept between lines
  MAX_CELL = 48,             -- characters of a table cell
  MAX_STRING = 1024 * 1024,  -- bytes string.rep may build
  MAX_ITEMS = 50,            -- entries shown per plain Lua table
}

---------------------------------------------------------------------------
-- State of the line being evaluated.  Commands read it (not their own
-- upvalues) so a function kept in a variable still prints to the line
-- that calls it.

local cur_rt, out, changes
local vars, nvars = {}, 0

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

local function emit(s)
  if out.full then return end
  if out.size + #s + 1 > M.MAX_OUTPUT then
    out[#out + 1] = s:sub(1, math.max(0, M.MAX_OUTPUT - out.size - 1))
    out[#out + 1] = format("... output truncated at %d bytes", M.MAX_OUTPUT)
    out.full = true
    return
  end
  out[#out + 1] = s
  out.size = out.size + #s + 1
end

-- scheme://user:pass@host -> scheme://***@host, wherever it appears.
local function mask(s)
  return (s:gsub("(%a[%w+.-]*://)[^%s/@\"'`]*@", "%1***@"))
end
M.mask = mask

---------------------------------------------------------------------------
-- Views: what a command returns is plain data (a list of records, or a
-- record) that prints as an aligned table.  How it prints is kept aside,
-- so scripts see only the data: #proxy.list("p"), proxy.list()[1].id.

local views = setmetatable({}, { __mode = "k" })

local function as_view(t, spec)
  views[t] = spec
  return t
end

local function num(v)
  if v ~= v then return "nan" end
  if v == huge then return "inf" end
  if v == -huge then return "-inf" end
  if v % 1 == 0 and v > -2 ^ 53 and v < 2 ^ 53 then return format("%d", v) end
  return format("%.14g", v)
end

local function cell(v)
  local s
  if v == nil then
    s = "-"
  elseif type(v) == "boolean" then
    s = v and "yes" or "no"
  elseif type(v) == "number" then
    if v % 1 ~= 0 and v == v and v ~= huge and v ~= -huge then
      s = format("%.1f", v)
    else
      s = num(v)
    end
  elseif type(v) == "table" then
    local parts = {}
    for i = 1, math.min(#v, 8) do parts[i] = tostring(v[i]) end
    if #v > 8 then parts[#parts + 1] = "..." end
    s = concat(parts, ",")
  else
    s = tostring(v)
  end
  s = s:gsub("%c", "?")
  if #s > M.MAX_CELL then s = s:sub(1, M.MAX_CELL - 3) .. "..." end
  return s
end

-- spec.columns: { { key, title, right = bool, fmt = function(v, row) }, ... }
local function render_table(rows, spec)
  local cols = spec.columns
  local n = #rows
  local shown = math.min(n, M.MAX_ROWS)
  local grid, widths = {}, {}
  local head = {}
  for j, col in ipairs(cols) do
    head[j] = col[2]
    widths[j] = #col[2]
  end
  for i = 1, shown do
    local row, line = rows[i], {}
    for j, col in ipairs(cols) do
      local v = type(row) == "table" and row[col[1]] or nil
      local s = col.fmt and cell(col.fmt(v, row)) or cell(v)
      line[j] = s
      if #s > widths[j] then widths[j] = #s end
    end
    grid[i] = line
  end
  local lines = {}
  local function put(line)
    local parts = {}
    for j, col in ipairs(cols) do
      local s = line[j]
      local pad = rep(" ", widths[j] - #s)
      parts[j] = col.right and (pad .. s) or (s .. pad)
    end
    lines[#lines + 1] = (concat(parts, "  "):gsub("%s+$", ""))
  end
  if spec.title then lines[#lines + 1] = spec.title end
  put(head)
  for i = 1, shown do put(grid[i]) end
  if n == 0 then lines[#lines + 1] = spec.empty or "(none)" end
  if n > shown then
    lines[#lines + 1] = format("... %d more%s", n - shown, spec.hint and ("; " .. spec.hint) or "")
  end
  for _, f in ipairs(spec.footer or {}) do lines[#lines + 1] = f end
  return concat(lines, "\n")
end

local show

-- spec.fields: { { key, title, fmt = function(v, rec) }, ... };
-- spec.after: keys of the record holding views printed below.
local function render_record(rec, spec)
  local width = 0
  for _, f in ipairs(spec.fields) do
    if #f[2] > width then width = #f[2] end
  end
  local lines = {}
  if spec.title then lines[#lines + 1] = spec.title end
  for _, f in ipairs(spec.fields) do
    local v = rec[f[1]]
    if f.fmt then v = f.fmt(v, rec) end
    if v ~= nil or not f.optional then
      local s = type(v) == "string" and v:gsub("%c", "?") or cell(v)
      lines[#lines + 1] = (f[2] .. rep(" ", width - #f[2]) .. "  " .. s):gsub("%s+$", "")
    end
  end
  for _, k in ipairs(spec.after or {}) do
    if rec[k] ~= nil then
      lines[#lines + 1] = ""
      lines[#lines + 1] = show(rec[k])
    end
  end
  return concat(lines, "\n")
end

local function quote(s)
  return (format("%q", s):gsub("\\\n", "\\n"))
end

local function show_plain(t, depth, seen)
  if seen[t] then return "<cycle>" end
  if depth > 3 then return "{...}" end
  seen[t] = true
  local parts, n = {}, 0
  local len = #t
  for i = 1, len do
    n = n + 1
    if n > M.MAX_ITEMS then break end
    local v = t[i]
    parts[n] = type(v) == "table" and show_plain(v, depth + 1, seen) or show(v, true)
  end
  local keys = {}
  for k in pairs(t) do
    if not (type(k) == "number" and k >= 1 and k <= len and k % 1 == 0) then
      keys[#keys + 1] = k
      if #keys > M.MAX_ITEMS * 4 then break end
    end
  end
  table.sort(keys, function(a, b)
    if type(a) == type(b) and (type(a) == "string" or type(a) == "number") then return a < b end
    return type(a) < type(b)
  end)
  for _, k in ipairs(keys) do
    n = n + 1
    if n > M.MAX_ITEMS then break end
    local v = t[k]
    local ks = type(k) == "string" and k:match("^[%a_][%w_]*$") and k or ("[" .. show(k, true) .. "]")
    parts[n] = ks .. " = " .. (type(v) == "table" and show_plain(v, depth + 1, seen) or show(v, true))
  end
  seen[t] = nil
  if n > M.MAX_ITEMS then parts[M.MAX_ITEMS + 1] = "..." end
  if #parts == 0 then return "{}" end
  return "{ " .. concat(parts, ", ", 1, math.min(#parts, M.MAX_ITEMS + 1)) .. " }"
end

-- A value as the console prints it; nested: inside a plain table.
function show(v, nested)
  local t = type(v)
  if t == "string" then return nested and quote(v) or v end
  if t == "number" then return num(v) end
  if t == "table" then
    local spec = views[v]
    if spec and not nested then
      if spec.kind == "table" then return render_table(v, spec) end
      if spec.kind == "record" then return render_record(v, spec) end
      if spec.kind == "message" then return spec.text end
    end
    return show_plain(v, 1, {})
  end
  if t == "cdata" then return (tostring(v):gsub("U?LL$", "")) end
  return tostring(v)
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
    kind = "table", columns = ex and EXCHANGE_COLUMNS or PROXY_COLUMNS, hint = hint,
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

function proxy.add(pool_name, u, opts)
  count_change()
  if opts ~= nil and type(opts) ~= "table" then
    fail("proxy.add: opts must be a table { id = ..., weight = ..., region = ... }")
  end
  local f = check(inventory.check_fields(opts or {}, { id = true, weight = true, region = true }))
  f.pool, f.url = pool_name, u
  if type(u) ~= "string" then fail("proxy.add: url must be a string") end
  local res = check(inventory.add(cur_rt, f, "console"))
  return change_message(format('added proxy %d (%s) to pool "%s"', res.id, res.url, res.pool),
    res)
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
    local flags = tonumber(c.flags)
    if band(flags, DISABLED + REMOVED) ~= 0 then
      s.disabled = s.disabled + 1
    elseif band(flags, DOWN) ~= 0 then
      s.down = s.down + 1
    else
      s.up = s.up + 1
    end
    if x.runtime then s.runtime = s.runtime + 1 end
    s.active = s.active + tonumber(c.active)
    s.requests = s.requests + tonumber(c.requests)
    s.successes = s.successes + tonumber(c.successes)
    s.failures = s.failures + tonumber(c.failures)
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
  return as_view(rows, { kind = "table", columns = POOL_COLUMNS, empty = "(no pools)",
                         hint = "pool.stats(name) shows one" })
end

local POOL_FIELDS = {
  { "name", "pool" }, { "strategy", "strategy" }, { "breaker", "breaker" },
  { "check", "health check" }, { "all_down", "all_down" }, { "panic", "panic (%)" },
  { "retries", "retries" }, { "proxies", "proxies" }, { "up", "up" }, { "down", "down" },
  { "disabled", "disabled or removed" }, { "runtime", "added at runtime" },
  { "active", "active" }, { "requests", "requests" }, { "successes", "successes" },
  { "failures", "failures" }, { "failure_pct", "failure rate (%)" },
  { "failure_kinds", "failures by kind", optional = true },
  { "latency_ms", "mean latency (ms)" },
  { "exchanges", "exchanges", fmt = function(v) return #v > 0 and concat(v, ", ") or "-" end },
}

local WORST_COLUMNS = {
  { "id", "ID", right = true }, { "name", "NAME" }, { "url", "URL" }, { "state", "STATE" },
  { "score", "SCORE", right = true }, { "requests", "REQUESTS", right = true },
  { "failures", "FAILURES", right = true },
}

function pool.stats(name)
  local cur = active()
  name_arg(name, "pool", "pool.stats")
  local p = cur.pools[name]
  if not p then fail(format('no pool "%s" (pool.list() shows the pools)', name:sub(1, 64))) end
  local s = pool_summary(cur, p)
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
  return as_view(s, { kind = "record", fields = POOL_FIELDS, after = { "worst" } })
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

local function reload()
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
}

local function stats()
  local cur = active()
  local s = { config = cur.cfg.file, pools = #cur.cfg.pool_order,
              exchanges = #cur.cfg.exchanges, proxies = 0, up = 0, down = 0, disabled = 0,
              runtime = 0, active = 0, requests = 0, successes = 0, failures = 0,
              sticky = tonumber(C.ferry_sticky_count()), probes = tonumber(C.ferry_probe_inflight()),
              draining = C.ferry_draining() ~= 0,
              store = inventory.store_path() or "none (runtime changes live in memory only)" }
  for _, c in pairs(cur.proxies) do
    local flags = tonumber(c.flags)
    s.proxies = s.proxies + 1
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
  s.runtime = inventory.count()
  local w = #inventory.waiting()
  s.waiting = w > 0 and w or nil
  s.failure_pct = pct(s.failures, s.successes + s.failures)
  return as_view(s, { kind = "record", fields = STATS_FIELDS })
end

local HELP = [[
Commands (a line is Lua; results print as tables):
  proxy.list([pool|exchange])   proxies: state, score, counters (first 200 rows)
  proxy.health([id])            health of every proxy, or everything about one
  proxy.add(pool, url[, opts])  add a proxy; opts = { id = "name", weight = 2, region = "eu" }
  proxy.remove(id)              remove a proxy added at runtime
  proxy.enable(id)              let a disabled proxy take requests again
  proxy.disable(id)             keep a proxy out of selection (work in flight finishes)
  pool.list()                   pools: strategy, size, up/down, failure rate
  pool.stats(name)              one pool's counters and its lowest-scoring proxies
  exchange.list()               exchanges: hosts, pool, bans and open breakers now
  reload()                      reload the config file, as SIGHUP does
  stats()                       totals of the daemon, and where changes are stored
  help()                        this text
  reset()                       forget the variables set in this console
id is the number in the ID column or the proxy's name (its id in the config).
Also: string, table, math, pairs, ipairs, next, select, tostring, tonumber, type,
unpack, print, error, assert, pcall.  Variables set by a line stay for the next.]]

local function help()
  return as_view({}, { kind = "message", text = HELP })
end

local function reset()
  local n = nvars
  vars, nvars = {}, 0
  return as_view({}, { kind = "message", text = format("forgot %d variable%s", n,
    n == 1 and "" or "s") })
end

---------------------------------------------------------------------------
-- The environment.

local function copy(t)
  local c = {}
  for k, v in pairs(t) do c[k] = v end
  return c
end

local function bounded_rep(s, n, sep)
  s = tostring(s)
  n = tonumber(n) or 0
  local total = #s * math.max(n, 0) + (sep and #tostring(sep) * math.max(n - 1, 0) or 0)
  if total > M.MAX_STRING then
    error(format("string.rep: a result of %d bytes is over the console's %d", total,
      M.MAX_STRING), 2)
  end
  return rep(s, n, sep)
end

-- The string library the line sees, also as methods of strings ("x"):rep.
local safe_string = copy(string)
safe_string.rep = bounded_rep
safe_string.dump = nil

local function console_print(...)
  local n = select("#", ...)
  local parts = {}
  for i = 1, n do parts[i] = show((select(i, ...))) end
  emit(concat(parts, "\t"))
end

local function builtins()
  local b = {
    proxy = copy(proxy), pool = copy(pool), exchange = copy(exchange),
    reload = reload, stats = stats, help = help, reset = reset,
    string = copy(safe_string), table = copy(table), math = copy(math),
    pairs = pairs, ipairs = ipairs, next = next, select = select, tostring = tostring,
    tonumber = tonumber, type = type, unpack = unpack, error = error, assert = assert,
    pcall = budget.pcall, print = console_print,
  }
  b.math.randomseed = nil -- the data plane's random strategies share the generator
  return b
end

local function new_env()
  local b = builtins()
  return setmetatable({}, {
    __index = function(_, k)
      local v = b[k]
      if v ~= nil then return v end
      return vars[k]
    end,
    __newindex = function(_, k, v)
      if b[k] ~= nil then
        error(format('"%s" is a console command; choose another name', tostring(k)), 2)
      end
      if vars[k] == nil and v ~= nil then
        if nvars >= M.MAX_VARS then
          error(format("at most %d variables; reset() forgets them", M.MAX_VARS), 2)
        end
        nvars = nvars + 1
      elseif vars[k] ~= nil and v == nil then
        nvars = nvars - 1
      end
      vars[k] = v
    end,
    __metatable = false,
  })
end

local function pack(...)
  return { n = select("#", ...), ... }
end

-- Run the chunk and print what it returned.
local function run(chunk)
  local r = pack(chunk())
  if r.n > 0 then
    local parts, multiline = {}, false
    for i = 1, r.n do
      parts[i] = show(r[i])
      if parts[i]:find("\n", 1, true) then multiline = true end
    end
    emit(concat(parts, multiline and "\n" or "\t"))
  end
end

-- An expression first.  It is wrapped in select(1, ...) so that a call
-- at its top is not a tail call: error("x") then names console:1, not
-- this file.  The newline keeps a trailing -- comment from eating ")".
local function compile(line)
  local chunk = loadstring("return select(1, " .. line .. "\n)", "=console")
  if chunk then return chunk end
  return loadstring(line, "=console")
end

-- One console line.  Returns true, text or false, message.
function M.eval(line, rt)
  if type(line) ~= "string" then return false, "expected a line of Lua" end
  line = line:match("^%s*(.-)%s*$")
  if line == "" then return true, "" end
  if #line > M.MAX_LINE then
    return false, format("line too long (%d bytes, at most %d)", #line, M.MAX_LINE)
  end
  local chunk, err = compile(line)
  if not chunk then return false, mask(tostring(err)) end
  setfenv(chunk, new_env())
  jit.off(chunk, true)
  cur_rt, out, changes = rt, { size = 0 }, 0
  -- ("x"):rep(...) reaches the string library through the strings'
  -- metatable: the bounded one stands in while the line runs.
  local smt = getmetatable("")
  local saved = smt.__index
  smt.__index = safe_string
  local ok, rerr = pcall(run, chunk)
  smt.__index = saved
  local text = concat(out, "\n")
  cur_rt, out = nil, nil
  if not ok then
    local msg = type(rerr) == "string" and rerr or show(rerr)
    if text ~= "" then msg = text .. "\n" .. msg end
    return false, mask(msg)
  end
  return true, mask(text ~= "" and text .. "\n" or text)
end

-- For specs: forget the variables.
function M._reset()
  vars, nvars = {}, 0
end

return M
