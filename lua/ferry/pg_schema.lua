-- pg_schema.lua: the fleet's tables in PostgreSQL, migrated on every
-- (re)connect before anything else is sent (pg.set_session's setup).
--
-- Each migration runs in a transaction of its own that first takes a
-- transaction-scoped advisory lock, so nodes starting together take
-- turns: the first applies it, the others find it applied.  A schema
-- newer than this ferry (a version above LATEST in ferry_schema) is
-- refused (FERRY-8009): the fleet stays off, the node keeps serving.
-- A new migration is appended to MIGRATIONS; a number is never reused.
local ffi = require("ffi")
local cdef = require("ferry.cdef")
local pg = require("ferry.pg")

local C = ffi.C
local format = string.format

local M = {}

-- The lock every migration transaction takes (any constant bigint).
local LOCK = 0x6665727279 -- "ferry"

M.MIGRATIONS = {
  -- 1: the fleet's tables (docs/fleet.md).
  {
    [[CREATE TABLE ferry_nodes (
      id text PRIMARY KEY,
      advertise text,
      version text,
      config_hash text,
      started_at timestamptz,
      heartbeat_at timestamptz NOT NULL,
      heartbeat_s double precision,
      draining boolean NOT NULL DEFAULT false,
      stopped boolean NOT NULL DEFAULT false)]],
    [[CREATE TABLE ferry_proxies (
      key text PRIMARY KEY,
      url text NOT NULL,
      pool text,
      opts text NOT NULL DEFAULT '{}',
      enabled boolean NOT NULL DEFAULT true,
      removed boolean NOT NULL DEFAULT false,
      added_at timestamptz NOT NULL DEFAULT clock_timestamp(),
      updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
      updated_by text)]],
    "CREATE INDEX ferry_proxies_updated_at ON ferry_proxies (updated_at)",
    [[CREATE TABLE ferry_bans (
      proxy text,
      exchange text,
      kind text CHECK (kind IN ('ban', 'breaker')),
      until timestamptz NOT NULL,
      reason text,
      node text,
      updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
      PRIMARY KEY (proxy, exchange, kind))]],
    "CREATE INDEX ferry_bans_until ON ferry_bans (until)",
    [[CREATE TABLE ferry_leases (
      proxy text,
      node text,
      held integer NOT NULL,
      updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
      PRIMARY KEY (proxy, node))]],
    "CREATE INDEX ferry_leases_node ON ferry_leases (node)",
    [[CREATE TABLE ferry_pins (
      key text PRIMARY KEY,
      proxy text NOT NULL,
      until timestamptz NOT NULL,
      node text,
      updated_at timestamptz NOT NULL DEFAULT clock_timestamp())]],
    "CREATE INDEX ferry_pins_until ON ferry_pins (until)",
    [[CREATE TABLE ferry_probes (
      proxy text PRIMARY KEY,
      node text NOT NULL,
      up boolean NOT NULL,
      latency_ms double precision,
      checked_at timestamptz NOT NULL DEFAULT clock_timestamp())]],
  },
}
M.LATEST = #M.MIGRATIONS

-- Run the statements one after another (setup queries); cb(rows of the
-- last, nil) or cb(nil, err) at the first failure.
local function steps(list, cb, i, last)
  i = i or 1
  if i > #list then return cb(last) end
  local s = list[i]
  local sql, params = s, nil
  if type(s) == "table" then sql, params = s[1], s[2] end
  pg.query(sql, params, function(res, err)
    if err then return cb(nil, err) end
    steps(list, cb, i + 1, res)
  end, { setup = true })
end

local function rollback_then(cb, err)
  pg.query("ROLLBACK", nil, function() cb(nil, err) end, { setup = true })
end

-- Bring the schema to LATEST; done(true) or done(false, why).
function M.migrate(done)
  local target = ffi.string(C.ferry_pg_target())
  -- A session lost on the way is the driver's to log (FERRY-8004), not a
  -- failed migration: the next session starts over.
  local function lost()
    return C.ferry_pg_state() ~= C.FERRY_PG_UP
  end
  local function apply(n)
    if n > M.LATEST then return done(true) end
    steps({
      "BEGIN",
      { "SELECT pg_advisory_xact_lock($1)", { LOCK } },
      "CREATE TABLE IF NOT EXISTS ferry_schema (version integer NOT NULL, " ..
        "applied_at timestamptz NOT NULL DEFAULT now())",
      "SELECT coalesce(max(version), 0) AS v FROM ferry_schema",
    }, function(res, err)
      if not res and lost() then return done(false, "connection lost") end
      if not res then
        C.ferry_log(cdef.LOG.error, "FERRY-8010", format("postgres %s: migration %d failed: %s",
          target, n, err))
        return rollback_then(function() done(false, "migration failed") end, err)
      end
      local have = tonumber(res.rows[1] and res.rows[1].v) or 0
      if have > M.LATEST then
        if M.refused_at == have then
          return rollback_then(function() done(false, "schema newer than this ferry") end)
        end
        M.refused_at = have
        C.ferry_log(cdef.LOG.error, "FERRY-8009", format("postgres %s: the schema is at version " ..
          "%d, newer than this ferry's %d: refused; the fleet stays off (this node serves on " ..
          "its own) until ferry is upgraded", target, have, M.LATEST))
        return rollback_then(function() done(false, "schema newer than this ferry") end)
      end
      M.refused_at = nil
      if have >= n then
        return steps({ "COMMIT" }, function() apply(n + 1) end)
      end
      local list = {}
      for _, s in ipairs(M.MIGRATIONS[n]) do list[#list + 1] = s end
      list[#list + 1] = { "INSERT INTO ferry_schema (version) VALUES ($1)", { n } }
      list[#list + 1] = "COMMIT"
      steps(list, function(ok, merr)
        if not ok and lost() then return done(false, "connection lost") end
        if not ok then
          C.ferry_log(cdef.LOG.error, "FERRY-8010", format("postgres %s: migration %d failed: %s",
            target, n, merr))
          return rollback_then(function() done(false, "migration failed") end, merr)
        end
        C.ferry_log(cdef.LOG.info, "FERRY-8011", format("postgres %s: schema migrated to " ..
          "version %d", target, n))
        apply(n + 1)
      end)
    end)
  end
  apply(1)
end

return M
