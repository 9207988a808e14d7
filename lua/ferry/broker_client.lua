-- broker_client.lua: a pool that takes its proxies from proxy brokers
-- (pool "x" { broker = {...}, proxies = { ...embedded fallback... } }).
--
-- Leases come from POST /api/v1/proxy/request of the broker's endpoints
-- (ferry's own broker, lua/ferry/broker.lua, or a compatible one) and are
-- held in memory, `leases` slots per pool, each renewed at `renew` of its
-- TTL.  The leased proxies are the pool's members (the runtime's merge),
-- so a request picks among them as in any pool: nothing of the broker is
-- on the request path.  While no lease is valid the pool's members are its
-- embedded `proxies` (the fallback).  Rule: a lease still inside its TTL is
-- kept when the broker fails (the proxy works without the broker); once
-- the last one runs out the fallback starts at the next tick (TICK s).
-- Outcomes through a leased proxy are queued (bounded) and sent in batches
-- to POST /api/v1/proxy/feedback.  Each endpoint has a breaker: `failures`
-- failures in a row open it for a backoff that doubles (with jitter) up
-- to `max_backoff`; then one trial request decides.  Calls carry
-- X-Request-Id; the token and proxy credentials are never logged.
local ffi = require("ffi")
local cjson = require("cjson.safe")
local cdef = require("ferry.cdef")
local hclient = require("ferry.hclient")

local C = ffi.C
local format, concat = string.format, table.concat
local pairs, ipairs, type, tostring, tonumber = pairs, ipairs, type, tostring, tonumber
local min, random = math.min, math.random

local M = {
  TICK = 0.2,             -- seconds between two looks at every broker pool
  MAX_ENDPOINTS = 8,
  MAX_LEASES = 32,
  LOG_WINDOW = 10,        -- seconds between two lines about the same endpoint fault
}

local CONNECTION_TYPES = { http = true, https = true, websocket = true, tcp = true }

---------------------------------------------------------------------------
-- Config: pool "x" { broker = { ... } }.  parse(t, pool_name) returns the
-- clean table or nil and a message ending with its code.

local FIELDS = { endpoints = true, token = true, exchange = true, region = true,
  connection_type = true, client_id = true, leases = true, timeout = true, renew = true,
  feedback = true, breaker = true, tls = true }

local function num(v, name, lo, hi, default, code, integer)
  if v == nil then return default end
  if type(v) ~= "number" or v ~= v or v < lo or v > hi or (integer and v % 1 ~= 0) then
    return nil, format("broker.%s must be a %s from %s to %s [%s]", name,
      integer and "whole number" or "number", tostring(lo), tostring(hi), code)
  end
  return v
end

local function str(v, name, max, code)
  if v == nil then return nil end
  if type(v) ~= "string" or v == "" or #v > max or v:find("[%c]") then
    return nil, format("broker.%s must be a string of 1 to %d printable bytes [%s]", name, max,
      code)
  end
  return v
end

-- resolve(path): a CA file's path relative to the config's directory.
function M.parse(t, pool_name, resolve)
  if type(t) ~= "table" then return nil, "broker: expected a table [FERRY-0266]" end
  for k in pairs(t) do
    if not FIELDS[k] then
      return nil, format('broker: unknown field "%s" [FERRY-0266]', tostring(k))
    end
  end
  local b = { endpoints = {} }
  if type(t.endpoints) ~= "table" or #t.endpoints == 0 then
    return nil, "broker.endpoints: a list of 1 to 8 URLs such as \"http://10.0.0.1:9090\" " ..
      "is required [FERRY-0260]"
  end
  if #t.endpoints > M.MAX_ENDPOINTS then
    return nil, "broker.endpoints: at most 8 endpoints [FERRY-0260]"
  end
  local seen = {}
  local any_tls = false
  for i, u in ipairs(t.endpoints) do
    local host, port, path, scheme = hclient.parse_url(u)
    if not host then
      return nil, format("broker.endpoints[%d]: %s [FERRY-0260]", i, tostring(port))
    end
    if seen[u] then return nil, format("broker.endpoints[%d]: listed twice [FERRY-0260]", i) end
    seen[u] = true
    local base = path:gsub("/+$", "")
    b.endpoints[i] = { url = u, host = host, port = port, base = base, https = scheme == "https" }
    any_tls = any_tls or scheme == "https"
  end
  -- tls = { verify = true, ca = "file" }: how https:// endpoints are checked.
  local tls = t.tls
  if tls ~= nil and type(tls) ~= "table" then
    return nil, "broker.tls: expected a table { verify, ca } [FERRY-0268]"
  end
  tls = tls or {}
  for k in pairs(tls) do
    if k ~= "verify" and k ~= "ca" then
      return nil, format('broker.tls: unknown field "%s" [FERRY-0268]', tostring(k))
    end
  end
  if tls.verify ~= nil and type(tls.verify) ~= "boolean" then
    return nil, "broker.tls.verify must be true or false [FERRY-0268]"
  end
  b.tls = { verify = tls.verify ~= false }
  if tls.ca ~= nil then
    if type(tls.ca) ~= "string" or tls.ca == "" then
      return nil, "broker.tls.ca must be the path of a PEM file [FERRY-0268]"
    end
    b.tls.ca = resolve and resolve(tls.ca) or tls.ca
    local f = io.open(b.tls.ca, "r")
    if not f then
      return nil, format("broker.tls.ca: cannot read %s [FERRY-0268]", b.tls.ca)
    end
    f:close()
  end
  if t.tls ~= nil and not any_tls then
    return nil, "broker.tls is for https:// endpoints; none is listed [FERRY-0268]"
  end
  local err
  if t.token ~= nil then
    if type(t.token) ~= "string" or t.token == "" or #t.token > 4096 or t.token:find("[%c%s]") then
      -- Never the value: it is a secret.
      return nil, "broker.token must be a non-empty string without spaces or control bytes " ..
        "(env \"NAME\") [FERRY-0261]"
    end
    b.token = t.token
  end
  b.exchange, err = str(t.exchange, "exchange", 128, "FERRY-0262")
  if err then return nil, err end
  b.exchange = b.exchange or pool_name
  b.region, err = str(t.region, "region", 64, "FERRY-0262")
  if err then return nil, err end
  b.client_id, err = str(t.client_id, "client_id", 256, "FERRY-0262")
  if err then return nil, err end
  b.client_id = b.client_id or ("ferry:" .. pool_name)
  b.connection_type = t.connection_type or "http"
  if not CONNECTION_TYPES[b.connection_type] then
    return nil, 'broker.connection_type must be "http", "https", "websocket" or "tcp" ' ..
      "[FERRY-0262]"
  end
  b.leases, err = num(t.leases, "leases", 1, M.MAX_LEASES, 3, "FERRY-0263", true)
  if err then return nil, err end
  b.timeout, err = num(t.timeout, "timeout", 0.05, 60, 2, "FERRY-0263")
  if err then return nil, err end
  b.renew, err = num(t.renew, "renew", 0.1, 0.95, 0.8, "FERRY-0263")
  if err then return nil, err end
  local f = t.feedback
  if f ~= nil and type(f) ~= "table" then
    return nil, "broker.feedback: expected a table { interval, batch, queue } [FERRY-0264]"
  end
  f = f or {}
  for k in pairs(f) do
    if k ~= "interval" and k ~= "batch" and k ~= "queue" then
      return nil, format('broker.feedback: unknown field "%s" [FERRY-0264]', tostring(k))
    end
  end
  b.feedback = {}
  b.feedback.interval, err = num(f.interval, "feedback.interval", 0.05, 60, 1, "FERRY-0264")
  if err then return nil, err end
  b.feedback.batch, err = num(f.batch, "feedback.batch", 1, 1000, 100, "FERRY-0264", true)
  if err then return nil, err end
  b.feedback.queue, err = num(f.queue, "feedback.queue", 1, 100000, 10000, "FERRY-0264", true)
  if err then return nil, err end
  local br = t.breaker
  if br ~= nil and type(br) ~= "table" then
    return nil, "broker.breaker: expected a table { failures, backoff, max_backoff } [FERRY-0265]"
  end
  br = br or {}
  for k in pairs(br) do
    if k ~= "failures" and k ~= "backoff" and k ~= "max_backoff" then
      return nil, format('broker.breaker: unknown field "%s" [FERRY-0265]', tostring(k))
    end
  end
  b.breaker = {}
  b.breaker.failures, err = num(br.failures, "breaker.failures", 1, 100, 3, "FERRY-0265", true)
  if err then return nil, err end
  b.breaker.backoff, err = num(br.backoff, "breaker.backoff", 0.05, 3600, 1, "FERRY-0265")
  if err then return nil, err end
  b.breaker.max_backoff, err = num(br.max_backoff, "breaker.max_backoff", b.breaker.backoff,
    86400, 30, "FERRY-0265")
  if err then return nil, err end
  -- What decides whether a reload keeps the leases: everything a lease
  -- depends on (not the feedback or breaker tuning).
  local eps = {}
  for i, e in ipairs(b.endpoints) do eps[i] = e.url end
  b.sig = concat({ concat(eps, " "), b.token or "", b.exchange, b.region or "",
    b.connection_type, b.client_id, tostring(b.tls.verify), b.tls.ca or "" }, "\0")
  return b
end

---------------------------------------------------------------------------
-- Logging: codes, and once per window for recurring endpoint faults.

-- The core's clock and log; specs without the core replace them (_hooks).
local clock = function() return C.ferry_now() end
local emit = function(level, code, msg) C.ferry_log(level, code, msg) end

local function log(level, code, msg)
  emit(cdef.LOG[level], code, msg)
end

local log_window = require("ferry.log_once").new(M.LOG_WINDOW,
  function() return clock() end,
  function(level, code, msg) log(level, code, msg) end)

---------------------------------------------------------------------------
-- State per pool name; it survives reloads while the pool's broker
-- config (sig) is the same.

local states = {}     -- pool name -> state
local timer_h = nil
local seq = 0
local boot = os.time() % 1000000

local function rid()
  seq = seq + 1
  return format("ferry-%06d-%d", boot, seq)
end

local function new_endpoint(e, tls)
  local ep = { url = e.url, host = e.host, port = e.port, base = e.base, state = "closed",
               fails = 0, opens = 0, open_until = 0, outcomes = {} }
  if e.https then
    -- The CA file is read here, at commit, not on the way of a call.
    local i, why = hclient.tls(tls.verify, tls.ca)
    if not i then
      ep.tls_error = why
      log("error", "FERRY-8122", format("broker client: endpoint %s: TLS cannot be set up: %s",
        e.url, tostring(why)))
    end
    ep.tls = i
  end
  return ep
end

local function new_state(name, conf)
  local st = { name = name, conf = conf, endpoints = {}, cur = 1, slots = {}, members = {},
    fallback = true, members_sig = "", started = true, queue = {}, qhead = 1, qtail = 0,
    fb = { queued = 0, sent = 0, dropped = 0, failed = 0 }, invalid = 0, acquired = 0,
    expired = 0, switches = 0, next_flush = 0, by_cid = {} }
  for i, e in ipairs(conf.endpoints) do st.endpoints[i] = new_endpoint(e, conf.tls) end
  return st
end

local function count(ep, outcome)
  ep.outcomes[outcome] = (ep.outcomes[outcome] or 0) + 1
end

-- The endpoint to ask now, or nil when every breaker is open.
local function pick_endpoint(st, now)
  local n = #st.endpoints
  for k = 0, n - 1 do
    local i = (st.cur - 1 + k) % n + 1
    local ep = st.endpoints[i]
    local usable = not ep.tls_error -- FERRY-8122 said why at commit
    if not usable then
      ep.outcomes.unusable = 1
    elseif ep.state == "closed" then return ep, i
    elseif ep.state == "open" and now >= ep.open_until then
      ep.state = "half_open"
      log("info", "FERRY-8109", format('broker client of pool "%s": endpoint %s half-open: ' ..
        "one trial request", st.name, ep.url))
      return ep, i
    elseif ep.state == "half_open" and not ep.trial then return ep, i end
  end
end

local function ep_success(st, ep)
  if ep.state ~= "closed" then
    log("info", "FERRY-8108", format('broker client of pool "%s": endpoint %s answers again: ' ..
      "breaker closed", st.name, ep.url))
  end
  ep.state, ep.fails, ep.opens = "closed", 0, 0
end

local function ep_failure(st, ep, i, now)
  ep.fails = ep.fails + 1
  local b = st.conf.breaker
  if ep.state == "half_open" or (ep.state == "closed" and ep.fails >= b.failures) then
    ep.opens = ep.opens + 1
    local backoff = min(b.backoff * 2 ^ (ep.opens - 1), b.max_backoff)
    backoff = backoff * (0.8 + 0.4 * random()) -- jitter: endpoints not retried in lockstep
    ep.state, ep.open_until = "open", now + backoff
    log("warn", "FERRY-8107", format('broker client of pool "%s": endpoint %s failed %d times: ' ..
      "breaker open for %.2f s", st.name, ep.url, ep.fails, backoff))
  end
  -- Failover: the next call goes to the next endpoint.
  st.cur = i % #st.endpoints + 1
end

local function headers_of(st, id)
  local h = { ["Content-Type"] = "application/json", Accept = "application/json",
              ["X-Request-Id"] = id }
  if st.conf.token then h.Authorization = "Bearer " .. st.conf.token end
  return h
end

-- How an endpoint's answer failed: outcome, code, sentence; nil when ok.
local function judge(status, err, detail, timeout)
  if err == "timeout" then
    return "timeout", "FERRY-8106", format("no answer within %.2f s", timeout)
  end
  if err == "tls" then return "tls", "FERRY-8122", tostring(detail or err) end
  if err == "garbage" or err == "body_limit" or err == "head_limit" then
    return "garbage", "FERRY-8103", tostring(detail or err)
  end
  if err then return "failed", "FERRY-8100", tostring(detail or err) end
  if status == 401 or status == 403 then
    return "unauthorized", "FERRY-8104", format("answered %d: the token is refused (check " ..
      "broker.token)", status)
  end
  if status >= 500 and status ~= 503 then
    return "error", "FERRY-8105", format("answered %d", status)
  end
  return nil
end

---------------------------------------------------------------------------
-- Leases.

local inventory -- ferry.inventory, loaded when first needed (it loads the store)

local function valid_slots(st, now)
  local n = 0
  for _, s in pairs(st.slots) do if s.expires > now then n = n + 1 end end
  return n
end

-- The distinct leased proxies as pool members, in slot order.
local function lease_members(st, now)
  local list, seen = {}, {}
  for i = 1, st.conf.leases do
    local s = st.slots[i]
    if s and s.expires > now and not seen[s.key] then
      seen[s.key] = true
      list[#list + 1] = s.px
    end
  end
  return list
end

local function members_sig(list)
  local keys = {}
  for i, px in ipairs(list) do keys[i] = px.url end
  return concat(keys, "\0")
end

local rt_ref -- the runtime (for recommit), set by committed()

-- The leased set changed: commit the pools again when the members differ.
local function sync(st, now)
  local list = lease_members(st, now)
  local sig = members_sig(list)
  local fallback = #list == 0
  if sig == st.members_sig and fallback == st.fallback then return end
  if fallback ~= st.fallback then
    if fallback then
      st.switches = st.switches + 1
      log("warn", "FERRY-8110", format('broker client of pool "%s": no valid lease (%s): ' ..
        "fallback to the embedded proxies engaged", st.name, st.last_failure or
        (st.asking and "the broker has not answered yet" or "no call failed")))
    else
      log("info", "FERRY-8111", format('broker client of pool "%s": %d leased prox%s: ' ..
        "fallback ended", st.name, #list, #list == 1 and "y" or "ies"))
    end
    st.fallback_at = now
  end
  st.fallback, st.members_sig, st.members = fallback, sig, list
  st.started = false
  if rt_ref then
    local ok, err = rt_ref.recommit()
    if not ok then
      log("error", "FERRY-8120", format('broker client of pool "%s": the pool could not take ' ..
        "its leased proxies: %s", st.name, tostring(err)))
    end
  end
end

-- metadata.region of a lease answer when it is a usable region (1-64
-- bytes, no control characters), else nil.
local function lease_region(meta)
  local r = type(meta) == "table" and meta.region
  if type(r) == "string" and #r >= 1 and #r <= 64 and not r:find("%c") then return r end
  return nil
end

-- A lease answer: take it into the slot it was asked for.
local function take_lease(st, slot, ep, id, res, now)
  local u = res.proxy_url
  if u == nil or u == cjson.null then
    -- "direct" or no proxy: nothing to lease; the pool keeps what it has.
    st.last_failure = "the broker gave no proxy"
    log_window(st.name .. " noproxy", "warn", "FERRY-8118", format('broker client of pool ' ..
      '"%s": %s [%s] gave no proxy (strategy %s, fallback_policy %s)', st.name, ep.url, id,
      tostring(res.strategy), tostring(res.fallback_policy)))
    return
  end
  local ttl = tonumber(res.ttl_seconds)
  if type(u) ~= "string" or not ttl or ttl <= 0 or ttl ~= ttl then
    return "garbage"
  end
  inventory = inventory or require("ferry.inventory")
  local px, why = inventory.parse_proxy(u, {}, "proxies")
  if not px then
    st.invalid = st.invalid + 1
    -- why names the problem, never the URL (it may carry credentials).
    log("warn", "FERRY-8112", format('broker client of pool "%s": %s [%s] leased a proxy ' ..
      "whose URL is invalid: refused (%s)", st.name, ep.url, id, tostring(why):gsub("url: ", "")))
    return
  end
  px.broker_lease = true
  -- The lease's region (else the one asked for): requests that name a
  -- region (X-Ferry-Region) must find the leased proxies of that region.
  px.region = lease_region(res.metadata) or st.conf.region
  local key = inventory.endpoint(px)
  -- A proxy leased again keeps its entry (its C proxy and counters).
  for _, s in pairs(st.slots) do
    if s.key == key and s.px.url == px.url then px = s.px end
  end
  ttl = min(ttl, 86400)
  st.slots[slot] = { key = key, px = px, url = u, expires = now + ttl, renew_at = now +
    ttl * st.conf.renew, ttl = ttl, proxy_id = type(res.metadata) == "table" and
    res.metadata.proxy_id or nil, at = now }
  st.acquired = st.acquired + 1
  st.last_failure = nil -- a later fallback names its own cause, not an old one
  log("info", "FERRY-8102", format('broker client of pool "%s": lease %d from %s [%s]: %s for ' ..
    "%g s", st.name, slot, ep.url, id, px.display, ttl))
end

-- The slot to fill or renew now, or nil.
local function due_slot(st, now)
  for i = 1, st.conf.leases do
    local s = st.slots[i]
    if not s or now >= s.renew_at then return i end
  end
end

local step -- forward

local function ask(st, now)
  if st.asking then return end
  local slot = due_slot(st, now)
  if not slot then return end
  local s = st.slots[slot]
  if s and s.retry_at and now < s.retry_at then return end
  if not s and st.retry_at and now < st.retry_at then return end
  local ep, i = pick_endpoint(st, now)
  if not ep then
    st.last_failure = "every endpoint's breaker is open"
    return
  end
  local conf = st.conf
  local id = rid()
  local body = cjson.encode({ exchange_id = conf.exchange, connection_type = conf.connection_type,
    region = conf.region, client_id = conf.client_id })
  if ep.state == "half_open" then ep.trial = true end
  local hid, code, msg = hclient.request({ method = "POST", url = ep.url,
    path = ep.base .. "/api/v1/proxy/request", headers = headers_of(st, id), body = body,
    timeout = conf.timeout, host = ep.host, port = ep.port, tls = ep.tls },
    function(status, _, rbody, err, detail)
    st.asking = nil
    ep.trial = nil
    local t = clock()
    if states[st.name] ~= st then return end -- reconfigured meanwhile
    local outcome, lcode, why = judge(status, err, detail, conf.timeout)
    local res
    if not outcome then
      res = cjson.decode(rbody)
      if type(res) ~= "table" then
        outcome, lcode, why = "garbage", "FERRY-8103", format("answered %d with a body that " ..
          "is not JSON", status)
      elseif status == 503 then
        outcome = "no_proxy"
      elseif status ~= 200 then
        outcome, lcode, why = "error", "FERRY-8105", format("answered %d", status)
      end
    end
    if outcome and outcome ~= "no_proxy" then
      count(ep, outcome)
      st.last_failure = format("%s: %s", ep.url, why)
      log_window(st.name .. " " .. ep.url .. " " .. outcome, "warn", lcode, format('broker ' ..
        'client of pool "%s": endpoint %s [%s] %s', st.name, ep.url, id, why))
      ep_failure(st, ep, i, t)
      -- Another endpoint at once (failover); the same one waits a tick.
      if st.slots[slot] then st.slots[slot].retry_at = t + M.TICK else st.retry_at = t + M.TICK end
      step(st, t)
      return
    end
    ep_success(st, ep)
    if outcome == "no_proxy" then
      count(ep, "no_proxy")
      take_lease(st, slot, ep, id, { proxy_url = cjson.null, strategy = res.strategy or "-",
        fallback_policy = res.fallback_policy })
      if st.slots[slot] then st.slots[slot].retry_at = t + 1 else st.retry_at = t + 1 end
      step(st, t)
      return
    end
    local bad = take_lease(st, slot, ep, id, res, t)
    if bad then
      count(ep, "garbage")
      log_window(st.name .. " " .. ep.url .. " lease", "warn", "FERRY-8103", format('broker ' ..
        'client of pool "%s": endpoint %s [%s] answered a lease without proxy_url or ' ..
        "ttl_seconds", st.name, ep.url, id))
      ep_failure(st, ep, i, t)
      st.retry_at = t + M.TICK
    else
      count(ep, "ok")
      if not st.slots[slot] or st.slots[slot].at ~= t then
        -- refused (invalid URL): wait a tick before asking again
        if st.slots[slot] then st.slots[slot].retry_at = t + M.TICK else st.retry_at = t + M.TICK end
      end
    end
    step(st, t)
  end)
  if not hid then
    if ep.state == "half_open" then ep.trial = nil end
    log_window(st.name .. " hclient", "error", code == "full" and "FERRY-8117" or "FERRY-8100",
      format('broker client of pool "%s": cannot call %s: %s', st.name, ep.url, tostring(msg)))
    return
  end
  st.asking = hid
end

---------------------------------------------------------------------------
-- Feedback: a bounded FIFO per pool, sent in batches.

local function qlen(st) return st.qtail - st.qhead + 1 end

function M.outcome(pool, cid, ok, latency_ms, kind, status)
  local st = states[pool.name]
  if not st or st.fallback then return end
  local s = st.by_cid[cid]
  if not s then return end
  if qlen(st) >= st.conf.feedback.queue then
    st.fb.dropped = st.fb.dropped + 1
    log_window(st.name .. " fbfull", "warn", "FERRY-8114", format('broker client of pool "%s": ' ..
      "feedback queue full (%d): an outcome was dropped (%d so far)", st.name,
      st.conf.feedback.queue, st.fb.dropped))
    return
  end
  local d = cjson.null
  local valid_status = status and status >= 100 and status <= 599
  if kind == "ban" and valid_status then
    -- The exchange banned the proxy: its status lets the broker apply its
    -- own ban rules for that exchange.
    d = { status = status }
  elseif not ok then
    d = { kind = kind ~= "ban" and kind or "reset" }
    if kind == "http5xx" and valid_status and status >= 500 then d.status = status end
  end
  st.qtail = st.qtail + 1
  st.queue[st.qtail] = { proxy_url = s.url, exchange_id = st.conf.exchange,
    connection_type = st.conf.connection_type, success = ok and true or false,
    latency_ms = (latency_ms and latency_ms >= 0 and latency_ms <= 3600000) and latency_ms or
      cjson.null, error_details = d, timestamp = os.time(), client_id = st.conf.client_id }
  st.fb.queued = st.fb.queued + 1
end

local function flush(st, now)
  if st.sending or qlen(st) <= 0 or now < st.next_flush then return end
  local ep, i = pick_endpoint(st, now)
  if not ep then return end
  local conf = st.conf
  local n = min(qlen(st), conf.feedback.batch)
  local batch = {}
  for k = 1, n do
    batch[k] = st.queue[st.qhead]
    st.queue[st.qhead] = nil
    st.qhead = st.qhead + 1
  end
  local body = n == 1 and conf.feedback.batch == 1 and cjson.encode(batch[1]) or cjson.encode(batch)
  local id = rid()
  local hid, code, msg = hclient.request({ method = "POST", url = ep.url,
    path = ep.base .. "/api/v1/proxy/feedback", headers = headers_of(st, id), body = body,
    timeout = conf.timeout, host = ep.host, port = ep.port, tls = ep.tls },
    function(status, _, _, err, detail)
    st.sending = nil
    local t = clock()
    local outcome, _, why = judge(status, err, detail, conf.timeout)
    if not outcome and status ~= 200 then
      outcome, why = "error", format("answered %d", status)
    end
    if outcome then
      count(ep, "feedback_" .. outcome)
      st.fb.failed = st.fb.failed + n
      if status ~= 400 and status ~= 404 then ep_failure(st, ep, i, t) end
      log_window(st.name .. " fb", "warn", "FERRY-8116", format('broker client of pool "%s": ' ..
        "feedback of %d outcomes to %s [%s] failed: %s; they are dropped", st.name, n, ep.url,
        id, why))
      st.next_flush = t + conf.feedback.interval
      return
    end
    ep_success(st, ep)
    count(ep, "feedback_ok")
    st.fb.sent = st.fb.sent + n
    log("debug", "FERRY-8115", format('broker client of pool "%s": %d outcomes sent to %s [%s]',
      st.name, n, ep.url, id))
    -- More waiting than a batch: the next one now, else at the interval.
    st.next_flush = qlen(st) >= conf.feedback.batch and t or t + conf.feedback.interval
  end)
  if not hid then
    st.fb.dropped = st.fb.dropped + n
    log_window(st.name .. " hclient", "error", code == "full" and "FERRY-8117" or "FERRY-8100",
      format('broker client of pool "%s": cannot send feedback to %s: %s', st.name, ep.url,
        tostring(msg)))
    return
  end
  st.sending = hid
end

---------------------------------------------------------------------------
-- The tick: expiry, renewal, feedback.

step = function(st, now)
  for i = 1, st.conf.leases do
    local s = st.slots[i]
    if s and s.expires <= now then
      st.slots[i] = nil
      st.expired = st.expired + 1
      log("info", "FERRY-8113", format('broker client of pool "%s": lease %d (%s) ran out ' ..
        "without renewal", st.name, i, s.px.display))
    end
  end
  ask(st, now)
  sync(st, now)
end

local function tick()
  local now = clock()
  for _, st in pairs(states) do
    step(st, now)
    flush(st, now)
  end
end

---------------------------------------------------------------------------
-- The runtime's side: merge (members), committed (states and the timer).

-- Put each broker pool's leased proxies in place of its embedded ones
-- (kept as the fallback) in cfg; called after inventory.merge.
function M.merge(cfg)
  local now = clock()
  for name, pc in pairs(cfg.pools) do
    if pc.broker then
      local st = states[name]
      if st and st.conf.sig == pc.broker.sig then
        local list = lease_members(st, now)
        if #list > 0 then pc.proxies = list end
      end
    end
  end
end

-- After a commit: states follow the running config (same sig: kept with
-- their leases; changed or new: fresh; gone: dropped), C ids map to slots.
function M.committed(run, rt)
  rt_ref = rt or rt_ref
  local cfg = run.cfg
  local any = false
  for name, st in pairs(states) do
    local pc = cfg.pools[name]
    if not pc or not pc.broker or pc.broker.sig ~= st.conf.sig then
      if st.asking then hclient.cancel(st.asking) end
      if st.sending then hclient.cancel(st.sending) end
      states[name] = nil
      if pc and pc.broker then
        log("info", "FERRY-8119", format('broker client of pool "%s": its broker config ' ..
          "changed: leases dropped", name))
      end
    end
  end
  for _, name in ipairs(cfg.pool_order) do
    local pc = cfg.pools[name]
    if pc.broker then
      any = true
      local st = states[name]
      if not st then
        st = new_state(name, pc.broker)
        states[name] = st
      else
        st.conf = pc.broker -- the same sig; feedback/breaker tuning may differ
      end
      st.by_cid = {}
      for _, s in pairs(st.slots) do
        if s.px.cid then st.by_cid[s.px.cid] = s end
      end
      local pool = run.pools[name]
      if pool then
        pool.broker_client = true
        pool.quiet_ok = false -- every success is reported too (runtime.result)
      end
    end
  end
  if any and not timer_h then
    local ok, timer = pcall(require, "ferry.timer")
    if ok then
      timer_h = timer.every(M.TICK, tick)
    else
      log("error", "FERRY-8121", "broker client: no timers in this build: leases are not renewed")
    end
  elseif not any and timer_h then
    require("ferry.timer").cancel(timer_h)
    timer_h = nil
  end
end

---------------------------------------------------------------------------
-- Reading: console, metrics, specs, the bench.

-- The leased proxy a request would use next, from memory (round robin
-- over the valid leases): what resolution of a cached lease costs.
function M.resolve(name, now)
  local st = states[name]
  if not st then return nil end
  local list = st.members
  local n = #list
  if n == 0 then return nil end
  local slots = st.slots
  now = now or clock()
  for _ = 1, n do
    st.rr = (st.rr or 0) % n + 1
    local px = list[st.rr]
    for i = 1, st.conf.leases do
      local s = slots[i]
      if s and s.px == px and s.expires > now then return px end
    end
  end
  return nil
end

function M.stats(name)
  local out = {}
  local now = clock()
  for pname, st in pairs(states) do
    if name == nil or name == pname then
      local eps = {}
      for i, ep in ipairs(st.endpoints) do
        local o = {}
        for k, v in pairs(ep.outcomes) do o[k] = v end
        eps[i] = { url = ep.url, state = ep.state, failures = ep.fails, outcomes = o,
                   retry_in = ep.state == "open" and math.max(0, ep.open_until - now) or nil }
      end
      local leases = {}
      for i = 1, st.conf.leases do
        local s = st.slots[i]
        if s then
          leases[#leases + 1] = { slot = i, proxy = s.px.display, proxy_id = s.proxy_id,
            expires_in = s.expires - now, ttl = s.ttl }
        end
      end
      out[pname] = { pool = pname, exchange = st.conf.exchange, fallback = st.fallback,
        leases_held = valid_slots(st, now), leases = leases, endpoints = eps,
        acquired = st.acquired, expired = st.expired, invalid = st.invalid,
        fallback_switches = st.switches,
        feedback = { queued = st.fb.queued, sent = st.fb.sent, dropped = st.fb.dropped,
                     failed = st.fb.failed, waiting = qlen(st) } }
    end
  end
  if name then return out[name] end
  return out
end

local function esc(s) return (tostring(s):gsub('[\\"]', "\\%0"):gsub("\n", "\\n")) end

function M.metrics_text()
  if next(states) == nil then return "" end
  local now = clock()
  local names = {}
  for n in pairs(states) do names[#names + 1] = n end
  table.sort(names)
  local req, held, fb, up, fbq, inv = {}, {}, {}, {}, {}, {}
  local fall = {}
  for _, n in ipairs(names) do
    local st = states[n]
    local p = esc(n)
    for _, ep in ipairs(st.endpoints) do
      local keys = {}
      for k in pairs(ep.outcomes) do keys[#keys + 1] = k end
      table.sort(keys)
      for _, k in ipairs(keys) do
        req[#req + 1] = format('ferry_broker_client_requests_total{pool="%s",endpoint="%s",' ..
          'outcome="%s"} %d', p, esc(ep.url), k, ep.outcomes[k])
      end
      up[#up + 1] = format('ferry_broker_client_endpoint_up{pool="%s",endpoint="%s"} %d', p,
        esc(ep.url), ep.state == "closed" and 1 or 0)
    end
    held[#held + 1] = format('ferry_broker_client_leases{pool="%s"} %d', p, valid_slots(st, now))
    fall[#fall + 1] = format('ferry_broker_client_fallback_active{pool="%s"} %d', p,
      st.fallback and 1 or 0)
    for _, ev in ipairs { "queued", "sent", "dropped", "failed" } do
      fb[#fb + 1] = format('ferry_broker_client_feedback_total{pool="%s",event="%s"} %d', p, ev,
        st.fb[ev])
    end
    fbq[#fbq + 1] = format('ferry_broker_client_feedback_queue{pool="%s"} %d', p, qlen(st))
    inv[#inv + 1] = format('ferry_broker_client_leases_refused_total{pool="%s"} %d', p, st.invalid)
  end
  local function block(name, kind, help, lines)
    if #lines == 0 then return "" end
    return format("# HELP %s %s\n# TYPE %s %s\n%s\n", name, help, name, kind, concat(lines, "\n"))
  end
  return block("ferry_broker_client_requests_total", "counter",
      "Calls to broker endpoints by outcome.", req) ..
    block("ferry_broker_client_endpoint_up", "gauge",
      "1 while an endpoint's breaker is closed.", up) ..
    block("ferry_broker_client_leases", "gauge", "Valid leases a pool holds now.", held) ..
    block("ferry_broker_client_fallback_active", "gauge",
      "1 while a pool uses its embedded proxies.", fall) ..
    block("ferry_broker_client_feedback_total", "counter",
      "Outcomes queued, sent, dropped (queue full) and failed (the call failed).", fb) ..
    block("ferry_broker_client_feedback_queue", "gauge", "Outcomes waiting to be sent.", fbq) ..
    block("ferry_broker_client_leases_refused_total", "counter",
      "Leases refused because their proxy URL is invalid.", inv)
end

-- The bench and specs: a pool state holding leases of `urls` (valid
-- until now + ttl), without brokers, timers or the core.
function M._seed(name, urls, ttl, now)
  local conf = assert(M.parse({ endpoints = { "http://127.0.0.1:1" }, leases = math.max(1, #urls) },
    name))
  local st = new_state(name, conf)
  inventory = inventory or require("ferry.inventory")
  for i, u in ipairs(urls) do
    local px = assert(inventory.parse_proxy(u, {}, "proxies"))
    st.slots[i] = { key = inventory.endpoint(px), px = px, url = u, expires = now + ttl,
                    renew_at = now + ttl * conf.renew, ttl = ttl, at = now }
  end
  st.members = lease_members(st, now)
  st.fallback = #st.members == 0
  states[name] = st
  return st
end

-- Specs without the core: the clock and the log line sink.
function M._hooks(now_fn, log_fn)
  clock, emit = now_fn, log_fn
end

-- Specs: forget every state and stop the timer.
function M._reset()
  states = {}
  if timer_h then
    pcall(function() require("ferry.timer").cancel(timer_h) end)
    timer_h = nil
  end
end
M._states = function() return states end
M._tick = tick

return M
