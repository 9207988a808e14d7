-- Plain HTTP through ferry: direct, through a pool of ferry nodes,
-- bodies in every framing, keep-alive, pipelining, hop-by-hop headers
-- and a WebSocket upgrade.  Real bin/ferry, real origin, real clients.
local procs = require("procs")
local socket = require("socket")

describe("plain HTTP", function()
  local origin, ferry
  local O, F = procs.free_port(), procs.free_port()
  local N1, N2, N3 = procs.free_port(), procs.free_port(), procs.free_port()
  local base = "http://127.0.0.1:" .. O

  setup(function()
    origin = procs.origin(O)
    ferry = procs.ferry(string.format([[
listen { name = "front", addr = "127.0.0.1:%d" }
listen { name = "node1", addr = "127.0.0.1:%d" }
listen { name = "node2", addr = "127.0.0.1:%d" }
listen { name = "node3", addr = "127.0.0.1:%d" }
pool "nodes" {
  strategy = "round_robin",
  proxies = { "http://127.0.0.1:%d", "http://127.0.0.1:%d", "http://127.0.0.1:%d" },
}
route(function(req)
  if req.listener == "front" and req.path ~= "/direct" then return "nodes" end
  return "direct"
end)
]], F, N1, N2, N3, N1, N2, N3), { F, N1, N2, N3 })
  end)

  teardown(function()
    procs.stop_ferry(ferry)
    procs.stop(origin)
  end)

  local proxy = "http://127.0.0.1:" .. F

  it("carries a GET to the origin", function()
    local status, body = procs.curl { proxy = proxy, url = base .. "/" }
    assert.equal(200, status)
    assert.equal("hello from origin\n", body)
  end)

  it("rotates requests across the pool's proxies", function()
    local before = #procs.log_lines(ferry)
    for _ = 1, 6 do
      assert.equal(200, (procs.curl { proxy = proxy, url = base .. "/" }))
    end
    procs.sleep(0.1)
    local seen = {}
    local lines = procs.log_lines(ferry)
    for i = before + 1, #lines do
      local l = lines[i]
      if l.msg == "access" and l.listener == "front" then
        seen[l.proxy] = (seen[l.proxy] or 0) + 1
      end
    end
    assert.equal(2, seen["http://127.0.0.1:" .. N1])
    assert.equal(2, seen["http://127.0.0.1:" .. N2])
    assert.equal(2, seen["http://127.0.0.1:" .. N3])
  end)

  it("relays a 1 MB response whole", function()
    local status, body = procs.curl { proxy = proxy, url = base .. "/bytes/1000000" }
    assert.equal(200, status)
    assert.equal(1000000, #body)
  end)

  it("relays a chunked response", function()
    local status, body, headers = procs.curl { proxy = proxy, url = base .. "/chunked/25000" }
    assert.equal(200, status)
    assert.equal(25000, #body)
    assert.matches("[Tt]ransfer%-[Ee]ncoding: chunked", headers)
  end)

  it("relays a response delimited by the origin closing", function()
    local status, body = procs.curl { proxy = proxy, url = base .. "/close" }
    assert.equal(200, status)
    assert.equal("until the end", body)
  end)

  it("streams a POST body with Content-Length", function()
    local data = procs.write_file(procs.tmp .. "/post-body", string.rep("p", 200000))
    local status, body = procs.curl { proxy = proxy, url = base .. "/echo",
      flags = "--data-binary @" .. data }
    assert.equal(200, status)
    assert.equal(200000, #body)
    assert.equal(string.rep("p", 200000), body)
  end)

  it("streams a chunked POST body", function()
    local data = procs.write_file(procs.tmp .. "/chunked-body", string.rep("q", 50000))
    local status, body = procs.curl { proxy = proxy, url = base .. "/echo",
      flags = "-H 'Transfer-Encoding: chunked' --data-binary @" .. data }
    assert.equal(200, status)
    assert.equal(string.rep("q", 50000), body)
  end)

  it("keeps the client and the upstream connection alive between requests", function()
    local hfile = procs.tmp .. "/ka-headers"
    os.execute("curl -s -o /dev/null -o /dev/null -D " .. hfile .. " -x " .. proxy .. " " .. base ..
      "/direct " .. base .. "/direct")
    local headers = procs.read_file(hfile)
    local conns = {}
    for id in headers:gmatch("X%-Origin%-Conn: (%d+)") do conns[#conns + 1] = id end
    assert.equal(2, #conns)
    assert.equal(conns[1], conns[2]) -- one upstream connection served both
  end)

  it("answers pipelined requests in order", function()
    local c = assert(socket.connect("127.0.0.1", F))
    c:settimeout(5)
    c:send("GET " .. base .. "/bytes/3 HTTP/1.1\r\nHost: x\r\n\r\n" ..
           "GET " .. base .. "/bytes/5 HTTP/1.1\r\nHost: x\r\n\r\n" ..
           "GET " .. base .. "/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    local all = c:receive("*a")
    c:close()
    local bodies = {}
    for len in all:gmatch("[Cc]ontent%-[Ll]ength: (%d+)") do bodies[#bodies + 1] = len end
    assert.same({ "3", "5", "18" }, bodies)
    assert.matches("xxx.-xxxxx.-hello from origin", all)
  end)

  it("serves an HTTP/1.0 client and closes after the response", function()
    local c = assert(socket.connect("127.0.0.1", F))
    c:settimeout(5)
    c:send("GET " .. base .. "/chunked/3000 HTTP/1.0\r\n\r\n")
    local all = c:receive("*a") -- returns only when ferry closes
    c:close()
    assert.matches("^HTTP/1%.1 200", all)
    assert.is_nil(all:find("chunked", 1, true)) -- never chunked to a 1.0 client
    assert.equal(3000, #all:match("\r\n\r\n(.*)$"))
  end)

  it("removes hop-by-hop headers and sets Host from the URL", function()
    local status, body = procs.curl { proxy = proxy, url = base .. "/headers",
      flags = "-H 'Proxy-Connection: keep-alive' -H 'Connection: keep-alive, X-Hop' " ..
              "-H 'X-Hop: secret' -H 'X-Keep: yes' -H 'TE: trailers' -H 'Host: wrong.example'" }
    assert.equal(200, status)
    assert.matches("^GET /headers HTTP/1%.1\r\n", body)
    assert.matches("\r\nHost: 127%.0%.0%.1:" .. O .. "\r\n", body)
    assert.matches("\r\nX%-Keep: yes\r\n", body)
    assert.is_nil(body:find("X-Hop", 1, true))
    assert.is_nil(body:find("Proxy-Connection", 1, true))
    assert.is_nil(body:find("wrong.example", 1, true))
    assert.is_nil(body:find("TE:", 1, true))
  end)

  it("turns an upgraded connection into a tunnel after 101", function()
    local c = assert(socket.connect("127.0.0.1", F))
    c:settimeout(5)
    c:send("GET " .. base .. "/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n" ..
           "Upgrade: websocket\r\n\r\n")
    local line = c:receive("*l")
    assert.equal("HTTP/1.1 101 Switching Protocols", line)
    repeat line = c:receive("*l") until line == "" or line == nil
    c:send("ping through the tunnel")
    local echoed = c:receive(23)
    c:close()
    assert.equal("ping through the tunnel", echoed)
  end)

  it("sends CONNECT tunnels through the pool", function()
    local status, body = procs.curl { proxy = proxy, url = base .. "/", flags = "-p" }
    assert.equal(200, status)
    assert.equal("hello from origin\n", body)
  end)
end)
