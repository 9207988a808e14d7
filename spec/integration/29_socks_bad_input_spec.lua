-- Bad input on SOCKS listeners, from raw LuaSocket clients: truncated and
-- byte-by-byte greetings, unknown versions, methods, commands and address
-- types, domain names of length 0 and 255, wrong credentials, an HTTP
-- head on a SOCKS port (and a SOCKS greeting on an HTTP port), each
-- answered at once; timeouts, refusals and unresolvable names answered
-- with their REP codes; configs that would open SOCKS to the network
-- without users refused.
local procs = require("procs")
local socket = require("socket")

local function bytes(...)
  return string.char(...)
end

local function open(port)
  local c = assert(socket.connect("127.0.0.1", port))
  c:settimeout(5)
  return c
end

-- Exactly n bytes, or what came before the close / timeout and the error.
local function take(c, n)
  local got, err, partial = c:receive(n)
  return got or partial, err
end

-- Everything up to the peer's close, and "closed" (or "timeout" when it
-- did not close in time).
local function rest(c)
  local got, err, partial = c:receive("*a")
  return got or partial, (err == nil or err == "closed") and "closed" or err
end

-- A SOCKS5 CONNECT request for an IPv4 address.
local function connect4(ip, port)
  local a, b, c2, d = ip:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
  return bytes(5, 1, 0, 1, tonumber(a), tonumber(b), tonumber(c2), tonumber(d),
    math.floor(port / 256), port % 256)
end

local function connect_name(name, port)
  return bytes(5, 1, 0, 3, #name) .. name .. bytes(math.floor(port / 256), port % 256)
end

-- Greet without auth and send req; returns the reply's REP (or nil) and the whole reply.
local function socks5(port, req)
  local c = open(port)
  c:send(bytes(5, 1, 0))
  assert.equal(bytes(5, 0), (take(c, 2)))
  c:send(req)
  local head = take(c, 4)
  local reply = head or ""
  if head and #head == 4 then
    local more = head:byte(4) == 4 and 18 or 6
    reply = reply .. (take(c, more) or "")
  end
  return reply:byte(2), reply, c
end

describe("SOCKS bad input", function()
  local O, BH, S5, S5U, S4, H = procs.free_port(), procs.free_port(), procs.free_port(),
    procs.free_port(), procs.free_port(), procs.free_port()
  local VIA_BH, CLOSED = procs.free_port(), procs.free_port()
  local origin, ferry, blackhole

  setup(function()
    origin = procs.origin(O)
    -- A black hole: the kernel completes the TCP handshake, nobody ever reads.
    blackhole = assert(socket.bind("127.0.0.1", BH))
    ferry = procs.ferry(string.format([[
timeouts { client_head = 1, connect = 1 }
listen { name = "s5", addr = "127.0.0.1:%d", protocol = "socks5" }
listen { name = "s5u", addr = "127.0.0.1:%d", protocol = "socks5", users = { "alice:wonder" },
         auth_fail_limit = 1000 }
listen { name = "s4", addr = "127.0.0.1:%d", protocol = "socks4" }
listen { name = "http", addr = "127.0.0.1:%d" }
listen { name = "bh", addr = "127.0.0.1:%d", protocol = "socks5" }
pool "bh" { retries = 0, breaker = false, proxies = { "socks5://127.0.0.1:%d" } }
route(function(req) return req.listener == "bh" and "bh" or "direct" end)
]], S5, S5U, S4, H, VIA_BH, BH), { S5, S5U, S4, H, VIA_BH })
  end)

  teardown(function()
    if ferry then procs.stop_ferry(ferry) end
    if blackhole then blackhole:close() end
    procs.stop(origin)
  end)

  -- Ferry still serves a whole SOCKS5 tunnel.
  local function still_serving()
    local rep, _, c = socks5(S5, connect4("127.0.0.1", O))
    assert.equal(0, rep)
    c:send("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    local all = rest(c)
    c:close()
    assert.matches("hello from origin", all)
  end

  it("takes a greeting and a request sent one byte at a time", function()
    local c = open(S5)
    local msg = bytes(5, 1, 0) .. connect4("127.0.0.1", O)
    for i = 1, 3 do
      c:send(msg:sub(i, i))
      socket.sleep(0.02)
    end
    assert.equal(bytes(5, 0), (take(c, 2)))
    for i = 4, #msg do
      c:send(msg:sub(i, i))
      socket.sleep(0.02)
    end
    local reply = take(c, 10)
    assert.equal(0, reply:byte(2))
    c:send("GET /bytes/10 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert.matches("\r\n\r\nxxxxxxxxxx$", (rest(c)))
    c:close()
  end)

  it("takes greeting, request and the first tunnel bytes in one write", function()
    local c = open(S5)
    c:send(bytes(5, 1, 0) .. connect_name("localhost", O) ..
      "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert.equal(bytes(5, 0), (take(c, 2)))
    assert.equal(0, (take(c, 10)):byte(2))
    assert.matches("hello from origin", (rest(c)))
    c:close()
  end)

  it("chooses username/password without users when offered, for a session key", function()
    local c = open(S5)
    c:send(bytes(5, 2, 0, 2))
    assert.equal(bytes(5, 2), (take(c, 2)))
    c:send(bytes(1, 3) .. "any" .. bytes(5) .. "thing")
    assert.equal(bytes(1, 0), (take(c, 2)))
    c:send(connect4("127.0.0.1", O))
    assert.equal(0, (take(c, 10)):byte(2))
    c:close()
  end)

  it("closes a truncated greeting after client_head, without a reply", function()
    local c = open(S5)
    c:send(bytes(5, 3, 0))
    local t0 = socket.gettime()
    local got, err = rest(c)
    c:close()
    assert.equal("closed", err)
    assert.equal("", got)
    assert.is_true(socket.gettime() - t0 < 4, "not closed by the head timeout")
  end)

  it("closes an unknown version at once, without a reply", function()
    for _, v in ipairs { 0, 6, 0x7f, 0xff } do
      local c = open(S5)
      c:send(bytes(v, 1, 0))
      local got, err = rest(c)
      c:close()
      assert.equal("closed", err)
      assert.equal("", got)
    end
    assert.is_truthy(procs.read_file(ferry.log):find("FERRY-1050", 1, true))
  end)

  it("answers no acceptable method (0xFF) to unknown methods", function()
    local c = open(S5)
    c:send(bytes(5, 2, 0x80, 0x03))
    local got, err = rest(c)
    c:close()
    assert.equal(bytes(5, 0xff), got)
    assert.equal("closed", err)
    -- No methods at all.
    c = open(S5)
    c:send(bytes(5, 0))
    assert.equal(bytes(5, 0xff), (rest(c)))
    c:close()
  end)

  it("answers BIND, UDP ASSOCIATE and unknown commands with REP 7", function()
    for _, cmd in ipairs { 2, 3, 9 } do
      local rep = socks5(S5, bytes(5, cmd, 0, 1, 127, 0, 0, 1, 0, 80))
      assert.equal(7, rep, "command " .. cmd)
    end
    local c = open(S4)
    c:send(bytes(4, 2, 0, 80, 127, 0, 0, 1, 0))
    local got = rest(c)
    c:close()
    assert.equal(91, got:byte(2))
  end)

  it("answers unknown address types with REP 8", function()
    for _, atyp in ipairs { 0, 2, 5, 0xff } do
      assert.equal(8, (socks5(S5, bytes(5, 1, 0, atyp, 127, 0, 0, 1, 0, 80))), "atyp " .. atyp)
    end
  end)

  it("refuses a domain name of length 0, and routes one of length 255", function()
    assert.equal(1, (socks5(S5, bytes(5, 1, 0, 3, 0, 0, 80))))
    local name = string.rep("a", 63) .. "." .. string.rep("b", 63) .. "." ..
      string.rep("c", 63) .. "." .. string.rep("d", 55) .. ".invalid"
    assert.equal(255, #name)
    local rep = socks5(S5, connect_name(name, 80))
    assert.equal(4, rep) -- routed, then the name did not resolve
    -- Port 0 and bytes that cannot be in a host name.
    assert.equal(1, (socks5(S5, connect_name("localhost", 0))))
    assert.equal(1, (socks5(S5, connect_name("a b", 80))))
    still_serving()
  end)

  it("answers an unresolvable name with REP 4 and a refused port with REP 5", function()
    assert.equal(4, (socks5(S5, connect_name("no-such-host.invalid", 80))))
    assert.equal(5, (socks5(S5, connect4("127.0.0.1", CLOSED))))
    assert.equal(5, (socks5(S5, bytes(5, 1, 0, 4) .. string.rep("\0", 15) .. "\1" ..
      bytes(math.floor(CLOSED / 256), CLOSED % 256))))
  end)

  it("answers a timeout through a black-hole upstream with REP 6", function()
    local t0 = socket.gettime()
    assert.equal(6, (socks5(VIA_BH, connect4("127.0.0.1", O))))
    assert.is_true(socket.gettime() - t0 < 4)
    assert.is_truthy(procs.read_file(ferry.log):find("FERRY-3007", 1, true))
  end)

  it("answers wrong or malformed credentials with status 1 and closes", function()
    local c = open(S5U)
    c:send(bytes(5, 1, 2))
    assert.equal(bytes(5, 2), (take(c, 2)))
    c:send(bytes(1, 5) .. "alice" .. bytes(5) .. "wrong")
    assert.equal(bytes(1, 1), (rest(c)))
    c:close()
    -- A wrong subnegotiation version; an empty user name.
    for _, msg in ipairs { bytes(2, 5) .. "alice" .. bytes(6) .. "wonder",
                           bytes(1, 0, 6) .. "wonder" } do
      c = open(S5U)
      c:send(bytes(5, 1, 2))
      assert.equal(bytes(5, 2), (take(c, 2)))
      c:send(msg)
      assert.equal(bytes(1, 1), (rest(c)))
      c:close()
    end
    -- The right ones, sent one byte at a time.
    c = open(S5U)
    local msg = bytes(5, 1, 2, 1, 5) .. "alice" .. bytes(6) .. "wonder"
    for i = 1, #msg do
      c:send(msg:sub(i, i))
      socket.sleep(0.01)
    end
    assert.equal(bytes(5, 2, 1, 0), (take(c, 4)))
    c:send(connect4("127.0.0.1", O))
    assert.equal(0, (take(c, 10)):byte(2))
    c:close()
    local log = procs.read_file(ferry.log)
    assert.is_nil(log:find("wrong", 1, true))
  end)

  it("answers an HTTP head on a SOCKS port at once, in HTTP", function()
    for _, port in ipairs { S5, S4 } do
      local c = open(port)
      local t0 = socket.gettime()
      c:send("GET http://127.0.0.1/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
      local got = rest(c)
      c:close()
      assert.matches("^HTTP/1%.1 400", got)
      assert.matches("FERRY%-1050", got)
      assert.is_true(socket.gettime() - t0 < 0.9, "answered by the timeout, not at once")
    end
  end)

  it("answers a SOCKS greeting on an HTTP port at once (FERRY-1010)", function()
    local c = open(H)
    local t0 = socket.gettime()
    c:send(bytes(5, 1, 0))
    local got = rest(c)
    c:close()
    assert.matches("^HTTP/1%.1 400", got)
    assert.matches("FERRY%-1010", got)
    assert.is_true(socket.gettime() - t0 < 0.9)
  end)

  it("takes SOCKS4 and 4a one byte at a time and bounds the user id", function()
    local c = open(S4)
    local msg = bytes(4, 1, math.floor(O / 256), O % 256, 0, 0, 0, 1) .. "someone" .. "\0" ..
      "localhost\0"
    for i = 1, #msg do
      c:send(msg:sub(i, i))
      socket.sleep(0.01)
    end
    local reply = take(c, 8)
    assert.equal(90, reply:byte(2))
    c:close()
    -- A user id with no end in sight.
    c = open(S4)
    c:send(bytes(4, 1, 0, 80, 127, 0, 0, 1) .. string.rep("u", 300))
    assert.equal(91, (rest(c)):byte(2))
    c:close()
    -- 4a with an empty name.
    c = open(S4)
    c:send(bytes(4, 1, 0, 80, 0, 0, 0, 1, 0, 0))
    assert.equal(91, (rest(c)):byte(2))
    c:close()
  end)

  it("keeps serving after all of it", function()
    still_serving()
    assert.is_true(procs.alive(ferry))
  end)
end)

describe("SOCKS listener config", function()
  local function check(text)
    local cfg = procs.write_file(string.format("%s/socks-check-%d.lua", procs.tmp,
      math.random(1, 1e9)), text)
    local p = io.popen(procs.quote(procs.bin) .. " check -c " .. procs.quote(cfg) ..
      " 2>&1; echo \"exit=$?\"")
    local out = p:read("*a")
    p:close()
    os.remove(cfg)
    return tonumber(out:match("exit=(%d+)")), out
  end

  it("refuses non-loopback SOCKS and mixed listeners without users", function()
    for _, proto in ipairs { "socks5", "socks4", "mixed" } do
      local rc, out = check(string.format(
        'listen { addr = "0.0.0.0:1080", protocol = "%s" }\n', proto))
      assert.equal(1, rc, out)
      assert.matches("refusing to listen on 0%.0%.0%.0 without users", out)
    end
    local rc, out = check('listen { addr = "0.0.0.0:1080", protocol = "socks5", ' ..
      'users = { "a:b" } }\n')
    assert.equal(0, rc, out)
  end)

  it("refuses users on a SOCKS4 listener and unknown protocols", function()
    local rc, out = check('listen { addr = "127.0.0.1:1080", protocol = "socks4", ' ..
      'users = { "a:b" } }\n')
    assert.equal(1, rc, out)
    assert.matches("SOCKS4 has no password", out)
    rc, out = check('listen { addr = "127.0.0.1:1080", protocol = "gopher" }\n')
    assert.equal(1, rc, out)
    assert.matches('protocol "gopher"', out)
  end)
end)
