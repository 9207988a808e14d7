-- Upstream connections are kept per upstream (an origin reached
-- directly, or an HTTP upstream proxy) and shared by every client
-- connection: 100 clients one after another reach the upstream over a
-- handful of TCP connections, not 100.  connections = { ... } caps the
-- connections per upstream, queues what is over the cap (bounded, timed:
-- 503 FERRY-3060 / FERRY-3061), retires a connection after max_requests,
-- and idle = 0 turns keeping off.  The origin counts TCP connections.
local procs = require("procs")
local socket = require("socket")
local cjson = require("cjson")

local function client(port)
  local c = socket.tcp()
  c:settimeout(15)
  assert(c:connect("127.0.0.1", port))
  return c
end

local function send(c, url)
  assert(c:send("GET " .. url .. " HTTP/1.1\r\nHost: x\r\n\r\n"))
end

local response = procs.read_response

-- One request on a new client connection, closed after the answer.
local function once(port, url)
  local c = client(port)
  send(c, url)
  local status, body, head = response(c)
  c:close()
  return status, body, head
end

local function counts(port)
  local status, body = procs.curl { url = "http://127.0.0.1:" .. port .. "/count" }
  assert.equal(200, status)
  return {
    accepts = tonumber(body:match('"accepts": (%d+)')),
    open = tonumber(body:match('"open": (%d+)')),
    peak = tonumber(body:match('"peak": (%d+)')),
  }
end

local function reset(port)
  assert.equal(200, (procs.curl { url = "http://127.0.0.1:" .. port .. "/reset" }))
  return counts(port)
end

-- n parallel requests on n new client connections: statuses and heads.
local function burst(port, n, url)
  local cs = {}
  for i = 1, n do
    cs[i] = client(port)
    send(cs[i], url .. "&i=" .. i)
  end
  local out = {}
  for i = 1, n do
    local status, _, head = response(cs[i])
    out[i] = { status = status, head = head or "" }
    cs[i]:close()
  end
  return out
end

describe("upstream pools shared across clients", function()
  local o1, o2, on, off
  local O1, O2 = procs.free_port(), procs.free_port()
  local D, PX, CAP, TQ, MR, A = procs.free_port(), procs.free_port(), procs.free_port(),
    procs.free_port(), procs.free_port(), procs.free_port()
  local ONE = procs.free_port()
  local D_OFF, PX_OFF, A_OFF = procs.free_port(), procs.free_port(), procs.free_port()
  local base1 = "http://127.0.0.1:" .. O1

  setup(function()
    o1 = procs.spawn("count-origin-1",
      "python3 " .. procs.root .. "/spec/helpers/count_origin.py " .. O1)
    o2 = procs.spawn("count-origin-2",
      "python3 " .. procs.root .. "/spec/helpers/count_origin.py " .. O2)
    assert(procs.wait_port(O1, 20) and procs.wait_port(O2, 20), "count origins did not start")
    on = procs.ferry(string.format([[
listen { name = "direct", addr = "127.0.0.1:%d" }
listen { name = "px", addr = "127.0.0.1:%d" }
listen { name = "capped", addr = "127.0.0.1:%d" }
listen { name = "tq", addr = "127.0.0.1:%d" }
listen { name = "mr", addr = "127.0.0.1:%d" }
listen { name = "one", addr = "127.0.0.1:%d" }
admin { addr = "127.0.0.1:%d" }
pool "px" { retries = 0, proxies = { { url = "http://127.0.0.1:%d", id = "cp" } } }
pool "capped" { retries = 0, connections = { max = 2, queue = 5, queue_timeout = 10 },
  proxies = { { url = "http://127.0.0.1:%d", id = "cap" } } }
pool "tq" { retries = 0, connections = { max = 1, queue = 5, queue_timeout = 0.3 },
  proxies = { { url = "http://127.0.0.1:%d", id = "tq" } } }
pool "mr" { retries = 0, connections = { max_requests = 3 },
  proxies = { { url = "http://127.0.0.1:%d", id = "mr" } } }
pool "one" { retries = 0, connections = { max = 1, queue = 50 },
  proxies = { { url = "http://127.0.0.1:%d", id = "one" } } }
route(function(req) return req.listener end)
]], D, PX, CAP, TQ, MR, ONE, A, O1, O2, O2, O1, O2), { D, PX, CAP, TQ, MR, ONE, A },
      "ferry-pools-on")
    off = procs.ferry(string.format([[
listen { name = "direct", addr = "127.0.0.1:%d" }
listen { name = "px", addr = "127.0.0.1:%d" }
admin { addr = "127.0.0.1:%d" }
direct { connections = { idle = 0 } }
pool "px" { retries = 0, connections = { idle = 0 },
  proxies = { { url = "http://127.0.0.1:%d", id = "cp" } } }
route(function(req) return req.listener end)
]], D_OFF, PX_OFF, A_OFF, O1), { D_OFF, PX_OFF, A_OFF }, "ferry-pools-off")
  end)

  teardown(function()
    for _, f in ipairs { on, off } do
      if f then procs.stop_ferry(f) end
    end
    for _, p in ipairs { o1, o2 } do procs.stop(p) end
  end)

  it("serves 100 clients in a row over a handful of direct connections", function()
    reset(O1)
    for i = 1, 100 do
      local status, body = once(D, base1 .. "/ok?i=" .. i)
      assert.equal(200, status)
      assert.equal("ok-" .. i, body)
    end
    local n = counts(O1).accepts
    assert.is_true(n >= 1 and n <= 5, "origin saw " .. n .. " connections")
    local opened = procs.metric(A, "ferry_upstream_connections_opened_total", 'pool="direct"')
    local reused = procs.metric(A, "ferry_upstream_connections_reused_total", 'pool="direct"')
    assert.equal(n, opened)
    assert.equal(100 - n, reused)
    assert.is_true(procs.metric(A, "ferry_upstream_connections_idle", 'pool="direct"') >= 1)
  end)

  it("serves 100 clients in a row over a handful of connections to an HTTP proxy", function()
    reset(O1)
    for i = 1, 100 do
      -- Destinations differ: a connection to an HTTP proxy serves any of them.
      local status, body = once(PX, "http://host" .. (i % 7) .. ".test/ok?i=" .. i)
      assert.equal(200, status)
      assert.equal("ok-" .. i, body)
    end
    local n = counts(O1).accepts
    assert.is_true(n >= 1 and n <= 5, "proxy saw " .. n .. " connections")
    local lbl = 'proxy="cp",pool="px"'
    assert.equal(n, procs.metric(A, "ferry_proxy_connections_opened_total", lbl))
    assert.equal(100 - n, procs.metric(A, "ferry_proxy_connections_reused_total", lbl))
    assert.equal(0, procs.metric(A, "ferry_proxy_connections_active", lbl))
    -- The inventory API shows the same counters.
    local status, body = procs.curl { url = "http://127.0.0.1:" .. A .. "/api/v1/proxies?pool=px" }
    assert.equal(200, status)
    local rec = assert(cjson.decode(body)).proxies[1]
    assert.equal("cp", rec.name)
    assert.equal(n, rec.connections.opened)
    assert.equal(100 - n, rec.connections.reused)
  end)

  it("closes the idle connections of a proxy an operator disables", function()
    local lbl = 'proxy="cp",pool="px"'
    assert.equal(200, (once(PX, "http://h.test/ok?i=1")))
    local idle = procs.metric(A, "ferry_proxy_connections_idle", lbl)
    assert.is_true(idle >= 1)
    local open = counts(O1).open
    local admin = "http://127.0.0.1:" .. A .. "/api/v1/proxies/cp/"
    assert.equal(200, (procs.curl { url = admin .. "disable", flags = "-X POST" }))
    assert.equal(0, procs.metric(A, "ferry_proxy_connections_idle", lbl))
    assert.truthy(procs.wait_for(function() return counts(O1).open == open - idle end, 10, 0.05))
    assert.equal(200, (procs.curl { url = admin .. "enable", flags = "-X POST" }))
  end)

  it("opens one connection per client with connections.idle = 0", function()
    reset(O1)
    for i = 1, 100 do
      assert.equal(200, (once(D_OFF, base1 .. "/ok?i=" .. i)))
    end
    for i = 1, 100 do
      assert.equal(200, (once(PX_OFF, "http://h.test/ok?i=" .. i)))
    end
    assert.equal(200, counts(O1).accepts)
    assert.equal(0, procs.metric(A_OFF, "ferry_upstream_connections_reused_total",
      'pool="direct"'))
  end)

  it("caps connections per upstream and refuses what the queue cannot hold", function()
    local before = reset(O2)
    local out = burst(CAP, 20, "http://slow.test/slow?s=0.5")
    local ok, full, other = 0, 0, {}
    for i, r in ipairs(out) do
      if r.status == 200 then
        ok = ok + 1
      elseif r.status == 503 and r.head:find("FERRY-3060", 1, true) then
        full = full + 1
      else
        other[#other + 1] = i .. ":" .. tostring(r.status)
      end
    end
    assert.same({}, other)
    assert.is_true(ok >= 7, ok .. " answered")       -- 2 at once, then the 5 queued
    assert.is_true(full >= 1, full .. " refused")
    local after = counts(O2)
    assert.is_true(after.peak - before.open <= 2, "origin saw " .. after.peak .. " at once")
    assert.is_true(after.accepts <= 2)
    assert.equal(full, procs.metric(A, "ferry_upstream_queue_full_total", 'pool="capped"'))
    assert.is_true(procs.metric(A, "ferry_upstream_queued_total", 'pool="capped"') >= 5)
    assert.equal(0, procs.metric(A, "ferry_upstream_queue_waiting", 'pool="capped"'))
    assert.equal(full, procs.metric(A, "ferry_proxy_queue_full_total",
      'proxy="cap",pool="capped"'))
  end)

  it("hands the one connection from request to request down the queue", function()
    reset(O2)
    local out = burst(ONE, 12, "http://one.test/slow?s=0.05")
    for i, r in ipairs(out) do assert.equal(200, r.status, "request " .. i) end
    local after = counts(O2)
    assert.equal(1, after.accepts)
    local lbl = 'proxy="one",pool="one"'
    assert.equal(1, procs.metric(A, "ferry_proxy_connections_opened_total", lbl))
    assert.equal(11, procs.metric(A, "ferry_proxy_connections_reused_total", lbl))
    assert.equal(1, procs.metric(A, "ferry_proxy_connections_idle", lbl))
  end)

  it("answers 503 FERRY-3061 when no slot frees within queue_timeout", function()
    local out = burst(TQ, 3, "http://slow.test/slow?s=2")
    local ok, timed = 0, 0
    for _, r in ipairs(out) do
      if r.status == 200 then ok = ok + 1 end
      if r.status == 503 and r.head:find("FERRY-3061", 1, true) then timed = timed + 1 end
    end
    assert.equal(1, ok)
    assert.equal(2, timed)
    assert.equal(2, procs.metric(A, "ferry_upstream_queue_timeouts_total", 'pool="tq"'))
    assert.equal(2, procs.metric(A, "ferry_proxy_queue_timeouts_total", 'proxy="tq",pool="tq"'))
  end)

  it("retires a connection after max_requests", function()
    reset(O1)
    for i = 1, 9 do
      assert.equal(200, (once(MR, "http://h.test/ok?i=" .. i)))
    end
    assert.equal(3, counts(O1).accepts)
    assert.equal(3, procs.metric(A, "ferry_upstream_connections_retired_total", 'pool="mr"'))
  end)

  it("does not reuse an idle connection the origin closed; the request still works", function()
    local before = reset(O1)
    local retries = procs.metric(A, "ferry_upstream_reuse_retries_total", 'pool="direct"') or 0
    local status, body = once(D, base1 .. "/close-after?linger=0.1")
    assert.equal(200, status)
    assert.equal("closed", body)
    -- The origin closes its side (a kept connection, or a new one: counted
    -- in accepts); ferry's idle watcher, or its check before reuse, drops it.
    local target = before.open - (counts(O1).accepts == 0 and 1 or 0)
    assert.truthy(procs.wait_for(function() return counts(O1).open <= target end, 10, 0.05))
    local idle_before = procs.metric(A, "ferry_upstream_connections_idle", 'pool="direct"')
    status, body = once(D, base1 .. "/ok?i=2")
    assert.equal(200, status)
    assert.equal("ok-2", body)
    assert.equal(retries,
      procs.metric(A, "ferry_upstream_reuse_retries_total", 'pool="direct"') or 0)
    assert.is_true(idle_before >= 0)
  end)
end)
