-- fleet_probes.lua: active probing divided among the fleet's live nodes,
-- and the results shared.
--
-- Each probed proxy (by its inventory key) is probed by one node: the
-- rendezvous winner among the live, non-draining node ids
-- (ferry.fleet_view).  The core keeps every schedule and skips the runs
-- of the proxies another node probes (ferry_probe_duty), so the division
-- can move back and forth without cost.  It is recomputed when the set
-- of probing nodes or the inventory changes.
--
-- The probing node publishes each verdict that changes a proxy's up/down
-- (ferry_probes, NOTIFY "probe"), and every SYNC_BEATS heartbeats the
-- latest verdict and latency of all its duties in one statement; the
-- other nodes apply a verdict as their own probes would
-- (ferry_probe_shared), newest by database time.  Passive health from a
-- node's own traffic stays its own.  Without the fleet, or while
-- PostgreSQL is not up (nothing can be shared then), this node probes
-- everything, as a single ferry does.
local ffi = require("ffi")
local bit = require("bit")
local cdef = require("ferry.cdef")
local view = require("ferry.fleet_view")
local changes = require("ferry.fleet_changes")

local C = ffi.C
local band = bit.band
local format, concat, sort = string.format, table.concat, table.sort
local pairs, ipairs, tostring, tonumber, require = pairs, ipairs, tostring, tonumber, require

local M = {
  PUBLISH_EVERY = 0.25, -- seconds between two looks at this node's verdicts
  SYNC_BEATS = 10,      -- heartbeats between two full exchanges of verdicts
  BATCH = 500,          -- verdicts per statement of the periodic exchange
  KEY_MAX = 2000,       -- bytes of a key sent in a message (longer: read back)
}

local P = {
  keys = {},          -- the probed proxies' keys, sorted
  by_key = {},        -- key -> struct ferry_proxy *
  db = {},            -- key -> the key as the database holds it (a URL with
                      -- credentials sealed, as in ferry_proxies)
  from_db = {},       -- the reverse
  label = {},         -- key -> label (logs never show a key: it may be a URL)
  mine = nil,         -- key -> true: the keys this node probes; nil: all of them
  counts = {},        -- node id -> its duties at the last division
  sig = nil,          -- the probers at the last division ("" = none, nil = no division)
  keys_dirty = true,
  published = {},     -- key -> the verdict this node published last
  held = {},          -- key -> checked_at (database epoch) of the last result applied
  timer = nil, ticks = 0,
  hooked = false,
}

local function nodes() return require("ferry.fleet_nodes") end
local function fleet() return require("ferry.fleet") end

local function log(level, code, msg)
  C.ferry_log(cdef.LOG[level], code, msg)
end

local REMOVED = cdef.PROXY_REMOVED

---------------------------------------------------------------------------
-- Division.

-- Set every proxy's duty from P.mine (nil: all here).
local function apply_duties()
  for key, c in pairs(P.by_key) do
    local here = P.mine == nil or P.mine[key] == true
    C.ferry_probe_duty(c, here and 1 or 0)
    if not here then P.published[key] = nil end
  end
end

local function divide()
  local probers = nodes().probers()
  local sig = probers and concat(probers, "\0") or nil
  if sig == P.sig and not P.keys_dirty then return end
  local moved = sig ~= P.sig
  P.sig, P.keys_dirty = sig, false
  local self = nodes().self_id()
  P.counts = {}
  if not probers then
    P.mine = nil
    if self then P.counts[self] = #P.keys end
  else
    local hashes = {}
    for _, id in ipairs(probers) do hashes[id] = view.hash(id) end
    local mine = {}
    for _, key in ipairs(P.keys) do
      local owner = view.owner(key, probers, hashes)
      if owner then P.counts[owner] = (P.counts[owner] or 0) + 1 end
      if owner == self then mine[key] = true end
    end
    P.mine = mine
  end
  apply_duties()
  if moved and nodes().enabled() then
    local n = P.counts[self] or 0
    if probers then
      log("info", "FERRY-8026", format("probe duties re-divided over %d probing node%s " ..
        "(%s): this node probes %d of %d proxies", #probers, #probers == 1 and "" or "s",
        #probers > 0 and concat(probers, ", ") or "none", P.mine and n or #P.keys, #P.keys))
    else
      log("info", "FERRY-8026", format("probe duties: this node probes all %d proxies " ..
        "(the fleet's list is not available: PostgreSQL is not up or the node is not " ..
        "registered yet)", #P.keys))
    end
  end
end

-- The list of nodes changed (or its availability): divide again if the
-- probing nodes are not the same.
function M.nodes_changed()
  divide()
end

---------------------------------------------------------------------------
-- Sharing.

local PUBLISH = [[
WITH w AS (
  INSERT INTO ferry_probes (proxy, node, up, latency_ms, checked_at)
  VALUES ($1, $2, $3, NULLIF($4::text, '')::float8, clock_timestamp())
  ON CONFLICT (proxy) DO UPDATE SET node = EXCLUDED.node, up = EXCLUDED.up,
    latency_ms = EXCLUDED.latency_ms, checked_at = EXCLUDED.checked_at
  RETURNING proxy, up, latency_ms, extract(epoch from checked_at)::float8 AS at)
SELECT pg_notify('ferry_fleet', json_build_object('t', 'probe', 'n', $2::text,
  'p', CASE WHEN length(w.proxy) <= $5 THEN w.proxy END, 'up', w.up, 'ms', w.latency_ms,
  'at', w.at)::text) FROM w]]

local BATCH = [[
INSERT INTO ferry_probes (proxy, node, up, latency_ms, checked_at)
SELECT x.p, $1, x.up, x.ms, clock_timestamp()
  FROM json_to_recordset($2::json) AS x(p text, up boolean, ms float8)
ON CONFLICT (proxy) DO UPDATE SET node = EXCLUDED.node, up = EXCLUDED.up,
  latency_ms = EXCLUDED.latency_ms, checked_at = EXCLUDED.checked_at]]

local READ = [[
SELECT proxy, node, up, latency_ms, extract(epoch from checked_at)::float8 AS at
  FROM ferry_probes WHERE node <> $1]]

local function latency(c)
  local ms = tonumber(c.probe_latency_ms) or 0
  return ms > 0 and ms or nil
end

local function json_str(s)
  return '"' .. s:gsub('[%c"\\]', function(ch)
    return format("\\u%04x", ch:byte())
  end) .. '"'
end

-- Publish the verdicts of this node's duties that changed since the last
-- publication.
local function publish_changes()
  if P.mine == nil or not nodes().enabled() then return end
  local self = nodes().self_id()
  local f = fleet()
  for key in pairs(P.mine) do
    local c = P.by_key[key]
    local v = c and C.ferry_probe_verdict(c)
    if v and v >= 0 and v ~= P.published[key] then
      P.published[key] = v
      local ok = f.write("probe:" .. key, PUBLISH,
        { P.db[key] or key, self, v == 1, latency(c) and format("%.3f", latency(c)) or "",
          M.KEY_MAX })
      if ok then changes.count("probe", "out") end
    end
  end
end

-- Every duty's verdict and latency, in statements of BATCH rows.
local function publish_all()
  if P.mine == nil or not nodes().enabled() then return end
  local self = nodes().self_id()
  local rows, part = {}, 0
  local function flush()
    if #rows == 0 then return end
    part = part + 1
    fleet().write("probes:" .. self .. ":" .. part, BATCH, { self, "[" .. concat(rows, ",") ..
      "]" })
    rows = {}
  end
  for _, key in ipairs(P.keys) do
    local c = P.mine[key] and P.by_key[key]
    local v = c and C.ferry_probe_verdict(c)
    if v and v >= 0 then
      local ms = latency(c)
      rows[#rows + 1] = format('{"p":%s,"up":%s,"ms":%s}', json_str(P.db[key] or key), v == 1 and "true" or
        "false", ms and format("%.3f", ms) or "null")
      P.published[key] = v
      if #rows >= M.BATCH then flush() end
    end
  end
  flush()
end

local function truthy(v) return v == true or v == "t" or v == "true" end

-- A verdict of another node: applied when this node does not probe the
-- proxy and it is newer than the last one applied.
local function apply(dbkey, node, up, ms, at)
  local key = dbkey and P.from_db[dbkey]
  local c = key and P.by_key[key]
  if not c or P.mine == nil or P.mine[key] or node == nodes().self_id() then
    changes.count("probe", "ignored")
    return
  end
  at = tonumber(at) or 0
  if at <= (P.held[key] or 0) then
    changes.count("probe", "ignored")
    return
  end
  P.held[key] = at
  local why = format("probe on node %s %s", tostring(node), up and "passed" or "failed")
  C.ferry_probe_shared(c, up and 1 or 0, tonumber(ms) or -1, why)
  changes.count("probe", "in")
end

local function on_rows(res)
  for _, r in ipairs(res and res.rows or {}) do
    apply(r.proxy, r.node, truthy(r.up), r.latency_ms, r.at)
  end
end

local function read_all()
  if not nodes().enabled() or P.mine == nil or #P.keys == 0 then return end
  fleet().read(READ, { nodes().self_id() }, on_rows)
end

local function on_probe(msg)
  if msg.p == nil then
    read_all() -- a key too long for a message: read the table
    return
  end
  apply(msg.p, msg.n, truthy(msg.up), msg.ms, msg.at)
end

local function tick()
  publish_changes()
  P.ticks = P.ticks + 1
  local every = M.SYNC_BEATS * nodes().heartbeat() / M.PUBLISH_EVERY
  if P.ticks >= every then
    P.ticks = 0
    publish_all()
    read_all()
  end
end

---------------------------------------------------------------------------
-- Life cycle.

-- After every commit: the probed proxies and their keys, then divide.
function M.committed(run)
  local inventory = require("ferry.inventory")
  local keys, by_key, label = {}, {}, {}
  for cid, c in pairs(run and run.proxies or {}) do
    local info = inventory.info(cid)
    if info and tonumber(c.probe_kind) ~= 0 and band(tonumber(c.flags), REMOVED) == 0 then
      if not by_key[info.key] then keys[#keys + 1] = info.key end
      by_key[info.key], label[info.key] = c, info.label
    end
  end
  sort(keys)
  -- Proxies that left keep no stale duty flag (they might come back).
  for key, c in pairs(P.by_key) do
    if not by_key[key] then C.ferry_probe_duty(c, 1) end
  end
  -- The database's form of each key: sealed like the inventory's rows
  -- when a store key is configured (deterministic, so equal on every node).
  local db, from_db = {}, {}
  local ok_pg, store_pg = pcall(require, "ferry.store_pg")
  for _, key in ipairs(keys) do
    local sealed = ok_pg and store_pg.seal and store_pg.seal(key, true) or key
    db[key], from_db[sealed] = sealed, key
  end
  P.keys, P.by_key, P.label, P.keys_dirty = keys, by_key, label, true
  P.db, P.from_db = db, from_db
  local on = nodes().enabled()
  if on and not P.hooked then
    P.hooked = true
    fleet().on("probe", on_probe)
    fleet().on_up(function()
      divide()
      read_all()
    end)
    fleet().on_down(divide)
  end
  local timer = require("ferry.timer")
  if on and not P.timer then
    P.timer = timer.every(M.PUBLISH_EVERY, tick)
  elseif not on and P.timer then
    timer.cancel(P.timer)
    P.timer = nil
  end
  divide()
end

-- Duties per node id at the last division (the admin API's `probes`).
function M.duties_by_node()
  return P.counts
end

function M._state() return P end

return M
