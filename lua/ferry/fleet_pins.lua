-- fleet_pins.lua: sticky pins shared with the fleet, so a client whose
-- requests land on different nodes keeps its exit IP.
--
-- The sticky strategy sets its pins through M.table (the core's
-- ferry_sticky_get/ferry_sticky_set, plus sharing).  A pin made or moved
-- here is written to ferry_pins (key, proxy key, until) with a NOTIFY
-- {"t":"pin","k":key,"p":proxy key,"s":seconds left,"u":updated_at};
-- the other nodes set the same pin for the time left when they run that
-- proxy.  A pin re-touched by every request is written on creation, on
-- a change of proxy, and then at most once per half TTL (to keep it
-- alive fleet-wide); pins waiting to be written are sent in batches
-- (BATCH per statement, every FLUSH seconds).
--
-- The key is the core's pin key, "pool\0session" (the session: the
-- X-Ferry-Session value, the user name's session, else the client
-- address), with bytes outside printable ASCII and "%" percent-encoded
-- (text columns hold no NUL).  It is stored in clear: a hash without a
-- secret would not hide a client address (2^32 guesses), and the
-- database already holds what is more sensitive (the proxies' URLs).
local cjson = require("cjson.safe")
local ctx = require("ferry.fleet_ctx")
local changes = require("ferry.fleet_changes")

local pairs, ipairs, tostring, tonumber, type, format =
  pairs, ipairs, tostring, tonumber, type, string.format
local byte, char = string.byte, string.char

local M = {
  FLUSH = 0.25,      -- seconds between two batches
  BATCH = 500,       -- pins per statement
  PENDING_MAX = 10000, -- pins waiting to be written (beyond: dropped, FERRY-8070)
  KNOWN_MAX = 100000,  -- pins remembered (as many as the core keeps)
  RESYNC_MAX = 100000,
}

local known, nknown = {}, 0 -- raw key -> { id, until, refresh, u, own }
local pending, npending = {}, 0 -- raw key -> true
local flush_at = nil
local dropped = 0

function M.encode(key)
  return (key:gsub("[%z\1-\31%%\127-\255]", function(c) return format("%%%02X", byte(c)) end))
end

function M.decode(s)
  return (s:gsub("%%(%x%x)", function(h) return char(tonumber(h, 16)) end))
end

M.UPSERT = [[
WITH j AS (SELECT DISTINCT ON (k) k, p, s
           FROM json_to_recordset($1::json) AS j(k text, p text, s float8)),
w AS (
  INSERT INTO ferry_pins AS t (key, proxy, until, node, updated_at)
  SELECT k, p, clock_timestamp() + make_interval(secs => s), $2, clock_timestamp() FROM j
  ON CONFLICT (key) DO UPDATE SET proxy = EXCLUDED.proxy, until = EXCLUDED.until,
    node = EXCLUDED.node, updated_at = EXCLUDED.updated_at
  RETURNING t.key, t.proxy, t.until, t.node, t.updated_at)
SELECT w.key, extract(epoch from w.updated_at) AS u,
  pg_notify('ferry_fleet', json_build_object('t', 'pin', 'n', w.node, 'k', w.key,
    'p', w.proxy, 's', extract(epoch from w.until - clock_timestamp()),
    'u', extract(epoch from w.updated_at))::text)
FROM w]]

M.ACTIVE = [[
SELECT key, proxy, node, extract(epoch from until - clock_timestamp()) AS s,
  extract(epoch from updated_at) AS u
FROM ferry_pins WHERE until > clock_timestamp() AND node IS DISTINCT FROM $1
ORDER BY updated_at DESC LIMIT ]] .. M.RESYNC_MAX

M.EXPIRED = ctx.expired_sql("ferry_pins")

local function remember(key, rec)
  if not known[key] then
    if nknown >= M.KNOWN_MAX then
      -- Forgetting costs one extra write per pin touched again, no more.
      known, nknown = {}, 0
    end
    nknown = nknown + 1
  end
  known[key] = rec
end

local function flush()
  flush_at = nil
  if npending == 0 or not ctx.up() then return end
  local now, node = ctx.now(), ctx.node()
  local batch, keys = {}, {}
  for key in pairs(pending) do
    pending[key], npending = nil, npending - 1
    local rec = known[key]
    local proxy = rec and ctx.key_of[rec.id]
    if proxy and rec.own and rec["until"] > now + 0.5 then
      batch[#batch + 1] = { k = M.encode(key), p = proxy, s = rec["until"] - now }
      keys[#batch] = key
    end
    if #batch >= M.BATCH then break end
  end
  if npending > 0 then
    flush_at = true
    if not ctx.timer().after(M.FLUSH, flush) then flush_at = nil end
  end
  if #batch == 0 then return end
  local text = cjson.encode(batch)
  local ok, err = ctx.fleet().write("pins:" .. keys[1], M.UPSERT, { text, node }, function(res, qerr)
    if not res then
      ctx.log_once("write:pin", "warn", "FERRY-8069", "fleet: sharing sticky pins failed, " ..
        "they are published again on reconnect: " .. ctx.scrub(qerr))
      return
    end
    for _, row in ipairs(res.rows or {}) do
      local rec = type(row.key) == "string" and known[M.decode(row.key)]
      local u = tonumber(row.u)
      if rec and u and (not rec.u or u > rec.u) then rec.u = u end
    end
  end)
  if ok then
    changes.count("pin", "out", #batch)
  else
    ctx.log_once("write:pin", "warn", "FERRY-8069", "fleet: sharing sticky pins failed, " ..
      "they are published again on reconnect: " .. ctx.scrub(err))
  end
end

local function queue(key)
  if pending[key] then return end
  if npending >= M.PENDING_MAX then
    dropped = dropped + 1
    ctx.log_once("pins-full", "warn", "FERRY-8070", format("fleet: %d sticky pins wait to be " ..
      "shared, the maximum: a new pin stays local (%d so far)", M.PENDING_MAX, dropped))
    return
  end
  pending[key], npending = true, npending + 1
  if not flush_at then
    flush_at = true
    if not ctx.timer().after(M.FLUSH, flush) then flush_at = nil end
  end
end

-- The sticky strategy set pin key -> proxy id for ttl seconds.
function M.touched(key, id, ttl)
  local now = ctx.now()
  local rec = known[key]
  if rec and rec.id == id and now < rec.refresh then return end
  remember(key, { id = id, ["until"] = now + ttl, refresh = now + ttl / 2, u = rec and rec.u,
                  own = true })
  if ctx.up() then queue(key) end
end

local C = ctx.C
local enabled_cache, enabled_at = false, -1

-- The pin table the sticky strategy uses: the core's, and sharing when
-- the fleet is on (checked at most once a second on this hot path).
M.table = {
  ferry_sticky_get = function(key, len) return C.ferry_sticky_get(key, len) end,
  ferry_sticky_set = function(key, len, id, ttl)
    local r = C.ferry_sticky_set(key, len, id, ttl)
    local now = ctx.now()
    if now - enabled_at >= 1 or now < enabled_at then
      enabled_cache, enabled_at = ctx.enabled(), now
    end
    if enabled_cache and r == 0 then M.touched(key, tonumber(id), ttl) end
    return r
  end,
}

-- A pin of another node: a message, or a row read back.
function M.apply(m)
  local u, secs = ctx.num(m.u), ctx.num(m.s)
  if type(m.k) ~= "string" or type(m.p) ~= "string" or not u or not secs then
    ctx.log_once("bad-pin", "warn", "FERRY-8075", "fleet: a pin message without key, proxy, " ..
      "time or TTL was ignored")
    changes.count("pin", "ignored")
    return "ignored"
  end
  local cid = ctx.cid_of[m.p]
  local key = M.decode(m.k)
  local rec = known[key]
  if not cid or secs <= 0 or (rec and rec.u and u <= rec.u) then
    changes.count("pin", "ignored")
    return "ignored"
  end
  if ctx.C.ferry_sticky_set(key, #key, cid, secs) ~= 0 then
    changes.count("pin", "ignored")
    return "ignored"
  end
  local now = ctx.now()
  remember(key, { id = cid, ["until"] = now + secs, refresh = now + secs / 2, u = u, own = false })
  ctx.log("debug", "FERRY-8068", format("fleet: sticky pin to proxy %s for %.0f s received " ..
    "from node %s", ctx.label_of[cid] or tostring(cid), secs, tostring(m.n)))
  changes.count("pin", "in")
  return "in"
end

-- No resync has read the database yet in this process.
local fresh = true

function M.resync(done)
  -- The first read of this process takes this node's own rows too: a node
  -- restarted (or killed) keeps the pins it had made.
  local ok, err = ctx.fleet().read(M.ACTIVE, { fresh and "" or ctx.node() }, function(res, qerr)
    if res then fresh = false end
    if not res then
      ctx.log_once("resync-pins", "warn", "FERRY-8072", "fleet: reading the shared sticky " ..
        "pins failed: " .. ctx.scrub(qerr))
      if done then done(nil) end
      return
    end
    local n = 0
    for _, row in ipairs(res.rows or {}) do
      if M.apply({ k = row.key, p = row.proxy, n = row.node, s = row.s, u = row.u }) == "in" then
        n = n + 1
      end
    end
    M.republish()
    if done then done(n) end
  end)
  if not ok and done then done(nil, err) end
end

-- This node's own live pins, published again (on reconnect).
function M.republish()
  local now = ctx.now()
  for key, rec in pairs(known) do
    if rec.own and rec["until"] > now then queue(key) end
  end
end

function M.expire()
  ctx.fleet().write("expire:pins", M.EXPIRED, {})
end

function M.stats()
  return { known = nknown, pending = npending, dropped = dropped }
end

function M._reset()
  fresh = true
  known, nknown, pending, npending, flush_at, dropped = {}, 0, {}, 0, nil, 0
  enabled_cache, enabled_at = false, -1
  C = ctx.C
end

return M
