local pools = require("pools")
local plugins = require("ferry.plugins")

local DIRS = { "plugins" }
local NAMES = { "round_robin", "random", "weighted_random", "least_conn", "least_errors",
                "health_score", "latency", "hash" }

local function strategy(name)
  return assert(plugins.load("strategies", name, DIRS))
end

describe("every strategy", function()
  for _, name in ipairs(NAMES) do
    describe(name, function()
      local s = strategy(name)

      it("is a plugin with name and version", function()
        assert.equal(name, s.name)
        assert.is_string(s.version)
        assert.is_function(s.select)
      end)

      it("skips down, disabled, removed and already tried proxies", function()
        local pool = pools.pool(5)
        if s.init then s.init(pool) end
        pool.proxies[1].c.flags = 1 -- down
        pool.proxies[2].c.flags = 2 -- disabled
        pool.proxies[3].c.flags = 4 -- removed
        local h = pools.histogram(s, pool, 300, pools.req({ [4] = true }))
        assert.same({ [5] = 300 }, h)
      end)

      it("returns nil when nothing is eligible", function()
        local pool = pools.pool(3)
        if s.init then s.init(pool) end
        for _, p in ipairs(pool.proxies) do p.c.flags = 1 end
        assert.is_nil(s.select(pool, pools.req()))
        assert.is_nil(s.select(pools.pool(0), pools.req()))
      end)

      it("spreads requests over equal proxies", function()
        if name == "hash" then return end -- spreads destinations, checked below
        local pool = pools.pool(4)
        if s.init then s.init(pool) end
        local h = pools.histogram(s, pool, 4000)
        for id = 1, 4 do
          assert.is_true((h[id] or 0) > 600, name .. " starves proxy " .. id)
        end
      end)
    end)
  end
end)

describe("round_robin", function()
  it("visits each eligible proxy exactly once per cycle", function()
    local s, pool = strategy("round_robin"), pools.pool(4)
    local order = {}
    for i = 1, 8 do order[i] = s.select(pool, pools.req()).id end
    assert.same({ 1, 2, 3, 4, 1, 2, 3, 4 }, order)
  end)
end)

describe("weighted_random", function()
  it("follows the weights", function()
    local s, pool = strategy("weighted_random"), pools.pool(2, { 1, 3 })
    s.init(pool)
    local h = pools.histogram(s, pool, 20000)
    local share = h[2] / 20000
    assert.is_true(share > 0.72 and share < 0.78, "share of weight 3: " .. share)
  end)

  it("still honours weights among the few eligible ones", function()
    local s, pool = strategy("weighted_random"), pools.pool(10, { 1, 1, 1, 1, 1, 1, 1, 1, 1, 4 })
    s.init(pool)
    for i = 1, 8 do pool.proxies[i].c.flags = 1 end
    local h = pools.histogram(s, pool, 10000)
    assert.is_nil(h[1])
    local share = h[10] / 10000
    assert.is_true(share > 0.76 and share < 0.84, "share of weight 4 among 1+4: " .. share)
  end)
end)

describe("least_conn", function()
  it("picks the proxy with the fewest active connections", function()
    local s, pool = strategy("least_conn"), pools.pool(3)
    pool.proxies[1].c.active, pool.proxies[2].c.active, pool.proxies[3].c.active = 5, 1, 3
    assert.equal(2, s.select(pool, pools.req()).id)
  end)

  it("rotates among equally loaded proxies", function()
    local s, pool = strategy("least_conn"), pools.pool(3)
    pool.proxies[1].c.active = 9
    local seen = {}
    for _ = 1, 4 do seen[s.select(pool, pools.req()).id] = true end
    assert.same({ [2] = true, [3] = true }, seen)
  end)
end)

describe("least_errors", function()
  it("picks the fewest failures, then the fewest consecutive failures", function()
    local s, pool = strategy("least_errors"), pools.pool(3)
    pool.proxies[1].c.failures = 4
    pool.proxies[2].c.failures = 2
    pool.proxies[2].c.consecutive_failures = 2
    pool.proxies[3].c.failures = 2
    assert.equal(3, s.select(pool, pools.req()).id)
  end)
end)

describe("health_score", function()
  it("prefers the healthier proxy", function()
    local s, pool = strategy("health_score"), pools.pool(2)
    pool.proxies[1].c.successes, pool.proxies[1].c.failures = 5, 5
    pool.proxies[2].c.successes = 10
    local h = pools.histogram(s, pool, 50)
    assert.same({ [2] = 50 }, h)
  end)

  it("avoids a proxy whose last failure is recent", function()
    local s, pool = strategy("health_score"), pools.pool(2)
    pool.proxies[1].c.successes, pool.proxies[2].c.successes = 100, 100
    pool.proxies[1].c.latency_ewma_ms, pool.proxies[2].c.latency_ewma_ms = 600, 600
    pool.proxies[1].c.failures = 1
    pool.proxies[1].c.last_failure_at = pools.now - 5
    assert.same({ [2] = 20 }, pools.histogram(s, pool, 20))
  end)

  it("shares the load among equally healthy proxies, fewest active first", function()
    local s, pool = strategy("health_score"), pools.pool(3)
    pool.proxies[3].c.active = 4
    local h = pools.histogram(s, pool, 100)
    assert.is_nil(h[3])
    assert.equal(50, h[1])
    assert.equal(50, h[2])
  end)

  it("takes the best of the unhealthy ones when none reaches the minimum score", function()
    local s, pool = strategy("health_score"), pools.pool(2)
    pool.proxies[1].c.failures, pool.proxies[2].c.failures = 100, 100
    pool.proxies[1].c.latency_ewma_ms, pool.proxies[2].c.latency_ewma_ms = 5000, 100
    assert.equal(2, s.select(pool, pools.req()).id)
  end)
end)

describe("latency", function()
  it("picks the lowest latency, trying unmeasured proxies first", function()
    local s, pool = strategy("latency"), pools.pool(3)
    pool.proxies[1].c.latency_ewma_ms = 40
    pool.proxies[2].c.latency_ewma_ms = 10
    assert.equal(3, s.select(pool, pools.req()).id)
    pool.proxies[3].c.latency_ewma_ms = 90
    assert.equal(2, s.select(pool, pools.req()).id)
  end)
end)

describe("hash", function()
  local s = strategy("hash")

  local function pick(pool, host)
    local req = pools.req()
    req.host = host
    return s.select(pool, req).id
  end

  it("sends one destination through one proxy", function()
    local pool = pools.pool(5)
    for _, host in ipairs { "a.example", "b.example", "c.example" } do
      local first = pick(pool, host)
      for _ = 1, 10 do assert.equal(first, pick(pool, host)) end
    end
  end)

  it("spreads destinations over the proxies", function()
    local pool = pools.pool(4)
    local h = {}
    for i = 1, 4000 do
      local id = pick(pool, "host" .. i .. ".example")
      h[id] = (h[id] or 0) + 1
    end
    for id = 1, 4 do assert.is_true(h[id] > 700, "proxy " .. id .. ": " .. tostring(h[id])) end
  end)

  it("moves only the destinations of a proxy that drops out", function()
    local pool = pools.pool(4)
    local before = {}
    for i = 1, 1000 do before[i] = pick(pool, "d" .. i) end
    pool.proxies[2].c.flags = 1
    for i = 1, 1000 do
      local now = pick(pool, "d" .. i)
      if before[i] ~= 2 then assert.equal(before[i], now) else assert.not_equal(2, now) end
    end
  end)
end)
