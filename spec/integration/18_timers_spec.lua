-- Timers that measure the right thing: the first-byte wait starts at the
-- end of the request body; each direction of an exchange that still has
-- bytes to move is idle-timed on its own; bytes that cannot start an
-- HTTP request line are answered 400 on the first read.
local procs = require("procs")
local socket = require("socket")

local function via(port) return "http://127.0.0.1:" .. port end

local function lines_with(proc, code)
  local out = {}
  for _, l in ipairs(procs.log_lines(proc)) do
    if l.code == code then out[#out + 1] = l end
  end
  return out
end

-- Everything a raw client receives until EOF or `secs` (nil, err on timeout).
local function read_all(c, secs)
  c:settimeout(secs)
  local data, err, partial = c:receive("*a")
  if data then return data end
  return nil, err, partial
end

local function raw(port)
  local c = socket.tcp()
  c:settimeout(5)
  assert(c:connect("127.0.0.1", port))
  return c
end

describe("timers", function()
  local origin, ferry
  local O, P, ADMIN = procs.free_port(), procs.free_port(), procs.free_port()
  local base = "http://127.0.0.1:" .. O
  local body_path = procs.tmp .. "/timers-body-" .. math.random(1, 1e9)

  setup(function()
    origin = procs.relay_origin(O)
    -- request = 1: an upload that outlives the request deadline must still pass.
    ferry = procs.ferry(string.format([[
listen { name = "p", addr = "127.0.0.1:%d" }
admin { addr = "127.0.0.1:%d" }
timeouts { client_head = 30, first_byte = 1, idle = 1.5, request = 1 }
]], P, ADMIN), { P, ADMIN })
    os.execute("head -c 600000 /dev/urandom > " .. procs.quote(body_path))
  end)

  teardown(function()
    procs.stop_ferry(ferry)
    procs.stop(origin)
    os.remove(body_path)
  end)

  it("does not count a slow upload against first_byte or the request deadline", function()
    -- 600 kB at 200 kB/s: three seconds of upload, three times first_byte.
    local status, body = procs.curl { proxy = via(P), url = base .. "/sink",
      flags = "--limit-rate 200K --data-binary @" .. procs.quote(body_path), max_time = 30 }
    assert.equal(200, status)
    local p = io.popen("sha256sum " .. procs.quote(body_path))
    local sha = p:read("*l"):match("^(%x+)")
    p:close()
    assert.equal(string.format('{"len": 600000, "sha256": "%s"}', sha), body)
  end)

  it("still answers 504 FERRY-3008 when the upstream is silent after the body", function()
    local status, body, headers = procs.curl { proxy = via(P), url = base .. "/sink?delay=4",
      flags = "--data-binary hello", max_time = 15 }
    assert.equal(504, status)
    assert.matches("X%-Ferry%-Error: FERRY%-3008", headers)
    assert.matches("FERRY%-3008", body)
  end)

  it("answers 408 FERRY-1011 when the client stops sending its body", function()
    local c = raw(P)
    assert(c:send("POST " .. base .. "/sink HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
      .. string.rep("a", 10)))
    local data, err, partial = read_all(c, 10)
    c:close()
    data = data or partial
    assert.is_truthy(data, err)
    assert.matches("^HTTP/1%.1 408", data)
    assert.matches("X%-Ferry%-Error: FERRY%-1011", data)
  end)

  it("answers 504 FERRY-3010 when the upstream stops reading the body", function()
    -- The origin reads one piece, then waits an hour before the next.
    local big = procs.tmp .. "/timers-big-" .. math.random(1, 1e9)
    os.execute("head -c 8000000 /dev/zero > " .. procs.quote(big))
    local status, _, headers = procs.curl { proxy = via(P), url = base .. "/sink?rate=1",
      flags = "--data-binary @" .. procs.quote(big), max_time = 20 }
    os.remove(big)
    assert.equal(504, status)
    assert.matches("X%-Ferry%-Error: FERRY%-3010", headers)
  end)

  it("cuts a response that stalls upstream after idle (FERRY-3009)", function()
    local before = #lines_with(ferry, "FERRY-3009")
    local status, body = procs.curl { proxy = via(P),
      url = base .. "/gen?n=1000000&stall_after=50000", max_time = 20 }
    assert.equal(200, status)
    assert.equal(50000, #body)
    assert.truthy(procs.wait_for(function()
      return #lines_with(ferry, "FERRY-3009") > before
    end, 5))
  end)

  it("cuts a client that stops reading the response after idle, freeing the upstream", function()
    local function origin_open()
      local status, body = procs.curl { url = base .. "/conns" }
      return status == 200 and tonumber(body:match('"open": (%d+)'))
    end
    local open_before = origin_open()
    local before = #lines_with(ferry, "FERRY-3009")
    local c = raw(P)
    assert(c:send("GET " .. base .. "/gen?n=50000000 HTTP/1.1\r\nHost: x\r\n\r\n"))
    -- Never read: ferry's buffers and both sockets fill, then nothing moves.
    local cut = procs.wait_for(function()
      return #lines_with(ferry, "FERRY-3009") > before
    end, 15, 0.1)
    c:close()
    assert.truthy(cut)
    -- The origin saw its connection closed: back to the count before.
    assert.truthy(open_before)
    assert.truthy(procs.wait_for(function() return origin_open() == open_before end, 5))
  end)

  local function not_http(bytes)
    local c = raw(P)
    assert(c:send(bytes))
    -- client_head is 30 s: an answer inside this bound came from the first read.
    local data, err, partial = read_all(c, 5)
    c:close()
    data = data or partial
    assert.is_truthy(data, err)
    assert.matches("^HTTP/1%.1 400", data)
    assert.matches("X%-Ferry%-Error: FERRY%-1010", data)
    assert.matches("Connection: close", data)
    return err
  end

  it("answers a SOCKS5 greeting with 400 FERRY-1010 and closes", function()
    assert.is_nil(not_http("\5\1\0"))
  end)

  it("answers a TLS ClientHello with 400 FERRY-1010 and closes", function()
    assert.is_nil(not_http("\22\3\1\0\165\1\0\0\161\3\3" .. string.rep("\0", 32)))
  end)

  it("answers a request line that starts with a space or a long token", function()
    assert.is_nil(not_http(" GET http://x/ HTTP/1.1\r\n"))
    assert.is_nil(not_http(string.rep("A", 40)))
  end)

  it("still takes a request whose method arrives in pieces", function()
    local c = raw(P)
    assert(c:send("GE"))
    socket.sleep(0.2)
    assert(c:send("T " .. base .. "/gen?n=5 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
    local data, err = read_all(c, 5)
    c:close()
    assert.is_truthy(data, err)
    assert.matches("^HTTP/1%.1 200", data)
  end)
end)
