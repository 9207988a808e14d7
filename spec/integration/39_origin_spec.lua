-- TLS origination: a plain-HTTP client sends `GET https://...` (absolute
-- form) or `http://` to an exchange with upgrade_tls, and ferry speaks
-- verified TLS to the origin itself, through every kind of first hop:
-- direct, tinyproxy (CONNECT), microsocks (SOCKS5) and a second ferry
-- (CONNECT).  The origin is tls_origin.py with a private CA made by
-- openssl for this run (spec/helpers/tls_origin.lua).
local procs = require("procs")
local socket = require("socket")
local tls_origin = require("tls_origin")

local q = procs.quote

-- One request on a fresh client socket; the raw answer's status, body, head.
local function raw(port, head, body)
  local c = socket.tcp()
  c:settimeout(15)
  assert(c:connect("127.0.0.1", port))
  assert(c:send(head .. (body or "")))
  local status, rbody, rhead = procs.read_response(c)
  c:close()
  return status, rbody, rhead
end

local function get(port, url, host, extra)
  return raw(port, "GET " .. url .. " HTTP/1.1\r\nHost: " .. host .. "\r\n" .. (extra or "") ..
    "Connection: close\r\n\r\n")
end

local function sha_of(text)
  local f = procs.tmp .. "/sha-" .. math.random(1, 1e9)
  procs.write_file(f, text)
  local h = procs.sha256_file(f)
  os.remove(f)
  return h
end

local function lines_with(proc, code)
  local out = {}
  for _, l in ipairs(procs.log_lines(proc)) do
    if l.code == code then out[#out + 1] = l end
  end
  return out
end

local function metric(admin, name)
  return procs.metric(admin, name) or 0
end

describe("TLS origination", function()
  local dir = procs.tmp .. "/origin-" .. math.random(1, 1e9)
  local pki, cafile, script
  local O, O_OTHER, O_WRONG = procs.free_port(), procs.free_port(), procs.free_port()
  local T, M, B = procs.free_port(), procs.free_port(), procs.free_port()
  local L_DIRECT, L_TINY, L_SOCKS, L_FERRY, L_TLSP, L_TWO, ADM = procs.free_port(),
    procs.free_port(), procs.free_port(), procs.free_port(), procs.free_port(),
    procs.free_port(), procs.free_port()
  local S = procs.free_port()
  local origin, other, wrong, tiny, msocks, stun, fb, fa
  local host = "localhost:" .. O

  -- Whatever setup started is stopped when it fails half-way (busted
  -- skips teardown then).
  local function start_all()
    pki = tls_origin.pki(dir, { "localhost", "127.0.0.1" })
    -- A copy of the CA the config names, so a reload can break and mend it.
    cafile = dir .. "/exchange-ca.pem"
    os.execute("cp " .. q(pki.ca) .. " " .. q(cafile))
    origin = tls_origin.start(O, pki.cert, pki.key)
    other = tls_origin.start(O_OTHER, pki.other_cert, pki.other_key)
    wrong = tls_origin.start(O_WRONG, pki.wrong_cert, pki.wrong_key)
    tiny = procs.tinyproxy(T)
    msocks = procs.microsocks(M)
    -- An https:// proxy: stunnel (the spec CA's certificate) before tinyproxy.
    stun = procs.stunnel { { accept = S, connect = T, cert = pki.cert, key = pki.key } }
    -- A second ferry as an upstream HTTP proxy (it answers CONNECT).
    fb = procs.ferry(string.format('listen { name = "b", addr = "127.0.0.1:%d" }\n', B), { B })
    -- Each listener's requests take the pool of its name; the origin sees
    -- which scheme route() and hooks were shown.
    script = procs.write_file(dir .. "/route.lua", [[
return {
  on_request = function(req)
    return { pool = req.listener, headers = { add = { ["X-Scheme"] = req.scheme } } }
  end,
}
]])
    fa = procs.ferry(string.format([[
listen { name = "direct", addr = "127.0.0.1:%d" }
listen { name = "tiny", addr = "127.0.0.1:%d" }
listen { name = "socks", addr = "127.0.0.1:%d" }
listen { name = "ferry", addr = "127.0.0.1:%d" }
listen { name = "tlsproxy", addr = "127.0.0.1:%d" }
listen { name = "two", addr = "127.0.0.1:%d" }
admin { addr = "127.0.0.1:%d" }
pool "tiny" { proxies = { { url = "http://127.0.0.1:%d", id = "tiny" } } }
pool "socks" { proxies = { { url = "socks5://127.0.0.1:%d", id = "socks" } } }
pool "ferry" { proxies = { { url = "http://127.0.0.1:%d", id = "ferry-b" } } }
pool "tlsproxy" { proxies = { { url = "https://127.0.0.1:%d", id = "tlsp", tls = { ca = "%s" } } } }
pool "two" { strategy = "round_robin", breaker = false, retries = 0,
  proxies = { { url = "http://127.0.0.1:%d", id = "t2" }, { url = "socks5://127.0.0.1:%d", id = "s2" } } }
exchange "loc" { hosts = { "localhost" }, pool = "direct", script = "%s",
  tls = { ca = "%s" }, ban = { status = { 429 }, backoff = 60 } }
exchange "up" { hosts = { "127.0.0.1" }, pool = "direct", script = "%s", upgrade_tls = true,
  tls = { ca = "%s" } }
]], L_DIRECT, L_TINY, L_SOCKS, L_FERRY, L_TLSP, L_TWO, ADM, T, M, B, S, pki.ca, T, M, script, cafile,
      script, cafile), { L_DIRECT, L_TINY, L_SOCKS, L_FERRY, L_TLSP, L_TWO, ADM })
  end

  setup(function()
    local ok, err = pcall(start_all)
    if not ok then
      procs.stop_all()
      error(err, 0)
    end
  end)

  teardown(function()
    if fa then procs.stop_ferry(fa) end
    if fb then procs.stop_ferry(fb) end
    for _, p in ipairs { origin, other, wrong, stun, tiny, msocks } do procs.stop(p) end
    os.execute("rm -rf " .. q(dir))
  end)

  for _, via in ipairs { { "direct", L_DIRECT, "direct" }, { "tinyproxy", L_TINY, "tiny" },
                         { "microsocks", L_SOCKS, "socks" }, { "a second ferry", L_FERRY, "ferry" } } do
    it("sends an absolute https:// request over verified TLS, " .. via[1], function()
      local status, body = get(via[2], "https://" .. host .. "/head", host)
      assert.equal(200, status)
      -- Origin form inside TLS, Host as the client gave it, scheme shown to hooks.
      assert.matches("^GET /head HTTP/1.1\r\n", body)
      assert.truthy(body:find("\r\nHost: " .. host .. "\r\n", 1, true), body)
      assert.truthy(body:find("\r\nX-Scheme: https", 1, true), body)
      -- The access line may reach the log just after the answer.
      local access = procs.wait_for(function()
        for _, l in ipairs(lines_with(fa, "FERRY-0200")) do
          if l.path == "/head" and l.listener == via[3] then return l end
        end
      end, 5)
      assert.is_table(access)
      assert.equal("https", access.scheme)
      assert.equal("localhost", access.host)
      assert.equal(O, access.port)
    end)
  end

  it("takes the default port 443 for https:// without one", function()
    -- Nothing listens on 443 here: the attempt is refused there, not on 80.
    local status, _, head = get(L_DIRECT, "https://localhost/x", "localhost")
    assert.equal(502, status)
    local failed = procs.wait_for(function()
      for _, l in ipairs(procs.log_lines(fa)) do
        if l.msg == "access" and l.path == "/x" then return l end
      end
    end, 5)
    assert.is_not_nil(failed, head)
    assert.equal(443, failed.port)
    assert.equal("https", failed.scheme)
  end)

  it("upgrade_tls: curl sends http:// and the exchange gets TLS", function()
    local status, body = procs.curl { proxy = "http://127.0.0.1:" .. L_TINY,
                                      url = "http://127.0.0.1:" .. O .. "/host" }
    assert.equal(200, status)
    assert.equal("127.0.0.1:" .. O, body)
  end)

  it("upgrade_tls: port 80 becomes 443, another port is kept", function()
    -- Nothing listens on 127.0.0.1:443 here: the attempt fails there.
    local status = get(L_DIRECT, "http://127.0.0.1/p80", "127.0.0.1")
    assert.equal(502, status)
    local line = procs.wait_for(function()
      for _, l in ipairs(procs.log_lines(fa)) do
        if l.msg == "access" and l.path == "/p80" then return l end
      end
    end, 5)
    assert.is_table(line)
    assert.equal(443, line.port)
    assert.equal("https", line.scheme)
  end)

  it("upgrade_tls: Python requests with an http proxy", function()
    local out = procs.tmp .. "/req-" .. math.random(1, 1e9)
    local cmd = string.format("python3 -c %s > %s 2>&1", q(string.format([[
import requests
r = requests.get("http://127.0.0.1:%d/head", proxies={"http": "http://127.0.0.1:%d"}, timeout=10)
print(r.status_code)
print(r.text)
]], O, L_SOCKS)), q(out))
    os.execute(cmd)
    local text = procs.read_file(out)
    os.remove(out)
    assert.matches("^200\n", text)
    assert.truthy(text:find("GET /head HTTP/1.1", 1, true), text)
    assert.truthy(text:find("X-Scheme: https", 1, true), text)
  end)

  it("answers 502 FERRY-3042 for a certificate of an unknown CA, logging why", function()
    local hp = "localhost:" .. O_OTHER
    local before = metric(ADM, "ferry_origin_tls_verify_failures_total")
    local status, body, head = get(L_TINY, "https://" .. hp .. "/ok", hp)
    assert.equal(502, status)
    assert.truthy(head:find("X-Ferry-Error: FERRY-3042", 1, true), head)
    assert.truthy(body:find("FERRY-3042", 1, true))
    local why = procs.wait_for(function()
      local w = lines_with(fa, "FERRY-3045")
      return #w > 0 and w or nil
    end, 5)
    assert.is_table(why)
    assert.truthy(why[#why].msg:find("unable to get local issuer certificate", 1, true),
      why[#why].msg)
    -- The destination's fault: retried once at most, never charged to the proxy.
    assert.is_true(metric(ADM, "ferry_origin_tls_verify_failures_total") - before <= 2)
    assert.equal(0, metric(ADM, 'ferry_proxy_failures_total{proxy="tiny",kind="tls"}'))
  end)

  it("answers 502 FERRY-3042 for a certificate of another name", function()
    local hp = "localhost:" .. O_WRONG
    local status, _, head = get(L_DIRECT, "https://" .. hp .. "/ok", hp)
    assert.equal(502, status)
    assert.truthy(head:find("X-Ferry-Error: FERRY-3042", 1, true), head)
    local why = procs.wait_for(function()
      for _, l in ipairs(lines_with(fa, "FERRY-3045")) do
        if l.msg:find(hp, 1, true) then return l end
      end
    end, 5)
    assert.is_table(why)
    assert.truthy(why.msg:find("hostname mismatch", 1, true), why.msg)
  end)

  it("verifies against the system store when no exchange names a CA", function()
    -- The second ferry has no exchange: the private CA is unknown there.
    local status, _, head = get(B, "https://" .. host .. "/ok", host)
    assert.equal(502, status)
    assert.truthy(head:find("X-Ferry-Error: FERRY-3042", 1, true), head)
  end)

  it("runs the origin's TLS inside an https:// proxy's TLS (stunnel before tinyproxy)",
    function()
      for i = 1, 3 do
        local status, body = get(L_TLSP, "https://" .. host .. "/ok?i=" .. i, host)
        assert.equal(200, status)
        assert.equal("ok-" .. i, body)
      end
      local status, body = get(L_TLSP, "https://" .. host .. "/head", host)
      assert.equal(200, status)
      assert.matches("^GET /head HTTP/1.1\r\n", body)
    end)

  for _, n in ipairs { 1024 * 1024, 8 * 1024 * 1024 } do
    it(string.format("moves %d MiB both ways intact (sha256)", n / 1048576), function()
      local want = sha_of(tls_origin.pattern(n))
      for _, port in ipairs { L_DIRECT, L_TINY, L_TLSP } do
        local code, body = procs.curl { proxy = "http://127.0.0.1:" .. port, max_time = 60,
          flags = "--request-target " .. q("https://" .. host .. "/bytes?n=" .. n),
          url = "http://" .. host .. "/" }
        assert.equal(200, code)
        assert.equal(n, #body)
        assert.equal(want, sha_of(body))
        local up = procs.tmp .. "/up-" .. math.random(1, 1e9)
        os.execute("head -c " .. n .. " /dev/urandom > " .. q(up))
        local echoed
        code, echoed = procs.curl { proxy = "http://127.0.0.1:" .. port, max_time = 60,
          flags = "--request-target " .. q("https://" .. host .. "/echo") ..
            " --data-binary @" .. q(up), url = "http://" .. host .. "/" }
        assert.equal(200, code)
        assert.equal(n, #echoed)
        assert.equal(procs.sha256_file(up), sha_of(echoed))
        os.remove(up)
      end
    end)
  end

  it("keeps the originated TLS connection: one handshake at the origin for many requests",
    function()
      local function stats()
        local code, body = procs.curl { url = "https://" .. host .. "/stats",
                                        flags = "--cacert " .. q(pki.ca) }
        assert.equal(200, code)
        return tonumber(body:match("connections=(%d+)"))
      end
      local hs0, reuse0 = metric(ADM, "ferry_origin_tls_handshakes_total"),
        metric(ADM, "ferry_origin_tls_reused_total")
      local c0 = stats()
      for i = 1, 6 do
        -- A new client connection each time: the upstream one is shared.
        local status, body = get(L_SOCKS, "https://" .. host .. "/ok?i=" .. i, host)
        assert.equal(200, status)
        assert.equal("ok-" .. i, body)
      end
      local c1 = stats()
      -- c1 counts the second stats request itself.
      assert.is_true(c1 - c0 - 1 <= 1, "origin saw " .. (c1 - c0 - 1) .. " TLS connections")
      assert.is_true(metric(ADM, "ferry_origin_tls_handshakes_total") - hs0 <= 1)
      assert.is_true(metric(ADM, "ferry_origin_tls_reused_total") - reuse0 >= 5)
    end)

  it("never hands an originated connection to a plain request or another origin", function()
    -- The same proxy (tinyproxy), plain then TLS then plain: each gets its own kind.
    local s1, b1 = get(L_TINY, "https://" .. host .. "/ok?i=a", host)
    assert.equal(200, s1)
    assert.equal("ok-a", b1)
    -- Plain http:// to the TLS port through the same proxy: not sent into the
    -- kept TLS session (it would succeed there); the origin refuses plain bytes.
    local s2 = get(L_TINY, "http://localhost:" .. O .. "/ok?i=b", "localhost:" .. O)
    assert.is_not.equal(200, s2)
    local s3, b3 = get(L_TINY, "https://127.0.0.1:" .. O .. "/ok?i=c", "127.0.0.1:" .. O)
    assert.equal(200, s3)
    assert.equal("ok-c", b3)
  end)

  it("relays a WebSocket upgrade (wss) over the originated TLS connection", function()
    local c = socket.tcp()
    c:settimeout(10)
    assert(c:connect("127.0.0.1", L_TINY))
    assert(c:send("GET https://" .. host .. "/ws HTTP/1.1\r\nHost: " .. host ..
      "\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"))
    local line = assert(c:receive("*l"))
    assert.matches("^HTTP/1.1 101", line)
    repeat line = assert(c:receive("*l")) until line == ""
    local msg = string.rep("frame-bytes ", 1000)
    assert(c:send(msg))
    local got = assert(c:receive(#msg))
    assert.equal(msg, got)
    c:close()
  end)

  it("applies ban rules to the decrypted status", function()
    local status = get(L_TWO, "https://" .. host .. "/status?code=429", host)
    assert.equal(429, status)
    local ban
    assert(procs.wait_for(function()
      ban = lines_with(fa, "FERRY-6006")[1]
      return ban ~= nil
    end, 5), "no ban line")
    assert.equal("loc", ban.exchange)
    -- The banned proxy takes no more requests of this exchange.
    for i = 1, 4 do
      local s = get(L_TWO, "https://" .. host .. "/ok?i=" .. i, host)
      assert.equal(200, s)
    end
    local used, n = {}, 0
    procs.wait_for(function()
      used, n = {}, 0
      for _, l in ipairs(lines_with(fa, "FERRY-0200")) do
        if l.listener == "two" and l.path:match("^/ok") then used[l.proxy], n = true, n + 1 end
      end
      return n >= 4
    end, 5)
    assert.equal(4, n)
    assert.is_nil(used[ban.proxy])
  end)

  it("refuses a reload whose exchange CA does not load; the old one keeps serving", function()
    procs.write_file(cafile, "not a certificate\n")
    procs.signal(fa, "HUP")
    assert(procs.wait_for(function()
      return procs.read_file(fa.log):find("FERRY-0190", 1, true)
    end, 10), "no FERRY-0190 line:\n" .. procs.read_file(fa.log):sub(-2000))
    local status = get(L_DIRECT, "https://" .. host .. "/ok?i=r", host)
    assert.equal(200, status)
    os.execute("cp " .. q(pki.ca) .. " " .. q(cafile))
  end)

  it("refuses at start a config whose exchange CA file is missing", function()
    local cfg = procs.write_file(dir .. "/bad.lua", string.format(
      'exchange "x" { hosts = { "a.example" }, pool = "direct", tls = { ca = "%s" } }\n',
      dir .. "/missing.pem"))
    local out = dir .. "/check.out"
    os.execute(q(procs.bin) .. " check -c " .. q(cfg) .. " > " .. q(out) .. " 2>&1")
    local text = procs.read_file(out)
    assert.truthy(text:find("FERRY-0190", 1, true), text)
    assert.truthy(text:find("missing.pem", 1, true), text)
  end)
end)
