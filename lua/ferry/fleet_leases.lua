-- fleet_leases.lua: broker leases counted fleet-wide, so least_conn (and
-- everything else that reads a proxy's active count) sees the leases
-- every live node's broker holds, not only its own.
--
-- Each node writes, per proxy, how many leases it holds (ferry_leases,
-- NOTIFY {"t":"lease","p":proxy key,"h":held,"u":updated_at}), coalesced:
-- a count that changes is written at most every FLUSH seconds.  Each node
-- keeps the other nodes' counts per proxy and adds their sum to the
-- proxy's active count in the core (ferry_proxy_lease with the change of
-- the sum), so a strategy still reads one number.  A node that is gone
-- (no heartbeat for 3 heartbeats) or stopped no longer counts: a
-- periodic read of the live nodes' counts (RESYNC seconds) replaces what
-- the messages built.  A node not in ferry_nodes at all (a fleet whose
-- nodes do not register) counts as live.
local cjson = require("cjson.safe")
local ctx = require("ferry.fleet_ctx")
local changes = require("ferry.fleet_changes")

local pairs, ipairs, tonumber, type = pairs, ipairs, tonumber, type

local M = {
  FLUSH = 0.25,      -- seconds between two writes of one proxy's count, at least
  RESYNC = 2,        -- seconds between two full reads of the live nodes' counts
  GONE_BEATS = 3,    -- heartbeats of silence after which a node is gone
  HEARTBEAT = 2,     -- seconds, unless node { heartbeat } says otherwise
}

local held = {}      -- C proxy id -> leases this node's broker holds
local dirty = {}     -- C proxy id -> true: its count changed since written
local flush_at = nil -- a flush is scheduled
local remote = {}    -- proxy key -> node -> { h = held, u = updated_at }
local applied = {}   -- C proxy id -> the remote sum added to its active count

M.UPSERT = [[
WITH w AS (
  INSERT INTO ferry_leases AS l (proxy, node, held, updated_at)
  VALUES ($1, $2, $3::integer, clock_timestamp())
  ON CONFLICT (proxy, node) DO UPDATE SET held = EXCLUDED.held, updated_at = EXCLUDED.updated_at
  RETURNING l.proxy, l.node, l.held, l.updated_at)
SELECT pg_notify('ferry_fleet', json_build_object('t', 'lease', 'n', w.node, 'p', w.proxy,
  'h', w.held, 'u', extract(epoch from w.updated_at))::text)
FROM w]]

-- On (re)connect this node's counts start over: the broker's leases of
-- an earlier run of this node are gone with it.
M.RESET = [[
WITH w AS (
  UPDATE ferry_leases SET held = 0, updated_at = clock_timestamp()
  WHERE node = $1 AND held <> 0 RETURNING proxy, node, held, updated_at)
SELECT pg_notify('ferry_fleet', json_build_object('t', 'lease', 'n', w.node, 'p', w.proxy,
  'h', w.held, 'u', extract(epoch from w.updated_at))::text)
FROM w]]

-- The live other nodes' counts, and the database's time of the read.
M.LIVE = [[
SELECT extract(epoch from clock_timestamp()) AS now,
  coalesce((SELECT json_agg(json_build_array(l.proxy, l.node, l.held,
      extract(epoch from l.updated_at)))
    FROM ferry_leases l LEFT JOIN ferry_nodes n ON n.id = l.node
    WHERE l.node <> $1 AND l.held > 0
      AND (n.id IS NULL OR (NOT n.stopped AND
           n.heartbeat_at > clock_timestamp() - make_interval(secs => $2::float8)))), '[]')
  AS leases]]

M.EXPIRED = ctx.fleet().bounded_delete_sql("ferry_leases", [[
(held = 0 AND updated_at < clock_timestamp() - interval '1 minute')
  OR EXISTS (SELECT 1 FROM ferry_nodes n WHERE n.id = ferry_leases.node
             AND n.heartbeat_at < clock_timestamp() - interval '1 hour')]])

-- Seconds without a heartbeat after which a node's leases stop counting.
function M.gone_after()
  local fleet = ctx.fleet()
  local hb = fleet.heartbeat and tonumber(fleet.heartbeat()) or M.HEARTBEAT
  return M.GONE_BEATS * hb
end

-- Bring proxy `key`'s remote sum in the core up to date.
local function reapply(key)
  local cid = ctx.cid_of[key]
  if not cid then return end
  local sum = 0
  for _, r in pairs(remote[key] or {}) do sum = sum + r.h end
  local was = applied[cid] or 0
  if sum ~= was then
    ctx.C.ferry_proxy_lease(cid, sum - was)
    applied[cid] = sum > 0 and sum or nil
  end
end

-- The running config changed: proxies may have joined (their remote
-- sums apply now) or left (theirs are taken back).
function M.committed()
  for cid, n in pairs(applied) do
    if not ctx.key_of[cid] then
      ctx.C.ferry_proxy_lease(cid, -n)
      applied[cid] = nil
    end
  end
  for key in pairs(remote) do reapply(key) end
end

local function flush()
  flush_at = nil
  if not ctx.up() then return end -- published on reconnect
  local fleet, node = ctx.fleet(), ctx.node()
  for cid in pairs(dirty) do
    dirty[cid] = nil
    local key = ctx.key_of[cid]
    if key then
      local h = held[cid] or 0
      local ok, err = fleet.write("lease:" .. key, M.UPSERT, { key, node, h }, function(res, qerr)
        if not res then
          ctx.log_once("write:lease", "warn", "FERRY-8069", "fleet: sharing a lease count " ..
            "failed, it is published again on reconnect: " .. ctx.scrub(qerr))
        end
      end)
      if ok then
        changes.count("lease", "out")
      else
        ctx.log_once("write:lease", "warn", "FERRY-8069", "fleet: sharing a lease count " ..
          "failed, it is published again on reconnect: " .. ctx.scrub(err))
      end
    end
  end
end

local function schedule()
  if flush_at then return end
  flush_at = true
  local h = ctx.timer().after(M.FLUSH, flush)
  if not h then flush_at = nil end
end

-- The broker's lease count of proxy cid changed by delta (broker.lua).
function M.delta(cid, delta)
  cid = tonumber(cid)
  local n = (held[cid] or 0) + delta
  held[cid] = n > 0 and n or nil
  if not ctx.enabled() then return end
  dirty[cid] = true
  schedule()
end

-- A lease message of another node.
function M.apply(m)
  local u, h = ctx.num(m.u), ctx.num(m.h)
  if type(m.p) ~= "string" or type(m.n) ~= "string" or not u or not h then
    ctx.log_once("bad-lease", "warn", "FERRY-8075", "fleet: a lease message without proxy, " ..
      "node, count or time was ignored")
    changes.count("lease", "ignored")
    return "ignored"
  end
  local per = remote[m.p]
  local r = per and per[m.n]
  if r and u <= r.u then
    changes.count("lease", "ignored")
    return "ignored"
  end
  if not per then
    per = {}
    remote[m.p] = per
  end
  per[m.n] = { h = h > 0 and h or 0, u = u }
  reapply(m.p)
  changes.count("lease", "in")
  return "in"
end

-- A full read of the live nodes' counts replaces the remote ones; a
-- message newer than the read (it crossed it) is kept.
function M.replace(rows, now)
  local fresh = {}
  for _, row in ipairs(rows) do
    local key, node, h, u = row[1], row[2], tonumber(row[3]), tonumber(row[4])
    if type(key) == "string" and type(node) == "string" and h and u then
      fresh[key] = fresh[key] or {}
      fresh[key][node] = { h = h, u = u }
    end
  end
  for key, per in pairs(remote) do
    for node, r in pairs(per) do
      if r.u > now and not (fresh[key] and fresh[key][node]) then
        fresh[key] = fresh[key] or {}
        fresh[key][node] = r
      end
    end
  end
  local old = remote
  remote = fresh
  for key in pairs(old) do
    if not fresh[key] then reapply(key) end
  end
  for key in pairs(fresh) do reapply(key) end
end

function M.resync(done)
  local ok, err = ctx.fleet().read(M.LIVE, { ctx.node(), M.gone_after() }, function(res, qerr)
    local row = res and res.rows and res.rows[1]
    local rows = row and cjson.decode(row.leases or "[]")
    local now = row and tonumber(row.now)
    if not rows or not now then
      ctx.log_once("resync-leases", "warn", "FERRY-8072", "fleet: reading the live nodes' " ..
        "lease counts failed: " .. ctx.scrub(qerr or "unreadable answer"))
      if done then done(nil) end
      return
    end
    M.replace(rows, now)
    if done then done(#rows) end
  end)
  if not ok and done then done(nil, err) end
end

-- On (re)connect: this node's counts start over, then its live ones.
function M.republish()
  local fleet, node = ctx.fleet(), ctx.node()
  fleet.write("lease-reset:" .. node, M.RESET, { node })
  for cid in pairs(held) do dirty[cid] = true end
  flush()
end

-- The node stops (fleet.on_drain): its counts go to 0 at once, so the
-- other nodes stop counting its leases before it is seen as gone.
function M.drain()
  -- Down, nothing would write it before the stop (it would only be
  -- reported as a change lost); the next start resets the counts anyway.
  if not ctx.up() then return end
  local node = ctx.node()
  ctx.fleet().write("lease-reset:" .. node, M.RESET, { node })
  changes.count("lease", "out")
end

-- While the database is down, the other nodes' counts are the last
-- known ones: nobody can tell which nodes are gone.

function M.expire()
  ctx.fleet().write("expire:leases", M.EXPIRED, {})
end

-- Specs and the console: this node's count and the other nodes' sum.
function M.counts(key)
  local cid = ctx.cid_of[key]
  local sum = 0
  for _, r in pairs(remote[key] or {}) do sum = sum + r.h end
  return { own = cid and held[cid] or 0, remote = sum }
end

function M._reset()
  held, dirty, flush_at, remote, applied = {}, {}, nil, {}, {}
end

return M
