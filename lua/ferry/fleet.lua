-- fleet.lua: the hub every fleet feature (nodes, inventory, shared
-- bans/leases/pins) talks through.  Nothing here is on the request path:
-- a node decides from memory; PostgreSQL only carries changes.
--
--   fleet.enabled()                 store { postgres = ... } is configured
--   fleet.node_id(), fleet.advertise(), fleet.heartbeat(), fleet.resync()
--   fleet.write(key, sql, params[, cb])  a change: queued while PostgreSQL is
--                                   away, coalesced by key (pg.query opts.key)
--   fleet.read(sql, params, cb)     a read: fails at once unless up
--   fleet.notify_sql(json_expr)     "pg_notify('ferry_fleet', (<json_expr>)::text)"
--   fleet.on(kind, fn(msg))         a message of this kind from ANOTHER node
--   fleet.on_up(fn()), fleet.on_down(fn())
--   fleet.on_drain(fn())            a stop signal: queue the last changes (1 s to flush)
--   fleet.state(), fleet.stats()
--
-- Messages: one channel, ferry_fleet; the payload is a JSON object
-- {"t": kind, "n": origin node id, ...} under 7 000 bytes.  A writer
-- emits it in the same statement as the change (atomic, one round trip):
--   WITH w AS (INSERT ... ON CONFLICT ... DO UPDATE ... RETURNING ...)
--   SELECT <fleet.notify_sql("json_build_object('t','ban','n',$1, ...)")> FROM w
-- On every (re)connect the hub migrates the schema (ferry.pg_schema),
-- LISTENs, then calls the on_up functions (resync, re-publish).
-- Handlers live in the one Lua state, so they survive reloads; fleet.on
-- with a function already registered for that kind is a no-op.
local ffi = require("ffi")
local cdef = require("ferry.cdef")
local pg = require("ferry.pg")
local schema = require("ferry.pg_schema")
local timer = require("ferry.timer")

local C = ffi.C
local type, tostring, ipairs, xpcall = type, tostring, ipairs, xpcall
local format = string.format
local traceback = debug.traceback
local cjson -- loaded on the first message

local M = {}

M.CHANNEL = "ferry_fleet"
M.PAYLOAD_MAX = 7000
M.HEARTBEAT_DEFAULT = 2
M.RESYNC_DEFAULT = 30
M.FLUSH_MAX = 1 -- seconds a drain waits for the queue to empty
local SCHEMA_RETRY = 60 -- seconds between two checks of a refused schema

local enabled = false
local node = { id = nil, advertise = nil, heartbeat = M.HEARTBEAT_DEFAULT }
local resync = M.RESYNC_DEFAULT
local handlers = {} -- kind -> list of fn
local ups, downs, drains = {}, {}, {}
local received, own, invalid, unhandled = 0, 0, 0, 0
local retry_timer = nil

pcall(ffi.cdef, "int gethostname(char *name, size_t len);")

-- The host name as a node id: [A-Za-z0-9._-], at most 64 bytes.
function M.default_id()
  local buf = ffi.new("char[256]")
  local name = "node"
  if C.gethostname(buf, 255) == 0 then name = ffi.string(buf) end
  name = name:gsub("[^%w._-]", "-"):sub(1, 64)
  return name ~= "" and name or "node"
end

local function add(list, fn)
  for _, f in ipairs(list) do
    if f == fn then return end
  end
  list[#list + 1] = fn
end

local function call_all(list, what, ...)
  for _, fn in ipairs(list) do
    local ok, e = xpcall(fn, traceback, ...)
    if not ok then
      pg.log_once("fleet-" .. what, cdef.LOG.error, "FERRY-8008", "fleet: an " .. what ..
        " handler raised: " .. tostring(e))
    end
  end
end

-- A notification of the channel: a message from another node.
local function on_notify(channel, payload)
  if channel ~= M.CHANNEL then return end
  received = received + 1
  cjson = cjson or require("cjson.safe")
  local msg = cjson.decode(payload)
  if type(msg) ~= "table" or type(msg.t) ~= "string" or type(msg.n) ~= "string" then
    invalid = invalid + 1
    pg.log_once("fleet-invalid", cdef.LOG.warn, "FERRY-8012", format("fleet: a message on %s " ..
      "is not a JSON object with \"t\" and \"n\" (%d bytes): ignored", M.CHANNEL, #payload))
    return
  end
  if msg.n == node.id then
    own = own + 1
    return
  end
  local list = handlers[msg.t]
  if not list or #list == 0 then
    unhandled = unhandled + 1
    return
  end
  call_all(list, "on(\"" .. msg.t .. "\")", msg)
end

-- Every (re)connect: schema, then LISTEN; then the session is ready.
local function setup(done)
  if retry_timer then
    timer.cancel(retry_timer)
    retry_timer = nil
  end
  schema.migrate(function(ok, why)
    if not ok then
      -- Refused (a newer schema) or failed: look again later.
      retry_timer = timer.after(SCHEMA_RETRY, function()
        retry_timer = nil
        pg.retry_setup()
      end)
      return done(false, why)
    end
    pg.query("LISTEN " .. M.CHANNEL, nil, function(_, err)
      if err then return done(false, "LISTEN failed: " .. err) end
      done(true)
    end, { setup = true })
  end)
end

pg.set_session({
  setup = setup,
  up = function() call_all(ups, "on_up") end,
  down = function() call_all(downs, "on_down") end,
  notify = on_notify,
})

-- After a config is committed (start, reload): follow store.postgres
-- and node { ... }.  cfg.store.postgres nil: the fleet is off.
function M.apply(cfg)
  local st = cfg.store or {}
  local n = cfg.node or {}
  node.id = n.id or M.default_id()
  node.heartbeat = n.heartbeat or M.HEARTBEAT_DEFAULT
  node.advertise = n.advertise
  if not node.advertise then
    for _, l in ipairs(cfg.listeners or {}) do
      if l.protocol == "admin" and l.host and l.port then
        node.advertise = (l.host:find(":", 1, true) and "[" .. l.host .. "]" or l.host) ..
          ":" .. l.port
        break
      end
    end
  end
  resync = st.resync or M.RESYNC_DEFAULT
  local ok, err = pg.configure(st.postgres, { queue = st.queue, timeout = st.timeout })
  if not ok then
    C.ferry_log(cdef.LOG.error, "FERRY-8013", "postgres: " .. tostring(err))
    enabled = false
    return nil, err
  end
  enabled = st.postgres ~= nil
  if not enabled and cfg.node then
    -- Accepted (a config shared by nodes with and without a database),
    -- but said: the node registers nowhere and shares nothing.
    C.ferry_log(cdef.LOG.warn, "FERRY-0255", format("node { id = %q } has no effect " ..
      "without store { postgres = ... }: this ferry is not part of a fleet", node.id))
  end
  if not enabled and retry_timer then
    timer.cancel(retry_timer)
    retry_timer = nil
  end
  return true
end

function M.enabled() return enabled end
function M.node_id() return node.id or M.default_id() end
function M.advertise() return node.advertise end
function M.heartbeat() return node.heartbeat end
function M.resync() return resync end
function M.state() return pg.state() end

-- A change (an idempotent upsert; see ferry.pg): queued while PostgreSQL
-- is away, the queued one with the same key replaced by a later one.
function M.write(key, sql, params, cb)
  if key ~= nil and type(key) ~= "string" then error("fleet.write: key must be a string", 2) end
  if not enabled then return nil, "the fleet is off (no store.postgres)" end
  return pg.query(sql, params, cb, { key = key, offline = "queue" })
end

-- A read: fails at once (nil, err) unless PostgreSQL is up.
function M.read(sql, params, cb)
  if not enabled then return nil, "the fleet is off (no store.postgres)" end
  return pg.query(sql, params, cb, { offline = "fail" })
end

-- A bounded DELETE of the rows of `tbl` matching `where`: at most
-- DELETE_MAX a statement, so a backlog never holds the queue (the rest
-- goes the next time).  Every clean-up of the fleet's tables is one.
M.DELETE_MAX = 1000
function M.bounded_delete_sql(tbl, where)
  return format("DELETE FROM %s WHERE ctid = ANY (ARRAY (SELECT ctid FROM %s WHERE %s " ..
    "LIMIT %d))", tbl, tbl, where, M.DELETE_MAX)
end

-- The SQL that sends the message json_expr (a json/jsonb/text expression).
function M.notify_sql(json_expr)
  return "pg_notify('" .. M.CHANNEL .. "', (" .. json_expr .. ")::text)"
end

function M.on(kind, fn)
  if type(kind) ~= "string" or type(fn) ~= "function" then
    error("fleet.on(kind, fn): a string and a function", 2)
  end
  handlers[kind] = handlers[kind] or {}
  add(handlers[kind], fn)
end

function M.on_up(fn)
  if type(fn) ~= "function" then error("fleet.on_up(fn): a function", 2) end
  add(ups, fn)
end

function M.on_down(fn)
  if type(fn) ~= "function" then error("fleet.on_down(fn): a function", 2) end
  add(downs, fn)
end

-- fn() when the node starts draining (a stop signal): the last changes
-- to queue (draining = true...); the drain waits up to 1 s for them.
function M.on_drain(fn)
  if type(fn) ~= "function" then error("fleet.on_drain(fn): a function", 2) end
  add(drains, fn)
end

-- Each drain tick (runtime.drain): the first runs the on_drain
-- functions; true while their changes (and any queued) are still going
-- out, for at most FLUSH_MAX seconds.
local drain_started = nil
function M.drain(_busy)
  if not enabled then return false end
  local now = C.ferry_now()
  if not drain_started then
    drain_started = now
    call_all(drains, "on_drain")
  end
  return pg.pending() and now - drain_started < M.FLUSH_MAX or false
end

function M.stats()
  local s = pg.stats()
  s.enabled, s.node = enabled, node.id
  s.messages, s.own_messages, s.invalid_messages, s.unhandled_messages =
    received, own, invalid, unhandled
  return s
end

-- The daemon stops.
function M.stop()
  if enabled then pg.stop() end
end

return M
