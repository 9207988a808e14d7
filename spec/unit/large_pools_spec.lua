-- Strategies on pools larger than pool.SCAN_MAX: sampled choices for the
-- "best proxy" strategies, jump consistent hashing for hash.
local pools = require("pools")
local plugins = require("ferry.plugins")
local poolmod = require("ferry.pool")

local BUILTIN = { "plugins" }
local function strategy(name) return assert(plugins.load("strategies", name, BUILTIN)) end

describe("large pools", function()
  local N = 1000
  assert(N > poolmod.SCAN_MAX)

  it("least_conn picks far below the average load, from eligible proxies only", function()
    local pool = pools.pool(N)
    for i, p in ipairs(pool.proxies) do p.c.active = i % 50 end
    local s, sum = strategy("least_conn"), 0
    for _ = 1, 500 do
      local p = s.select(pool, pools.req())
      assert.is_true(pool:eligible(p))
      sum = sum + p.c.active
    end
    -- The pool averages 24.5; the best of 16 random draws averages ~1.5.
    assert.is_true(sum / 500 < 5, "mean active " .. sum / 500)
  end)

  it("falls back to a full scan when nearly every proxy is unusable", function()
    local pool = pools.pool(N)
    for _, p in ipairs(pool.proxies) do p.c.flags = 1 end
    pool.proxies[777].c.flags = 0
    for _, name in ipairs { "least_conn", "least_errors", "latency", "health_score", "hash" } do
      local p = strategy(name).select(pool, pools.req())
      assert.equal(777, p and p.id, name)
    end
  end)

  it("health_score prefers healthy proxies in a sample", function()
    local pool = pools.pool(N)
    for i, p in ipairs(pool.proxies) do
      if i % 2 == 0 then p.c.successes, p.c.failures = 1, 99 end
    end
    local s = strategy("health_score")
    for _ = 1, 200 do
      assert.equal(1, s.select(pool, pools.req()).id % 2)
    end
  end)

  it("hash keeps a destination on one proxy and moves only that proxy's destinations", function()
    local pool = pools.pool(N)
    local s = strategy("hash")
    local before = {}
    for d = 1, 300 do
      local req = { host = "h" .. d .. ".example.com", port = 443, tried = {} }
      before[d] = s.select(pool, req).id
      assert.equal(before[d], s.select(pool, req).id)
    end
    local gone = before[1]
    pool.proxies[gone].c.flags = 2 -- disabled
    for d = 1, 300 do
      local id = s.select(pool, { host = "h" .. d .. ".example.com", port = 443, tried = {} }).id
      if before[d] == gone then
        assert.are_not.equal(gone, id)
      else
        assert.equal(before[d], id)
      end
    end
  end)

  it("hash spreads destinations over the pool", function()
    local pool = pools.pool(N)
    local s, seen, distinct = strategy("hash"), {}, 0
    for d = 1, 2000 do
      local id = s.select(pool, { host = "d" .. d, port = 80, tried = {} }).id
      if not seen[id] then seen[id], distinct = true, distinct + 1 end
    end
    -- 2000 balls in 1000 bins: about 865 distinct bins expected.
    assert.is_true(distinct > 750, "distinct " .. distinct)
  end)
end)
