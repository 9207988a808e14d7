-- fleet_ctx.lua: what the shared parts (fleet_bans, fleet_leases,
-- fleet_pins) have in common: the core and the fleet hub they call (a
-- unit spec hands stand-ins to set_deps), the running config's proxies
-- by inventory key and its exchanges by name (names, not the node's
-- small ids, cross the fleet), and logging once per window.
local ffi = require("ffi")
local cdef = require("ferry.cdef")

local ipairs, tostring, tonumber, pcall = ipairs, tostring, tonumber, pcall

local M = {
  C = ffi.C,
  LOG = cdef.LOG,
  run = nil,      -- the running config (apply.commit's table)
  cid_of = {},    -- proxy inventory key -> C proxy id
  key_of = {},    -- C proxy id -> inventory key
  label_of = {},  -- C proxy id -> what logs may name (its id, else its number)
}

local fleet_mod, timer_mod

-- The hub and the timers, loaded on first use (a spec sets stand-ins).
function M.fleet()
  if not fleet_mod then fleet_mod = require("ferry.fleet") end
  return fleet_mod
end

function M.timer()
  if not timer_mod then timer_mod = require("ferry.timer") end
  return timer_mod
end

-- deps: { C = ..., fleet = ..., timer = ... } (unit specs).
function M.set_deps(deps)
  M.C = deps.C or M.C
  fleet_mod = deps.fleet or fleet_mod
  timer_mod = deps.timer or timer_mod
end

-- store{postgres} is configured: the parts share and listen.  Without
-- the hub (a build or a unit spec without it) nothing is shared.
function M.enabled()
  if not fleet_mod then
    local ok, f = pcall(require, "ferry.fleet")
    if not ok then return false end
    fleet_mod = f
  end
  return fleet_mod.enabled() and true or false
end

-- The connection is up: a change is written now.  Down, it stays the
-- node's own live state and is published when the hub is up again
-- (fleet.on_up), with the time then left, so an outage never stretches
-- a ban or a pin.
function M.up()
  local f = M.fleet()
  if f.up then return f.up() and true or false end
  local ok, pg = pcall(require, "ferry.pg")
  return ok and pg.state() == "up"
end

function M.node()
  return M.fleet().node_id()
end

function M.now()
  return M.C.ferry_now()
end

-- The name a proxy goes by in the fleet's tables and messages: its id;
-- else its URL when it carries no credentials; else (user:pass@ in the
-- URL) the URL sealed as ferry_proxies and ferry_probes hold it when the
-- store has a key (deterministic), or without a key
-- scheme://host:port#<SHA-256 of the URL>, so no password reaches the
-- database or a NOTIFY.  Every node with the same URL (and store key)
-- computes the same.
local hmac_out = ffi.new("unsigned char[32]")
function M.fleet_key(px, secret)
  if px.id then return px.id end
  local u = px.url
  if not u:find("^[%a][%w+.-]*://[^/@]*@") then return u end
  if secret then
    local ok, store_pg = pcall(require, "ferry.store_pg")
    local sealed = ok and store_pg.seal and store_pg.seal(u, true)
    if type(sealed) == "string" and sealed ~= u then return sealed end
  end
  secret = secret or ""
  -- A unit spec's stand-in core may lack the HMAC: then the host and port alone.
  local found, hmac = pcall(function() return M.C.ferry_secret_hmac end)
  local hostport = u:match("^[^:]+://[^/@]*@([^/?#]+)") or "?"
  local base = (u:match("^([^:]+)://") or "proxy") .. "://" .. hostport
  if not found or hmac == nil or hmac(secret, #secret, u, #u, hmac_out) ~= 0 then return base end
  local hex = {}
  for i = 0, 15 do hex[#hex + 1] = string.format("%02x", hmac_out[i]) end
  return base .. "#" .. table.concat(hex)
end

-- The running config's proxy pools: key <-> C id.  Backends (reverse
-- pools) are not proxies of exchanges and are left out.
function M.committed(run)
  M.run = run
  local cid_of, key_of, label_of = {}, {}, {}
  local cfg = run and run.cfg
  local secret = cfg and cfg.store and type(cfg.store.key) == "function" and cfg.store.key()
  for _, name in ipairs(cfg and cfg.pool_order or {}) do
    local pc = cfg.pools[name]
    if pc.kind ~= "backends" then
      for _, px in ipairs(pc.proxies or {}) do
        local cid = px.cid
        if cid then
          local key = M.fleet_key(px, secret)
          cid_of[key], key_of[cid] = cid, key
          label_of[cid] = px.id or tostring(cid)
        end
      end
    end
  end
  M.cid_of, M.key_of, M.label_of = cid_of, key_of, label_of
end

-- The exchange of the running config named `name`, or nil.
function M.exchange(name)
  local run = M.run
  return run and run.exchanges and run.exchanges[name] or nil
end

-- Whether exchange e's pool has a breaker policy on this node.
function M.has_breaker(e)
  local run = M.run
  local pool = run and run.pools and run.pools[e.pool]
  return pool ~= nil and pool.breaker ~= nil and pool.breaker ~= false
end

-- The exchange name of a node-local exchange id, or nil.
function M.exchange_name(id)
  local run = M.run
  local e = run and run.exchange_by_id and run.exchange_by_id[tonumber(id)]
  return e and e.name or nil
end

function M.log(level, code, msg)
  M.C.ferry_log(M.LOG[level], code, msg)
end

-- One line per window (10 s) and key, with how many were hidden.
local function new_log_once()
  return require("ferry.log_once").new(10, function() return M.now() end,
    function(level, code, msg) M.log(level, code, msg) end)
end
M.log_once = new_log_once()

-- A bounded DELETE of a shared table's rows past their `until` (10 s of
-- grace; fleet.bounded_delete_sql).
function M.expired_sql(tbl)
  return M.fleet().bounded_delete_sql(tbl, "until < clock_timestamp() - interval '10 seconds'")
end

-- An error text as logs may show it: a database message may quote a
-- value, and a proxy's key can be its URL with credentials.
function M.scrub(msg)
  return (tostring(msg):gsub("//[^@/%s]*@", "//"))
end

-- A number field of a message or row (JSON numbers, or the driver's text).
function M.num(v)
  return tonumber(v)
end

function M._reset()
  M.run, M.cid_of, M.key_of, M.label_of = nil, {}, {}, {}
  M.log_once = new_log_once()
end

return M
