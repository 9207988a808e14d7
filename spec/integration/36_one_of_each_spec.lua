-- One of each: every error body comes from one writer (its Content-Length
-- is its length, whoever answers: the proxy, the admin plane, the accept
-- path over a connection limit), and a CONNECT's access line carries the
-- same fields as a plain request's.
local procs = require("procs")
local socket = require("socket")
local cjson = require("cjson.safe")

-- Send data on a fresh connection, read to EOF: the raw answer.
local function raw(port, data)
  local c = assert(socket.connect("127.0.0.1", port))
  c:settimeout(5)
  if data then c:send(data) end
  local all, _, partial = c:receive("*a")
  c:close()
  return all or partial
end

-- status, headers (lower-case names), body of one HTTP answer.
local function parse(answer)
  local head, body = answer:match("^(.-)\r\n\r\n(.*)$")
  assert(head, "no complete head in: " .. answer)
  local status = tonumber(head:match("^HTTP/1%.1 (%d%d%d) "))
  local headers = {}
  for name, value in head:gmatch("\r\n([^:\r\n]+):%s*([^\r\n]*)") do
    headers[name:lower()] = value
  end
  return status, headers, body
end

-- An error answer whose Content-Length is its body's length, and whose
-- body is the one JSON shape with the code of X-Ferry-Error.
local function assert_error_answer(answer, status, code)
  local st, headers, body = parse(answer)
  assert.equal(status, st)
  assert.equal(code, headers["x-ferry-error"])
  assert.equal("application/json", headers["content-type"])
  assert.equal(#body, tonumber(headers["content-length"]))
  local doc = assert(cjson.decode(body))
  assert.equal(code, doc.error)
  assert.is_string(doc.message)
  return doc, headers
end

describe("one of each", function()
  local origin, ferry
  local O, P, A = procs.free_port(), procs.free_port(), procs.free_port()

  setup(function()
    origin = procs.origin(O)
    ferry = procs.ferry(string.format([[
listen { name = "proxy", addr = "127.0.0.1:%d" }
admin { addr = "127.0.0.1:%d" }
route(function() return "direct" end)
]], P, A), { P, A })
  end)

  teardown(function()
    procs.stop_ferry(ferry)
    procs.stop(origin)
  end)

  it("sends a proxy error body of exactly its Content-Length", function()
    local doc, headers = assert_error_answer(raw(P, "\22\3\1\0\1\1\0\0\0\0\0"), 400, "FERRY-1010")
    assert.equal(headers["x-request-id"], doc.request_id)
  end)

  it("sends an admin error body of exactly its Content-Length", function()
    local doc, headers = assert_error_answer(
      raw(A, "GET /no-such-endpoint HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"),
      404, "FERRY-7007")
    assert.equal(headers["x-request-id"], doc.request_id)
  end)

  it("refuses a connection over the admin limit with a whole body, and counts it", function()
    local before = procs.metric(A, "ferry_connections_refused_total", 'limit="admin"')
    assert.equal(0, before)
    local held = {}
    for i = 1, 64 do
      held[i] = assert(socket.connect("127.0.0.1", A))
    end
    -- Connections are accepted in order: the 65th finds 64 held.
    local answer = raw(A, "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    for _, c in ipairs(held) do c:close() end
    local doc = assert_error_answer(answer, 503, "FERRY-2004")
    assert.equal("connection limit reached", doc.message)
    assert.is_true(procs.wait_for(function()
      return procs.metric(A, "ferry_connections_refused_total", 'limit="admin"') == 1
    end, 5))
    assert.equal(0, procs.metric(A, "ferry_connections_refused_total", 'limit="connections"'))
    local warned = false
    for _, line in ipairs(procs.log_lines(ferry)) do
      if line.code == "FERRY-2004" and line.level == "warn" then warned = true end
    end
    assert.is_true(warned)
  end)
end)

describe("the retries bound", function()
  local ferry
  local P, A = procs.free_port(), procs.free_port()
  local dead = {}

  setup(function()
    -- Ten proxies on ports nothing listens on: every connect is refused.
    local urls = {}
    for i = 1, 10 do
      dead[i] = procs.free_port()
      urls[i] = string.format("%q", "http://127.0.0.1:" .. dead[i])
    end
    ferry = procs.ferry(string.format([[
listen { name = "proxy", addr = "127.0.0.1:%d" }
admin { addr = "127.0.0.1:%d" }
pool "dead" { strategy = "round_robin", retries = 8, proxies = { %s } }
route(function() return "dead" end)
]], P, A, table.concat(urls, ", ")), { P, A })
  end)

  teardown(function()
    procs.stop_ferry(ferry)
  end)

  it("makes 8 retries after the first try when retries = 8", function()
    local answer = raw(P, "GET http://127.0.0.1:9/x HTTP/1.1\r\nHost: 127.0.0.1:9\r\n"
      .. "Connection: close\r\n\r\n")
    assert_error_answer(answer, 502, "FERRY-3001")
    local attempts, last = 0, 0
    for _, line in ipairs(procs.log_lines(ferry)) do
      local n = type(line.msg) == "string" and tonumber(line.msg:match("^attempt (%d+) to "))
      if n then
        attempts = attempts + 1
        last = math.max(last, n)
      end
    end
    assert.equal(9, attempts)
    assert.equal(9, last)
    assert.equal(8, procs.metric(A, "ferry_retries_total", 'pool="dead"'))
  end)
end)

describe("access lines", function()
  local origin, socks, ferry
  local O, S, P = procs.free_port(), procs.free_port(), procs.free_port()

  setup(function()
    origin = procs.origin(O)
    socks = procs.microsocks(S)
    ferry = procs.ferry(string.format([[
listen { name = "proxy", addr = "127.0.0.1:%d" }
pool "socks" { proxies = { { url = "socks5://127.0.0.1:%d", id = "ms" } } }
exchange "E" { hosts = { "127.0.0.1" }, pool = "socks" }
]], P, S), { P })
  end)

  teardown(function()
    procs.stop_ferry(ferry)
    procs.stop(socks)
    procs.stop(origin)
  end)

  local function access_line(method)
    for _, line in ipairs(procs.log_lines(ferry)) do
      if line.msg == "access" and line.method == method then return line end
    end
  end

  it("gives a CONNECT the pool, exchange and proxy a plain request has", function()
    local url = "http://127.0.0.1:" .. O .. "/"
    local status = procs.curl { proxy = "http://127.0.0.1:" .. P, url = url }
    assert.equal(200, status)
    status = procs.curl { proxy = "http://127.0.0.1:" .. P, url = url, flags = "-p" }
    assert.equal(200, status)
    local plain, tunnel
    assert.is_true(procs.wait_for(function()
      plain, tunnel = access_line("GET"), access_line("CONNECT")
      return plain ~= nil and tunnel ~= nil
    end, 5))
    for _, line in ipairs { plain, tunnel } do
      assert.equal("FERRY-0200", line.code)
      assert.equal("socks", line.pool)
      assert.equal("E", line.exchange)
      assert.equal("socks5://127.0.0.1:" .. S, line.proxy)
      assert.equal("proxy", line.listener)
      assert.is_string(line.cid)
    end
    assert.equal(200, tunnel.status)
    assert.is_true(tunnel.bytes_out > 0)
  end)
end)
