-- Rate budgets per (proxy, exchange) against the real binary.  The
-- upstream "proxies" are the logging origin itself (rate_origin.py serves
-- absolute-form requests): two proxy entries with their own ids and an
-- X-Src header each, so the origin logs which proxy every request came
-- through and when it arrived.  Destination host names never resolve:
-- ferry hands them to the upstream proxy, and each names one exchange.
local procs = require("procs")
local cjson = require("cjson")
local socket = require("socket")

local N = 5 -- tokens per second per proxy of exchange "paced"

describe("rate budgets", function()
  local origin, ferry, script
  local O, F, A = procs.free_port(), procs.free_port(), procs.free_port()
  local S = procs.free_port()

  local function config(paced_limit, paced_per)
    return string.format([[
listen { name = "main", addr = "127.0.0.1:%d" }
listen { name = "s5", addr = "127.0.0.1:%d", protocol = "socks5" }
admin { addr = "127.0.0.1:%d" }
pool "two" { strategy = "round_robin", retries = 0, breaker = false,
  proxies = { { url = "http://127.0.0.1:%d", id = "a", headers = { ["X-Src"] = "a" } },
              { url = "http://127.0.0.1:%d", id = "b", headers = { ["X-Src"] = "b" } } } }
pool "one" { strategy = "round_robin", retries = 0, breaker = false,
  proxies = { { url = "http://127.0.0.1:%d", id = "c", headers = { ["X-Src"] = "c" } } } }
exchange "paced" { hosts = { "paced.test" }, pool = "two",
  rate = { limit = %s, per = %s, queue = 256, queue_timeout = 20 } }
exchange "free" { hosts = { "free.test" }, pool = "two" }
exchange "strict" { hosts = { "strict.test" }, pool = "two",
  rate = { limit = 2, per = 100, queue = 0 } }
exchange "slow" { hosts = { "slow.test" }, pool = "one",
  rate = { limit = 1, per = 100, queue = 4, queue_timeout = 0.5 } }
exchange "weighed" { hosts = { "weighed.test" }, pool = "one", script = "%s",
  rate = { limit = 20, per = 2000, queue = 0 } }
exchange "learner" { hosts = { "learner.test" }, pool = "one", script = "%s",
  rate = { limit = 10, per = 1000, queue = 0 } }
]], F, S, A, O, O, O, paced_limit, paced_per, script, script)
  end

  setup(function()
    origin = procs.spawn("rate-origin", "python3 " .. procs.root ..
      "/spec/helpers/rate_origin.py " .. O)
    assert(procs.wait_port(O), "rate origin did not start")
    script = procs.write_file(procs.tmp .. "/rate-" .. F .. ".lua", [[
return {
  weight = function(req)
    if req.path:find("heavy", 1, true) then return 5 end
    if req.path:find("boom", 1, true) then error("weight exploded") end
    if req.path:find("nan", 1, true) then return 0 / 0 end
    return 1
  end,
  on_response = function(res)
    local used = tonumber(res.header("x-used-weight"))
    if used then return { used = used } end
    return nil
  end,
}
]])
    ferry = procs.ferry(config(N, 1), { F, S, A })
  end)

  teardown(function()
    procs.stop_ferry(ferry)
    procs.stop(origin)
  end)

  local function via() return "http://127.0.0.1:" .. F end

  -- n requests at once (one curl each, in the background); the status
  -- codes, in no particular order.
  local function burst(n, url)
    local cmd = {}
    for i = 1, n do
      cmd[#cmd + 1] = string.format("curl -s -o /dev/null --max-time 30 -w '%%{http_code}\\n' " ..
        "-x %s '%s?i=%d' &", via(), url, i)
    end
    local p = io.popen("{ " .. table.concat(cmd, " ") .. " wait; }")
    local out = p:read("*a")
    p:close()
    local codes = {}
    for c in out:gmatch("%d+") do codes[#codes + 1] = tonumber(c) end
    return codes
  end

  local function origin_log()
    local status, body = procs.curl { url = "http://127.0.0.1:" .. O .. "/log" }
    assert.equal(200, status)
    return cjson.decode(body)
  end

  local function api_rate(name)
    local status, body = procs.curl { url = "http://127.0.0.1:" .. A ..
      "/api/v1/rate?exchange=" .. name }
    assert.equal(200, status, body)
    local t = cjson.decode(body)
    local by = {}
    for _, pr in ipairs(t.pairs or {}) do by[pr.proxy] = pr end
    return t, by
  end

  local function log_count(code)
    local n = 0
    for _, l in ipairs(procs.log_lines(ferry)) do
      if l.code == code then n = n + 1 end
    end
    return n
  end

  it("never lets a proxy exceed its budget at the origin; the excess waits and completes", function()
    -- Warm-up through an exchange without a budget: each proxy keeps
    -- connections to the origin, so the paced burst below does not wait
    -- for a loaded host to accept new ones (which would delay its first
    -- arrivals and squeeze the timeline the origin logs).
    for _, c in ipairs(burst(3 * N, "http://free.test/ok")) do assert.equal(200, c) end
    procs.curl { url = "http://127.0.0.1:" .. O .. "/reset" }
    local waited0 = procs.metric(A, "ferry_rate_waited_total", 'exchange="paced"') or 0
    local codes = burst(5 * N, "http://paced.test/ok")
    assert.equal(5 * N, #codes)
    for _, c in ipairs(codes) do assert.equal(200, c) end
    local log = origin_log()
    assert.equal(5 * N, #log)
    local by = { a = {}, b = {} }
    for _, e in ipairs(log) do
      assert.is_truthy(by[e[1]], "unknown source " .. tostring(e[1]))
      table.insert(by[e[1]], e[2])
    end
    -- A bucket of N refilled at N/s admits at most N + N*T in any window
    -- of T seconds: with T = 1, N + burst (burst = the capacity, N).
    -- Arrival times at the origin lag the dispatch by a varying amount
    -- (a loaded host schedules the origin's threads late), which can
    -- squeeze requests closer: the windows are 0.8 s, whose bound (9)
    -- leaves one request of room for that.
    for src, ts in pairs(by) do
      table.sort(ts)
      assert.is_true(#ts > 0, "proxy " .. src .. " carried nothing")
      for i = 1, #ts do
        local n = 0
        for j = i, #ts do
          if ts[j] - ts[i] < 0.8 then n = n + 1 end
        end
        assert.is_true(n <= 2 * N, string.format("proxy %s: %d requests within 0.8 s from %.3f",
          src, n, ts[i]))
      end
      -- Over its whole run, no more than the bucket plus its refill.
      assert.is_true(#ts <= N + N * (ts[#ts] - ts[1]) + 1, string.format(
        "proxy %s: %d requests in %.3f s", src, #ts, ts[#ts] - ts[1]))
    end
    local all = {}
    for _, e in ipairs(log) do all[#all + 1] = e[2] end
    table.sort(all)
    -- 25 requests, 10 tokens at once, 10 more per second: >= 1.4 s.
    assert.is_true(all[#all] - all[1] >= 1.3, "the burst was not paced: " ..
      string.format("%.3f s", all[#all] - all[1]))
    local waited = procs.metric(A, "ferry_rate_waited_total", 'exchange="paced"')
    assert.is_true(waited - waited0 >= 5, "waited " .. tostring(waited))
    assert.equal(0, procs.metric(A, "ferry_rate_waiting", 'exchange="paced"'))
  end)

  it("with queue = 0 answers the excess 429 with Retry-After and its code", function()
    local codes = burst(6, "http://strict.test/ok")
    local ok, limited = 0, 0
    for _, c in ipairs(codes) do
      if c == 200 then ok = ok + 1 elseif c == 429 then limited = limited + 1 end
    end
    -- Two proxies with two tokens each, refilled at one per 50 s.
    assert.equal(4, ok)
    assert.equal(2, limited)
    local status, body, headers = procs.curl { proxy = via(), url = "http://strict.test/ok" }
    assert.equal(429, status)
    assert.equal("FERRY-2010", headers:match("X%-Ferry%-Error: (%S+)"))
    local ra = tonumber(headers:match("Retry%-After: (%d+)"))
    assert.is_truthy(ra, headers)
    assert.is_true(ra >= 1 and ra <= 50, "Retry-After " .. tostring(ra))
    assert.equal("FERRY-2010", cjson.decode(body).error)
    assert.is_true(procs.metric(A, "ferry_rate_rejected_total", 'exchange="strict"') >= 3)
    -- A CONNECT tunnel is refused the same way, as the CONNECT answer.
    local c = assert(socket.connect("127.0.0.1", F))
    c:settimeout(5)
    c:send("CONNECT strict.test:443 HTTP/1.1\r\nHost: strict.test:443\r\n\r\n")
    local line = c:receive("*l")
    c:close()
    assert.matches("^HTTP/1.1 429 ", line)
    -- SOCKS5: REP 2 (not allowed by ruleset).
    c = assert(socket.connect("127.0.0.1", S))
    c:settimeout(5)
    c:send("\5\1\0")
    assert.equal("\5\0", c:receive(2))
    local host = "strict.test"
    c:send("\5\1\0\3" .. string.char(#host) .. host .. "\1\187")
    local reply = c:receive(2)
    c:close()
    assert.equal(5, reply:byte(1))
    assert.equal(2, reply:byte(2))
  end)

  it("a request that waits queue_timeout in vain gets 429 FERRY-2011", function()
    assert.equal(200, (procs.curl { proxy = via(), url = "http://slow.test/ok" }))
    local t0 = socket.gettime()
    local status, _, headers = procs.curl { proxy = via(), url = "http://slow.test/ok" }
    assert.equal(429, status)
    assert.equal("FERRY-2011", headers:match("X%-Ferry%-Error: (%S+)"))
    local ra = tonumber(headers:match("Retry%-After: (%d+)"))
    assert.is_true(ra >= 98 and ra <= 100, tostring(ra))
    -- It waited (not refused at once): the queue's bound, at least.
    assert.is_true(socket.gettime() - t0 >= 0.45)
    assert.equal(1, procs.metric(A, "ferry_rate_waited_total", 'exchange="slow"'))
    assert.equal(1, procs.metric(A, "ferry_rate_rejected_total", 'exchange="slow"'))
    assert.equal(0, procs.metric(A, "ferry_rate_waiting", 'exchange="slow"'))
  end)

  it("a weight hook of 5 spends 5 tokens; one that fails counts 1 and is logged", function()
    local _, by = api_rate("weighed")
    local before = by.c.tokens
    assert.is_true(before > 19, tostring(before))
    assert.equal(200, (procs.curl { proxy = via(), url = "http://weighed.test/heavy" }))
    _, by = api_rate("weighed")
    assert.is_true(math.abs(before - 5 - by.c.tokens) < 0.2,
      string.format("%.2f -> %.2f", before, by.c.tokens))
    before = by.c.tokens
    local errs0 = procs.metric(A, "ferry_hook_errors_total", 'kind="exchange"') or 0
    assert.equal(200, (procs.curl { proxy = via(), url = "http://weighed.test/boom" }))
    _, by = api_rate("weighed")
    assert.is_true(math.abs(before - 1 - by.c.tokens) < 0.2,
      string.format("%.2f -> %.2f", before, by.c.tokens))
    assert.is_true(procs.wait_for(function() return log_count("FERRY-4020") >= 1 end, 5))
    assert.is_true(procs.metric(A, "ferry_hook_errors_total", 'kind="exchange"') > errs0)
  end)

  it("learns from the exchange: Retry-After, X-RateLimit-*, on_response used", function()
    -- on_response { used = 8 } of a limit of 10: at most 2 tokens left.
    assert.equal(200, (procs.curl { proxy = via(), url = "http://learner.test/used?w=8" }))
    local _, by = api_rate("learner")
    assert.is_true(by.c.tokens <= 2.1, tostring(by.c.tokens))
    -- X-RateLimit-Remaining: 0 with a reset in 40 s: empty until then.
    assert.equal(200, (procs.curl { proxy = via(),
      url = "http://learner.test/limit?left=0&reset=40" }))
    _, by = api_rate("learner")
    assert.is_true(by.c.tokens <= 0.01, tostring(by.c.tokens))
    assert.is_true(by.c.empty_s > 35 and by.c.empty_s <= 40, tostring(by.c.empty_s))
    -- Retry-After on a 429 empties it for 120 s: the client hears the
    -- exchange's 429; the next request gets ferry's own, with Retry-After.
    local status = procs.curl { proxy = via(), url = "http://weighed.test/retry?s=120" }
    assert.equal(429, status)
    _, by = api_rate("weighed")
    assert.is_true(by.c.tokens <= 0.01, tostring(by.c.tokens))
    assert.is_true(by.c.empty_s > 115 and by.c.empty_s <= 120, tostring(by.c.empty_s))
    local st2, _, headers = procs.curl { proxy = via(), url = "http://weighed.test/ok" }
    assert.equal(429, st2)
    assert.equal("FERRY-2010", headers:match("X%-Ferry%-Error: (%S+)"))
    -- Empty for 120 s, then one token at 20 per 2000 s: 100 s more.
    local ra = tonumber(headers:match("Retry%-After: (%d+)"))
    assert.is_true(ra >= 215 and ra <= 221, tostring(ra))
    assert.is_true(procs.metric(A, "ferry_rate_learned_total", 'exchange="weighed"') >= 1)
  end)

  it("keeps the buckets' tokens over a SIGHUP that changes the limit", function()
    -- Spend most of strict's budget is done above: both pairs near 0.
    local _, by = api_rate("strict")
    assert.is_true(by.a.tokens < 1 and by.b.tokens < 1)
    local reloads = log_count("FERRY-0101")
    procs.write_file(ferry.config, config(N * 2, 1))
    procs.signal(ferry, "HUP")
    assert.is_true(procs.wait_for(function() return log_count("FERRY-0101") > reloads end, 10))
    local t2
    t2, by = api_rate("strict")
    assert.equal(2, t2.limit)
    assert.is_true(by.a.tokens < 1 and by.b.tokens < 1, "tokens were reset by the reload")
    local tp = api_rate("paced")
    assert.equal(N * 2, tp.limit)
    assert.equal(N * 2, tp.capacity)
    -- The console shows the same pairs.
    local status, text = procs.curl { url = "http://127.0.0.1:" .. A .. "/api/v1/console",
      flags = "-X POST --data-binary 'rate(\"strict\")'" }
    assert.equal(200, status, text)
    assert.matches('exchange "strict"', text)
    assert.matches("TOKENS", text)
  end)
end)
