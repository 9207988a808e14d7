-- sticky: the same proxy for the same session while it stays eligible.
-- The session is req.session (the X-Ferry-Session header or a
-- USER-session-KEY proxy user name), else the client address.  Pins live
-- in the core (ferry_sticky_*), so they survive reloads, expire after the
-- pool's session_ttl and are refreshed by use.  A session whose proxy
-- went down, was banned for the exchange, opened its breaker, was
-- disabled or removed is re-pinned to a new one (the least loaded, ties
-- rotating), and keeps that one from then on.
local ffi = require("ffi")
require("ferry.cdef")

local C = ffi.C

local function active(p) return p.c.active end

-- The pin table: the core's, unless the pool brings its own (specs).
local function table_of(pool)
  return pool.sticky or C
end

return {
  name = "sticky",
  version = "1",
  init = function(pool)
    local by_id = {}
    for _, p in ipairs(pool.proxies) do by_id[p.id] = p end
    pool.state.by_id = by_id
  end,
  select = function(pool, req)
    local st = pool.state
    local by_id = st.by_id
    if not by_id then
      by_id = {}
      for _, p in ipairs(pool.proxies) do by_id[p.id] = p end
      st.by_id = by_id
    end
    local session = req.session or req.client
    local ttl = pool.session_ttl or 600
    local t = table_of(pool)
    if not session or session == "" then
      return pool:lowest(req, active)
    end
    local key = pool.name .. "\0" .. session
    local pinned = by_id[tonumber(t.ferry_sticky_get(key, #key))]
    if pinned and pool:eligible(pinned, req) then
      t.ferry_sticky_set(key, #key, pinned.id, ttl)
      return pinned
    end
    local p = pool:lowest(req, active)
    if p then t.ferry_sticky_set(key, #key, p.id, ttl) end
    return p
  end,
}
