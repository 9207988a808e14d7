-- store_pg.lua: the inventory in PostgreSQL (store { postgres = ... }),
-- shared by every node of the fleet, behind ferry.store's interface.
--
-- Every write goes through fleet.write (queued while the database is
-- down, coalesced per proxy key) and is one statement: the upsert of the
-- row in ferry_proxies (updated_at = clock_timestamp(), updated_by = this
-- node) and the NOTIFY of kind "proxy" that tells the other nodes, so
-- the change and its message are atomic.  done(ok, err, row) is called
-- when the database answered: row is the row as it now is (see
-- row_of), or nil when the statement changed nothing (an enable or
-- disable of a removed proxy: a removal wins over an update).
--
-- Conflict rule (docs/fleet.md, "Shared inventory"): the last writer by
-- database time wins per key; a removal is a tombstone (removed = true)
-- that an update (enable/disable) never resurrects (DO UPDATE ... WHERE
-- NOT removed); only an explicit add does.
--
-- With a sealing key (store { key = ... }), a URL that carries
-- credentials is sealed before it leaves (core/secret_ffi.c, the format
-- of the SQLite store), in the row and in the message alike; so is a
-- proxy key that is such a URL (with a nonce derived from the value, so
-- equal keys stay equal and ON CONFLICT (key) still finds the row).
local ffi = require("ffi")
local cjson = require("cjson.safe")
require("ferry.cdef")

local C = ffi.C
local type, tonumber, pcall, ipairs = type, tonumber, pcall, ipairs

local M = { NAME = "pg", ASYNC = true }

local seal_key = nil -- the store's 32-byte key, or nil

function M.set_key(k)
  seal_key = k
end

local function fleet()
  return require("ferry.fleet")
end

---------------------------------------------------------------------------
-- Sealing.

-- url as stored: sealed when a key is configured and it has credentials.
-- deterministic: for a proxy key that is a URL (looked up by equality).
function M.seal(url, deterministic)
  if not seal_key or not url:find("@", 1, true) or C.ferry_secret_is_sealed(url) ~= 0 then
    return url
  end
  local p = C.ferry_secret_seal_text(seal_key, #seal_key, url, deterministic and 1 or 0)
  if p == nil then return nil, "sealing failed (out of memory)" end
  local s = ffi.string(p)
  C.ferry_secret_free(p)
  return s
end

local out = ffi.new("char *[1]")

-- A stored URL as it was given, or nil and why not (never the value).
function M.open(url)
  if type(url) ~= "string" or C.ferry_secret_is_sealed(url) == 0 then return url end
  if not seal_key then
    return nil, "the URL is sealed and this node has no store key (store { key = ... })"
  end
  local rc = C.ferry_secret_open_text(seal_key, #seal_key, url, out)
  if rc ~= 0 then
    return nil, rc == -2 and "out of memory" or "the URL is sealed with another key"
  end
  local s = ffi.string(out[0])
  C.ferry_secret_free(out[0])
  out[0] = nil
  return s
end

---------------------------------------------------------------------------
-- Statements.  $1 key, $2 url, $3 pool, $4 opts, $5 enabled, $6 node, $7 op.

-- The row's updated_at in epoch microseconds, as text (exact in a double).
local MICROS = "(extract(epoch from w.updated_at) * 1000000)::bigint::text"

-- The message (docs/fleet.md): the row rides along when it fits in a
-- NOTIFY; otherwise receivers read it by key.  Never logged: the URL
-- may carry credentials (sealed only with a key).
local NOTIFY = "SELECT pg_notify('ferry_fleet', json_build_object('t', 'proxy', 'n', $6::text, " ..
  "'k', w.key, 'op', $7::text, 'u', " .. MICROS .. ", 'r', w.removed, 'e', w.enabled, " ..
  "'pool', w.pool, 'full', octet_length(w.url) + octet_length(w.opts) < 6000, " ..
  "'url', CASE WHEN octet_length(w.url) + octet_length(w.opts) < 6000 THEN w.url END, " ..
  "'opts', CASE WHEN octet_length(w.url) + octet_length(w.opts) < 6000 THEN w.opts END)::text), " ..
  "w.key, w.url, w.pool, w.opts, w.enabled, w.removed, " .. MICROS .. " AS u FROM w"

local RETURNING = " RETURNING p.key, p.url, p.pool, p.opts, p.enabled, p.removed, p.updated_at)"

local INSERT = "WITH w AS (INSERT INTO ferry_proxies AS p (key, url, pool, opts, enabled, " ..
  "removed, updated_at, updated_by) VALUES ($1, $2, $3, $4, $5, $7::text = 'del', " ..
  "clock_timestamp(), $6) ON CONFLICT (key) DO UPDATE SET "

-- An add: the whole row, and a removed one comes back.
M.SQL_PUT = INSERT .. "url = EXCLUDED.url, pool = EXCLUDED.pool, opts = EXCLUDED.opts, " ..
  "enabled = EXCLUDED.enabled, removed = false, added_at = CASE WHEN p.removed THEN " ..
  "clock_timestamp() ELSE p.added_at END, updated_at = clock_timestamp(), " ..
  "updated_by = EXCLUDED.updated_by" .. RETURNING .. NOTIFY

-- An enable or disable: the flag only, never on a removed row.  The row
-- is inserted whole when it is not there yet (the add it follows may
-- have been coalesced away in the queue while the database was down).
M.SQL_SET = INSERT .. "enabled = EXCLUDED.enabled, updated_at = clock_timestamp(), " ..
  "updated_by = EXCLUDED.updated_by WHERE NOT p.removed" .. RETURNING .. NOTIFY

-- A removal: a tombstone, kept for store_pg.TOMBSTONE_DAYS.
M.SQL_DEL = INSERT .. "removed = true, updated_at = clock_timestamp(), " ..
  "updated_by = EXCLUDED.updated_by" .. RETURNING .. NOTIFY

M.TOMBSTONE_DAYS = 7

local SELECT = "SELECT key, url, pool, opts, enabled, removed, " ..
  "(extract(epoch from updated_at) * 1000000)::bigint::text AS u FROM ferry_proxies "

M.SQL_ALL = SELECT .. "WHERE NOT removed OR updated_at > clock_timestamp() - interval '" ..
  M.TOMBSTONE_DAYS .. " days'"
M.SQL_ONE = SELECT .. "WHERE key = $1"

-- Tombstones older than TOMBSTONE_DAYS go: a bounded DELETE every node
-- sends at its periodic resync.  A change queued on a node away for
-- longer than that may bring such a proxy back: the removal is no longer
-- there to win.
function M.purge()
  local f = fleet()
  return f.write("purge:proxies", f.bounded_delete_sql("ferry_proxies", "removed AND " ..
    "updated_at < clock_timestamp() - interval '" .. M.TOMBSTONE_DAYS .. " days'"), {})
end

---------------------------------------------------------------------------
-- Rows.

local function truthy(v)
  return v == true or v == "t" or v == "true"
end

local function present(v)
  if v == nil or v == cjson.null then return nil end
  return v
end

-- A row of the table (text columns) or a message (JSON values) as the
-- inventory applies it: { key, url, pool, opts, enabled, removed, u }
-- (u: updated_at in epoch microseconds); url nil when it did not fit in
-- the message (or could not be opened: row.bad says why).
function M.row_of(r)
  local key, kwhy = M.open(r.key or r.k)
  local row = { key = key, pool = present(r.pool),
                enabled = truthy(r.enabled == nil and r.e or r.enabled),
                removed = truthy(r.removed == nil and r.r or r.removed),
                u = tonumber(r.u) }
  local opts = present(r.opts)
  if type(opts) == "string" then opts = cjson.decode(opts) end
  row.opts = type(opts) == "table" and opts or {}
  local url = present(r.url)
  if url then
    local plain, why = M.open(url)
    row.url, row.bad = plain, why
  end
  if not key then
    -- A key that is a sealed URL this node cannot open: left out.
    row.key, row.url, row.bad = r.key or r.k, nil, kwhy
  end
  return row
end

---------------------------------------------------------------------------
-- The store interface (ferry.store).

local function write(op, key, url, pool, opts, enabled, done)
  local f = fleet()
  local sealed, serr = M.seal(url or "")
  if not sealed then return nil, serr end
  local skey, kerr = M.seal(key, true)
  if not skey then return nil, kerr end
  local ok, json = pcall(cjson.encode, opts or {})
  if not ok or not json then return nil, "opts cannot be encoded as JSON" end
  local sql = op == "put" and M.SQL_PUT or op == "set" and M.SQL_SET or M.SQL_DEL
  local params = { skey, sealed, pool or require("ferry.pg").NULL, json, enabled ~= false,
                   f.node_id(), op }
  return f.write("proxy:" .. key, sql, params, function(res, err)
    if not done then return end
    if not res then return done(nil, err) end
    local r = res.rows and res.rows[1]
    done(true, nil, r and M.row_of(r) or nil)
  end)
end

function M.put(key, url, pool, opts, enabled, done)
  return write("put", key, url, pool, opts, enabled, done)
end

-- row: the entry as the inventory holds it ({ url, pool, opts }), so the
-- row can be inserted whole when it is not in the table yet.
function M.set_enabled(key, enabled, done, row)
  row = row or {}
  return write("set", key, row.url, row.pool, row.opts, enabled, done)
end

function M.delete(key, done)
  return write("del", key, "", nil, {}, false, done)
end

-- Every row (tombstones of the last TOMBSTONE_DAYS too): cb(rows) with
-- rows as row_of makes them, or cb(nil, err).
function M.read_all(cb)
  return fleet().read(M.SQL_ALL, {}, function(res, err)
    if not res then return cb(nil, err) end
    local rows = {}
    for i, r in ipairs(res.rows or {}) do rows[i] = M.row_of(r) end
    cb(rows)
  end)
end

-- One row by key: cb(row) (nil: no such row), or cb(nil, err).
function M.read_one(key, cb)
  local skey, kerr = M.seal(key, true)
  if not skey then return nil, kerr end
  return fleet().read(M.SQL_ONE, { skey }, function(res, err)
    if not res then return cb(nil, err) end
    local r = res.rows and res.rows[1]
    cb(r and M.row_of(r) or false)
  end)
end

-- Health stays local with PostgreSQL (what a node's own network sees):
-- nothing is saved or restored; probes measure it again after a start.
function M.save_health() return 0 end
function M.load_health() return 0 end

return M
