-- Faults the other integration specs leave out: breaker plugins and
-- exchange select hooks that raise, run away or answer garbage; passive
-- detection of a dead proxy without probes; a hung upstream as a probe
-- target that comes back; an upstream that resets every connection; the
-- shipped exchanges example.  Each ends with traffic still flowing, a
-- coded log line, and ferry still running.
local procs = require("procs")
local socket = require("socket")
local http = require("socket.http")
local ltn12 = require("ltn12")

local function via(port) return "http://127.0.0.1:" .. port end

-- One GET through ferry with LuaSocket: status, body, X-Ferry-Proxy, seconds.
local function get(port, url)
  local t0 = socket.gettime()
  local body = {}
  local _, status, headers = http.request {
    url = url, proxy = via(port), sink = ltn12.sink.table(body),
    create = function()
      local s = socket.tcp()
      s:settimeout(5)
      return s
    end,
  }
  return status, table.concat(body), headers and headers["x-ferry-proxy"],
    socket.gettime() - t0
end

-- Log lines with `code` (and, when given, whose msg contains `text`).
local function lines_with(proc, code, text)
  local out = {}
  for _, l in ipairs(procs.log_lines(proc)) do
    if l.code == code and (not text or (type(l.msg) == "string" and
        l.msg:find(text, 1, true))) then
      out[#out + 1] = l
    end
  end
  return out
end

-- Wait (bounded) for the n-th line lines_with(...) finds; it, or nil.
local function wait_line(proc, code, text, timeout, n)
  n = n or 1
  local deadline = socket.gettime() + timeout
  repeat
    local found = lines_with(proc, code, text)
    if #found >= n then return found[n] end
    socket.sleep(0.02)
  until socket.gettime() > deadline
  return nil
end

-- Log lines about the proxy shown as `display` (any code).
local function about_proxy(proc, display)
  local out = {}
  for _, l in ipairs(procs.log_lines(proc)) do
    if l.proxy == display then out[#out + 1] = l end
  end
  return out
end

local function mkdir(path)
  os.execute("mkdir -p " .. procs.quote(path))
end

-- A request slower than this means the event loop was blocked: a working
-- ferry answers these in milliseconds (well under 0.1 s even under ASAN),
-- while a hook the budget failed to stop, or a hung upstream in the
-- request's path, holds it for the 5 s of the client's (and the
-- upstream connect) timeout, or for good.
local BLOCKED = 1

describe("faulty breaker plugins", function()
  local origin, s1, s2, ferry
  local O, S1, S2 = procs.free_port(), procs.free_port(), procs.free_port()
  local NAMES = { "raises", "loops", "garbage", "swallows" }
  local ports = {}
  for _, n in ipairs(NAMES) do ports[n] = procs.free_port() end
  local plugdir = procs.tmp .. "/fault-plugins-" .. math.random(1, 1e9)
  local base = "http://127.0.0.1:" .. O

  setup(function()
    mkdir(plugdir .. "/breakers")
    procs.write_file(plugdir .. "/breakers/raises.lua", [[
return { name = "raises", version = "1",
  should_open = function(s, x, r) error("breaker blew up on status " .. tostring(r.status)) end }
]])
    procs.write_file(plugdir .. "/breakers/loops.lua", [[
return { name = "loops", version = "1",
  should_open = function() local n = 0 while true do n = n + 1 end end }
]])
    procs.write_file(plugdir .. "/breakers/garbage.lua", [[
return { name = "garbage", version = "1", should_open = function() return "definitely" end }
]])
    -- A runaway loop around pcall: it must not swallow the budget's error.
    procs.write_file(plugdir .. "/breakers/swallows.lua", [[
local function spin() local n = 0 while true do n = n + 1 end end
return { name = "swallows", version = "1",
  should_open = function() while true do pcall(spin) end end }
]])
    origin = procs.origin(O)
    s1 = procs.microsocks(S1)
    s2 = procs.microsocks(S2)
    local text = { string.format("plugins { %q }", plugdir) }
    for _, n in ipairs(NAMES) do
      text[#text + 1] = string.format([[
listen { name = "%s", addr = "127.0.0.1:%d" }
pool "%s" { strategy = "round_robin", retries = 0, all_down = "fail",
  breaker = { policy = "%s", failures = 1, cooldown = 30 },
  proxies = { { url = "socks5://127.0.0.1:%d", id = "%s-1" },
              { url = "socks5://127.0.0.1:%d", id = "%s-2" } } }
]], n, ports[n], n, n, S1, n, S2, n)
    end
    text[#text + 1] = "route(function(req) return req.listener end)\n"
    local list = {}
    for _, n in ipairs(NAMES) do list[#list + 1] = ports[n] end
    ferry = procs.ferry(table.concat(text, "\n"), list)
  end)

  teardown(function()
    if ferry then procs.stop_ferry(ferry) end
    for _, p in pairs { origin, s1, s2 } do procs.stop(p) end
  end)

  -- Failures (500s) and successes through the pool: every one is served
  -- by the origin, the breaker never opens (all_down = "fail" would turn
  -- an open pair into a 503), and the request is not held up.
  local function traffic(name)
    local worst = 0
    for i = 1, 8 do
      local path = i % 2 == 0 and "/" or "/status/500"
      local status, body, px, took = get(ports[name], base .. path)
      assert.equal(i % 2 == 0 and 200 or 500, status, name .. " " .. path)
      if i % 2 == 0 then assert.equal("hello from origin\n", body) end
      assert.matches("^" .. name .. "%-[12]$", px)
      if took > worst then worst = took end
    end
    assert.is_true(worst < BLOCKED, name .. ": slowest request " .. worst .. " s")
    assert.is_true(procs.alive(ferry), "ferry died:\n" .. procs.read_file(ferry.log))
    assert.equal(0, #lines_with(ferry, "FERRY-6003", "proxy " .. name .. "-"))
  end

  it("a raising should_open leaves the breaker closed and logs FERRY-4007", function()
    traffic("raises")
    local l = wait_line(ferry, "FERRY-4007", 'breaker "raises"', 2)
    assert.is_table(l, procs.read_file(ferry.log))
    assert.equal("error", l.level)
    assert.matches("breaker blew up on status", l.msg)
    -- Once per 10 s, not once per result.
    assert.equal(1, #lines_with(ferry, "FERRY-4007", 'breaker "raises"'))
  end)

  it("a should_open that loops forever is stopped by the budget, FERRY-4007", function()
    traffic("loops")
    local l = wait_line(ferry, "FERRY-4007", 'breaker "loops"', 2)
    assert.is_table(l, procs.read_file(ferry.log))
    assert.matches("budget", l.msg)
    assert.equal(0, #lines_with(ferry, "FERRY-4001"))
  end)

  it("a should_open returning garbage is ignored and logged FERRY-4007", function()
    traffic("garbage")
    local l = wait_line(ferry, "FERRY-4007", 'breaker "garbage"', 2)
    assert.is_table(l, procs.read_file(ferry.log))
    assert.matches("returned a string", l.msg)
  end)

  it("a runaway loop that catches errors with pcall is still stopped", function()
    traffic("swallows")
    local l = wait_line(ferry, "FERRY-4007", 'breaker "swallows"', 2)
    assert.is_table(l, procs.read_file(ferry.log))
    assert.matches("budget", l.msg)
  end)

  it("keeps serving every listener afterwards", function()
    for _, n in ipairs(NAMES) do
      assert.equal(200, (get(ports[n], base .. "/")))
    end
    assert.is_true(procs.alive(ferry))
  end)
end)

-- Successes skip the result call (FERRY_REQ_QUIET_OK) only where the
-- pool's breaker says a success never opens it; a half-open breaker
-- still hears of the success that closes it.
describe("breakers and successes", function()
  local origin, s1, ferry
  local O, S1 = procs.free_port(), procs.free_port()
  local P = { onok = procs.free_port(), quiet = procs.free_port(), half = procs.free_port() }
  local plugdir = procs.tmp .. "/quiet-plugins-" .. math.random(1, 1e9)
  local base = "http://127.0.0.1:" .. O

  setup(function()
    mkdir(plugdir .. "/breakers")
    -- Opens on a success: must be asked about successes.
    procs.write_file(plugdir .. "/breakers/onok.lua", [[
return { name = "onok", version = "1", should_open = function(s, x, r) return r.ok end }
]])
    -- Opens on anything, but promises successes never open it: ferry
    -- takes the promise, so only a failure reaches it.
    procs.write_file(plugdir .. "/breakers/quiet.lua", [[
return { name = "quiet", version = "1", ignores_successes = true,
  should_open = function() return true end }
]])
    origin = procs.origin(O)
    s1 = procs.microsocks(S1)
    local function pool(name, breaker)
      return string.format([[
listen { name = "%s", addr = "127.0.0.1:%d" }
pool "%s" { retries = 0, all_down = "fail", breaker = %s,
  proxies = { { url = "socks5://127.0.0.1:%d", id = "%s-1" } } }
]], name, P[name], name, breaker, S1, name)
    end
    ferry = procs.ferry(table.concat({
      string.format("plugins { %q }", plugdir),
      pool("onok", '{ policy = "onok", cooldown = 30 }'),
      pool("quiet", '{ policy = "quiet", cooldown = 30 }'),
      pool("half", '{ policy = "consecutive", failures = 1, cooldown = 0.3 }'),
      "route(function(req) return req.listener end)\n" }, "\n"), { P.onok, P.quiet, P.half })
  end)

  teardown(function()
    if ferry then procs.stop_ferry(ferry) end
    for _, p in pairs { origin, s1 } do procs.stop(p) end
  end)

  it("asks a breaker without ignores_successes about a success", function()
    assert.equal(200, (get(P.onok, base .. "/")))
    assert.equal(503, (get(P.onok, base .. "/")))
  end)

  it("does not ask one with ignores_successes = true, but asks it about a failure", function()
    for _ = 1, 5 do assert.equal(200, (get(P.quiet, base .. "/"))) end
    assert.equal(500, (get(P.quiet, base .. "/status/500")))
    assert.equal(503, (get(P.quiet, base .. "/")))
  end)

  it("closes a half-open breaker on the trial's success", function()
    assert.equal(500, (get(P.half, base .. "/status/500")))
    assert.equal(503, (get(P.half, base .. "/")))
    socket.sleep(0.5)
    -- The trial, then requests through a closed breaker again.
    for _ = 1, 4 do assert.equal(200, (get(P.half, base .. "/"))) end
    assert.is_true(procs.alive(ferry))
  end)
end)

describe("faulty exchange select hooks", function()
  local origin, s1, s2, ferry, script
  local O, S1, S2 = procs.free_port(), procs.free_port(), procs.free_port()
  local NAMES = { "raises", "loops", "garbage", "stranger", "swallows" }
  local ports = {}
  for _, n in ipairs(NAMES) do ports[n] = procs.free_port() end
  local base = "http://127.0.0.1:" .. O

  setup(function()
    -- One exchange; on_request sends each listener's traffic to the pool
    -- of that name, and select misbehaves in the listener's way.
    script = procs.write_file(string.format("%s/fault-ex-%d.lua", procs.tmp,
      math.random(1, 1e9)), [[
local function spin() local n = 0 while true do n = n + 1 end end
return {
  on_request = function(req) return { pool = req.listener } end,
  select = function(pool, req)
    local l = req.listener
    if l == "raises" then error("select exploded") end
    if l == "loops" then return spin() end
    if l == "garbage" then return "the fast one" end
    if l == "stranger" then return { id = pool.proxies[1].id, c = pool.proxies[1].c } end
    if l == "swallows" then while true do pcall(spin) end end
    return nil
  end,
}
]])
    origin = procs.origin(O)
    s1 = procs.microsocks(S1)
    s2 = procs.microsocks(S2)
    local text = {}
    for _, n in ipairs(NAMES) do
      text[#text + 1] = string.format([[
listen { name = "%s", addr = "127.0.0.1:%d" }
pool "%s" { strategy = "least_conn", retries = 0, proxies = {
  { url = "socks5://127.0.0.1:%d", id = "%s-1" }, { url = "socks5://127.0.0.1:%d", id = "%s-2" } } }
]], n, ports[n], n, S1, n, S2, n)
    end
    text[#text + 1] = string.format([[
exchange "E" { hosts = { "127.0.0.1" }, pool = "raises", script = %q }
]], script)
    local list = {}
    for _, n in ipairs(NAMES) do list[#list + 1] = ports[n] end
    ferry = procs.ferry(table.concat(text, "\n"), list)
  end)

  teardown(function()
    if ferry then procs.stop_ferry(ferry) end
    for _, p in pairs { origin, s1, s2 } do procs.stop(p) end
  end)

  -- Every request is served, by the fallback round robin (both proxies of
  -- the pool in turn), without being held up; one FERRY-4009 line.
  local function falls_back(name, why)
    local seen, worst = {}, 0
    for _ = 1, 6 do
      local status, body, px, took = get(ports[name], base .. "/")
      assert.equal(200, status, name)
      assert.equal("hello from origin\n", body)
      assert.matches("^" .. name .. "%-[12]$", px)
      seen[px] = (seen[px] or 0) + 1
      if took > worst then worst = took end
    end
    assert.equal(3, seen[name .. "-1"], name)
    assert.equal(3, seen[name .. "-2"], name)
    assert.is_true(worst < BLOCKED, name .. ": slowest request " .. worst .. " s")
    assert.is_true(procs.alive(ferry), "ferry died:\n" .. procs.read_file(ferry.log))
    local l = wait_line(ferry, "FERRY-4009", 'pool "' .. name .. '"', 2)
    assert.is_table(l, procs.read_file(ferry.log))
    assert.equal("error", l.level)
    assert.matches('exchange "E" select', l.msg)
    assert.matches("round_robin", l.msg)
    if why then assert.matches(why, l.msg) end
    assert.equal(1, #lines_with(ferry, "FERRY-4009", 'pool "' .. name .. '"'))
    assert.equal(0, #lines_with(ferry, "FERRY-4001"))
  end

  it("a raising select falls back to round robin, FERRY-4009", function()
    falls_back("raises", "select exploded")
  end)

  it("a select that loops forever is stopped by the budget and falls back", function()
    falls_back("loops", "budget")
  end)

  it("a select returning a string falls back", function()
    falls_back("garbage", "not an eligible proxy")
  end)

  it("a select returning a look-alike of a proxy falls back", function()
    falls_back("stranger", "not an eligible proxy")
  end)

  it("a select that loops around pcall is still stopped by the budget", function()
    falls_back("swallows", "budget")
  end)
end)

-- route() runs in the config's sandbox, whose pcall (as plugins' and
-- scripts') passes the budget's error on.
describe("a route that allocates without bound, or loops around pcall", function()
  local origin, ferry
  local O, F = procs.free_port(), procs.free_port()
  local base = "http://127.0.0.1:" .. O

  setup(function()
    origin = procs.origin(O)
    ferry = procs.ferry(string.format([[
listen { addr = "127.0.0.1:%d" }
route(function(req)
  if req.path == "/huge" then local s = string.rep("x", 2^29) return "direct" end
  if req.path == "/grow" then local t = {} for i = 1, 1e7 do t[i] = { i } end return "direct" end
  if req.path == "/catch" then
    while true do pcall(function() local t = {} while true do t[#t + 1] = {} end end) end
  end
  if req.path == "/spin" then while true do pcall(function() while true do end end) end end
  return "direct"
end)
]], F), { F })
  end)

  teardown(function()
    if ferry then procs.stop_ferry(ferry) end
    procs.stop(origin)
  end)

  it("is refused its memory per request: the request fails coded, the daemon stays small", function()
    for _, path in ipairs { "/huge", "/grow", "/catch", "/spin" } do
      local status, _, _, took = get(F, base .. path)
      assert.equal(503, status, path)
      assert.is_true(took < BLOCKED, path .. " took " .. took .. " s")
    end
    assert.matches("not enough memory %(a hook may add at most 64 MiB",
      assert(wait_line(ferry, "FERRY-4002", nil, 5)).msg)
    local status, body = get(F, base .. "/")
    assert.equal(200, status)
    assert.equal("hello from origin\n", body)
    -- 512 MiB asked for, 64 MiB of heap allowed per call.
    local rss = tonumber(procs.read_file("/proc/" .. ferry.pid .. "/status"):match("VmRSS:%s*(%d+)"))
    assert.is_true(rss < 256 * 1024, "VmRSS " .. tostring(rss) .. " kB")
    assert.is_true(procs.alive(ferry))
  end)
end)

describe("passive detection without probes", function()
  local origin, s1, ferry
  local O, S1, DEAD, F = procs.free_port(), procs.free_port(), procs.free_port(),
    procs.free_port()
  local base = "http://127.0.0.1:" .. O
  local DEAD_URL = "socks5://127.0.0.1:" .. DEAD

  setup(function()
    origin = procs.origin(O)
    s1 = procs.microsocks(S1)
    -- No health block: rise, fall and the 2 s trial interval are defaults.
    ferry = procs.ferry(string.format([[
listen { addr = "127.0.0.1:%d" }
pool "p" { strategy = "round_robin", retries = 2, proxies = {
  { url = "%s", id = "dead" }, { url = "socks5://127.0.0.1:%d", id = "live" } } }
route(function() return "p" end)
]], F, DEAD_URL, S1), { F })
  end)

  teardown(function()
    if ferry then procs.stop_ferry(ferry) end
    for _, p in pairs { origin, s1 } do procs.stop(p) end
  end)

  -- Requests sent so far; each ends with one access line (FERRY-0200).
  local sent = 0
  local function send()
    local status, body, px = get(F, base .. "/")
    sent = sent + 1
    return status, body, px
  end

  -- Connect attempts to the dead proxy, and requests it served, once the
  -- log holds every request sent (their attempts are logged before them).
  local function tries_of_dead()
    assert.is_table(wait_line(ferry, "FERRY-0200", nil, 5, sent), procs.read_file(ferry.log))
    local n, served = 0, 0
    for _, l in ipairs(about_proxy(ferry, DEAD_URL)) do
      if l.code == "FERRY-3001" then n = n + 1 end
      if l.code == "FERRY-0200" then served = served + 1 end
    end
    return n, served
  end

  local t_down

  it("excludes a refused proxy after its first failed connect", function()
    -- Round robin: one of the first two requests goes to the dead proxy.
    for _ = 1, 2 do
      local status, body, px = send()
      assert.equal(200, status)
      assert.equal("hello from origin\n", body)
      assert.equal("live", px)
    end
    t_down = socket.gettime()
    assert.equal(1, (tries_of_dead()))
    local down = wait_line(ferry, "FERRY-6001", "proxy dead ", 1)
    assert.is_table(down, procs.read_file(ferry.log))
    assert.equal(DEAD_URL, down.proxy)
    assert.matches("connect refused", down.msg)
    -- Within the trial interval (2 s; it went down before t_down), no
    -- request goes near it again: requests until t_down + 1.5 s (ferry
    -- picks the proxy as a request arrives: 0.5 s to spare).
    local n = 0
    while socket.gettime() < t_down + 1.5 and n < 20 do
      local status, _, px = send()
      assert.equal(200, status)
      assert.equal("live", px)
      n = n + 1
    end
    -- Round robin would have sent every other one to it: two suffice.
    assert.is_true(n >= 2, "only " .. n .. " requests in the interval: nothing proved")
    local tries, served = tries_of_dead()
    assert.equal(1, tries, procs.read_file(ferry.log))
    assert.equal(0, served)
    assert.equal(1, #lines_with(ferry, "FERRY-6001"))
    -- The access log: every request served, all by the live proxy.
    local access = lines_with(ferry, "FERRY-0200")
    assert.equal(sent, #access)
    for _, l in ipairs(access) do assert.equal("socks5://127.0.0.1:" .. S1, l.proxy) end
  end)

  it("then gives it one trial per backoff period, unseen by clients", function()
    assert.is_number(t_down)
    -- The first trial is due 2 s after it went down; a failed trial
    -- doubles the wait (4 s), so 1.5 s of traffic after it sees one.
    procs.sleep(math.max(0, t_down + 2.3 - socket.gettime()))
    -- Trials ride on requests: the first one after it is due is one.
    local t_end = socket.gettime() + 1.5
    repeat
      assert.equal(200, (send()))
    until socket.gettime() > t_end or sent >= 200
    local tries, served = tries_of_dead()
    assert.equal(2, tries, procs.read_file(ferry.log))
    assert.equal(0, served)
    assert.equal(1, #lines_with(ferry, "FERRY-6001")) -- still down, not re-announced
    assert.is_true(procs.alive(ferry))
  end)
end)

describe("a hung upstream as a probe target", function()
  local origin, live, hung, ferry
  local O, LIVE, HUNG, F = procs.free_port(), procs.free_port(), procs.free_port(),
    procs.free_port()
  local A = procs.free_port() -- admin: /metrics
  local base = "http://127.0.0.1:" .. O

  setup(function()
    origin = procs.origin(O)
    live = procs.microsocks(LIVE)
    hung = procs.microsocks(HUNG)
    procs.signal(hung, "STOP") -- the kernel still accepts; SOCKS5 never answers
    ferry = procs.ferry(string.format([[
listen { addr = "127.0.0.1:%d" }
admin { addr = "127.0.0.1:%d" }
pool "p" { strategy = "round_robin", retries = 0, proxies = {
    { url = "socks5://127.0.0.1:%d", id = "live" }, { url = "socks5://127.0.0.1:%d", id = "hung" } },
  health = { check = "connect", target = "127.0.0.1:%d", interval = 0.3, timeout = 0.2,
             rise = 2, fall = 1 } }
route(function() return "p" end)
]], F, A, LIVE, HUNG, O), { F, A })
  end)

  teardown(function()
    if ferry then procs.stop_ferry(ferry) end
    for _, p in pairs { origin, live, hung } do procs.stop(p) end
  end)

  it("times the probe out and takes the proxy down", function()
    local l = wait_line(ferry, "FERRY-6001", "proxy hung ", 3)
    assert.is_table(l, procs.read_file(ferry.log))
    assert.matches("timed out", l.msg)
    assert.equal("socks5://127.0.0.1:" .. HUNG, l.proxy)
    assert.equal(0, #lines_with(ferry, "FERRY-6001", "proxy live "))
  end)

  -- The probe counters of /metrics.
  local function probes()
    local function proxy(id, result)
      return procs.metric(A, "ferry_proxy_probes_total",
        string.format('proxy="%s",pool="p",result="%s"', id, result))
    end
    local t = { hung_failed = proxy("hung", "failed"), hung_ok = proxy("hung", "ok"),
      live_ok = proxy("live", "ok"),
      timeouts = procs.metric(A, "ferry_probes_total", 'result="timeout"') }
    for _, k in ipairs { "hung_failed", "hung_ok", "live_ok", "timeouts" } do
      assert.is_number(t[k], k .. " not in /metrics")
    end
    return t
  end

  it("keeps requests through the other proxy flowing, undelayed, while probes fail", function()
    -- retries = 0: a request sent to the hung proxy would fail or stall.
    -- Traffic goes on until the hung proxy's probes (backing off, up to
    -- 4.8 s apart) failed again and the live one's succeeded meanwhile.
    local before = probes()
    local now
    local worst, n = 0, 0
    local deadline = socket.gettime() + 15
    repeat
      for _ = 1, 5 do
        local status, _, px, took = get(F, base .. "/")
        assert.equal(200, status)
        assert.equal("live", px)
        if took > worst then worst = took end
        n = n + 1
      end
      now = probes()
    until (now.hung_failed > before.hung_failed and now.timeouts > before.timeouts and
           now.live_ok > before.live_ok) or socket.gettime() > deadline
    assert.is_true(now.hung_failed > before.hung_failed, "no failed probe of hung in " .. n ..
      " requests")
    assert.is_true(now.timeouts > before.timeouts, "no probe timed out")
    assert.is_true(now.live_ok > before.live_ok, "no probe of live succeeded")
    assert.equal(before.hung_ok, now.hung_ok)
    assert.is_true(worst < BLOCKED, "slowest request " .. worst .. " s")
    assert.is_true(procs.alive(ferry))
  end)

  it("brings it back up after SIGCONT, and traffic uses it again", function()
    procs.signal(hung, "CONT")
    -- Backoff while down: up to 16 x 0.3 s between probes, then rise = 2.
    local l = wait_line(ferry, "FERRY-6002", "proxy hung ", 10)
    assert.is_table(l, procs.read_file(ferry.log))
    assert.equal("info", l.level)
    local seen = {}
    for _ = 1, 6 do
      local status, _, px = get(F, base .. "/")
      assert.equal(200, status)
      seen[px] = (seen[px] or 0) + 1
    end
    assert.equal(3, seen.live)
    assert.equal(3, seen.hung)
  end)
end)

-- A TCP server that accepts and resets each connection at once (RST:
-- SO_LINGER with a zero timeout), in its own LuaJIT process.
local RESETTER = [[
local socket = require("socket")
local server = assert(socket.bind("127.0.0.1", tonumber(arg[1])))
while true do
  local c = server:accept()
  if c then
    c:setoption("linger", { on = true, timeout = 0 })
    c:close()
  end
end
]]

describe("an upstream that resets connections", function()
  local origin, live, rst, ferry
  local O, LIVE, RST = procs.free_port(), procs.free_port(), procs.free_port()
  local F, F_ONLY = procs.free_port(), procs.free_port()
  local base = "http://127.0.0.1:" .. O
  local RST_SOCKS, RST_HTTP = "socks5://127.0.0.1:" .. RST, "http://127.0.0.1:" .. RST

  setup(function()
    local path = procs.write_file(string.format("%s/resetter-%d.lua", procs.tmp,
      math.random(1, 1e9)), RESETTER)
    origin = procs.origin(O)
    live = procs.microsocks(LIVE)
    rst = procs.spawn("resetter", "luajit " .. path .. " " .. RST)
    assert(procs.wait_port(RST), "resetter did not start:\n" .. procs.read_file(rst.log))
    -- Passive health only, with a long trial interval: what is down stays down.
    ferry = procs.ferry(string.format([[
listen { name = "main", addr = "127.0.0.1:%d" }
listen { name = "only", addr = "127.0.0.1:%d" }
pool "main" { strategy = "round_robin", retries = 2, health = { interval = 60, fall = 2 },
  proxies = { { url = "%s", id = "rst-socks" }, { url = "%s", id = "rst-http" },
              { url = "socks5://127.0.0.1:%d", id = "live" } } }
pool "only" { retries = 1, proxies = { { url = "%s", id = "rst-only" } } }
route(function(req) return req.listener end)
]], F, F_ONLY, RST_SOCKS, RST_HTTP, LIVE, RST_SOCKS),
      { F, F_ONLY })
  end)

  teardown(function()
    if ferry then procs.stop_ferry(ferry) end
    for _, p in pairs { origin, live, rst } do procs.stop(p) end
  end)

  it("fails each request over to a working proxy and marks the resetter down", function()
    local n = 0 -- requests sent, each ends with an access line
    repeat
      local status, body, px = get(F, base .. "/")
      assert.equal(200, status)
      assert.equal("hello from origin\n", body)
      assert.equal("live", px)
      n = n + 1
    until (#lines_with(ferry, "FERRY-6001", "proxy rst-socks ") > 0 and
           #lines_with(ferry, "FERRY-6001", "proxy rst-http ") > 0) or n >= 10
    for label, url in pairs { ["rst-socks"] = RST_SOCKS, ["rst-http"] = RST_HTTP } do
      local down = wait_line(ferry, "FERRY-6001", "proxy " .. label .. " ", 1)
      assert.is_table(down, label .. ":\n" .. procs.read_file(ferry.log))
      assert.equal(url, down.proxy)
      assert.matches("connection reset", down.msg)
      -- Each failed attempt: warn, a 3xxx code, "reset" as its kind.
      local attempts = about_proxy(ferry, url)
      local failed = 0
      for _, l in ipairs(attempts) do
        if l.code ~= "FERRY-6001" then
          assert.matches("^FERRY%-300[25]$", l.code)
          assert.matches("failed: reset$", l.msg)
          failed = failed + 1
        end
      end
      assert.equal(2, failed, label) -- fall = 2
    end
    -- Down: the next requests go straight to the live proxy.
    local before = #about_proxy(ferry, RST_SOCKS) + #about_proxy(ferry, RST_HTTP)
    for _ = 1, 10 do
      local status, _, px = get(F, base .. "/")
      assert.equal(200, status)
      assert.equal("live", px)
    end
    -- Once every request's access line is out, so are its attempts'.
    assert.is_table(wait_line(ferry, "FERRY-0200", nil, 5, n + 10), procs.read_file(ferry.log))
    assert.equal(before, #about_proxy(ferry, RST_SOCKS) + #about_proxy(ferry, RST_HTTP))
  end)

  it("answers a coded 502 when the only proxy resets", function()
    local status, body, headers = procs.curl { proxy = via(F_ONLY), url = base .. "/" }
    assert.equal(502, status)
    local code = headers:match("X%-Ferry%-Error: (FERRY%-%d+)")
    assert.is_truthy(code == "FERRY-3002" or code == "FERRY-3005", headers)
    assert.equal(code, require("cjson").decode(body).error)
    assert.is_true(procs.alive(ferry))
  end)
end)

describe("the exchanges example", function()
  local function run(args, dir, envs)
    local out = procs.tmp .. "/cli-" .. math.random(1, 1e9)
    local ok, _, code = os.execute((dir and ("cd " .. procs.quote(dir) .. " && ") or "") ..
      (envs and (envs .. " ") or "") .. procs.quote(procs.bin) .. " " .. args .. " >" .. out .. " 2>&1")
    local text = procs.read_file(out)
    os.remove(out)
    if type(ok) == "number" then code = ok / 256 end -- LuaJIT returns the raw status
    return code, text
  end

  it("passes ferry check, with its scripts, from any directory", function()
    local code, out = run("check -c examples/exchanges.lua", procs.root)
    assert.equal(0, code, out)
    assert.matches("exchanges%.lua: ok", out)
    local code2, out2 = run("check -c " .. procs.quote(procs.root .. "/examples/exchanges.lua"),
      procs.tmp)
    assert.equal(0, code2, out2)
  end)

  it("with FERRY_CA naming a CA of ferry's own, intercepts bybit", function()
    local ca = string.format("%s/example-ca-%d", procs.tmp, math.random(1, 1e9))
    local code, out = run("ca init " .. procs.quote(ca))
    assert.equal(0, code, out)
    code, out = run("check -c examples/exchanges.lua", procs.root)
    assert.equal(0, code, out)
    -- With the CA the config loads it; a CA directory without the files fails.
    code, out = run("check -c " .. procs.quote(procs.root .. "/examples/exchanges.lua"), nil,
      "FERRY_CA=" .. procs.quote(ca))
    assert.equal(0, code, out)
    code, out = run("check -c " .. procs.quote(procs.root .. "/examples/exchanges.lua"), nil,
      "FERRY_CA=" .. procs.quote(ca .. "/missing"))
    assert.equal(1, code, out)
    assert.matches("ca%.crt", out)
  end)

  -- A copy of the example, in a directory of its own, edited by `edit`.
  local function copy(edit_config, edit_script)
    local dir = string.format("%s/example-%d", procs.tmp, math.random(1, 1e9))
    mkdir(dir .. "/exchanges")
    local cfg = procs.read_file(procs.root .. "/examples/exchanges.lua")
    procs.write_file(dir .. "/exchanges.lua", edit_config and edit_config(cfg) or cfg)
    for _, name in ipairs { "binance", "bybit", "okx" } do
      local text = procs.read_file(procs.root .. "/examples/exchanges/" .. name .. ".lua")
      assert.is_true(#text > 0, name)
      if edit_script then text = edit_script(name, text) end
      procs.write_file(dir .. "/exchanges/" .. name .. ".lua", text)
    end
    return dir
  end

  it("check loads each exchange script: a broken one fails it, named", function()
    local dir = copy(nil, function(name, text)
      return name == "okx" and text .. "\nreturn {\n" or text
    end)
    local code, out = run("check -c " .. procs.quote(dir .. "/exchanges.lua"))
    assert.equal(1, code, out)
    assert.matches("exchanges/okx%.lua", out)
    assert.matches('exchange "okx"', out)
  end)

  it("runs, and its front listener serves a request", function()
    local O = procs.free_port()
    local ports = { procs.free_port(), procs.free_port(), procs.free_port(), procs.free_port() }
    local dir = copy(function(cfg)
      for i, p in ipairs(ports) do cfg = cfg:gsub(":" .. (8089 + i) .. "%f[%D]", ":" .. p) end
      return cfg
    end)
    local text = procs.read_file(dir .. "/exchanges.lua")
    assert.is_nil(text:find("809%d"), "a port of the example was not replaced")
    local origin = procs.origin(O)
    local f = procs.spawn("ferry", procs.quote(procs.bin) .. " -c " ..
      procs.quote(dir .. "/exchanges.lua"))
    local up = true
    for _, p in ipairs(ports) do up = up and procs.wait_port(p) end
    local status, body = procs.curl { proxy = via(ports[1]), url = "http://127.0.0.1:" .. O .. "/" }
    local alive = procs.alive(f)
    procs.stop_ferry(f)
    procs.stop(origin)
    assert.is_true(up, procs.read_file(f.log))
    assert.equal(200, status, procs.read_file(f.log))
    assert.equal("hello from origin\n", body)
    assert.is_true(alive)
    assert.equal(0, #lines_with(f, "FERRY-4001"))
  end)
end)
