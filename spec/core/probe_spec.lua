-- Active probes in the C core through FFI (build/libferry.so): argument
-- checks of ferry_probe_set, and probes run on the loop against LuaSocket
-- servers in this process: results reach health, a hanging target fails
-- by the probe's timeout, the concurrency bound holds, a reload during a
-- run does not start a second one, and FERRY_PROBE_NONE stops and frees.
local ffi = require("ffi")
local socket = require("socket")
require("ferry.cdef")

ffi.cdef[[
struct ev_loop;
struct ev_loop *ev_default_loop(unsigned int flags);
int ev_run(struct ev_loop *loop, int flags);
void ev_now_update(struct ev_loop *loop);
extern struct ev_loop *loop;
void log_init(int fd);
int open(const char *path, int flags, int mode);
]]

local core = ffi.load("./build/libferry.so", true)
core.loop = core.ev_default_loop(0)
core.log_init(core.open("/dev/null", 1, 0))

local TCP, HTTP, CONNECT = 1, 2, 3
local SCHEME_HTTP, SCHEME_SOCKS5 = 1, 2
local EVRUN_NOWAIT = 1

-- A LuaSocket server polled between loop turns: "hang" keeps connections
-- and never answers, "close" closes them at once.
local function server(mode)
  local s = assert(socket.bind("127.0.0.1", 0))
  s:settimeout(0)
  local _, port = s:getsockname()
  local srv = { sock = s, port = tonumber(port), mode = mode, accepts = 0, conns = {} }
  function srv:poll()
    while true do
      local c = self.sock:accept()
      if not c then break end
      self.accepts = self.accepts + 1
      if self.mode == "close" then c:close() else self.conns[#self.conns + 1] = c end
    end
  end
  function srv:close()
    for _, c in ipairs(self.conns) do c:close() end
    self.sock:close()
  end
  return srv
end

-- Turn the loop (and the servers) for `secs`, or until pred() holds.
local function drive(secs, servers, pred)
  local deadline = socket.gettime() + secs
  repeat
    for _, s in ipairs(servers or {}) do s:poll() end
    core.ev_run(core.loop, EVRUN_NOWAIT)
    if pred and pred() then return true end
    socket.sleep(0.003)
  until socket.gettime() > deadline
  return pred == nil
end

local seq = 0
local function new_proxy(port, scheme)
  seq = seq + 1
  local err = ffi.new("const char *[1]")
  local p = core.ferry_proxy_new("probe-spec-" .. seq, scheme or SCHEME_SOCKS5, "127.0.0.1",
    port, nil, nil, nil, 1, err)
  assert(p ~= nil, err[0] ~= nil and ffi.string(err[0]))
  return p
end

-- The process's probe verdicts by result (ferry_probes_total), as
-- { result = count }; only_new(before, after) keeps what changed.
local mlen = ffi.new("size_t[1]")
local function probe_results()
  local t = ffi.string(core.ferry_metrics_text(nil, 0, nil, mlen), mlen[0])
  local out = {}
  for r, v in t:gmatch('\nferry_probes_total{result="([%w_]+)"} (%d+)') do
    out[r] = tonumber(v)
  end
  assert(out.ok and out.closed and out.refused, "no ferry_probes_total in the metrics text")
  return out
end
local function only_new(before, after)
  local d = {}
  for r, v in pairs(after) do
    if v ~= before[r] then d[r] = v - (before[r] or 0) end
  end
  return d
end

local function set(p, kind, host, port, path, expect, interval, timeout)
  local err = ffi.new("const char *[1]")
  local rc = core.ferry_probe_set(p, kind, host, port or 0, path, expect, interval or 1,
    timeout or 1, err)
  return rc, err[0] ~= nil and ffi.string(err[0]) or nil
end

describe("ferry_probe_set", function()
  it("refuses bad arguments with a reason", function()
    local p = new_proxy(1080)
    local cases = {
      { 9, nil, 0, nil, nil, 1, 1 },
      { -1, nil, 0, nil, nil, 1, 1 },
      { TCP, nil, 0, nil, nil, 0, 1 },
      { TCP, nil, 0, nil, nil, 1, 0 },
      { TCP, nil, 0, nil, nil, 0 / 0, 1 },
      { CONNECT, nil, 443, nil, nil, 1, 1 },
      { CONNECT, "", 443, nil, nil, 1, 1 },
      { CONNECT, "example.com", 0, nil, nil, 1, 1 },
      { CONNECT, "example.com", 65536, nil, nil, 1, 1 },
      { HTTP, "example.com", 80, "/ok", "abc", 1, 1 },
      { HTTP, "example.com", 80, "/ok", "99", 1, 1 },
      { HTTP, "example.com", 80, "/ok", "200;204", 1, 1 },
      { HTTP, "example.com", 80, "/ok", string.rep("200,", 17) .. "200", 1, 1 },
      { HTTP, "example.com", 80, "/a b", nil, 1, 1 },
      { HTTP, "example.com", 80, "/" .. string.rep("x", 600), nil, 1, 1 },
      { HTTP, "example.com", 80, "relative", nil, 1, 1 },
      { HTTP, "exa\r\nmple.com", 80, "/", nil, 1, 1 },
    }
    for i, c in ipairs(cases) do
      local rc, err = set(p, unpack(c, 1, 7))
      assert.equal(-1, rc, "case " .. i)
      assert.is_string(err, "case " .. i)
    end
    assert.equal(0, p.probe_kind)
    assert.equal(0, core.ferry_probe_inflight())
  end)

  it("accepts good arguments, records the kind, and NONE clears it", function()
    local p = new_proxy(1080)
    assert.equal(0, (set(p, 0)))
    assert.equal(0, (set(p, HTTP, "example.com", 80, "/health", "200, 204", 5, 1)))
    assert.equal(HTTP, p.probe_kind)
    assert.equal(0, (set(p, CONNECT, "example.com", 443, nil, nil, 5, 1)))
    assert.equal(CONNECT, p.probe_kind)
    assert.equal(0, (set(p, 0)))
    assert.equal(0, p.probe_kind)
  end)
end)

describe("probes on the loop", function()
  local servers = {}
  local function srv(mode)
    local s = server(mode)
    servers[#servers + 1] = s
    return s
  end

  teardown(function()
    for _, s in ipairs(servers) do s:close() end
  end)

  it("reports a tcp probe that connects as passed", function()
    local s = srv("close")
    local p = new_proxy(s.port)
    local t0 = socket.gettime()
    assert.equal(0, (set(p, TCP, nil, 0, nil, nil, 0.1, 1)))
    assert.is_true(drive(10, { s }, function() return p.probes_ok >= 2 end))
    local window_ms = (socket.gettime() - t0) * 1000
    assert.equal(0, tonumber(p.probes_failed))
    assert.equal(0, bit.band(p.flags, 1))
    -- Not a speed check (the bench times probes): a probe that ran inside
    -- this window took some time and no longer than the window, so the
    -- latency is recorded, and in milliseconds rather than microseconds.
    assert.is_true(p.probe_latency_ms > 0 and p.probe_latency_ms <= window_ms,
      p.probe_latency_ms .. " ms in a window of " .. window_ms .. " ms")
    set(p, 0)
    assert.equal(0, core.ferry_probe_inflight())
  end)

  it("fails a probe of a server that never answers by its timeout", function()
    local s = srv("hang")
    local p = new_proxy(s.port)
    local t0 = socket.gettime()
    assert.equal(0, (set(p, CONNECT, "127.0.0.1", 9, nil, nil, 0.05, 0.3)))
    -- One probe at a time: while it hangs, one is in flight, never two.
    assert.is_true(drive(1, { s }, function() return core.ferry_probe_inflight() == 1 end))
    assert.is_true(drive(2, { s }, function()
      assert.is_true(core.ferry_probe_inflight() <= 1)
      return p.probes_failed >= 1
    end))
    assert.is_true(socket.gettime() - t0 >= 0.3)
    assert.equal(0, tonumber(p.probes_ok))
    set(p, 0)
    assert.equal(0, core.ferry_probe_inflight())
  end)

  -- Each probe runs alone, so every verdict counted meanwhile is its own:
  -- all of its failures, and nothing else, under its reason.  The timeout
  -- (2 s) is far past what a local accept takes, so a loaded machine does
  -- not turn a verdict into "timeout".
  it("fails a probe whose proxy closes the connection, by the reason \"closed\"", function()
    local s = srv("close")
    local p = new_proxy(s.port, SCHEME_HTTP)
    local before = probe_results()
    assert.equal(0, (set(p, HTTP, "127.0.0.1", 9, "/", nil, 0.05, 2)))
    assert.is_true(drive(10, { s }, function() return p.probes_failed >= 2 end))
    set(p, 0)
    assert.equal(0, core.ferry_probe_inflight())
    assert.is_true(s.accepts >= 2) -- the proxy took the connections, then closed them
    assert.equal(0, tonumber(p.probes_ok))
    assert.same({ closed = tonumber(p.probes_failed) }, only_new(before, probe_results()))
  end)

  it("fails a probe that is refused, by the reason \"refused\"", function()
    local gone = server("close")
    local dead_port = gone.port
    gone:close()
    local q = new_proxy(dead_port)
    local before = probe_results()
    assert.equal(0, (set(q, TCP, nil, 0, nil, nil, 0.05, 2)))
    assert.is_true(drive(10, nil, function() return q.probes_failed >= 2 end))
    set(q, 0)
    assert.equal(0, core.ferry_probe_inflight())
    assert.equal(0, tonumber(q.probes_ok))
    assert.same({ refused = tonumber(q.probes_failed) }, only_new(before, probe_results()))
  end)

  it("keeps at most `concurrency` probes in flight, deferring the rest", function()
    local s = srv("hang")
    core.ferry_probe_set_concurrency(3)
    local ps = {}
    finally(function()
      for i = 1, #ps do set(ps[i], 0) end
      core.ferry_probe_set_concurrency(64)
    end)
    for i = 1, 10 do
      ps[i] = new_proxy(s.port)
      assert.equal(0, (set(ps[i], CONNECT, "127.0.0.1", 9, nil, nil, 0.3, 0.2)))
    end
    local most = 0
    -- Deferred, not starved: every proxy gets its probe.
    assert.is_true(drive(4, { s }, function()
      local n = core.ferry_probe_inflight()
      if n > most then most = n end
      for i = 1, 10 do
        if ps[i].probes_failed == 0 then return false end
      end
      return true
    end))
    assert.equal(3, most)
    for i = 1, 10 do set(ps[i], 0) end
    assert.equal(0, core.ferry_probe_inflight())
  end)

  it("does not start a second run when reconfigured during one", function()
    local s = srv("hang")
    local p = new_proxy(s.port)
    assert.equal(0, (set(p, CONNECT, "127.0.0.1", 9, nil, nil, 0.05, 0.4)))
    assert.is_true(drive(1, { s }, function() return core.ferry_probe_inflight() == 1 end))
    drive(0.05, { s }) -- the server takes the probe's connection
    local accepts = s.accepts
    assert.is_true(accepts >= 1)
    for _ = 1, 5 do
      assert.equal(0, (set(p, CONNECT, "127.0.0.1", 9, nil, nil, 0.05, 0.4)))
    end
    drive(0.1, { s })
    assert.equal(1, core.ferry_probe_inflight())
    assert.equal(accepts, s.accepts)
    -- NONE during a run: stopped and freed, no verdict.
    local failed = tonumber(p.probes_failed)
    set(p, 0)
    assert.equal(0, core.ferry_probe_inflight())
    drive(0.5, { s })
    assert.equal(failed, tonumber(p.probes_failed))
  end)

  it("probes a dead proxy less often (backoff after `fall` failures)", function()
    local gone = server("close")
    local port = gone.port
    gone:close()
    local p = new_proxy(port)
    core.ferry_health_set(p, 1, 1, 0.05)
    local INTERVAL = 0.05
    assert.equal(0, (set(p, TCP, nil, 0, nil, nil, INTERVAL, 1)))
    -- When each failed probe ended (last_probe_at, the loop's clock).  One
    -- loop turn ends at most one run, and each is seen after its turn.
    local ended = {}
    assert.is_true(drive(20, nil, function()
      local n = tonumber(p.probes_failed)
      if n > #ended then
        assert.equal(#ended + 1, n, "two probes ended in one turn")
        ended[n] = p.last_probe_at
      end
      return n >= 6
    end))
    set(p, 0)
    assert.equal(0, tonumber(p.probes_ok))
    assert.equal(1, bit.band(p.flags, 1))
    assert.equal(6, p.probe_fails)
    -- The wait after failure k is the interval doubled per failure past
    -- `fall` (1): 1, 2, 4, 8, 16 intervals, less 10 % jitter.  A timer
    -- never fires early, so these are lower bounds a loaded machine only
    -- widens; without the backoff every gap would be about one interval.
    for k, f in ipairs({ 1, 2, 4, 8, 16 }) do
      local gap = ended[k + 1] - ended[k]
      assert.is_true(gap >= f * INTERVAL * 0.9 - 0.001,
        string.format("gap %d: %.3f s, want >= %.3f s", k, gap, f * INTERVAL * 0.9))
    end
  end)
end)
