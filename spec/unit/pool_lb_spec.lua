-- Slow start, max_ejected and backups in ferry.pool (one rule for every
-- strategy), and their config fields.
package.path = "spec/helpers/?.lua;lua/?.lua;plugins/strategies/?.lua;" .. package.path
local ffi = require("ffi")
local cdef = require("ferry.cdef")
local pools = require("pools")
local config = require("ferry.config")

local function strategy(name) return dofile("plugins/strategies/" .. name .. ".lua") end

-- How often each id is chosen over `times` selections through
-- Pool:select (a fresh request each time, as dispatch makes).
local function histogram(pool, s, times, mkreq)
  local h = {}
  for i = 1, times do
    local req = mkreq and mkreq(i) or pools.req()
    local p = pool:select(req, s.select)
    local k = p and p.id or "none"
    h[k] = (h[k] or 0) + 1
  end
  return h
end

local function down(p, since)
  p.c.flags = cdef.PROXY_DOWN
  p.c.down_since = since
end

describe("slow start", function()
  local now
  before_each(function() now = pools.now end)

  it("ramps linearly from RAMP_MIN to 1 over slowstart, only after a return", function()
    local pool = pools.pool(2, { 4, 4 })
    local p = pool.proxies[2]
    p.c.up_since = now - 1.5
    assert.equal(1, pool:ramp(p)) -- no slowstart: no ramp
    pool.slowstart = 3
    assert.equal(0.5, pool:ramp(p))
    assert.equal(2, pool:effective_weight(p))
    p.c.up_since = now
    assert.equal(pool.proxies[1] and require("ferry.pool").RAMP_MIN, pool:ramp(p))
    p.c.up_since = now - 3
    assert.equal(1, pool:ramp(p))
    p.c.up_since = 0 -- up since ferry started
    assert.equal(1, pool:ramp(pool.proxies[1]))
    assert.equal(1, pool:ramp(p))
  end)

  for _, name in ipairs { "weighted_random", "random", "round_robin", "least_conn",
                          "health_score", "latency", "least_errors" } do
    -- At ramp r a draw admits the proxy with probability r: strategies
    -- that draw give it r x its full share (0.125 here), those that
    -- rotate pass the turn to it again next time, r / (1 + r) (0.2).
    it(name .. " gives a ramping proxy a share that grows with the ramp", function()
      local pool = pools.pool(2)
      pool.slowstart = 4
      pool.proxies[2].c.up_since = now - 1 -- ramp 0.25: full share 0.5, now ~0.125
      local s = strategy(name)
      if s.init then s.init(pool) end
      local h = histogram(pool, s, 4000)
      local share = (h[2] or 0) / 4000
      assert.truthy(share > 0.09 and share < 0.24, name .. ": share " .. share)
      pool.proxies[2].c.up_since = now - 4
      h = histogram(pool, s, 4000)
      share = (h[2] or 0) / 4000
      assert.truthy(share > 0.4 and share < 0.6, name .. ": share after the ramp " .. share)
    end)
  end

  it("serves through a ramping proxy when it is the only one left", function()
    local pool = pools.pool(2)
    pool.slowstart = 10
    down(pool.proxies[1], now - 5)
    pool.proxies[2].c.up_since = now -- ramp at its floor
    local h = histogram(pool, strategy("round_robin"), 200)
    assert.equal(200, h[2])
  end)

  it("hash moves a growing, stable set of destinations to a ramping proxy", function()
    local pool = pools.pool(2)
    pool.slowstart = 8
    local s = strategy("hash")
    local function dests()
      local set, n = {}, 0
      for i = 1, 2000 do
        local req = pools.req()
        req.host = "h" .. i .. ".example"
        local p = pool:select(req, s.select)
        if p.id == 2 then set[i], n = true, n + 1 end
      end
      return set, n
    end
    pool.proxies[2].c.up_since = now - 2 -- ramp 0.25
    local quarter, nq = dests()
    local again = dests()
    for i in pairs(quarter) do assert.truthy(again[i], "destination " .. i .. " moved") end
    pool.proxies[2].c.up_since = now - 8
    local full, nf = dests()
    assert.truthy(nq < nf * 0.4, "ramping " .. nq .. ", full " .. nf)
    for i in pairs(quarter) do assert.truthy(full[i], "destination " .. i .. " left") end
  end)
end)

describe("max_ejected", function()
  local now
  before_each(function() now = pools.now end)

  it("keeps the members ejected last eligible past the cap", function()
    local pool = pools.pool(4)
    pool.max_ejected = { percent = 50 }
    down(pool.proxies[1], now - 30)
    down(pool.proxies[2], now - 20)
    down(pool.proxies[3], now - 10)
    local h = histogram(pool, strategy("round_robin"), 40)
    assert.is_nil(h[1])
    assert.is_nil(h[2])
    assert.equal(20, h[3])
    assert.equal(20, h[4])
    local v = pool:ejection(0)
    assert.equal(3, v.primary.ejected)
    assert.equal(1, v.primary.spared)
    -- A count: one ejected at most.
    pool.max_ejected, pool.views = { count = 1 }, nil
    h = histogram(pool, strategy("round_robin"), 30)
    assert.is_nil(h[1])
    assert.equal(10, h[2])
    assert.equal(10, h[3])
    -- Without a cap, every down member is out.
    pool.max_ejected, pool.views = nil, nil
    h = histogram(pool, strategy("round_robin"), 10)
    assert.equal(10, h[4])
  end)

  it("counts open breakers by when they opened, and never spares a ban", function()
    local pool = pools.pool(4)
    local xs = {}
    for i = 1, 4 do xs[i] = ffi.new("struct ferry_pxstate") end
    pool.pair_of = function(id) return xs[id] end
    pool.half_open = function() end
    pool.max_ejected = { percent = 25 } -- one of four
    for i = 1, 2 do
      xs[i].breaker = cdef.BREAKER_OPEN
      xs[i].breaker_until = now + 60
    end
    xs[1].opened_at, xs[2].opened_at = now - 1, now - 2
    xs[3].banned_until = now + 60
    local h = histogram(pool, strategy("round_robin"), 20)
    assert.equal(10, h[1]) -- opened last: spared
    assert.is_nil(h[2])
    assert.is_nil(h[3]) -- banned: no ejection, never kept in
    assert.equal(10, h[4])
  end)
end)

describe("backups", function()
  local now
  before_each(function() now = pools.now end)

  local function pool3()
    local pool = pools.pool(3)
    pool.proxies[3].backup = true
    pool.has_backup = true
    return pool
  end

  it("serve only while no primary can, all backups sharing", function()
    local pool = pool3()
    local s = strategy("round_robin")
    local h = histogram(pool, s, 20)
    assert.is_nil(h[3])
    down(pool.proxies[1], now - 2)
    pool.views = nil
    h = histogram(pool, s, 20)
    assert.equal(20, h[2])
    down(pool.proxies[2], now - 1)
    pool.views = nil
    h = histogram(pool, s, 20)
    assert.equal(20, h[3])
    pool.proxies[1].c.flags = 0
    pool.views = nil
    h = histogram(pool, s, 20)
    assert.equal(20, h[1])
  end)

  it("take a retry when every primary was tried", function()
    local pool = pool3()
    local p = pool:select(pools.req({ [1] = true, [2] = true }), strategy("least_conn").select)
    assert.equal(3, p.id)
  end)

  it("stay out of eligibility outside a selection (rate waits, previews)", function()
    local pool = pool3()
    assert.truthy(pool:eligible(pool.proxies[3], pools.req()))
  end)
end)

describe("load-balancing config", function()
  local function load(pool_body)
    return config.load_string('pool "p" { ' .. pool_body .. ' }\n', "lb.lua")
  end
  local P = 'proxies = { "http://127.0.0.1:3128", { url = "http://127.0.0.1:3129", backup = true } }'
  local B = 'backends = { "http://127.0.0.1:9001", "http://127.0.0.1:9002" }'

  it("takes slowstart, max_ejected and backup", function()
    local cfg = assert(load("slowstart = 3, max_ejected = \"50%\", " .. P))
    local p = cfg.pools.p
    assert.equal(3, p.slowstart)
    assert.same({ percent = 50 }, p.max_ejected)
    assert.is_true(p.proxies[2].backup)
    cfg = assert(load("slowstart = 0, max_ejected = 2, " .. P))
    assert.is_nil(cfg.pools.p.slowstart)
    assert.same({ count = 2 }, cfg.pools.p.max_ejected)
  end)

  it("refuses bad values with their codes", function()
    local cases = {
      { "slowstart = -1, " .. P, "FERRY%-0230" },
      { "slowstart = \"3\", " .. P, "FERRY%-0230" },
      { "max_ejected = \"150%\", " .. P, "FERRY%-0231" },
      { "max_ejected = 1.5, " .. P, "FERRY%-0231" },
      { "max_ejected = \"half\", " .. P, "FERRY%-0231" },
      { 'proxies = { { url = "http://127.0.0.1:3128", backup = true } }', "FERRY%-0233" },
      { 'health = { check = "http", path = "/health" }, ' .. P, "FERRY%-0232" },
      { 'health = { check = "http", url = "http://a/h", path = "/h" }, ' .. P, "FERRY%-0232" },
      { 'health = { check = "tcp", path = "/h" }, ' .. P, "FERRY%-0232" },
      { 'health = { check = "http", url = "http://a/h" }, ' .. B, "FERRY%-0232" },
      { 'health = { check = "http", path = "health" }, ' .. B, "FERRY%-0232" },
      { 'health = { check = "connect", target = "a:1" }, ' .. B, "FERRY%-0234" },
    }
    for _, c in ipairs(cases) do
      local cfg, err = load(c[1])
      assert.is_nil(cfg, c[1])
      assert.matches(c[2], err, 1)
      assert.matches("^lb%.lua:1:", err)
    end
  end)

  it("takes a backend pool's http check with path and host", function()
    local cfg = assert(load('health = { check = "http", path = "/health", expect = { 200 }, ' ..
      'host = "app.internal" }, ' .. B))
    local h = cfg.pools.p.health
    assert.is_true(h.backend)
    assert.equal("/health", h.path)
    assert.equal("app.internal", h.host)
    cfg = assert(load('health = { check = "http" }, ' .. B))
    assert.equal("/", cfg.pools.p.health.path)
  end)
end)
