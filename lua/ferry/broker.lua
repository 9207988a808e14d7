-- broker.lua: the proxy broker API of the admin plane (docs/broker.md).
--
--   POST /api/v1/proxy/request   lease a proxy for an exchange
--   POST /api/v1/proxy/feedback  report how a leased proxy did
--
-- A request is chosen by the running runtime (rt.choose): the same
-- exchanges, pools, strategies, select hooks, health, breakers, bans,
-- panic and all_down policies as the data plane.  Feedback goes through
-- rt.feedback into the same passive health (C), ban rules and breakers as
-- real traffic.  The answer carries the proxy's URL with credentials:
-- the router only lets authenticated callers this far (bearer token over
-- TCP, the 0600 unix socket), and the URL is never logged.
--
-- A lease counts as an active use of its proxy (ferry_proxy.active, read
-- by least_conn, sticky, health_score ties) until feedback for it arrives
-- or its TTL ends.  Leases are bounded (MAX_LEASES; when full the oldest
-- ends early) and end lazily: the runtime runs the due expiry before any
-- dispatch or admin request reads the counters.
local ffi = require("ffi")
local cjson = require("cjson.safe")
local admin = require("ferry.admin")
local url = require("ferry.url")
local health = require("ferry.health")
local cdef = require("ferry.cdef")
local fleet_leases = require("ferry.fleet_leases")
local band = require("bit").band

local C = ffi.C
local ffi_string = ffi.string
local type, pairs, ipairs, tostring, tonumber, setmetatable =
  type, pairs, ipairs, tostring, tonumber, setmetatable
local floor, huge, format, sort = math.floor, math.huge, string.format, table.sort

local M = {
  TTL = 300,              -- seconds a lease lasts without feedback (broker { ttl })
  MAX_LEASES = 100000,    -- leases held at once; the oldest ends early beyond
  URL_CACHE_MAX = 10000,  -- handed-out URL -> proxy id, reset when full
  EXPIRE_STEP = 1000,     -- leases ended per expiry call at most
}

-- A pool's all_down policy as the broker's `fallback_policy` names it.
M.FALLBACK = { any = "any_proxy", direct = "direct_connection", fail = "fail" }

M.CONNECTION_TYPES = { http = true, https = true, websocket = true, tcp = true }
local CONNECTION_LIST = '"http", "https", "websocket" or "tcp"'

M.FAIL_KINDS = { refused = true, timeout = true, handshake = true, auth = true,
                 http5xx = true, reset = true, tls = true }

---------------------------------------------------------------------------
-- Validation: field by field, each failure naming its field.

local NULL = cjson.null

-- The JSON type of a decoded value.
local function jtype(v)
  local t = type(v)
  if v == NULL then return "null" end
  if t == "table" then
    return v[1] ~= nil and "array" or "object"
  end
  return t
end

local function is_finite(n)
  return n == n and n ~= huge and n ~= -huge
end

local function check_timestamp(v)
  if type(v) == "number" then
    if not is_finite(v) or v < 0 then return "must be a time (RFC 3339 or Unix seconds)" end
    return nil
  end
  if #v > 64 or not v:match("^%d%d%d%d%-%d%d%-%d%d[Tt ]%d%d:%d%d:%d%d") then
    return 'must be an RFC 3339 time such as "2024-09-23T10:30:00Z"'
  end
end

local function check_latency(v)
  if not is_finite(v) or v < 0 or v > 3600000 then
    return "must be a number of milliseconds from 0 to 3600000"
  end
end

local ERROR_DETAILS = {
  order = { "kind", "status", "message" },
  fields = {
    kind = { types = { string = true }, null = true, enum = M.FAIL_KINDS,
             enum_text = '"refused", "timeout", "handshake", "auth", "http5xx", "reset" or "tls"' },
    status = { types = { number = true }, null = true, check = function(v)
      if v % 1 ~= 0 or v < 100 or v > 599 then return "must be an HTTP status, 100 to 599" end
    end },
    message = { types = { string = true }, null = true, max = 1024 },
  },
}

local REQUEST = {
  order = { "exchange_id", "connection_type", "region", "client_id", "metadata" },
  fields = {
    exchange_id = { types = { string = true }, required = true, max = 128 },
    connection_type = { types = { string = true }, required = true,
                        enum = M.CONNECTION_TYPES, enum_text = CONNECTION_LIST },
    region = { types = { string = true }, null = true, max = 64 },
    client_id = { types = { string = true }, null = true, max = 256 },
    metadata = { types = { object = true }, null = true },
  },
}

local FEEDBACK = {
  order = { "proxy_url", "exchange_id", "connection_type", "success", "latency_ms",
            "error_details", "timestamp", "client_id" },
  fields = {
    proxy_url = { types = { string = true }, required = true, max = 2048 },
    exchange_id = { types = { string = true }, required = true, max = 128 },
    connection_type = { types = { string = true }, null = true,
                        enum = M.CONNECTION_TYPES, enum_text = CONNECTION_LIST },
    success = { types = { boolean = true }, required = true },
    latency_ms = { types = { number = true }, null = true, check = check_latency },
    error_details = { types = { string = true, object = true }, null = true, max = 1024,
                      object = ERROR_DETAILS },
    timestamp = { types = { string = true, number = true }, null = true,
                  check = check_timestamp },
    client_id = { types = { string = true }, null = true, max = 256 },
  },
}

local function type_text(types)
  local names = {}
  for k in pairs(types) do names[#names + 1] = k == "object" and "an object" or
    (k == "array" and "an array" or "a " .. k) end
  sort(names)
  return table.concat(names, " or ")
end

-- Check obj against schema.  Returns the clean table (JSON null turned
-- into nil), or nil, code, field, message.
local function check_object(obj, schema, prefix)
  prefix = prefix or ""
  local unknown = {}
  for k in pairs(obj) do
    if type(k) ~= "string" or not schema.fields[k] then unknown[#unknown + 1] = tostring(k) end
  end
  if #unknown > 0 then
    sort(unknown)
    local f = prefix .. unknown[1]
    return nil, "FERRY-7103", f, format('unknown field "%s" (expected %s)', f,
      prefix .. table.concat(schema.order, ", " .. prefix))
  end
  local out = {}
  for _, name in ipairs(schema.order) do
    local spec, v = schema.fields[name], obj[name]
    local f = prefix .. name
    local jt = jtype(v)
    if v == nil or (jt == "null" and not spec.required) then
      if spec.required then
        return nil, "FERRY-7101", f, format('field "%s" is required', f)
      end
    elseif not spec.types[jt] then
      return nil, "FERRY-7102", f, format('field "%s" must be %s, got %s', f,
        type_text(spec.types), jt == "null" and "null" or (jt == "object" and "an object" or
        (jt == "array" and "an array" or "a " .. jt)))
    else
      if jt == "string" then
        if spec.max and #v > spec.max then
          return nil, "FERRY-7102", f, format('field "%s" is longer than %d bytes', f, spec.max)
        end
        if v == "" and spec.required then
          return nil, "FERRY-7102", f, format('field "%s" must not be empty', f)
        end
        if spec.enum and not spec.enum[v] then
          return nil, "FERRY-7102", f, format('field "%s" must be %s', f, spec.enum_text)
        end
      end
      if jt == "object" and spec.object then
        local sub, code, sf, msg = check_object(v, spec.object, f .. ".")
        if not sub then return nil, code, sf, msg end
        v = sub
      end
      if spec.check then
        local why = spec.check(v)
        if why then return nil, "FERRY-7102", f, format('field "%s" %s', f, why) end
      end
      out[name] = v
    end
  end
  return out
end

-- The body of req as an object, or nil and the error (status, code,
-- field, message) to answer with.
local function decode(body)
  local v, why = admin.decode_object(body)
  if not v then return nil, 400, "FERRY-7004", nil, why end
  return v
end

-- Validate a lease request body (a string).  Returns the clean fields, or
-- nil, status, code, field, message.
function M.validate_request(body)
  local obj, status, code, field, msg = decode(body)
  if not obj then return nil, status, code, field, msg end
  local out
  out, code, field, msg = check_object(obj, REQUEST)
  if not out then return nil, 400, code, field, msg end
  if out.region == "" then out.region = nil end
  return out
end

-- The failure kind feedback stands for: error_details.kind, else guessed
-- from its text, else "reset".
local KIND_WORDS = {
  { "refused", "refused" }, { "unreachable", "refused" }, { "timed? ?out", "timeout" },
  { "auth", "auth" }, { "407", "auth" }, { "credential", "auth" },
  { "handshake", "handshake" }, { "tls", "handshake" }, { "ssl", "handshake" },
  { "reset", "reset" }, { "closed", "reset" }, { "eof", "reset" },
}

function M.failure_kind(details)
  if type(details) == "table" then
    if details.kind then return details.kind end
    details = details.message
  end
  if type(details) == "string" then
    local low = details:lower()
    for _, w in ipairs(KIND_WORDS) do
      if low:find(w[1]) then return w[2] end
    end
  end
  return "reset"
end

-- Validate a feedback body.  Returns the clean fields (with kind and
-- status derived from error_details), or nil, status, code, field, msg.
function M.validate_feedback(body)
  local obj, status, code, field, msg = decode(body)
  if not obj then return nil, status, code, field, msg end
  local out
  out, code, field, msg = M.check_feedback(obj)
  if not out then return nil, 400, code, field, msg end
  return out
end

-- The same checks on one decoded feedback object (also an element of a
-- batch).
function M.check_feedback(obj)
  local out, code, field, msg = check_object(obj, FEEDBACK)
  if not out then return nil, code, field, msg end
  local d = out.error_details
  out.status = type(d) == "table" and d.status or nil
  out.ok = out.success
  -- A status decides as it does for real traffic: the proxy carried the
  -- response unless it is a 5xx.
  if out.status then out.ok = out.status < 500 end
  out.kind = not out.ok and (out.status and "http5xx" or M.failure_kind(d)) or nil
  return out
end

---------------------------------------------------------------------------
-- Leases.  One FIFO ring of (key, proxy id, expiry) in lease order, and
-- per key (proxy, exchange, client) how many leases are live and how many
-- ring entries were already ended by feedback.  All leases of a key are
-- alike, so feedback ends "one of them" and the ring's entry of that key
-- that expires next is then skipped: O(1) for everything.

local Leases = {}
Leases.__index = Leases

-- opts: now() -> seconds; hold(proxy_id, delta) (the active counter);
-- max; on_evict(n) when the oldest lease had to end early; on_due(at)
-- when the time of the next expiry changes (nil: none).
function M.new_leases(opts)
  return setmetatable({
    now = opts.now, hold = opts.hold, max = opts.max or M.MAX_LEASES,
    on_evict = opts.on_evict, on_due = opts.on_due,
    rk = {}, rp = {}, rx = {}, head = 0, n = 0,
    live = {}, credit = {}, held = 0, evicted = 0, expired = 0, released = 0, granted = 0,
  }, Leases)
end

local function key_of(proxy_id, exid, client)
  return proxy_id .. ":" .. exid .. ":" .. (client or "")
end
M.lease_key = key_of

-- Drop the ring's oldest entry, ending its lease unless feedback did.
function Leases:pop()
  local slot = self.head % self.max + 1
  local k, pid = self.rk[slot], self.rp[slot]
  self.rk[slot], self.rp[slot], self.rx[slot] = nil, nil, nil
  self.head, self.n = self.head + 1, self.n - 1
  local c = self.credit[k]
  if c and c > 0 then
    self.credit[k] = c > 1 and c - 1 or nil
    return false
  end
  local l = self.live[k]
  self.live[k] = l > 1 and l - 1 or nil
  self.held = self.held - 1
  self.hold(pid, -1)
  return true
end

function Leases:next_due()
  if self.n == 0 then return nil end
  return self.rx[self.head % self.max + 1]
end

-- End the leases whose time is up, at most `limit` (EXPIRE_STEP) per
-- call: this runs inside a dispatch, under its instruction budget.  What
-- is left is due at once, and the next call goes on with it.
function Leases:expire(now, limit)
  now = now or self.now()
  limit = limit or M.EXPIRE_STEP
  while self.n > 0 and limit > 0 and self.rx[self.head % self.max + 1] <= now do
    if self:pop() then self.expired = self.expired + 1 end
    limit = limit - 1
  end
  if self.on_due then self.on_due(self:next_due()) end
end

function Leases:grant(proxy_id, exid, client, ttl)
  local now = self.now()
  if self.n >= self.max then
    if self:pop() then
      self.evicted = self.evicted + 1
      if self.on_evict then self.on_evict(self.evicted) end
    end
  end
  local k = key_of(proxy_id, exid, client)
  local slot = (self.head + self.n) % self.max + 1
  self.rk[slot], self.rp[slot], self.rx[slot] = k, proxy_id, now + ttl
  self.n = self.n + 1
  self.live[k] = (self.live[k] or 0) + 1
  self.held = self.held + 1
  self.granted = self.granted + 1
  self.hold(proxy_id, 1)
  if self.n == 1 and self.on_due then self.on_due(now + ttl) end
end

-- Feedback: end one live lease of (proxy, exchange, client).  Returns
-- whether there was one.
function Leases:release(proxy_id, exid, client)
  local k = key_of(proxy_id, exid, client)
  local l = self.live[k]
  if not l then return false end
  self.live[k] = l > 1 and l - 1 or nil
  self.credit[k] = (self.credit[k] or 0) + 1
  self.held = self.held - 1
  self.released = self.released + 1
  self.hold(proxy_id, -1)
  return true
end

-- Live leases of a key (specs, console).
function Leases:count(proxy_id, exid, client)
  return self.live[key_of(proxy_id, exid, client)] or 0
end

---------------------------------------------------------------------------
-- The running broker: leases on the C counters, proxy URLs from C.

local rt_ref -- the runtime, once a request came
local leases

-- Once per 10 s at most, with the count so far.
local evict_logged_at = -huge

local function log_evict(n)
  local now = C.ferry_now()
  if now - evict_logged_at < 10 then return end
  evict_logged_at = now
  C.ferry_log(cdef.LOG.warn, "FERRY-7108", format("broker: %d leases held, the maximum: the oldest " ..
    "lease ended before its TTL (%d so far)", M.MAX_LEASES, n))
end

local function reap(now)
  leases:expire(now)
end

local function the_leases()
  if not leases then
    leases = M.new_leases {
      now = function() return C.ferry_now() end,
      hold = function(id, delta)
        C.ferry_proxy_lease(id, delta)
        fleet_leases.delta(id, delta) -- counted fleet-wide (least_conn)
      end,
      max = M.MAX_LEASES,
      on_evict = log_evict,
      -- The runtime calls reap before anything reads the counters.
      on_due = function(at)
        if rt_ref then rt_ref.set_due(at, at and reap or nil) end
      end,
    }
  end
  return leases
end
M.leases = the_leases

local urlbuf = ffi.new("char[?]", 4096)

-- The proxy's URL with credentials (from C), or nil.
local function proxy_url(c)
  local n = C.ferry_proxy_url(c, urlbuf, 4096)
  if n < 0 then return nil end
  return ffi_string(urlbuf, n)
end

-- Handed-out URL -> proxy id: feedback usually quotes it back verbatim.
local handed, nhanded = {}, 0

local function remember(u, id)
  if handed[u] == id then return end
  if nhanded >= M.URL_CACHE_MAX then handed, nhanded = {}, 0 end
  handed[u] = id
  nhanded = nhanded + 1
end

-- Per pool: "scheme://user@host:port" and "scheme://host:port" -> entry
-- (false when several proxies share the address without a user).
local addr_index = setmetatable({}, { __mode = "k" })

local function addr_keys(p)
  local host = p.host:find(":", 1, true) and "[" .. p.host .. "]" or p.host
  local base = p.scheme .. "://" .. host .. ":" .. p.port
  return p.scheme .. "://" .. (p.user or "") .. "@" .. host .. ":" .. p.port, base
end

local function index_of(pool)
  local idx = addr_index[pool]
  if idx and idx.n == #pool.proxies then return idx end
  idx = { n = #pool.proxies, full = {}, bare = {} }
  for _, p in ipairs(pool.proxies) do
    local u = p.c ~= nil and proxy_url(p.c)
    local parsed = u and url.parse(u)
    if parsed then
      local full, bare = addr_keys(parsed)
      idx.full[full] = p
      if idx.bare[bare] == nil then idx.bare[bare] = p else idx.bare[bare] = false end
    end
  end
  addr_index[pool] = idx
  return idx
end

local function member(pool, id)
  local by_id = pool.by_id
  if by_id then return by_id[id] end
  for _, p in ipairs(pool.proxies) do
    if p.id == id then return p end
  end
end

-- The pool's entry a feedback URL names, or nil.
local function find_proxy(pool, u)
  local id = handed[u]
  local p = id and member(pool, id)
  if p then return p end
  local parsed = url.parse(u)
  if not parsed then return nil end
  local idx = index_of(pool)
  local full, bare = addr_keys(parsed)
  return idx.full[full] or (not parsed.user and idx.bare[bare]) or nil
end

local function score(pool, p, exid, now)
  local x = pool:pair(p, exid)
  local s = health.score(x ~= nil and x or p.c, pool.latency_ceiling, now)
  return floor(s + 0.5) / 100
end

local function fail(req, status, code, field, message, extra)
  local s, body, headers = admin.err(req, status, code, message)
  body.field = field
  for k, v in pairs(extra or {}) do body[k] = v end
  return s, body, headers
end

-- A stand-in for the HTTP request the data plane would route: what the
-- strategies and select hooks may read.
local function fake_request(req, q, e)
  local host = e.cfg and e.cfg.hosts and e.cfg.hosts[1] or e.name
  host = tostring(host):gsub("^%*%.", "")
  return {
    host = host, port = 443, method = q.connection_type == "http" and "GET" or "CONNECT",
    path = "", client = req.peer, user = nil, session = q.client_id,
    listener = req.listener, is_connect = q.connection_type ~= "http", attempt = 0,
    headers = {}, broker = true, connection_type = q.connection_type, region = q.region,
    metadata = q.metadata, client_id = q.client_id,
  }
end

-- Lease TTL: broker { ttl = ... } of the running config, else TTL.
local function ttl_of(cur)
  local b = cur and cur.cfg and cur.cfg.broker
  return b and b.ttl or M.TTL
end

-- The 404 of a request or feedback naming an exchange the config lacks.
local function unknown_exchange(req, name)
  return fail(req, 404, "FERRY-7104", "exchange_id",
    format('no exchange "%s" in the running config', name))
end

function M.request(req, rt)
  rt_ref = rt
  local q, status, code, field, msg = M.validate_request(req.body)
  if not q then return fail(req, status, code, field, msg) end
  local L = the_leases()
  local cur = rt.active()
  local e = cur and cur.exchanges[q.exchange_id]
  if not e then return unknown_exchange(req, q.exchange_id) end
  if e.pool == "direct" then
    return 200, { proxy_url = NULL, strategy = "direct", ttl_seconds = ttl_of(cur),
                  fallback_policy = M.FALLBACK.direct,
                  metadata = { proxy_id = NULL, region = NULL, health_score = NULL,
                               pool = "direct" } }
  end
  local fake = fake_request(req, q, e)
  local pool0 = cur.pools[e.pool]
  -- The region rule is the pool's (ferry.pool in_region), as for
  -- X-Ferry-Region: eligibility reads fake.region.
  if q.region and pool0 then
    if pool0:region_size(q.region) == 0 then
      return fail(req, 503, "FERRY-7105", "region", format('pool "%s" has no proxy in ' ..
        'region "%s"', pool0.name, q.region), { fallback_policy = M.FALLBACK[pool0.all_down],
        pool = pool0.name, exchange_id = e.name })
    end
  end
  local p, pool, _, why = rt.choose(q.exchange_id, fake)
  if not p then
    pool = pool or pool0
    local policy = pool and pool.all_down or (why == "direct" and "direct") or "fail"
    return fail(req, 503, "FERRY-7105", nil, format('no proxy available for exchange "%s"%s',
      e.name, q.region and format(' in region "%s"', q.region) or ""),
      { fallback_policy = M.FALLBACK[policy] or policy, pool = pool and pool.name or NULL,
        exchange_id = e.name })
  end
  local u = proxy_url(p.c)
  if not u then
    return fail(req, 500, "FERRY-7107", nil, "the proxy's URL could not be formed")
  end
  remember(u, p.id)
  local ttl = ttl_of(cur)
  L:expire()
  L:grant(p.id, e.id, q.client_id, ttl)
  local now = C.ferry_now()
  return 200, {
    proxy_url = u,
    strategy = pool.strategy and pool.strategy.name or "unknown",
    ttl_seconds = ttl,
    fallback_policy = M.FALLBACK[pool.all_down] or pool.all_down,
    metadata = {
      proxy_id = p.label or tostring(p.id),
      region = p.region or NULL,
      health_score = score(pool, p, e.id, now),
      pool = pool.name,
    },
  }
end

local BREAKERS = { [0] = "closed", "open", "half_open" }

-- One validated feedback: 200 and the answer, or an error answer.
local function feedback_one(req, rt, f)
  local L = the_leases()
  local cur = rt.active()
  local e = cur and cur.exchanges[f.exchange_id]
  if not e then return unknown_exchange(req, f.exchange_id) end
  local pool = cur.pools[e.pool]
  local p = pool and find_proxy(pool, f.proxy_url)
  if not p then
    -- Never echo the URL: it carries credentials.
    return fail(req, 404, "FERRY-7106", "proxy_url", format('proxy_url is not a proxy of ' ..
      'exchange "%s"', e.name))
  end
  L:expire()
  local ended = L:release(p.id, e.id, f.client_id)
  local verdict = rt.feedback(p.id, e, pool, f.ok, f.latency_ms, f.kind, f.status)
  local now = C.ferry_now()
  local x = pool:pair(p, e.id)
  return 200, {
    accepted = true,
    proxy_id = p.label or tostring(p.id),
    exchange_id = e.name,
    lease_ended = ended,
    health_score = score(pool, p, e.id, now),
    up = band(p.c.flags, cdef.PROXY_DOWN) == 0,
    breaker = x ~= nil and BREAKERS[tonumber(x.breaker)] or "closed",
    banned = x ~= nil and x.banned_until > now or verdict == "ban",
  }
end

M.MAX_BATCH = 1000 -- feedback objects in one call (a JSON array)

-- POST /api/v1/proxy/feedback: one feedback object, or an array of up to
-- MAX_BATCH of them (a broker client's batch).  A batch answers 200 with
-- one result per element, in order: the answer of a single call, or
-- { accepted = false, error, field, message } for an element refused.
function M.feedback(req, rt)
  rt_ref = rt
  local body = type(req.body) == "string" and req.body or ""
  if body:match("^%s*%[") then
    local list = cjson.decode(body)
    if type(list) ~= "table" or (next(list) ~= nil and list[1] == nil) then
      return fail(req, 400, "FERRY-7004", nil, "the body is not a JSON object or array")
    end
    if #list > M.MAX_BATCH then
      return fail(req, 400, "FERRY-7102", nil, format("a batch holds at most %d feedback " ..
        "objects, got %d", M.MAX_BATCH, #list))
    end
    local results, accepted = {}, 0
    for i, item in ipairs(list) do
      local f, code, field, msg
      if jtype(item) ~= "object" then
        code, msg = "FERRY-7102", format("element %d must be an object", i)
      else
        f, code, field, msg = M.check_feedback(item)
        if f then
          local st, ans = feedback_one(req, rt, f)
          if st == 200 then
            accepted = accepted + 1
            results[i] = ans
          else
            results[i] = { accepted = false, error = ans.error, field = ans.field,
                           message = ans.message }
          end
        end
      end
      if not f then
        results[i] = { accepted = false, error = code, field = field, message = msg }
      end
    end
    return 200, { accepted = accepted, refused = #list - accepted, results = results }
  end
  local f, status, code, field, msg = M.validate_feedback(body)
  if not f then return fail(req, status, code, field, msg) end
  return feedback_one(req, rt, f)
end

admin.route("POST", "/api/v1/proxy/request", M.request)
admin.route("POST", "/api/v1/proxy/feedback", M.feedback)

-- Counters for the console and metrics: leases held now, and how
-- leases were granted and ended since start.
function M.stats()
  local L = leases
  if not L then return { leases = 0, granted = 0, released = 0, expired = 0, evicted = 0 } end
  return { leases = L.held, granted = L.granted, released = L.released, expired = L.expired,
           evicted = L.evicted }
end

return M
