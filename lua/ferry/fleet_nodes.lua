-- fleet_nodes.lua: this node in the fleet's list (ferry_nodes), and the
-- list as this node sees it.
--
-- On each connection to PostgreSQL the node registers (id, advertise,
-- version, config hash, started) and says so (NOTIFY "node"); then every
-- `node.heartbeat` seconds one statement refreshes its heartbeat and
-- reads the whole list back.  The write is coalesced under one key, so a
-- database outage queues one heartbeat, not one per beat.  Ages are the
-- database's (clock_timestamp() - heartbeat_at): no two nodes' wall
-- clocks are ever compared.  Between two reads an age grows by the time
-- elapsed here.  A node silent for 3 heartbeats is "gone".
--
-- At SIGTERM (runtime.drain) the node marks itself draining, then, once
-- its connections are done, stopped; the loop waits for that write at
-- most STOP_HOLD seconds.
--
-- Nothing here is on the request path: the list feeds the console, the
-- admin API and the division of probes (ferry.fleet_probes).
local ffi = require("ffi")
local cdef = require("ferry.cdef")
local view = require("ferry.fleet_view")
local changes = require("ferry.fleet_changes")

local C = ffi.C
local format = string.format
local floor = math.floor
local pairs, ipairs, tostring, tonumber, pcall, require =
  pairs, ipairs, tostring, tonumber, pcall, require

local M = {
  STOP_HOLD = 2,      -- seconds the stop waits for "stopped" to reach the database
  LOG_WINDOW = 10,    -- seconds between two lines about the same failing write
  DEFAULT_HEARTBEAT = 2,
  FORGET_AFTER = 86400, -- seconds a silent node's row stays in the list
  FORGET_EVERY = 300,   -- seconds between two clean-ups
}

local S = {
  on = false,          -- the fleet runs (store{postgres} configured)
  id = nil, advertise = nil, hash = nil, heartbeat = M.DEFAULT_HEARTBEAT,
  started = nil,       -- started_at as the database wrote it (text), once registered
  timer = nil,
  rows = {},           -- id -> the last row read (age in seconds at read_at)
  read_at = nil,       -- ferry_now() of the last read of the list
  beat_at = nil,       -- ferry_now() of this node's last heartbeat the database took
  states = nil,        -- id -> state at the last read (what changes are logged against)
  stopping = nil,      -- nil | "draining" | "stopping" | "stopped"
  stop_at = nil,
  reading = false, read_again = false,
  logged = {},         -- what -> ferry_now() of the last line (failing writes)
  clash_at = nil,
}

local function fleet() return require("ferry.fleet") end
local function probes() return require("ferry.fleet_probes") end

local function log(level, code, msg)
  C.ferry_log(cdef.LOG[level], code, msg)
end

local function log_window(what, level, code, msg)
  local now = C.ferry_now()
  if now - (S.logged[what] or -math.huge) >= M.LOG_WINDOW then
    S.logged[what] = now
    log(level, code, msg)
  end
end

local function bool(v) return v == true or v == "t" or v == "true" end

---------------------------------------------------------------------------
-- Statements.  $1 is always this node's id.

local NOTIFY = "pg_notify('ferry_fleet', json_build_object('t', 'node', 'n', $1::text, " ..
  "'id', $1::text, 's', %s)::text)"

-- First registration: started_at is now, by the database's clock.
local REGISTER = [[
WITH w AS (
  INSERT INTO ferry_nodes (id, advertise, version, config_hash, started_at, heartbeat_at,
                           heartbeat_s, draining, stopped)
  VALUES ($1, $2, $3, $4, clock_timestamp(), clock_timestamp(), $5, false, false)
  ON CONFLICT (id) DO UPDATE SET advertise = EXCLUDED.advertise, version = EXCLUDED.version,
    config_hash = EXCLUDED.config_hash, started_at = EXCLUDED.started_at,
    heartbeat_at = EXCLUDED.heartbeat_at, heartbeat_s = EXCLUDED.heartbeat_s,
    draining = false, stopped = false
  RETURNING started_at::text AS started)
SELECT w.started, ]] .. format(NOTIFY, "'live'") .. [[ AS notified FROM w]]

-- started: ISO 8601 in UTC, as the admin API shows it.
local LIST_COLUMNS = [[n.id, n.advertise, n.version, n.config_hash,
  to_char(n.started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS started,
  extract(epoch from clock_timestamp() - n.heartbeat_at)::float8 AS age, n.heartbeat_s,
  n.draining, n.stopped]]

-- A heartbeat, and the list back in the same round trip.  The row keeps
-- the started_at it has: another node that registered the same id since
-- shows through `mine` (an id clash).  The outer SELECT reads the table
-- as it was before the CTE (this node's own row shows its previous beat).
local HEARTBEAT = [[
WITH w AS (
  INSERT INTO ferry_nodes (id, advertise, version, config_hash, started_at, heartbeat_at,
                           heartbeat_s, draining, stopped)
  VALUES ($1, $2, $3, $4, $6::timestamptz, clock_timestamp(), $5, $7, false)
  ON CONFLICT (id) DO UPDATE SET advertise = EXCLUDED.advertise, version = EXCLUDED.version,
    config_hash = EXCLUDED.config_hash, heartbeat_at = EXCLUDED.heartbeat_at,
    heartbeat_s = EXCLUDED.heartbeat_s, draining = EXCLUDED.draining, stopped = false
  RETURNING started_at::text AS started)
SELECT ]] .. LIST_COLUMNS .. [[, (SELECT started FROM w) AS mine FROM ferry_nodes n]]

local LIST = "SELECT " .. LIST_COLUMNS .. " FROM ferry_nodes n"

-- Rows of nodes silent for a day go (a node that comes back registers
-- again); bounded per statement.
local FORGET = fleet().bounded_delete_sql("ferry_nodes",
  "heartbeat_at < clock_timestamp() - make_interval(secs => $1)")

-- Draining or stopped: said at once (NOTIFY), the heartbeat moves too.
local MARK = [[
WITH w AS (UPDATE ferry_nodes SET draining = $2, stopped = $3, heartbeat_at = clock_timestamp()
           WHERE id = $1 RETURNING id)
SELECT ]] .. format(NOTIFY, "CASE WHEN $3 THEN 'stopped' ELSE 'draining' END") ..
  [[ AS notified FROM w]]

---------------------------------------------------------------------------
-- The list.

local function pg_up()
  local f = fleet()
  return f.state == nil or f.state() == "up"
end

-- The age of a row now: the database's age at the read, plus what
-- elapsed here since; this node's own row is as old as its last beat.
-- While PostgreSQL is up, the time elapsed here counts for at most one
-- heartbeat (the gap between two reads): past that, this node's own reads
-- wait (a slow server, locked tables), which says nothing about the
-- others; their states hold until a read shows their age by the
-- database's clock.  While it is down, the ages grow: nothing is known.
local function age_now(id, row, now, field)
  if id == S.id and S.beat_at then return now - S.beat_at end
  local elapsed = now - (S.read_at or now)
  if pg_up() then elapsed = math.min(elapsed, S.heartbeat) end
  return (row[field or "age"] or math.huge) + elapsed
end

-- This node is live in its own eyes while it runs registered (a slow
-- heartbeat must not make it drop its probe duties), draining once
-- stopping; the others by their rows.
local function states_now(now)
  local st = {}
  for id, row in pairs(S.rows) do
    if id == S.id and S.started then
      st[id] = S.stopping and "draining" or "live"
    else
      st[id] = view.state({ age = age_now(id, row, now, "lag"), draining = row.draining,
                            stopped = row.stopped }, row.heartbeat or S.heartbeat)
    end
  end
  return st
end

local WHAT = {
  joined = { "info", "FERRY-8021", "node %s joined the fleet%s" },
  gone = { "warn", "FERRY-8022", "node %s is gone: no heartbeat for %s%s" },
  back = { "info", "FERRY-8023", "node %s is back%s" },
  draining = { "info", "FERRY-8024", "node %s is draining%s" },
  stopped = { "info", "FERRY-8025", "node %s stopped%s" },
}

local function log_change(ch, now)
  local row = S.rows[ch.id]
  local w = WHAT[ch.what]
  local where = row and row.advertise and format(" (%s)", row.advertise) or ""
  if ch.what == "gone" then
    local age = row and age_now(ch.id, row, now)
    log(w[1], w[2], format(w[3], ch.id, age and age < 1e9 and format("%.1f s", age) or
      "a while", where))
  else
    log(w[1], w[2], format(w[3], ch.id, where))
  end
end

-- A fresh list arrived: log what changed, re-divide the probes if the
-- set of probing nodes moved.
local function evaluate()
  local now = C.ferry_now()
  local st = states_now(now)
  local old = S.states
  -- Just after this node reconnected, the others may not have beaten
  -- since the database came back: a live node is not judged gone before
  -- 3 heartbeats have passed on the new session.
  if old and S.grace_until and now < S.grace_until then
    for id, state in pairs(st) do
      if state == "gone" and (old[id] == "live" or old[id] == "draining") then
        st[id] = old[id]
      end
    end
  end
  for _, ch in ipairs(view.changes(old, st)) do
    if ch.id ~= S.id then log_change(ch, now) end
  end
  S.states = st
  probes().nodes_changed()
end

local function take_rows(res, now)
  local rows = {}
  for _, r in ipairs(res and res.rows or {}) do
    if r.id then
      rows[r.id] = { advertise = r.advertise, version = r.version, config_hash = r.config_hash,
                     started = r.started, age = tonumber(r.age),
                     heartbeat = tonumber(r.heartbeat_s), draining = bool(r.draining),
                     stopped = bool(r.stopped) }
    end
  end
  -- lag: a row's age past the freshest heartbeat of the read.  When the
  -- database held every heartbeat up (tables locked, a slow server), all
  -- rows are old alike and nobody is silent; a node that stopped beating
  -- lags behind the ones that go on.
  -- Without this node's own row in the read, ages count as they are.
  local fresh = rows[S.id] and math.huge or 0
  for _, row in pairs(rows) do
    if row.age and not row.stopped and row.age < fresh then fresh = row.age end
  end
  for _, row in pairs(rows) do
    row.lag = row.age and row.age - fresh
  end
  S.rows, S.read_at = rows, now
end

local function on_list(res, err)
  S.reading = false
  if not res then
    log_window("read", "warn", "FERRY-8028", "cannot read the fleet's node list: " ..
      tostring(err))
    return
  end
  take_rows(res, C.ferry_now())
  evaluate()
  if S.read_again then
    S.read_again = false
    M.read()
  end
end

-- Read the list (a "node" message, a reconnect); one read at a time.
function M.read()
  if not S.on then return end
  if S.reading then
    S.read_again = true
    return
  end
  S.reading = true
  local ok, err = fleet().read(LIST, {}, on_list)
  if not ok then
    S.reading = false
    log_window("read", "warn", "FERRY-8028", "cannot read the fleet's node list: " ..
      tostring(err))
  end
end

---------------------------------------------------------------------------
-- Heartbeat and registration.

-- The node's own fields, $1..$5 of REGISTER and HEARTBEAT.
local function row_params()
  return { S.id, S.advertise or "", ffi.string(C.ferry_version_string()), S.hash or "",
    S.heartbeat }
end

-- HEARTBEAT's: the row's, then $6 started_at as registered, $7 draining.
local function hb_params()
  local p = row_params()
  p[6], p[7] = S.started, S.stopping ~= nil
  return p
end

local function on_beat(res, err)
  if not res then
    log_window("beat", "warn", "FERRY-8028", "heartbeat failed: " .. tostring(err))
    return
  end
  local now = C.ferry_now()
  S.beat_at = now
  take_rows(res, now)
  local first = res.rows and res.rows[1]
  local mine = first and first.mine
  if mine and S.started and mine ~= S.started then
    if now - (S.clash_at or -math.huge) >= M.LOG_WINDOW then
      S.clash_at = now
      log("error", "FERRY-8027", format("node id clash: another node registered as %s " ..
        "(started %s, this one %s); give each node its own node { id = ... }", S.id,
        tostring(mine), tostring(S.started)))
    end
  end
  -- This node's own row, as of this beat.
  local me = S.rows[S.id]
  if me then
    me.draining = S.stopping ~= nil
    me.stopped = false
    me.age = 0
  end
  evaluate()
  changes.count("node", "out")
end

local register

local function beat()
  if not S.on or S.stopping == "stopping" or S.stopping == "stopped" then return end
  if not S.started then
    -- Not registered yet: the registration failed, retry while up.
    if not S.registering and pg_up() then register() end
    return
  end
  local ok, err = fleet().write("node:" .. S.id, HEARTBEAT, hb_params(), on_beat)
  if not ok then log_window("beat", "warn", "FERRY-8028", "heartbeat not queued: " ..
    tostring(err)) end
  local now = C.ferry_now()
  if pg_up() and now - (S.forgot_at or 0) >= M.FORGET_EVERY then
    S.forgot_at = now
    fleet().write("nodes:forget", FORGET, { M.FORGET_AFTER })
  end
end

function register()
  S.registering = true
  local params = row_params()
  local ok, err = fleet().write("node:" .. S.id, REGISTER, params, function(res, rerr)
    S.registering = false
    local row = res and res.rows and res.rows[1]
    if not row or not row.started then
      log_window("beat", "warn", "FERRY-8028", "cannot register this node: " ..
        tostring(rerr or "no row"))
      return
    end
    S.started = row.started
    S.beat_at = C.ferry_now()
    log("info", "FERRY-8020", format("node %s registered in the fleet (advertise %s, " ..
      "version %s, heartbeat %g s)", S.id, S.advertise ~= "" and tostring(S.advertise) or "-",
      params[3], S.heartbeat))
    changes.count("node", "out")
    beat()
  end)
  if not ok then
    S.registering = false
    log_window("beat", "warn", "FERRY-8028", "cannot register this node: " .. tostring(err))
  end
end

-- The connection is (re)established: register the first time, else a
-- heartbeat (which keeps started_at) brings the row and the list back.
local function on_up()
  if not S.on then return end
  if S.started then
    -- The longest heartbeat of the fleet (each node beats at its own).
    local hb = S.heartbeat
    for _, row in pairs(S.rows) do hb = math.max(hb, row.heartbeat or 0) end
    S.grace_until = C.ferry_now() + view.GONE_BEATS * hb
    beat()
  elseif not S.registering then
    register()
  end
end

local function on_node_message()
  changes.count("node", "in")
  M.read()
end

---------------------------------------------------------------------------
-- Life cycle.

local hooked = false
local on_drain -- below

-- A hash of the config file's content (the main file): nodes whose
-- hashes differ run different configs.
local function config_hash(path)
  local f = path and io.open(path, "rb")
  if not f then return "" end
  local text = f:read("*a") or ""
  f:close()
  local a, b = view.hash(text), view.hash(text:reverse())
  return format("%08x%08x", a % 4294967296, b % 4294967296)
end

-- The node's settings: the hub resolved node { ... } and its defaults
-- (id: the host name; advertise: the first admin listener).
local function node_conf(run)
  local f = fleet()
  local n = run and run.cfg and run.cfg.node or {}
  local id = (f.node_id and f.node_id()) or n.id or "node"
  local advertise = (f.advertise and f.advertise()) or n.advertise or ""
  return id, advertise, tonumber((f.heartbeat and f.heartbeat()) or n.heartbeat) or
    M.DEFAULT_HEARTBEAT
end

-- After every commit (start, reload, runtime inventory change).
function M.committed(run)
  local ok, f = pcall(fleet)
  local enabled = ok and f.enabled and f.enabled()
  if not enabled then
    if S.on then M.stop_fleet() end
    probes().committed(run)
    return
  end
  local id, advertise, hb = node_conf(run)
  local path = ffi.string(C.ferry_config_path())
  local hash = config_hash(path ~= "" and path or (run.cfg and run.cfg.file))
  if S.on and id ~= S.id then
    -- A new id is a new node: the old row stays, gone after 3 beats.
    M.stop_fleet()
  end
  S.id, S.advertise, S.hash = id, advertise, hash
  if not hooked then
    hooked = true
    f.on_up(on_up)
    f.on("node", on_node_message)
    f.on_down(function() evaluate() end)
    f.on_drain(on_drain)
  end
  if not S.on or hb ~= S.heartbeat then
    local timer = require("ferry.timer")
    if S.timer then timer.cancel(S.timer) end
    S.heartbeat = hb
    S.timer = timer.every(hb, beat)
  end
  if not S.on then
    S.on = true
    if f.state and f.state() == "up" then on_up() end
  end
  probes().committed(run)
end

-- The fleet left the config (or the node changed its id).
function M.stop_fleet()
  if S.timer then require("ferry.timer").cancel(S.timer) end
  S.on, S.timer, S.started, S.beat_at, S.registering = false, nil, nil, nil, false
  S.rows, S.states, S.read_at = {}, nil, nil
  probes().nodes_changed()
end

local function mark(draining, stopped, cb)
  return fleet().write("node:" .. S.id, MARK, { S.id, draining, stopped }, cb)
end

-- A stop signal (fleet.on_drain): this node drains; it probes nothing
-- from now on.
function on_drain()
  if not S.on or not S.started or S.stopping then return end
  S.stopping = "draining"
  log("info", "FERRY-8024", format("node %s is draining", S.id))
  mark(true, false)
  probes().nodes_changed()
end

-- Each drain tick after SIGTERM (busy: proxy connections still open).
-- Once they are done, "stopped" goes to the database; true holds the
-- loop until it is written, at most STOP_HOLD seconds.
function M.drain_tick(busy)
  if not S.on or not S.started then return false end
  if S.stopping == nil then on_drain() end
  if busy > 0 then return false end
  local now = C.ferry_now()
  if S.stopping == "draining" then
    S.stopping, S.stop_at = "stopping", now
    local ok = mark(true, true, function(res)
      if res then
        S.stopping = "stopped"
        changes.count("node", "out")
      end
    end)
    if not ok then S.stopping = "stopped" end
  end
  if S.stopping == "stopping" then
    if pg_up() and now - S.stop_at < M.STOP_HOLD then return true end
    S.stopping = "stopped"
    log("warn", "FERRY-8029", format("node %s stops without telling the fleet (PostgreSQL " ..
      "did not answer within %g s): the others see it gone after 3 heartbeats", S.id,
      M.STOP_HOLD))
  end
  return false
end

---------------------------------------------------------------------------
-- What the console, the admin API and the metrics read.

function M.enabled() return S.on end
function M.self_id() return S.id end
function M.heartbeat() return S.heartbeat end
function M.stopping() return S.stopping end

-- The states the admin API and the metrics show: while PostgreSQL is up,
-- the others' states as the last read judged them, the ones the probe
-- division used (judging by the clock here would show a node gone up to a
-- heartbeat before its duties move); while it is down, the growing ages.
local function shown_states(now)
  local st = states_now(now)
  if S.states and pg_up() then
    for id, judged in pairs(S.states) do
      if id ~= S.id and st[id] then st[id] = judged end
    end
  end
  return st
end

-- The ids that probe now (live, not draining), sorted; nil when the
-- division does not apply (no fleet, not registered, PostgreSQL not up:
-- then this node probes everything).
function M.probers()
  if not S.on or not S.started or not S.states or not pg_up() then return nil end
  if S.stopping then return {} end
  return view.probers(S.states)
end

local function round1(x) return floor(x * 10 + 0.5) / 10 end

-- The list: { self = id, stale = bool, view_age_s = n, nodes = { ... } }
-- sorted by id.  stale: PostgreSQL is not up, the list is from memory.
function M.list()
  local now = C.ferry_now()
  local st = shown_states(now)
  local duties = probes().duties_by_node()
  local out = {}
  for id, row in pairs(S.rows) do
    local age = age_now(id, row, now)
    out[#out + 1] = {
      id = id, advertise = row.advertise, version = row.version, config_hash = row.config_hash,
      started = row.started, heartbeat_age_s = age < 1e9 and round1(age) or nil,
      heartbeat_s = row.heartbeat or (id == S.id and S.heartbeat or nil),
      state = st[id], self = id == S.id,
      probes = duties[id] or 0,
    }
  end
  table.sort(out, function(a, b) return a.id < b.id end)
  return { self = S.id, heartbeat_s = S.heartbeat,
           stale = not pg_up() or S.read_at == nil or now - S.read_at > 2 * S.heartbeat,
           view_age_s = S.read_at and round1(now - S.read_at) or nil, nodes = out }
end

-- ferry_fleet_nodes{state} and ferry_fleet_probe_duties ("" without a fleet).
function M.metrics_text()
  if not S.on then return "" end
  local counts = { live = 0, draining = 0, gone = 0, stopped = 0 }
  for _, st in pairs(shown_states(C.ferry_now())) do counts[st] = (counts[st] or 0) + 1 end
  local lines = {
    "# HELP ferry_fleet_nodes Nodes of the fleet by state, as this node sees them.",
    "# TYPE ferry_fleet_nodes gauge",
  }
  for _, k in ipairs({ "live", "draining", "gone", "stopped" }) do
    lines[#lines + 1] = format('ferry_fleet_nodes{state="%s"} %d', k, counts[k])
  end
  lines[#lines + 1] = "# HELP ferry_fleet_probe_duties Proxies this node probes for the fleet."
  lines[#lines + 1] = "# TYPE ferry_fleet_probe_duties gauge"
  lines[#lines + 1] = "ferry_fleet_probe_duties " .. tonumber(C.ferry_probe_duties())
  return table.concat(lines, "\n") .. "\n"
end

-- GET /metrics renders these lines (ferry.metrics keeps the registry).
require("ferry.metrics").register("fleet_nodes", M.metrics_text)
-- The shared family of every fleet part (the same name everywhere: one copy).
require("ferry.metrics").register("fleet_changes", changes.text)

M._S = S
return M
