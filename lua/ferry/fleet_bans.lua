-- fleet_bans.lua: bans and open breakers per (proxy, exchange), shared
-- with the fleet through ferry_bans (kind 'ban' or 'breaker') and NOTIFY
-- messages {"t":"ban","k":kind,"p":proxy key,"x":exchange name,
-- "s":seconds left,"u":updated_at,"r":reason} ("d":true: removed).
--
-- Why: a ban or a breaker that opened on the exchange's answers says
-- what the exchange thinks of the proxy's exit IP, which is the same
-- from every node.  What stays local: a breaker that opened on failures
-- between this node and the proxy (refused, timeout, handshake, auth,
-- TLS, reset: no HTTP status came back), the passive health of the
-- proxy itself, counters and latency.
--
-- Rules:
--   - the seconds left cross nodes as the database computes them (until
--     - clock_timestamp()), never as a node's wall time;
--   - a message is applied only when its updated_at (database time) is
--     newer than what this node holds for the key (proxy, exchange, kind);
--   - what a node received is applied to the core directly, never
--     published again (no echo);
--   - the count of bans in a row (the backoff's doubling) is the node's:
--     a received ban counts in it, as a ban the node saw itself would, so
--     the next ban anywhere in the fleet lasts longer on this node too;
--   - a breaker's close (a half-open trial succeeded) is shared as the
--     removal of the row, and closes only breakers that were opened for
--     a shared reason (received, or opened here on the exchange's
--     answers): a breaker open for this node's own network stays open.
local ctx = require("ferry.fleet_ctx")
local cdef = require("ferry.cdef")
local changes = require("ferry.fleet_changes")

local pairs, ipairs, tostring, tonumber, type, format =
  pairs, ipairs, tostring, tonumber, type, string.format
local CLOSED, OPEN = cdef.BREAKER_CLOSED, cdef.BREAKER_OPEN

local M = {
  LENGTHEN_MIN = 1, -- seconds a ban must grow by before the longer one is shared again
  RESYNC_MAX = 10000, -- rows read back on reconnect at most
}

local held_u = {} -- pair key -> updated_at (database epoch seconds) applied or written
local own = {}    -- pair key -> { proxy, exchange, kind, reason, cid, exid, ends }: shared from here
local recv = {}   -- pair key -> { cid, exid, kind, node }: applied from another node
local closed = {} -- pair key -> { proxy, exchange }: a shared breaker closed while down

local function pkey(proxy, exchange, kind)
  return proxy .. "\n" .. exchange .. "\n" .. kind
end

M.UPSERT = [[
WITH w AS (
  INSERT INTO ferry_bans AS b (proxy, exchange, kind, until, reason, node, updated_at)
  VALUES ($1, $2, $3, clock_timestamp() + make_interval(secs => $4::float8), $5, $6,
          clock_timestamp())
  ON CONFLICT (proxy, exchange, kind) DO UPDATE SET until = EXCLUDED.until,
    reason = EXCLUDED.reason, node = EXCLUDED.node, updated_at = EXCLUDED.updated_at
  RETURNING b.proxy, b.exchange, b.kind, b.until, b.reason, b.node, b.updated_at)
SELECT extract(epoch from w.updated_at) AS u,
  pg_notify('ferry_fleet', json_build_object('t', 'ban', 'n', w.node, 'k', w.kind,
    'p', w.proxy, 'x', w.exchange, 'r', w.reason,
    's', extract(epoch from w.until - clock_timestamp()),
    'u', extract(epoch from w.updated_at))::text)
FROM w]]

M.DELETE = [[
WITH w AS (
  DELETE FROM ferry_bans WHERE proxy = $1 AND exchange = $2 AND kind = $3
  RETURNING proxy, exchange, kind, clock_timestamp() AS at)
SELECT extract(epoch from w.at) AS u,
  pg_notify('ferry_fleet', json_build_object('t', 'ban', 'n', $4::text, 'k', w.kind,
    'p', w.proxy, 'x', w.exchange, 'd', true, 'u', extract(epoch from w.at))::text)
FROM w]]

M.ACTIVE = [[
SELECT proxy, exchange, kind, reason, node,
  extract(epoch from until - clock_timestamp()) AS s, extract(epoch from updated_at) AS u
FROM ferry_bans WHERE until > clock_timestamp() AND node IS DISTINCT FROM $1
ORDER BY updated_at DESC LIMIT ]] .. M.RESYNC_MAX

M.EXPIRED = ctx.expired_sql("ferry_bans")

-- The names of pair x across the fleet, or nil (a proxy or exchange of
-- no running pool: nothing to share).
local function names_of(x)
  local proxy = ctx.key_of[tonumber(x.proxy_id)]
  local exchange = x.exchange ~= 0 and ctx.exchange_name(x.exchange)
  if not proxy or not exchange then return nil end
  return proxy, exchange
end

local function label(cid)
  return ctx.label_of[cid] or tostring(cid)
end

-- Write one change (the connection is up) and remember its database time.
local function write(pk, sql, params, kind, what)
  local fleet = ctx.fleet()
  local ok, err = fleet.write("ban:" .. pk, sql, params, function(res, qerr)
    if not res then
      ctx.log_once("write:" .. kind, "warn", "FERRY-8069", format("fleet: sharing a %s failed, " ..
        "it is published again on reconnect: %s", what, ctx.scrub(qerr)))
      return
    end
    local row = res.rows and res.rows[1]
    local u = row and ctx.num(row.u)
    if u and (not held_u[pk] or u > held_u[pk]) then held_u[pk] = u end
  end)
  if not ok then
    ctx.log_once("write:" .. kind, "warn", "FERRY-8069", format("fleet: sharing a %s failed, " ..
      "it is published again on reconnect: %s", what, ctx.scrub(err)))
    return false
  end
  changes.count(kind, "out")
  return true
end

-- Publish own entry o (the connection is up).
local function publish(pk, o)
  local now = ctx.now()
  local left = o.ends - now
  if left <= 0 then
    own[pk] = nil
    return
  end
  local what = o.kind == "ban" and "ban" or "open breaker"
  if write(pk, M.UPSERT, { o.proxy, o.exchange, o.kind, left, o.reason, ctx.node() }, o.kind,
      what) then
    ctx.log("info", o.kind == "ban" and "FERRY-8060" or "FERRY-8062", format("proxy %s, " ..
      "exchange %s: %s for %.0f s shared with the fleet (%s)", label(o.cid), o.exchange, what,
      left, o.reason))
  end
end

local function share(x, kind, reason, ends)
  if not ctx.enabled() then return end
  local proxy, exchange = names_of(x)
  if not proxy then return end
  local pk = pkey(proxy, exchange, kind)
  local o = own[pk]
  if o and kind == "ban" and ends < o.ends + M.LENGTHEN_MIN and o.ends > ctx.now() then
    return -- the same ban, not longer by enough to tell the fleet again
  end
  o = { proxy = proxy, exchange = exchange, kind = kind, reason = reason,
        cid = tonumber(x.proxy_id), exid = tonumber(x.exchange), ends = ends }
  own[pk], recv[pk] = o, nil
  if ctx.up() then publish(pk, o) end
end

-- A ban of pair x began or grew here (runtime.ban_pair).
function M.banned(x, reason)
  share(x, "ban", reason or "ban", x.banned_until)
end

-- Whether a breaker opening on result r is about the exchange's view of
-- the exit IP: an HTTP status came back through the proxy.  Failures
-- without one (refused, timeout, handshake, auth, TLS, reset) are this
-- node's own road to the proxy.
function M.shared_reason(r)
  return r ~= nil and (r.status or 0) > 0
end

-- The breaker of pair x opened here on result r (breaker.lua).
function M.breaker_opened(x, r)
  if not M.shared_reason(r) then return end
  share(x, "breaker", "status " .. tostring(r.status), x.breaker_until)
end

-- The breaker of pair x closed here (a half-open trial succeeded).
function M.breaker_closed(x)
  if not ctx.enabled() then return end
  local proxy, exchange = names_of(x)
  if not proxy then return end
  local pk = pkey(proxy, exchange, "breaker")
  if not own[pk] and not recv[pk] then return end -- opened for a local reason only
  own[pk], recv[pk] = nil, nil
  if not ctx.up() then
    closed[pk] = { proxy = proxy, exchange = exchange, cid = tonumber(x.proxy_id) }
    return
  end
  if write(pk, M.DELETE, { proxy, exchange, "breaker", ctx.node() }, "breaker",
      "breaker close") then
    ctx.log("info", "FERRY-8064", format("proxy %s, exchange %s: breaker closed, shared with " ..
      "the fleet", label(tonumber(x.proxy_id)), exchange))
  end
end

-- Apply one change of another node: a message, or a row read back.
-- m: { k = kind, p = proxy key, x = exchange, s = seconds left,
-- u = updated_at, r = reason, n = node, d = removed }.  Returns
-- "in" or "ignored".
function M.apply(m)
  local kind = m.k == "breaker" and "breaker" or "ban"
  local u = ctx.num(m.u)
  if type(m.p) ~= "string" or type(m.x) ~= "string" or not u then
    ctx.log_once("bad-ban", "warn", "FERRY-8075", "fleet: a ban message without proxy, " ..
      "exchange or time was ignored")
    changes.count(kind, "ignored")
    return "ignored"
  end
  local cid = ctx.cid_of[m.p]
  local e = ctx.exchange(m.x)
  if not cid or not e then
    ctx.log_once("unknown:" .. m.x, "debug", "FERRY-8067", format("fleet: a %s of exchange %s " ..
      "from node %s names a proxy or exchange this node does not run: ignored", kind, m.x,
      tostring(m.n)))
    changes.count(kind, "ignored")
    return "ignored"
  end
  if kind == "breaker" and not ctx.has_breaker(e) then
    -- Without a breaker policy nothing here would ever close it again.
    ctx.log_once("nobreaker:" .. m.x, "debug", "FERRY-8067", format("fleet: a breaker of " ..
      "exchange %s from node %s: its pool has no breaker on this node: ignored", m.x,
      tostring(m.n)))
    changes.count(kind, "ignored")
    return "ignored"
  end
  local pk = pkey(m.p, m.x, kind)
  if held_u[pk] and u <= held_u[pk] then
    ctx.log("debug", "FERRY-8066", format("fleet: a %s of proxy %s, exchange %s from node %s " ..
      "is older than the one held: ignored", kind, label(cid), m.x, tostring(m.n)))
    changes.count(kind, "ignored")
    return "ignored"
  end
  held_u[pk] = u
  local C = ctx.C
  local x = C.ferry_pxstate_get(cid, e.id)
  if x == nil then return "ignored" end
  local now = ctx.now()
  local secs = ctx.num(m.s) or 0
  local from = tostring(m.n or "?")
  if m.d or secs <= 0 then
    -- Removed (a breaker closed elsewhere) or already over.
    if kind == "breaker" then
      if (recv[pk] or own[pk]) and x.breaker ~= CLOSED then
        C.ferry_breaker_close(x)
        ctx.log("info", "FERRY-8065", format("proxy %s, exchange %s: breaker closed by node %s",
          label(cid), m.x, from))
      end
    elseif (recv[pk] or own[pk]) and x.banned_until > now then
      C.ferry_ban(x, 0, nil)
    end
    recv[pk], own[pk] = nil, nil
    changes.count(kind, "in")
    return "in"
  end
  recv[pk], own[pk] = { cid = cid, exid = e.id, kind = kind, node = from }, nil
  if kind == "ban" then
    if x.banned_until > now then
      x.banned_until = now + secs -- the newer judgment of the same ban
    else
      C.ferry_ban(x, secs, "from node " .. from .. ": " .. tostring(m.r or "ban"))
    end
    ctx.log("info", "FERRY-8061", format("proxy %s, exchange %s: banned for %.0f s by node %s " ..
      "(%s)", label(cid), m.x, secs, from, tostring(m.r or "ban")))
  else
    if x.breaker == OPEN then
      x.breaker_until = now + secs
    else
      C.ferry_breaker_open(x, secs)
    end
    ctx.log("info", "FERRY-8063", format("proxy %s, exchange %s: breaker open for %.0f s, " ..
      "opened by node %s (%s)", label(cid), m.x, secs, from, tostring(m.r or "")))
  end
  changes.count(kind, "in")
  return "in"
end

-- On (re)connect: apply what the other nodes hold now, close breakers
-- received earlier whose rows are gone (closed while this node was
-- away), then publish this node's own live entries with the time left.
-- done(n_applied) when the read came back (or failed: nil, err).
-- No resync has read the database yet in this process.
local fresh = true

function M.resync(done)
  local fleet = ctx.fleet()
  -- The first read of this process takes this node's own rows too: a node
  -- restarted (or killed) while its ban ran must keep away from the proxy.
  local ok, err = fleet.read(M.ACTIVE, { fresh and "" or ctx.node() }, function(res, qerr)
    if res then fresh = false end
    if not res then
      ctx.log_once("resync-bans", "warn", "FERRY-8072", "fleet: reading the shared bans and " ..
        "breakers failed: " .. ctx.scrub(qerr))
      if done then done(nil, qerr) end
      return
    end
    local seen, n = {}, 0
    for _, row in ipairs(res.rows or {}) do
      local m = { k = row.kind, p = row.proxy, x = row.exchange, r = row.reason, n = row.node,
                  s = row.s, u = row.u }
      if M.apply(m) == "in" then n = n + 1 end
      if m.p and m.x then seen[pkey(m.p, m.x, m.k == "breaker" and "breaker" or "ban")] = true end
    end
    for pk, r in pairs(recv) do
      if not seen[pk] and r.kind == "breaker" then
        local x = ctx.C.ferry_pxstate_get(r.cid, r.exid)
        if x ~= nil and x.breaker ~= CLOSED then ctx.C.ferry_breaker_close(x) end
        recv[pk] = nil
      elseif not seen[pk] then
        recv[pk] = nil -- a ban keeps its own end locally
      end
    end
    M.republish()
    if done then done(n) end
  end)
  if not ok then
    ctx.log_once("resync-bans", "warn", "FERRY-8072", "fleet: reading the shared bans and " ..
      "breakers failed: " .. ctx.scrub(err))
    if done then done(nil, err) end
  end
end

-- Publish this node's own live bans and open breakers again, and the
-- closes of shared breakers that happened while the database was down.
function M.republish()
  local now = ctx.now()
  for pk, c in pairs(closed) do
    closed[pk] = nil
    if not own[pk] and not recv[pk] then
      write(pk, M.DELETE, { c.proxy, c.exchange, "breaker", ctx.node() }, "breaker",
        "breaker close")
    end
  end
  for pk, o in pairs(own) do
    local x = ctx.C.ferry_pxstate_get(o.cid, o.exid)
    if x ~= nil then
      o.ends = o.kind == "ban" and x.banned_until or
        (x.breaker == OPEN and x.breaker_until or 0)
    end
    if o.ends > now then publish(pk, o) else own[pk] = nil end
  end
end

-- Expired rows: a bounded DELETE (any node may run it).
function M.expire()
  ctx.fleet().write("expire:bans", M.EXPIRED, {})
end

-- Specs and the console.
function M.state()
  local o, r = 0, 0
  for _ in pairs(own) do o = o + 1 end
  for _ in pairs(recv) do r = r + 1 end
  return { own = o, received = r }
end

function M._reset()
  fresh = true
  held_u, own, recv, closed = {}, {}, {}, {}
end

return M
