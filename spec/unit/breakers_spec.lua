-- The built-in breaker plugins (plugins/breakers), through ferry.plugins
-- as the runtime loads them, with plain tables for the pair state.
local plugins = require("ferry.plugins")

local BUILTIN = { "plugins" }

local function load(name)
  plugins.reset()
  return assert(plugins.load("breakers", name, BUILTIN))
end

-- Settings as apply.lua builds them: the plugin's defaults under the
-- pool's breaker table (which config.lua has filled with the generic ones).
local function settings(plugin, pool)
  local s = {}
  for k, v in pairs(plugin.defaults) do s[k] = v end
  for k, v in pairs { policy = plugin.name, cooldown = 30, trials = 1, max_cooldown = 480 } do
    s[k] = v
  end
  for k, v in pairs(pool or {}) do s[k] = v end
  return s
end

local FAIL = { ok = false, kind = "timeout", status = 0, latency_ms = 5000 }
local OK = { ok = true, status = 200, latency_ms = 20 }

-- A window function answering fixed counts, and recording what it was asked.
local function fake_window(successes, failures)
  local asked = {}
  return function(seconds)
    asked[#asked + 1] = seconds
    return successes, failures
  end, asked
end

describe("breaker consecutive", function()
  local b = load("consecutive")

  it("is a breaker plugin with a default of 5 failures", function()
    assert.equal("consecutive", b.name)
    assert.equal("1", b.version)
    assert.same({ failures = 5 }, b.defaults)
  end)

  it("accepts its defaults and whole failures from 1 to 1000", function()
    assert.is_nil(b.check(settings(b)))
    assert.is_nil(b.check(settings(b, { failures = 1 })))
    assert.is_nil(b.check(settings(b, { failures = 1000 })))
  end)

  it("refuses other failures, naming the field and the value", function()
    assert.equal("failures must be a whole number from 1 to 1000, got 0",
      b.check(settings(b, { failures = 0 })))
    assert.equal("failures must be a whole number from 1 to 1000, got 2.5",
      b.check(settings(b, { failures = 2.5 })))
    assert.equal("failures must be a whole number from 1 to 1000, got true",
      b.check(settings(b, { failures = true })))
    assert.equal("failures must be a whole number from 1 to 1000, got 1001",
      b.check(settings(b, { failures = 1001 })))
  end)

  it("refuses a setting that is neither its own nor a generic one", function()
    assert.equal('unknown setting "failurs" (consecutive takes failures)',
      b.check(settings(b, { failurs = 3 })))
    assert.equal('unknown setting "threshold" (consecutive takes failures)',
      b.check(settings(b, { threshold = 0.5 })))
  end)

  it("opens when the failures in a row reach the setting", function()
    local s = settings(b, { failures = 3 })
    local window = fake_window(0, 0)
    assert.is_false(b.should_open(s, { consecutive_failures = 1 }, FAIL, window))
    assert.is_false(b.should_open(s, { consecutive_failures = 2 }, FAIL, window))
    assert.is_true(b.should_open(s, { consecutive_failures = 3 }, FAIL, window))
    assert.is_true(b.should_open(s, { consecutive_failures = 7 }, FAIL, window))
  end)

  it("never opens on a success (an on_response \"ok\" over a transport failure)", function()
    local s = settings(b, { failures = 1 })
    assert.is_false(b.should_open(s, { consecutive_failures = 9 }, OK, fake_window(0, 9)))
  end)
end)

describe("breaker error_rate", function()
  local b = load("error_rate")

  it("is a breaker plugin with window 30 s, threshold 0.5, min_requests 20", function()
    assert.equal("error_rate", b.name)
    assert.same({ window = 30, threshold = 0.5, min_requests = 20 }, b.defaults)
    assert.is_nil(b.check(settings(b)))
  end)

  it("accepts the edges of each setting", function()
    assert.is_nil(b.check(settings(b, { window = 1, threshold = 1, min_requests = 1 })))
    assert.is_nil(b.check(settings(b, { window = 60, threshold = 0.01, min_requests = 1000000 })))
  end)

  it("refuses a window that is not whole seconds from 1 to 60", function()
    for _, w in ipairs { 0, 61, 1.5, "30" } do
      assert.equal("window must be a whole number of seconds from 1 to 60, got " .. tostring(w),
        b.check(settings(b, { window = w })))
    end
  end)

  it("refuses a threshold that is not a fraction in (0, 1]", function()
    for _, t in ipairs { 0, 1.01, -0.5, true } do
      assert.equal("threshold must be a fraction above 0 and at most 1, got " .. tostring(t),
        b.check(settings(b, { threshold = t })))
    end
  end)

  it("refuses min_requests below 1 or not whole", function()
    for _, m in ipairs { 0, 2.5, 1000001 } do
      assert.equal("min_requests must be a whole number from 1 to 1000000, got " .. tostring(m),
        b.check(settings(b, { min_requests = m })))
    end
  end)

  it("refuses a setting that is neither its own nor a generic one", function()
    assert.equal('unknown setting "failures" (error_rate takes window, threshold, min_requests)',
      b.check(settings(b, { failures = 5 })))
  end)

  it("opens at min_requests results with the threshold's share failed", function()
    local s = settings(b, { window = 10, threshold = 0.5, min_requests = 20 })
    local window, asked = fake_window(10, 10)
    assert.is_true(b.should_open(s, {}, FAIL, window))
    assert.same({ 10 }, asked)
    assert.is_true(b.should_open(s, {}, FAIL, fake_window(0, 20)))
    assert.is_true(b.should_open(s, {}, FAIL, fake_window(400, 600)))
  end)

  it("stays closed below min_requests, whatever the rate", function()
    local s = settings(b, { min_requests = 20 })
    assert.is_false(b.should_open(s, {}, FAIL, fake_window(0, 19)))
    assert.is_false(b.should_open(s, {}, FAIL, fake_window(1, 18)))
  end)

  it("stays closed below the threshold", function()
    local s = settings(b, { threshold = 0.5, min_requests = 20 })
    assert.is_false(b.should_open(s, {}, FAIL, fake_window(11, 9)))
    assert.is_false(b.should_open(settings(b, { threshold = 1 }), {}, FAIL, fake_window(1, 99)))
    assert.is_true(b.should_open(settings(b, { threshold = 1 }), {}, FAIL, fake_window(0, 100)))
  end)

  it("does not read the window on a success", function()
    local window, asked = fake_window(0, 100)
    assert.is_false(b.should_open(settings(b), {}, OK, window))
    assert.same({}, asked)
  end)
end)

describe("breaker settings when a config is applied", function()
  local config = require("ferry.config")
  local apply = require("ferry.apply")

  local function prepare(src)
    local cfg = assert(config.load_string(src, "cfg.lua"))
    return apply.prepare(cfg, ".")
  end

  local function pool(breaker)
    return '-- one\npool "p" { strategy = "round_robin", breaker = ' .. breaker ..
      ', proxies = { "http://h:1" } }'
  end

  it("merges the plugin's defaults under the pool's settings", function()
    local prep = assert(prepare(pool("{ policy = 'error_rate', threshold = 0.2 }")))
    local b = prep.pools.p.breaker
    assert.equal("error_rate", b.plugin.name)
    assert.same({ policy = "error_rate", window = 30, threshold = 0.2, min_requests = 20,
                  cooldown = 30, trials = 1, max_cooldown = 480 }, b.settings)
    prep = assert(prepare('pool "p" { strategy = "round_robin", proxies = { "http://h:1" } }'))
    assert.same({ policy = "consecutive", failures = 5, cooldown = 30, trials = 1,
                  max_cooldown = 480 }, prep.pools.p.breaker.settings)
  end)

  it("reports the plugin's check with the pool's file and line", function()
    local prep, err = prepare(pool("{ failures = 0 }"))
    assert.is_nil(prep)
    assert.equal('cfg.lua:2: pool "p": breaker: failures must be a whole number from 1 to 1000, ' ..
      'got 0', err)
    err = select(2, prepare(pool("{ policy = 'error_rate', window = 90 }")))
    assert.equal('cfg.lua:2: pool "p": breaker: window must be a whole number of seconds from ' ..
      '1 to 60, got 90', err)
    err = select(2, prepare(pool("{ failurs = 3 }")))
    assert.equal('cfg.lua:2: pool "p": breaker: unknown setting "failurs" (consecutive takes ' ..
      'failures)', err)
  end)

  it("names a policy that no plugin directory has", function()
    local _, err = prepare(pool("{ policy = 'nope' }"))
    assert.equal('cfg.lua:2: pool "p": breaker: unknown policy "nope" (no plugin "nope" in ' ..
      './plugins/breakers/)', err)
  end)
end)
