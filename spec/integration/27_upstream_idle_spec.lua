-- An idle keep-alive client does not pin its upstream: the upstream
-- connection ferry keeps between two requests is closed after
-- timeouts.upstream_idle, while the client connection stays open and
-- its next request goes out on a new upstream connection.
local procs = require("procs")
local socket = require("socket")

describe("upstream idle timeout", function()
  local origin, ferry
  local O, P = procs.free_port(), procs.free_port()
  local base = "http://127.0.0.1:" .. O

  setup(function()
    origin = procs.relay_origin(O)
    ferry = procs.ferry(string.format([[
listen { name = "p", addr = "127.0.0.1:%d" }
timeouts { upstream_idle = 1, keepalive = 30 }
]], P), { P })
  end)

  teardown(function()
    procs.stop_ferry(ferry)
    procs.stop(origin)
  end)

  -- Connections open at the origin, not counting the one asking.
  local function origin_open()
    local status, body = procs.curl { url = base .. "/conns" }
    assert.equal(200, status)
    return tonumber(body:match('"open": (%d+)')) - 1
  end

  -- One GET on an open client socket: status and X-Origin-Conn.
  local function get(c)
    assert(c:send("GET " .. base .. "/gen?n=5 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"))
    local line = assert(c:receive("*l"))
    local serial
    repeat
      local h = assert(c:receive("*l"))
      serial = serial or h:match("^X%-Origin%-Conn: (%d+)")
    until h == ""
    assert(c:receive(5))
    return tonumber(line:match("^HTTP/1%.1 (%d+)")), serial
  end

  it("closes the kept upstream after upstream_idle and keeps the client", function()
    local before = origin_open()
    local c = socket.tcp()
    c:settimeout(5)
    assert(c:connect("127.0.0.1", P))
    local status, first = get(c)
    assert.equal(200, status)
    -- Kept: the upstream is still open right after the answer ...
    assert.equal(before + 1, origin_open())
    -- ... and closed once upstream_idle has passed, the client still connected.
    assert.truthy(procs.wait_for(function() return origin_open() == before end, 10, 0.1))
    local again, second = get(c)
    c:close()
    assert.equal(200, again)
    assert.are_not.equal(first, second)
  end)

  it("reuses the kept upstream for a request within upstream_idle", function()
    local c = socket.tcp()
    c:settimeout(5)
    assert(c:connect("127.0.0.1", P))
    local _, first = get(c)
    local _, second = get(c)
    c:close()
    assert.equal(first, second)
  end)
end)
