-- sticky: the same proxy for the same session while it stays eligible.
-- The session is req.session (the X-Ferry-Session header or a
-- USER-session-KEY proxy user name), else the client address.  Pins live
-- in the core (ferry_sticky_*), so they survive reloads, expire after the
-- pool's session_ttl and are refreshed by use.  A session whose proxy
-- went down, was banned for the exchange, opened its breaker, was
-- disabled or removed is re-pinned to a new one (the least loaded, ties
-- rotating), and keeps that one from then on.  req.rotate (X-Ferry-Rotate:
-- 1, a user name's -rotate-1) moves the pin now: to another eligible
-- proxy when the pool has one.
local bit = require("bit")
require("ferry.cdef")

local bxor, lshift, tobit, tohex = bit.bxor, bit.lshift, bit.tobit, bit.tohex
local byte = string.byte

-- The longest key the core keeps (STICKY_KEY_MAX in core/sticky.c).
local KEY_MAX = 255

-- 32-bit FNV-1a of s (x * 16777619 as (x << 24) + x * 403, exact in doubles).
local function fnv(s)
  local h = tobit(0x811c9dc5)
  for i = 1, #s do
    h = bxor(h, byte(s, i))
    h = tobit(lshift(h, 24) + h * 403)
  end
  return h
end

-- The pin's key: "pool\0session".  A key longer than the core keeps
-- (a long pool name, a long session) would never be pinned, so it is cut
-- and ends with a 64-bit digest of the whole key instead.
local function key_of(pool, session)
  local key = pool.name .. "\0" .. session
  if #key <= KEY_MAX then return key end
  return key:sub(1, KEY_MAX - 17) .. "\0" .. tohex(fnv(key)) .. tohex(fnv(key:reverse()))
end

local function active(p) return p.c.active end

-- The pin table: the core's (through ferry.fleet_pins, which shares
-- pins with the fleet), unless the pool brings its own (specs).
local pins = require("ferry.fleet_pins").table
local function table_of(pool)
  return pool.sticky or pins
end

-- Proxies of the pool by id, rebuilt when the list is replaced or grows
-- or shrinks (proxies added at runtime): a pin to a proxy missing from a
-- stale index would be re-pinned on every request.
local function index_of(pool)
  local st, list = pool.state, pool.proxies
  local by_id = st.by_id
  if by_id and st.indexed == list and st.indexed_n == #list then return by_id end
  by_id = {}
  for _, p in ipairs(list) do by_id[p.id] = p end
  st.by_id, st.indexed, st.indexed_n = by_id, list, #list
  return by_id
end

return {
  name = "sticky",
  version = "1",
  init = function(pool)
    index_of(pool)
  end,
  select = function(pool, req)
    local session = req.session or req.client
    if not session or session == "" then
      return pool:lowest(req, active)
    end
    -- Slow start's draw follows the session: a session admitted to a
    -- ramping proxy stays admitted as the ramp grows.
    req.ramp_seed = fnv(session)
    local ttl = pool.session_ttl or 600
    local t = table_of(pool)
    local key = key_of(pool, session)
    local pinned = index_of(pool)[tonumber(t.ferry_sticky_get(key, #key))]
    if pinned and req.rotate then
      -- Leave the pinned proxy out of this choice, as a retry would.
      local tried = req.tried or {}
      local had = tried[pinned.id]
      tried[pinned.id] = true
      req.tried = tried
      local p = pool:lowest(req, active)
      tried[pinned.id] = had
      if not p and pool:eligible(pinned, req) then p = pinned end
      if p then t.ferry_sticky_set(key, #key, p.id, ttl) end
      return p
    end
    if pinned and pool:eligible(pinned, req) then
      t.ferry_sticky_set(key, #key, pinned.id, ttl)
      return pinned
    end
    local p = pool:lowest(req, active)
    if p then t.ferry_sticky_set(key, #key, p.id, ttl) end
    return p
  end,
}
