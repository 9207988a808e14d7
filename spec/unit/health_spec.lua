local health = require("ferry.health")

local function stats(t)
  return { successes = t.ok or 0, failures = t.bad or 0, latency_ewma_ms = t.ms or 0,
           last_failure_at = t.failed_at or 0 }
end

describe("health.score", function()
  it("is 100 for a proxy with no history", function()
    assert.equal(100, health.score(stats {}, 1000, 50))
  end)

  it("weighs success rate 70 % and latency 30 %", function()
    -- 80 % success, 250 ms of a 1000 ms ceiling: 0.8*70 + 75*0.3
    assert.near(56 + 22.5, health.score(stats { ok = 8, bad = 2, ms = 250 }, 1000, 1e9), 1e-9)
  end)

  it("bottoms the latency part out at the ceiling", function()
    assert.near(70, health.score(stats { ok = 1, ms = 5000 }, 1000, 0), 1e-9)
  end)

  it("takes 10 % off while the last failure is recent", function()
    local s = stats { ok = 9, bad = 1, ms = 100, failed_at = 100 }
    local fresh = health.score(s, 1000, 100 + health.RECENT_ERROR_WINDOW - 1)
    local old = health.score(s, 1000, 100 + health.RECENT_ERROR_WINDOW + 1)
    assert.near(old * 0.9, fresh, 1e-9)
  end)

  it("reads uint64 cdata counters", function()
    local ffi = require("ffi")
    require("ferry.cdef")
    local c = ffi.new("struct ferry_proxy")
    c.successes, c.failures = 3, 1
    assert.near(0.75 * 70 + 30, health.score(c, 1000, 0), 1e-9)
  end)
end)
