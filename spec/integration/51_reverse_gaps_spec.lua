-- The reverse listener under the failures a site meets, against the real
-- daemon and real backends (spec/helpers/gaps_backend.py counts the
-- connections it accepts and the requests it serves; lenient_origin.py
-- executes whatever framing it gets): a backend killed and another one
-- stopped under a loop of GETs with no error at the client, breaker
-- transitions seen in /metrics, kept connections counted at the backend,
-- bodies longer or shorter than their Content-Length on kept connections,
-- smuggling shapes that never reach a lenient backend, 2 000 concurrent
-- kept client connections, and 100 MB up and down with checksums.
local procs = require("procs")
local socket = require("socket")
local cjson = require("cjson.safe")
local tls_origin = require("tls_origin")

local q = procs.quote

local function sh(cmd)
  local p = io.popen(cmd .. " 2>&1; echo \"rc=$?\"")
  local out = p:read("*a")
  p:close()
  return out
end

-- The backend's own /_count answers (it is ours, not another process's).
local function control_ok(b)
  local status, body = procs.curl { url = "http://127.0.0.1:" .. b.port .. "/_count", max_time = 5 }
  return status == 200 and body:find('"peak"', 1, true) ~= nil
end

-- Backends by name into B (port, name), all in one process; started
-- again on other ports when one of them was taken meanwhile.
local function backends(B, names)
  for _ = 1, 3 do
    local args = {}
    for _, name in ipairs(names) do
      B[name] = { port = procs.free_port(), name = name }
      args[#args + 1] = B[name].port .. ":" .. name
    end
    local proc = procs.spawn("gaps-backend", "python3 " .. procs.root ..
      "/spec/helpers/gaps_backend.py " .. table.concat(args, " "))
    local up = true
    for _, name in ipairs(names) do
      up = up and procs.wait_port(B[name].port, 30)
    end
    -- Bound: it binds every port before serving any, or exits.
    if up and procs.wait_for(function()
      return control_ok(B[names[1]]) or not procs.alive(proc)
    end, 10) and procs.alive(proc) then
      return proc
    end
    procs.stop(proc)
  end
  error("gaps_backend.py did not start")
end

local function control(b, target)
  local status, body = procs.curl { url = "http://127.0.0.1:" .. b.port .. target, max_time = 5 }
  assert.equal(200, status, target)
  return body
end

local function counts(b)
  return assert(cjson.decode(control(b, "/_count")))
end

-- One request on the kept LuaSocket connection c: status, body.
local function ask(c, target, host)
  assert(c:send("GET " .. target .. " HTTP/1.1\r\nHost: " .. (host or "site.test") .. "\r\n\r\n"))
  return procs.read_response(c)
end

local function connect(port)
  local c = assert(socket.connect("127.0.0.1", port))
  c:settimeout(10)
  return c
end

-- Every sample of a metric family whose labels contain all of `has`.
local function samples(admin, family, has)
  local status, body = procs.curl { url = "http://127.0.0.1:" .. admin .. "/metrics", max_time = 5 }
  assert.equal(200, status)
  local out = {}
  for labels, v in body:gmatch("\n" .. family .. "{([^}]*)} (%S+)") do
    local ok = true
    for _, h in ipairs(has) do ok = ok and labels:find(h, 1, true) ~= nil end
    if ok then out[#out + 1] = tonumber(v) end
  end
  return out
end

describe("reverse listener: a backend killed and one stopped under load", function()
  local B, procs_by = {}, {}
  local F, A, FT = procs.free_port(), procs.free_port(), procs.free_port()
  local pki = tls_origin.pki(string.format("%s/gaps-pki-%d", procs.tmp, F), { "localhost" })
  local ferry

  setup(function()
    -- One process per backend: each can be killed or stopped alone.
    for _, name in ipairs { "ka", "kb", "kc" } do
      local one = {}
      procs_by[name] = backends(one, { name })
      B[name] = one[name]
    end
    ferry = procs.ferry(string.format([[
listen { name = "site", protocol = "reverse", addr = "127.0.0.1:%d", pool = "app" }
listen { name = "tls-site", protocol = "reverse", addr = "127.0.0.1:%d", pool = "app",
         tls = { cert = "%s", key = "%s" } }
admin { addr = "127.0.0.1:%d" }
pool "app" { strategy = "round_robin", timeouts = { first_byte = 1 },
  health = { check = "http", path = "/_health", interval = 0.5, timeout = 0.5, rise = 1, fall = 2 },
  backends = { { url = "http://127.0.0.1:%d", id = "ka" }, { url = "http://127.0.0.1:%d", id = "kb" },
               { url = "http://127.0.0.1:%d", id = "kc" } } }
]], F, FT, pki.cert, pki.key, A, B.ka.port, B.kb.port, B.kc.port), { F, FT, A })
  end)

  teardown(function()
    if ferry then procs.stop_ferry(ferry) end
    for _, p in pairs(procs_by) do procs.stop(p) end
  end)

  it("answers every idempotent GET (SIGKILL of one backend, SIGSTOP of another)", function()
    for _, id in ipairs { "ka", "kb", "kc" } do
      assert.truthy(procs.wait_for(function()
        return procs.metric(A, "ferry_proxy_up", 'proxy="' .. id .. '",pool="app",role="backend"') == 1
      end, 10), id .. " never up")
    end
    local clients = { connect(F), connect(F), connect(F) }
    local by, errors = {}, {}
    for i = 1, 150 do
      if i == 30 then procs.signal(procs_by.ka, "KILL") end
      if i == 70 then procs.signal(procs_by.kb, "STOP") end
      -- Kept client connections and new ones alike, plain and over TLS.
      local status, body
      if i % 4 == 0 then
        status, body = procs.curl { url = "http://127.0.0.1:" .. F .. "/x?i=" .. i, max_time = 15 }
      elseif i % 4 == 2 then
        status, body = procs.curl { url = "https://localhost:" .. FT .. "/x?i=" .. i, max_time = 15,
          flags = "--cacert " .. q(pki.ca) .. " --resolve localhost:" .. FT .. ":127.0.0.1" }
      else
        local c = clients[i % 3 + 1]
        status, body = ask(c, "/x?i=" .. i)
      end
      if status ~= 200 then errors[#errors + 1] = i .. ":" .. tostring(status) end
      by[body or "?"] = (by[body or "?"] or 0) + 1
    end
    for _, c in ipairs(clients) do c:close() end
    procs.signal(procs_by.kb, "CONT")
    assert.same({}, errors)
    -- Each backend served while it could; the survivor took the rest.
    assert.is_true((by.ka or 0) >= 5 and (by.kb or 0) >= 5, cjson.encode(by))
    assert.is_true((by.kc or 0) >= 60, cjson.encode(by))
    assert.equal(150, (by.ka or 0) + (by.kb or 0) + (by.kc or 0))
    -- The stopped backend's timeouts were retried, and counted.
    assert.is_true(#samples(A, "ferry_retry_reasons_total", { 'pool="app"' }) >= 1)
  end)
end)

describe("reverse listener: an https backend killed and one stopped under load", function()
  local O, P = {}, {}
  local F, FT, A = procs.free_port(), procs.free_port(), procs.free_port()
  local pki = tls_origin.pki(string.format("%s/gaps-pki2-%d", procs.tmp, F), { "localhost" })
  local ferry

  setup(function()
    for _, name in ipairs { "ta", "tb", "tc" } do
      O[name] = procs.free_port()
      P[name] = tls_origin.start(O[name], pki.cert, pki.key)
    end
    ferry = procs.ferry(string.format([[
listen { name = "site", protocol = "reverse", addr = "127.0.0.1:%d", pool = "tls" }
listen { name = "tls-site", protocol = "reverse", addr = "127.0.0.1:%d", pool = "tls",
         tls = { cert = "%s", key = "%s" } }
admin { addr = "127.0.0.1:%d" }
pool "tls" { strategy = "round_robin", timeouts = { first_byte = 1 }, tls = { ca = "%s" },
  health = { check = "http", path = "/ok", interval = 1, timeout = 0.5, rise = 1, fall = 2 },
  backends = { { url = "https://localhost:%d", id = "ta" }, { url = "https://localhost:%d", id = "tb" },
               { url = "https://localhost:%d", id = "tc" } } }
]], F, FT, pki.cert, pki.key, A, pki.ca, O.ta, O.tb, O.tc), { F, FT, A })
  end)

  teardown(function()
    if ferry then procs.stop_ferry(ferry) end
    for _, p in pairs(P) do procs.stop(p) end
  end)

  it("answers every GET through plain and TLS listeners (SIGKILL, SIGSTOP)", function()
    for _, id in ipairs { "ta", "tb", "tc" } do
      assert.truthy(procs.wait_for(function()
        return procs.metric(A, "ferry_proxy_up", 'proxy="' .. id .. '",pool="tls",role="backend"') == 1
      end, 10), id .. " never up")
    end
    local bad = {}
    for round = 1, 30 do
      if round == 6 then procs.signal(P.ta, "KILL") end
      if round == 14 then procs.signal(P.tb, "STOP") end
      -- Five requests on one kept client connection (curl reuses it).
      local urls = {}
      for k = 1, 5 do
        local n = round * 10 + k
        urls[#urls + 1] = "-o /dev/null " .. q((round % 2 == 0
          and ("https://localhost:" .. FT) or ("http://127.0.0.1:" .. F)) .. "/ok?i=" .. n)
      end
      local out = sh("curl -s -S --max-time 30 --cacert " .. q(pki.ca) .. " --resolve localhost:" ..
        FT .. ":127.0.0.1 -w '%{http_code} %{num_connects}\\n' " .. table.concat(urls, " "))
      local codes = 0
      for code in out:gmatch("(%d%d%d) %d+\n") do
        codes = codes + 1
        if code ~= "200" then bad[#bad + 1] = round .. ":" .. code end
      end
      if codes ~= 5 then bad[#bad + 1] = round .. ": " .. out end
    end
    procs.signal(P.tb, "CONT")
    assert.same({}, bad)
    -- The survivor served, over kept TLS connections (health probes
    -- count at the backend too).
    local status, stats = procs.curl { url = "https://localhost:" .. O.tc .. "/stats",
      flags = "--cacert " .. q(pki.ca) .. " --resolve localhost:" .. O.tc .. ":127.0.0.1" }
    assert.equal(200, status)
    local conns, reqs = stats:match("^connections=(%d+) requests=(%d+)")
    assert.is_true(tonumber(reqs) >= 60, stats)
    assert.is_true(tonumber(conns) * 2 <= tonumber(reqs), stats)
  end)
end)

describe("reverse listener: backends", function()
  local B = {}
  local F, A, L = procs.free_port(), procs.free_port(), procs.free_port()
  local LP, REFUSED = procs.free_port(), procs.free_port()
  local lenient_log = string.format("%s/gaps-lenient-%d.log", procs.tmp, LP)
  local ferry, proc, lenient

  setup(function()
    proc = backends(B, { "ra", "rb", "ba", "bb", "cl", "big", "m1", "m2", "ao" })
    lenient = procs.spawn("lenient", "python3 " .. procs.root .. "/spec/helpers/lenient_origin.py " ..
      LP .. " " .. lenient_log)
    assert(procs.wait_port(LP, 30), "lenient origin did not start")
    local function u(n) return "http://127.0.0.1:" .. B[n].port end
    ferry = procs.ferry(string.format([[
listen { name = "site", protocol = "reverse", addr = "127.0.0.1:%d", pool = "reuse" }
listen { name = "len", protocol = "reverse", addr = "127.0.0.1:%d", pool = "lenient" }
admin { addr = "127.0.0.1:%d" }
pool "reuse" { strategy = "round_robin", backends = { "%s", "%s" } }
pool "brk" { strategy = "round_robin", retries = 0,
  breaker = { policy = "consecutive", failures = 3, cooldown = 1, max_cooldown = 1 },
  backends = { { url = "%s", id = "ba" }, { url = "%s", id = "bb" } } }
pool "cl" { retries = 0, backends = { "%s" }, cache = { size = "1MB", ttl = 60 } }
pool "big" { backends = { "%s" } }
timeouts { request = 300 }
pool "many" { strategy = "round_robin", connections = { max = 300, queue = 4000, queue_timeout = 60 },
  backends = { { url = "%s", id = "m1" }, { url = "%s", id = "m2" } } }
pool "lenient" { backends = { "http://127.0.0.1:%d" } }
pool "fill" { backends = { "http://127.0.0.1:%d" },
  cache = { size = "1MB", max_object = "64KB", ttl = 60 } }
pool "queue" { retries = 0, connections = { max = 1, queue = 1, queue_timeout = 10 },
  backends = { "http://127.0.0.1:%d" } }
pool "allopen" { retries = 0, all_down = "fail",
  breaker = { policy = "consecutive", failures = 2, cooldown = 60 },
  backends = { { url = "http://127.0.0.1:%d", id = "ao" } } }
pool "one" { strategy = "round_robin", retries = 0,
  backends = { "http://127.0.0.1:%d", "http://127.0.0.1:%d" } }
route(function(req)
  if req.host == "brk.test" then return "brk" end
  if req.host == "cl.test" then return "cl" end
  if req.host == "big.test" then return "big" end
  if req.host == "many.test" then return "many" end
  if req.host == "one.test" then return "one" end
  if req.host == "fill.test" then return "fill" end
  if req.host == "queue.test" then return "queue" end
  if req.host == "allopen.test" then return "allopen" end
end)
]], F, L, A, u("ra"), u("rb"), u("ba"), u("bb"), u("cl"), u("big"), u("m1"), u("m2"), LP,
      B.big.port, B.big.port, B.ao.port, REFUSED, B.big.port),
      { F, L, A })
  end)

  teardown(function()
    if ferry then procs.stop_ferry(ferry) end
    procs.stop(proc)
    procs.stop(lenient)
  end)

  it("reuses kept backend connections: accepted connections far fewer than requests", function()
    -- 300 requests from 60 client connections, one after the other.
    for k = 1, 60 do
      local c = connect(F)
      for i = 1, 5 do
        local status, body = ask(c, "/r?k=" .. k .. "&i=" .. i)
        assert.equal(200, status)
        assert.truthy(body == "ra" or body == "rb", body)
      end
      c:close()
    end
    local a, b = counts(B.ra), counts(B.rb)
    assert.equal(300, a.requests + b.requests)
    assert.equal(150, a.requests)
    -- Sequential clients: one kept connection per backend serves them all.
    assert.is_true(a.accepts + b.accepts <= 4, cjson.encode { a, b })
    local reused = samples(A, "ferry_proxy_connections_reused_total", { 'pool="reuse"' })
    local sum = 0
    for _, v in ipairs(reused) do sum = sum + v end
    assert.is_true(sum >= 290, "reused " .. sum)
  end)

  it("opens a backend's breaker, half-opens it after cooldown and closes it (metrics)", function()
    local function state(id)
      local s = samples(A, "ferry_proxy_breaker_state", { 'proxy="' .. id .. '"', 'pool="brk"' })
      return s[1] or 0
    end
    local c = connect(F)
    assert.equal(0, state("ba"))
    control(B.ba, "/_mode?m=503")
    -- closed -> open: three 503s in a row from ba (round robin: ~6 requests).
    for i = 1, 20 do
      ask(c, "/b?i=" .. i, "brk.test")
      if state("ba") == 1 then break end
    end
    assert.equal(1, state("ba"))
    -- Open: ba gets nothing, every answer is bb's.
    local before = counts(B.ba).requests
    for i = 1, 10 do
      local status, body = ask(c, "/o?i=" .. i, "brk.test")
      assert.equal(200, status)
      assert.equal("bb", body)
    end
    assert.equal(before, counts(B.ba).requests)
    -- After the cooldown: half-open (a trial is allowed).
    control(B.ba, "/_mode?m=200")
    assert.truthy(procs.wait_for(function() return state("ba") == 2 end, 10, 0.1),
      "never half-open: " .. state("ba"))
    -- The trial succeeds: closed, and ba serves again.
    local seen = {}
    for i = 1, 10 do
      local status, body = ask(c, "/h?i=" .. i, "brk.test")
      assert.equal(200, status)
      seen[body] = true
    end
    c:close()
    assert.equal(0, state("ba"))
    assert.truthy(seen.ba and seen.bb)
  end)

  it("keeps a cache filled far past its size within its byte bound (entries, RSS)", function()
    local function rss()
      local kb = procs.read_file("/proc/" .. ferry.pid .. "/status"):match("VmRSS:%s*(%d+)")
      return tonumber(kb) * 1024
    end
    local c = connect(F)
    -- Warm up: buffers and pools at their working size.
    for i = 1, 200 do
      local status = ask(c, "/big?n=10000&w=" .. i, "fill.test")
      assert.equal(200, status)
    end
    local before = rss()
    local bound = 1024 * 1024
    -- 3 000 distinct 10 kB answers: 30 MB through a 1 MB cache.
    for i = 1, 3000 do
      local status, body = ask(c, "/big?n=10000&i=" .. i, "fill.test")
      assert.equal(200, status)
      assert.equal(10000, #body)
      if i % 500 == 0 then
        local bytes = procs.metric(A, "ferry_cache_bytes", 'pool="fill"')
        assert.is_true(bytes ~= nil and bytes <= bound, "cache bytes " .. tostring(bytes))
      end
    end
    -- The most recent is stored, the first long evicted.
    assert(c:send("GET /big?n=10000&i=3000 HTTP/1.1\r\nHost: fill.test\r\n\r\n"))
    local _, _, h1 = procs.read_response(c)
    assert.matches("X%-Cache: HIT", h1)
    assert(c:send("GET /big?n=10000&i=1 HTTP/1.1\r\nHost: fill.test\r\n\r\n"))
    local _, _, h2 = procs.read_response(c)
    assert.matches("X%-Cache: MISS", h2)
    c:close()
    assert.is_true(procs.metric(A, "ferry_cache_evictions_total", 'pool="fill"') >= 2800)
    assert.is_true(procs.metric(A, "ferry_cache_entries", 'pool="fill"') <= 105)
    -- ASan keeps freed memory in quarantine (hundreds of MB), so RSS says
    -- nothing about ferry's bound there; the byte and entry counts above do.
    if not procs.asan then
      local grown = rss() - before
      assert.is_true(grown < 24 * 1024 * 1024, "RSS grew by " .. grown)
    end
  end)

  it("answers 503 FERRY-3060 when a backend's connections and queue are full", function()
    local urls = {}
    for i = 1, 3 do
      urls[#urls + 1] = "-o /dev/null " .. q("http://127.0.0.1:" .. F .. "/slow?s=2&i=" .. i)
    end
    local out = sh("curl -s --no-progress-meter -Z --parallel-immediate --parallel-max 3 --max-time 30 " ..
      "-H 'Host: queue.test' -w '%{http_code} %header{x-ferry-error}\\n' " .. table.concat(urls, " "))
    local codes = {}
    for line in out:gmatch("[^\r\n]+") do
      if line:match("^%d%d%d [%w%-]*$") then codes[#codes + 1] = line end
    end
    table.sort(codes)
    -- One on the connection, one waiting in the queue, the third refused.
    assert.same({ "200 ", "200 ", "503 FERRY-3060" }, codes, out)
  end)

  -- (With the default all_down = "any" a pool whose breakers are all open
  -- still sends to one of them: that is the policy.)
  it("answers 503 FERRY-3102 once every backend's breaker is open (all_down = fail)", function()
    control(B.ao, "/_mode?m=503")
    local c = connect(F)
    for i = 1, 2 do
      local status = ask(c, "/ao?i=" .. i, "allopen.test")
      assert.equal(503, status) -- the backend's own 503s
    end
    local before = counts(B.ao).requests
    assert(c:send("GET /ao?i=3 HTTP/1.1\r\nHost: allopen.test\r\n\r\n"))
    local status, _, head = procs.read_response(c)
    c:close()
    assert.equal(503, status)
    assert.matches("X%-Ferry%-Error: FERRY%-3102", head)
    assert.equal(before, counts(B.ao).requests) -- ferry answered it alone
    control(B.ao, "/_mode?m=200")
  end)

  it("makes one try with retries = 0: a refused backend is answered 502, not retried", function()
    local codes = {}
    for i = 1, 2 do
      local c = connect(F)
      codes[#codes + 1] = ask(c, "/one?i=" .. i, "one.test")
      c:close()
    end
    table.sort(codes)
    assert.same({ 200, 502 }, codes) -- round robin: the refused one first or second
    local line
    for _, l in ipairs(procs.log_lines(ferry)) do
      if l.msg == "access" and l.status == 502 and (l.path or ""):match("^/one") then line = l end
    end
    assert(line, "no access line for the 502")
    assert.equal(1, line.attempts)
    assert.is_nil(line.retry)
  end)

  it("never hands a longer body's extra bytes to the next request on a kept connection", function()
    local c = connect(F)
    for i = 1, 10 do
      local status, body = ask(c, "/long?i=" .. i, "cl.test")
      assert.equal(200, status)
      assert.equal("long!", body)
      status, body = ask(c, "/n?i=" .. i, "cl.test")
      assert.equal(200, status)
      assert.equal("cl", body) -- never "forged"
    end
    c:close()
  end)

  it("cuts a shorter body at the client, keeps the next answer clean, stores nothing", function()
    for _ = 1, 2 do
      local c = connect(F)
      assert(c:send("GET /short HTTP/1.1\r\nHost: cl.test\r\n\r\n"))
      local line = c:receive("*l")
      assert.matches("^HTTP/1.1 200", line)
      repeat line = c:receive("*l") until line == "" or not line
      local body, err, partial = c:receive(100)
      -- The client sees the cut: fewer than 100 bytes, then the close.
      assert.is_nil(body)
      assert.equal("closed", err)
      assert.equal("0123456789", partial)
      c:close()
    end
    local before = counts(B.cl).requests
    local c = connect(F)
    local status, body = ask(c, "/n?after=short", "cl.test")
    c:close()
    assert.equal(200, status)
    assert.equal("cl", body)
    -- Both /short requests reached the backend: nothing was stored.
    assert.equal(before + 1, counts(B.cl).requests)
    local cnt = 0
    for _, l in ipairs(procs.log_lines(ferry)) do
      if l.msg == "access" and l.path == "/short" then cnt = cnt + 1 end
    end
    assert.equal(2, cnt)
  end)

  it("answers 502 for a backend that answers garbage, and the next request is clean", function()
    local c = connect(F)
    local status = ask(c, "/garbage", "cl.test")
    assert.equal(502, status)
    c:close()
    c = connect(F)
    local s2, body = ask(c, "/n?after=garbage", "cl.test")
    c:close()
    assert.equal(200, s2)
    assert.equal("cl", body)
  end)

  it("refuses smuggling shapes before a lenient backend executes a hidden request", function()
    local S = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    local shapes = {
      "POST /a HTTP/1.1\r\nHost: h\r\nContent-Length : " .. #S .. "\r\n\r\n" .. S,
      "POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n" ..
        "0\r\n\r\n" .. S,
      "POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n" ..
        "0\r\n\r\n" .. S,
      "POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nContent-Length: " .. #S ..
        "\r\n\r\n" .. S,
      "POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, identity\r\n\r\n" .. S,
      "POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n" .. S,
      "POST /a HTTP/1.0\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" .. S,
      "POST /a HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n Content-Length: " .. #S .. "\r\n\r\n" .. S,
      "POST /a HTTP/1.1\r\nHost: h\r\nX-A: 1\rContent-Length: " .. #S .. "\r\n\r\n" .. S,
      "POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n" ..
        "1;x\nA\r\n0\r\n\r\n" .. S,
      "POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n" ..
        "ffffffffffffffff1\r\nA\r\n0\r\n\r\n" .. S,
    }
    for i, shape in ipairs(shapes) do
      local c = connect(L)
      c:settimeout(5)
      c:send(shape)
      local out, _, partial = c:receive("*a")
      c:close()
      out = out or partial or ""
      assert.is_nil(out:find("HTTP/1.1 200", 1, true), "shape " .. i .. ": " .. out)
      assert.matches("^HTTP/1.1 4%d%d ", out, nil, false, "shape " .. i)
    end
    -- A clean request through the same listener reaches it: the log works.
    local status = procs.curl { url = "http://127.0.0.1:" .. L .. "/clean" }
    assert.equal(200, status)
    local log = procs.read_file(lenient_log)
    assert.matches("GET /clean", log, 1, true)
    assert.is_nil(log:find("smuggled", 1, true), log)
  end)

  it("answers 2 000 concurrent kept client connections, twice each", function()
    local conns = {}
    for i = 1, 2000 do
      local c = socket.tcp()
      c:settimeout(20)
      assert(c:connect("127.0.0.1", F), "connect " .. i)
      conns[i] = c
    end
    local ok = 0
    for round = 1, 2 do
      for i, c in ipairs(conns) do
        assert(c:send("GET /m?r=" .. round .. "&i=" .. i .. " HTTP/1.1\r\nHost: many.test\r\n\r\n"))
      end
      for i, c in ipairs(conns) do
        local status, body = procs.read_response(c)
        assert.equal(200, status, "round " .. round .. " conn " .. i .. ": " .. tostring(body))
        assert.truthy(body == "m1" or body == "m2", body)
        ok = ok + 1
      end
    end
    for _, c in ipairs(conns) do c:close() end
    assert.equal(4000, ok)
    local a, b = counts(B.m1), counts(B.m2)
    assert.equal(4000, a.requests + b.requests)
    -- The backends saw at most connections.max open at once each: the
    -- rest waited in ferry's queue.
    -- (A connection ferry closed counts until its thread sees the close.)
    assert.is_true(a.peak <= 316 and b.peak <= 316, cjson.encode { a, b })
    assert.is_true(a.peak >= 2 and b.peak >= 2, cjson.encode { a, b })
  end)

  it("carries 100 MB up (rate-limited client) and 100 MB down, checksums", function()
    local n = 100 * 1024 * 1024
    local up = string.format("%s/gaps-up-%d.bin", procs.tmp, F)
    local out = sh("head -c " .. n .. " /dev/urandom > " .. q(up))
    assert.matches("rc=0", out, 1, true)
    local want = procs.sha256_file(up)
    out = sh("curl -s -S --max-time 200 --limit-rate 40M -T " .. q(up) .. " -H 'Host: big.test' " ..
      q("http://127.0.0.1:" .. F .. "/sum"))
    os.remove(up)
    assert.matches("rc=0", out, 1, true)
    assert.equal(want, out:match("^(%x+)"))
    local down = up .. ".down"
    out = sh("curl -s -S --max-time 200 --limit-rate 40M -H 'Host: big.test' -o " .. q(down) .. " " ..
      q("http://127.0.0.1:" .. F .. "/big?n=" .. n))
    assert.matches("rc=0", out, 1, true)
    assert.equal(n, procs.file_size(down))
    -- The pattern: bytes 0..255 repeated.
    local exp = string.format("%s/gaps-exp-%d.bin", procs.tmp, F)
    sh("python3 -c " .. q("import sys; p=bytes(range(256))*4096; n=" .. n ..
      "\nwith open(sys.argv[1],'wb') as f:\n  while n>0:\n    f.write(p[:n]); n-=min(n,len(p))") ..
      " " .. q(exp))
    assert.equal(procs.sha256_file(exp), procs.sha256_file(down))
    os.remove(down) os.remove(exp)
  end)
end)

describe("examples/reverse.lua", function()
  it("runs as shipped (ports moved): balances, routes, 404s, serves /health", function()
    local B = {}
    local proc = backends(B, { "one", "two" })
    local P = { ["8088"] = procs.free_port(), ["8089"] = procs.free_port(),
                ["8090"] = procs.free_port(), ["9101"] = B.one.port, ["9102"] = B.two.port }
    local text = procs.read_file(procs.root .. "/examples/reverse.lua")
    assert.truthy(text:find("127.0.0.1:8088", 1, true))
    text = text:gsub("127%.0%.0%.1:(%d%d%d%d)", function(port)
      return "127.0.0.1:" .. (P[port] or port)
    end):gsub("/tmp/ferry%-reverse%.sock", procs.tmp .. "/ex-reverse-" .. P["8088"] .. ".sock")
    local ferry = procs.ferry(text, { P["8088"], P["8089"], P["8090"] })
    local seen = {}
    for i = 1, 4 do
      local status, body = procs.curl { url = "http://127.0.0.1:" .. P["8088"] .. "/x?i=" .. i }
      assert.equal(200, status)
      seen[body] = (seen[body] or 0) + 1
    end
    local health = procs.curl { url = "http://127.0.0.1:" .. P["8088"] .. "/health" }
    local strict, _, h = procs.curl { url = "http://127.0.0.1:" .. P["8089"] .. "/",
      flags = "-H 'Host: other.example'" }
    procs.stop_ferry(ferry)
    procs.stop(proc)
    assert.same({ one = 2, two = 2 }, seen)
    assert.equal(200, health)
    assert.equal(404, strict)
    assert.equal("FERRY-1100", procs.last_header(h, "X-Ferry-Error"))
  end)
end)
