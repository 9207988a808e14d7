-- Active health probes (core/probe.c): tcp, http and connect checks
-- through real upstream proxies take dead proxies out of rotation without
-- any traffic, bring them back after `rise` passes, time out on targets
-- that hang, back off while a proxy stays dead, respect the concurrency
-- bound, use the proxy's credentials, and survive reloads without
-- duplicate timers.
local procs = require("procs")
local socket = require("socket")
local http = require("socket.http")
local ltn12 = require("ltn12")

local function via(port) return "http://127.0.0.1:" .. port end

-- A TCP server for probes to hit, in its own LuaJIT process:
--   hang:  accept and never answer (keeps the connection until the peer closes)
--   close: accept and close at once
-- It keeps "accepts open max_open" in OUT, then on a second line the time
-- of every accept, rewritten after every event.
local STUB = [[
local socket = require("socket")
local port, mode, out = tonumber(arg[1]), arg[2], arg[3]
local server = assert(socket.bind("127.0.0.1", port))
server:settimeout(0)
local open, nopen, accepts, max_open, times = {}, 0, 0, 0, {}
local function report()
  local f = assert(io.open(out .. ".tmp", "w"))
  f:write(string.format("%d %d %d\n%s\n", accepts, nopen, max_open, table.concat(times, " ")))
  f:close()
  os.rename(out .. ".tmp", out)
end
report()
while true do
  local list = { server }
  for c in pairs(open) do list[#list + 1] = c end
  local readable = socket.select(list, nil, 0.5)
  -- Closes before accepts: a probe that ends and the next that starts
  -- must not look like two at once.
  for _, s in ipairs(readable) do
    if s ~= server then
      local _, err = s:receive(4096)
      if err == "closed" then
        open[s] = nil
        nopen = nopen - 1
        s:close()
      end
    end
  end
  while true do
    local c = server:accept()
    if not c then break end
    accepts = accepts + 1
    times[accepts] = string.format("%.4f", socket.gettime())
    if mode == "close" then
      c:close()
    else
      c:settimeout(0)
      open[c] = true
      nopen = nopen + 1
      if nopen > max_open then max_open = nopen end
    end
  end
  report()
end
]]

local stub_path = procs.write_file(string.format("%s/probe-stub-%d.lua", procs.tmp,
  math.random(1, 1e9)), STUB)

local function stub(port, mode)
  local out = string.format("%s/probe-stub-%d-%s.out", procs.tmp, port, mode)
  os.remove(out)
  local proc = procs.spawn("probe-stub", "luajit " .. stub_path .. " " .. port .. " " .. mode ..
    " " .. out)
  assert(procs.wait_port(port), "stub did not start:\n" .. procs.read_file(proc.log))
  -- wait_port's own connection counts as an accept: start from a known value.
  proc.out = out
  return proc
end

-- accepts, open now, most open at once, and the time of each accept.
local function stub_stats(proc)
  local text = procs.read_file(proc.out)
  local a, o, m = text:match("^(%d+) (%d+) (%d+)")
  local times = {}
  for t in (text:match("\n([^\n]*)") or ""):gmatch("%S+") do times[#times + 1] = tonumber(t) end
  return tonumber(a) or 0, tonumber(o) or 0, tonumber(m) or 0, times
end

-- Wait (up to `timeout` s) until the stub has accepted at least n; returns
-- what stub_stats returns then.
local function wait_accepts(proc, n, timeout)
  local deadline = socket.gettime() + timeout
  while (stub_stats(proc)) < n and socket.gettime() < deadline do
    socket.sleep(0.02)
  end
  return stub_stats(proc)
end

-- tinyproxy with Basic credentials (BasicAuth), for http probes with auth.
local function tinyproxy_auth(port, user, pass)
  local conf = procs.write_file(string.format("%s/tinyproxy-auth-%d.conf", procs.tmp, port),
    table.concat({ "Port " .. port, "Listen 127.0.0.1", "Timeout 30", "MaxClients 50",
      "Allow 127.0.0.1", "DisableViaHeader Yes", "LogLevel Error",
      "BasicAuth " .. user .. " " .. pass }, "\n") .. "\n")
  local proc = procs.spawn("tinyproxy", "tinyproxy -d -c " .. conf)
  assert(procs.wait_port(port), "tinyproxy did not start")
  return proc
end

-- Log lines of `code` about the proxy labelled `label`.
local function events(proc, code, label)
  local out = {}
  local needle = "proxy " .. label .. " "
  for _, l in ipairs(procs.log_lines(proc)) do
    if l.code == code and type(l.msg) == "string" and l.msg:find(needle, 1, true) then
      out[#out + 1] = l
    end
  end
  return out
end

-- Wait for the n-th (default: first) such line; returns it and the wait, or nil.
local function wait_event(proc, code, label, timeout, n)
  n = n or 1
  local t0 = socket.gettime()
  local deadline = t0 + timeout
  repeat
    local ev = events(proc, code, label)
    if #ev >= n then return ev[n], socket.gettime() - t0 end
    socket.sleep(0.02)
  until socket.gettime() > deadline
  return nil, socket.gettime() - t0
end

local function count(proc, code)
  local n = 0
  for _, l in ipairs(procs.log_lines(proc)) do
    if l.code == code then n = n + 1 end
  end
  return n
end

-- One GET through ferry with LuaSocket: status, X-Ferry-Proxy, seconds.
local function get(port, url)
  local t0 = socket.gettime()
  local _, status, headers = http.request {
    url = url, proxy = via(port), sink = ltn12.sink.null(),
    create = function()
      local s = socket.tcp()
      s:settimeout(5)
      return s
    end,
  }
  return status, headers and headers["x-ferry-proxy"], socket.gettime() - t0
end

-- GET /metrics of the admin listener on `port`.
local function scrape(port)
  local body = {}
  local _, status = http.request {
    url = "http://127.0.0.1:" .. port .. "/metrics", sink = ltn12.sink.table(body),
    create = function()
      local s = socket.tcp()
      s:settimeout(5)
      return s
    end,
  }
  assert.equal(200, status)
  return table.concat(body)
end

local escape_pattern = require("prom").escape_pattern

-- One sample of a scrape, or nil.
local function sample(text, name, labels)
  local v = text:match("\n" .. escape_pattern(name .. "{" .. labels .. "}") .. " (%S+)\n")
  return v and tonumber(v)
end

-- Probes of proxy `label` in `pool` that ended with `result` ("ok", "failed").
local function probes(text, label, pool, result)
  return sample(text, "ferry_proxy_probes_total",
    string.format('proxy="%s",pool="%s",result="%s"', label, pool, result))
end

local function proxy_up(text, label, pool)
  return sample(text, "ferry_proxy_up", string.format('proxy="%s",pool="%s"', label, pool))
end

-- Scrape until pred(text) holds or `timeout` s pass; returns the last scrape.
local function scrape_until(port, timeout, pred)
  local deadline = socket.gettime() + timeout
  local t = scrape(port)
  while not pred(t) and socket.gettime() < deadline do
    socket.sleep(0.02)
    t = scrape(port)
  end
  return t
end

-- Every proxy of `list` ({ label, pool } pairs) passed at least `more`
-- probes beyond `before` (a scrape), polled up to `timeout` s; asserts it
-- and that none failed a probe or went down, and returns the last scrape.
local function assert_probes_pass(port, list, before, more, timeout, ferry)
  local function grown(t)
    for _, m in ipairs(list) do
      if (probes(t, m[1], m[2], "ok") or 0) < (probes(before, m[1], m[2], "ok") or 0) + more then
        return false
      end
    end
    return true
  end
  local t = scrape_until(port, timeout, grown)
  for _, m in ipairs(list) do
    local label, pool = m[1], m[2]
    local ok0, ok1 = probes(before, label, pool, "ok"), probes(t, label, pool, "ok")
    assert.is_number(ok1, label .. ": no probe series in /metrics")
    assert.is_true(ok1 >= (ok0 or 0) + more,
      string.format("%s: %s passing probes, then %s", label, tostring(ok0), tostring(ok1)))
    assert.equal(0, probes(t, label, pool, "failed"), label .. " failed a probe")
    assert.equal(1, proxy_up(t, label, pool), label .. " is not up")
    assert.is_nil(events(ferry, "FERRY-6001", label)[1], label .. " went down:\n" ..
      procs.read_file(ferry.log))
  end
  return t
end

-- Stop processes together (each stop waits for the reaper): signal all,
-- then wait for each; ferry last, with its sanitizer check.
local function stop_together(list, ferry)
  for _, p in ipairs(list) do
    procs.signal(p, "CONT")
    procs.signal(p, "TERM")
  end
  if ferry then procs.signal(ferry, "TERM") end
  for _, p in ipairs(list) do procs.stop(p) end
  if ferry then procs.stop_ferry(ferry) end
end

describe("probes", function()
  local O, S1, T, SA, TA, CLOSE = procs.free_port(), procs.free_port(), procs.free_port(),
    procs.free_port(), procs.free_port(), procs.free_port()
  local base = "http://127.0.0.1:" .. O
  local origin, s1, tiny, sauth, tauth, closer

  setup(function()
    origin = procs.origin(O)
    s1 = procs.microsocks(S1)
    tiny = procs.tinyproxy(T)
    sauth = procs.microsocks(SA, "probe-user", "s3cret-pw")
    tauth = tinyproxy_auth(TA, "probe-user", "s3cret-pw")
    closer = stub(CLOSE, "close")
  end)

  teardown(function()
    stop_together { origin, s1, tiny, sauth, tauth, closer }
  end)

  describe("tcp check with no traffic", function()
    local s2, ferry
    local S2, F, A = procs.free_port(), procs.free_port(), procs.free_port()

    setup(function()
      s2 = procs.microsocks(S2)
      ferry = procs.ferry(string.format([[
listen { addr = "127.0.0.1:%d" }
admin { addr = "127.0.0.1:%d" }
pool "p" { strategy = "round_robin", retries = 0, proxies = {
    { url = "socks5://127.0.0.1:%d", id = "one" }, { url = "socks5://127.0.0.1:%d", id = "two" } },
  health = { check = "tcp", interval = 0.3, timeout = 0.2, rise = 2, fall = 1 } }
route(function() return "p" end)
]], F, A, S1, S2), { F, A })
    end)

    teardown(function()
      stop_together({ s2 }, ferry)
    end)

    it("takes a killed proxy out of rotation by its probes alone, with no traffic", function()
      -- Both are probed, and pass.
      assert_probes_pass(A, { { "one", "p" }, { "two", "p" } }, "", 2, 5, ferry)
      local seen = {}
      for _ = 1, 4 do
        local status, px = get(F, base .. "/")
        assert.equal(200, status)
        seen[px] = true
      end
      assert.is_true(seen.one and seen.two)

      local before = scrape(A)
      procs.stop(s2)
      -- No request is sent until it is down: only a probe can find out.
      local ev = wait_event(ferry, "FERRY-6001", "two", 5)
      assert.is_table(ev, "no FERRY-6001 for the killed proxy:\n" .. procs.read_file(ferry.log))
      assert.matches("probe connect refused", ev.msg)
      assert.equal("socks5://127.0.0.1:" .. S2, ev.proxy)
      assert.equal("warn", ev.level)
      local t = scrape(A)
      assert.is_true(probes(t, "two", "p", "failed") > probes(before, "two", "p", "failed"))
      assert.equal(0, proxy_up(t, "two", "p"))
      assert.equal(1, proxy_up(t, "one", "p"))
      assert.is_nil(events(ferry, "FERRY-6001", "one")[1])

      -- retries = 0: a request sent to the dead proxy would fail.
      for _ = 1, 6 do
        local status, px = get(F, base .. "/")
        assert.equal(200, status)
        assert.equal("one", px)
      end
    end)

    it("brings it back after `rise` passing probes once it is restarted", function()
      local before = scrape(A)
      assert.equal(0, proxy_up(before, "two", "p"))
      s2 = procs.microsocks(S2)
      local ev = wait_event(ferry, "FERRY-6002", "two", 10)
      assert.is_table(ev, "no FERRY-6002 for the restarted proxy:\n" .. procs.read_file(ferry.log))
      assert.matches("probe passed", ev.msg)
      assert.equal("info", ev.level)
      -- rise = 2: up only once two probes passed since the restart (none
      -- passed while it was dead).
      local t = scrape(A)
      assert.equal(1, proxy_up(t, "two", "p"))
      local ok0, ok1 = probes(before, "two", "p", "ok"), probes(t, "two", "p", "ok")
      assert.is_true(ok1 >= ok0 + 2, "up after " .. (ok1 - ok0) .. " passing probe(s)")
      local seen = {}
      for _ = 1, 4 do
        local status, px = get(F, base .. "/")
        assert.equal(200, status)
        seen[px] = true
      end
      assert.is_true(seen.one and seen.two)
    end)
  end)

  describe("timeouts and the concurrency bound", function()
    local stopped, hang, hang2, ferry, started_at
    local STOPPED, HANG, HANG2 = procs.free_port(), procs.free_port(), procs.free_port()
    local F_LIVE, F_HANG, A = procs.free_port(), procs.free_port(), procs.free_port()
    -- The hanging proxy's probe timeout: long enough that a loop blocked
    -- by the probe would hold a request for about that long.
    local HANG_TIMEOUT = 1.5

    setup(function()
      stopped = procs.microsocks(STOPPED)
      procs.signal(stopped, "STOP") -- the kernel accepts, SOCKS5 never answers
      hang = stub(HANG, "hang")
      hang2 = stub(HANG2, "hang")
      local many = {}
      for i = 1, 12 do
        many[i] = string.format('{ url = "socks5://127.0.0.1:%d", id = "b%d" }', HANG2, i)
      end
      started_at = socket.gettime()
      ferry = procs.ferry(string.format([[
listen { name = "live", addr = "127.0.0.1:%d" }
listen { name = "hang", addr = "127.0.0.1:%d" }
admin { addr = "127.0.0.1:%d" }
pool "live" { retries = 0, proxies = { { url = "socks5://127.0.0.1:%d", id = "live" } } }
pool "hang" { retries = 0, proxies = { { url = "socks5://127.0.0.1:%d", id = "stopped" } },
  health = { check = "connect", target = "127.0.0.1:%d", interval = %s, timeout = %s, fall = 1 } }
pool "slowcheck" { proxies = { { url = "socks5://127.0.0.1:%d", id = "slowcheck" } },
  health = { check = "http", url = "http://127.0.0.1:%d/", interval = 0.5, timeout = 0.3, fall = 1 } }
pool "bounded" { proxies = { %s },
  health = { check = "connect", target = "127.0.0.1:%d", interval = 0.3, timeout = 0.25,
             fall = 1, concurrency = 3 } }
route(function(req) return req.listener end)
]], F_LIVE, F_HANG, A, S1, STOPPED, O, HANG_TIMEOUT, HANG_TIMEOUT, S1, HANG,
        table.concat(many, ", "), O), { F_LIVE, F_HANG, A })
    end)

    teardown(function()
      stop_together({ stopped, hang, hang2 }, ferry)
    end)

    it("fails a probe of a hanging proxy by timeout while requests flow", function()
      -- Requests go on until two more probes of the hanging proxy timed
      -- out: the second started after the first requests, so requests
      -- flowed through the whole of its hang.
      local f0 = probes(scrape(A), "stopped", "hang", "failed")
      assert.is_number(f0)
      local worst, n, failed = 0, 0, f0
      local deadline = socket.gettime() + 20
      while failed < f0 + 2 and socket.gettime() < deadline do
        local status, px, took = get(F_LIVE, base .. "/")
        assert.equal(200, status)
        assert.equal("live", px)
        if took > worst then worst = took end
        n = n + 1
        failed = probes(scrape(A), "stopped", "hang", "failed")
        socket.sleep(0.01)
      end
      assert.is_true(failed >= f0 + 2, (failed - f0) .. " probes of the hanging proxy ended")
      local ev = wait_event(ferry, "FERRY-6001", "stopped", 5)
      assert.is_table(ev, procs.read_file(ferry.log))
      assert.matches("timed out", ev.msg)
      -- Probes in flight (up to the bound, all hanging) never hold up the
      -- loop: a loop that waited on the probe would hold a request for up
      -- to the probe's timeout; a working one answers in milliseconds.
      assert.is_true(n >= 2, "only " .. n .. " requests")
      assert.is_true(worst < HANG_TIMEOUT / 3, "slowest request " .. worst .. " s")
      -- The hanging pool now has no healthy proxy; its traffic is the
      -- all-down policy's business, not the prober's.
    end)

    it("fails an http check whose target never answers, by timeout", function()
      local ev = wait_event(ferry, "FERRY-6001", "slowcheck", 5)
      assert.is_table(ev, procs.read_file(ferry.log))
      assert.matches("timed out", ev.msg)
    end)

    it("keeps at most `concurrency` probes in flight and defers the rest", function()
      for i = 1, 12 do
        assert.is_table(wait_event(ferry, "FERRY-6001", "b" .. i, 5),
          "b" .. i .. " never went down:\n" .. procs.read_file(ferry.log))
      end
      local accepts, _, max_open = stub_stats(hang2)
      assert.is_true(accepts >= 12, accepts .. " probes")
      assert.is_true(max_open <= 3, max_open .. " probes in flight at once")
      -- FERRY-6010, at most once per 10 s of ferry's life.
      local warned = count(ferry, "FERRY-6010")
      local most = 1 + math.floor((socket.gettime() - started_at) / 10)
      assert.is_true(warned >= 1 and warned <= most,
        warned .. " FERRY-6010 lines, at most " .. most .. " allowed")
    end)
  end)

  describe("backoff", function()
    local ferry, a0
    local F = procs.free_port()

    setup(function()
      a0 = stub_stats(closer) -- every later accept is a probe of this ferry
      ferry = procs.ferry(string.format([[
listen { addr = "127.0.0.1:%d" }
pool "closer" { proxies = { { url = "socks5://127.0.0.1:%d", id = "closer" } },
  health = { check = "connect", target = "127.0.0.1:%d", interval = 0.1, timeout = 0.1, fall = 1 } }
route(function() return "closer" end)
]], F, CLOSE, O), { F })
    end)

    teardown(function()
      stop_together({}, ferry)
    end)

    it("backs off while a proxy keeps failing", function()
      -- The closer fails every probe.  interval 0.1, fall 1: the waits
      -- double after each failure past the first (0.1, 0.2, 0.4, 0.8,
      -- then 1.6 = the 16x cap); without backoff they would stay 0.1.
      local ev = wait_event(ferry, "FERRY-6001", "closer", 5)
      assert.is_table(ev, procs.read_file(ferry.log))
      assert.matches("probe", ev.msg)
      local a, _, _, times = wait_accepts(closer, a0 + 6, 10)
      assert.is_true(a >= a0 + 6, (a - a0) .. " probes")
      local g = {}
      for i = 1, 5 do g[i] = times[a0 + i + 1] - times[a0 + i] end
      local gaps = string.format("gaps %.3f %.3f %.3f %.3f %.3f", g[1], g[2], g[3], g[4], g[5])
      assert.is_true(g[1] < g[3] and g[3] < g[5], gaps)
      assert.is_true(g[5] > 4 * g[1], gaps)
    end)
  end)

  describe("http check", function()
    local ferry
    local F, A = procs.free_port(), procs.free_port()

    setup(function()
      local function pool(name, path, expect)
        return string.format([[
pool "%s" { retries = 0, proxies = {
    { url = "socks5://127.0.0.1:%d", id = "s-%s" }, { url = "http://127.0.0.1:%d", id = "t-%s" } },
  health = { check = "http", url = "http://127.0.0.1:%d%s", %s
             interval = 0.2, timeout = 0.2, rise = 1, fall = 1 } }
]], name, S1, name, T, name, O, path, expect and ("expect = " .. expect .. ",") or "")
      end
      ferry = procs.ferry(string.format([[
listen { addr = "127.0.0.1:%d" }
admin { addr = "127.0.0.1:%d" }
route(function() return "ok204" end)
]], F, A) .. pool("ok204", "/status/204", "{ 200, 204 }") .. pool("bad500", "/status/500", nil)
        .. pool("deflt", "/status/302", nil) .. pool("only500", "/status/500", "{ 500 }")
        .. pool("not200", "/status/204", "{ 200 }"), { F, A })
    end)

    teardown(function()
      stop_together({}, ferry)
    end)

    it("takes down proxies whose check answers a status outside expect", function()
      for _, label in ipairs { "s-bad500", "t-bad500", "s-not200", "t-not200" } do
        local ev = wait_event(ferry, "FERRY-6001", label, 2)
        assert.is_table(ev, label .. ":\n" .. procs.read_file(ferry.log))
        assert.matches("status", ev.msg)
      end
      assert.matches("status 500", events(ferry, "FERRY-6001", "t-bad500")[1].msg)
      assert.matches("status 204", events(ferry, "FERRY-6001", "s-not200")[1].msg)
    end)

    it("keeps proxies whose check answers an expected status (default: 2xx, 3xx)", function()
      -- Each is probed, twice more from now, and every probe passes.
      local good = {}
      for _, pool in ipairs { "ok204", "deflt", "only500" } do
        good[#good + 1] = { "s-" .. pool, pool }
        good[#good + 1] = { "t-" .. pool, pool }
      end
      assert_probes_pass(A, good, scrape(A), 2, 5, ferry)
      for _ = 1, 4 do assert.equal(200, (get(F, base .. "/"))) end
    end)
  end)

  describe("connect check and credentials", function()
    local ferry
    local F, DEAD, A = procs.free_port(), procs.free_port(), procs.free_port()

    setup(function()
      ferry = procs.ferry(string.format([[
listen { addr = "127.0.0.1:%d" }
admin { addr = "127.0.0.1:%d" }
local function check(t) t.interval, t.timeout, t.rise, t.fall = 0.2, 0.2, 1, 1 return t end
pool "up" { proxies = {
    { url = "socks5://127.0.0.1:%d", id = "s-up" }, { url = "http://127.0.0.1:%d", id = "t-up" } },
  health = check { check = "connect", target = "127.0.0.1:%d" } }
pool "dead" { proxies = {
    { url = "socks5://127.0.0.1:%d", id = "s-dead" }, { url = "http://127.0.0.1:%d", id = "t-dead" } },
  health = check { check = "connect", target = "127.0.0.1:%d" } }
pool "auth" { proxies = {
    { url = "socks5://probe-user:s3cret-pw@127.0.0.1:%d", id = "s-good" },
    { url = "socks5://probe-user:wrong-pw@127.0.0.1:%d", id = "s-bad" },
    { url = "socks5://127.0.0.1:%d", id = "s-none" },
    { url = "http://probe-user:s3cret-pw@127.0.0.1:%d", id = "t-good" },
    { url = "http://probe-user:wrong-pw@127.0.0.1:%d", id = "t-bad" } },
  health = check { check = "connect", target = "127.0.0.1:%d" } }
pool "authhttp" { proxies = {
    { url = "socks5://probe-user:s3cret-pw@127.0.0.1:%d", id = "sh-good" },
    { url = "http://probe-user:s3cret-pw@127.0.0.1:%d", id = "th-good" },
    { url = "http://probe-user:wrong-pw@127.0.0.1:%d", id = "th-bad" } },
  health = check { check = "http", url = "http://127.0.0.1:%d/status/204" } }
route(function() return "up" end)
]], F, A, S1, T, O, S1, T, DEAD, SA, SA, SA, TA, TA, O, SA, TA, TA, O), { F, A })
    end)

    teardown(function()
      stop_together({}, ferry)
    end)

    it("takes down proxies that cannot open a tunnel to the target", function()
      for _, label in ipairs { "s-dead", "t-dead" } do
        local ev = wait_event(ferry, "FERRY-6001", label, 2)
        assert.is_table(ev, label .. ":\n" .. procs.read_file(ferry.log))
        assert.matches("handshake failed", ev.msg)
      end
    end)

    it("uses the proxy's credentials, and a wrong password takes it down", function()
      for _, label in ipairs { "s-bad", "t-bad", "s-none", "th-bad" } do
        local ev = wait_event(ferry, "FERRY-6001", label, 2)
        assert.is_table(ev, label .. ":\n" .. procs.read_file(ferry.log))
      end
      assert.matches("auth failed", events(ferry, "FERRY-6001", "s-bad")[1].msg)
      -- tinyproxy answers a plain request with bad credentials 401, CONNECT 407.
      local th = events(ferry, "FERRY-6001", "th-bad")[1].msg
      assert.is_truthy(th:find("auth failed", 1, true) or th:find("status 401", 1, true), th)
      local tb = events(ferry, "FERRY-6001", "t-bad")[1].msg
      assert.is_truthy(tb:find("auth failed", 1, true) or tb:find("answered 401", 1, true), tb)
      -- The right credentials pass: each is probed, twice more from now,
      -- and every probe passes.
      assert_probes_pass(A, { { "s-up", "up" }, { "t-up", "up" }, { "s-good", "auth" },
        { "t-good", "auth" }, { "sh-good", "authhttp" }, { "th-good", "authhttp" } },
        scrape(A), 2, 5, ferry)
      local log = procs.read_file(ferry.log)
      assert.is_nil(log:find("s3cret", 1, true))
      assert.is_nil(log:find("wrong-pw", 1, true))
    end)
  end)

  describe("reload", function()
    local ferry, cfg
    local C, F = CLOSE, procs.free_port()

    local function config(with_check)
      return string.format([[
listen { addr = "127.0.0.1:%d" }
pool "p" { proxies = { { url = "socks5://127.0.0.1:%d", id = "c" } }%s }
route(function() return "p" end)
]], F, C, with_check and ', health = { check = "tcp", interval = 0.2, timeout = 0.2 }' or "")
    end

    setup(function()
      -- closer: a tcp check passes on connect, so its accepts count probes.
      ferry = procs.ferry(config(true), { F })
      cfg = ferry.config
    end)

    teardown(function()
      stop_together({}, ferry)
    end)

    local function reloads(n)
      local before = count(ferry, "FERRY-0101")
      procs.signal(ferry, "HUP")
      local deadline = socket.gettime() + 5
      while count(ferry, "FERRY-0101") < before + n and socket.gettime() < deadline do
        socket.sleep(0.02)
      end
      assert.equal(before + n, count(ferry, "FERRY-0101"), procs.read_file(ferry.log))
    end

    it("keeps one schedule per proxy across reloads", function()
      local a0 = stub_stats(closer)
      assert.is_true(wait_accepts(closer, a0 + 2, 5) >= a0 + 2, "no probes before the reloads")
      for _ = 1, 5 do reloads(1) end
      local a1 = stub_stats(closer)
      local a, _, _, times = wait_accepts(closer, a1 + 11, 10)
      assert.is_true(a >= a1 + 11, (a - a1) .. " probes after the reloads")
      -- One schedule waits at least the interval less its jitter (0.18 s)
      -- from one probe to the next; a late timer only adds to it.  Each
      -- duplicate schedule would add probes of its own, halving the mean
      -- gap at least.
      local mean = (times[a1 + 11] - times[a1 + 1]) / 10
      assert.is_true(mean > 0.14, string.format("a probe every %.3f s", mean))
    end)

    it("stops probing when the check is removed", function()
      procs.write_file(cfg, config(false))
      reloads(1)
      socket.sleep(0.3)
      local a0 = stub_stats(closer)
      socket.sleep(1)
      assert.equal(a0, (stub_stats(closer)))
    end)
  end)
end)
