-- Strict framing: every request head or chunked body that two reasonable
-- parsers could read differently is refused with 400 and the connection
-- closed (RFC 9112 §2.2, §5, §6, §7, §11.2).  Each shape is sent through
-- ferry to a deliberately lenient origin (Python's http.server, which
-- executes whatever framing it is given and logs every request line it
-- runs); the hidden GET /smuggled inside must never run.  A hostile raw
-- origin then proves the response side: bad heads are a 502, bad chunked
-- bodies are cut, and their bytes never reach the client.
local procs = require("procs")
local socket = require("socket")

local shapes = require("smuggling_shapes")
local SMUG = shapes.SMUG

-- Send raw bytes to ferry; everything it answers until it closes.
local function raw(port, data)
  local c = assert(socket.connect("127.0.0.1", port))
  c:settimeout(5)
  c:send(data)
  local all, _, partial = c:receive("*a")
  c:close()
  return all or partial or ""
end

-- Request shapes ({name, bytes}) and chunked bodies, shared with the
-- reverse listener's spec (spec/helpers/smuggling_shapes.lua).
local REQUESTS, CHUNKED, BODIES = shapes.REQUESTS, shapes.CHUNKED, shapes.BODIES

describe("strict framing", function()
  local lenient, hostile, origin, ferry
  local L, X, F, O = procs.free_port(), procs.free_port(), procs.free_port(), procs.free_port()
  local lenient_log = procs.tmp .. "/lenient-" .. math.random(1, 1e9) .. ".log"
  local host = "127.0.0.1:" .. L
  local marker = 0

  setup(function()
    procs.write_file(lenient_log, "")
    lenient = procs.spawn("lenient", "python3 " .. procs.root .. "/spec/helpers/lenient_origin.py " ..
      L .. " " .. lenient_log)
    assert(procs.wait_port(L), "lenient origin did not start")
    hostile = procs.spawn("hostile", "python3 " .. procs.root .. "/spec/helpers/hostile_origin.py " ..
      X)
    assert(procs.wait_port(X), "hostile origin did not start")
    origin = procs.origin(O)
    ferry = procs.ferry(string.format([[
listen { name = "main", addr = "127.0.0.1:%d" }
route(function() return "direct" end)
]], F), { F })
  end)

  teardown(function()
    -- Helpers first: stop_ferry raises on a sanitizer report.
    procs.stop(lenient)
    procs.stop(hostile)
    procs.stop(origin)
    procs.stop_ferry(ferry)
  end)

  local function fill(t)
    return (t:gsub("{H}", host):gsub("{N}", tostring(#SMUG)):gsub("{S}", SMUG))
  end

  -- The origin executed every request sent before a fresh marker request
  -- has been answered; then nothing hidden may be in what it logged since
  -- `since` (a byte offset of its log).
  local function assert_never_smuggled(since)
    marker = marker + 1
    local status = procs.curl { proxy = "http://127.0.0.1:" .. F,
      url = "http://" .. host .. "/marker-" .. marker }
    assert.equal(200, status)
    assert.truthy(procs.wait_for(function()
      return procs.read_file(lenient_log):find("/marker-" .. marker .. "\n", 1, true)
    end))
    assert.is_nil(procs.read_file(lenient_log):find("/smuggled", (since or 0) + 1, true))
  end

  local function log_size()
    return #procs.read_file(lenient_log)
  end

  it("lets a well-formed request through to the lenient origin", function()
    local resp = raw(F, fill("POST http://{H}/a HTTP/1.1\r\nHost: {H}\r\nContent-Length: 5\r\n" ..
      "Connection: close\r\n\r\nhello"))
    assert.matches("^HTTP/1%.1 200 ", resp)
    assert.matches("POST /a via=", resp)
    assert.matches("len=5\n", resp)
    local chunked = raw(F, fill(CHUNKED:gsub("\r\n\r\n$", "\r\nConnection: close\r\n\r\n") ..
      "5;name=\"v a\"\r\nhello\r\n0\r\nX-Sum: 5\r\n\r\n"))
    assert.matches("^HTTP/1%.1 200 ", chunked)
    assert_never_smuggled()
  end)

  it("rebuilds the upstream head from its parse: only parsed spans, CRLF, trimmed values", function()
    local resp = raw(F, "GET http://127.0.0.1:" .. O .. "/headers HTTP/1.1\nHost: x\n" ..
      "X-A:\t a \t b \t\nX-Empty:\nX-Utf8: caf\195\169\nConnection: close\n\n")
    assert.matches("^HTTP/1%.1 200 ", resp)
    local body = resp:match("\r\n\r\n(.*)$")
    assert.equal("GET /headers HTTP/1.1\r\nHost: 127.0.0.1:" .. O .. "\r\n" ..
      "X-A: a \t b\r\nX-Empty: \r\nX-Utf8: caf\195\169\r\nVia: 1.1 ferry\r\n\r\n", body)
  end)

  for _, shape in ipairs(REQUESTS) do
    it("refuses " .. shape[1] .. " with 400 and the origin never runs a hidden request", function()
      local since = log_size()
      local resp = raw(F, fill(shape[2]))
      assert_never_smuggled(since)
      assert.matches("^HTTP/1%.1 400 ", resp)
      assert.matches("X%-Ferry%-Error: FERRY%-10%d%d", resp)
      assert.matches("Connection: close", resp)
      assert.is_nil(resp:find("smuggled", 1, true))
    end)
  end

  for _, shape in ipairs(BODIES) do
    it("refuses " .. shape[1] .. " with 400 FERRY-1021 and runs nothing hidden", function()
      local since = log_size()
      local resp = raw(F, fill(CHUNKED .. shape[2]))
      assert_never_smuggled(since)
      assert.matches("^HTTP/1%.1 400 ", resp)
      assert.matches("X%-Ferry%-Error: FERRY%-1021", resp)
    end)
  end

  describe("from a hostile origin", function()
    local function get(path, version)
      return raw(F, string.format("GET http://127.0.0.1:%d%s HTTP/%s\r\nHost: 127.0.0.1:%d\r\n\r\n",
        X, path, version or "1.1", X))
    end

    for _, path in ipairs({ "/bare-cr", "/bare-cr-end", "/space-colon", "/obs-fold-first",
                            "/ctl-value", "/cl-cl", "/cl-sign", "/te-10",
                            "/status-bad" }) do
      it("answers 502 FERRY-3006 to a response head with " .. path:sub(2), function()
        local resp = get(path)
        assert.matches("^HTTP/1%.1 502 ", resp)
        assert.matches("X%-Ferry%-Error: FERRY%-3006", resp)
        assert.is_nil(resp:find("hello", 1, true))
      end)
    end

    for _, path in ipairs({ "/chunk-no-crlf", "/chunk-ext-lf", "/chunk-size-lf",
                            "/chunk-overflow", "/trailer-bare-cr" }) do
      it("refuses a chunked response with " .. path:sub(2) .. " and relays none of it", function()
        local resp = get(path)
        -- A 502 while nothing has left ferry yet, else a cut 200.
        if resp:match("^HTTP/1%.1 502 ") then
          assert.matches("X%-Ferry%-Error: FERRY%-3006", resp)
        else
          assert.matches("^HTTP/1%.1 200 ", resp)
        end
        assert.is_nil(resp:find("hello", 1, true))
        assert.is_nil(resp:find("GARBAGE", 1, true))
        assert.is_nil(resp:find("XX", 1, true))
        -- Never a complete chunked message: the client sees the cut.
        assert.is_nil(resp:find("0\r\n\r\n", 1, true))
      end)
    end

    it("relays a well-formed chunked response with extensions and trailers", function()
      local resp = get("/chunked-good")
      assert.matches("^HTTP/1%.1 200 ", resp)
      assert.matches("\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX%-Sum: 5\r\n\r\n$", resp)
    end)

    it("frames a response with Transfer-Encoding and Content-Length by the coding alone", function()
      local resp = get("/te-cl")
      assert.matches("^HTTP/1%.1 200 ", resp)
      assert.is_nil(resp:find("Content-Length", 1, true))
      assert.matches("\r\n\r\n5\r\nhello\r\n0\r\n\r\n$", resp)
    end)

    it("reads a body whose last coding is not chunked until the origin closes", function()
      local resp = get("/te-gzip")
      assert.matches("^HTTP/1%.1 200 ", resp)
      assert.matches("Transfer%-Encoding: gzip\r\n", resp)
      assert.matches("\r\n\r\nuntil%-close$", resp)
    end)
  end)
end)
