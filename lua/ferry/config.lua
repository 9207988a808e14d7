-- config.lua: the config DSL.  A config is a Lua file run in a sandbox
-- whose globals are the statements below; each statement is checked as
-- it runs, and every error names FILE:LINE of the statement and the
-- field at fault.  The result is a plain table the runtime applies.
local ffi = require("ffi")
local url = require("ferry.url")
local proxy_entry = require("ferry.proxy_entry")
require("ferry.cdef")

-- The core keeps room for this many retries after a first try (ferry.h).
local RETRIES_MAX = tonumber(ffi.C.FERRY_RETRIES_MAX)
local tls_opts = require("ferry.tls_opts")

local M = {}

local DEFAULT_TIMEOUTS = {
  client_head = 10, connect = 5, first_byte = 30, idle = 300, keepalive = 60, request = 60,
  upstream_idle = 30,
}
local LEVELS = { debug = true, info = true, warn = true, error = true }
local ALL_DOWN = { any = true, direct = true, fail = true }
-- Failed inbound auth per client address: this many within the window
-- block it for a window (core/listener.h has the same defaults).
local AUTH_FAIL_LIMIT, AUTH_FAIL_WINDOW = 10, 60

-- Errors raised by statements carry this marker so load() can tell them
-- from errors in the user's own code.
local ConfigError = {}
-- Any other error, with the config line it was raised at (evaluate).
local Raised = {}

local function fail(where, fmt, ...)
  error(setmetatable({ msg = where .. ": " .. string.format(fmt, ...) }, ConfigError), 0)
end

-- FILE:LINE of the config statement that is running now.
local function caller_line(file)
  for level = 3, 12 do
    local info = debug.getinfo(level, "Sl")
    if not info then break end
    if info.source == "@" .. file or info.source == file then
      return info.currentline
    end
  end
  return 0
end

local function is_loopback(host)
  return host == "localhost" or host == "::1" or host:match("^127%.%d+%.%d+%.%d+$") ~= nil
end

local function check_fields(where, t, allowed)
  if type(t) ~= "table" then fail(where, "expected a table, got a %s", type(t)) end
  for k in pairs(t) do
    if type(k) ~= "number" and not allowed[k] then
      fail(where, 'unknown field "%s"', tostring(k))
    end
  end
end

local function want(where, field, v, kind)
  if v ~= nil and type(v) ~= kind then
    fail(where, "%s must be a %s, got a %s", field, kind, type(v))
  end
  return v
end

local function want_number(where, field, v, lo, hi, integer)
  if v == nil then return nil end
  if type(v) ~= "number" or v ~= v then
    fail(where, "%s must be a number, got %s", field, type(v) == "number" and "nan" or
      ("a " .. type(v)))
  end
  if integer and v % 1 ~= 0 then fail(where, "%s must be a whole number, got %s", field, v) end
  if hi == nil and lo and v < lo then
    fail(where, "%s must be at least %s, got %s", field, tostring(lo), tostring(v))
  end
  if (lo and v < lo) or (hi and v > hi) then
    fail(where, "%s must be between %s and %s, got %s", field, tostring(lo), tostring(hi),
      tostring(v))
  end
  return v
end

-- Keys of t in a stable order, so that of several mistakes the same one
-- is reported on every run.
local function sorted_keys(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b)
    if type(a) ~= type(b) then return type(a) < type(b) end
    if type(a) == "string" or type(a) == "number" then return a < b end
    return tostring(a) < tostring(b)
  end)
  return keys
end

-- A non-empty list (keys 1..n, no holes, nothing else); returns n.
local function list_of(where, field, v)
  if type(v) ~= "table" then fail(where, "%s must be a list, got a %s", field, type(v)) end
  local n, count = #v, 0
  for k in pairs(v) do
    if type(k) ~= "number" or k % 1 ~= 0 or k < 1 then
      fail(where, "%s must be a list, found key %s", field,
        type(k) == "string" and ('"' .. k .. '"') or tostring(k))
    end
    count = count + 1
  end
  if count ~= n then fail(where, "%s must be a list without holes (nil entries)", field) end
  if n == 0 then fail(where, "%s must be a non-empty list", field) end
  return n
end

-- A list of whole numbers in lo..hi (statuses), at most max entries;
-- returns a copy.
local function int_list(where, field, v, lo, hi, max)
  if v == nil then return nil end
  local n = list_of(where, field, v)
  if max and n > max then fail(where, "%s has %d entries, at most %d are allowed", field, n, max) end
  local out = {}
  for i = 1, n do
    local x = v[i]
    if type(x) ~= "number" or x % 1 ~= 0 or x < lo or x > hi then
      fail(where, "%s[%d] must be a whole number from %d to %d, got %s", field, i, lo, hi,
        tostring(x))
    end
    out[i] = x
  end
  return out
end

local CHECKS = { tcp = true, http = true, connect = true }
-- The core's limits for a probe (core/probe.c).
local PROBE_PATH_MAX, PROBE_EXPECT_MAX = 512, 16

-- url = "http://host[:port][/path]" of an http check: host, port, path.
local function parse_check_url(where, u)
  if type(u) ~= "string" then
    fail(where, 'url = "http://host[:port]/path" is required for check = "http"')
  end
  if u:find("[%s%c]") then fail(where, "url must not contain spaces or control characters") end
  local scheme, rest = u:match("^(%a[%w+.-]*)://(.*)$")
  -- The URL itself is not echoed: it might carry credentials.
  if not scheme then fail(where, "url must be an http:// URL (http://host[:port]/path)") end
  if scheme:lower() ~= "http" then
    fail(where, "url must be an http:// URL, not %s://", scheme)
  end
  local hostport, path = rest:match("^([^/?#]*)(.*)$")
  if hostport:find("@", 1, true) then fail(where, "url must not carry credentials") end
  if hostport == "" then fail(where, "url: missing host") end
  local host, port = url.parse_hostport(hostport, 80)
  if not host then fail(where, "url: %s", port) end
  path = path:gsub("#.*$", "")
  if path == "" then path = "/" elseif path:sub(1, 1) == "?" then path = "/" .. path end
  if #path > PROBE_PATH_MAX then
    fail(where, "url: the path is longer than %d bytes", PROBE_PATH_MAX)
  end
  return host, port, path
end

-- health = { check, target | url, expect, interval, timeout, rise, fall,
-- concurrency }: always returned, with defaults, so passive health has
-- its rise/fall/interval even without a check.  Defaults are HAProxy's:
-- a probe every 2 s, up after 2 passes, down after 3 failures.
local function parse_health(where, t, kind)
  local h = { interval = 2, timeout = 2, rise = 2, fall = 3 }
  if t == nil then return h end
  where = where .. ": health"
  check_fields(where, t, { check = true, target = true, url = true, expect = true,
    interval = true, timeout = true, rise = true, fall = true, concurrency = true,
    path = true, host = true })
  if t.check ~= nil and not CHECKS[t.check] then
    fail(where, 'check must be "tcp", "http" or "connect", got %s',
      type(t.check) == "string" and ('"' .. t.check .. '"') or ("a " .. type(t.check)))
  end
  h.check = t.check
  h.interval = want_number(where, "interval", t.interval, 0.05, 3600) or 2
  h.timeout = want_number(where, "timeout", t.timeout, 0.01, 3600) or math.min(2, h.interval)
  if h.timeout > h.interval then
    fail(where, "timeout (%s) must not be longer than interval (%s)", h.timeout, h.interval)
  end
  h.rise = want_number(where, "rise", t.rise, 1, 100, true) or 2
  h.fall = want_number(where, "fall", t.fall, 1, 100, true) or 3
  h.concurrency = want_number(where, "concurrency", t.concurrency, 1, 10000, true)
  if t.check == "http" then
    if t.target ~= nil then fail(where, 'target is for check = "connect" (http uses url)') end
    if t.url == nil and (t.path ~= nil or t.host ~= nil or kind == "backends") then
      M.parse_backend_check(where, t, h)
    else
      if t.path ~= nil or t.host ~= nil then
        fail(where, "path and host are for a backend pool's check (a GET to each backend), " ..
          "url for a proxy pool's (a GET through each proxy): not both [FERRY-0232]")
      end
      h.host, h.port, h.path = parse_check_url(where, t.url)
    end
    h.expect = int_list(where, "expect", t.expect, 100, 599, PROBE_EXPECT_MAX)
  elseif t.check == "connect" then
    if t.url ~= nil then fail(where, 'url is for check = "http" (connect uses target)') end
    if type(t.target) ~= "string" then
      fail(where, 'target = "host:port" is required for check = "connect"')
    end
    local host, port = url.parse_hostport(t.target)
    if not host then fail(where, "target: %s", port) end
    h.host, h.port = host, port
  end
  if t.check ~= "http" and t.check ~= "connect" then
    if t.url ~= nil then fail(where, 'url needs check = "http"') end
    if t.target ~= nil then fail(where, 'target needs check = "connect"') end
  end
  if t.check ~= "http" and t.expect ~= nil then fail(where, 'expect needs check = "http"') end
  if t.check ~= "http" and (t.path ~= nil or t.host ~= nil) then
    fail(where, 'path and host need check = "http" [FERRY-0232]')
  end
  return h
end

-- check = "http" of a backend pool: path = "/health" (origin form, to
-- each backend itself), host = the Host header (default: the backend's
-- host:port).  h.backend marks it; the pool checks its kind afterwards
-- (check_lb).
function M.parse_backend_check(where, t, h)
  local path = t.path == nil and "/" or t.path
  if type(path) ~= "string" or path:sub(1, 1) ~= "/" or #path > PROBE_PATH_MAX or
     path:find("[%s%c]") then
    fail(where, "path must start with / and be at most %d bytes without spaces or control " ..
      "characters [FERRY-0232]", PROBE_PATH_MAX)
  end
  if t.host ~= nil and (type(t.host) ~= "string" or not t.host:match("^[%w.:%[%]-]+$") or
     #t.host > 255) then
    fail(where, "host must be a host name (the Host header of the check) [FERRY-0232]")
  end
  h.backend, h.path, h.host = true, path, t.host
end

-- Load-balancing fields of a pool: slowstart, max_ejected, backups.
--   slowstart = seconds (0 = off): a member that comes back ramps its
--     share of traffic over that time;
--   max_ejected = "50%" or a count: at most that many members of a tier
--     ejected (down, breaker open) at once.
-- Also checks what needs the pool's kind (a backend check) and that a
-- pool has a primary.
function M.parse_lb(where, t, p)
  local ss = t.slowstart
  if ss ~= nil and (type(ss) ~= "number" or ss ~= ss or ss < 0 or ss > 3600) then
    fail(where, "slowstart must be a number of seconds from 0 (off) to 3600 [FERRY-0230]")
  end
  p.slowstart = ss and ss > 0 and ss or nil
  local me = t.max_ejected
  if me ~= nil then
    if type(me) == "string" then
      local pct = me:match("^(%d+%.?%d*)%%$")
      pct = tonumber(pct)
      if not pct or pct > 100 then
        fail(where, 'max_ejected must be a share like "50%%" (0 to 100 %%) or a count [FERRY-0231]')
      end
      p.max_ejected = { percent = pct }
    elseif type(me) == "number" and me >= 0 and me % 1 == 0 and me <= 100000 then
      p.max_ejected = { count = me }
    else
      fail(where, 'max_ejected must be a share like "50%%" (0 to 100 %%) or a count [FERRY-0231]')
    end
  end
  local h = p.health
  if h and p.kind == "backends" and h.check == "connect" then
    fail(where, 'health: check = "connect" tunnels through a proxy; a backend pool checks with ' ..
      '"tcp" or "http" (path = "/health") [FERRY-0234]')
  end
  if h and p.kind == "backends" and h.check == "http" and not h.backend then
    fail(where, 'health: a backend pool\'s check = "http" takes path = "/health" (and ' ..
      'host), a GET to each backend; url is for a proxy pool [FERRY-0232]')
  end
  if h and h.backend and (p.kind or "proxies") ~= "backends" then
    fail(where, 'health: path is for a backend pool\'s check; a proxy pool\'s check = "http" ' ..
      'takes url = "http://host/path", a GET through each proxy [FERRY-0232]')
  end
  local members = p.proxies or {}
  local primary = false
  for _, px in ipairs(members) do
    if not px.backup then primary = true end
  end
  if #members > 0 and not primary then
    fail(where, "every member is a backup: a pool needs at least one primary [FERRY-0233]")
  end
end

-- Settings of every breaker, whatever its policy; the core acts on them.
local BREAKER_GENERIC = { policy = true, cooldown = true, trials = true, max_cooldown = true }
local COOLDOWN_MAX = 86400 * 7

-- breaker = { policy, cooldown, trials, max_cooldown, ... }, false to go
-- without, absent for the default (5 failures in a row, 30 s).  Keys the
-- core does not know are the policy's: they must be numbers or booleans,
-- and the plugin's check() judges them when the config is applied.
-- connections = { max, queue, queue_timeout, idle, idle_timeout, max_requests }:
-- upstream connection slots, their wait queue and the idle connections
-- kept (core/uppool.c has the defaults; absent fields keep them).
local CONNECTION_FIELDS = { max = true, queue = true, queue_timeout = true, idle = true,
  idle_timeout = true, max_requests = true }

local function parse_connections(where, t)
  if t == nil then return nil end
  where = where .. ": connections"
  check_fields(where, t, CONNECTION_FIELDS)
  return {
    max = want_number(where, "max", t.max, 0, 100000, true),
    queue = want_number(where, "queue", t.queue, 0, 100000, true),
    queue_timeout = want_number(where, "queue_timeout", t.queue_timeout, 0.001, 3600),
    idle = want_number(where, "idle", t.idle, 0, 10000, true),
    idle_timeout = want_number(where, "idle_timeout", t.idle_timeout, 0.001, 86400),
    max_requests = want_number(where, "max_requests", t.max_requests, 0, 1e9, true),
  }
end
M.parse_connections = parse_connections

-- retry = { tries, backoff, max_backoff, jitter, budget, budget_min, on }:
-- what a pool retries, how long a retry waits and how many may run at
-- once (core/retry.c).  `retries` (retries after the first try) and
-- `tries` (tries in all) say the same thing: one of them.  Defaults per
-- kind of pool: proxy pools keep every failure retried 10 ms doubling
-- up to 0.5 s with no budget; backend pools 3 tries, 100 ms doubling up
-- to 2 s, a budget of 20 % (at least 3).
local RETRY_FIELDS = { tries = true, backoff = true, max_backoff = true, jitter = true,
  budget = true, budget_min = true, on = true }
local RETRY_JITTER = { none = true, equal = true, full = true }
-- Failure conditions `on` may name (the bits of ferry_retry_on).
local RETRY_ON = { ["connect-failure"] = true, refused = true, reset = true, timeout = true }
local RETRY_DEFAULTS = {
  proxies = { backoff = 0.01, max_backoff = 0.5, budget = false, budget_min = 3 },
  backends = { backoff = 0.1, max_backoff = 2, budget = 20, budget_min = 3 },
}
local RETRY_DEFAULT_ON = { "connect-failure", "reset", "timeout" }

local function parse_retry_on(where, list)
  if type(list) ~= "table" then fail(where, "on must be a list of conditions, got a %s",
    type(list)) end
  local on, statuses, names = {}, {}, {}
  for i, v in ipairs(list) do
    local name = type(v) == "number" and string.format("%d", v) or v
    if type(name) ~= "string" then fail(where, "on[%d] must be a string, got a %s", i, type(v)) end
    if RETRY_ON[name] then
      on[name] = true
    elseif name == "5xx" then
      for st = 500, 599 do statuses[st] = true end
    elseif name:match("^5%d%d$") then
      statuses[tonumber(name)] = true
    else
      fail(where, 'on[%d]: "%s" is not connect-failure, refused, reset, timeout, a status ' ..
        '500-599 or "5xx"', i, name)
    end
    names[#names + 1] = name
  end
  for k in pairs(list) do
    if type(k) ~= "number" then fail(where, "on must be a list, got a field \"%s\"", tostring(k)) end
  end
  return on, statuses, names
end

local function parse_retry_fields(where, t, kind, retries)
  local d = RETRY_DEFAULTS[kind] or RETRY_DEFAULTS.proxies
  local r = { backoff = d.backoff, max_backoff = d.max_backoff, jitter = "equal",
    budget = d.budget, budget_min = d.budget_min }
  local on, statuses, names = parse_retry_on(where, RETRY_DEFAULT_ON)
  local tries
  if t == false then
    tries = 1
  elseif t ~= nil then
    check_fields(where, t, RETRY_FIELDS)
    tries = want_number(where, "tries", t.tries, 1, RETRIES_MAX + 1, true)
    r.backoff = want_number(where, "backoff", t.backoff, 0, 60) or r.backoff
    r.max_backoff = want_number(where, "max_backoff", t.max_backoff, 0, 300)
      or math.max(r.max_backoff, r.backoff)
    if r.max_backoff < r.backoff then
      fail(where, "max_backoff (%s) must not be under backoff (%s)", tostring(r.max_backoff),
        tostring(r.backoff))
    end
    r.jitter = want(where, "jitter", t.jitter, "string") or r.jitter
    if not RETRY_JITTER[r.jitter] then
      fail(where, 'jitter must be "equal", "full" or "none", got "%s"', r.jitter)
    end
    if t.budget == false then
      r.budget = false
    elseif t.budget ~= nil then
      r.budget = want_number(where, "budget", t.budget, 0, 100)
    end
    r.budget_min = want_number(where, "budget_min", t.budget_min, 0, 100000, true) or r.budget_min
    if t.on ~= nil then on, statuses, names = parse_retry_on(where, t.on) end
  end
  if tries and retries then
    fail(where, "retries and retry.tries say the same thing (retries = tries - 1): give " ..
      "one [FERRY-0236]")
  end
  r.on, r.statuses, r.on_names = on, statuses, names
  r.tries = tries or (retries and retries + 1) or 3
  return r
end

-- The pool's retry settings; p.retries is set from them.  Errors carry
-- FERRY-0235 (or FERRY-0236 for retries given twice).
local function parse_retry(where, t, kind, retries)
  local ok, r = pcall(parse_retry_fields, where .. ": retry", t, kind, retries)
  if not ok then
    if getmetatable(r) == ConfigError and not r.msg:find("[FERRY-", 1, true) then
      r.msg = r.msg .. " [FERRY-0235]"
    end
    error(r, 0)
  end
  return r
end

-- cache = { size, max_object, ttl, lock_timeout } on a pool, `direct` or a
-- listener: the HTTP cache (core/cache.c).  Sizes are bytes, or strings
-- with KB / MB / GB (1024-based); the one parser is parse_size.
local CACHE_FIELDS = { size = true, max_object = true, ttl = true, lock_timeout = true }
local SIZE_UNITS = { [""] = 1, B = 1, K = 1024, KB = 1024, M = 1024 ^ 2, MB = 1024 ^ 2,
  G = 1024 ^ 3, GB = 1024 ^ 3 }
local CACHE_SIZE_MAX = 64 * 1024 ^ 3

local function parse_size(where, field, v)
  if v == nil then return nil end
  local n, unit
  if type(v) == "number" then
    n, unit = v, ""
  elseif type(v) == "string" then
    local num, u = v:match("^%s*(%d+%.?%d*)%s*(%a*)%s*$")
    n, unit = tonumber(num), u and u:upper()
  end
  if not n or not SIZE_UNITS[unit] or n ~= n then
    fail(where, '%s: expected bytes or a size like "100MB" (KB, MB, GB), got %s [FERRY-0245]',
      field, tostring(v))
  end
  n = math.floor(n * SIZE_UNITS[unit])
  if n < 1 or n > CACHE_SIZE_MAX then
    fail(where, "%s: between 1 byte and 64GB, got %s [FERRY-0245]", field, tostring(v))
  end
  return n
end
M.parse_size = parse_size

local function parse_cache(where, t)
  if t == nil or t == false then return nil end
  where = where .. ": cache"
  if type(t) ~= "table" then
    fail(where, "expected a table like { size = \"100MB\", max_object = \"1MB\" } [FERRY-0246]")
  end
  check_fields(where, t, CACHE_FIELDS)
  local c = {
    size = parse_size(where, "size", t.size) or 100 * 1024 ^ 2,
    max_object = parse_size(where, "max_object", t.max_object) or 1024 ^ 2,
    ttl = want_number(where, "ttl", t.ttl, 0, 86400 * 365) or 0,
    lock_timeout = want_number(where, "lock_timeout", t.lock_timeout, 0.001, 3600) or 5,
  }
  if c.max_object > c.size then
    fail(where, "max_object (%d bytes) is larger than size (%d bytes) [FERRY-0247]",
      c.max_object, c.size)
  end
  return c
end
M.parse_cache = parse_cache

local function parse_breaker(where, t)
  if t == false then return nil end
  if t == nil then
    return { policy = "consecutive", failures = 5, cooldown = 30, trials = 1, max_cooldown = 480 }
  end
  where = where .. ": breaker"
  if type(t) ~= "table" then fail(where, "expected a table or false, got a %s", type(t)) end
  local b = {}
  for _, k in ipairs(sorted_keys(t)) do
    local v = t[k]
    if type(k) ~= "string" then
      fail(where, "unexpected value at [%s] (settings are written name = value)", tostring(k))
    end
    if not BREAKER_GENERIC[k] and type(v) ~= "number" and type(v) ~= "boolean" then
      fail(where, "%s must be a number or a boolean, got a %s", k, type(v))
    end
    b[k] = v
  end
  b.policy = want(where, "policy", t.policy, "string") or "consecutive"
  if not b.policy:match("^[%w_]+$") then
    fail(where, 'policy "%s" is not a plugin name (letters, digits, _)', b.policy)
  end
  b.cooldown = want_number(where, "cooldown", t.cooldown, 0.01, COOLDOWN_MAX) or 30
  b.trials = want_number(where, "trials", t.trials, 1, 100, true) or 1
  if t.max_cooldown ~= nil then
    b.max_cooldown = want_number(where, "max_cooldown", t.max_cooldown, 0.01, COOLDOWN_MAX)
    if b.max_cooldown < b.cooldown then
      fail(where, "max_cooldown (%s) must not be shorter than cooldown (%s)", b.max_cooldown,
        b.cooldown)
    end
  else
    b.max_cooldown = math.min(b.cooldown * 16, math.max(COOLDOWN_MAX, b.cooldown))
  end
  return b
end

-- The response body ferry looks at for ban markers (core: capture size).
local BODY_PEEK = 4096
local BACKOFF_MAX = 86400 * 7

-- ban = { status = {...}, body = {...}, backoff, max_backoff, retry }.
local function parse_ban(where, t, has_script)
  if t == nil then return nil end
  where = where .. ": ban"
  check_fields(where, t, { status = true, body = true, backoff = true, max_backoff = true,
    retry = true })
  local b = {}
  b.status = int_list(where, "status", t.status, 100, 599)
  if t.body ~= nil then
    b.body = {}
    for i = 1, list_of(where, "body", t.body) do
      local m = t.body[i]
      if type(m) ~= "string" or m == "" then
        fail(where, "body[%d] must be a non-empty string, got %s", i,
          type(m) == "string" and '""' or ("a " .. type(m)))
      end
      if #m > BODY_PEEK then
        fail(where, "body[%d] is longer than the %d bytes of body ferry looks at", i, BODY_PEEK)
      end
      b.body[i] = m
    end
  end
  if not b.status and not b.body and not has_script then
    fail(where, "needs status or body (or a script whose on_response bans)")
  end
  b.backoff = want_number(where, "backoff", t.backoff, 0.01, BACKOFF_MAX) or 60
  if t.max_backoff ~= nil then
    b.max_backoff = want_number(where, "max_backoff", t.max_backoff, 0.01, BACKOFF_MAX)
    if b.max_backoff < b.backoff then
      fail(where, "max_backoff (%s) must not be shorter than backoff (%s)", b.max_backoff,
        b.backoff)
    end
  else
    b.max_backoff = math.max(3600, b.backoff)
  end
  -- Retry on ban: tries through other proxies when a ban hits a request
  -- (absent: 0, no retry).
  b.retry = want_number(where, "retry", t.retry, 0, RETRIES_MAX, true)
  return b
end

-- rate = { limit, per, burst, queue, queue_timeout }: the token bucket
-- of every (proxy, exchange) pair (core/rate.c).
local RATE_LIMIT_MAX = 1e9
local RATE_QUEUE_MAX = 100000

local function parse_rate(where, t)
  if t == nil then return nil end
  where = where .. ": rate"
  if type(t) ~= "table" then fail(where, "expected a table { limit = N, per = seconds }") end
  check_fields(where, t, { limit = true, per = true, burst = true, queue = true,
                           queue_timeout = true })
  if t.limit == nil then fail(where, "limit is required (tokens per `per` seconds)") end
  local r = {}
  r.limit = want_number(where, "limit", t.limit, 0.001, RATE_LIMIT_MAX)
  r.per = want_number(where, "per", t.per, 0.001, 86400) or 1
  r.burst = want_number(where, "burst", t.burst, 1, RATE_LIMIT_MAX) or r.limit
  r.queue = want_number(where, "queue", t.queue, 0, RATE_QUEUE_MAX, true) or 256
  r.queue_timeout = want_number(where, "queue_timeout", t.queue_timeout, 0.001, 3600) or 5
  return r
end

-- nil, or why path cannot be read as a file.  io.open succeeds on a
-- directory; only reading from it fails.
local function unreadable(path)
  local f, err = io.open(path, "r")
  if not f then return ((err or path):gsub("^.-: ", "")) end
  local _, rerr = f:read(0)
  f:close()
  if rerr then return (rerr:gsub("^.-: ", "")) end
  return nil
end

local function resolve_path(dir, p)
  if p:sub(1, 1) == "/" then return p end
  return dir .. "/" .. p
end

-- An entry of proxies = { ... }: a URL, or a table of fields checked by
-- the validator the inventory uses too (proxy_entry.lua).
local function parse_proxy(where, i, entry, dir)
  local pw = string.format("%s: proxies[%d]", where, i)
  local p, err = proxy_entry.validate(type(entry) == "string" and { url = entry } or entry,
    proxy_entry.CONFIG, { resolve = function(f) return resolve_path(dir, f) end })
  if not p then fail(pw, "%s", err) end
  return p
end

-- The innermost line of `file` on the stack of an error being raised
-- (called from the error handler), or nil.
local function raised_line(file)
  for level = 3, 40 do
    local info = debug.getinfo(level, "Sl")
    if not info then break end
    if info.source == "@" .. file and (info.currentline or 0) > 0 then
      return info.currentline
    end
  end
  return nil
end

-- "file:line: message" of an error the config's own code raised: a
-- string that names no place gets the line it was raised at (or just
-- the file), any other value says what it is.  Never ":0:".
local function error_message(file, err, line)
  local where = line and string.format("%s:%d: ", file, line) or (file .. ": ")
  if type(err) == "string" then
    -- Anchored and without nested repetition: linear in the message.
    if err:find("^[^:\n]+:%d+: ") then return err end
    return where .. err
  end
  if type(err) == "number" then return where .. tostring(err) end
  local mt = getmetatable(err)
  if type(mt) == "table" and mt.__tostring then
    local ok, s = pcall(tostring, err)
    if ok and type(s) == "string" then return where .. s end
  end
  return string.format("%serror object is not a string (%s)", where, type(err))
end

-- What a listen block may speak (core/inbound.h has one table per name).
local LISTEN_PROTOCOLS = { http = true, socks5 = true, socks4 = true, mixed = true,
  reverse = true }

-- Wildcard addresses: a bind there takes the port on every address.
local WILDCARD = { ["0.0.0.0"] = true, ["::"] = true, ["*"] = true, [""] = true }

local function same_host(a, b)
  if a == "localhost" then a = "127.0.0.1" end
  if b == "localhost" then b = "127.0.0.1" end
  return a == b or WILDCARD[a] or WILDCARD[b]
end

local function listener_desc(l)
  if l.line == 0 then
    return string.format("the default proxy listener (%s:%d, as no listen is declared)",
      l.host, l.port)
  end
  return string.format('%s "%s" (line %d)', l.protocol == "admin" and "admin" or "listen",
    l.name, l.line)
end

-- Two listeners (proxy or admin) on one address: ferry run would fail
-- to bind the second, so the config is refused here, for ferry check too.
local function check_addresses(file, listeners)
  for j = 2, #listeners do
    local b = listeners[j]
    for i = 1, j - 1 do
      local a = listeners[i]
      if a.port and b.port and a.port == b.port and same_host(a.host, b.host) then
        local first, second = a, b
        if (a.line or 0) > (b.line or 0) then first, second = b, a end
        return string.format('%s:%d: %s "%s": address %s:%d is already used by %s [FERRY-0130]',
          file, second.line or 0, second.protocol == "admin" and "admin" or "listen",
          second.name, second.host, second.port, listener_desc(first))
      end
    end
  end
  return nil
end

-- Run the config chunk and collect what its statements declare.
local function evaluate(chunk, file)
  local dir = file:match("^(.*)/[^/]*$") or "."
  local cfg = {
    file = file, dir = dir, listeners = {}, pools = {}, pool_order = {}, exchanges = {},
    plugin_dirs = {}, timeouts = {}, log = { level = "info", access = true },
    http = { via = true, via_name = "ferry" },
  }
  for k, v in pairs(DEFAULT_TIMEOUTS) do cfg.timeouts[k] = v end
  local names = { listen = {}, exchange = {} }
  local env = {}

  local function at(what)
    return string.format("%s:%d: %s", file, caller_line(file), what)
  end

  function env.listen(t)
    local where = at("listen")
    if type(t) ~= "table" then fail(where, "expected a table, got a %s", type(t)) end
    local l = { line = caller_line(file) }
    l.name = want(where, "name", t.name, "string") or ("listen" .. (#cfg.listeners + 1))
    if not l.name:match("^[%w_.-]+$") or #l.name > 64 then
      fail(where, "name must be 1 to 64 letters, digits, _ . -")
    end
    where = at(string.format('listen "%s"', l.name))
    check_fields(where, t, { name = true, addr = true, protocol = true, users = true, open = true,
                             auth_fail_limit = true, auth_fail_window = true, tls = true,
                             allow_pool_header = true, pool = true, forwarded = true,
                             trust_forwarded = true, cache = true })
    l.cache = parse_cache(where, t.cache)
    if names.listen[l.name] then fail(where, "a listener with this name already exists") end
    names.listen[l.name] = true
    local host, port = url.parse_hostport(want(where, "addr", t.addr, "string") or "127.0.0.1:8080")
    if not host then fail(where, "addr: %s", port) end
    l.host, l.port = host, port
    l.protocol = want(where, "protocol", t.protocol, "string") or "http"
    if l.protocol == "admin" then
      fail(where, 'protocol "admin": declare the admin plane with admin { addr = ... }')
    end
    if not LISTEN_PROTOCOLS[l.protocol] then
      fail(where, 'protocol "%s" is not one of "http", "socks5", "socks4", "mixed", "reverse"',
        l.protocol)
    end
    M.parse_reverse_listen(where, t, l)
    if t.tls ~= nil then
      if l.protocol ~= "http" and l.protocol ~= "reverse" then
        fail(where, 'tls: only for protocol = "http" or "reverse"')
      end
      local tls, terr = tls_opts.listener(t.tls, function(f) return resolve_path(dir, f) end)
      if not tls then fail(where, "%s", terr) end
      l.tls = tls
    end
    l.open = want(where, "open", t.open, "boolean") or false
    -- X-Ferry-Pool (and a user name's -pool-): true for any configured
    -- pool, or a list of pool names ("direct" allowed); checked against
    -- the pools once all are declared.
    local aph = t.allow_pool_header
    if aph == true then
      l.allow_pool_header = true
    elseif type(aph) == "table" then
      l.allow_pool_header, l.allow_pool_list = {}, {}
      for i, n in ipairs(aph) do
        if type(n) ~= "string" then fail(where, "allow_pool_header[%d]: expected a pool name", i) end
        l.allow_pool_header[n] = true
        l.allow_pool_list[i] = n
      end
      if #l.allow_pool_list == 0 then fail(where, "allow_pool_header: an empty list") end
    elseif aph ~= nil and aph ~= false then
      fail(where, "allow_pool_header: expected true, false or a list of pool names")
    end
    -- Throttling of wrong inbound credentials per client address (core/authfail.c).
    l.auth_fail_limit = want_number(where, "auth_fail_limit", t.auth_fail_limit, 1, 1000000, true)
      or AUTH_FAIL_LIMIT
    l.auth_fail_window = want_number(where, "auth_fail_window", t.auth_fail_window, 0.1, 86400)
      or AUTH_FAIL_WINDOW
    l.users = {}
    if t.users ~= nil then
      if type(t.users) ~= "table" then fail(where, "users must be a list") end
      for i, u in ipairs(t.users) do
        local user, pass
        if type(u) == "string" then
          user, pass = u:match("^([^:]+):(.*)$")
        elseif type(u) == "table" then
          user, pass = u.user, u.pass
        end
        if type(user) ~= "string" or user == "" or type(pass) ~= "string" then
          fail(where, 'users[%d]: expected "user:pass" or { user = ..., pass = ... }', i)
        end
        -- The core's bounds: checked here so a reload never fails half-way.
        if #user + #pass + 1 >= 512 then fail(where, "users[%d]: user:pass over 511 bytes", i) end
        if i > 256 then fail(where, "at most 256 users per listener") end
        l.users[#l.users + 1] = { user = user, pass = pass }
      end
    end
    if l.protocol == "socks4" and #l.users > 0 then
      fail(where, 'protocol "socks4" cannot check users (SOCKS4 has no password); ' ..
        'use "socks5", or "mixed" to serve SOCKS5 with users and refuse SOCKS4')
    end
    -- One rule for every forward listener kind, HTTP or SOCKS (a reverse
    -- listener only reaches its own backends).
    if l.protocol ~= "reverse" and not is_loopback(l.host) and #l.users == 0 and not l.open then
      fail(where, "refusing to listen on %s without users; set open = true to allow an " ..
        "open proxy", l.host)
    end
    cfg.listeners[#cfg.listeners + 1] = l
  end

  -- The admin plane: an HTTP listener and/or the console's unix socket,
  -- opened and reconciled on reload like any listener.
  function env.admin(t)
    local where = at("admin")
    if type(t) ~= "table" then fail(where, "expected a table, got a %s", type(t)) end
    if cfg.admin then fail(where, "admin is declared twice") end
    check_fields(where, t, { addr = true, socket = true, token = true, tokens = true })
    for _, k in ipairs { "addr", "socket", "token" } do want(where, k, t[k], "string") end
    if t.addr == nil and t.socket == nil then
      fail(where, "give addr (HTTP), socket (console) or both")
    end
    local tokens, why = require("ferry.scopes").tokens(t)
    if not tokens then fail(where, "%s", why) end
    local line = caller_line(file)
    if t.addr then
      local host, port = url.parse_hostport(t.addr)
      if not host then fail(where, "addr: %s", port) end
      if not is_loopback(host) and #tokens == 0 then
        fail(where, "refusing an admin listener on %s without a token", host)
      end
      if names.listen.admin then fail(where, 'a listener named "admin" already exists') end
      names.listen.admin = true
      cfg.listeners[#cfg.listeners + 1] = { name = "admin", host = host, port = port,
        protocol = "admin", users = {}, open = false, line = line }
    end
    if t.socket then
      if t.socket == "" or #t.socket > 100 then fail(where, "socket: a path of 1 to 100 bytes") end
      cfg.listeners[#cfg.listeners + 1] = { name = "console", path = t.socket,
        protocol = "admin", users = {}, open = false, line = line }
    end
    cfg.admin = { addr = t.addr, socket = t.socket, token = t.token, tokens = tokens }
  end

  -- key / key_file: seal proxy credentials in the store (ferry.store_key).
  -- postgres / resync / queue / timeout: the fleet's store (ferry.fleet_config).
  function env.store(t)
    local where = at("store")
    check_fields(where, t, { path = true, key = true, key_file = true, postgres = true,
      resync = true, queue = true, timeout = true })
    want(where, "path", t.path, "string")
    local s, why = require("ferry.store_key").from_config(t, function(p)
      return resolve_path(dir, p) end)
    if not s then fail(where, "%s", why) end
    s, why = require("ferry.fleet_config").store(t, s)
    if not s then fail(where, "%s", why) end
    cfg.store = s
    cfg.store_line = caller_line(file)
  end

  -- This node of a fleet (ferry.fleet_config).
  function env.node(t)
    local where = at("node")
    if cfg.node then fail(where, "node is declared twice [FERRY-0254]") end
    local n, why = require("ferry.fleet_config").node(t)
    if not n then fail(where, "%s", why) end
    cfg.node = n
  end

  -- The proxy broker of the admin plane (docs/broker.md).
  function env.broker(t)
    local where = at("broker")
    if type(t) ~= "table" then fail(where, "expected a table, got a %s", type(t)) end
    if cfg.broker then fail(where, "broker is declared twice") end
    check_fields(where, t, { ttl = true })
    cfg.broker = { ttl = want_number(where, "ttl", t.ttl, 1, 86400, true) or 300 }
  end

  -- The pseudo-pool "direct" (no proxy) has no pool block: this sets
  -- what it may configure.
  function env.direct(t)
    local where = at("direct")
    check_fields(where, t, { connections = true, cache = true })
    if cfg.direct then fail(where, "direct is already set") end
    cfg.direct = { connections = parse_connections(where, t.connections),
                   cache = parse_cache(where, t.cache) }
  end

  function env.plugins(t)
    local where = at("plugins")
    if type(t) ~= "table" then fail(where, "expected a list of directories") end
    for i, d in ipairs(t) do
      if type(d) ~= "string" then fail(where, "entry %d must be a string", i) end
      cfg.plugin_dirs[#cfg.plugin_dirs + 1] = resolve_path(dir, d)
    end
  end

  function env.pool(name)
    local where = at("pool")
    if type(name) ~= "string" or not name:match("^[%w_.-]+$") or #name > 64 then
      fail(where, "pool name must be 1 to 64 letters, digits, _ . -")
    end
    where = at(string.format('pool "%s"', name))
    if name == "direct" then fail(where, '"direct" is reserved for going without a proxy') end
    -- Metric labels use these for requests without a pool and for overflow.
    if name == "none" or name == "other" then fail(where, '"%s" is reserved', name) end
    if cfg.pools[name] then fail(where, "a pool with this name already exists") end
    local line = caller_line(file)
    return function(t)
      check_fields(where, t, { strategy = true, retries = true, proxies = true, breaker = true,
        health = true, all_down = true, panic = true, timeouts = true, latency_ceiling = true,
        session_ttl = true, connections = true, backends = true, host = true, tls = true,
        slowstart = true, max_ejected = true, retry = true, cache = true, broker = true })
      local p = { name = name, line = line }
      p.kind = M.pool_kind(where, t)
      p.connections = parse_connections(where, t.connections)
      p.cache = parse_cache(where, t.cache)
      p.strategy = want(where, "strategy", t.strategy, "string") or "health_score"
      p.retries = want_number(where, "retries", t.retries, 0, RETRIES_MAX, true)
      p.all_down = want(where, "all_down", t.all_down, "string") or "any"
      if not ALL_DOWN[p.all_down] then
        fail(where, 'all_down must be "any", "direct" or "fail", got "%s"', p.all_down)
      end
      if p.kind == "backends" and p.all_down == "direct" then
        fail(where, 'all_down = "direct" is for pools of proxies: a backend pool has nowhere ' ..
          'direct to go (use "any" or "fail")')
      end
      p.panic = want_number(where, "panic", t.panic, 0, 100) or 0
      p.latency_ceiling = want_number(where, "latency_ceiling", t.latency_ceiling, 1) or 1000
      p.session_ttl = want_number(where, "session_ttl", t.session_ttl, 0.001, 86400 * 30) or 600
      p.breaker = parse_breaker(where, t.breaker)
      p.health = parse_health(where, t.health, p.kind)
      if t.timeouts ~= nil then
        check_fields(where .. ": timeouts", t.timeouts, { connect = true, first_byte = true })
        p.timeouts = {
          connect = want_number(where, "timeouts.connect", t.timeouts.connect, 0.001),
          first_byte = want_number(where, "timeouts.first_byte", t.timeouts.first_byte, 0.001),
        }
      end
      -- Retries after the kind of pool is known (its defaults depend on it).
      p.retry = parse_retry(where, t.retry, p.kind or "proxies", p.retries)
      p.retries = p.retry.tries - 1
      if p.kind == "backends" and t.broker ~= nil then
        fail(where, "broker is for pools of proxies, not of backends [FERRY-0267]")
      end
      if p.kind == "backends" then
        M.parse_backend_pool(where, t, p, function(f) return resolve_path(dir, f) end)
        M.parse_lb(where, t, p)
        cfg.pools[name] = p
        cfg.pool_order[#cfg.pool_order + 1] = name
        return
      end
      if t.broker ~= nil then
        -- Proxies leased from brokers; `proxies` is the fallback (ferry.broker_client).
        local b, berr = require("ferry.broker_client").parse(t.broker, name, function(f)
          return resolve_path(dir, f) end)
        if not b then fail(where, "%s", berr) end
        p.broker = b
        if type(t.proxies) ~= "table" or #t.proxies == 0 then
          fail(where, "proxies: a pool with a broker needs at least one embedded proxy, its " ..
            "fallback while no lease is valid [FERRY-0267]")
        end
      end
      if type(t.proxies) ~= "table" or #t.proxies == 0 then
        fail(where, "proxies: at least one proxy is required")
      end
      p.proxies = {}
      local seen = {}
      for i, entry in ipairs(t.proxies) do
        local px = parse_proxy(where, i, entry, dir)
        local key = px.id or px.url
        if seen[key] then fail(where, "proxies[%d]: duplicate of proxies[%d]", i, seen[key]) end
        seen[key] = i
        p.proxies[i] = px
      end
      M.parse_lb(where, t, p)
      cfg.pools[name] = p
      cfg.pool_order[#cfg.pool_order + 1] = name
    end
  end

  function env.exchange(name)
    local where = at("exchange")
    if type(name) ~= "string" or not name:match("^[%w_.-]+$") or #name > 64 then
      fail(where, "exchange name must be 1 to 64 letters, digits, _ . -")
    end
    where = at(string.format('exchange "%s"', name))
    if names.exchange[name] then fail(where, "an exchange with this name already exists") end
    names.exchange[name] = true
    local line = caller_line(file)
    return function(t)
      check_fields(where, t, { hosts = true, pool = true, ban = true, script = true,
                               upgrade_tls = true, tls = true, rate = true,
                               intercept = true })
      if type(t.hosts) ~= "table" or #t.hosts == 0 then
        fail(where, "hosts: at least one host pattern is required")
      end
      local hosts = {}
      for i, h in ipairs(t.hosts) do
        if type(h) ~= "string" or not (h:match("^[%w.-]+$") or h:match("^%*%.[%w.-]+$")) then
          fail(where, 'hosts[%d]: "%s" is not a host or *.suffix pattern', i, tostring(h))
        end
        hosts[i] = h:lower()
      end
      if type(t.pool) ~= "string" then fail(where, "pool is required") end
      local ex = { name = name, hosts = hosts, pool = t.pool, line = line, where = where }
      ex.ban = parse_ban(where, t.ban, t.script ~= nil)
      ex.intercept = M.parse_intercept(where, t.intercept)
      ex.rate = parse_rate(where, t.rate)
      -- TLS origination: plain http:// requests go out over TLS, verified.
      ex.upgrade_tls = want(where, "upgrade_tls", t.upgrade_tls, "boolean") or false
      local otls, oerr = tls_opts.origin(t.tls, function(f) return resolve_path(dir, f) end)
      if not otls then fail(where, "%s [FERRY-0190]", oerr) end
      ex.tls = otls
      if t.script ~= nil then
        local script = want(where, "script", t.script, "string")
        if script == "" then fail(where, "script must be a path, got an empty string") end
        ex.script = resolve_path(dir, script)
        local why = unreadable(ex.script)
        if why then fail(where, 'script: cannot read "%s": %s', ex.script, why) end
      end
      cfg.exchanges[#cfg.exchanges + 1] = ex
    end
  end

  function env.route(fn)
    local where = at("route")
    if type(fn) ~= "function" then fail(where, "expected a function, got a %s", type(fn)) end
    if cfg.route then fail(where, "route is already set") end
    cfg.route = fn
  end

  function env.timeouts(t)
    local where = at("timeouts")
    check_fields(where, t, DEFAULT_TIMEOUTS)
    for k in pairs(DEFAULT_TIMEOUTS) do
      if t[k] ~= nil then cfg.timeouts[k] = want_number(where, k, t[k], 0.001, 86400) end
    end
  end

  function env.http(t)
    local where = at("http")
    check_fields(where, t, { via = true, via_name = true })
    if t.via ~= nil then cfg.http.via = want(where, "via", t.via, "boolean") end
    local name = want(where, "via_name", t.via_name, "string")
    if name ~= nil then
      -- A pseudonym is a token (RFC 9110 §7.6.3): nothing that could end the line.
      if #name > 64 or not name:match("^[%w!#$%%&'*+.^_`|~-]+$") then
        fail(where, "via_name must be 1 to 64 token characters (letters, digits, !#$%%&'*+.^_`|~-)")
      end
      cfg.http.via_name = name
    end
  end

  -- Ferry's CA, which mints the certificates intercepted clients see.
  function env.tls(t)
    local where = at("tls")
    if cfg.tls then fail(where, "tls is declared twice") end
    local tls, terr = tls_opts.ca(t, function(f) return resolve_path(dir, f) end)
    if not tls then fail(where, "%s", (terr:gsub("^tls: ", ""))) end
    tls.line = caller_line(file)
    cfg.tls = tls
  end

  function env.log(t)
    local where = at("log")
    check_fields(where, t, { level = true, access = true, file = true, access_file = true })
    cfg.log.line = caller_line(file)
    cfg.log.file = want(where, "file", t.file, "string") or cfg.log.file
    cfg.log.access_file = want(where, "access_file", t.access_file, "string") or
      cfg.log.access_file
    if t.level ~= nil and not LEVELS[t.level] then
      fail(where, 'level must be one of debug, info, warn, error')
    end
    cfg.log.level = t.level or cfg.log.level
    if t.access ~= nil then cfg.log.access = want(where, "access", t.access, "boolean") end
  end

  function env.env(name, default)
    if type(name) ~= "string" then
      fail(at("env"), "expected the name of an environment variable, got a %s", type(name))
    end
    local v = os.getenv(name)
    if v == nil then
      if default ~= nil then return default end
      fail(at("env"), "environment variable %s is not set", tostring(name))
    end
    return v
  end

  -- Safe globals only: a config describes, it does not act.
  for _, k in ipairs { "string", "table", "math", "pairs", "ipairs", "tostring", "tonumber",
                       "type", "select", "error", "assert", "pcall", "unpack", "next", "print" } do
    local v = _G[k]
    if type(v) == "table" then -- a copy: a config must not change the daemon's libraries
      local copy = {}
      for name, f in pairs(v) do copy[name] = f end
      v = copy
    end
    env[k] = v
  end
  env.os = { time = os.time, clock = os.clock, getenv = os.getenv }
  -- Tests for route(): exact host or "*.suffix", path prefix (ferry.match).
  local match = require("ferry.match")
  env.match_host, env.match_path = match.host, match.path
  -- route() runs per request under the core's budget: a loop around
  -- pcall must not swallow the budget's error (ferry.budget).
  env.pcall = require("ferry.budget").pcall

  setfenv(chunk, env)
  -- User code (route, hooks) runs interpreted so the core's instruction
  -- budget can stop a runaway loop: compiled traces never see hooks.
  jit.off(chunk, true)
  local ok, err = xpcall(chunk, function(e)
    if getmetatable(e) == ConfigError then return e end
    return setmetatable({ value = e, line = raised_line(file) }, Raised)
  end)
  if not ok then
    if getmetatable(err) == ConfigError then return nil, err.msg end
    -- An error the handler never saw ("not enough memory") is bare.
    if getmetatable(err) == Raised then return nil, error_message(file, err.value, err.line) end
    return nil, error_message(file, err, nil)
  end

  for _, ex in ipairs(cfg.exchanges) do
    if ex.pool ~= "direct" and not cfg.pools[ex.pool] then
      return nil, string.format('%s: pool "%s" is not declared', ex.where, ex.pool)
    end
    local ierr = M.check_intercept(cfg, ex)
    if ierr then return nil, ierr end
  end
  local proxying = false
  for _, l in ipairs(cfg.listeners) do
    if l.protocol ~= "admin" then proxying = true end
    local rerr = M.check_reverse_listen(cfg, file, l)
    if rerr then return nil, rerr end
    for _, n in ipairs(l.allow_pool_list or {}) do
      if n ~= "direct" and not cfg.pools[n] then
        return nil, string.format('%s:%d: listen "%s": allow_pool_header: pool "%s" is not ' ..
          'declared', file, l.line or 0, l.name, n)
      end
    end
  end
  if not proxying then
    table.insert(cfg.listeners, 1, { name = "proxy", host = "127.0.0.1", port = 8080,
                                     protocol = "http", users = {}, open = false, line = 0 })
  end
  local lerr = check_addresses(file, cfg.listeners)
  if lerr then return nil, lerr end
  M.index_exchanges(cfg)
  return cfg
end

-- A pool is a pool of proxies (proxies = {...}) or of backends
-- (backends = {...}), never both.
function M.pool_kind(where, t)
  if t.backends ~= nil and t.proxies ~= nil then
    fail(where, "proxies and backends exclude each other: a pool holds one kind")
  end
  if t.backends == nil then
    if t.host ~= nil then fail(where, "host is for backend pools (backends = {...})") end
    if t.tls ~= nil then
      fail(where, "tls is for backend pools; an https:// proxy takes its own tls")
    end
    return "proxies"
  end
  return "backends"
end

-- The backends of a pool: entries checked by the proxy-entry validator
-- with backend URLs; host = "..." (the Host sent to them), tls = {...}
-- (for the https:// ones).
function M.parse_backend_pool(where, t, p, resolve)
  if type(t.backends) ~= "table" or #t.backends == 0 then
    fail(where, "backends: at least one backend is required")
  end
  if t.host ~= nil then
    if type(t.host) ~= "string" or #t.host > 255 or
       not t.host:match("^[%w.%-_~]+$") and not t.host:match("^[%w.%-_~]+:%d+$") and
       not t.host:match("^%[[%x:.]+%]:?%d*$") then
      fail(where, 'host must be a host name with an optional :port ("api.internal:8080")')
    end
    p.host = t.host
  end
  local ptls, terr = tls_opts.backend_pool(t.tls, resolve)
  if terr then fail(where, "%s [FERRY-0220]", terr) end
  p.tls = ptls
  p.proxies = {}
  local seen = {}
  local ctx = { resolve = resolve, kind = "backends", pool_tls = ptls }
  for i, entry in ipairs(t.backends) do
    local px, err = proxy_entry.validate(type(entry) == "string" and { url = entry } or entry,
      proxy_entry.BACKEND_CONFIG, ctx)
    if not px then fail(string.format("%s: backends[%d]", where, i), "%s", err) end
    local key = px.id or px.url
    if seen[key] then fail(where, "backends[%d]: duplicate of backends[%d]", i, seen[key]) end
    seen[key] = i
    p.proxies[i] = px
  end
end

-- forwarded = { ["for"], proto, host, via } (each a boolean, absent = on)
-- and trust_forwarded of a reverse listener, and its pool.
local FORWARDED = { ["for"] = true, proto = true, host = true, via = true }

function M.parse_reverse_listen(where, t, l)
  if l.protocol ~= "reverse" then
    for _, k in ipairs { "pool", "forwarded", "trust_forwarded" } do
      if t[k] ~= nil then fail(where, '%s: only for protocol = "reverse"', k) end
    end
    return
  end
  if t.users ~= nil then
    fail(where, 'users: a reverse listener serves a site, it does not authenticate proxy users')
  end
  l.pool = want(where, "pool", t.pool, "string")
  l.forwarded = { ["for"] = true, proto = true, host = true, via = true }
  if t.forwarded ~= nil then
    check_fields(where .. ": forwarded", t.forwarded, FORWARDED)
    for k in pairs(FORWARDED) do
      local v = want(where, "forwarded." .. k, t.forwarded[k], "boolean")
      if v ~= nil then l.forwarded[k] = v end
    end
  end
  l.trust_forwarded = want(where, "trust_forwarded", t.trust_forwarded, "boolean") or false
end

-- Once every pool is declared: a reverse listener's pool is a backend pool.
function M.check_reverse_listen(cfg, file, l)
  if l.protocol ~= "reverse" or not l.pool then return nil end
  local p = cfg.pools[l.pool]
  if not p then
    return string.format('%s:%d: listen "%s": pool "%s" is not declared', file, l.line or 0,
      l.name, l.pool)
  end
  if p.kind ~= "backends" then
    return string.format('%s:%d: listen "%s": pool "%s" has proxies, a reverse listener needs ' ..
      'a pool of backends', file, l.line or 0, l.name, l.pool)
  end
  return nil
end

-- intercept = true|false of an exchange (default false).
function M.parse_intercept(where, v)
  if v == nil then return false end
  if type(v) ~= "boolean" then
    fail(where, "intercept must be true or false, got a %s", type(v))
  end
  return v
end

-- Interception mints leaf certificates with ferry's CA: an exchange that
-- intercepts needs tls { ca_cert, ca_key } in the same config.
function M.check_intercept(cfg, ex)
  if ex.intercept and not (cfg.tls and cfg.tls.ca_cert and cfg.tls.ca_key) then
    return string.format("%s: FERRY-6020: intercept = true needs ferry's CA: add " ..
      "tls { ca_cert = ..., ca_key = ... } (ferry ca init DIR writes them)", ex.where)
  end
  return nil
end

-- Host lookup tables: exact names, and wildcard suffixes by suffix.
function M.index_exchanges(cfg)
  local exact, suffix = {}, {}
  for _, ex in ipairs(cfg.exchanges) do
    for _, h in ipairs(ex.hosts) do
      if h:sub(1, 2) == "*." then
        suffix[h:sub(3)] = suffix[h:sub(3)] or ex
      else
        exact[h] = exact[h] or ex
      end
    end
  end
  cfg.exchange_exact, cfg.exchange_suffix = exact, suffix
end

-- The exchange a destination host belongs to: exact name first, then the
-- longest *.suffix (which never matches the bare suffix itself).
function M.match_exchange(cfg, host)
  if not cfg.exchange_exact then M.index_exchanges(cfg) end
  host = host:lower()
  local ex = cfg.exchange_exact[host]
  if ex then return ex end
  local pos = host:find(".", 1, true)
  while pos do
    ex = cfg.exchange_suffix[host:sub(pos + 1)]
    if ex then return ex end
    pos = host:find(".", pos + 1, true)
  end
  return nil
end

local function normalize_syntax_error(msg, file)
  -- loadfile reports "FILE:LINE: ..."; loadstring reports [string "..."]:LINE.
  local line, rest = msg:match("^%[string \"[^\"]*\"%]:(%d+): (.*)$")
  if line then return string.format("%s:%s: %s", file, line, rest) end
  -- Errors without a line (a binary chunk refused) are reported at line 0.
  if not msg:match("^[^:]+:%d+:") then return string.format("%s:0: %s", file, msg) end
  return msg
end

function M.load(path, opts)
  local _ = opts
  local chunk, err = loadfile(path, "t") -- text only: LuaJIT does not verify bytecode
  if not chunk then
    return nil, normalize_syntax_error(err or (path .. ":0: cannot read"), path)
  end
  return evaluate(chunk, path)
end

function M.load_string(src, chunkname, opts)
  local _ = opts
  chunkname = chunkname or "config.lua"
  local chunk, err = load(src, "@" .. chunkname, "t")
  if not chunk then return nil, normalize_syntax_error(err, chunkname) end
  return evaluate(chunk, chunkname)
end

return M
