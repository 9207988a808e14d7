local ffi = require("ffi")
require("ferry.cdef")
local poolmod = require("ferry.pool")
local plugins = require("ferry.plugins")

local DIRS = { "plugins" }
local NAMES = { "round_robin", "random", "weighted_random", "least_conn", "least_errors",
                "health_score", "latency", "hash" }
local DOWN, DISABLED, REMOVED = 1, 2, 4
local NOW = 1000.0

-- A pool of n proxies backed by real struct ferry_proxy cdata, as the
-- runtime builds it; specs set stats directly on p.c.
local function build(n, weights)
  local proxies = {}
  for i = 1, n do
    local c = ffi.new("struct ferry_proxy")
    local w = weights and weights[i] or 1
    c.id, c.weight = i, w
    proxies[i] = { id = i, display = "http://10.0.0." .. i .. ":3128", weight = w, c = c }
  end
  return poolmod.new("spec", proxies, { latency_ceiling = 1000, now = function() return NOW end })
end

local function req(tried)
  return { host = "api.example.com", port = 443, method = "GET", path = "/", attempt = 0,
           is_connect = false, tried = tried or {} }
end

local function strategy(name)
  return assert(plugins.load("strategies", name, DIRS))
end

local function ready(s, pool)
  if s.init then s.init(pool) end
  return pool
end

-- How often each proxy id is chosen over `times` selections.
local function histogram(s, pool, times, r)
  local h = {}
  for _ = 1, times do
    local p = s.select(pool, r or req())
    local k = p and p.id or "none"
    h[k] = (h[k] or 0) + 1
  end
  return h
end

local function ids(s, pool, times)
  local out = {}
  for i = 1, times do out[i] = s.select(pool, req()).id end
  return out
end

local function assert_share(count, total, expected, tolerance, what)
  local share = (count or 0) / total
  assert.is_true(math.abs(share - expected) <= tolerance,
    string.format("%s: share %.4f, expected %.4f +- %.4f", what, share, expected, tolerance))
end

describe("pool", function()
  it("builds the object strategies see", function()
    local pool = build(2)
    assert.equal("spec", pool.name)
    assert.equal(2, #pool.proxies)
    assert.same({}, pool.state)
    assert.equal(1000, pool.latency_ceiling)
    assert.equal(NOW, pool.now())
    local bare = poolmod.new("bare", {})
    assert.equal(1000, bare.latency_ceiling)
    assert.is_number(bare.now())
  end)

  it("calls a proxy eligible unless down, disabled, removed or tried", function()
    local pool = build(5)
    local p = pool.proxies
    p[1].c.flags, p[2].c.flags, p[3].c.flags = DOWN, DISABLED, REMOVED
    local r = req({ [4] = true })
    assert.same({ false, false, false, false, true },
      { pool:eligible(p[1], r), pool:eligible(p[2], r), pool:eligible(p[3], r),
        pool:eligible(p[4], r), pool:eligible(p[5], r) })
    assert.is_true(pool:eligible(p[4], req()))
    p[5].c.flags = 8 -- a flag bit outside the three does not matter
    assert.is_true(pool:eligible(p[5], r))
  end)

  describe("round_robin (the core's fallback)", function()
    it("rotates over eligible proxies with its own cursor, not the strategy's state", function()
      local pool = build(4)
      pool.proxies[2].c.flags = DOWN
      local order = {}
      for i = 1, 6 do order[i] = poolmod.round_robin(pool, req()).id end
      assert.same({ 1, 3, 4, 1, 3, 4 }, order)
      assert.same({}, pool.state)
      assert.equal(4, pool.rr)
    end)

    it("is not thrown off by a strategy that wrecked its state", function()
      local pool = build(3)
      pool.state = nil
      assert.equal(1, poolmod.round_robin(pool, req()).id)
      assert.equal(2, poolmod.round_robin(pool, req()).id)
    end)

    it("skips tried proxies and returns nil when none is eligible", function()
      local pool = build(3)
      assert.equal(3, poolmod.round_robin(pool, req({ [1] = true, [2] = true })).id)
      assert.is_nil(poolmod.round_robin(pool, req({ [1] = true, [2] = true, [3] = true })))
      assert.is_nil(poolmod.round_robin(build(0), req()))
    end)
  end)

  describe("lowest", function()
    it("breaks ties of the first key by the second, exactly even for huge counts", function()
      local pool = build(3)
      for i = 1, 3 do pool.proxies[i].c.failures = 2 ^ 40 end
      pool.proxies[1].c.consecutive_failures = 2
      pool.proxies[2].c.consecutive_failures = 1
      pool.proxies[3].c.consecutive_failures = 3
      local p = pool:lowest(req(), function(x) return tonumber(x.c.failures) end,
        function(x) return x.c.consecutive_failures end)
      assert.equal(2, p.id)
    end)
  end)
end)

describe("every strategy", function()
  for _, name in ipairs(NAMES) do
    describe(name, function()
      local s = strategy(name)

      it("is a plugin with name, version and select", function()
        assert.equal(name, s.name)
        assert.is_string(s.version)
        assert.is_function(s.select)
      end)

      it("skips down, disabled, removed and already tried proxies", function()
        local pool = ready(s, build(5))
        pool.proxies[1].c.flags = DOWN
        pool.proxies[2].c.flags = DISABLED
        pool.proxies[3].c.flags = REMOVED
        assert.same({ [5] = 300 }, histogram(s, pool, 300, req({ [4] = true })))
      end)

      it("returns only eligible proxies of the pool, whatever is down", function()
        math.randomseed(11)
        local pool = ready(s, build(12, { 1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3 }))
        local members = {}
        for _, p in ipairs(pool.proxies) do members[p] = true end
        for _ = 1, 300 do
          local r, any = req(), false
          for _, p in ipairs(pool.proxies) do
            p.c.flags = math.random() < 0.6 and math.random(1, 7) or 0
            p.c.active = math.random(0, 3)
            p.c.failures = math.random(0, 3)
            if math.random() < 0.2 then r.tried[p.id] = true end
            any = any or pool:eligible(p, r)
          end
          local got = s.select(pool, r)
          if any then
            assert.is_true(got ~= nil and members[got] and pool:eligible(got, r),
              name .. " returned an ineligible proxy")
          else
            assert.is_nil(got)
          end
        end
      end)

      it("returns nil when nothing is eligible", function()
        local pool = ready(s, build(3))
        for _, p in ipairs(pool.proxies) do p.c.flags = DOWN end
        assert.is_nil(s.select(pool, req()))
        for _, p in ipairs(pool.proxies) do p.c.flags = 0 end
        assert.is_nil(s.select(pool, req({ [1] = true, [2] = true, [3] = true })))
        assert.is_nil(s.select(ready(s, build(0)), req()))
      end)

      -- hash keeps one destination on one proxy, so the same request never
      -- spreads: its spread over destinations is specified under "hash" below.
      if name ~= "hash" then
        it("spreads requests over equal proxies", function()
          local pool = ready(s, build(4))
          local h = histogram(s, pool, 4000)
          for id = 1, 4 do
            assert.is_true((h[id] or 0) > 600, name .. " starves proxy " .. id)
          end
        end)
      end
    end)
  end
end)

describe("round_robin", function()
  local s = strategy("round_robin")

  it("visits each eligible proxy exactly once per cycle", function()
    local pool = build(4)
    assert.same({ 1, 2, 3, 4, 1, 2, 3, 4 }, ids(s, pool, 8))
  end)

  it("keeps the cycle fair over the proxies left when some go down", function()
    local pool = build(5)
    assert.same({ 1, 2 }, ids(s, pool, 2))
    pool.proxies[3].c.flags = DOWN
    pool.proxies[5].c.flags = DISABLED
    assert.same({ 4, 1, 2, 4, 1, 2 }, ids(s, pool, 6))
    pool.proxies[3].c.flags = 0
    assert.same({ 3, 4, 1, 2 }, ids(s, pool, 4))
  end)

  it("keeps its cursor in pool.state", function()
    local pool = build(3)
    s.select(pool, req())
    s.select(pool, req())
    assert.equal(2, pool.state.cursor)
    assert.equal(0, pool.rr)
  end)
end)

describe("random", function()
  local s = strategy("random")

  it("is uniform over 10 000 draws", function()
    math.randomseed(1)
    local pool = build(4)
    local h = histogram(s, pool, 10000)
    for id = 1, 4 do assert_share(h[id], 10000, 0.25, 0.02, "proxy " .. id) end
  end)

  it("stays uniform when most proxies are unusable", function()
    -- Only the first and the last of ten are up: a scan from a random
    -- start would give the last one nine times out of ten.
    math.randomseed(2)
    local pool = build(10)
    for i = 2, 9 do pool.proxies[i].c.flags = DOWN end
    local h = histogram(s, pool, 10000)
    assert_share(h[1], 10000, 0.5, 0.03, "proxy 1")
    assert_share(h[10], 10000, 0.5, 0.03, "proxy 10")
  end)
end)

describe("weighted_random", function()
  local s = strategy("weighted_random")

  it("follows weights 1:3 at about 25/75 %", function()
    math.randomseed(3)
    local pool = ready(s, build(2, { 1, 3 }))
    local h = histogram(s, pool, 10000)
    assert_share(h[1], 10000, 0.25, 0.02, "weight 1")
    assert_share(h[2], 10000, 0.75, 0.02, "weight 3")
  end)

  it("follows uneven weights over many proxies", function()
    math.randomseed(4)
    local pool = ready(s, build(4, { 1, 2, 3, 4 }))
    local h = histogram(s, pool, 20000)
    for id = 1, 4 do assert_share(h[id], 20000, id / 10, 0.015, "weight " .. id) end
  end)

  it("still honours weights among the few eligible ones", function()
    math.randomseed(5)
    local pool = ready(s, build(10, { 1, 1, 1, 1, 1, 1, 1, 1, 1, 4 }))
    for i = 1, 8 do pool.proxies[i].c.flags = DOWN end
    local h = histogram(s, pool, 10000)
    assert.is_nil(h[1])
    assert_share(h[10], 10000, 0.8, 0.03, "weight 4 among 1+4")
  end)

  it("works without init and rebuilds when the proxy list changes", function()
    math.randomseed(6)
    local pool = build(2, { 1, 3 })
    local h = histogram(s, pool, 4000)
    assert.is_true(h[2] > h[1] * 2)
    local other = build(3, { 5, 1, 1 })
    pool.proxies = other.proxies
    h = histogram(s, pool, 7000)
    assert_share(h[1], 7000, 5 / 7, 0.03, "weight 5 of 7")
  end)
end)

describe("least_conn", function()
  local s = strategy("least_conn")

  it("picks the proxy with the fewest active connections", function()
    local pool = build(3)
    pool.proxies[1].c.active, pool.proxies[2].c.active, pool.proxies[3].c.active = 5, 1, 3
    assert.same({ [2] = 20 }, histogram(s, pool, 20))
  end)

  it("rotates among equally loaded proxies", function()
    local pool = build(4)
    pool.proxies[1].c.active = 9
    assert.same({ 2, 3, 4, 2, 3, 4 }, ids(s, pool, 6))
  end)

  it("follows the load as it changes", function()
    local pool = build(3)
    local p = pool.proxies
    -- Each pick takes a connection, as the core would count it.
    for _ = 1, 9 do
      local got = s.select(pool, req())
      got.c.active = got.c.active + 1
    end
    assert.same({ 3, 3, 3 }, { p[1].c.active, p[2].c.active, p[3].c.active })
  end)
end)

describe("least_errors", function()
  local s = strategy("least_errors")

  it("picks the fewest failures, then the fewest consecutive failures", function()
    local pool = build(3)
    pool.proxies[1].c.failures = 4
    pool.proxies[2].c.failures = 2
    pool.proxies[2].c.consecutive_failures = 2
    pool.proxies[3].c.failures = 2
    assert.same({ [3] = 10 }, histogram(s, pool, 10))
  end)

  it("lets consecutive failures decide even between huge failure counts", function()
    local pool = build(2)
    pool.proxies[1].c.failures, pool.proxies[2].c.failures = 2 ^ 40, 2 ^ 40
    pool.proxies[1].c.consecutive_failures = 1
    assert.same({ [2] = 10 }, histogram(s, pool, 10))
  end)

  it("rotates among proxies with equal errors", function()
    local pool = build(3)
    pool.proxies[2].c.failures = 1
    assert.same({ 1, 3, 1, 3 }, ids(s, pool, 4))
  end)
end)

describe("health_score", function()
  local s = strategy("health_score")

  it("prefers the healthier proxy", function()
    local pool = build(2)
    pool.proxies[1].c.successes, pool.proxies[1].c.failures = 5, 5
    pool.proxies[2].c.successes = 10
    assert.same({ [2] = 50 }, histogram(s, pool, 50))
  end)

  it("prefers lower latency when success rates are equal", function()
    local pool = build(2)
    pool.proxies[1].c.latency_ewma_ms = 900
    pool.proxies[2].c.latency_ewma_ms = 100
    assert.same({ [2] = 20 }, histogram(s, pool, 20))
  end)

  it("avoids a proxy whose last failure is recent, and comes back to it later", function()
    local pool = build(2)
    pool.proxies[1].c.successes, pool.proxies[2].c.successes = 100, 100
    pool.proxies[1].c.latency_ewma_ms, pool.proxies[2].c.latency_ewma_ms = 600, 600
    pool.proxies[1].c.failures = 1
    pool.proxies[1].c.last_failure_at = NOW - 5
    assert.same({ [2] = 20 }, histogram(s, pool, 20))
    -- Long after: 99 % against 100 % is within the tie margin.
    pool.proxies[1].c.last_failure_at = NOW - 600
    assert.same({ [1] = 10, [2] = 10 }, histogram(s, pool, 20))
  end)

  it("rotates among equally healthy proxies, each once per cycle", function()
    local pool = build(3)
    assert.same({ 1, 2, 3, 1, 2, 3 }, ids(s, pool, 6))
  end)

  it("counts scores within 5 points as equal, then takes the fewest active", function()
    local pool = build(3)
    local p = pool.proxies
    -- Scores 100, 97 (100 ms) and 94 (200 ms); only the last is out of the tie.
    p[2].c.latency_ewma_ms, p[3].c.latency_ewma_ms = 100, 200
    p[1].c.active, p[2].c.active, p[3].c.active = 4, 1, 0
    assert.same({ [2] = 10 }, histogram(s, pool, 10))
  end)

  it("shares the load among equally healthy proxies, fewest active first", function()
    local pool = build(3)
    pool.proxies[3].c.active = 4
    local h = histogram(s, pool, 100)
    assert.is_nil(h[3])
    assert.equal(50, h[1])
    assert.equal(50, h[2])
  end)

  it("does not drift down a chain of near ties", function()
    -- 100, 96, 92: 92 is within 5 of 96 but not of the best, 100.
    local pool = build(3)
    local p = pool.proxies
    p[2].c.latency_ewma_ms, p[3].c.latency_ewma_ms = 400 / 3, 800 / 3
    p[1].c.active, p[2].c.active, p[3].c.active = 5, 3, 0
    assert.same({ [2] = 10 }, histogram(s, pool, 10))
  end)

  it("never counts a proxy below the minimum score as tied with a healthy one", function()
    -- Both always fail; latency scores 73.3 and 60 give 22 and 18.
    local pool = build(2)
    local p = pool.proxies
    p[1].c.failures, p[2].c.failures = 10, 10
    p[1].c.latency_ewma_ms, p[2].c.latency_ewma_ms = 800 / 3, 400
    p[1].c.active, p[2].c.active = 5, 0
    assert.same({ [1] = 10 }, histogram(s, pool, 10))
  end)

  it("takes the best of the unhealthy ones when none reaches the minimum score", function()
    local pool = build(2)
    pool.proxies[1].c.failures, pool.proxies[2].c.failures = 100, 100
    pool.proxies[1].c.latency_ewma_ms, pool.proxies[2].c.latency_ewma_ms = 5000, 100
    assert.equal(2, s.select(pool, req()).id)
  end)

  it("takes an unhealthy proxy over nothing", function()
    local pool = build(2)
    pool.proxies[1].c.flags = DOWN
    pool.proxies[2].c.failures = 100
    pool.proxies[2].c.latency_ewma_ms = 5000
    assert.equal(2, s.select(pool, req()).id)
  end)

  it("uses the pool's clock and latency ceiling", function()
    local pool = build(2)
    pool.proxies[1].c.latency_ewma_ms = 500
    pool.latency_ceiling = 100000 -- 500 ms is now nearly perfect: a tie
    assert.same({ [1] = 5, [2] = 5 }, histogram(s, pool, 10))
    pool.latency_ceiling = 1000
    pool.proxies[2].c.failures, pool.proxies[2].c.successes = 1, 9
    pool.proxies[2].c.last_failure_at = NOW - 1
    -- 2: (63 + 30) * 0.9 = 83.7 against 1: 70 + 15 = 85, a tie; then later
    -- 2 is 93, clearly ahead.
    local h = histogram(s, pool, 10)
    assert.is_true(h[1] == 5 and h[2] == 5)
    pool.now = function() return NOW + 120 end
    assert.same({ [2] = 10 }, histogram(s, pool, 10))
  end)
end)

describe("latency", function()
  it("picks the lowest latency, trying unmeasured proxies first", function()
    local s, pool = strategy("latency"), build(3)
    pool.proxies[1].c.latency_ewma_ms = 40
    pool.proxies[2].c.latency_ewma_ms = 10
    assert.equal(3, s.select(pool, req()).id)
    pool.proxies[3].c.latency_ewma_ms = 90
    assert.equal(2, s.select(pool, req()).id)
  end)
end)

describe("hash", function()
  local s = strategy("hash")

  local function pick(pool, host)
    local r = req()
    r.host = host
    return s.select(pool, r).id
  end

  it("sends one destination through one proxy", function()
    local pool = build(5)
    for _, host in ipairs { "a.example", "b.example", "c.example" } do
      local first = pick(pool, host)
      for _ = 1, 10 do assert.equal(first, pick(pool, host)) end
    end
  end)

  it("spreads destinations over the proxies", function()
    local pool = build(4)
    local h = {}
    for i = 1, 4000 do
      local id = pick(pool, "host" .. i .. ".example")
      h[id] = (h[id] or 0) + 1
    end
    for id = 1, 4 do assert.is_true(h[id] > 700, "proxy " .. id .. ": " .. tostring(h[id])) end
  end)

  it("moves only the destinations of a proxy that drops out", function()
    local pool = build(4)
    local before = {}
    for i = 1, 1000 do before[i] = pick(pool, "d" .. i) end
    pool.proxies[2].c.flags = DOWN
    for i = 1, 1000 do
      local now = pick(pool, "d" .. i)
      if before[i] ~= 2 then assert.equal(before[i], now) else assert.not_equal(2, now) end
    end
  end)
end)
