-- Control headers and user name parameters against the real binary: a
-- pool with proxies in two regions (microsocks bound to their own
-- loopback source address, and tinyproxy, which sends absolute-form
-- heads on) and an origin that answers the address each request came
-- from (/peer) and the head it received (/headers).  X-Ferry-Region
-- restricts the choice, an unknown one is refused with its code;
-- X-Ferry-Rotate moves a sticky pin; X-Ferry-Pool works only where the
-- listener allows it; none of them reaches the origin; the same
-- parameters work as Proxy-Authorization and SOCKS5 user names, and on
-- a request ferry originates over TLS (absolute https://, tls_origin.py).
local procs = require("procs")
local socket = require("socket")
local tls_origin = require("tls_origin")

-- Source address of each proxy's outgoing connections: the origin's
-- /peer tells which proxy carried a request.  tinyproxy binds nothing
-- (127.0.0.1).
local EU = { ["127.0.0.2"] = "eu-1", ["127.0.0.3"] = "eu-2" }
local US = { ["127.0.0.4"] = "us-1", ["127.0.0.1"] = "us-t" }
local OTHER = "127.0.0.6"

local function count_keys(t)
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  return n
end

describe("control headers", function()
  local O = procs.free_port()
  local P = { procs.free_port(), procs.free_port(), procs.free_port(), procs.free_port(),
              procs.free_port() }
  local F, FL, FP, FA, FS, FSA = procs.free_port(), procs.free_port(), procs.free_port(),
    procs.free_port(), procs.free_port(), procs.free_port()
  local origin, ferry, tls
  local ups = {}
  local TO = procs.free_port()
  local dir = procs.tmp .. "/ctl-" .. math.random(1, 1e9)

  setup(function()
    origin = procs.origin(O)
    local pki = tls_origin.pki(dir, { "localhost" })
    tls = tls_origin.start(TO, pki.cert, pki.key)
    local function ms(port, bind)
      local p = procs.spawn("microsocks", "microsocks -i 127.0.0.1 -p " .. port .. " -b " .. bind)
      assert(procs.wait_port(port), "microsocks did not start")
      ups[#ups + 1] = p
    end
    ms(P[1], "127.0.0.2")
    ms(P[2], "127.0.0.3")
    ms(P[3], "127.0.0.4")
    ups[#ups + 1] = procs.tinyproxy(P[4])
    ms(P[5], OTHER)
    ferry = procs.ferry(string.format([[
listen { name = "main", addr = "127.0.0.1:%d", allow_pool_header = true }
listen { name = "listed", addr = "127.0.0.1:%d", allow_pool_header = { "alt" } }
listen { name = "plain", addr = "127.0.0.1:%d" }
listen { name = "authed", addr = "127.0.0.1:%d", users = { "alice:wonder" } }
listen { name = "socks", addr = "127.0.0.1:%d", protocol = "socks5", allow_pool_header = true }
listen { name = "socks-authed", addr = "127.0.0.1:%d", protocol = "socks5",
         users = { "alice:wonder" } }
pool "mix" { strategy = "sticky", retries = 2, breaker = false, proxies = {
  { url = "socks5://127.0.0.1:%d", id = "eu-1", region = "eu" },
  { url = "socks5://127.0.0.1:%d", id = "eu-2", region = "eu" },
  { url = "socks5://127.0.0.1:%d", id = "us-1", region = "us" },
  { url = "http://127.0.0.1:%d", id = "us-t", region = "us" },
} }
pool "alt" { strategy = "round_robin", breaker = false, proxies = {
  { url = "socks5://127.0.0.1:%d", id = "ap-1", region = "ap" },
} }
exchange "tls" { hosts = { "localhost" }, pool = "mix", tls = { ca = "%s" } }
route(function() return "mix" end)
]], F, FL, FP, FA, FS, FSA, P[1], P[2], P[3], P[4], P[5], pki.ca), { F, FL, FP, FA, FS, FSA })
  end)

  teardown(function()
    if ferry then procs.stop_ferry(ferry) end
    procs.stop(origin)
    procs.stop(tls)
    for _, p in ipairs(ups) do procs.stop(p) end
    os.execute("rm -rf " .. procs.quote(dir))
  end)

  -- One request through ferry.  opts: port (listener), headers (list of
  -- "Name: value"), cred (user:pass), path, socks (through the SOCKS5
  -- listener, remote names), tunnel (CONNECT, headers as proxy headers).
  -- Returns status, body, headers, X-Ferry-Error.
  local function go(opts)
    local flags = {}
    for _, h in ipairs(opts.headers or {}) do
      flags[#flags + 1] = (opts.tunnel and "--proxy-header " or "-H ") .. procs.quote(h)
    end
    if opts.tunnel then flags[#flags + 1] = "-p" end
    local scheme = opts.socks and "socks5h://" or "http://"
    local proxy = scheme .. (opts.cred and (opts.cred .. "@") or "") .. "127.0.0.1:" ..
      (opts.port or F)
    local status, body, headers, err = procs.curl { proxy = proxy, flags = table.concat(flags, " "),
      url = "http://127.0.0.1:" .. O .. (opts.path or "/peer"), max_time = 5 }
    return status, body, headers, procs.last_header(headers, "X-Ferry-Error"), err
  end

  -- The source address the origin saw, asserting a 200.
  local function peer(opts)
    local status, body, headers = go(opts)
    assert.equal(200, status, headers .. body)
    return (body:gsub("%s+$", ""))
  end

  it("sends X-Ferry-Region: eu only through proxies of region eu, and both of them", function()
    local seen = {}
    for i = 1, 16 do
      local p = peer { headers = { "X-Ferry-Region: eu", "X-Ferry-Session: reg-eu-" .. i } }
      assert.is_string(EU[p], "not an eu proxy: " .. p)
      seen[p] = true
    end
    assert.equal(2, count_keys(seen))
    seen = {}
    for i = 1, 16 do
      local p = peer { headers = { "X-Ferry-Region: us", "X-Ferry-Session: reg-us-" .. i } }
      assert.is_string(US[p], "not a us proxy: " .. p)
      seen[p] = true
    end
    assert.equal(2, count_keys(seen))
  end)

  it("answers a region no proxy of the pool is in with 503 FERRY-2021", function()
    local status, _, _, code = go { headers = { "X-Ferry-Region: mars" } }
    assert.equal(503, status)
    assert.equal("FERRY-2021", code)
    -- The pool "alt" has region ap only.
    status, _, _, code = go { headers = { "X-Ferry-Region: eu", "X-Ferry-Pool: alt" } }
    assert.equal(503, status)
    assert.equal("FERRY-2021", code)
    assert.equal(OTHER, peer { headers = { "X-Ferry-Region: ap", "X-Ferry-Pool: alt" } })
  end)

  it("answers invalid control values with 400 FERRY-1060", function()
    for _, h in ipairs { "X-Ferry-Rotate: yes", "X-Ferry-Pool: no/such", "X-Ferry-Rotate: 2" } do
      local status, _, _, code = go { headers = { h } }
      assert.equal(400, status, h)
      assert.equal("FERRY-1060", code, h)
    end
  end)

  it("moves a session's pin with X-Ferry-Rotate: 1, and the session sticks again", function()
    local S = "X-Ferry-Session: rot-1"
    local first = peer { headers = { S } }
    for _ = 1, 4 do assert.equal(first, peer { headers = { S } }) end
    local second = peer { headers = { S, "X-Ferry-Rotate: 1" } }
    assert.not_equal(first, second)
    for _ = 1, 4 do assert.equal(second, peer { headers = { S } }) end
    -- Rotate: 0 is no rotation.
    assert.equal(second, peer { headers = { S, "X-Ferry-Rotate: 0" } })
    -- Rotating within a region stays in it, and each rotation moves.
    local last = peer { headers = { "X-Ferry-Session: rot-2", "X-Ferry-Region: eu" } }
    for _ = 1, 4 do
      local now = peer { headers = { "X-Ferry-Session: rot-2", "X-Ferry-Region: eu",
                                     "X-Ferry-Rotate: 1" } }
      assert.is_string(EU[now])
      assert.not_equal(last, now)
      last = now
    end
  end)

  it("takes X-Ferry-Pool only where the listener allows that pool", function()
    assert.equal(OTHER, peer { headers = { "X-Ferry-Pool: alt" } })
    assert.equal(OTHER, peer { port = FL, headers = { "X-Ferry-Pool: alt" } })
    local status, _, _, code = go { port = FL, headers = { "X-Ferry-Pool: mix" } }
    assert.equal(403, status)
    assert.equal("FERRY-2020", code)
    status, _, _, code = go { port = FP, headers = { "X-Ferry-Pool: alt" } }
    assert.equal(403, status)
    assert.equal("FERRY-2020", code)
    status, _, _, code = go { headers = { "X-Ferry-Pool: nope" } }
    assert.equal(400, status)
    assert.equal("FERRY-1061", code)
    -- "direct" is a choice only when a list names it.
    status, _, _, code = go { headers = { "X-Ferry-Pool: direct" } }
    assert.equal(403, status)
    assert.equal("FERRY-2020", code)
  end)

  it("never forwards a control header, repeated or not, through any kind of proxy", function()
    local covered = {}
    for i = 1, 16 do
      local status, body = go { path = "/headers", headers = {
        "X-Ferry-Session: fw-" .. i, "X-Ferry-Region: us", "X-Ferry-Rotate: 1",
        "X-Ferry-Pool: mix", "X-Keep: yes", "X-Ferry-Region: eu", "x-ferry-rotate: 0",
        "X-Ferry-Session: again", "X-FERRY-POOL: alt" } }
      assert.equal(200, status, body)
      assert.matches("X%-Keep: yes", body)
      assert.is_nil(body:lower():find("x-ferry-", 1, true), body)
      covered[peer { headers = { "X-Ferry-Session: fw-" .. i, "X-Ferry-Region: us" } }] = true
      if count_keys(covered) == 2 then break end
    end
    -- Both us proxies carried one: socks5 and tinyproxy (absolute form).
    assert.equal(2, count_keys(covered))
  end)

  it("reads the parameters from a Proxy-Authorization user name", function()
    for i = 1, 8 do
      assert.is_string(EU[peer { cred = "carol-region-eu-session-pa" .. i .. ":x" }])
      assert.is_string(US[peer { port = FA, cred = "alice-session-pb" .. i .. "-region-us:wonder" }])
    end
    -- The plain USER-session-KEY form still names a session.
    local first = peer { port = FA, cred = "alice-session-pc:wonder" }
    for _ = 1, 3 do assert.equal(first, peer { port = FA, cred = "alice-session-pc:wonder" }) end
    local moved = peer { port = FA, cred = "alice-session-pc-rotate-1:wonder" }
    assert.not_equal(first, moved)
    for _ = 1, 3 do assert.equal(moved, peer { port = FA, cred = "alice-session-pc:wonder" }) end
    -- A header wins over the user name's parameter.
    assert.is_string(US[peer { cred = "carol-region-eu-session-pd:x",
                               headers = { "X-Ferry-Region: us" } }])
    assert.equal(OTHER, peer { cred = "carol-pool-alt:x" })
    -- The base user name is what is checked.
    local status = go { port = FA, cred = "alice-region-eu:wrong" }
    assert.equal(407, status)
    status = go { port = FA, cred = "mallory-region-eu:wonder" }
    assert.equal(407, status)
    local _, _, _, code = go { cred = "carol-region-mars:x" }
    assert.equal("FERRY-2021", code)
  end)

  it("holds for a CONNECT tunnel with the headers as proxy headers", function()
    for i = 1, 6 do
      local status, body = go { tunnel = true, headers = { "X-Ferry-Region: eu",
                                                           "X-Ferry-Session: tun-" .. i } }
      assert.equal(200, status)
      assert.is_string(EU[body:gsub("%s+$", "")], body)
    end
    -- curl reports no final status when CONNECT fails: the head says it.
    local _, _, headers, code = go { tunnel = true, headers = { "X-Ferry-Region: mars" } }
    assert.matches("^HTTP/1%.1 503 ", headers)
    assert.equal("FERRY-2021", code)
  end)

  it("reads the parameters from a SOCKS5 user name (RFC 1929)", function()
    for i = 1, 8 do
      assert.is_string(EU[peer { socks = true, port = FS,
                                 cred = "carol-region-eu-session-sa" .. i .. ":x" }])
      assert.is_string(US[peer { socks = true, port = FSA,
                                 cred = "alice-region-us-session-sb" .. i .. ":wonder" }])
    end
    assert.equal(OTHER, peer { socks = true, port = FS, cred = "carol-pool-alt:x" })
    local first = peer { socks = true, port = FSA, cred = "alice-session-sc:wonder" }
    for _ = 1, 3 do
      assert.equal(first, peer { socks = true, port = FSA, cred = "alice-session-sc:wonder" })
    end
    local moved = peer { socks = true, port = FSA, cred = "alice-session-sc-rotate-1:wonder" }
    assert.not_equal(first, moved)
    assert.equal(moved, peer { socks = true, port = FSA, cred = "alice-session-sc:wonder" })
    -- Refusals: the SOCKS reply fails, the log names the code.
    local status = go { socks = true, port = FS, cred = "carol-region-mars:x" }
    assert.equal(0, status)
    status = go { socks = true, port = FSA, cred = "alice-pool-alt:wonder" }
    assert.equal(0, status)
    status = go { socks = true, port = FSA, cred = "alice-region-eu:wrong" }
    assert.equal(0, status)
    local codes = {}
    assert.is_true(procs.wait_for(function()
      for _, l in ipairs(procs.log_lines(ferry)) do
        if l.code then codes[l.code] = true end
      end
      return codes["FERRY-2021"] and codes["FERRY-2020"]
    end, 5))
  end)

  it("holds on a request ferry sends over TLS itself (absolute https://)", function()
    local seen = {}
    for i = 1, 12 do
      local c = socket.tcp()
      c:settimeout(15)
      assert(c:connect("127.0.0.1", F))
      local host = "localhost:" .. TO
      assert(c:send("GET https://" .. host .. "/head HTTP/1.1\r\nHost: " .. host .. "\r\n" ..
        "X-Ferry-Region: eu\r\nX-Ferry-Session: tls-" .. i .. "\r\nX-Ferry-Rotate: 0\r\n" ..
        "X-Ferry-Region: us\r\nConnection: close\r\n\r\n"))
      local status, body, head = procs.read_response(c)
      c:close()
      assert.equal(200, status, tostring(head) .. tostring(body))
      assert.matches("^GET /head HTTP/1.1\r\n", body)
      assert.is_nil(body:lower():find("x-ferry-", 1, true), body)
      local label = procs.last_header(head, "X-Ferry-Proxy")
      assert.truthy(label == "eu-1" or label == "eu-2", head)
      seen[label] = true
    end
    assert.equal(2, count_keys(seen))
  end)
end)
