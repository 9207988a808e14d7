-- fleet_shared.lua: what the fleet shares besides the inventory, wired
-- to the hub (ferry.fleet): bans and open breakers per (proxy, exchange)
-- (fleet_bans), broker lease counts (fleet_leases) and sticky pins
-- (fleet_pins).  Nothing here is on the request path: dispatch reads the
-- core's state, which the messages change between requests.
--
--   committed(run)  after each config commit (runtime.lua)
--
-- On each (re)connect every part reads back what the other nodes hold
-- now (rows with until > clock_timestamp()), applies it, and publishes
-- this node's own live state again with the time left.  A timer reads
-- the live nodes' lease counts every fleet_leases.RESYNC seconds (a node
-- gone or stopped stops counting), and one deletes expired rows every
-- EXPIRE seconds (bounded; any node may).
local ctx = require("ferry.fleet_ctx")
local bans = require("ferry.fleet_bans")
local leases = require("ferry.fleet_leases")
local pins = require("ferry.fleet_pins")

local format, tostring = string.format, tostring

local M = {
  EXPIRE = 60, -- seconds between two deletions of expired rows
}

local attached = false
local timers = nil -- { lease = handle, expire = handle }

local function on_up()
  local got, want = {}, 3
  local function done(part)
    return function(n)
      got[part] = n or "failed"
      want = want - 1
      if want == 0 then
        ctx.log("info", "FERRY-8071", format("fleet: shared state read back after connecting: " ..
          "%s bans and breakers, %s sticky pins, lease counts of %s proxies; this node's own " ..
          "published again", tostring(got.bans), tostring(got.pins), tostring(got.leases)))
      end
    end
  end
  bans.resync(done("bans"))
  pins.resync(done("pins"))
  leases.republish()
  leases.resync(done("leases"))
end

local function start_timers()
  if timers then return end
  local timer = ctx.timer()
  timers = {
    lease = timer.every(leases.RESYNC, function()
      if ctx.enabled() and ctx.up() then leases.resync() end
    end),
    expire = timer.every(M.EXPIRE, function()
      if ctx.enabled() and ctx.up() then
        bans.expire()
        pins.expire()
        leases.expire()
      end
    end),
  }
end

local function stop_timers()
  if not timers then return end
  local timer = ctx.timer()
  timer.cancel(timers.lease)
  timer.cancel(timers.expire)
  timers = nil
end

-- Register with the hub once (the Lua state lives as long as the
-- process: the handlers survive reloads).
local function attach()
  if attached then return end
  attached = true
  -- ferry_fleet_changes_total, rendered once for every fleet part.
  local ok, metrics = pcall(require, "ferry.metrics")
  if ok and metrics.register then
    metrics.register("fleet_changes", require("ferry.fleet_changes").text)
    metrics.register("fleet_shared", M.metrics_text)
  end
  local fleet = ctx.fleet()
  fleet.on("ban", bans.apply)
  fleet.on("lease", leases.apply)
  fleet.on("pin", pins.apply)
  if fleet.on_drain then
    fleet.on_drain(function()
      if ctx.enabled() then leases.drain() end
    end)
  end
  fleet.on_up(function()
    if not ctx.enabled() then return end
    start_timers()
    on_up()
  end)
end

function M.committed(run)
  ctx.committed(run)
  if ctx.enabled() then
    attach()
    start_timers()
  else
    stop_timers()
    -- No fleet (any more): the other nodes' leases stop counting.
    leases.replace({}, math.huge)
  end
  leases.committed()
end

-- What the shared parts hold, and the sticky pins the bound kept local.
function M.metrics_text()
  local b, p = bans.state(), pins.stats()
  return table.concat({
    "# HELP ferry_fleet_shared_held Shared entries this node holds: its own (published) " ..
      "and received bans and open breakers, and sticky pins it knows.",
    "# TYPE ferry_fleet_shared_held gauge",
    'ferry_fleet_shared_held{what="bans_own"} ' .. b.own,
    'ferry_fleet_shared_held{what="bans_received"} ' .. b.received,
    'ferry_fleet_shared_held{what="pins"} ' .. p.known,
    "# HELP ferry_fleet_pins_dropped_total Sticky pins kept local because 10 000 already " ..
      "waited to be written (FERRY-8070).",
    "# TYPE ferry_fleet_pins_dropped_total counter",
    "ferry_fleet_pins_dropped_total " .. p.dropped,
    "",
  }, "\n")
end

-- Specs.
M.on_up = on_up

function M._reset()
  attached, timers = false, nil
  bans._reset()
  leases._reset()
  pins._reset()
  ctx._reset()
end

return M
