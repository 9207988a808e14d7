-- The sticky strategy (plugins/strategies/sticky.lua) through
-- lua/ferry/pool.lua: first against a stand-in pin table with a fake
-- clock (pool.sticky), then against the core's own table in
-- build/libferry.so, whose clock is the event loop's.
local ffi = require("ffi")
local socket = require("socket")
require("ferry.cdef")
local poolmod = require("ferry.pool")
local plugins = require("ferry.plugins")

local DOWN, DISABLED, REMOVED = 1, 2, 4
local OPEN = 1

local sticky = assert(plugins.load("strategies", "sticky", { "plugins" }))

-- A pin table with the C signatures, on a clock the spec moves.  It
-- records every set so specs can see the key, the proxy and the TTL.
local function stand_in(clock)
  local t = { pins = {}, sets = {} }
  function t.ferry_sticky_get(key, len)
    assert(len == #key, "length must be the key's")
    local e = t.pins[key]
    if e and e.expires > clock() then return e.id end
    t.pins[key] = nil
    return 0
  end
  function t.ferry_sticky_set(key, len, id, ttl)
    assert(len == #key, "length must be the key's")
    assert(id > 0 and ttl > 0)
    t.sets[#t.sets + 1] = { key = key, id = id, ttl = ttl }
    t.pins[key] = { id = id, expires = clock() + ttl }
    return 0
  end
  return t
end

-- A pool of n proxies (real struct ferry_proxy cdata), a fake clock, a
-- stand-in pin table and (proxy, exchange) pair states.
local function build(n, opts)
  opts = opts or {}
  local clock = { t = 1000.0 }
  local function now() return clock.t end
  local proxies = {}
  for i = 1, n do
    local c = ffi.new("struct ferry_proxy")
    c.id, c.weight = i, 1
    proxies[i] = { id = i, display = "http://10.0.0." .. i .. ":3128", weight = 1, c = c }
  end
  local pool = poolmod.new(opts.name or "spec", proxies, { now = now })
  pool.sticky = opts.table or stand_in(now)
  pool.session_ttl = opts.ttl
  local states = {}
  pool.pair_of = function(id, ex)
    local k = id .. ":" .. ex
    states[k] = states[k] or ffi.new("struct ferry_pxstate")
    return states[k]
  end
  pool.half_open = function(x, trials) x.breaker, x.trials_max, x.trials = 2, trials, 0 end
  sticky.init(pool)
  return pool, clock
end

local function req(t)
  t = t or {}
  return { host = "api.example.com", port = 443, method = "GET", path = "/",
           client = t.client, session = t.session, exid = t.exid or 0, tried = t.tried or {} }
end

-- The id of the proxy the strategy picks for r, or nil.
local function pick(pool, r)
  local p = sticky.select(pool, r)
  return p and p.id
end

describe("sticky strategy", function()
  it("is a strategy plugin", function()
    assert.equal("sticky", sticky.name)
    assert.is_string(sticky.version)
    assert.is_function(sticky.select)
  end)

  it("keeps the same session on the same proxy", function()
    local pool = build(4)
    local first = pick(pool, req { session = "alice" })
    assert.is_number(first)
    for i = 1, 50 do
      -- Load moves around and other sessions come and go in between.
      for _, p in ipairs(pool.proxies) do p.c.active = (i * p.id) % 5 end
      pick(pool, req { session = "other-" .. i })
      assert.equal(first, pick(pool, req { session = "alice", client = "10.1.1." .. i }))
    end
  end)

  it("pins under the pool's name, with the pool's session_ttl (600 by default)", function()
    local pool = build(3, { ttl = 42 })
    local id = pick(pool, req { session = "s1" })
    local set = pool.sticky.sets[1]
    assert.same({ key = "spec\0s1", id = id, ttl = 42 }, set)
    local bare = build(3)
    pick(bare, req { session = "s1" })
    assert.equal(600, bare.sticky.sets[1].ttl)
  end)

  it("keeps pools apart: one session name in two pools is two sessions", function()
    local tbl = stand_in(function() return 1000 end)
    local a = build(3, { name = "a", table = tbl })
    local b = build(3, { name = "b", table = tbl })
    pick(a, req { session = "x" })
    local in_b = pick(b, req { session = "x" })
    assert.is_not_nil(tbl.pins["a\0x"])
    assert.is_not_nil(tbl.pins["b\0x"])
    assert.equal(in_b, tbl.pins["b\0x"].id)
  end)

  it("spreads new sessions over the least loaded proxies", function()
    local pool = build(3)
    local seen = {}
    for i = 1, 9 do
      local id = pick(pool, req { session = "s" .. i })
      seen[id] = (seen[id] or 0) + 1
    end
    -- Equal load: ties rotate, so each proxy gets every third session.
    assert.same({ 3, 3, 3 }, { seen[1], seen[2], seen[3] })
    -- A loaded proxy gets no new session while others are lighter.
    pool.proxies[1].c.active, pool.proxies[2].c.active, pool.proxies[3].c.active = 9, 0, 9
    for i = 10, 14 do assert.equal(2, pick(pool, req { session = "s" .. i })) end
    -- ... but sessions already on it stay there.
    local on1
    for i = 1, 9 do
      if pool.sticky.pins["spec\0s" .. i].id == 1 then on1 = "s" .. i break end
    end
    assert.equal(1, pick(pool, req { session = on1 }))
  end)

  it("uses the client address when there is no session", function()
    local pool = build(3)
    local a = pick(pool, req { client = "10.0.0.7" })
    local b = pick(pool, req { client = "10.0.0.8" })
    assert.are_not.equal(a, b)
    for _ = 1, 20 do
      assert.equal(a, pick(pool, req { client = "10.0.0.7" }))
      assert.equal(b, pick(pool, req { client = "10.0.0.8" }))
    end
    assert.equal(a, pool.sticky.pins["spec\0" .. "10.0.0.7"].id)
    -- A session, when given, wins over the client address.
    local s = pick(pool, req { client = "10.0.0.7", session = "k" })
    assert.are_not.equal(a, s)
    assert.equal(s, pool.sticky.pins["spec\0k"].id)
    assert.equal(a, pick(pool, req { client = "10.0.0.7" }))
  end)

  it("with neither session nor client picks the least loaded proxy and pins nothing", function()
    local pool = build(3)
    pool.proxies[1].c.active, pool.proxies[3].c.active = 2, 1
    assert.equal(2, pick(pool, req()))
    assert.equal(2, pick(pool, req { session = "" }))
    assert.same({}, pool.sticky.sets)
  end)

  local function pinned_then(make_ineligible, restore)
    local pool = build(3)
    local first = pick(pool, req { session = "s", exid = 1 })
    local p = pool.proxies[first]
    make_ineligible(pool, p)
    local second = pick(pool, req { session = "s", exid = 1 })
    assert.is_number(second)
    assert.are_not.equal(first, second)
    assert.equal(second, pool.sticky.pins["spec\0s"].id)
    -- The old proxy comes back, and is now the least loaded: the session
    -- stays on its new proxy anyway.
    restore(pool, p)
    for _, q in ipairs(pool.proxies) do q.c.active = q == p and 0 or 5 end
    for _ = 1, 10 do
      assert.equal(second, pick(pool, req { session = "s", exid = 1 }))
    end
    -- Other sessions are unaffected by the move.
    return pool, first, second
  end

  it("re-pins a session whose proxy went down, and holds the new one", function()
    pinned_then(function(_, p) p.c.flags = DOWN end, function(_, p) p.c.flags = 0 end)
  end)

  it("re-pins a session whose proxy was disabled, and holds the new one", function()
    pinned_then(function(_, p) p.c.flags = DISABLED end, function(_, p) p.c.flags = 0 end)
  end)

  it("re-pins a session whose proxy was removed", function()
    pinned_then(function(_, p) p.c.flags = REMOVED end, function(_, p) p.c.flags = 0 end)
  end)

  it("re-pins a session whose proxy is banned for the request's exchange", function()
    pinned_then(function(pool, p)
      pool:pair(p, 1).banned_until = pool.now() + 60
      -- The same proxy, banned for another exchange, would have stayed.
      assert.is_true(pool:eligible(p, req { exid = 2 }))
    end, function(pool, p) pool:pair(p, 1).banned_until = 0 end)
  end)

  it("keeps a session pinned to a proxy banned only for another exchange", function()
    local pool = build(3)
    local first = pick(pool, req { session = "s", exid = 1 })
    pool:pair(pool.proxies[first], 2).banned_until = pool.now() + 60
    for _ = 1, 5 do assert.equal(first, pick(pool, req { session = "s", exid = 1 })) end
  end)

  it("re-pins a session whose proxy's breaker opened", function()
    pinned_then(function(pool, p)
      local x = pool:pair(p, 1)
      x.breaker, x.breaker_until = OPEN, pool.now() + 30
    end, function(pool, p) pool:pair(p, 1).breaker = 0 end)
  end)

  it("re-pins when the pinned proxy left the pool (a reload without it)", function()
    local pool = build(3)
    local first = pick(pool, req { session = "s" })
    -- The next config has the same table but not that proxy.
    local rest = {}
    for _, p in ipairs(pool.proxies) do
      if p.id ~= first then rest[#rest + 1] = p end
    end
    local next_pool = poolmod.new("spec", rest, { now = pool.now })
    next_pool.sticky = pool.sticky
    sticky.init(next_pool)
    local second = pick(next_pool, req { session = "s" })
    assert.is_number(second)
    assert.are_not.equal(first, second)
    assert.equal(second, pick(next_pool, req { session = "s" }))
  end)

  it("holds sessions pinned to a proxy added to the pool at runtime", function()
    local pool = build(2)
    for _, p in ipairs(pool.proxies) do p.c.active = 5 end
    local c = ffi.new("struct ferry_proxy")
    c.id, c.weight = 3, 1
    pool.proxies[3] = { id = 3, display = "http://10.0.0.3:3128", weight = 1, c = c }
    assert.equal(3, pick(pool, req { session = "new" }))
    -- Now the newcomer is the busiest: its session stays anyway.
    c.active = 50
    for _ = 1, 5 do assert.equal(3, pick(pool, req { session = "new" })) end
  end)

  it("moves a retry elsewhere, keeps the session where it was served", function()
    local pool = build(3)
    local first = pick(pool, req { session = "s" })
    local retry = pick(pool, req { session = "s", tried = { [first] = true } })
    assert.is_number(retry)
    assert.are_not.equal(first, retry)
    assert.equal(retry, pick(pool, req { session = "s" }))
  end)

  it("with nothing eligible returns nil and keeps the pin for a relaxed pass", function()
    local pool = build(2)
    local first = pick(pool, req { session = "s" })
    for _, p in ipairs(pool.proxies) do p.c.flags = DOWN end
    assert.is_nil(pick(pool, req { session = "s" }))
    assert.equal(first, pool.sticky.pins["spec\0s"].id)
    -- all_down = "any": health aside, the session keeps its proxy.
    pool.relaxed = true
    assert.equal(first, pick(pool, req { session = "s" }))
  end)

  it("expires a session after session_ttl without use, and use refreshes it", function()
    local pool, clock = build(3, { ttl = 10 })
    local first = pick(pool, req { session = "s" })
    -- Used every 8 s: never 10 s idle, so it holds for a minute.
    for _ = 1, 8 do
      clock.t = clock.t + 8
      for _, q in ipairs(pool.proxies) do q.c.active = q.id == first and 9 or 0 end
      assert.equal(first, pick(pool, req { session = "s" }))
    end
    -- Idle past the TTL: the next request starts over with the least
    -- loaded proxy.
    clock.t = clock.t + 10.5
    local again = pick(pool, req { session = "s" })
    assert.are_not.equal(first, again)
    assert.equal(again, pick(pool, req { session = "s" }))
  end)
end)

---------------------------------------------------------------------------
-- The core's pin table.

pcall(ffi.cdef, [[
struct ev_loop;
struct ev_loop *ev_default_loop(unsigned int flags);
void ev_now_update(struct ev_loop *loop);
extern struct ev_loop *loop;
]])
pcall(ffi.cdef, "size_t sticky_key_copy(char *dst, size_t room, const char *src, size_t len);")
local core = ffi.load("./build/libferry.so")
if core.loop == nil then core.loop = core.ev_default_loop(0) end

-- The loop's clock moves only when the loop looks at the time.
local function tick(seconds)
  socket.sleep(seconds)
  core.ev_now_update(core.loop)
end

local seq = 0
local function core_pool(n, ttl)
  seq = seq + 1
  return build(n, { name = "core" .. seq, table = core, ttl = ttl })
end

describe("sticky strategy on the core's pin table", function()
  it("keeps a session, spreads new ones and re-pins around a down proxy", function()
    local pool = core_pool(3, 60)
    local before = tonumber(core.ferry_sticky_count())
    local ids = {}
    for i = 1, 3 do ids[i] = pick(pool, req { session = "s" .. i }) end
    table.sort(ids)
    assert.same({ 1, 2, 3 }, ids)
    assert.equal(before + 3, tonumber(core.ferry_sticky_count()))
    local first = pick(pool, req { session = "s1" })
    for _ = 1, 10 do assert.equal(first, pick(pool, req { session = "s1" })) end
    pool.proxies[first].c.flags = DOWN
    local second = pick(pool, req { session = "s1" })
    assert.are_not.equal(first, second)
    pool.proxies[first].c.flags = 0
    assert.equal(second, pick(pool, req { session = "s1" }))
    -- Still one entry per session: a re-pin replaces, never adds.
    assert.equal(before + 3, tonumber(core.ferry_sticky_count()))
  end)

  it("keeps pins across a rebuilt pool (what a reload does)", function()
    local pool = core_pool(3, 60)
    local want = {}
    for i = 1, 6 do want[i] = pick(pool, req { session = "r" .. i }) end
    local again = build(3, { name = pool.name, table = core, ttl = 60 })
    -- In order of proxy: a rebuilt pool without the pins would hand two
    -- consecutive new sessions two different proxies.
    local order = { 1, 2, 3, 4, 5, 6 }
    table.sort(order, function(x, y)
      if want[x] ~= want[y] then return want[x] < want[y] end
      return x < y
    end)
    for _, i in ipairs(order) do
      assert.equal(want[i], pick(again, req { session = "r" .. i }))
    end
  end)

  -- On the real clock, so with wide margins: the logic is specified on the
  -- fake clock above; this only shows the core's table keeps time.  Each
  -- step is a quarter of the TTL (a step may overrun by 3 quarters on a
  -- loaded machine), five steps outlast it, and sleeping never ends early,
  -- so the last wait is past the TTL for sure.
  it("expires a pin after session_ttl on the loop's clock; use refreshes it", function()
    local TTL, STEP = 1.0, 0.25
    local pool = core_pool(3, TTL)
    local key = pool.name .. "\0s"
    local first = pick(pool, req { session = "s" })
    assert.equal(first, tonumber(core.ferry_sticky_get(key, #key)))
    -- From now on a new pin would go to another proxy: a pin lost on the
    -- way cannot pass for a kept one.
    for _, q in ipairs(pool.proxies) do q.c.active = q.id == first and 9 or 0 end
    for _ = 1, 5 do
      tick(STEP)
      assert.equal(first, tonumber(core.ferry_sticky_get(key, #key)))
      assert.equal(first, pick(pool, req { session = "s" }))
    end
    tick(TTL + 0.1)
    assert.equal(0, tonumber(core.ferry_sticky_get(key, #key)))
    local again = pick(pool, req { session = "s" })
    assert.are_not.equal(first, again)
    assert.equal(again, tonumber(core.ferry_sticky_get(key, #key)))
  end)

  it("rejects bad arguments and drops on request", function()
    local k = "core-args\0k"
    assert.is_true(core.ferry_sticky_set(k, #k, 0, 10) ~= 0)   -- no proxy
    assert.is_true(core.ferry_sticky_set(k, #k, 1, 0) ~= 0)    -- no TTL
    assert.is_true(core.ferry_sticky_set(k, 0, 1, 10) ~= 0)    -- empty key
    assert.is_true(core.ferry_sticky_set(nil, 3, 1, 10) ~= 0)
    assert.equal(0, tonumber(core.ferry_sticky_get(k, #k)))
    assert.equal(0, core.ferry_sticky_set(k, #k, 7, 10))
    assert.equal(7, tonumber(core.ferry_sticky_get(k, #k)))
    -- Keys are binary-safe: a prefix up to the NUL is another key.
    assert.equal(0, tonumber(core.ferry_sticky_get(k, 9)))
    core.ferry_sticky_drop(k, #k)
    assert.equal(0, tonumber(core.ferry_sticky_get(k, #k)))
  end)

  it("keeps inbound session keys in 128 bytes without merging long ones", function()
    local buf = ffi.new("char[128]")
    local function copy(s)
      local n = tonumber(core.sticky_key_copy(buf, 128, s, #s))
      assert.equal(n, #ffi.string(buf))
      return ffi.string(buf, n)
    end
    assert.equal("abc", copy("abc"))
    local fits = string.rep("x", 127)
    assert.equal(fits, copy(fits))
    local a, b = copy(fits .. "a"), copy(fits .. "b")
    assert.equal(127, #a)
    assert.matches("^" .. string.rep("x", 110) .. "#%x+$", a)
    assert.are_not.equal(a, b)
    assert.equal(a, copy(fits .. "a")) -- the same key, the same digest
    -- A NUL would cut the key short later: it is digested as well.
    local z1, z2 = copy("ab\0c"), copy("ab\0d")
    assert.matches("^ab#%x+$", z1)
    assert.are_not.equal(z1, z2)
  end)

  it("stays sticky for the longest session key the core accepts", function()
    -- The inbound side takes keys of up to 127 bytes, and pool names
    -- have no length limit of their own.
    local pool = build(3, { name = string.rep("p", 200), table = core, ttl = 60 })
    local long = string.rep("k", 127)
    local first = pick(pool, req { session = long })
    for i = 1, 5 do
      pick(pool, req { session = "other" .. i })
      assert.equal(first, pick(pool, req { session = long }))
    end
    -- Long keys that differ only at their end are still two sessions.
    local a, b = string.rep("k", 126) .. "a", string.rep("k", 126) .. "b"
    local pa = pick(pool, req { session = a })
    local pb = pick(pool, req { session = b })
    assert.are_not.equal(pa, pb)
    for _ = 1, 3 do
      assert.equal(pa, pick(pool, req { session = a }))
      assert.equal(pb, pick(pool, req { session = b }))
    end
  end)
end)
