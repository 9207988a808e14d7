-- fleet_view.lua: pure logic of the fleet's node list (no I/O, no FFI).
--
--   state(row, heartbeat)      "live" | "draining" | "gone" | "stopped"
--   changes(old, new)          what to log when the list is read again
--   owner(key, ids)            which node probes the proxy `key`
--   divide(keys, ids, self)    the keys `self` probes
--
-- Probing is divided by rendezvous (highest random weight) hashing: each
-- proxy key goes to the node whose hash(node, key) is the highest, so a
-- node joining takes only its share from the others, and a node leaving
-- hands only its own share out; every node computes the same answer from
-- the same live list without talking to the others.
local bit = require("bit")

local band, bxor, rshift, tobit = bit.band, bit.bxor, bit.rshift, bit.tobit
local byte = string.byte
local sort = table.sort

local M = {}

-- A node silent for this many heartbeats is gone.
M.GONE_BEATS = 3

-- (a * b) mod 2^32 with both 32-bit: split so no product exceeds 2^53.
local function mul32(a, b)
  local lo, hi = band(b, 0xffff), rshift(b, 16)
  return tobit(a * lo + tobit(a * hi) * 65536)
end

-- MurmurHash3's finalizer: every input bit moves every output bit.
local function fmix(h)
  h = bxor(h, rshift(h, 16))
  h = mul32(h, 0x85ebca6b)
  h = bxor(h, rshift(h, 13))
  h = mul32(h, 0xc2b2ae35)
  return bxor(h, rshift(h, 16))
end

-- FNV-1a over the bytes of s, then mixed: a 32-bit signed integer.
function M.hash(s)
  local h = tobit(0x811c9dc5)
  for i = 1, #s do
    h = mul32(bxor(h, byte(s, i)), 0x01000193)
  end
  return fmix(h)
end

-- The weight of node hash nh for key hash kh, as an unsigned number.
local function weight(nh, kh)
  local w = fmix(bxor(nh, fmix(kh + 0x9e3779b9)))
  return w < 0 and w + 4294967296 or w
end
M.weight = weight

-- The node (one of `ids`, a list of node ids) that probes `key`; nil for
-- an empty list.  Ties (a 1-in-2^32 chance) go to the smaller id.
function M.owner(key, ids, node_hashes)
  local kh = M.hash(key)
  local best, bw
  for _, id in ipairs(ids) do
    local w = weight(node_hashes and node_hashes[id] or M.hash(id), kh)
    if not bw or w > bw or (w == bw and id < best) then best, bw = id, w end
  end
  return best
end

-- The keys of `keys` (a list) that node `self` probes among the node ids
-- `ids`, as a set { key = true }, and how many.  `self` not in ids (not
-- live, draining): none.
function M.divide(keys, ids, self)
  local mine, n = {}, 0
  local in_list = false
  local hashes = {}
  for _, id in ipairs(ids) do
    hashes[id] = M.hash(id)
    if id == self then in_list = true end
  end
  if not in_list then return mine, 0 end
  for _, key in ipairs(keys) do
    if M.owner(key, ids, hashes) == self then
      mine[key] = true
      n = n + 1
    end
  end
  return mine, n
end

-- The state of a node row: { age = seconds since its heartbeat (database
-- time, plus what elapsed here since the read), draining, stopped }.
-- heartbeat: seconds between heartbeats.
function M.state(row, heartbeat)
  if row.stopped then return "stopped" end
  if (row.age or math.huge) > M.GONE_BEATS * heartbeat then return "gone" end
  if row.draining then return "draining" end
  return "live"
end

-- The ids that probe: live and not draining, sorted (the same list on
-- every node).  states: { id = state }.
function M.probers(states)
  local ids = {}
  for id, st in pairs(states) do
    if st == "live" then ids[#ids + 1] = id end
  end
  sort(ids)
  return ids
end

-- What changed between two reads of the list ({ id = state } each; old
-- nil: the first read).  A list of { id, from, to, what } sorted by id,
-- `what` one of "joined", "gone", "back", "draining", "stopped".  A node
-- first seen already gone or stopped is not news.
function M.changes(old, new)
  local out = {}
  for id, to in pairs(new) do
    local from = old and old[id]
    local what
    if from == to then
      what = nil
    elseif to == "live" then
      if from == nil then
        what = "joined"
      elseif from == "draining" then
        what = nil -- a draining node that lives on: a reload, not news
      else
        what = "back"
      end
    elseif to == "gone" then
      what = from ~= nil and "gone" or nil
    elseif to == "draining" then
      what = "draining"
    elseif to == "stopped" then
      what = from ~= nil and "stopped" or nil
    end
    if what then out[#out + 1] = { id = id, from = from, to = to, what = what } end
  end
  -- A node whose row was deleted is gone as well.
  for id, from in pairs(old or {}) do
    if new[id] == nil and from ~= "gone" and from ~= "stopped" then
      out[#out + 1] = { id = id, from = from, to = "gone", what = "gone" }
    end
  end
  sort(out, function(a, b) return a.id < b.id end)
  return out
end

return M
