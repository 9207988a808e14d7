-- pg.lua: the node's PostgreSQL connection (core/pg.c) and its queue.
--
--   pg.configure(conninfo[, opts])  on config commit; the same string: no-op;
--                                   nil: close.  opts = { queue = n, timeout = s }
--   pg.state()     "off" | "connecting" | "up" | "down"
--   pg.query(sql, params, cb[, opts]) -> true | nil, err
--       params: array of strings, numbers, booleans, pg.NULL; sent as text
--       cb(res, err): res = { rows = { { col = "text" or nil }, ... }, affected = n }
--       opts.key      coalescing key: a later query with the same key replaces
--                     the queued one in place (each replaced cb gets the
--                     later one's outcome)
--       opts.offline  "queue" (default: wait for the connection) | "fail"
--                     (nil, err at once unless up; dropped when it goes down)
--   pg.stats()     { state, target, queries, errors, queued, dropped, ... }
--
-- One query is in flight at a time, FIFO.  The queue is bounded
-- (store.queue, default 10 000): a change past it is dropped, counted
-- (ferry_pg_dropped_total) and logged (FERRY-8006).  When the connection
-- is lost, a read in flight fails and a write in flight goes back to the
-- head of the queue to be sent again: writes must therefore be
-- idempotent (upserts, "set to" rather than "add").  C calls M.event
-- (runtime.pg_event) for what happens on the connection; no callback is
-- ever called inside pg.query itself.
--
-- The session hook (set_session, used by ferry.fleet) runs on every
-- (re)connect before anything queued is sent: schema migrations, LISTEN.
-- Its queries pass with opts.setup = true.
local ffi = require("ffi")
local cdef = require("ferry.cdef")

local C = ffi.C
local type, tostring, pairs, ipairs, xpcall = type, tostring, pairs, ipairs, xpcall
local format, floor, huge = string.format, math.floor, math.huge
local traceback = debug.traceback

local M = {}

-- SQL NULL as a parameter.
M.NULL = setmetatable({}, { __tostring = function() return "NULL" end })
M.QUEUE_DEFAULT = 10000
M.TIMEOUT_DEFAULT = 5

local LOG = cdef.LOG
local LOG_WINDOW = 10
local STATE = { [0] = "off", "connecting", "up", "down" }

local configured = nil -- the conninfo given (nil: off)
local limit = M.QUEUE_DEFAULT
local ready = false    -- up, and the session hook is done
local setting_up = false
local session = nil    -- { setup = fn(done), up = fn(), down = fn(), notify = fn(ch, payload) }

-- The queue: q[head..tail]; setup queries go first, in their own list.
local q, head, tail = {}, 1, 0
local setup_q = {}
local keyed = {}       -- key -> queued item
local inflight = nil
local dropped, coalesced, requeued, refused = 0, 0, 0, 0
local hold_reason = nil -- why the session is held back (schema refused), or nil

local log_once = require("ferry.log_once").new(LOG_WINDOW,
  function() return C.ferry_now() end,
  function(level, code, msg) C.ferry_log(level, code, msg) end)
M.log_once = log_once

local function target()
  return ffi.string(C.ferry_pg_target())
end

local function queued()
  return tail - head + 1
end

-- Call each of an item's callbacks with (res, err), protected.
local function finish(item, res, err)
  for _, cb in ipairs(item.cbs) do
    local ok, e = xpcall(cb, traceback, res, err)
    if not ok then
      log_once("cb", LOG.error, "FERRY-8008", "postgres: a query callback raised: " .. tostring(e))
    end
  end
end

local function encode(v, i)
  local t = type(v)
  if t == "string" then
    if v:find("\0", 1, true) then error(format("pg.query: parameter %d holds a NUL byte", i), 3) end
    return v
  elseif t == "number" then
    if v ~= v or v == huge or v == -huge then
      error(format("pg.query: parameter %d is not a finite number", i), 3)
    end
    if v == floor(v) and v > -2^53 and v < 2^53 then return format("%d", v) end
    return format("%.17g", v)
  elseif t == "boolean" then
    return v and "true" or "false"
  elseif v == M.NULL then
    return nil
  end
  error(format("pg.query: parameter %d is a %s (strings, numbers, booleans, pg.NULL)", i, t), 3)
end

local function pop()
  if #setup_q > 0 then return table.remove(setup_q, 1) end
  if not ready or head > tail then return nil end
  local item = q[head]
  q[head] = nil
  head = head + 1
  if head > tail then head, tail = 1, 0 end
  if item.key and keyed[item.key] == item then keyed[item.key] = nil end
  return item
end

local function push_front(item)
  if item.key then
    local newer = keyed[item.key]
    if newer then
      -- A later change with the same key waits: it replaces this one
      -- (whose callbacks come first, as they were first).
      for _, cb in ipairs(newer.cbs) do item.cbs[#item.cbs + 1] = cb end
      newer.cbs = item.cbs
      return
    end
    keyed[item.key] = item
  end
  head = head - 1
  q[head] = item
end

local send_ptrs, send_cap = nil, 0
local err_ptr = ffi.new("const char *[1]")

-- Send the next query when nothing is in flight.
local function pump()
  while not inflight and C.ferry_pg_state() == C.FERRY_PG_UP and C.ferry_pg_busy() == 0 do
    local item = pop()
    if not item then return end
    local n = item.n
    if n > send_cap then
      send_cap = n * 2
      send_ptrs = ffi.new("const char *[?]", send_cap)
    end
    for i = 1, n do send_ptrs[i - 1] = item.params[i] end
    if C.ferry_pg_send(item.sql, n, send_ptrs, err_ptr) == 0 then
      inflight = item
      return
    end
    local err = ffi.string(err_ptr[0])
    if C.ferry_pg_state() == C.FERRY_PG_UP then
      -- Refused locally (not the connection): this query cannot go.
      finish(item, nil, err)
    elseif item.setup then
      finish(item, nil, err)
      return
    else
      push_front(item)
      return
    end
  end
end

-- Run sql with params; see the header.
function M.query(sql, params, cb, opts)
  if type(sql) ~= "string" then error("pg.query: sql must be a string", 2) end
  if params ~= nil and type(params) ~= "table" then error("pg.query: params must be a table", 2) end
  if cb ~= nil and type(cb) ~= "function" then error("pg.query: cb must be a function", 2) end
  opts = opts or {}
  if not configured then return nil, "postgres is not configured (store { postgres = ... })" end
  local offline = opts.offline or "queue"
  if offline ~= "queue" and offline ~= "fail" then
    error('pg.query: offline must be "queue" or "fail"', 2)
  end
  params = params or {}
  local n = 0
  for k in pairs(params) do
    if type(k) == "number" and k > n then n = k end
  end
  local enc = {}
  for i = 1, n do enc[i] = encode(params[i] == nil and M.NULL or params[i], i) end
  local item = { sql = sql, params = enc, n = n, cbs = { cb }, key = opts.key,
    offline = offline, setup = opts.setup }
  if opts.setup then
    setup_q[#setup_q + 1] = item
    pump()
    return true
  end
  if offline == "fail" and not ready then
    return nil, "postgres is " .. M.state()
  end
  local key = opts.key
  if key ~= nil then
    local old = keyed[key]
    if old then
      -- Replace in place: the later change, at the earlier one's turn.
      old.sql, old.params, old.n, old.offline = sql, enc, n, offline
      if cb then old.cbs[#old.cbs + 1] = cb end
      coalesced = coalesced + 1
      return true
    end
  end
  if queued() >= limit then
    dropped = dropped + 1
    log_once("full", LOG.error, "FERRY-8006", format("postgres %s: the outgoing queue holds %d " ..
      "changes, its bound (store.queue): a change was dropped (%d dropped in all)", target(),
      queued(), dropped))
    return nil, "the postgres queue is full"
  end
  tail = tail + 1
  q[tail] = item
  if key ~= nil then keyed[key] = item end
  pump()
  return true
end

-- Fail what cannot wait for the connection (offline "fail").
local function fail_readers(err)
  local keep, nh = {}, 0
  for i = head, tail do
    local item = q[i]
    if item.offline == "fail" then
      finish(item, nil, err)
    else
      nh = nh + 1
      keep[nh] = item
    end
    q[i] = nil
  end
  for i = 1, nh do q[i] = keep[i] end
  head, tail = 1, nh
  keyed = {}
  for i = 1, nh do
    if keep[i].key then keyed[keep[i].key] = keep[i] end
  end
end

local function call_hook(name, ...)
  local fn = session and session[name]
  if not fn then return end
  local ok, e = xpcall(fn, traceback, ...)
  if not ok then
    log_once("hook-" .. name, LOG.error, "FERRY-8008", "postgres: the " .. name ..
      " hook raised: " .. tostring(e))
  end
end

-- The session went away (lost, closed, reconfigured): the query in
-- flight goes back (a write) or fails (a read, a setup query).
local function went_down(err)
  local was = ready
  ready, setting_up = false, false
  local item = inflight
  inflight = nil
  if item then
    if item.setup or item.offline == "fail" then
      finish(item, nil, err)
    else
      requeued = requeued + 1
      push_front(item)
    end
  end
  local setups = setup_q
  setup_q = {}
  for _, s in ipairs(setups) do finish(s, nil, err) end
  fail_readers(err)
  if was then call_hook("down") end
end

local function run_setup()
  if setting_up then return end
  setting_up = true
  local gen = {}
  M._setup_gen = gen
  local function done(ok, why)
    if M._setup_gen ~= gen or C.ferry_pg_state() ~= C.FERRY_PG_UP then return end
    setting_up = false
    if ok then
      hold_reason = nil
      ready = true
      call_hook("up")
      pump()
    else
      hold_reason = why or "the session setup failed"
    end
  end
  if session and session.setup then
    local ok, e = xpcall(session.setup, traceback, done)
    if not ok then
      log_once("hook-setup", LOG.error, "FERRY-8008", "postgres: the session setup raised: " ..
        tostring(e))
      setting_up = false
      hold_reason = "the session setup raised"
    end
  else
    done(true)
  end
end

-- Try the session setup again (after a refusal, e.g. a newer schema).
function M.retry_setup()
  if not ready and not setting_up and C.ferry_pg_state() == C.FERRY_PG_UP then run_setup() end
end

local function read_result()
  local st = C.ferry_pg_result_status()
  if st == C.FERRY_PG_RES_ERROR or st == C.FERRY_PG_RES_NONE then
    return nil, ffi.string(C.ferry_pg_result_error()), ffi.string(C.ferry_pg_result_sqlstate())
  end
  local rows = {}
  local nr, nf = C.ferry_pg_nrows(), C.ferry_pg_nfields()
  if nr > 0 then
    local names = {}
    for c = 0, nf - 1 do names[c] = ffi.string(C.ferry_pg_fname(c)) end
    local len = ffi.new("int[1]")
    for r = 0, nr - 1 do
      local row = {}
      for c = 0, nf - 1 do
        local v = C.ferry_pg_value(r, c, len)
        if v ~= nil then row[names[c]] = ffi.string(v, len[0]) end
      end
      rows[r + 1] = row
    end
  end
  return { rows = rows, affected = C.ferry_pg_affected() }
end

-- The core: something happened on the connection (enum ferry_pg_event).
function M.event(ev)
  if ev == C.FERRY_PG_EV_UP then
    went_down("the session was set up again")
    run_setup()
  elseif ev == C.FERRY_PG_EV_DOWN then
    went_down("postgres connection lost: " .. ffi.string(C.ferry_pg_error()))
  elseif ev == C.FERRY_PG_EV_RESULT then
    local item = inflight
    inflight = nil
    if item then
      local res, err, state = read_result()
      if err and not item.setup then
        if state == "57014" then
          log_once("slow", LOG.warn, "FERRY-8007", format("postgres %s: a query ran past " ..
            "statement_timeout and was cancelled: %s", target(), err))
        else
          log_once("query", LOG.error, "FERRY-8005", format("postgres %s: a %s failed: %s " ..
            "(SQLSTATE %s)", target(), item.offline == "fail" and "read" or "write", err, state))
        end
      end
      finish(item, res, err and (err .. " (SQLSTATE " .. state .. ")"))
    end
    pump()
  elseif ev == C.FERRY_PG_EV_NOTIFY then
    local ch, payload = C.ferry_pg_notify_channel(), C.ferry_pg_notify_payload()
    call_hook("notify", ch ~= nil and ffi.string(ch) or "", payload ~= nil and ffi.string(payload)
      or "")
  end
end

-- The session hooks (one owner: ferry.fleet).
function M.set_session(hooks)
  session = hooks
end

-- pg.configure(conninfo[, opts]) -- see the header.
function M.configure(conninfo, opts)
  opts = opts or {}
  limit = opts.queue or M.QUEUE_DEFAULT
  local timeout = opts.timeout or M.TIMEOUT_DEFAULT
  if conninfo == configured then
    C.ferry_pg_configure(conninfo, timeout, err_ptr) -- the timeout, from the next session
    return true
  end
  if C.ferry_pg_configure(conninfo, timeout, err_ptr) ~= 0 then
    return nil, ffi.string(err_ptr[0])
  end
  went_down(conninfo and "postgres was configured anew" or "postgres was closed")
  hold_reason = nil
  if not conninfo then
    -- Nothing can be sent any more: count what waited as dropped.
    dropped = dropped + queued()
    for i = head, tail do finish(q[i], nil, "postgres was closed") end
    q, head, tail, keyed = {}, 1, 0, {}
  end
  configured = conninfo
  return true
end

function M.state()
  local s = STATE[C.ferry_pg_state()] or "off"
  if s == "up" and not ready then return hold_reason and "down" or "connecting" end
  return s
end

function M.ready()
  return ready
end

-- True while the session is ready and changes wait or one is in flight.
function M.pending()
  return ready and (queued() > 0 or inflight ~= nil)
end

local st = ffi.new("struct ferry_pg_stats")
function M.stats()
  C.ferry_pg_stats(st)
  return {
    state = M.state(),
    target = configured and target() or nil,
    queries = tonumber(st.queries),
    errors = tonumber(st.errors),
    notifies = tonumber(st.notifies),
    connects = tonumber(st.connects),
    reconnects = tonumber(st.reconnects),
    queued = queued() + #setup_q,
    inflight = inflight ~= nil,
    dropped = dropped,
    coalesced = coalesced,
    requeued = requeued,
    refused = refused,
    limit = limit,
    timeout = tonumber(st.timeout),
    held = hold_reason,
    last_error = configured and ffi.string(C.ferry_pg_error()) or nil,
    up_for = ready and (C.ferry_now() - st.up_since) or nil,
    down_for = st.down_since > 0 and (C.ferry_now() - st.down_since) or nil,
  }
end

-- The ferry_pg_* families (only once store.postgres was configured).
function M.metrics_text()
  if not configured and dropped == 0 then return "" end
  local s = M.stats()
  return table.concat({
    "# HELP ferry_pg_up 1 when the PostgreSQL session is up and set up (schema ready).",
    "# TYPE ferry_pg_up gauge",
    "ferry_pg_up " .. (ready and 1 or 0),
    "# HELP ferry_pg_queries_total Queries sent to PostgreSQL.",
    "# TYPE ferry_pg_queries_total counter",
    "ferry_pg_queries_total " .. s.queries,
    "# HELP ferry_pg_errors_total Queries that failed, and sessions lost.",
    "# TYPE ferry_pg_errors_total counter",
    "ferry_pg_errors_total " .. s.errors,
    "# HELP ferry_pg_queue Queries waiting to be sent.",
    "# TYPE ferry_pg_queue gauge",
    "ferry_pg_queue " .. s.queued,
    "# HELP ferry_pg_dropped_total Changes dropped: the queue was full, or ferry stopped first.",
    "# TYPE ferry_pg_dropped_total counter",
    "ferry_pg_dropped_total " .. s.dropped,
    "# HELP ferry_pg_reconnects_total Sessions set up again after a loss or a failed attempt.",
    "# TYPE ferry_pg_reconnects_total counter",
    "ferry_pg_reconnects_total " .. s.reconnects,
    "# HELP ferry_pg_notifies_total Notifications received (LISTEN).",
    "# TYPE ferry_pg_notifies_total counter",
    "ferry_pg_notifies_total " .. s.notifies,
    "",
  }, "\n")
end

require("ferry.metrics").register("pg", M.metrics_text)

-- The daemon stops: what still waits is not sent; count it and say so.
function M.stop()
  local n = queued() + (inflight and 1 or 0)
  if n > 0 then
    dropped = dropped + n
    C.ferry_log(LOG.warn, "FERRY-8014", format("postgres %s: stopping with %d change%s not " ..
      "written", target(), n, n == 1 and "" or "s"))
  end
  q, head, tail, keyed, inflight, setup_q = {}, 1, 0, {}, nil, {}
end

return M
