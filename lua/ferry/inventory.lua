-- inventory.lua: the live proxy inventory.
--
-- Proxies added at runtime (console proxy.add, POST /api/v1/proxies) live
-- in an overlay that the runtime merges into the config's pools on every
-- load, reload and change (merge), so a reload never drops them.  The
-- overlay is written to the store (store { path = ... }, ferry.store)
-- before a change is acknowledged, and read back from it at start; with
-- no store configured it lives in memory only.  Enabled/disabled state
-- is kept the same way: in the overlay row of a runtime proxy, or in an
-- "override" row (pool NULL) for a proxy the config declares.
--
-- Identity: a proxy's key is its id, else its URL (as the core's).  A
-- runtime proxy cannot take the key of a proxy the config declares; a
-- proxy the config declares cannot be removed here (only disabled).
-- Errors come back as nil, { status, code, message }: the HTTP handlers
-- answer them as they are, the console prints the message.
local ffi = require("ffi")
local bit = require("bit")
local cjson = require("cjson.safe")
local cdef = require("ferry.cdef")
local proxy_entry = require("ferry.proxy_entry")
local store = require("ferry.store")
local health = require("ferry.health")
local connstats = require("ferry.connstats")

local C = ffi.C
local band = bit.band
local format, concat = string.format, table.concat
local pairs, ipairs, type, tostring, tonumber = pairs, ipairs, type, tostring, tonumber
local floor = math.floor

local M = {}

M.MAX_ID = proxy_entry.MAX_ID
M.MAX_REGION = proxy_entry.MAX_REGION
M.MAX_URL = proxy_entry.MAX_URL

local entries = {}   -- the overlay, oldest first: { key, url, pool, opts, enabled, px }
local by_key = {}    -- key -> entry
local overrides = {} -- key -> false: a proxy of the config disabled at runtime
local store_path = nil -- the open store's path; nil: changes live in memory only
local store_key = nil  -- its sealing key (32 bytes), or nil
-- The shared store (store { postgres = ... }, ferry.store_pg): changes
-- apply here at once and go to the database asynchronously; the other
-- nodes' changes arrive as messages (apply_row).  shared_at: when the
-- first full read came in (nil: not yet).
local shared = false
local shared_at = nil
local held = {}     -- key -> updated_at (epoch us) of the newest row state applied
local inflight = {} -- key -> writes of ours the database has not answered yet
local parked = {}   -- key -> the newest row received while ours was in flight
local by_cid = {}    -- C id -> { cid, key, label, display, pools, config, entry } (running config)
local warned = {}    -- keys already logged as waiting for their pool

local function fail(status, code, message)
  return nil, { status = status, code = code, message = message }
end

local function bad(message) return fail(400, "FERRY-7501", message) end

-- level: "debug", "info", "warn" or "error".
local function log(level, code, msg)
  C.ferry_log(cdef.LOG[level], code, msg)
end

---------------------------------------------------------------------------
-- A proxy entry: checked by the validator the config uses too.

-- The proxy as apply.build_pools wants it (config.lua's shape), marked
-- as a runtime one; or nil and a message naming the field.  kind: the
-- pool's ("backends": a backend's URL and fields, with the pool's tls
-- pool_tls for https:// ones), default "proxies".
function M.parse_proxy(u, opts, kind, pool_tls)
  opts = opts or {}
  local backends = kind == "backends"
  local px, err = proxy_entry.validate({ url = u, id = opts.id, weight = opts.weight,
    region = opts.region, tls = opts.tls, backup = opts.backup },
    backends and proxy_entry.BACKEND_INVENTORY or proxy_entry.INVENTORY,
    backends and { kind = "backends", pool_tls = pool_tls } or nil)
  if not px then return nil, err end
  px.runtime = true
  px.kind = backends and "backends" or "proxies"
  return px
end

-- The proxy a parsed URL reaches, for "one entry per proxy per pool":
-- the same scheme, host, port and user name is the same proxy whatever
-- the password (a new password is a change, not a second proxy); another
-- user name on the same endpoint is another proxy (providers sell
-- sessions and regions as user names).
function M.endpoint(px)
  return concat({ px.scheme, px.host, tostring(px.port), px.user or "" }, "\0")
end

local ADD_FIELDS = { pool = true, url = true, id = true, weight = true, region = true,
                     tls = true, backup = true }
local OPT_FIELDS = { id = true, weight = true, region = true, tls = true, backup = true }

local function sorted_keys(t)
  local ks = {}
  for k in pairs(t) do ks[#ks + 1] = tostring(k) end
  table.sort(ks)
  return ks
end

-- JSON null means "not given".
local function present(v)
  if v == cjson.null then return nil end
  return v
end

-- A POST /api/v1/proxies body or the console's (pool, url, opts), field
-- by field.  Returns { pool, url, opts } or nil, err.
function M.check_fields(t, allowed)
  allowed = allowed or ADD_FIELDS
  for _, k in ipairs(sorted_keys(t)) do
    if not allowed[k] then
      return bad(format('unknown field "%s" (known: %s)', k, concat(sorted_keys(allowed), ", ")))
    end
  end
  local f = { pool = present(t.pool), url = present(t.url), opts = {} }
  for k in pairs(OPT_FIELDS) do f.opts[k] = present(t[k]) end
  return f
end

---------------------------------------------------------------------------
-- The overlay and the store.

local function disabled(key)
  local e = by_key[key]
  if e then return e.enabled == false end
  return overrides[key] == false
end

local function make_entry(row)
  local e = { key = row.key, url = row.url, pool = row.pool, opts = row.opts or {},
              enabled = row.enabled ~= false }
  local px, err = M.parse_proxy(row.url, e.opts)
  e.px, e.invalid = px, err
  return e
end

-- Replace the overlay with the store's rows.
local function load_rows(rows)
  entries, by_key, overrides = {}, {}, {}
  for _, row in ipairs(rows) do
    if row.pool == nil then
      if row.enabled == false then overrides[row.key] = false end
    else
      local e = make_entry(row)
      if e.invalid then
        -- Never dropped: the row stays in the store, the proxy waits.
        log("warn", "FERRY-0122", format('store: a stored proxy of pool "%s" is not valid and ' ..
          "is left out: %s", tostring(row.pool), e.invalid))
      end
      entries[#entries + 1] = e
      by_key[e.key] = e
    end
  end
end

local function resolve_path(cfg, p)
  if p:sub(1, 1) == "/" then return p end
  return (cfg.dir or ".") .. "/" .. p
end

-- The config's store path and sealing key (nil: none).  A PostgreSQL
-- store (shared, ferry.store_pg) gives the path "postgres".
local function store_of(cfg)
  local s = cfg.store
  if s and s.postgres then return "postgres", s.key and s.key() or nil end
  if not s or type(s.path) ~= "string" or s.path == "" then return nil end
  return resolve_path(cfg, s.path), s.key and s.key() or nil
end

local sharing -- ferry.inventory_fleet, loaded with the first shared store

-- Use the fleet's database: nothing is read now (the config's proxies
-- serve at once); the runtime proxies arrive with the first full read
-- when the connection comes up (ferry.inventory_fleet).
local function open_shared(cfg, key)
  if store_path then store.close() end
  store.use("pg")
  require("ferry.store_pg").set_key(key)
  if not shared then
    entries, by_key, overrides = {}, {}, {}
    held, inflight, parked, shared_at = {}, {}, {}, nil
  end
  shared, store_path, store_key = true, nil, key
  sharing = sharing or require("ferry.inventory_fleet")
  sharing.start(cfg, M)
  log("info", "FERRY-0120", "store: PostgreSQL (shared by the fleet); runtime proxies are " ..
    "read when the database answers")
  return true
end

-- Back to SQLite or memory from the shared store (a reload).
local function leave_shared()
  if not shared then return end
  if sharing then sharing.stop() end
  store.use("sqlite")
  shared, shared_at = false, nil
  held, inflight, parked = {}, {}, {}
end

local function open_and_read(path, key)
  local ok, err = store.open(path, key)
  if not ok then return nil, tostring(err) end
  local rows, rerr = store.proxies()
  if not rows then return nil, tostring(rerr) end
  return rows
end

-- At start (runtime.load): open the config's store and read its proxies
-- into the overlay.  A store that cannot be opened or read refuses the
-- start (never a silent fresh inventory).
function M.open_store(cfg)
  local path, key = store_of(cfg)
  if path == "postgres" then return open_shared(cfg, key) end
  leave_shared()
  if not path then
    store_path = nil
    return true
  end
  local rows, err = open_and_read(path, key)
  if not rows then return nil, err end
  load_rows(rows)
  store_path, store_key = path, key
  local n, o = #entries, 0
  for _ in pairs(overrides) do o = o + 1 end
  log("info", "FERRY-0120", format("store %s: %d runtime %s, %d disabled config %s", path, n,
    n == 1 and "proxy" or "proxies", o, o == 1 and "proxy" or "proxies"))
  return true
end

-- On reload: follow a changed store path.  Returns an undo function
-- (for a reload that fails later) or nil, err.
function M.reload_store(cfg)
  local path, key = store_of(cfg)
  if path == "postgres" then
    -- The runtime proxies are the fleet's: they stay; a new key or
    -- resync period applies from now on (no undo needed).
    if shared then
      require("ferry.store_pg").set_key(key)
      store_key = key
      sharing.start(cfg, M)
      return function() end
    end
    local old = { entries, by_key, overrides, store_path, store_key }
    open_shared(cfg, key)
    return function()
      leave_shared()
      entries, by_key, overrides = old[1], old[2], old[3]
      store_path, store_key = old[4], old[5]
      if store_path then store.open(store_path, store_key) end
    end
  end
  if shared then
    -- Leaving the fleet's store: the overlay starts again from the new one.
    leave_shared()
    entries, by_key, overrides = {}, {}, {}
    store_key = nil
  end
  if path == store_path and key == store_key then return function() end end
  local old_path, old_key = store_path, store_key
  local old = { entries, by_key, overrides }
  local function undo()
    entries, by_key, overrides = old[1], old[2], old[3]
    if not old_path then
      store.close()
    elseif not store.open(old_path, old_key) then
      -- The same file, sealed with the new key while it opened: it
      -- cannot go back to the old key, so the new one stays in use.
      log("warn", "FERRY-0213", format("store %s: stays open with the key of the refused reload " ..
        "(it sealed the store)", store_path))
      return
    end
    store_path, store_key = old_path, old_key
  end
  if not path then
    store.close()
    store_path, store_key = nil, nil
    log("warn", "FERRY-0120", "store: the config has no store any more; runtime changes now " ..
      "live in memory only")
    return undo
  end
  local rows, err = open_and_read(path, key)
  if not rows then
    if old_path then store.open(old_path, old_key) end
    return nil, err
  end
  load_rows(rows)
  store_path, store_key = path, key
  log("info", "FERRY-0120", format("store %s: %d runtime %s", path, #entries,
    #entries == 1 and "proxy" or "proxies"))
  return undo
end

function M.store_path()
  if shared then return "postgres (shared by the fleet)" end
  return store_path
end

-- Whether changes go to the fleet's database (store { postgres }).
function M.shared()
  return shared
end

-- After the first apply: saved health as the starting point.
function M.load_health()
  if not store_path then return 0 end -- shared store: health stays local
  local n, err = store.load_health()
  if not n then
    log("warn", "FERRY-0122", "store: saved health not restored: " .. tostring(err))
    return nil, err
  end
  return n
end

-- At stop: save the health of every proxy, close the store.
function M.stop()
  if shared then
    leave_shared()
    return true
  end
  if not store_path then return true end
  local n, err = store.save_health()
  if not n then
    log("error", "FERRY-0123", "store: saving health failed: " .. tostring(err))
  else
    log("info", "FERRY-0121", format("store %s: health of %d proxies saved", store_path, n))
  end
  store.close()
  store_path, store_key = nil, nil
  return n ~= nil, err
end

---------------------------------------------------------------------------
-- Merging into a config, and what the running config holds.

-- Put the overlay's proxies into their pools of cfg.  The config's own
-- lists are kept aside (pc.base_proxies) so merging again is idempotent.
-- A pool takes one entry per proxy (M.endpoint): a runtime proxy whose
-- key or endpoint the pool has already (the config declares it now, or
-- a store written before that rule holds it twice) waits.
function M.merge(cfg)
  local keys = {}
  for name, pc in pairs(cfg.pools) do
    pc.base_proxies = pc.base_proxies or pc.proxies
    local list, seen = {}, {}
    for i, px in ipairs(pc.base_proxies) do
      list[i] = px
      seen[px.id or px.url] = "the config declares it now"
      seen[M.endpoint(px)] = "the config declares the same proxy now"
    end
    pc.proxies, keys[name] = list, seen
  end
  for _, e in ipairs(entries) do
    -- A stored entry is read as its pool's kind (a backend's http:// URL
    -- is no proxy): parsed again when the pool's kind is not the one it
    -- was read as.
    local want = cfg.pools[e.pool] and cfg.pools[e.pool].kind or "proxies"
    if cfg.pools[e.pool] and (e.kind or "proxies") ~= want then
      e.px, e.invalid = M.parse_proxy(e.url, e.opts, want, cfg.pools[e.pool].tls)
      e.kind = want
    end
    local pc = e.px and cfg.pools[e.pool]
    local taken = pc and (keys[e.pool][e.key] or keys[e.pool][M.endpoint(e.px)])
    e.active = false
    if pc and not taken then
      pc.proxies[#pc.proxies + 1] = e.px
      keys[e.pool][M.endpoint(e.px)] = "the pool has the same proxy under another name"
      e.active = true
      warned[e.key] = nil
    elseif e.px and not warned[e.key] then
      warned[e.key] = true
      log("warn", "FERRY-0122", format('runtime proxy %s of pool "%s": %s; it waits (proxy.remove ' ..
        "drops it)", e.px.display, e.pool, pc and taken or "the pool is not in the config"))
    end
  end
end

-- After a commit: map the running proxies back to their keys, and give
-- the core the disabled flags the overlay remembers.
function M.committed(run)
  local cfg = run.cfg
  local map = {}
  for _, name in ipairs(cfg.pool_order) do
    for _, px in ipairs(cfg.pools[name].proxies) do
      local cid = px.cid
      if cid and run.proxies[cid] then
        local key = px.id or px.url
        local info = map[cid]
        if not info then
          info = { cid = cid, key = key, label = px.id or tostring(cid), display = px.display,
                   pools = {} }
          map[cid] = info
        end
        info.pools[#info.pools + 1] = name
        if px.runtime then info.entry = by_key[key] else info.config = true end
      end
    end
  end
  by_cid = map
  -- The overlay is the one source of the operator's flag (also after a
  -- reload switched stores): set where it differs.
  for cid, info in pairs(map) do
    local c = run.proxies[cid]
    local off = disabled(info.key)
    if off ~= (band(tonumber(c.flags), cdef.PROXY_DISABLED) ~= 0) then
      C.ferry_proxy_set_flag(c, cdef.PROXY_DISABLED, off and 1 or 0)
    end
  end
end

-- What the running config knows of proxy id cid (nil if not running).
function M.info(cid)
  return by_cid[cid]
end

-- Runtime proxies that are not running: their pool is gone, the config
-- declares them itself now, or their stored URL is not valid.
function M.waiting()
  local out = {}
  for _, e in ipairs(entries) do
    if not e.active then
      out[#out + 1] = { name = e.opts.id, pool = e.pool,
                        url = e.px and e.px.display or "(invalid URL)",
                        why = e.invalid and ("invalid: " .. e.invalid) or "pool not running it" }
    end
  end
  return out
end

function M.count()
  return #entries
end

---------------------------------------------------------------------------
-- Finding a proxy by what an operator types: its number, or its id.

function M.resolve(cur, ref)
  if cur == nil then return fail(503, "FERRY-7506", "no config is running") end
  local cid
  if type(ref) == "number" then
    cid = ref
  elseif type(ref) == "string" and ref:match("^%d+$") and #ref < 10 then
    cid = tonumber(ref)
  elseif type(ref) == "string" then
    for id, info in pairs(by_cid) do
      if info.label == ref then cid = id break end
    end
  else
    return bad("id: expected a proxy number or name, got a " .. type(ref))
  end
  if cid and by_cid[cid] and cur.proxies[cid] then return cid, cur.proxies[cid] end
  local shown = type(ref) == "string" and ref:sub(1, 64) or tostring(ref)
  return fail(404, "FERRY-7503", format('no proxy "%s" (proxy.list() shows ids and names)', shown))
end

-- A waiting runtime proxy by id or display URL (so it can be removed).
local function find_waiting(ref)
  if type(ref) ~= "string" then return nil end
  local hit
  for _, e in ipairs(entries) do
    if not e.active and (e.opts.id == ref or (e.px and e.px.display == ref)) then
      if hit then return nil end -- ambiguous
      hit = e
    end
  end
  return hit
end

---------------------------------------------------------------------------
-- Records: one proxy of one pool, as the console and the API show it.

local DOWN, DISABLED, REMOVED = cdef.PROXY_DOWN, cdef.PROXY_DISABLED, cdef.PROXY_REMOVED

function M.state(flags)
  if band(flags, REMOVED) ~= 0 then return "removed" end
  if band(flags, DISABLED) ~= 0 then return "disabled" end
  if band(flags, DOWN) ~= 0 then return "down" end
  return "up"
end

local function round1(x)
  return floor(x * 10 + 0.5) / 10
end

function M.record(p, pool, now)
  local c = p.c
  local flags = tonumber(c.flags)
  return {
    id = p.id, name = p.label, pool = pool.name, url = p.display, region = p.region,
    weight = p.weight, state = M.state(flags), enabled = band(flags, DISABLED) == 0,
    up = band(flags, DOWN) == 0,
    score = floor(health.score(c, pool.latency_ceiling, now or C.ferry_now()) + 0.5),
    active = tonumber(c.active), requests = tonumber(c.requests),
    successes = tonumber(c.successes), failures = tonumber(c.failures),
    latency_ms = round1(tonumber(c.latency_ewma_ms)),
    source = p.runtime and "runtime" or "config",
    -- "backend" in a pool of backends (reverse proxy), else "proxy".
    kind = pool.kind == "backends" and "backend" or "proxy",
    backup = p.backup or nil,
    connections = connstats.proxy(p.id),
  }
end

-- Records of the named pools (all, in config order, when names is nil).
function M.records(cur, names)
  local out = {}
  if not cur then return out end
  local now = C.ferry_now()
  for _, name in ipairs(names or cur.cfg.pool_order) do
    local pool = cur.pools[name]
    if pool then
      for _, p in ipairs(pool.proxies) do out[#out + 1] = M.record(p, pool, now) end
    end
  end
  return out
end

---------------------------------------------------------------------------
-- Changes.  rt: the runtime module (rt.active(), rt.recommit()).
-- via: who asked ("console", "API"), for the log line.

local function persisted_note()
  if shared then
    return "applied on this node; queued for the fleet's database (PostgreSQL), " ..
      "the other nodes apply it when it is written"
  end
  if store_path then return "saved to the store" end
  return "no store configured: the change lives in memory only and is lost at restart"
end
M.persisted_note = persisted_note

local function store_failed(err)
  return fail(503, "FERRY-7505", "the store refused the write; nothing was changed: " ..
    tostring(err))
end

local function owner_of(cur, key)
  for _, name in ipairs(cur.cfg.pool_order) do
    for _, px in ipairs(cur.cfg.pools[name].base_proxies or cur.cfg.pools[name].proxies) do
      if (px.id or px.url) == key then return name end
    end
  end
end

-- A proxy of pool `name` (the config's, or a runtime one, waiting or not)
-- that reaches the same endpoint as px: its display form, or nil.
local function same_endpoint(cur, name, px)
  local want = M.endpoint(px)
  local pc = cur.cfg.pools[name]
  for _, q in ipairs(pc and (pc.base_proxies or pc.proxies) or {}) do
    if M.endpoint(q) == want then return q.id or q.display, "the config" end
  end
  for _, e in ipairs(entries) do
    if e.pool == name and e.px and M.endpoint(e.px) == want then
      return e.opts.id or e.px.display, "the inventory"
    end
  end
end

---------------------------------------------------------------------------
-- The shared store: our writes, and the other nodes' rows.

-- A key as a log line may show it: an id as it is, a URL without its
-- credentials.
local function key_shown(key)
  return (tostring(key):gsub("//[^/@]*@", "//***@"):sub(1, 200))
end
M.key_shown = key_shown

local function newer(a, b)
  if not a then return b end
  if not b then return a end
  return (b.u or 0) > (a.u or 0) and b or a
end

local function same_opts(a, b)
  for k, v in pairs(a) do
    if b[k] ~= v then return false end
  end
  for k, v in pairs(b) do
    if a[k] ~= v then return false end
  end
  return true
end

local function drop_entry(e)
  for i, x in ipairs(entries) do
    if x == e then
      table.remove(entries, i)
      break
    end
  end
  by_key[e.key] = nil
end

-- Apply a row of the shared store (a message of another node, a full
-- read, or the database's answer to our own write): "changed" (the
-- overlay changed: recommit), "same", "older" (we hold a newer state of
-- the key), "parked" (a write of ours to that key is in flight: decided
-- when it is answered), "read" (the message had no room for the URL:
-- read the row) or "bad" (its URL does not open here).
function M.apply_row(row)
  local key = row.key
  if type(key) ~= "string" or key == "" then return "bad" end
  if inflight[key] then
    parked[key] = newer(parked[key], row)
    return "parked"
  end
  local h = held[key]
  if h and row.u and row.u <= h then return "older" end
  local e = by_key[key]
  if not row.removed and row.pool ~= nil and row.url == nil then
    if row.bad then
      log("warn", "FERRY-8045", format("fleet: proxy %s is left out on this node: %s",
        key_shown(key), row.bad))
      held[key] = row.u
      return "bad"
    end
    return "read"
  end
  held[key] = row.u
  if row.removed then
    if e then
      drop_entry(e)
      return "changed"
    end
    if overrides[key] ~= nil then
      overrides[key] = nil
      return "changed"
    end
    return "same"
  end
  if row.pool == nil then
    -- A proxy some config declares, disabled or enabled by an operator.
    local off = row.enabled == false
    if (overrides[key] == false) == off then return "same" end
    overrides[key] = off and false or nil
    return "changed"
  end
  if e and e.url == row.url and e.pool == row.pool and same_opts(e.opts, row.opts) then
    if e.enabled == (row.enabled ~= false) then return "same" end
    e.enabled = row.enabled ~= false
    return "changed"
  end
  local n = make_entry(row)
  if n.invalid then
    log("warn", "FERRY-8045", format('fleet: proxy %s of pool "%s" is not valid here and ' ..
      "waits: %s", key_shown(key), tostring(row.pool), n.invalid))
  end
  if e then
    for i, x in ipairs(entries) do
      if x == e then entries[i] = n end
    end
  else
    entries[#entries + 1] = n
  end
  by_key[key] = n
  overrides[key] = nil
  return "changed"
end

-- The keys the database has no row for (a full read saw all): dropped
-- when they came from the database and no write of ours is in flight.
-- Returns how many.
function M.drop_unseen(seen)
  local n = 0
  for key, e in pairs(by_key) do
    if not seen[key] and held[key] and not inflight[key] then
      drop_entry(e)
      held[key] = nil
      n = n + 1
    end
  end
  for key in pairs(overrides) do
    if not seen[key] and held[key] and not inflight[key] then
      overrides[key] = nil
      held[key] = nil
      n = n + 1
    end
  end
  return n
end

function M.first_read_done()
  local first = shared_at == nil
  shared_at = shared_at or C.ferry_now()
  return first
end

-- Send a change of key to the shared store: op "put" (e: the entry),
-- "set" (enabled, e the entry or nil), "del".  done(ok, err) when the
-- database answered.  true, or nil, err when it could not be queued.
local function share(op, key, e, enabled, done)
  inflight[key] = (inflight[key] or 0) + 1
  local function answered(ok, err, row)
    inflight[key] = inflight[key] > 1 and inflight[key] - 1 or nil
    if ok then
      if row and (not held[key] or (row.u or 0) > held[key]) then held[key] = row.u end
      if sharing then sharing.counted("out") end
      if not row and op == "set" then
        -- The row was removed meanwhile: the removal wins (docs/fleet.md).
        log("info", "FERRY-8044", format("fleet: proxy %s was removed by another node; this " ..
          "node's %s is not applied", key_shown(key), enabled and "enable" or "disable"))
        if sharing then sharing.read_key(key) end
      end
    else
      log("warn", "FERRY-8043", format("fleet: the change of proxy %s could not be written to " ..
        "the database: %s", key_shown(key), tostring(err)))
    end
    local p = not inflight[key] and parked[key]
    if p then
      parked[key] = nil
      if sharing then sharing.apply(p, "parked") end
    end
    if done then done(ok, err) end
  end
  local ok, err
  if op == "put" then
    ok, err = store.put(key, e.url, e.pool, e.opts, e.enabled ~= false, answered)
  elseif op == "set" then
    ok, err = store.set_enabled(key, enabled, answered, e)
  else
    ok, err = store.delete(key, answered)
  end
  if not ok then
    inflight[key] = inflight[key] > 1 and inflight[key] - 1 or nil
    log("warn", "FERRY-8043", format("fleet: the change of proxy %s could not be queued for " ..
      "the database: %s", key_shown(key), tostring(err)))
    return nil, err
  end
  return true
end

local function share_failed(err)
  return fail(503, "FERRY-7718", "the change could not be queued for the fleet's database; " ..
    "nothing was changed: " .. tostring(err))
end

-- f: { pool, url, opts = { id, weight, region } }.  done(ok, err): with a
-- shared store, called when the database answered (the answer has
-- pending = true); else never.
function M.add(rt, f, via, done)
  local cur = rt.active()
  if not cur then return fail(503, "FERRY-7506", "no config is running") end
  if f.pool == nil then return bad("pool: required") end
  if type(f.pool) ~= "string" then return bad("pool: expected a string") end
  if f.url == nil then return bad("url: required") end
  local pc = cur.cfg.pools[f.pool]
  local kind = pc and pc.kind or "proxies"
  local px, perr = M.parse_proxy(f.url, f.opts, kind, pc and pc.tls)
  if not px then return bad(perr) end
  local pool = cur.pools[f.pool]
  if not pool then
    return fail(404, "FERRY-7502", format('no pool "%s" (pool.list() shows the pools)',
      f.pool:sub(1, 64)))
  end
  local key = px.id or px.url
  local what = px.id and ('id "' .. px.id .. '"') or px.display
  local e = by_key[key]
  if e then
    return fail(409, "FERRY-7504", format('%s is already in the inventory (pool "%s")', what,
      e.pool))
  end
  local owner = owner_of(cur, key)
  if owner then
    return fail(409, "FERRY-7504", format('%s is declared in the config (pool "%s")', what, owner))
  end
  local twin, where = same_endpoint(cur, f.pool, px)
  if twin then
    return fail(409, "FERRY-7021", format('pool "%s" already has %s (%s, in %s): one entry ' ..
      "per scheme, host, port and user name", f.pool, px.display, twin, where))
  end
  if px.id then
    for _, info in pairs(by_cid) do
      if info.label == px.id then
        return fail(409, "FERRY-7504", format('id "%s" is taken by another proxy', px.id))
      end
    end
  end
  local opts = { id = px.id, weight = f.opts.weight, region = px.region, tls = f.opts.tls,
                 backup = f.opts.backup }
  if store_path then
    local ok, err = store.put(key, f.url, f.pool, opts, true)
    if not ok then return store_failed(err) end
  end
  e = { key = key, url = f.url, pool = f.pool, opts = opts, enabled = true, px = px,
        kind = kind }
  local held_before = held[key]
  overrides[key] = nil
  entries[#entries + 1] = e
  by_key[key] = e
  local ok, err = rt.recommit()
  if ok and px.cid and shared then
    ok, err = share("put", key, e, nil, done)
    if not ok then
      entries[#entries] = nil
      by_key[key] = nil
      held[key] = held_before
      rt.recommit()
      return share_failed(err)
    end
  end
  if not ok or not px.cid then
    entries[#entries] = nil
    by_key[key] = nil
    if store_path then store.delete(key) end
    rt.recommit()
    return fail(500, "FERRY-7506", "the pool could not take the proxy; nothing was changed: " ..
      tostring(err))
  end
  log("info", "FERRY-0124", format('%s %d (%s) added to pool "%s" by the %s; %s',
    kind == "backends" and "backend" or "proxy", px.cid, px.display, f.pool, via or "console",
    shared and "queued for the fleet" or store_path and "saved" or "memory only"))
  return { id = px.cid, name = px.id or tostring(px.cid), pool = f.pool, url = px.display,
           weight = px.weight, region = px.region, persisted = store_path ~= nil or shared,
           kind = kind == "backends" and "backend" or "proxy", backup = px.backup,
           note = persisted_note(), pending = shared or nil }
end

local function remove_entry(rt, e, via, cid, done)
  if shared then
    local ok, err = share("del", e.key, nil, nil, done)
    if not ok then return share_failed(err) end
  elseif store_path then
    local ok, err = store.delete(e.key)
    if not ok then return store_failed(err) end
  end
  local at
  for i, x in ipairs(entries) do
    if x == e then at = i end
  end
  table.remove(entries, at)
  by_key[e.key] = nil
  if e.active then
    local ok, err = rt.recommit()
    if not ok then
      table.insert(entries, at, e)
      by_key[e.key] = e
      if shared then
        share("put", e.key, e, nil)
      elseif store_path then
        store.put(e.key, e.url, e.pool, e.opts, e.enabled)
      end
      rt.recommit()
      return fail(500, "FERRY-7506", "the pool could not drop the proxy; nothing was changed: " ..
        tostring(err))
    end
  end
  local shown = e.px and e.px.display or "(invalid URL)"
  log("info", "FERRY-0124", format('proxy %s (%s) removed from pool "%s" by the %s', tostring(cid or
    e.opts.id or "-"), shown, e.pool, via or "console"))
  return { id = cid, name = e.opts.id or (cid and tostring(cid)), pool = e.pool, url = shown,
           persisted = store_path ~= nil or shared, note = persisted_note(),
           pending = shared or nil }
end

function M.remove(rt, ref, via, done)
  local cur = rt.active()
  local cid, err = M.resolve(cur, ref)
  if not cid then
    local w = find_waiting(ref)
    if w then return remove_entry(rt, w, via, nil, done) end
    return nil, err
  end
  local info = by_cid[cid]
  if not info.entry then
    return fail(409, "FERRY-7504", format('proxy %d is declared in the config file (%s); ' ..
      "remove it there and reload, or disable it", cid, cur.cfg.file))
  end
  return remove_entry(rt, info.entry, via, cid, done)
end

function M.set_enabled(rt, ref, on, via, done)
  local cur = rt.active()
  local cid, c = M.resolve(cur, ref)
  if not cid then return nil, c end
  local info = by_cid[cid]
  local key, e = info.key, info.entry
  local was = band(tonumber(c.flags), DISABLED) == 0
  if shared then
    local ok, err
    if e then
      ok, err = share("set", key, e, on, done)
    elseif on then
      ok, err = share("del", key, nil, nil, done)
    else
      ok, err = share("put", key, { url = info.display, pool = nil, opts = { config = true },
                                    enabled = false }, nil, done)
    end
    if not ok then return share_failed(err) end
  elseif store_path then
    local ok, err
    if e then
      ok, err = store.set_enabled(key, on)
    elseif on then
      ok, err = store.delete(key)
    else
      ok, err = store.put(key, info.display, nil, { config = true }, false)
    end
    if not ok then return store_failed(err) end
  end
  if e then
    e.enabled = on
  else
    if on then overrides[key] = nil else overrides[key] = false end
  end
  C.ferry_proxy_set_flag(c, DISABLED, on and 0 or 1)
  if was ~= on then
    log("info", "FERRY-0124", format("proxy %d (%s) %s by the %s", cid, info.display,
      on and "enabled" or "disabled", via or "console"))
  end
  return { id = cid, name = info.label, url = info.display, pools = info.pools,
           enabled = on, changed = was ~= on, persisted = store_path ~= nil or shared,
           note = persisted_note(), pending = shared or nil }
end

---------------------------------------------------------------------------
-- The HTTP API: GET/POST /api/v1/proxies, GET/DELETE /api/v1/proxies/<id>,
-- POST /api/v1/proxies/<id>/enable|disable.

local admin = require("ferry.admin")

local function answer_err(req, e)
  return admin.err(req, e.status, e.code, e.message)
end

local function json_array(list)
  local parts = {}
  for i, v in ipairs(list) do parts[i] = cjson.encode(v) end
  return "[" .. concat(parts, ",") .. "]"
end

local JSON = { ["Content-Type"] = "application/json" }

-- With the shared store, a change is answered once the database has it
-- (201/200), or when M.WAIT_BOUND seconds ran out: 503 FERRY-7715 when
-- the database was unavailable, 504 FERRY-7716 when it was slow.  The
-- change is applied on this node either way and stays queued for the
-- fleet.  The loop serves other connections while an answer waits
-- (core/admin.c); at most FERRY_ADMIN_WAIT_MAX answers wait at once.
M.WAIT_BOUND = 5

-- run(done) makes the change: the result or nil, err.  answer(res) is
-- status, body[, headers] once the change is confirmed.
local WRITTEN_NOTE = "applied on this node and written to the fleet's database (PostgreSQL); " ..
  "the other nodes apply it from its notification"

local function persisted(req, run, answer)
  if not shared then
    local res, err = run(nil)
    if not res then return answer_err(req, err) end
    return answer(res)
  end
  if admin.wait_room() <= 0 then
    admin.count_wait("refused")
    return admin.err(req, 503, "FERRY-7717", format("%d admin answers already wait for the " ..
      "database; nothing was changed, try again", tonumber(C.FERRY_ADMIN_WAIT_MAX)))
  end
  local w = admin.defer(req, M.WAIT_BOUND)
  local res, err = run(function(ok, werr)
    if ok then
      -- Confirmed: the answer no longer says "queued".
      if type(w.res) == "table" and w.res.note then w.res.note = WRITTEN_NOTE end
      admin.answer(w, answer(w.res))
    else
      admin.answer(w, admin.err(req, 503, "FERRY-7718", "the database refused the change; it " ..
        "stays applied on this node only: " .. key_shown(werr)))
    end
  end)
  if not res then
    w.done = true
    return answer_err(req, err)
  end
  w.res = res
  local down = require("ferry.pg").state() ~= "up"
  if down then
    w.fallback = { admin.err(req, 503, "FERRY-7715", format("the database is unavailable: the " ..
      "change is applied on this node and queued for the fleet, not confirmed within %g s",
      M.WAIT_BOUND)) }
  else
    w.fallback = { admin.err(req, 504, "FERRY-7716", format("the database did not confirm the " ..
      "change within %g s; it is applied on this node and queued for the fleet", M.WAIT_BOUND)) }
  end
  return admin.waiting(w)
end

local function uint(s)
  if s == nil then return nil end
  if not s:match("^%d+$") or #s > 9 then return false end
  return tonumber(s)
end

admin.route("GET", "/api/v1/proxies", function(req, rt)
  local cur = rt.active()
  local names
  local q = req.query
  for k in pairs(q) do
    if k ~= "pool" and k ~= "limit" and k ~= "offset" then
      return admin.err(req, 400, "FERRY-7501", format('unknown query parameter "%s"', k:sub(1, 64)))
    end
  end
  if q.pool then
    if not (cur and cur.pools[q.pool]) then
      return admin.err(req, 404, "FERRY-7502", format('no pool "%s"', q.pool:sub(1, 64)))
    end
    names = { q.pool }
  end
  local limit, offset = uint(q.limit), uint(q.offset)
  if limit == false then return admin.err(req, 400, "FERRY-7501", "limit: expected a number") end
  if offset == false then return admin.err(req, 400, "FERRY-7501", "offset: expected a number") end
  local all = M.records(cur, names)
  offset = offset or 0
  local page = {}
  for i = offset + 1, math.min(#all, offset + (limit or #all)) do page[#page + 1] = all[i] end
  local body = format('{"total":%d,"offset":%d,"store":%s,"proxies":%s,"waiting":%s}', #all,
    offset, cjson.encode(M.store_path() or cjson.null), json_array(page),
    json_array(M.waiting()))
  return 200, (body:gsub("\\/", "/")), JSON
end)

admin.route("POST", "/api/v1/proxies", function(req, rt)
  local body, answer = admin.json_body(req)
  if not body then return answer[1], answer[2], answer[3] end
  if body[1] ~= nil then return admin.err(req, 400, "FERRY-7004", "expected a JSON object") end
  local f, err = M.check_fields(body)
  if not f then return answer_err(req, err) end
  return persisted(req, function(done) return M.add(rt, f, "API", done) end, function(res)
    res.pending = nil
    return 201, res, { Location = "/api/v1/proxies/" .. res.id }
  end)
end)

local function one(req, rt)
  local cur = rt.active()
  local cid, err = M.resolve(cur, req.rest)
  if not cid then return answer_err(req, err) end
  local info = by_cid[cid]
  local out = {}
  for _, name in ipairs(info.pools) do
    local pool = cur.pools[name]
    out[#out + 1] = M.record(pool.by_id[cid], pool)
  end
  return 200, { id = cid, name = info.label, url = info.display, pools = out }
end

admin.route_prefix("GET", "/api/v1/proxies/", one)

admin.route_prefix("DELETE", "/api/v1/proxies/", function(req, rt)
  if req.rest:find("/", 1, true) then
    return admin.err(req, 404, "FERRY-7007", "no such admin endpoint: " .. req.path)
  end
  return persisted(req, function(done) return M.remove(rt, req.rest, "API", done) end,
    function(res)
      return 200, { removed = res.id or res.name, pool = res.pool, url = res.url,
                    persisted = res.persisted }
    end)
end)

admin.route_prefix("POST", "/api/v1/proxies/", function(req, rt)
  local ref, action = req.rest:match("^([^/]+)/(%a+)$")
  if not ref or (action ~= "enable" and action ~= "disable") then
    return admin.err(req, 404, "FERRY-7007", "no such admin endpoint: " .. req.path ..
      " (POST /api/v1/proxies/<id>/enable or /disable)")
  end
  return persisted(req, function(done) return M.set_enabled(rt, ref, action == "enable", "API",
    done) end, function(res)
    return 200, { id = res.id, name = res.name, url = res.url, enabled = res.enabled,
                  changed = res.changed, persisted = res.persisted }
  end)
end)

-- For specs: forget the overlay (the store is not touched).
function M._reset()
  entries, by_key, overrides, by_cid, warned = {}, {}, {}, {}, {}
  store_path, store_key = nil, nil
  shared, shared_at, held, inflight, parked = false, nil, {}, {}, {}
end

return M
