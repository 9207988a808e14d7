-- Rate budgets on the Lua side: the exchange's `rate` field, the weight
-- hook's answer, and on_response's `used` (ferry.config, ferry.exchange).
local config = require("ferry.config")
local exchange = require("ferry.exchange")

local function load(rate)
  return config.load_string([[
pool "p" { proxies = { "http://10.0.0.1:3128" } }
exchange "x" { hosts = { "x.test" }, pool = "p", rate = ]] .. rate .. [[ }
]], "cfg.lua")
end

describe("exchange rate = { ... }", function()
  it("reads limit, per, burst, queue and queue_timeout with defaults", function()
    local cfg = assert(load("{ limit = 1200, per = 60 }"))
    assert.same({ limit = 1200, per = 60, burst = 1200, queue = 256, queue_timeout = 5 },
      cfg.exchanges[1].rate)
    cfg = assert(load("{ limit = 10, burst = 3, queue = 0, queue_timeout = 0.5 }"))
    assert.same({ limit = 10, per = 1, burst = 3, queue = 0, queue_timeout = 0.5 },
      cfg.exchanges[1].rate)
    cfg = assert(config.load_string([[
pool "p" { proxies = { "http://10.0.0.1:3128" } }
exchange "x" { hosts = { "x.test" }, pool = "p" }
]], "cfg.lua"))
    assert.is_nil(cfg.exchanges[1].rate)
  end)

  it("refuses what cannot be a budget, naming the field", function()
    local cases = {
      { "{ per = 60 }", "limit is required" },
      { "{ limit = 0 }", "limit must be between" },
      { "{ limit = -5 }", "limit must be between" },
      { "{ limit = 0/0 }", "limit must be a number, got nan" },
      { "{ limit = 10, per = 0 }", "per must be between" },
      { "{ limit = 10, burst = 0 }", "burst must be between" },
      { "{ limit = 10, queue = 1.5 }", "queue must be a whole number" },
      { "{ limit = 10, queue = -1 }", "queue must be between" },
      { "{ limit = 10, queue_timeout = 0 }", "queue_timeout must be between" },
      { "{ limit = 10, rate = 5 }", "rate" },
      { "5", "expected a table" },
    }
    for _, c in ipairs(cases) do
      local cfg, err = load(c[1])
      assert.is_nil(cfg, c[1])
      assert.matches('exchange "x": rate', err, 1, true)
      assert.matches(c[2], err, 1, true)
    end
  end)
end)

describe("weight hook answers", function()
  it("takes numbers from 0 to WEIGHT_MAX", function()
    assert.equal(5, exchange.weight_of(5))
    assert.equal(0, exchange.weight_of(0))
    assert.equal(0.5, exchange.weight_of(0.5))
  end)

  it("refuses NaN, negative, huge and non-numbers with a reason", function()
    for _, v in ipairs { -1, 0 / 0, math.huge, exchange.WEIGHT_MAX + 1, "5", true } do
      local w, why = exchange.weight_of(v)
      assert.is_nil(w)
      assert.matches("weight must return a number", why, 1, true)
    end
    local _, why = exchange.weight_of(nil)
    assert.matches("got a nil", why, 1, true)
  end)
end)

describe("on_response used", function()
  it("reads { used = N } alone or with a ban; the old verdicts stay", function()
    assert.same({ nil, nil, 8 }, { exchange.verdict({ used = 8 }) })
    assert.same({ "ban", 30, 8 }, { exchange.verdict({ ban = 30, used = "8" }) })
    assert.same({ "ban", 30 }, { exchange.verdict({ ban = 30 }) })
    assert.equal("ok", exchange.verdict("ok"))
  end)

  it("refuses a used that is not a number >= 0", function()
    for _, u in ipairs { -1, "lots", 0 / 0, math.huge } do
      assert.has_error(function() exchange.verdict({ used = u }) end)
    end
    -- A bad ban with a good used is still a bad answer.
    assert.has_error(function() exchange.verdict({ ban = -1, used = 3 }) end)
  end)
end)
