-- The Lua side of the control parameters: the one region rule of
-- ferry.pool (eligibility filters by req.region for every strategy,
-- relaxed or not; region_size counts a pool's proxies in a region), the
-- sticky strategy's rotation (req.rotate moves the pin), and the
-- listener's allow_pool_header in the config.
local ffi = require("ffi")
require("ferry.cdef")
local poolmod = require("ferry.pool")
local plugins = require("ferry.plugins")
local config = require("ferry.config")

local sticky = assert(plugins.load("strategies", "sticky", { "plugins" }))
local round_robin = assert(plugins.load("strategies", "round_robin", { "plugins" }))

-- A stand-in pin table (the core's signatures), without expiry.
local function pins()
  local t = { pins = {} }
  function t.ferry_sticky_get(key) return t.pins[key] or 0 end
  function t.ferry_sticky_set(key, _, id) t.pins[key] = id return 0 end
  return t
end

-- Proxies 1..n, regions from the list (nil: none).
local function build(regions)
  local proxies = {}
  for i, r in ipairs(regions) do
    local c = ffi.new("struct ferry_proxy")
    c.id, c.weight = i, 1
    proxies[i] = { id = i, display = "p" .. i, weight = 1, region = r, c = c }
  end
  local pool = poolmod.new("spec", proxies, { now = function() return 1000 end })
  pool.sticky = pins()
  pool.session_ttl = 600
  sticky.init(pool)
  return pool
end

describe("region rule (ferry.pool)", function()
  it("is exact equality on the proxy's region; a proxy without one is in none", function()
    assert.is_true(poolmod.in_region({ region = "eu" }, "eu"))
    assert.is_false(poolmod.in_region({ region = "eu-west" }, "eu"))
    assert.is_false(poolmod.in_region({ region = "EU" }, "eu"))
    assert.is_false(poolmod.in_region({}, "eu"))
  end)

  it("counts a pool's proxies per region, again once the list changes", function()
    local pool = build { "eu", "us", "eu", false }
    assert.equal(2, pool:region_size("eu"))
    assert.equal(1, pool:region_size("us"))
    assert.equal(0, pool:region_size("ap"))
    pool.proxies[#pool.proxies + 1] = { id = 5, region = "ap", c = ffi.new("struct ferry_proxy") }
    assert.equal(1, pool:region_size("ap"))
  end)

  it("keeps every strategy in the region, and so does a relaxed (panic) choice", function()
    local pool = build { "eu", "us", "eu", "us", "us" }
    for _, strat in ipairs { sticky, round_robin } do
      for i = 1, 20 do
        local p = strat.select(pool, { region = "eu", session = "s" .. i, tried = {} })
        assert.equal("eu", p.region)
      end
    end
    -- Every eu proxy down: relaxed selection ignores health, not the region.
    pool.proxies[1].c.flags, pool.proxies[3].c.flags = 1, 1
    assert.is_nil(round_robin.select(pool, { region = "eu", tried = {} }))
    pool.relaxed = true
    for _ = 1, 6 do
      assert.equal("eu", round_robin.select(pool, { region = "eu", tried = {} }).region)
    end
    pool.relaxed = false
    -- No region asked: any proxy.
    local seen = {}
    for _ = 1, 10 do seen[round_robin.select(pool, { tried = {} }).region] = true end
    assert.is_true(seen.us)
  end)

  it("filters large pools (sampled candidates) by region too", function()
    local regions = {}
    for i = 1, poolmod.SCAN_MAX * 4 do regions[i] = i % 10 == 0 and "eu" or "us" end
    local pool = build(regions)
    for i = 1, 50 do
      assert.equal("eu", sticky.select(pool, { region = "eu", session = "big" .. i, tried = {} }).region)
    end
  end)
end)

describe("sticky rotation (req.rotate)", function()
  it("moves the pin to another proxy, which the session keeps", function()
    local pool = build { "eu", "eu", "eu" }
    local first = sticky.select(pool, { session = "k", tried = {} })
    for _ = 1, 3 do assert.equal(first, sticky.select(pool, { session = "k", tried = {} })) end
    local tried = {}
    local moved = sticky.select(pool, { session = "k", rotate = true, tried = tried })
    assert.not_equal(first, moved)
    assert.is_nil(tried[first.id]) -- the request's own tried set is left as it was
    for _ = 1, 3 do assert.equal(moved, sticky.select(pool, { session = "k", tried = {} })) end
  end)

  it("keeps the pinned proxy when it is the only eligible one", function()
    local pool = build { "eu", "us" }
    local first = sticky.select(pool, { session = "k", region = "eu", tried = {} })
    assert.equal(1, first.id)
    assert.equal(first, sticky.select(pool, { session = "k", region = "eu", rotate = true,
                                              tried = {} }))
  end)

  it("rotates within the region asked for", function()
    local pool = build { "eu", "us", "eu", "us" }
    local last = sticky.select(pool, { session = "r", region = "eu", tried = {} })
    for _ = 1, 6 do
      local now = sticky.select(pool, { session = "r", region = "eu", rotate = true, tried = {} })
      assert.equal("eu", now.region)
      assert.not_equal(last, now)
      last = now
    end
  end)
end)

describe("listen allow_pool_header", function()
  local function load(listen)
    return config.load_string(listen .. [[

pool "a" { proxies = { "http://10.0.0.1:3128" } }
]], "cfg.lua")
  end

  it("takes true, false or a list of declared pools (direct included)", function()
    local cfg = assert(load('listen { addr = "127.0.0.1:8080", allow_pool_header = true }'))
    assert.is_true(cfg.listeners[1].allow_pool_header)
    cfg = assert(load('listen { addr = "127.0.0.1:8080", allow_pool_header = { "a", "direct" } }'))
    assert.same({ a = true, direct = true }, cfg.listeners[1].allow_pool_header)
    cfg = assert(load('listen { addr = "127.0.0.1:8080", allow_pool_header = false }'))
    assert.is_nil(cfg.listeners[1].allow_pool_header)
  end)

  it("refuses an undeclared pool, an empty list and other types", function()
    local _, err = load('listen { addr = "127.0.0.1:8080", allow_pool_header = { "b" } }')
    assert.matches('allow_pool_header: pool "b" is not declared', err)
    _, err = load('listen { addr = "127.0.0.1:8080", allow_pool_header = {} }')
    assert.matches("allow_pool_header: an empty list", err)
    _, err = load('listen { addr = "127.0.0.1:8080", allow_pool_header = "a" }')
    assert.matches("allow_pool_header: expected true, false or a list", err)
    _, err = load('listen { addr = "127.0.0.1:8080", allow_pool_header = { 1 } }')
    assert.matches("allow_pool_header%[1%]: expected a pool name", err)
  end)
end)
