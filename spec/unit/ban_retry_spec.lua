-- Retry on ban: the ban table's retry field, and the one parse of
-- Retry-After (lua/ferry/exchange.lua) that sets a ban's length.
local exchange = require("ferry.exchange")
local config = require("ferry.config")

-- Sun, 06 Nov 1994 08:49:37 GMT, RFC 9110's example date.
local T1994 = 784111777

describe("Retry-After", function()
  local ra = exchange.retry_after

  it("takes delta-seconds as they are", function()
    assert.equal(5, (ra("5", T1994, 3600)))
    assert.is_nil(select(2, ra("5", T1994, 3600)))
    assert.equal(120, (ra(" 120 ", T1994, 3600)))
    assert.equal(3600, (ra("3600", T1994, 3600)))
  end)

  it("reads each of the three HTTP-date forms", function()
    assert.equal(T1994, exchange.http_date("Sun, 06 Nov 1994 08:49:37 GMT"))
    assert.equal(T1994, exchange.http_date("Sunday, 06-Nov-94 08:49:37 GMT"))
    assert.equal(T1994, exchange.http_date("Sun Nov  6 08:49:37 1994"))
    assert.equal(0, exchange.http_date("Thu, 01 Jan 1970 00:00:00 GMT"))
    assert.equal(951782400, exchange.http_date("Tue, 29 Feb 2000 00:00:00 GMT"))
  end)

  it("turns a date into the seconds left until it", function()
    assert.equal(30, (ra("Sun, 06 Nov 1994 08:49:37 GMT", T1994 - 30, 3600)))
    assert.equal(30, (ra("Sun Nov  6 08:49:37 1994", T1994 - 30, 3600)))
  end)

  it("makes anything below one second (0, a date already past) one second", function()
    assert.equal(1, (ra("0", T1994, 3600)))
    assert.equal(1, (ra("Sun, 06 Nov 1994 08:49:37 GMT", T1994 + 100, 3600)))
    assert.is_nil(select(2, ra("0", T1994, 3600)))
  end)

  it("clamps a huge value to max_backoff and says so", function()
    local s, why = ra("1000000000000", T1994, 3600) -- 10^12
    assert.equal(3600, s)
    assert.equal("clamped", why)
    s, why = ra(string.rep("9", 400), T1994, 600) -- overflows a double: inf
    assert.equal(600, s)
    assert.equal("clamped", why)
    s, why = ra("Fri, 31 Dec 9999 23:59:59 GMT", T1994, 600)
    assert.equal(600, s)
    assert.equal("clamped", why)
  end)

  it("refuses negative numbers and garbage", function()
    for _, v in ipairs { "-5", "5.5", "1e3", "0x10", "soon", "", "5 s", "+5",
                         "Sun, 06 Nov 1994 08:49:37 UTC", "Sun, 32 Nov 1994 08:49:37 GMT",
                         "Sun, 06 Foo 1994 08:49:37 GMT", "Sun, 06 Nov 1994 25:49:37 GMT",
                         string.rep("x", 5000) } do
      local s, why = ra(v, T1994, 3600)
      assert.is_nil(s, v)
      assert.equal("unusable", why, v)
    end
    assert.equal("unusable", select(2, ra(nil, T1994, 3600)))
  end)
end)

describe("config ban.retry", function()
  local function exchange_of(ban)
    local cfg, err = config.load_string(
      "pool \"p\" { proxies = { \"http://127.0.0.1:1\" } }\n" ..
      "exchange \"e\" { hosts = { 'a.com' }, pool = \"p\", ban = " .. ban .. " }\n", "cfg.lua")
    return cfg and cfg.exchanges[1], err
  end

  it("is absent (no retry) unless given", function()
    assert.is_nil(exchange_of("{ status = { 429 } }").ban.retry)
  end)

  it("takes 0 to FERRY_RETRIES_MAX tries", function()
    assert.equal(2, exchange_of("{ status = { 429 }, retry = 2 }").ban.retry)
    assert.equal(0, exchange_of("{ status = { 429 }, retry = 0 }").ban.retry)
    assert.equal(8, exchange_of("{ status = { 429 }, retry = 8 }").ban.retry)
  end)

  it("refuses negative, fractional and too many tries", function()
    for _, v in ipairs { "-1", "1.5", "9", "'2'" } do
      local e, err = exchange_of("{ status = { 429 }, retry = " .. v .. " }")
      assert.is_nil(e, v)
      assert.matches('exchange "e": ban: retry', err, 1, true)
    end
  end)
end)
