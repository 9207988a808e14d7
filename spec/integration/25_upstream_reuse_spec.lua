-- A kept-alive upstream connection that the upstream closed without
-- announcing it (tinyproxy 1.11 answers HTTP/1.1 without Connection:
-- close and closes anyway) is not a proxy failure: a dead idle
-- connection is seen before reuse and dropped; a request that met the
-- close on its way is sent again, once, on a fresh connection when that
-- is safe.  And a late loop reads an answer already waiting before it
-- declares the first-byte timeout.
local procs = require("procs")
local socket = require("socket")

-- One request on an open client socket: status, body, head text.
local function exchange(c, method, url, body)
  local req = method .. " " .. url .. " HTTP/1.1\r\nHost: 127.0.0.1\r\n"
  if body then req = req .. "Content-Length: " .. #body .. "\r\n" end
  assert(c:send(req .. "\r\n" .. (body or "")))
  return nil
end

local response = procs.read_response

local function client(port)
  local c = socket.tcp()
  c:settimeout(10)
  assert(c:connect("127.0.0.1", port))
  return c
end

-- Sum of every sample of `name` whose labels contain `want`.
local function metric_sum(admin, name, want)
  local status, body = procs.curl { url = "http://127.0.0.1:" .. admin .. "/metrics" }
  assert.equal(200, status)
  local sum = 0
  for labels, v in body:gmatch("\n" .. name .. "{([^}]*)} (%S+)") do
    if labels:find(want, 1, true) then sum = sum + tonumber(v) end
  end
  return sum
end

describe("kept upstream connections", function()
  local origin, tiny, ferry
  local O, T = procs.free_port(), procs.free_port()
  local P_TINY, P_DIRECT, P_LATE, A = procs.free_port(), procs.free_port(), procs.free_port(),
    procs.free_port()
  local base = "http://127.0.0.1:" .. O

  setup(function()
    origin = procs.spawn("reuse-origin",
      "python3 " .. procs.root .. "/spec/helpers/reuse_origin.py " .. O)
    assert(procs.wait_port(O), "reuse origin did not start")
    tiny = procs.tinyproxy(T)
    ferry = procs.ferry(string.format([[
listen { name = "tiny", addr = "127.0.0.1:%d" }
listen { name = "direct", addr = "127.0.0.1:%d" }
listen { name = "late", addr = "127.0.0.1:%d" }
admin { addr = "127.0.0.1:%d" }
pool "tiny" { retries = 0, proxies = { { url = "http://127.0.0.1:%d", id = "tiny" } } }
pool "late" { retries = 0, timeouts = { first_byte = 1 },
  proxies = { { url = "http://127.0.0.1:%d", id = "late" } } }
route(function(req)
  if req.listener == "direct" then return "direct" end
  return req.listener
end)
]], P_TINY, P_DIRECT, P_LATE, A, T, T), { P_TINY, P_DIRECT, P_LATE, A })
  end)

  teardown(function()
    if ferry then procs.stop_ferry(ferry) end
    for _, p in ipairs { tiny, origin } do procs.stop(p) end
  end)

  it("answers 200 requests through a proxy that closes after each answer, no failure", function()
    local c = client(P_TINY)
    local bad = {}
    for i = 1, 200 do
      exchange(c, "GET", base .. "/ok?i=" .. i)
      local status, body = response(c)
      if status ~= 200 or body ~= "ok-" .. i then
        bad[#bad + 1] = i .. ":" .. tostring(status) .. ":" .. tostring(body)
        if not status then break end
      end
    end
    c:close()
    assert.same({}, bad)
    assert.equal(0, metric_sum(A, "ferry_proxy_failures_total", 'proxy="tiny"'))
    assert.is_true(metric_sum(A, "ferry_proxy_successes_total", 'proxy="tiny"') >= 200)
  end)

  it("drops a kept connection closed before reuse, so a POST goes out fresh", function()
    local c = client(P_DIRECT)
    exchange(c, "GET", base .. "/close-after?i=1&linger=0.3")
    local status, body = response(c)
    assert.equal(200, status)
    assert.equal("closed-1", body)
    -- Ferry sleeps while the origin's close (0.3 s after its answer) and
    -- the POST reach its sockets: it wakes with both pending and must not
    -- send the POST into the dead connection.
    procs.signal(ferry, "STOP")
    procs.sleep(0.6)
    exchange(c, "POST", base .. "/echo", "payload-1")
    procs.sleep(0.2)
    procs.signal(ferry, "CONT")
    status, body = response(c)
    c:close()
    assert.equal(200, status)
    assert.equal("payload-1", body)
  end)

  it("sends a GET again on a fresh connection when the kept one closes unanswered", function()
    local before = metric_sum(A, "ferry_upstream_reuse_retries_total", 'pool="direct"')
    local c = client(P_DIRECT)
    exchange(c, "GET", base .. "/drop-next?i=1")
    local status, body = response(c)
    assert.equal(200, status)
    assert.equal("armed-1", body)
    exchange(c, "GET", base .. "/ok?i=2")
    status, body = response(c)
    c:close()
    assert.equal(200, status)
    assert.equal("ok-2", body)
    assert.equal(before + 1,
      metric_sum(A, "ferry_upstream_reuse_retries_total", 'pool="direct"'))
  end)

  it("does not send a POST again once it was written into the kept connection", function()
    local c = client(P_DIRECT)
    exchange(c, "GET", base .. "/drop-next?i=1")
    local _, body = response(c)
    assert.equal("armed-1", body)
    exchange(c, "POST", base .. "/echo", "payload-2")
    local status, _, head = response(c)
    c:close()
    assert.equal(502, status)
    assert.matches("FERRY%-3005", head)
  end)

  it("reads an answer already waiting before declaring the first-byte timeout", function()
    local mark = string.format("%s/late-mark-%d", procs.tmp, math.random(1, 1e9))
    local c = client(P_LATE)
    exchange(c, "GET", base .. "/late?delay=0.3&mark=" .. mark)
    -- Stop ferry once the request reached the origin: the answer lands in
    -- its socket 0.3 s later, and first_byte (1 s) expires while it sleeps.
    assert.truthy(procs.wait_for(function()
      local f = io.open(mark, "r")
      if f then f:close() end
      return f ~= nil
    end, 5, 0.01))
    procs.signal(ferry, "STOP")
    procs.sleep(1.5)
    procs.signal(ferry, "CONT")
    local status, body, head = response(c)
    c:close()
    os.remove(mark)
    assert.equal(200, status, head)
    assert.equal("late-ok", body)
  end)
end)
