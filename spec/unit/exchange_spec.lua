-- Exchange scripts and ban rules (lua/ferry/exchange.lua).
local exchange = require("ferry.exchange")

local function script(src)
  local path = os.tmpname()
  local f = assert(io.open(path, "w"))
  f:write(src)
  f:close()
  return path
end

describe("exchange scripts", function()
  it("loads a table of hooks", function()
    local path = script([[
      return { on_response = function(res) if res.status == 418 then return { ban = 5 } end end }
    ]])
    local hooks = assert(exchange.load_script(path, "x"))
    assert.same({ ban = 5 }, hooks.on_response({ status = 418 }))
    os.remove(path)
  end)

  it("names the file and line of a syntax error", function()
    local path = script("return {\n on_request = function( end }\n")
    local hooks, err = exchange.load_script(path, "x")
    assert.is_nil(hooks)
    assert.matches(path:gsub("%p", "%%%0") .. ":2:", err)
    os.remove(path)
  end)

  it("names the file of a script that raises while loading", function()
    local path = script("error('no thanks')\n")
    local _, err = exchange.load_script(path, "x")
    assert.matches("no thanks", err)
    assert.truthy(err:find(path, 1, true))
    os.remove(path)
  end)

  it("refuses a script that returns no table, unknown hooks and non-functions", function()
    local a = script("return 42")
    local b = script("return { on_reponse = function() end }")
    local c = script("return { select = 'round_robin' }")
    assert.matches("must return a table of hooks, got a number", select(2, exchange.load_script(a, "x")))
    assert.matches('unknown hook "on_reponse"', select(2, exchange.load_script(b, "x")))
    assert.matches("hook select must be a function, got a string", select(2, exchange.load_script(c, "x")))
    os.remove(a) os.remove(b) os.remove(c)
  end)

  it("a missing script file is an error naming it", function()
    local hooks, err = exchange.load_script("/nonexistent/ferry/x.lua", "x")
    assert.is_nil(hooks)
    assert.matches("/nonexistent/ferry/x.lua", err)
  end)

  it("runs scripts without io, os.execute or require", function()
    local path = script([[
      return { on_request = function() return { io = io, exec = os.execute, req = require } end }
    ]])
    local hooks = assert(exchange.load_script(path, "x"))
    assert.same({}, hooks.on_request())
    os.remove(path)
  end)
end)

describe("header edits from on_request", function()
  it("builds header lines and a drop list", function()
    local add, drop = exchange.header_edits({ add = { ["X-B"] = "2", ["X-A"] = 1 },
                                              drop = { "X-Debug", "cookie" } })
    assert.equal("X-A: 1\r\nX-B: 2\r\n", add)
    assert.equal("\nx-debug\ncookie\n", drop)
  end)

  it("has nothing to do for nil or empty edits", function()
    assert.is_nil(exchange.header_edits(nil))
    assert.is_nil(exchange.header_edits({ add = {}, drop = {} }))
  end)

  it("refuses header injection and bad names", function()
    assert.error_matches(function()
      exchange.header_edits({ add = { ["X-A"] = "a\r\nEvil: 1" } })
    end, "headers.add: value of X-A has control characters", 1, true)
    assert.error_matches(function() exchange.header_edits({ add = { ["Bad Name"] = "a" } }) end,
      'headers.add: "Bad Name" is not a header name', 1, true)
    assert.error_matches(function() exchange.header_edits({ drop = { "a:b" } }) end,
      'headers.drop: "a:b" is not a header name', 1, true)
    assert.error_matches(function() exchange.header_edits("X-A: 1") end,
      "headers must be a table { add = {...}, drop = {...} }", 1, true)
  end)
end)

describe("ban rules", function()
  local ban = { status_set = { [418] = true, [429] = true }, body = { "IP banned" },
                backoff = 60, max_backoff = 600 }

  it("bans on a listed status or a body marker", function()
    assert.equal("status 429", exchange.ban_reason(ban, 429, nil))
    assert.equal('body marker "IP banned"', exchange.ban_reason(ban, 200, "{\"msg\":\"IP banned\"}"))
    assert.is_nil(exchange.ban_reason(ban, 200, "fine"))
    assert.is_nil(exchange.ban_reason(nil, 429, nil))
  end)

  it("doubles the backoff per ban in a row, capped", function()
    assert.equal(60, exchange.ban_seconds(ban, nil, 0))
    assert.equal(120, exchange.ban_seconds(ban, nil, 1))
    assert.equal(600, exchange.ban_seconds(ban, nil, 10))
    assert.equal(10, exchange.ban_seconds(ban, 5, 1))
  end)

  it("reads on_response verdicts and refuses garbage", function()
    assert.is_nil(exchange.verdict(nil))
    assert.equal("ok", exchange.verdict("ok"))
    assert.equal("failure", exchange.verdict("failure"))
    local v, s = exchange.verdict({ ban = 30 })
    assert.equal("ban", v)
    assert.equal(30, s)
    local refused = 'on_response must return nil, "ok", "failure" or { ban = seconds, used = N }, got '
    assert.error_matches(function() exchange.verdict("banned") end, refused .. '"banned"', 1, true)
    assert.error_matches(function() exchange.verdict({ ban = -1 }) end, refused .. "a table", 1,
      true)
    assert.error_matches(function() exchange.verdict(42) end, refused .. "a number", 1, true)
  end)

  it("reads response headers case-insensitively", function()
    local h = exchange.header_reader("HTTP/1.1 429 Too Many\r\nRetry-After: 7 \r\nX-A: b\r\n\r\n")
    assert.equal("7", h("retry-after"))
    assert.equal("b", h("X-A"))
    assert.is_nil(h("missing"))
    assert.is_nil(exchange.header_reader(nil)("x"))
  end)
end)

describe("pool eligibility with exchange state", function()
  local ffi = require("ffi")
  require("ferry.cdef")
  local poolmod = require("ferry.pool")
  local now = 1000

  local function pool_with_pairs()
    local pairs_by = {}
    local proxies = {}
    for i = 1, 2 do
      local c = ffi.new("struct ferry_proxy")
      c.id = i
      proxies[i] = { id = i, c = c }
    end
    local pool = poolmod.new("spec", proxies, { now = function() return now end })
    pool.pair_of = function(id, ex)
      local k = id .. ":" .. ex
      pairs_by[k] = pairs_by[k] or ffi.new("struct ferry_pxstate")
      return pairs_by[k]
    end
    pool.half_open = function(x, n) x.breaker, x.trials_max, x.trials = 2, n, 0 end
    return pool, proxies
  end

  it("a ban on one exchange leaves the proxy eligible for another", function()
    local pool, ps = pool_with_pairs()
    pool:pair(ps[1], 1).banned_until = now + 60
    assert.is_false(pool:eligible(ps[1], { exid = 1 }))
    assert.is_true(pool:eligible(ps[1], { exid = 2 }))
    assert.is_true(pool:eligible(ps[1], { exid = 0 }))
    now = now + 61
    assert.is_true(pool:eligible(ps[1], { exid = 1 }))
  end)

  it("an open breaker excludes until its cooldown, then turns half-open", function()
    local pool, ps = pool_with_pairs()
    local x = pool:pair(ps[2], 0)
    x.breaker, x.breaker_until = 1, now + 30
    assert.is_false(pool:eligible(ps[2], { exid = 0 }))
    now = now + 31
    assert.is_true(pool:eligible(ps[2], { exid = 0 }))
    assert.equal(2, x.breaker)
    x.trials, x.trial_at = 1, now
    assert.is_false(pool:eligible(ps[2], { exid = 0 }))
  end)

  it("relaxed (panic, all_down = any) ignores down, bans and breakers but not disabled", function()
    local pool, ps = pool_with_pairs()
    ps[1].c.flags = 1
    pool:pair(ps[2], 0).banned_until = now + 60
    pool.relaxed = true
    assert.is_true(pool:eligible(ps[1], { exid = 0 }))
    assert.is_true(pool:eligible(ps[2], { exid = 0 }))
    ps[1].c.flags = 2
    assert.is_false(pool:eligible(ps[1], { exid = 0 }))
  end)

  it("a down proxy without probes is eligible for a trial after retry_at", function()
    local pool, ps = pool_with_pairs()
    ps[1].c.flags = 1
    ps[1].c.retry_at = now + 5
    assert.is_false(pool:eligible(ps[1], {}))
    now = now + 6
    assert.is_true(pool:eligible(ps[1], {}))
    ps[1].c.retry_at = 0 -- probes decide
    assert.is_false(pool:eligible(ps[1], {}))
  end)
end)
