-- HTTP conformance of the forward proxy: what ferry adds (Via,
-- X-Request-Id), what it forwards (Trailer, Max-Forwards counted down),
-- what it answers itself (OPTIONS *, Max-Forwards: 0), interim responses
-- and HTTP/1.0 clients, ws:// in absolute form, request targets without
-- a path, and how requests refused early are answered and logged.
local procs = require("procs")
local socket = require("socket")

-- Send raw bytes; everything the peer answers until it closes.
local function raw(port, data)
  local c = assert(socket.connect("127.0.0.1", port))
  c:settimeout(5)
  c:send(data)
  local all, _, partial = c:receive("*a")
  c:close()
  return all or partial or ""
end

describe("HTTP conformance", function()
  local origin, lenient, hostile, ferry, plain
  local O, L, X = procs.free_port(), procs.free_port(), procs.free_port()
  local F, P, C = procs.free_port(), procs.free_port(), procs.free_port()
  local lenient_log = procs.tmp .. "/lenient-" .. math.random(1, 1e9) .. ".log"
  local base = "http://127.0.0.1:" .. O
  local lbase = "http://127.0.0.1:" .. L
  local proxy = "http://127.0.0.1:" .. F

  setup(function()
    procs.write_file(lenient_log, "")
    origin = procs.origin(O)
    lenient = procs.spawn("lenient", "python3 " .. procs.root .. "/spec/helpers/lenient_origin.py " ..
      L .. " " .. lenient_log)
    assert(procs.wait_port(L), "lenient origin did not start")
    hostile = procs.spawn("hostile", "python3 " .. procs.root .. "/spec/helpers/hostile_origin.py " ..
      X)
    assert(procs.wait_port(X), "hostile origin did not start")
    ferry = procs.ferry(string.format([[
timeouts { client_head = 1 }
http { via_name = "edge-1" }
listen { name = "main", addr = "127.0.0.1:%d" }
listen { name = "chain", addr = "127.0.0.1:%d" }
pool "self" { proxies = { "http://127.0.0.1:%d" } }
route(function(req) if req.listener == "chain" then return "self" end return "direct" end)
]], F, C, F), { F, C })
    plain = procs.ferry(string.format([[
http { via = false }
listen { name = "plain", addr = "127.0.0.1:%d" }
route(function() return "direct" end)
]], P), { P }, "ferry-plain")
  end)

  teardown(function()
    -- Helpers first: stop_ferry raises on a sanitizer report.
    procs.stop(origin)
    procs.stop(lenient)
    procs.stop(hostile)
    procs.stop(plain)
    procs.stop_ferry(ferry)
    local report = procs.sanitizer_report(plain)
    assert(report == nil, "sanitizer: " .. tostring(report))
  end)

  local function lenient_lines()
    local out = {}
    for line in procs.read_file(lenient_log):gmatch("[^\n]+") do out[#out + 1] = line end
    return out
  end

  local function access_line(proc, cid)
    return procs.wait_for(function()
      for _, l in ipairs(procs.log_lines(proc)) do
        if l.msg == "access" and l.cid == cid then return l end
      end
    end)
  end

  describe("Via", function()
    it("is added to requests and responses, after the Via already there", function()
      local status, body, headers = procs.curl { proxy = proxy, url = base .. "/headers",
        flags = "-H 'Via: 1.0 fred, 1.1 p.example'" }
      assert.equal(200, status)
      assert.matches("\r\nVia: 1%.0 fred, 1%.1 p%.example, 1%.1 edge%-1\r\n", body)
      assert.equal(1, select(2, body:gsub("\r\nVia:", "")))
      assert.matches("\r\nVia: 1%.1 edge%-1\r\n", headers)
    end)

    it("names the version the message arrived in", function()
      local resp = raw(F, "GET " .. base .. "/headers HTTP/1.0\r\nHost: x\r\n\r\n")
      assert.matches("\r\nVia: 1%.0 edge%-1\r\n", resp)
      assert.matches("^HTTP/1%.1 200 ", resp)
    end)

    it("is left out when http { via = false }, and a received one passes unchanged", function()
      local status, body, headers = procs.curl { proxy = "http://127.0.0.1:" .. P,
        url = base .. "/headers", flags = "-H 'Via: 1.0 fred'" }
      assert.equal(200, status)
      assert.matches("\r\nVia: 1%.0 fred\r\n", body)
      assert.is_nil(body:find("ferry", 1, true))
      assert.is_nil(headers:find("Via:", 1, true))
    end)
  end)

  describe("X-Request-Id", function()
    it("comes back on every response, ours or the client's", function()
      local status, _, headers = procs.curl { proxy = proxy, url = base .. "/" }
      assert.equal(200, status)
      local cid = headers:match("\r\nX%-Request%-Id: (%x+)\r\n")
      assert.truthy(cid)
      assert.equal(cid, access_line(ferry, cid).cid)
      local _, _, mine = procs.curl { proxy = proxy, url = base .. "/",
        flags = "-H 'X-Request-Id: my-id-42'" }
      assert.matches("\r\nX%-Request%-Id: my%-id%-42\r\n", mine)
      assert.equal(1, select(2, mine:gsub("X%-Request%-Id:", "")))
      local _, _, tunnel = procs.curl { proxy = proxy, url = base .. "/", flags = "-p -v" }
      assert.matches("X%-Request%-Id: %x+", tunnel)
    end)

    it("is not taken from the origin's response", function()
      local resp = raw(F, "GET http://127.0.0.1:" .. X .. "/ok HTTP/1.1\r\nHost: x\r\n" ..
        "X-Request-Id: abc-1\r\nConnection: close\r\n\r\n")
      assert.matches("^HTTP/1%.1 200 ", resp)
      assert.matches("\r\nX%-Request%-Id: abc%-1\r\n", resp)
    end)
  end)

  describe("hop-by-hop fields", function()
    it("forwards Trailer, drops TE, Keep-Alive, Upgrade and Connection-listed fields", function()
      local status, body = procs.curl { proxy = proxy, url = base .. "/headers",
        flags = "-H 'Trailer: X-Sum' -H 'Connection: X-Hop' -H 'X-Hop: 1' -H 'TE: trailers' " ..
                "-H 'Keep-Alive: timeout=5' -H 'Upgrade: h2c' -H 'Proxy-Authorization: Basic eDp5'" }
      assert.equal(200, status)
      assert.matches("\r\nTrailer: X%-Sum\r\n", body)
      for _, name in ipairs({ "X-Hop", "TE:", "Keep-Alive", "Upgrade", "Proxy-Authorization" }) do
        assert.is_nil(body:find(name, 1, true), name)
      end
    end)

    it("forwards a response's Trailer field and its trailer section", function()
      local resp = raw(F, "GET http://127.0.0.1:" .. X .. "/chunked-good HTTP/1.1\r\nHost: x\r\n" ..
        "Connection: close\r\n\r\n")
      assert.matches("\r\nTrailer: X%-Sum\r\n", resp)
      assert.matches("0\r\nX%-Sum: 5\r\n\r\n$", resp)
    end)
  end)

  describe("interim responses", function()
    it("reach an HTTP/1.1 client rewritten, and never an HTTP/1.0 client", function()
      local r11 = raw(F, "GET http://127.0.0.1:" .. X .. "/continue-then-ok HTTP/1.1\r\n" ..
        "Host: x\r\nConnection: close\r\n\r\n")
      assert.matches("^HTTP/1%.1 100 Continue\r\nX%-Interim: 1\r\nVia: 1%.1 edge%-1\r\n", r11)
      assert.matches("\r\n\r\nHTTP/1%.1 200 OK\r\n", r11)
      local hints = raw(F, "GET http://127.0.0.1:" .. X .. "/hints-then-ok HTTP/1.1\r\n" ..
        "Host: x\r\nConnection: close\r\n\r\n")
      assert.matches("^HTTP/1%.1 103 Early Hints\r\nLink: </a%.css>; rel=preload\r\n", hints)
      for _, path in ipairs({ "/continue-then-ok", "/hints-then-ok" }) do
        local r10 = raw(F, "GET http://127.0.0.1:" .. X .. path .. " HTTP/1.0\r\nHost: x\r\n\r\n")
        assert.matches("^HTTP/1%.1 200 OK\r\n", r10)
        assert.is_nil(r10:find("HTTP/1.1 1", 1, true))
        assert.matches("\r\n\r\nhello$", r10)
      end
    end)
  end)

  describe("OPTIONS, TRACE and Max-Forwards", function()
    it("answers OPTIONS * itself", function()
      local resp = raw(F, "OPTIONS * HTTP/1.1\r\nHost: 127.0.0.1:" .. F .. "\r\n\r\n")
      assert.matches("^HTTP/1%.1 200 ", resp)
      assert.matches("\r\nAllow: [^\r]*OPTIONS", resp)
      assert.matches("\r\nX%-Request%-Id: %x+\r\n", resp)
    end)

    it("sends OPTIONS http://host as OPTIONS * and counts Max-Forwards down", function()
      local resp = raw(F, "OPTIONS " .. lbase .. " HTTP/1.1\r\nHost: x\r\nMax-Forwards: 5\r\n" ..
        "Connection: close\r\n\r\n")
      assert.matches("^HTTP/1%.1 200 ", resp)
      assert.matches("OPTIONS %* via=1%.1 edge%-1 mf=4 ", resp)
      local trace = raw(F, "TRACE " .. lbase .. "/t HTTP/1.1\r\nHost: x\r\nMax-Forwards: 1\r\n" ..
        "Connection: close\r\n\r\n")
      assert.matches("TRACE /t via=1%.1 edge%-1 mf=0 ", trace)
    end)

    it("keeps OPTIONS http://host without a path through an upstream proxy", function()
      local resp = raw(C, "OPTIONS " .. lbase .. " HTTP/1.1\r\nHost: x\r\nMax-Forwards: 5\r\n" ..
        "Connection: close\r\n\r\n")
      assert.matches("^HTTP/1%.1 200 ", resp)
      assert.matches("OPTIONS %* via=1%.1 edge%-1, 1%.1 edge%-1 mf=3 ", resp)
    end)

    it("leaves Max-Forwards alone on other methods", function()
      local resp = raw(F, "GET " .. lbase .. "/g HTTP/1.1\r\nHost: x\r\nMax-Forwards: 0\r\n" ..
        "Connection: close\r\n\r\n")
      assert.matches("GET /g via=1%.1 edge%-1 mf=0 ", resp)
    end)

    it("answers OPTIONS and TRACE with Max-Forwards: 0 itself", function()
      local before = #lenient_lines()
      local opt = raw(F, "OPTIONS " .. lbase .. "/o HTTP/1.1\r\nHost: x\r\nMax-Forwards: 0\r\n\r\n")
      assert.matches("^HTTP/1%.1 200 ", opt)
      assert.matches("\r\nAllow: ", opt)
      local trace = raw(F, "TRACE " .. lbase .. "/t HTTP/1.1\r\nHost: x\r\nMax-Forwards: 0\r\n" ..
        "Authorization: Basic c2VjcmV0\r\nCookie: s=1\r\nX-Mine: yes\r\n\r\n")
      assert.matches("^HTTP/1%.1 200 ", trace)
      assert.matches("\r\nContent%-Type: message/http\r\n", trace)
      local len = tonumber(trace:match("\r\nContent%-Length: (%d+)\r\n"))
      local body = trace:match("\r\n\r\n(.*)$")
      assert.equal(len, #body)
      assert.matches("^TRACE " .. lbase:gsub("%p", "%%%0") .. "/t HTTP/1%.1\r\n", body)
      assert.matches("\r\nX%-Mine: yes\r\n\r\n$", body)
      assert.is_nil(body:find("c2VjcmV0", 1, true))
      assert.is_nil(body:find("s=1", 1, true))
      assert.equal(before, #lenient_lines())
    end)

    it("refuses a Max-Forwards that is not a number on TRACE and OPTIONS", function()
      local resp = raw(F, "OPTIONS " .. lbase .. "/o HTTP/1.1\r\nHost: x\r\nMax-Forwards: -1\r\n\r\n")
      assert.matches("^HTTP/1%.1 400 ", resp)
    end)
  end)

  describe("request targets", function()
    it("sends http://host?x=1 as GET /?x=1", function()
      local status, body = procs.curl { proxy = proxy, url = lbase .. "?x=1" }
      assert.equal(200, status)
      assert.matches("^GET /%?x=1 ", body)
      local resp = raw(F, "GET " .. lbase .. "?y=2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
      assert.matches("\r\n\r\nGET /%?y=2 ", resp)
    end)

    it("takes absolute-form ws:// with Upgrade: websocket as http://", function()
      local c = assert(socket.connect("127.0.0.1", F))
      c:settimeout(5)
      c:send("GET ws://127.0.0.1:" .. O .. "/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n" ..
             "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n" ..
             "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
      local line = c:receive("*l")
      assert.equal("HTTP/1.1 101 Switching Protocols", line)
      repeat line = c:receive("*l") until line == "" or line == nil
      c:send("ping over ws://")
      local echoed = c:receive(15)
      c:close()
      assert.equal("ping over ws://", echoed)
    end)

    -- wss:// with an upgrade is originated over TLS (39_origin_spec.lua).
    it("refuses ws:// and wss:// without an upgrade", function()
      local plain_ws = raw(F, "GET ws://127.0.0.1:" .. O .. "/ws HTTP/1.1\r\nHost: x\r\n\r\n")
      assert.matches("^HTTP/1%.1 400 ", plain_ws)
      assert.matches("FERRY%-1003", plain_ws)
      local wss = raw(F, "GET wss://127.0.0.1:" .. O .. "/ws HTTP/1.1\r\nHost: x\r\n\r\n")
      assert.matches("^HTTP/1%.1 400 ", wss)
      assert.matches("FERRY%-1003", wss)
    end)
  end)

  describe("requests refused early", function()
    it("answer 408 with a request id, and log a real duration", function()
      local resp = raw(F, "GET " .. base .. "/ HTTP/1.1\r\nHost: x\r\n")
      assert.matches("^HTTP/1%.1 408 ", resp)
      local cid = resp:match("\r\nX%-Request%-Id: (%x+)\r\n")
      assert.truthy(cid)
      local l = access_line(ferry, cid)
      assert.equal("FERRY-1006", l.code)
      assert.equal(408, l.status)
      -- The head's own time (client_head = 1 s), not the time since the epoch.
      assert.is_true(l.ms >= 500 and l.ms < 600000, tostring(l.ms))
      assert.equal("GET", l.method)
      assert.equal(base .. "/", l.path)
    end)

    it("log what they were: method and target, or -", function()
      local resp = raw(F, "GET /origin-form HTTP/1.1\r\nHost: x\r\n\r\n")
      local cid = resp:match("\r\nX%-Request%-Id: (%x+)\r\n")
      local l = access_line(ferry, cid)
      assert.equal("FERRY-1002", l.code)
      assert.same({ "GET", "-", "/origin-form" }, { l.method, l.host, l.path })
      local warned
      for _, e in ipairs(procs.log_lines(ferry)) do
        if e.level == "warn" and e.cid == cid then warned = e.msg end
      end
      assert.equal("GET /origin-form: a proxy request needs an absolute URL or CONNECT", warned)
      local bad = raw(F, "\1\2\3 nonsense\r\n\r\n")
      local l2 = access_line(ferry, bad:match("\r\nX%-Request%-Id: (%x+)\r\n"))
      assert.equal("FERRY-1010", l2.code)
      assert.same({ "-", "-", "-" }, { l2.method, l2.host, l2.path })
    end)
  end)
end)
