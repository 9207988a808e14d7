-- Interception per exchange: ferry's CA (`ferry ca init`), a TLS origin
-- with a private CA under two host names, exchange "a" intercepted and
-- exchange "b" blind.  Shown: the origin's answer and the path in the
-- access line for "a", only the CONNECT for "b"; rotation per request
-- inside one client TLS connection (the origin sees two source ports);
-- a 429 inside HTTPS banning that proxy for that exchange only, the
-- request retried on the other proxy; the SNI rule; plain bytes and garbage after
-- the 200; clients that refuse ferry's certificate counted and logged once;
-- 8 MB up and down, checksummed; the Host rule (421); a SOCKS5 listener
-- with socks5h; intercept = true without a CA refused.  What runs, and how
-- the two host names resolve: spec/helpers/intercept_env.lua.
local procs = require("procs")
local socket = require("socket")
local tls_origin = require("tls_origin")
local intercept_env = require("intercept_env")

local q = procs.quote
local sh, access, events = intercept_env.sh, intercept_env.access, intercept_env.events

describe("interception", function()
  local env, dir, ca, pki, ferry, O, F, FS, ADM

  local function curl(args)
    return sh("curl -sS --max-time 20 -H 'Expect:' " .. args)
  end
  local function metric(name, labels)
    return procs.metric(ADM, name, labels) or 0
  end

  setup(function()
    env = intercept_env.start()
    dir, ca, pki, ferry = env.dir, env.ca, env.pki, env.ferry
    O, F, FS, ADM = env.O, env.F, env.FS, env.ADM
  end)

  teardown(function()
    if env then env.stop() end
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
    -- The tunnel's access line is written when ferry sees it close, which
    -- may be a moment after curl exits.
    local lines
    procs.wait_for(function()
      lines = access(ferry, function(l) return l.host == "exb" end)
      return #lines >= 1
    end)
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

  it("bans the proxy that got a 429 inside HTTPS for that exchange only, and retries", function()
    -- The origin answers 429 to the first try only: the client sees the
    -- retry's 200, never the 429.
    local out, rc = curl("-w ' %{http_code}' --cacert " .. q(ca) .. " -x http://127.0.0.1:" ..
      F .. " 'https://localhost:" .. O .. "/once?code=429&key=ban'")
    assert.are.equal(0, rc, out)
    assert.are.equal("ok-once 200", out)
    local bans = procs.wait_for(function()
      local b = events(ferry, "FERRY-6006")
      return #b > 0 and b
    end, 5)
    assert.is_truthy(bans, "no ban logged")
    assert.are.equal("a", bans[1].exchange)
    local banned = bans[1].proxy
    local line = access(ferry, function(l) return l.path == "/once?code=429&key=ban" end)[1]
    assert.are.equal(200, line.status)
    assert.are.equal(1, line.ban_retries)
    assert.are_not.equal(banned, line.proxy)
    -- Exchange "a" keeps off the banned proxy ...
    local urls = {}
    for i = 1, 4 do urls[i] = "https://localhost:" .. O .. "/ok?after=" .. i end
    out, rc = curl("--cacert " .. q(ca) .. " -x http://127.0.0.1:" .. F .. " " ..
      table.concat(urls, " "))
    assert.are.equal(0, rc, out)
    -- Access lines are flushed when ferry's loop next waits: the last one
    -- can reach the file after curl has exited, so wait for it (bounded).
    local after = procs.wait_for(function()
      local a = access(ferry, function(l) return l.path and l.path:match("^/ok%?after=") end)
      return #a >= 4 and a
    end, 5) or {}
    assert.are.equal(4, #after)
    for _, l in ipairs(after) do assert.are_not.equal(banned, l.proxy) end
    -- ... while exchange "c", on the same pool, still uses it.
    for i = 1, 4 do
      out, rc = curl("--cacert " .. q(pki.ca) .. " -x http://127.0.0.1:" .. F ..
        " https://127.0.0.1:" .. O .. "/ok?c=" .. i)
      assert.are.equal(0, rc, out)
    end
    local used = {}
    procs.wait_for(function()
      for _, l in ipairs(access(ferry, function(l) return l.exchange == "c" end)) do
        used[l.proxy] = true
      end
      return used[banned]
    end, 5)
    assert.is_true(used[banned])
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
