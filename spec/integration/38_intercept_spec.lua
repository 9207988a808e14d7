-- Interception per exchange: ferry's CA (`ferry ca init`), a TLS origin
-- with a private CA under two host names, exchange "a" intercepted and
-- exchange "b" blind.  Shown: the origin's answer and the path in the
-- access line for "a", only the CONNECT for "b"; rotation per request
-- inside one client TLS connection (the origin sees two source ports);
-- a ban on a 429 inside HTTPS; the SNI rule; plain bytes and garbage after
-- the 200; clients that refuse ferry's certificate counted and logged once;
-- 8 MB up and down, checksummed; the Host rule (421); a SOCKS5 listener
-- with socks5h; a wss echo; intercept = true without a CA refused.
--
-- Host names: "localhost" resolves everywhere (ferry, tinyproxy,
-- microsocks) and is the intercepted exchange.  The blind exchange's
-- "exb" is resolved by ferry alone, through HOSTALIASES (a file mapping a
-- one-label alias to a name, which c-ares' lookup honours; glibc's files
-- lookup does not, so the upstream proxies could not resolve it).
local procs = require("procs")
local socket = require("socket")
local tls_origin = require("tls_origin")

local q = procs.quote

local function sh(cmd)
  local p = io.popen(cmd .. " 2>&1; echo \"rc=$?\"")
  local out = p:read("*a")
  p:close()
  local rc = tonumber(out:match("rc=(%d+)%s*$"))
  return out:gsub("rc=%d+%s*$", ""), rc
end

-- The access lines ferry wrote so far, optionally only those matching fn.
local function access(proc, fn)
  local out = {}
  for _, l in ipairs(procs.log_lines(proc)) do
    if l.msg == "access" and (fn == nil or fn(l)) then out[#out + 1] = l end
  end
  return out
end

local function events(proc, code)
  local out = {}
  for _, l in ipairs(procs.log_lines(proc)) do
    if l.code == code and l.msg ~= "access" then out[#out + 1] = l end
  end
  return out
end

describe("interception", function()
  local dir = procs.tmp .. "/intercept-" .. math.random(1, 1e9)
  local O, W, WS = procs.free_port(), procs.free_port(), procs.free_port()
  local T, M = procs.free_port(), procs.free_port()
  local F, FS, ADM = procs.free_port(), procs.free_port(), procs.free_port()
  local pki, ca, origin, ws, stunnel, tiny, socks, ferry

  local function curl(args)
    return sh("curl -sS --max-time 20 " .. args)
  end
  local function metric(name, labels)
    return procs.metric(ADM, name, labels) or 0
  end

  setup(function()
    pki = tls_origin.pki(dir .. "/pki", { "localhost", "exb" })
    local out, rc = sh(q(procs.bin) .. " ca init " .. q(dir .. "/ca"))
    assert(rc == 0, out)
    ca = dir .. "/ca/ca.crt"
    origin = tls_origin.start(O, pki.cert, pki.key)
    ws = procs.spawn("ws-origin", "python3 " .. procs.root .. "/spec/helpers/ws_origin.py " .. W)
    assert(procs.wait_port(W), "ws origin did not start")
    stunnel = procs.stunnel({ { accept = WS, connect = W, cert = pki.cert, key = pki.key } })
    tiny = procs.tinyproxy(T)
    socks = procs.microsocks(M)
    local aliases = procs.write_file(dir .. "/hostaliases", "exb localhost\n")
    local cfg = procs.write_file(dir .. "/ferry.lua", string.format([[
listen { addr = "127.0.0.1:%d" }
listen { name = "s5", addr = "127.0.0.1:%d", protocol = "socks5" }
admin { addr = "127.0.0.1:%d" }
tls { ca_cert = %q, ca_key = %q }
pool "two" { strategy = "round_robin",
             proxies = { "http://127.0.0.1:%d", "socks5://127.0.0.1:%d" } }
exchange "a" { hosts = { "localhost" }, pool = "two", intercept = true,
               tls = { ca = %q }, ban = { status = { 429 }, backoff = 600 } }
exchange "b" { hosts = { "exb" }, pool = "direct" }
]], F, FS, ADM, ca, dir .. "/ca/ca.key", T, M, pki.ca))
    ferry = procs.spawn("ferry", "env HOSTALIASES=" .. q(aliases) .. " " .. q(procs.bin) ..
      " -c " .. q(cfg))
    for _, port in ipairs({ F, FS, ADM }) do
      assert(procs.wait_port(port, procs.asan and 15 or 5), procs.read_file(ferry.log))
    end
  end)

  teardown(function()
    if ferry then procs.stop_ferry(ferry) end
    for _, p in ipairs({ origin, ws, stunnel, tiny, socks }) do procs.stop(p) end
    os.execute("rm -rf " .. q(dir))
  end)

  it("answers an intercepted exchange's CONNECT itself and logs the path inside", function()
    local out, rc = curl("--cacert " .. q(ca) .. " -x http://127.0.0.1:" .. F ..
      " https://localhost:" .. O .. "/ok?i=1")
    assert.are.equal(0, rc, out)
    assert.are.equal("ok-1", out)
    local lines = access(ferry, function(l) return l.path == "/ok?i=1" end)
    assert.are.equal(1, #lines)
    assert.are.equal("GET", lines[1].method)
    assert.is_true(lines[1].intercepted)
    assert.are.equal("a", lines[1].exchange)
    assert.are.equal("https", lines[1].scheme)
    assert.are.equal(200, lines[1].status)
    assert.is_true(metric("ferry_intercept_tunnels_total") >= 1)
    assert.is_true(metric("ferry_intercept_requests_total") >= 1)
  end)

  it("keeps a host of an exchange without intercept a blind tunnel", function()
    -- The origin's own certificate reaches the client: it verifies with
    -- the private CA, not ferry's.
    local out, rc = curl("--cacert " .. q(pki.ca) .. " -x http://127.0.0.1:" .. F ..
      " https://exb:" .. O .. "/ok?i=2")
    assert.are.equal(0, rc, out)
    assert.are.equal("ok-2", out)
    local lines = access(ferry, function(l) return l.host == "exb" end)
    assert.are.equal(1, #lines)
    assert.are.equal("CONNECT", lines[1].method)
    assert.is_nil(lines[1].intercepted)
    assert.are.equal(0, #access(ferry, function(l) return l.path == "/ok?i=2" end))
  end)

  it("rotates proxies per request inside one client TLS connection", function()
    local url = "https://localhost:" .. O
    local out, rc = curl("--cacert " .. q(ca) .. " -x http://127.0.0.1:" .. F ..
      " -w ' connects=%{num_connects}\\n' " .. url .. "/peer?r=1 " .. url .. "/peer?r=2")
    assert.are.equal(0, rc, out)
    local peers, connects = {}, {}
    for peer, n in out:gmatch("(127%.0%.0%.1:%d+) connects=(%d+)") do
      peers[#peers + 1] = peer
      connects[#connects + 1] = tonumber(n)
    end
    assert.are.same({ 1, 0 }, connects) -- the second URL reused the client's connection
    assert.are.equal(2, #peers)
    assert.are_not.equal(peers[1], peers[2]) -- two upstream paths to the origin
    local lines = access(ferry, function(l) return l.path and l.path:match("^/peer") end)
    assert.are.equal(2, #lines)
    assert.are_not.equal(lines[1].proxy, lines[2].proxy)
  end)

  it("bans the proxy that got a 429 inside HTTPS, for that exchange", function()
    local base = "--cacert " .. q(ca) .. " -x http://127.0.0.1:" .. F ..
      " https://localhost:" .. O
    local out, rc = curl("-o /dev/null -w '%{http_code}' " .. base .. "/status?code=429")
    assert.are.equal(0, rc, out)
    local bans = procs.wait_for(function()
      local b = events(ferry, "FERRY-6006")
      return #b > 0 and b
    end, 5)
    assert.is_truthy(bans, "no ban logged")
    local banned = access(ferry, function(l) return l.path == "/status?code=429" end)
    assert.is_true(#banned >= 1)
    local proxy = banned[1].proxy
    local urls = {}
    for i = 1, 4 do urls[i] = "https://localhost:" .. O .. "/ok?after=" .. i end
    out, rc = curl("--cacert " .. q(ca) .. " -x http://127.0.0.1:" .. F .. " " ..
      table.concat(urls, " "))
    assert.are.equal(0, rc, out)
    local after = access(ferry, function(l) return l.path and l.path:match("^/ok%?after=") end)
    assert.are.equal(4, #after)
    for _, l in ipairs(after) do assert.are_not.equal(proxy, l.proxy) end
  end)

  it("refuses a client whose SNI is not the CONNECT host", function()
    local before = metric("ferry_intercept_handshake_failures_total", 'reason="sni"')
    local out = sh("timeout 10 openssl s_client -proxy 127.0.0.1:" .. F .. " -connect localhost:" ..
      O .. " -servername other.test -CAfile " .. q(ca) .. " </dev/null")
    assert.is_truthy(out:find("unrecognized name", 1, true), out)
    assert.is_true(procs.wait_for(function()
      return metric("ferry_intercept_handshake_failures_total", 'reason="sni"') == before + 1
    end, 5) ~= nil)
    local lines = events(ferry, "FERRY-1089")
    assert.is_truthy(lines[#lines].msg:find("other.test", 1, true))
  end)

  it("answers plain HTTP after the 200 in plain text and closes on garbage", function()
    local c = socket.connect("127.0.0.1", F)
    c:settimeout(10)
    c:send("CONNECT localhost:" .. O .. " HTTP/1.1\r\nHost: localhost\r\n\r\n")
    local status = procs.read_response(c)
    assert.are.equal(200, status)
    c:send("GET /ok HTTP/1.1\r\nHost: localhost\r\n\r\n")
    local st, body, head = procs.read_response(c)
    assert.are.equal(400, st)
    assert.is_truthy(head:find("FERRY-1086", 1, true))
    assert.is_truthy(body:find("TLS", 1, true))
    c:close()

    local before = metric("ferry_intercept_handshake_failures_total", 'reason="not_tls"')
    c = socket.connect("127.0.0.1", F)
    c:settimeout(10)
    c:send("CONNECT localhost:" .. O .. " HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert.are.equal(200, (procs.read_response(c)))
    c:send(string.rep("\0\1\2garbage", 20))
    local got, err = c:receive("*a")
    assert.is_true(got == "" or got == nil, tostring(got))
    assert.is_truthy(err == nil or err == "closed" or err:match("reset"), tostring(err))
    c:close()
    assert.is_true(procs.wait_for(function()
      return metric("ferry_intercept_handshake_failures_total", 'reason="not_tls"') == before + 1
    end, 5) ~= nil)
  end)

  it("counts clients that refuse ferry's certificate and logs once per window", function()
    local before = metric("ferry_intercept_handshake_failures_total", 'reason="refused"')
    local logged = #events(ferry, "FERRY-1090")
    for _ = 1, 3 do
      local out, rc = curl("-x http://127.0.0.1:" .. F .. " https://localhost:" .. O .. "/ok")
      assert.are.equal(60, rc, out) -- curl: peer certificate cannot be authenticated
    end
    assert.is_true(procs.wait_for(function()
      return metric("ferry_intercept_handshake_failures_total", 'reason="refused"') == before + 3
    end, 5) ~= nil)
    assert.are.equal(logged + 1, #events(ferry, "FERRY-1090"))
  end)

  it("carries 8 MB up and 8 MB down intact", function()
    local file = dir .. "/up.bin"
    os.execute("head -c 8388608 /dev/urandom > " .. q(file))
    local out, rc = curl("--cacert " .. q(ca) .. " -x http://127.0.0.1:" .. F ..
      " --data-binary @" .. q(file) .. " https://localhost:" .. O .. "/sha")
    assert.are.equal(0, rc, out)
    assert.are.equal(procs.sha256_file(file), out)
    local down = dir .. "/down.bin"
    out, rc = curl("--cacert " .. q(ca) .. " -x http://127.0.0.1:" .. F .. " -o " .. q(down) ..
      " 'https://localhost:" .. O .. "/bytes?n=8388608'")
    assert.are.equal(0, rc, out)
    procs.write_file(dir .. "/want.bin", tls_origin.pattern(8388608))
    assert.are.equal(procs.sha256_file(dir .. "/want.bin"), procs.sha256_file(down))
  end)

  it("answers 421 when the Host header names another host", function()
    local out, rc = curl("--cacert " .. q(ca) .. " -x http://127.0.0.1:" .. F ..
      " -H 'Host: exb' -o /dev/null -w '%{http_code}' https://localhost:" .. O .. "/ok?i=421")
    assert.are.equal(0, rc, out)
    assert.are.equal("421", out)
    local lines = access(ferry, function(l) return l.path == "/ok?i=421" end)
    assert.are.equal("FERRY-1085", lines[1].code)
  end)

  it("intercepts through a SOCKS5 listener (socks5h)", function()
    local out, rc = curl("--cacert " .. q(ca) .. " -x socks5h://127.0.0.1:" .. FS ..
      " https://localhost:" .. O .. "/ok?i=5")
    assert.are.equal(0, rc, out)
    assert.are.equal("ok-5", out)
    local lines = access(ferry, function(l) return l.path == "/ok?i=5" end)
    assert.are.equal("s5", lines[1].listener)
    assert.is_true(lines[1].intercepted)
  end)

  it("sees a wss upgrade and relays its frames both ways", function()
    local out, rc = sh("python3 " .. procs.root .. "/spec/helpers/wss_client.py " .. F ..
      " localhost " .. WS .. " " .. q(ca) .. " 5")
    assert.are.equal(0, rc, out)
    local r = require("cjson").decode(out)
    assert.are.equal(101, r.status)
    assert.are.equal(6, r.echoed)
    assert.is_true(r.accept_ok)
    local lines = procs.wait_for(function()
      local l = access(ferry, function(x) return x.path == "/ws" and x.port == WS end)
      return #l > 0 and l
    end, 5)
    assert.is_truthy(lines)
    assert.are.equal(101, lines[1].status)
    assert.is_true(lines[1].intercepted)
  end)

  it("refuses intercept = true without ferry's CA, with its code", function()
    local cfg = procs.write_file(dir .. "/noca.lua",
      'exchange "a" { hosts = { "localhost" }, pool = "direct", intercept = true }\n')
    local out, rc = sh(q(procs.bin) .. " check -c " .. q(cfg))
    assert.are_not.equal(0, rc)
    assert.is_truthy(out:find("FERRY-6020", 1, true), out)
    cfg = procs.write_file(dir .. "/badtype.lua",
      'exchange "a" { hosts = { "localhost" }, pool = "direct", intercept = "yes" }\n')
    out, rc = sh(q(procs.bin) .. " check -c " .. q(cfg))
    assert.are_not.equal(0, rc)
    assert.is_truthy(out:find("intercept must be true or false", 1, true), out)
  end)
end)
