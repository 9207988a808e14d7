local ffi = require("ffi")
require("ferry.cdef")
local health = require("ferry.health")

-- A real struct ferry_proxy, as the core hands it to Lua.
local function proxy(t)
  local c = ffi.new("struct ferry_proxy")
  c.successes = t.ok or 0
  c.failures = t.bad or 0
  c.latency_ewma_ms = t.ms or 0
  c.last_failure_at = t.failed_at or 0
  return c
end

describe("health", function()
  it("exports the recent-error window and the minimum score", function()
    assert.equal(60, health.RECENT_ERROR_WINDOW)
    assert.equal(20, health.MIN_SCORE)
  end)

  describe("score", function()
    it("is 100 for a proxy with no history", function()
      assert.equal(100, health.score(proxy {}, 1000, 50))
    end)

    it("counts the success rate as 1 when there are no samples yet", function()
      -- 500 ms of a 1000 ms ceiling: latency score 50.
      assert.near(70 + 15, health.score(proxy { ms = 500 }, 1000, 0), 1e-9)
    end)

    it("weighs the success rate 70 % and the latency score 30 %", function()
      -- 80 % success, 250 ms of a 1000 ms ceiling: 0.8*70 + 75*0.3
      assert.near(56 + 22.5, health.score(proxy { ok = 8, bad = 2, ms = 250 }, 1000, 1e9), 1e-9)
    end)

    it("lowers the latency score linearly up to the ceiling", function()
      local prev = math.huge
      for ms = 100, 1000, 100 do
        local s = health.score(proxy { ok = 1, ms = ms }, 1000, 0)
        assert.near(70 + 30 * (1 - ms / 1000), s, 1e-9)
        assert.is_true(s < prev)
        prev = s
      end
    end)

    it("bottoms the latency part out at and beyond the ceiling", function()
      assert.near(70, health.score(proxy { ok = 1, ms = 1000 }, 1000, 0), 1e-9)
      assert.near(70, health.score(proxy { ok = 1, ms = 5000 }, 1000, 0), 1e-9)
      assert.near(70, health.score(proxy { ok = 1, ms = 3000 }, 2000, 0), 1e-9)
      assert.near(70 + 15, health.score(proxy { ok = 1, ms = 1000 }, 2000, 0), 1e-9)
    end)

    it("is 0 for a proxy that always fails and is slower than the ceiling", function()
      assert.equal(0, health.score(proxy { bad = 50, ms = 4000 }, 1000, 0))
    end)

    it("takes 10 % off while the last failure is recent", function()
      local c = proxy { ok = 9, bad = 1, ms = 100, failed_at = 100 }
      local base = 0.9 * 70 + 90 * 0.3
      assert.near(base * 0.9, health.score(c, 1000, 100), 1e-9)
      assert.near(base * 0.9, health.score(c, 1000, 100 + health.RECENT_ERROR_WINDOW - 1), 1e-9)
      -- The window is half-open: exactly 60 s later the failure is old.
      assert.near(base, health.score(c, 1000, 100 + health.RECENT_ERROR_WINDOW), 1e-9)
      assert.near(base, health.score(c, 1000, 100 + health.RECENT_ERROR_WINDOW + 1), 1e-9)
    end)

    it("never penalises a proxy that has not failed, even early in the clock", function()
      assert.equal(100, health.score(proxy { ok = 3 }, 1000, 1))
    end)

    it("reads uint64 cdata counters, large ones included", function()
      local c = proxy {}
      c.successes, c.failures = 3ULL * 2 ^ 40, 2 ^ 40
      assert.near(0.75 * 70 + 30, health.score(c, 1000, 0), 1e-9)
    end)

    it("accepts a plain table with the same fields", function()
      local t = { successes = 1, failures = 1, latency_ewma_ms = 0, last_failure_at = 0 }
      assert.near(35 + 30, health.score(t, 1000, 0), 1e-9)
    end)

    it("stays within 0..100 whatever the stats", function()
      math.randomseed(7)
      for _ = 1, 2000 do
        local c = proxy { ok = math.random(0, 1000), bad = math.random(0, 1000),
                          ms = math.random() * 3000, failed_at = math.random(0, 200) }
        local s = health.score(c, math.random(1, 2000), math.random(0, 400))
        assert.is_true(s >= 0 and s <= 100, "score out of range: " .. s)
      end
    end)
  end)
end)
