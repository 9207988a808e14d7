-- Exchanges, bans, breakers and all-down policies against the real
-- binary, microsocks upstreams and the spec origin.  Two exchanges share
-- one origin by name: "127.0.0.1" is exchange A, "localhost" exchange B.
local procs = require("procs")
local cjson = require("cjson")
local socket = require("socket")

local function via(port) return "http://127.0.0.1:" .. port end

-- Log lines of `code`, in order.
local function lines_with(proc, code)
  local out = {}
  for _, l in ipairs(procs.log_lines(proc)) do
    if l.code == code then out[#out + 1] = l end
  end
  return out
end

-- Access lines written since `from` (an index into the log lines).  With
-- n, polls (up to 5 s) until at least n of them arrived: ferry flushes
-- its log after the loop turn that answered, so a line may land just
-- after the client saw its response.
local function access_since(proc, from, n)
  local deadline = socket.gettime() + 5
  while true do
    local out = {}
    local lines = procs.log_lines(proc)
    for i = from + 1, #lines do
      if lines[i].code == "FERRY-0200" then out[#out + 1] = lines[i] end
    end
    if #out >= (n or 0) or socket.gettime() > deadline then return out, #lines end
    procs.sleep(0.02)
  end
end

-- How many lines of `code` the log holds once it holds at least n
-- (polled up to 5 s); without n, how many it holds now.
local function count_code(proc, code, n)
  local deadline = socket.gettime() + 5
  while true do
    local got = #lines_with(proc, code)
    if got >= (n or 0) or socket.gettime() > deadline then return got end
    procs.sleep(0.02)
  end
end

local function first_with(proc, code)
  return lines_with(proc, code)[1]
end

local function last_with(proc, code)
  local all = lines_with(proc, code)
  return all[#all]
end

-- A Lua pattern matching s literally.
local function lit(s)
  return (s:gsub("%p", "%%%0"))
end

describe("exchanges", function()
  local origin, s1, s2, ferry, script
  local O, S1, S2 = procs.free_port(), procs.free_port(), procs.free_port()
  local F = procs.free_port()
  local P1, P2 = "socks5://127.0.0.1:" .. S1, "socks5://127.0.0.1:" .. S2

  setup(function()
    origin = procs.origin(O)
    s1 = procs.microsocks(S1)
    s2 = procs.microsocks(S2)
    script = procs.write_file(procs.tmp .. "/exb-" .. F .. ".lua", [[
return {
  on_request = function(req)
    if req.path == "/deny" then return false end
    if req.path == "/raise" then error("on_request exploded") end
    return { headers = { add = { ["X-Added"] = "by-script" }, drop = { "x-debug" } } }
  end,
  on_response = function(res, proxy)
    if res.status == 418 then
      return { ban = tonumber(res.header("retry-after")) or 30 }
    end
    if res.body and res.body:find("garbage verdict", 1, true) then return "banned!" end
    return nil
  end,
}
]])
    ferry = procs.ferry(string.format([[
listen { name = "main", addr = "127.0.0.1:%d" }
pool "shared" { strategy = "round_robin", retries = 1, breaker = false,
  proxies = { { url = "%s", id = "s1" }, { url = "%s", id = "s2" } } }
exchange "A" { hosts = { "127.0.0.1" }, pool = "shared",
               ban = { status = { 429 }, body = { "IP banned" }, backoff = 30 } }
exchange "B" { hosts = { "localhost" }, pool = "shared", script = "%s" }
]], F, P1, P2, script), { F })
  end)

  teardown(function()
    procs.stop_ferry(ferry)
    for _, p in ipairs { origin, s1, s2 } do procs.stop(p) end
  end)

  it("a ban on one exchange excludes that proxy there and nowhere else", function()
    local _, mark = access_since(ferry, 0)
    local status = procs.curl { proxy = via(F), url = "http://127.0.0.1:" .. O .. "/status/429" }
    assert.equal(429, status) -- the client still gets the exchange's answer
    local lines = access_since(ferry, mark, 1)
    assert.equal(1, #lines)
    local banned = lines[1].proxy
    assert.is_truthy(banned == P1 or banned == P2, tostring(banned))
    assert.equal(1, count_code(ferry, "FERRY-6006", 1))
    local ban = first_with(ferry, "FERRY-6006")
    assert.equal(banned, ban.proxy)
    assert.equal("A", ban.exchange)
    assert.matches("exchange A", ban.msg)

    local _, m2 = access_since(ferry, 0)
    for _ = 1, 6 do
      assert.equal(200, (procs.curl { proxy = via(F), url = "http://127.0.0.1:" .. O .. "/" }))
    end
    local on_a = access_since(ferry, m2, 6)
    assert.equal(6, #on_a)
    for _, l in ipairs(on_a) do
      assert.are_not.equal(banned, l.proxy)
      assert.is_truthy(l.proxy == P1 or l.proxy == P2, tostring(l.proxy))
    end
    -- Exchange B still uses both proxies.
    local _, m3 = access_since(ferry, 0)
    for _ = 1, 6 do
      assert.equal(200, (procs.curl { proxy = via(F), url = "http://localhost:" .. O .. "/" }))
    end
    local on_b = access_since(ferry, m3, 6)
    assert.equal(6, #on_b)
    local seen = {}
    for _, l in ipairs(on_b) do seen[l.proxy] = true end
    assert.is_true(seen[P1] and seen[P2])
  end)

  it("bans on a body marker of the declarative rule", function()
    local before = count_code(ferry, "FERRY-6006")
    local status, body = procs.curl { proxy = via(F),
      url = "http://127.0.0.1:" .. O .. "/say/200/IP%20banned%20for%20abuse" }
    assert.equal(200, status)
    assert.equal("IP banned for abuse", body)
    assert.equal(before + 1, count_code(ferry, "FERRY-6006", before + 1))
    local ban = last_with(ferry, "FERRY-6006")
    assert.equal("A", ban.exchange)
    assert.matches(lit('body marker "IP banned"'), ban.msg)
  end)

  it("with both proxies banned on A, A still answers through one (all_down = any), B too",
    function()
    -- Both proxies are banned on A now, each once: the status rule's
    -- ban took one out of A's rotation, so the body marker hit the other.
    local bans = lines_with(ferry, "FERRY-6006")
    assert.equal(2, #bans)
    for _, l in ipairs(bans) do
      assert.equal("A", l.exchange)
      assert.matches("exchange A", l.msg)
      assert.is_truthy(l.proxy == P1 or l.proxy == P2, tostring(l.proxy))
    end
    assert.are_not.equal(bans[1].proxy, bans[2].proxy)

    -- all_down defaults to "any": a banned proxy is used rather than
    -- nothing, so the exchange still answers, and the pool says so once.
    local before = count_code(ferry, "FERRY-6007")
    local _, mark = access_since(ferry, 0)
    local status = procs.curl { proxy = via(F), url = "http://127.0.0.1:" .. O .. "/" }
    assert.equal(200, status)
    assert.equal(before + 1, count_code(ferry, "FERRY-6007", before + 1))
    local warn = last_with(ferry, "FERRY-6007")
    assert.matches(lit('pool "shared"'), warn.msg)
    assert.matches(lit("all_down = any"), warn.msg)
    local on_a = access_since(ferry, mark, 1)
    assert.equal(1, #on_a)
    assert.is_truthy(on_a[1].proxy == P1 or on_a[1].proxy == P2, tostring(on_a[1].proxy))

    -- B bans nothing: its request goes through a proxy as usual.
    local _, m2 = access_since(ferry, 0)
    assert.equal(200, (procs.curl { proxy = via(F), url = "http://localhost:" .. O .. "/" }))
    local on_b = access_since(ferry, m2, 1)
    assert.equal(1, #on_b)
    assert.is_truthy(on_b[1].proxy == P1 or on_b[1].proxy == P2, tostring(on_b[1].proxy))
    assert.equal(2, count_code(ferry, "FERRY-6006")) -- no ban on either side
  end)

  it("on_request adds and drops headers sent upstream", function()
    local status, body = procs.curl { proxy = via(F), url = "http://localhost:" .. O .. "/headers",
      flags = "-H 'X-Debug: secret' -H 'X-Keep: yes'" }
    assert.equal(200, status)
    assert.matches("X%-Added: by%-script", body)
    assert.matches("X%-Keep: yes", body)
    assert.is_nil(body:lower():find("x-debug", 1, true))
  end)

  it("on_request can deny a request", function()
    local status, body = procs.curl { proxy = via(F), url = "http://localhost:" .. O .. "/deny" }
    assert.equal(403, status)
    assert.equal("FERRY-2001", cjson.decode(body).error)
  end)

  it("a raising on_request is logged with its code and the request still goes through", function()
    local status = procs.curl { proxy = via(F), url = "http://localhost:" .. O .. "/raise" }
    assert.equal(404, status) -- the origin's answer: served despite the hook
    assert.equal(1, count_code(ferry, "FERRY-4008", 1))
    local l = first_with(ferry, "FERRY-4008")
    assert.is_table(l)
    assert.matches("on_request exploded", l.msg)
  end)

  it("on_response bans with the exchange's Retry-After, for that exchange only", function()
    local before = count_code(ferry, "FERRY-6006")
    assert.equal(418, (procs.curl { proxy = via(F), url = "http://localhost:" .. O .. "/status/418" }))
    assert.equal(before + 1, count_code(ferry, "FERRY-6006", before + 1))
    local last = last_with(ferry, "FERRY-6006")
    assert.equal("B", last.exchange)
    assert.matches("exchange B", last.msg)
    assert.matches("for 30 s", last.msg)
  end)

  it("a garbage on_response verdict is logged and ignored", function()
    local status = procs.curl { proxy = via(F),
      url = "http://localhost:" .. O .. "/say/200/garbage%20verdict" }
    assert.equal(200, status)
    assert.equal(1, count_code(ferry, "FERRY-4010", 1))
    local l = first_with(ferry, "FERRY-4010")
    assert.is_table(l)
    assert.matches("banned!", l.msg)
  end)
end)

describe("breakers", function()
  local origin, s1, ferry
  local O, S1, F = procs.free_port(), procs.free_port(), procs.free_port()

  setup(function()
    origin = procs.origin(O)
    s1 = procs.microsocks(S1)
    ferry = procs.ferry(string.format([[
listen { name = "main", addr = "127.0.0.1:%d" }
pool "one" { retries = 0, all_down = "fail",
  breaker = { policy = "consecutive", failures = 2, cooldown = 1 },
  proxies = { { url = "socks5://127.0.0.1:%d", id = "only" } } }
route(function() return "one" end)
]], F, S1), { F })
  end)

  teardown(function()
    procs.stop_ferry(ferry)
    procs.stop(origin)
    procs.stop(s1)
  end)

  it("goes closed -> open -> half-open -> closed", function()
    local url = "http://127.0.0.1:" .. O
    assert.equal(500, (procs.curl { proxy = via(F), url = url .. "/status/500" }))
    assert.equal(200, (procs.curl { proxy = via(F), url = url .. "/" })) -- one failure: closed
    assert.equal(500, (procs.curl { proxy = via(F), url = url .. "/status/500" }))
    assert.equal(500, (procs.curl { proxy = via(F), url = url .. "/status/500" }))
    assert.equal(1, count_code(ferry, "FERRY-6003", 1))
    -- Open: the only proxy is never selected; all_down = "fail" answers 503.
    local status, body = procs.curl { proxy = via(F), url = url .. "/" }
    assert.equal(503, status)
    assert.equal("FERRY-2005", cjson.decode(body).error)
    procs.sleep(1.1)
    -- Cooldown over: one trial goes through and, succeeding, closes it.
    assert.equal(200, (procs.curl { proxy = via(F), url = url .. "/" }))
    assert.equal(1, count_code(ferry, "FERRY-6004", 1))
    assert.equal(1, count_code(ferry, "FERRY-6005", 1))
    -- No duration where there is none (it used to read "half-open0.0").
    assert.matches(": breaker half%-open$", last_with(ferry, "FERRY-6004").msg)
    assert.matches(": breaker closed$", last_with(ferry, "FERRY-6005").msg)
    assert.matches(": breaker open for 1%.0 s$", last_with(ferry, "FERRY-6003").msg)
    assert.equal(200, (procs.curl { proxy = via(F), url = url .. "/" }))
  end)

  it("a failed trial reopens it with a doubled cooldown", function()
    local url = "http://127.0.0.1:" .. O
    assert.equal(500, (procs.curl { proxy = via(F), url = url .. "/status/500" }))
    assert.equal(500, (procs.curl { proxy = via(F), url = url .. "/status/500" }))
    procs.sleep(1.1)
    assert.equal(500, (procs.curl { proxy = via(F), url = url .. "/status/500" })) -- the trial
    assert.equal(3, count_code(ferry, "FERRY-6003", 3))
    assert.matches("for 2%.0 s", last_with(ferry, "FERRY-6003").msg)
    procs.sleep(1.1)
    assert.equal(503, (procs.curl { proxy = via(F), url = url .. "/" })) -- still open
    procs.sleep(1.0)
    assert.equal(200, (procs.curl { proxy = via(F), url = url .. "/" }))
  end)
end)

describe("all-down policies", function()
  local origin, s1, ferry
  local O, S1, DEAD, DEAD2, DEAD3 = procs.free_port(), procs.free_port(), procs.free_port(),
    procs.free_port(), procs.free_port()
  -- One dead port per pool: a proxy is the same proxy (same health) in
  -- every pool that names its URL.
  local DEAD_D, DEAD_F, DEAD_A = procs.free_port(), procs.free_port(), procs.free_port()
  local F_DIRECT, F_FAIL, F_ANY, F_PANIC = procs.free_port(), procs.free_port(),
    procs.free_port(), procs.free_port()

  setup(function()
    origin = procs.origin(O)
    s1 = procs.microsocks(S1)
    ferry = procs.ferry(string.format([[
listen { name = "to_direct", addr = "127.0.0.1:%d" }
listen { name = "to_fail", addr = "127.0.0.1:%d" }
listen { name = "to_any", addr = "127.0.0.1:%d" }
listen { name = "panic", addr = "127.0.0.1:%d" }
pool "to_direct" { all_down = "direct", retries = 1, proxies = { "socks5://127.0.0.1:%d" } }
pool "to_fail" { all_down = "fail", retries = 1, proxies = { "socks5://127.0.0.1:%d" } }
pool "to_any" { all_down = "any", retries = 0, proxies = { "socks5://127.0.0.1:%d" } }
pool "panic" { strategy = "round_robin", panic = 50, retries = 0, proxies = {
  "socks5://127.0.0.1:%d", "socks5://127.0.0.1:%d", "socks5://127.0.0.1:%d",
  "socks5://127.0.0.1:%d" } }
route(function(req) return req.listener end)
]], F_DIRECT, F_FAIL, F_ANY, F_PANIC, DEAD_D, DEAD_F, DEAD_A, S1, DEAD, DEAD2, DEAD3),
      { F_DIRECT, F_FAIL, F_ANY, F_PANIC })
  end)

  teardown(function()
    procs.stop_ferry(ferry)
    procs.stop(origin)
    procs.stop(s1)
  end)

  local url = function() return "http://127.0.0.1:" .. O .. "/" end

  it("direct: goes without a proxy when the pool has none left", function()
    for _ = 1, 3 do
      assert.equal(200, (procs.curl { proxy = via(F_DIRECT), url = url() }))
    end
    assert.matches("all_down = direct", first_with(ferry, "FERRY-6007").msg)
  end)

  it("fail: answers 503 FERRY-2005 once the only proxy is known down", function()
    assert.equal(502, (procs.curl { proxy = via(F_FAIL), url = url() })) -- learns it is dead
    local status, body, headers = procs.curl { proxy = via(F_FAIL), url = url() }
    assert.equal(503, status)
    assert.equal("FERRY-2005", cjson.decode(body).error)
    assert.matches("X%-Ferry%-Error: FERRY%-2005", headers)
  end)

  it("any: still tries a down proxy rather than nothing, and says so", function()
    assert.equal(502, (procs.curl { proxy = via(F_ANY), url = url() }))
    assert.equal(502, (procs.curl { proxy = via(F_ANY), url = url() }))
    local found = false
    for _, l in ipairs(procs.log_lines(ferry)) do
      if l.code == "FERRY-6007" and l.msg:find('pool "to_any"', 1, true) then found = true end
    end
    assert.is_true(found)
  end)

  it("panic: below the threshold, health is ignored and logged", function()
    -- Learn that three of four are dead (each refused connect marks one).
    for _ = 1, 8 do procs.curl { proxy = via(F_PANIC), url = url() } end
    local ok = 0
    for _ = 1, 8 do
      if procs.curl { proxy = via(F_PANIC), url = url() } == 200 then ok = ok + 1 end
    end
    -- Round robin over all four again: about a quarter succeed, not all.
    assert.is_true(ok >= 1 and ok <= 4, "ok = " .. ok)
    assert.is_table(first_with(ferry, "FERRY-6008"))
  end)
end)
