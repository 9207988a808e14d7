-- Load balancing across a pool's members, against the real daemon and
-- real members (spec/helpers/lb_member.py, which answer with their name
-- and count what they serve): slow start after a member comes back,
-- max_ejected keeping members eligible when too many fail, backups used
-- only while no primary can serve, and the http health check that takes
-- a member down on a 500 and brings it back.
local procs = require("procs")
local socket = require("socket")

-- Members by name into M, all served by one process (a Python start is
-- slow on a busy machine); returns that process.
local function members(M, names)
  local args = {}
  for _, name in ipairs(names) do
    M[name] = { port = procs.free_port(), name = name }
    args[#args + 1] = M[name].port .. ":" .. name
  end
  local proc = procs.spawn("lb-members", "python3 " .. procs.root ..
    "/spec/helpers/lb_member.py " .. table.concat(args, " "))
  for _, name in ipairs(names) do
    assert(procs.wait_port(M[name].port, 30), "members did not start:\n" ..
      procs.read_file(proc.log))
  end
  return proc
end

-- A control request straight to a member (never counted by it).
local function control(m, target)
  local status, body = procs.curl { url = "http://127.0.0.1:" .. m.port .. target, max_time = 5 }
  assert.equal(200, status)
  return body
end

local function served(m)
  return tonumber(control(m, "/_count"):match('"n": (%d+)'))
end

describe("load balancing", function()
  local ferry, A = nil, procs.free_port()
  local F = { ss = procs.free_port(), ej = procs.free_port(), bk = procs.free_port() }
  local M = {}
  local names = { "ssa", "ssb", "ej1", "ej2", "ej3", "ej4", "bk1", "bk2", "bk3" }
  local sock = string.format("%s/lb-%d.sock", procs.tmp, A)

  -- One console line (`ferry console -e`); its output.
  local function console(expr)
    local out = string.format("%s/lb-console-%d.out", procs.tmp, A)
    os.execute(procs.quote(procs.bin) .. " console -s " .. procs.quote(sock) .. " -e " ..
      procs.quote(expr) .. " >" .. out .. " 2>&1 </dev/null")
    local text = procs.read_file(out)
    os.remove(out)
    return text
  end

  setup(function()
    M.proc = members(M, names)
    local function url(n) return "http://127.0.0.1:" .. M[n].port end
    local check = [[health = { check = "http", url = "http://lb.test/health", expect = { 200 },
      interval = 0.25, timeout = 0.25, rise = 1, fall = 2 }]]
    ferry = procs.ferry(string.format([[
listen { name = "ss", addr = "127.0.0.1:%d" }
listen { name = "ej", addr = "127.0.0.1:%d" }
listen { name = "bk", addr = "127.0.0.1:%d" }
admin { addr = "127.0.0.1:%d", socket = "%s" }
pool "ss" { strategy = "round_robin", retries = 0, slowstart = 4, %s,
  proxies = { { url = "%s", id = "ssa" }, { url = "%s", id = "ssb" } } }
pool "ej" { strategy = "round_robin", retries = 0, max_ejected = "50%%", %s,
  proxies = { { url = "%s", id = "ej1" }, { url = "%s", id = "ej2" }, { url = "%s", id = "ej3" },
              { url = "%s", id = "ej4" } } }
pool "bk" { strategy = "round_robin", retries = 0, %s,
  proxies = { { url = "%s", id = "bk1" }, { url = "%s", id = "bk2" },
              { url = "%s", id = "bk3", backup = true } } }
route(function(req) return req.listener end)
]], F.ss, F.ej, F.bk, A, sock, check, url("ssa"), url("ssb"), check, url("ej1"), url("ej2"),
      url("ej3"), url("ej4"), check, url("bk1"), url("bk2"), url("bk3")),
      { F.ss, F.ej, F.bk, A })
  end)

  teardown(function()
    if ferry then procs.stop_ferry(ferry) end
    if M.proc then procs.stop(M.proc) end
  end)

  local function metric(name, labels) return procs.metric(A, name, labels) end

  local function up(pool, id)
    return metric("ferry_proxy_up", 'proxy="' .. id .. '",pool="' .. pool .. '"')
  end

  -- Set a member's health answer and wait until ferry sees it (bounded).
  local function health(pool, id, status)
    control(M[id], "/_health?status=" .. status)
    local want = status == 200 and 1 or 0
    assert.truthy(procs.wait_for(function() return up(pool, id) == want end, 10, 0.05),
      id .. " never went " .. (want == 1 and "up" or "down"))
  end

  -- n requests through ferry's listener for pool on one keep-alive
  -- connection; returns the count per member name (the answers' bodies).
  local function burst(pool, n)
    local c = assert(socket.connect("127.0.0.1", F[pool]))
    c:settimeout(5)
    local counts = {}
    for i = 1, n do
      assert(c:send("GET http://lb.test/x?i=" .. i .. " HTTP/1.1\r\nHost: lb.test\r\n\r\n"))
      local status, body = procs.read_response(c)
      assert.equal(200, status)
      counts[body] = (counts[body] or 0) + 1
    end
    c:close()
    return counts
  end

  it("ramps a returning member's share over slowstart, not at ferry start", function()
    assert.truthy(procs.wait_for(function() return up("ss", "ssa") == 1 and up("ss", "ssb") == 1 end))
    -- Up since ferry started: full weight at once, round robin alternates.
    assert.equal(1, metric("ferry_pool_member_effective_weight", 'pool="ss",proxy="ssb"'))
    local c = burst("ss", 40)
    assert.equal(20, c.ssa)
    assert.equal(20, c.ssb)
    health("ss", "ssb", 500)
    assert.is_nil(burst("ss", 10).ssb)
    local before = served(M.ssb)
    health("ss", "ssb", 200)
    -- Right after it came back: a small share, growing.
    local first = burst("ss", 20)
    local w = metric("ferry_pool_member_effective_weight", 'pool="ss",proxy="ssb"')
    assert.truthy(w and w < 1, "effective weight while ramping: " .. tostring(w))
    assert.truthy(procs.wait_for(function()
      return metric("ferry_pool_member_effective_weight", 'pool="ss",proxy="ssb"') == 1
    end, 10, 0.1), "the ramp never ended")
    local last = burst("ss", 40)
    local share_first, share_last = (first.ssb or 0) / 20, (last.ssb or 0) / 40
    assert.truthy(share_first < share_last,
      string.format("share while ramping %.2f, after %.2f", share_first, share_last))
    assert.equal(20, last.ssb)
    -- The member itself counted what the bodies say it served.
    assert.equal(before + (first.ssb or 0) + last.ssb, served(M.ssb))
  end)

  it("keeps the members ejected last eligible past max_ejected", function()
    for _, id in ipairs { "ej1", "ej2", "ej3", "ej4" } do
      assert.truthy(procs.wait_for(function() return up("ej", id) == 1 end))
    end
    -- Three of four fail, one after the other: the cap (50 % = 2) keeps
    -- the third, ejected last, in rotation.
    health("ej", "ej1", 500)
    health("ej", "ej2", 500)
    health("ej", "ej3", 500)
    local c = burst("ej", 40)
    assert.is_nil(c.ej1)
    assert.is_nil(c.ej2)
    assert.equal(20, c.ej3)
    assert.equal(20, c.ej4)
    assert.equal(3, metric("ferry_pool_ejected", 'pool="ej",tier="primary"'))
    assert.equal(1, metric("ferry_pool_ejected_spared", 'pool="ej",tier="primary"'))
    assert.matches("FERRY%-3120", procs.read_file(ferry.log))
    -- Two failing: within the cap, both out.
    health("ej", "ej3", 200)
    c = burst("ej", 40)
    assert.is_nil(c.ej1)
    assert.is_nil(c.ej2)
    assert.equal(20, c.ej3)
    assert.equal(20, c.ej4)
    assert.equal(0, metric("ferry_pool_ejected_spared", 'pool="ej",tier="primary"'))
    health("ej", "ej1", 200)
    health("ej", "ej2", 200)
    c = burst("ej", 40)
    for _, id in ipairs { "ej1", "ej2", "ej3", "ej4" } do assert.equal(10, c[id]) end
  end)

  it("uses the backup only while no primary can serve, and gives it up when one returns", function()
    for _, id in ipairs { "bk1", "bk2", "bk3" } do
      assert.truthy(procs.wait_for(function() return up("bk", id) == 1 end))
    end
    local c = burst("bk", 30)
    assert.is_nil(c.bk3)
    assert.equal(15, c.bk1)
    assert.equal(15, c.bk2)
    assert.equal(0, metric("ferry_pool_backup_serving", 'pool="bk"'))
    health("bk", "bk1", 500)
    c = burst("bk", 20)
    assert.equal(20, c.bk2) -- one primary left: still no backup
    health("bk", "bk2", 500)
    local before = served(M.bk3)
    c = burst("bk", 20)
    assert.equal(20, c.bk3)
    assert.equal(before + 20, served(M.bk3))
    assert.equal(1, metric("ferry_pool_backup_serving", 'pool="bk"'))
    assert.matches("FERRY%-3121", procs.read_file(ferry.log))
    health("bk", "bk1", 200)
    c = burst("bk", 20)
    assert.equal(20, c.bk1)
    assert.is_nil(c.bk3)
    assert.equal(0, metric("ferry_pool_backup_serving", 'pool="bk"'))
    assert.matches("FERRY%-3122", procs.read_file(ferry.log))
    health("bk", "bk2", 200)
  end)

  it("shows the ramp, the ejections and the backups in the console", function()
    local out = console('pool.stats("bk")')
    assert.matches("backups%s+1", out)
    assert.matches("backups serving%s+no", out)
    assert.matches("ejected %(down or breaker open%)%s+0", out)
    out = console('pool.stats("ss")')
    assert.matches("slow start %(s%)%s+4", out)
    assert.matches("ramping[^\n]*%s+%-", out)
    health("ss", "ssa", 500)
    health("ss", "ssa", 200)
    out = console('proxy.health("ssa")')
    assert.matches("slow start %(ramp, effective weight%)%s+ss %d+%% %(weight [%d.]+%)", out)
    out = console('pool.stats("ss")')
    assert.matches("ramping%s+[^\n]*ssa %d+%% %(weight", out)
    -- Re-enabled: a return too.
    assert.truthy(procs.wait_for(function()
      return metric("ferry_pool_member_effective_weight", 'pool="ss",proxy="ssb"') == 1
    end, 10, 0.1))
    console('proxy.disable("ssb")')
    console('proxy.enable("ssb")')
    local w = metric("ferry_pool_member_effective_weight", 'pool="ss",proxy="ssb"')
    assert.truthy(w and w < 1, "effective weight after enable: " .. tostring(w))
  end)
end)

describe("load balancing backends", function()
  local ferry, A, R = nil, procs.free_port(), procs.free_port()
  local M = {}
  local names = { "bea", "beb", "bec", "bed" }

  setup(function()
    M.proc = members(M, names)
    local function url(n) return "http://127.0.0.1:" .. M[n].port end
    ferry = procs.ferry(string.format([[
listen { name = "site", protocol = "reverse", addr = "127.0.0.1:%d", pool = "app" }
admin { addr = "127.0.0.1:%d" }
pool "app" { strategy = "round_robin", retries = 0, slowstart = 2,
  health = { check = "http", path = "/health", expect = { 200 }, host = "health.test",
             interval = 0.25, timeout = 0.25, rise = 1, fall = 2 },
  backends = { { url = "%s", id = "bea" }, { url = "%s", id = "beb" },
               { url = "%s", id = "bec", backup = true } } }
pool "plain" { health = { check = "http", path = "/health", interval = 0.25, timeout = 0.25 },
  backends = { { url = "%s", id = "bed" } } }
]], R, A, url("bea"), url("beb"), url("bec"), url("bed")), { R, A })
  end)

  teardown(function()
    if ferry then procs.stop_ferry(ferry) end
    if M.proc then procs.stop(M.proc) end
  end)

  local function up(id)
    return procs.metric(A, "ferry_proxy_up", 'proxy="' .. id .. '",pool="' ..
      (id == "bed" and "plain" or "app") .. '",role="backend"')
  end

  local function health(id, status)
    control(M[id], "/_health?status=" .. status)
    local want = status == 200 and 1 or 0
    assert.truthy(procs.wait_for(function() return up(id) == want end, 10, 0.05),
      id .. " never went " .. (want == 1 and "up" or "down"))
  end

  local function burst(n)
    local c = assert(socket.connect("127.0.0.1", R))
    c:settimeout(5)
    local counts = {}
    for i = 1, n do
      assert(c:send("GET /x?i=" .. i .. " HTTP/1.1\r\nHost: site.test\r\n\r\n"))
      local status, body = procs.read_response(c)
      assert.equal(200, status)
      counts[body] = (counts[body] or 0) + 1
    end
    c:close()
    return counts
  end

  it("checks each backend with a GET of path: down on a 500, up again on a 200", function()
    for _, id in ipairs(names) do
      assert.truthy(procs.wait_for(function() return up(id) == 1 end), id .. " never up")
    end
    -- The probe asked the backend itself, in origin form, with the check's
    -- Host, else the backend's own host:port.  A backend counts as up
    -- before its first probe, so wait (bounded) for that probe to arrive.
    assert.truthy(procs.wait_for(function()
      return control(M.bea, "/_count"):find('"host": "health.test"', 1, true)
    end), control(M.bea, "/_count"))
    assert.truthy(procs.wait_for(function()
      return control(M.bed, "/_count"):find('"host": "127.0.0.1:' .. M.bed.port .. '"', 1, true)
    end), control(M.bed, "/_count"))
    local c = burst(20)
    assert.equal(10, c.bea)
    assert.equal(10, c.beb)
    assert.is_nil(c.bec)
    health("bea", 500)
    c = burst(20)
    assert.equal(20, c.beb)
    health("beb", 500)
    c = burst(20)
    assert.equal(20, c.bec) -- the backup, while no primary is up
    health("bea", 200)
    -- Back, ramping (slowstart), and the only primary up: it serves all.
    c = burst(20)
    assert.equal(20, c.bea)
    assert.is_nil(c.bec)
    health("beb", 200)
  end)
end)
