-- The reverse listener against real backends (spec/helpers/origin.lua,
-- spec/helpers/tls_origin.py) and real clients (curl, LuaSocket):
-- balancing seen at the backends, the headers backends see, routing by
-- host and path, every coded failure (404, 405, 400, 502, 503, 504),
-- large bodies both ways, WebSocket, https backends verified, kept
-- connections counted at the backend, smuggling shapes refused, and
-- backends added and removed from the console.
local procs = require("procs")
local socket = require("socket")
local tls_origin = require("tls_origin")
local shapes = require("smuggling_shapes")

local q = procs.quote

-- Raw bytes to host:port; everything answered until close (or 5 s).
local function raw(port, data)
  local c = assert(socket.connect("127.0.0.1", port))
  c:settimeout(5)
  c:send(data)
  local all, _, partial = c:receive("*a")
  c:close()
  return all or partial or ""
end

local function sh(cmd)
  local p = io.popen(cmd .. " 2>&1; echo \"rc=$?\"")
  local out = p:read("*a")
  p:close()
  return out
end

-- GET path on the reverse listener at port with Host host (nil: curl's).
local function get(port, path, host, flags)
  return procs.curl { url = "http://127.0.0.1:" .. port .. path,
                      flags = (host and ("-H " .. q("Host: " .. host) .. " ") or "") ..
                        (flags or "") }
end

-- Status and body of a GET (get's first two answers).
local function whoami(port, host)
  local code, body = get(port, "/whoami", host)
  return { code, body }
end

describe("reverse listener", function()
  local O1, O2, O3, DEAD, F, F2, F3 = procs.free_port(), procs.free_port(), procs.free_port(),
    procs.free_port(), procs.free_port(), procs.free_port(), procs.free_port()
  local R = procs.free_port()
  local sock = string.format("%s/reverse-%d.sock", procs.tmp, F)
  local o1, o2, o3, relay, ferry

  setup(function()
    o1, o2, o3 = procs.origin(O1), procs.origin(O2), procs.origin(O3)
    relay = procs.relay_origin(R)
    ferry = procs.ferry(string.format([[
listen { name = "site", addr = "127.0.0.1:%d", protocol = "reverse", pool = "app" }
listen { name = "nopool", addr = "127.0.0.1:%d", protocol = "reverse" }
listen { name = "edge", addr = "127.0.0.1:%d", protocol = "reverse", pool = "app",
         trust_forwarded = true, forwarded = { via = false, host = false } }
admin  { socket = "%s" }
pool "app" { strategy = "round_robin", retries = 0,
  backends = { { url = "http://127.0.0.1:%d", id = "b1" }, { url = "http://127.0.0.1:%d", id = "b2" } } }
pool "api" { host = "api.internal", backends = { "http://127.0.0.1:%d" } }
pool "static" { backends = { "http://127.0.0.1:%d" } }
pool "weighted" { strategy = "weighted_random",
  backends = { { url = "http://127.0.0.1:%d", weight = 1 }, { url = "http://127.0.0.1:%d", weight = 3 } } }
pool "bulk" { backends = { "http://127.0.0.1:%d" } }
pool "slow" { timeouts = { first_byte = 1 }, backends = { "http://127.0.0.1:%d" } }
pool "dead" { all_down = "fail", retries = 0, backends = { "http://127.0.0.1:%d" } }
pool "proxies" { proxies = { "http://127.0.0.1:%d" } }
route(function(req)
  if not req.reverse then return nil end
  if match_host(req.host, "api.example.com") then return "api" end
  if match_host(req.host, "*.static.example.com") or match_path(req.path, "/assets") then
    return "static"
  end
  if req.host == "weighted.example.com" then return "weighted" end
  if req.host == "dead.example.com" then return "dead" end
  if req.host == "slow.example.com" then return "slow" end
  if req.host == "bulk.example.com" then return "bulk" end
  if req.host == "wrong.example.com" then return "proxies" end
end)
]], F, F2, F3, sock, O1, O2, O3, O3, O1, O2, R, O3, DEAD, DEAD), { F, F2, F3 })
  end)

  teardown(function()
    if ferry then procs.stop_ferry(ferry) end
    for _, o in ipairs { o1, o2, o3, relay } do procs.stop(o) end
  end)

  it("balances round robin across the pool's backends", function()
    local seen = {}
    for _ = 1, 10 do
      local code, body, headers = get(F, "/whoami", "www.example.com")
      assert.equal(200, code)
      seen[body] = (seen[body] or 0) + 1
      -- A site's clients never learn which backend answered.
      assert.is_nil(procs.last_header(headers, "X-Ferry-Proxy"))
    end
    assert.same({ ["origin " .. O1 .. "\n"] = 5, ["origin " .. O2 .. "\n"] = 5 }, seen)
  end)

  it("follows the weights", function()
    local n1, n2 = 0, 0
    -- One keep-alive client: each request is balanced on its own.
    local c = assert(socket.connect("127.0.0.1", F))
    c:settimeout(5)
    for _ = 1, 200 do
      c:send("GET /whoami HTTP/1.1\r\nHost: weighted.example.com\r\n\r\n")
      local code, body = procs.read_response(c)
      assert.equal(200, code)
      if body == "origin " .. O1 .. "\n" then n1 = n1 + 1 else n2 = n2 + 1 end
    end
    c:close()
    -- 1:3 of 200: 50 expected for the lighter one; far from both 100 and 0.
    assert.is_true(n1 > 20 and n1 < 85, "weight 1 got " .. n1 .. " of 200")
    assert.equal(200, n1 + n2)
  end)

  it("sends Host as the client named it, with X-Forwarded-For/Proto/Host and Via", function()
    local code, body, headers = get(F, "/headers", "Www.Example.com:8443",
      "-H 'X-Forwarded-For: 10.9.9.9' -H 'X-Forwarded-Proto: https' -H 'X-Forwarded-Host: evil'")
    assert.equal(200, code)
    assert.matches("^GET /headers HTTP/1.1\r\n", body)
    assert.matches("\r\nHost: Www.Example.com:8443\r\n", body, 1, true)
    -- Untrusted clients' X-Forwarded-* are dropped, ferry's alone remain.
    assert.matches("\r\nX-Forwarded-For: 127.0.0.1\r\n", body, 1, true)
    assert.matches("\r\nX-Forwarded-Proto: http\r\n", body, 1, true)
    assert.matches("\r\nX-Forwarded-Host: Www.Example.com:8443\r\n", body, 1, true)
    assert.is_nil(body:find("10.9.9.9", 1, true))
    assert.is_nil(body:find("evil", 1, true))
    assert.matches("\r\nVia: 1.1 ferry\r\n", body, 1, true)
    -- The response: the backend's fields, ferry's Via and request id.
    assert.equal("1.1 ferry", procs.last_header(headers, "Via"))
    assert.is_not_nil(procs.last_header(headers, "X-Origin-Conn"))
    assert.is_not_nil(procs.last_header(headers, "X-Request-Id"))
  end)

  it("appends to a trusted client's X-Forwarded-For and keeps its Proto", function()
    local code, body, headers = get(F3, "/headers", "www.example.com",
      "-H 'X-Forwarded-For: 10.9.9.9' -H 'X-Forwarded-Proto: https' -H 'Via: 1.1 edge'")
    assert.equal(200, code)
    assert.matches("\r\nX-Forwarded-For: 10.9.9.9, 127.0.0.1\r\n", body, 1, true)
    assert.matches("\r\nX-Forwarded-Proto: https\r\n", body, 1, true)
    assert.is_nil(body:find("X-Forwarded-Host", 1, true)) -- forwarded.host = false
    assert.matches("\r\nVia: 1.1 edge\r\n", body, 1, true) -- forwarded.via = false
    assert.is_nil(body:find("ferry", 1, true))
    assert.is_nil(procs.last_header(headers, "Via"))
  end)

  it("rewrites Host for a pool with host = ...", function()
    local code, body = get(F, "/headers", "api.example.com")
    assert.equal(200, code)
    assert.matches("\r\nHost: api.internal\r\n", body, 1, true)
    assert.matches("\r\nX-Forwarded-Host: api.example.com\r\n", body, 1, true)
  end)

  it("routes by host (exact, *.suffix) and by path prefix", function()
    local third = "origin " .. O3 .. "\n"
    assert.same({ 200, third }, whoami(F, "api.example.com"))
    assert.same({ 200, third }, whoami(F, "img.static.example.com"))
    local c1, b1 = get(F, "/assets/whoami", "www.example.com")
    assert.same({ 200, third }, { c1, b1 })
    -- The bare suffix and a longer word than the prefix go to the
    -- listener's pool (backends 1 and 2).
    for _ = 1, 3 do
      local code, body = get(F, "/whoami", "static.example.com")
      assert.equal(200, code)
      assert.not_equal(third, body)
      code, body = get(F, "/assetsx/whoami", "www.example.com")
      assert.equal(200, code)
      assert.not_equal(third, body)
    end
  end)

  it("takes an absolute-form target, its authority replacing Host", function()
    local out = raw(F, "GET http://api.example.com/headers HTTP/1.1\r\nHost: other\r\n" ..
      "Connection: close\r\n\r\n")
    assert.matches("^HTTP/1.1 200", out)
    assert.matches("\r\nHost: api.internal\r\n", out, 1, true)
    assert.matches("\r\nX-Forwarded-Host: api.example.com\r\n", out, 1, true)
  end)

  it("answers 404 for a Host no route takes on a listener without a pool", function()
    local code, body, headers = get(F2, "/whoami", "nothing.example.com")
    assert.equal(404, code)
    assert.equal("FERRY-1100", procs.last_header(headers, "X-Ferry-Error"))
    assert.matches('"error":"FERRY-1100"', body, 1, true)
    -- A routed host still works there.
    assert.same({ 200, "origin " .. O3 .. "\n" }, whoami(F2, "api.example.com"))
  end)

  it("refuses CONNECT (405), bad targets and hosts (400), and pools of proxies (502)", function()
    local out = raw(F, "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
    assert.matches("^HTTP/1.1 405 ", out)
    assert.matches("X-Ferry-Error: FERRY-1101", out, 1, true)
    out = raw(F, "GET example.com:80 HTTP/1.1\r\nHost: example.com\r\n\r\n")
    assert.matches("X-Ferry-Error: FERRY-1102", out, 1, true)
    out = raw(F, "GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert.matches("^HTTP/1.1 400 ", out)
    assert.matches("X-Ferry-Error: FERRY-1103", out, 1, true)
    out = raw(F, "GET / HTTP/1.1\r\nHost: a b\r\n\r\n")
    assert.matches("^HTTP/1.1 400 ", out)
    out = raw(F, "GET / HTTP/1.1\r\nHost: user@example.com\r\n\r\n")
    assert.matches("X-Ferry-Error: FERRY-1103", out, 1, true)
    local code, _, headers = get(F, "/", "wrong.example.com")
    assert.equal(502, code)
    assert.equal("FERRY-3100", procs.last_header(headers, "X-Ferry-Error"))
    -- HTTP/1.0 without Host: the listener's pool.
    out = raw(F, "GET /whoami HTTP/1.0\r\n\r\n")
    assert.matches("^HTTP/1.1 200 ", out)
  end)

  it("answers 502 for a backend that answers garbage or resets mid-response", function()
    local code, _, headers = get(F, "/garbage", "www.example.com")
    assert.equal(502, code)
    assert.equal("FERRY-3006", procs.last_header(headers, "X-Ferry-Error"))
    -- Cut after the head went out: the client sees the cut, never a whole answer.
    local out = sh("curl -s -S --max-time 10 -o /dev/null -H 'Host: www.example.com' " ..
      q("http://127.0.0.1:" .. F .. "/truncated"))
    assert.matches("rc=18", out, 1, true)
  end)

  it("answers 504 when the backend is slow to answer", function()
    local code, body, headers = get(F, "/slow/3", "slow.example.com")
    assert.equal(504, code)
    assert.equal("FERRY-3008", procs.last_header(headers, "X-Ferry-Error"))
    assert.matches('"request_id":', body, 1, true)
  end)

  it("answers 502 when the backend refuses, then 503 with every backend down", function()
    local code, _, headers = get(F, "/", "dead.example.com")
    assert.equal(502, code)
    assert.equal("FERRY-3001", procs.last_header(headers, "X-Ferry-Error"))
    -- The log names the backend tried, not the client's Host.
    assert.truthy(procs.read_file(ferry.log):find(
      "attempt 1 to backend http://127.0.0.1:" .. DEAD .. " failed: refused", 1, true))
    -- The refusal took the backend down at once: all_down = "fail".
    code, _, headers = get(F, "/", "dead.example.com")
    assert.equal(503, code)
    assert.equal("FERRY-3102", procs.last_header(headers, "X-Ferry-Error"))
  end)

  it("carries 10 MB both ways with a rate-limited client", function()
    local up = string.format("%s/rev-up-%d.bin", procs.tmp, F)
    local down, hdr = up .. ".down", up .. ".hdr"
    os.execute("head -c 10485760 /dev/urandom > " .. q(up))
    -- Up: streamed back by the backend as it arrives (client paced at 20 MB/s).
    local out = sh("curl -s -S --max-time 60 --limit-rate 20M -H 'Host: bulk.example.com' " ..
      "-H 'Content-Type: application/octet-stream' --data-binary @" .. q(up) .. " -o " ..
      q(down) .. " " .. q("http://127.0.0.1:" .. F .. "/echo?framing=cl"))
    assert.matches("rc=0", out, 1, true)
    assert.equal(10485760, procs.file_size(down))
    assert.equal(procs.sha256_file(up), procs.sha256_file(down))
    -- Down: generated by the backend, its digest in X-Body-Sha256.
    out = sh("curl -s -S --max-time 60 --limit-rate 20M -H 'Host: bulk.example.com' -D " ..
      q(hdr) .. " -o " .. q(down) .. " " ..
      q("http://127.0.0.1:" .. F .. "/gen?n=10485760&framing=cl"))
    assert.matches("rc=0", out, 1, true)
    assert.equal(10485760, procs.file_size(down))
    assert.equal(procs.last_header(procs.read_file(hdr), "X-Body-Sha256"),
      procs.sha256_file(down))
    os.remove(up) os.remove(down) os.remove(hdr)
  end)

  it("passes a WebSocket upgrade and tunnels both ways", function()
    local c = assert(socket.connect("127.0.0.1", F))
    c:settimeout(5)
    c:send("GET /ws HTTP/1.1\r\nHost: www.example.com\r\nUpgrade: websocket\r\n" ..
      "Connection: Upgrade\r\n\r\n")
    local line = c:receive("*l")
    assert.matches("^HTTP/1.1 101", line)
    repeat line = c:receive("*l") until line == ""
    c:send("ping through\n")
    assert.equal("ping through", c:receive("*l"))
    c:close()
  end)

  it("keeps backend connections alive and reuses them (counted at the backend)", function()
    local c = assert(socket.connect("127.0.0.1", F))
    c:settimeout(5)
    local conns = {}
    for _ = 1, 6 do
      c:send("GET /whoami HTTP/1.1\r\nHost: www.example.com\r\n\r\n")
      local status, body, head = procs.read_response(c)
      assert.equal(200, status)
      conns[body .. head:match("X%-Origin%-Conn: (%d+)")] = true
    end
    c:close()
    -- Two backends, six requests: at most one connection each was opened
    -- (the metrics say the same).
    local n = 0
    for _ in pairs(conns) do n = n + 1 end
    assert.is_true(n <= 2, "connections seen: " .. n)
    local m = sh(q(procs.bin) .. " console -s " .. q(sock) .. " -e 'pool.stats(\"app\")'")
    assert.matches("connections per backend", m, 1, true)
    assert.matches("reused", m, 1, true)
  end)

  it("adds and removes a backend from the console", function()
    local function console(expr)
      return sh(q(procs.bin) .. " console -s " .. q(sock) .. " -e " .. q(expr))
    end
    local out = console('proxy.add{pool = "static", url = "http://127.0.0.1:' .. O1 ..
      '", id = "extra"}')
    assert.matches("rc=0", out, 1, true)
    out = console('proxy.list("static")')
    assert.matches("extra", out, 1, true)
    assert.matches("backend", out, 1, true)
    assert.matches("http://127.0.0.1:" .. O1, out, 1, true)
    local seen = {}
    for _ = 1, 4 do
      local code, body = get(F, "/whoami", "x.static.example.com")
      assert.equal(200, code)
      seen[body] = true
    end
    assert.is_true(seen["origin " .. O1 .. "\n"], "the added backend took requests")
    -- A backend pool refuses what is not a backend URL.
    out = console('proxy.add{pool = "static", url = "socks5://127.0.0.1:1080"}')
    assert.matches("unsupported backend scheme", out, 1, true)
    out = console('proxy.remove("extra")')
    assert.matches("rc=0", out, 1, true)
    for _ = 1, 4 do
      local _, body = get(F, "/whoami", "x.static.example.com")
      assert.equal("origin " .. O3 .. "\n", body)
    end
  end)

  it("labels backends in /metrics and pool.list", function()
    local out = sh(q(procs.bin) .. " console -s " .. q(sock) .. " -e 'pool.list()'")
    assert.matches("backends", out, 1, true)
    local m = sh("curl -s -S --max-time 10 --unix-socket " .. q(sock) .. " http://ferry/metrics")
    local n = tonumber(m:match('ferry_proxy_requests_total{proxy="b1",pool="app",role="backend"} (%d+)'))
    assert.is_true(n ~= nil and n >= 5, "b1's requests in /metrics: " .. tostring(n))
    assert.matches('ferry_proxy_connections_reused_total{proxy="b1",pool="app",role="backend"} ',
      m, 1, true)
    -- Proxies keep their labels.
    assert.matches('\nferry_proxy_requests_total{proxy="%d+",pool="proxies"} ', m)
  end)
end)

describe("reverse listener with https backends", function()
  local O, OW, F, FT = procs.free_port(), procs.free_port(), procs.free_port(), procs.free_port()
  local dir = string.format("%s/reverse-pki-%d", procs.tmp, F)
  local good, wrong, ferry, pki

  setup(function()
    pki = tls_origin.pki(dir, { "localhost", "127.0.0.1" })
    good = tls_origin.start(O, pki.cert, pki.key)
    wrong = tls_origin.start(OW, pki.other_cert, pki.other_key)
    ferry = procs.ferry(string.format([[
listen { name = "site", addr = "127.0.0.1:%d", protocol = "reverse", pool = "tls" }
listen { name = "https-site", addr = "127.0.0.1:%d", protocol = "reverse", pool = "tls",
         tls = { cert = "%s", key = "%s" } }
pool "tls" { tls = { ca = "%s" }, backends = { "https://localhost:%d" } }
pool "wrong" { retries = 0, tls = { ca = "%s" }, backends = { "https://localhost:%d" } }
route(function(req) if req.host == "wrong.example" then return "wrong" end end)
]], F, FT, pki.cert, pki.key, pki.ca, O, pki.ca, OW), { F, FT })
  end)

  teardown(function()
    if ferry then procs.stop_ferry(ferry) end
    procs.stop(good)
    procs.stop(wrong)
  end)

  it("verifies the backend's certificate and keeps the client's Host", function()
    local code, body = get(F, "/host", "shop.example")
    assert.equal(200, code)
    assert.equal("shop.example", body)
    code, body = get(F, "/ok?i=7", "shop.example")
    assert.equal(200, code)
    assert.equal("ok-7", body)
    -- Kept: two requests, one TLS connection at the backend.
    code, body = get(F, "/stats", "shop.example")
    assert.equal(200, code)
    assert.matches("^connections=1 ", body)
  end)

  it("serves HTTPS clients on a TLS reverse listener, X-Forwarded-Proto https", function()
    local code, body = procs.curl { url = "https://localhost:" .. FT .. "/head",
      flags = "--cacert " .. q(pki.ca) .. " --resolve localhost:" .. FT .. ":127.0.0.1 " }
    assert.equal(200, code)
    assert.matches("^GET /head HTTP/1.1\r\n", body)
    assert.matches("\r\nHost: localhost:" .. FT .. "\r\n", body, 1, true)
    assert.matches("\r\nX-Forwarded-Proto: https\r\n", body, 1, true)
  end)

  it("answers 502 FERRY-3103 when the backend's certificate does not verify", function()
    local code, _, headers = get(F, "/ok", "wrong.example")
    assert.equal(502, code)
    assert.equal("FERRY-3103", procs.last_header(headers, "X-Ferry-Error"))
  end)
end)

-- Every shape the forward listener refuses (spec/helpers/smuggling_shapes.lua),
-- sent to a reverse listener whose backend is the lenient origin of the
-- smuggling spec (it runs whatever framing it gets and logs each request
-- line): 400 each time, and the hidden request never runs.
describe("reverse listener and smuggling shapes", function()
  local L, F = procs.free_port(), procs.free_port()
  local lenient_log = string.format("%s/rev-lenient-%d.log", procs.tmp, F)
  local host = "127.0.0.1:" .. L
  local lenient, ferry
  local marker = 0

  setup(function()
    procs.write_file(lenient_log, "")
    lenient = procs.spawn("lenient", "python3 " .. procs.root ..
      "/spec/helpers/lenient_origin.py " .. L .. " " .. lenient_log)
    assert(procs.wait_port(L), "lenient origin did not start")
    ferry = procs.ferry(string.format([[
listen { name = "site", addr = "127.0.0.1:%d", protocol = "reverse", pool = "app" }
pool "app" { backends = { "http://127.0.0.1:%d" } }
]], F, L), { F })
  end)

  teardown(function()
    procs.stop(lenient)
    if ferry then procs.stop_ferry(ferry) end
  end)

  -- Every request sent before a fresh marker was run by then; nothing
  -- hidden may be in the lenient origin's log after `since`.
  local function assert_never_smuggled(since)
    marker = marker + 1
    local status = get(F, "/marker-" .. marker, host)
    assert.equal(200, status)
    assert.truthy(procs.wait_for(function()
      return procs.read_file(lenient_log):find("/marker-" .. marker .. "\n", 1, true)
    end))
    assert.is_nil(procs.read_file(lenient_log):find("/smuggled", since + 1, true))
  end

  it("lets a well-formed request with a body through", function()
    local out = raw(F, shapes.fill("POST /a HTTP/1.1\r\nHost: {H}\r\nContent-Length: 5\r\n" ..
      "Connection: close\r\n\r\nhello", host))
    assert.matches("^HTTP/1%.1 200 ", out)
    assert.matches("len=5\n", out)
  end)

  for _, shape in ipairs(shapes.REQUESTS) do
    it("refuses " .. shape[1] .. " with 400", function()
      local since = #procs.read_file(lenient_log)
      local out = raw(F, shapes.fill(shape[2], host))
      assert_never_smuggled(since)
      assert.matches("^HTTP/1%.1 400 ", out)
      assert.matches("X%-Ferry%-Error: FERRY%-1%d%d%d", out)
      assert.is_nil(out:find("smuggled", 1, true))
    end)
  end

  for _, shape in ipairs(shapes.BODIES) do
    it("refuses a chunked body with " .. shape[1] .. " (FERRY-1021)", function()
      local since = #procs.read_file(lenient_log)
      local out = raw(F, shapes.fill(shapes.CHUNKED .. shape[2], host))
      assert_never_smuggled(since)
      assert.matches("^HTTP/1%.1 400 ", out)
      assert.matches("X%-Ferry%-Error: FERRY%-1021", out)
    end)
  end
end)
