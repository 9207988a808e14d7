-- Failure attribution: what the destination did wrong is not the proxy's
-- failure.  An origin's oversized response head (D3) and a SOCKS5 or
-- CONNECT refusal about the target (D4) give the client a coded 502 and
-- leave the healthy proxy that carried them up, uncharged; a chunked
-- response reaches an HTTP/1.0 client de-chunked, delimited by the
-- close (D2).
local procs = require("procs")
local socket = require("socket")

describe("failure attribution", function()
  local origin, s1, s2, ferry
  local O, S1, S2, DEAD = procs.free_port(), procs.free_port(), procs.free_port(),
    procs.free_port()
  local F_SOCKS, F_DIRECT, F_HTTP, A = procs.free_port(), procs.free_port(), procs.free_port(),
    procs.free_port()
  local base = "http://127.0.0.1:" .. O

  setup(function()
    origin = procs.spawn("attrib-origin",
      "python3 " .. procs.quote(procs.root .. "/spec/helpers/attrib_origin.py") .. " " .. O)
    assert(procs.wait_port(O), "attrib origin did not start")
    s1 = procs.microsocks(S1)
    s2 = procs.microsocks(S2)
    -- fall = 3: three charged failures would take a proxy down.
    ferry = procs.ferry(string.format([[
listen { name = "socks", addr = "127.0.0.1:%d" }
listen { name = "direct", addr = "127.0.0.1:%d" }
listen { name = "connect502", addr = "127.0.0.1:%d" }
admin { addr = "127.0.0.1:%d" }
pool "socks" { strategy = "round_robin", retries = 3,
  health = { fall = 3, rise = 1 },
  proxies = { { id = "s1", url = "socks5://127.0.0.1:%d" },
              { id = "s2", url = "socks5://127.0.0.1:%d" } } }
pool "connect502" { strategy = "round_robin", retries = 3, health = { fall = 3, rise = 1 },
  proxies = { { id = "h1", url = "http://127.0.0.1:%d" },
              { id = "h2", url = "http://127.0.0.1:%d" } } }
route(function(req)
  if req.listener == "direct" then return "direct" end
  return req.listener
end)
]], F_SOCKS, F_DIRECT, F_HTTP, A, S1, S2, O, O), { F_SOCKS, F_DIRECT, F_HTTP, A })
  end)

  teardown(function()
    procs.stop_ferry(ferry)
    for _, p in ipairs { origin, s1, s2 } do procs.stop(p) end
  end)

  local function via(port) return "http://127.0.0.1:" .. port end

  local function m(name, labels) return procs.metric(A, name, labels) end

  local function header(headers, name)
    return headers:match("\n" .. name:gsub("%p", "%%%0") .. ":%s*([^\r\n]*)")
  end

  local function hits(path)
    local status, body = procs.curl { url = base .. "/hits?" .. path }
    assert.equal(200, status)
    return tonumber(body)
  end

  -- Every proxy of `pool` is up, was never down, and no failure of any
  -- kind was charged to it.
  local function uncharged(pool, ids)
    for _, id in ipairs(ids) do
      local l = string.format('proxy="%s",pool="%s"', id, pool)
      assert.equal(1, m("ferry_proxy_up", l))
      assert.equal(0, m("ferry_proxy_downs_total", l))
      for _, kind in ipairs { "refused", "timeout", "handshake", "auth", "http5xx", "reset" } do
        assert.equal(0, m("ferry_proxy_failures_total", l .. ',kind="' .. kind .. '"'), kind)
      end
    end
  end

  local function target_failures(pool, ids)
    local n = 0
    for _, id in ipairs(ids) do
      n = n + m("ferry_proxy_target_failures_total",
        string.format('proxy="%s",pool="%s"', id, pool))
    end
    return n
  end

  describe("an origin's oversized response head (D3)", function()
    it("is a 502 FERRY-3031 and never charged to the SOCKS5 proxies, nor retried", function()
      for _ = 1, 8 do
        local status, _, headers = procs.curl { proxy = via(F_SOCKS), url = base .. "/big-head" }
        assert.equal(502, status)
        assert.equal("FERRY-3031", header(headers, "X-Ferry-Error"))
      end
      for _ = 1, 4 do
        local status, _, headers = procs.curl { proxy = via(F_SOCKS),
          url = base .. "/many-fields" }
        assert.equal(502, status)
        assert.equal("FERRY-3031", header(headers, "X-Ferry-Error"))
      end
      -- One attempt each: the same answer would come through any proxy.
      assert.equal(8, hits("/big-head"))
      assert.equal(4, hits("/many-fields"))
      uncharged("socks", { "s1", "s2" })
      assert.equal(12, target_failures("socks", { "s1", "s2" }))
      -- The proxies still carry requests.
      local status, body = procs.curl { proxy = via(F_SOCKS), url = base .. "/chunked-small" }
      assert.equal(200, status)
      assert.equal("hello", body)
    end)

    it("is a 502 FERRY-3031 without a proxy too", function()
      local status, _, headers = procs.curl { proxy = via(F_DIRECT), url = base .. "/big-head" }
      assert.equal(502, status)
      assert.equal("FERRY-3031", header(headers, "X-Ferry-Error"))
    end)
  end)

  describe("a refusal about the target (D4)", function()
    it("SOCKS5 REP 5 is a 502 FERRY-3030, retried once, never charged", function()
      local before = target_failures("socks", { "s1", "s2" })
      for _ = 1, 6 do
        local status, _, headers = procs.curl { proxy = via(F_SOCKS),
          url = "http://127.0.0.1:" .. DEAD .. "/" }
        assert.equal(502, status)
        assert.equal("FERRY-3030", header(headers, "X-Ferry-Error"))
      end
      -- Two attempts per request (one retry), though retries = 3.
      assert.equal(12, target_failures("socks", { "s1", "s2" }) - before)
      uncharged("socks", { "s1", "s2" })
      local status = procs.curl { proxy = via(F_SOCKS), url = base .. "/chunked-small" }
      assert.equal(200, status)
    end)

    it("SOCKS5 REP 1 for a name that does not resolve (microsocks) is a 502 FERRY-3030, "
      .. "never charged", function()
      local before = target_failures("socks", { "s1", "s2" })
      for _ = 1, 4 do
        local status, _, headers = procs.curl { proxy = via(F_SOCKS),
          url = "http://no-such-host.invalid/" }
        assert.equal(502, status)
        assert.equal("FERRY-3030", header(headers, "X-Ferry-Error"))
      end
      assert.equal(8, target_failures("socks", { "s1", "s2" }) - before)
      uncharged("socks", { "s1", "s2" })
    end)

    it("a CONNECT answered 502 by an HTTP proxy is a 502 FERRY-3030, never charged", function()
      for _ = 1, 6 do
        local status, _, headers = procs.curl { proxy = via(F_HTTP),
          flags = "-p -w '%{http_connect}'",
          url = "http://127.0.0.1:" .. DEAD .. "/" }
        -- The answer ferry gave to curl's CONNECT.
        assert.equal(502, status)
        assert.equal("FERRY-3030", header(headers, "X-Ferry-Error"))
      end
      assert.equal(12, target_failures("connect502", { "h1", "h2" }))
      uncharged("connect502", { "h1", "h2" })
    end)
  end)

  describe("a chunked response to an HTTP/1.0 client (D2)", function()
    -- A raw HTTP/1.0 exchange: everything up to the close.
    local function get10(port, path)
      local s = assert(socket.connect("127.0.0.1", port))
      s:settimeout(20)
      assert(s:send(string.format("GET %s%s HTTP/1.0\r\nHost: 127.0.0.1:%d\r\n\r\n",
        base, path, O)))
      local data, err, partial = s:receive("*a")
      s:close()
      data = data or partial
      assert(data, err)
      local head, body = data:match("^(.-\r\n\r\n)(.*)$")
      assert(head, "no head in: " .. data:sub(1, 200))
      return head, body
    end

    -- Adler-32 of s, with its length.
    local function checksum(s)
      local a, b = 1, 0
      for i = 1, #s do
        a = (a + s:byte(i)) % 65521
        b = (b + a) % 65521
      end
      return string.format("%d:%08x", #s, b * 65536 + a)
    end

    local function expected_big()
      local t = {}
      for i = 0, 116508 do t[#t + 1] = string.format("%08d\n", i) end
      return table.concat(t)
    end

    for _, l in ipairs { { "direct", F_DIRECT }, { "socks", F_SOCKS } } do
      it("gets the data without chunked framing, delimited by the close, via " .. l[1],
        function()
        local head, body = get10(l[2], "/chunked-small")
        assert.matches("^HTTP/1%.1 200 ", head)
        assert.is_nil(head:lower():match("\ntransfer%-encoding:"))
        assert.is_nil(head:lower():match("\ncontent%-length:"))
        assert.matches("\r\nConnection: close\r\n", head)
        assert.equal("hello", body)
      end)

      it("gets a 1 MB body of many chunks byte-exact via " .. l[1], function()
        local head, body = get10(l[2], "/chunked-big")
        assert.matches("^HTTP/1%.1 200 ", head)
        assert.is_nil(head:lower():match("\ntransfer%-encoding:"))
        local want = expected_big()
        assert.equal(#want, #body)
        assert.equal(checksum(want), checksum(body))
        assert.is_true(want == body)
      end)
    end

    it("an HTTP/1.1 client still gets the chunked framing as sent", function()
      local status, body, headers = procs.curl { proxy = via(F_DIRECT),
        url = base .. "/chunked-small" }
      assert.equal(200, status)
      assert.equal("chunked", header(headers, "Transfer-Encoding"))
      assert.equal("hello", body)
    end)
  end)
end)
