-- inventory_fleet.lua: the inventory shared by the fleet (store {
-- postgres = ... }).  ferry.inventory applies a change on this node at
-- once and writes it through ferry.store_pg; this module brings in the
-- others' changes:
--   * a NOTIFY of kind "proxy" from another node: applied at once unless
--     older than what this node holds for the key (inventory.apply_row);
--   * a full read each time the connection comes up (the first one brings
--     the fleet's runtime proxies to a node that just started) and every
--     store.resync seconds (default 30): every row, tombstones included,
--     differences applied, one coded line with their count (FERRY-8042).
-- Many changes in one loop turn cost one recommit (timer.after(0)).
-- Nothing here is on the request path: dispatch reads the committed
-- config only.
local ffi = require("ffi")
local cjson = require("cjson.safe")
local cdef = require("ferry.cdef")
local timer = require("ferry.timer")
local changes = require("ferry.fleet_changes")
local store_pg = require("ferry.store_pg")

local C = ffi.C
local format, tostring, type, ipairs = string.format, tostring, type, ipairs

local M = {}

-- ferry_fleet_changes_total (one family for every fleet part, rendered
-- once whoever registers it) and the admin answers that wait.
local metrics = require("ferry.metrics")
metrics.register("fleet_changes", changes.text)
metrics.register("admin_waits", require("ferry.admin").waits_text)

M.RESYNC = 30 -- seconds between two full reads (store.resync)

local inv = nil          -- ferry.inventory
local active = false     -- the running config's store is the shared one
local registered = false -- fleet.on / fleet.on_up are registered once per process
local resync_timer, resync_every = nil, nil
local recommit_due = false
local reading = false

local function log(level, code, msg)
  C.ferry_log(cdef.LOG[level], code, msg)
end

function M.counted(dir, n)
  changes.count("proxy", dir, n)
end

local function recommit_now()
  recommit_due = false
  local ok, err = require("ferry.runtime").recommit()
  if not ok then
    log("error", "FERRY-8046", "fleet: the inventory changed but the pools could not take it: " ..
      tostring(err))
  end
end

-- One recommit for every change of this loop turn.
local function recommit_soon()
  if recommit_due then return end
  recommit_due = true
  if not timer.after(0, recommit_now) then recommit_now() end
end

local OPS = { put = "added", set = "changed", del = "removed" }

-- Apply one row (a message, or a row read by key); why: for the log.
function M.apply(row, why, origin)
  if not active then return "inactive" end
  local r = inv.apply_row(row)
  local who = origin and (" by node " .. tostring(origin):sub(1, 64)) or ""
  if r == "changed" then
    M.counted("in")
    log("info", "FERRY-8040", format("fleet: proxy %s %s%s applied (%s)", inv.key_shown(row.key),
      row.removed and "removed" or (OPS[row.op] or "changed"), who, why))
    recommit_soon()
  elseif r == "older" then
    M.counted("ignored")
    log("debug", "FERRY-8041", format("fleet: a change of proxy %s%s is ignored: this node " ..
      "holds a newer one", inv.key_shown(row.key), who))
  elseif r == "bad" then
    M.counted("ignored")
  elseif r == "read" then
    M.read_key(row.key)
  end
  return r
end

-- Read one row by key and apply it (a message without the URL, or our
-- enable/disable that a removal beat).
function M.read_key(key)
  local ok, err = store_pg.read_one(key, function(row, rerr)
    if row then
      M.apply(row, "read")
    elseif row == nil then
      log("warn", "FERRY-8047", format("fleet: proxy %s could not be read: %s",
        inv.key_shown(key), tostring(rerr)))
    end
  end)
  if not ok then
    -- Offline: the next full read on reconnect brings it.
    log("debug", "FERRY-8047", format("fleet: proxy %s not read now (%s); the resync will",
      inv.key_shown(key), tostring(err)))
  end
end

local function on_message(msg)
  if not active then return end
  if type(msg) == "string" then msg = cjson.decode(msg) end
  if type(msg) ~= "table" then return end
  local row = store_pg.row_of(msg)
  row.op = msg.op
  if msg.full == false and not row.removed then row.url = nil end
  M.apply(row, "message", msg.n)
end

-- Read every row and apply the differences; reason: for the log.
function M.resync(reason)
  if not active or reading then return end
  reading = true
  local ok, err = store_pg.read_all(function(rows, rerr)
    reading = false
    if not active then return end
    if not rows then
      log("warn", "FERRY-8047", "fleet: the inventory could not be read (" .. reason .. "): " ..
        tostring(rerr))
      return
    end
    local n, seen = 0, {}
    for _, row in ipairs(rows) do
      seen[row.key] = true
      local r = inv.apply_row(row)
      if r == "changed" then n = n + 1 end
    end
    n = n + inv.drop_unseen(seen)
    local first = inv.first_read_done()
    if n > 0 then
      M.counted("in", n)
      recommit_soon()
    end
    log((n > 0 or first) and "info" or "debug", "FERRY-8042", format("fleet: inventory %s " ..
      "(%s): %d rows, %d %s applied", first and "read" or "resync", reason, #rows, n,
      n == 1 and "difference" or "differences"))
  end)
  if not ok then
    reading = false
    log("debug", "FERRY-8047", "fleet: inventory resync skipped: " .. tostring(err))
  end
end

-- The config's store is the shared one (load or reload).
function M.start(cfg, inventory)
  inv = inventory
  active = true
  if not registered then
    registered = true
    local fleet = require("ferry.fleet")
    fleet.on("proxy", on_message)
    fleet.on_up(function() M.resync("connected") end)
  end
  local every = cfg.store and tonumber(cfg.store.resync) or M.RESYNC
  if every ~= resync_every then
    if resync_timer then timer.cancel(resync_timer) end
    resync_every = every
    resync_timer = timer.every(every, function()
      if require("ferry.pg").state() == "up" then
        M.resync("periodic")
        store_pg.purge()
      end
    end)
  end
end

function M.stop()
  active = false
  if resync_timer then timer.cancel(resync_timer) end
  resync_timer, resync_every = nil, nil
end

return M
