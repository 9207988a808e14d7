-- Failover: a refused, killed or stopped proxy costs a retry on another
-- proxy of the pool, never a failed request; when every proxy fails the
-- client gets a coded 502/504 with a correlation id.
local procs = require("procs")
local cjson = require("cjson")
local socket = require("socket")

describe("failover", function()
  local origin, s1, s2, stopped, ferry
  local O, S1, S2, STOPPED, DEAD = procs.free_port(), procs.free_port(), procs.free_port(),
    procs.free_port(), procs.free_port()
  local F, F_DEAD, F_NORETRY, F_STOPPED =
    procs.free_port(), procs.free_port(), procs.free_port(), procs.free_port()
  local base = "http://127.0.0.1:" .. O

  setup(function()
    origin = procs.origin(O)
    s1 = procs.microsocks(S1)
    s2 = procs.microsocks(S2)
    stopped = procs.microsocks(STOPPED)
    procs.signal(stopped, "STOP") -- accepts in the kernel, never answers
    ferry = procs.ferry(string.format([[
listen { name = "main", addr = "127.0.0.1:%d" }
listen { name = "dead", addr = "127.0.0.1:%d" }
listen { name = "noretry", addr = "127.0.0.1:%d" }
listen { name = "stopped", addr = "127.0.0.1:%d" }
pool "main" { strategy = "round_robin", retries = 2, proxies = {
  "socks5://127.0.0.1:%d", "socks5://127.0.0.1:%d", "socks5://127.0.0.1:%d" } }
pool "dead" { retries = 2, proxies = { "http://127.0.0.1:%d", "socks5://127.0.0.1:%d" } }
pool "noretry" { retries = 0, proxies = { "http://127.0.0.1:%d" } }
pool "stopped" { strategy = "round_robin", retries = 1,
  timeouts = { connect = 0.5 },
  proxies = { "socks5://127.0.0.1:%d", "socks5://127.0.0.1:%d" } }
route(function(req) return req.listener end)
]], F, F_DEAD, F_NORETRY, F_STOPPED, DEAD, S1, S2, DEAD, DEAD, DEAD, STOPPED, S1),
      { F, F_DEAD, F_NORETRY, F_STOPPED })
  end)

  teardown(function()
    procs.stop_ferry(ferry)
    for _, p in ipairs { origin, s1, s2, stopped } do procs.stop(p) end
  end)

  local function via(port) return "http://127.0.0.1:" .. port end

  it("retries a refused proxy on another one, every request succeeds", function()
    for _ = 1, 9 do
      local status, body = procs.curl { proxy = via(F), url = base .. "/" }
      assert.equal(200, status)
      assert.equal("hello from origin\n", body)
    end
    procs.sleep(0.1)
    assert.matches('"code":"FERRY%-3001","msg":"attempt 1 to', procs.read_file(ferry.log))
  end)

  it("keeps serving when a live proxy is killed", function()
    procs.stop(s2)
    for _ = 1, 6 do
      local status = procs.curl { proxy = via(F), url = base .. "/", flags = "-p" }
      assert.equal(200, status)
    end
  end)

  it("answers 502 FERRY-3001 with a correlation id when every attempt fails", function()
    local status, body, headers = procs.curl { proxy = via(F_DEAD), url = base .. "/" }
    assert.equal(502, status)
    assert.matches("X%-Ferry%-Error: FERRY%-3001", headers)
    local doc = cjson.decode(body)
    assert.equal("FERRY-3001", doc.error)
    assert.is_string(doc.request_id)
    assert.matches("X%-Request%-Id: " .. doc.request_id, headers)
  end)

  it("uses the client's X-Request-Id as the correlation id", function()
    local _, body = procs.curl { proxy = via(F_DEAD), url = base .. "/",
      flags = "-H 'X-Request-Id: trace-42'" }
    assert.equal("trace-42", cjson.decode(body).request_id)
    procs.sleep(0.1)
    assert.matches('"cid":"trace%-42"', procs.read_file(ferry.log))
  end)

  it("does not retry when the pool says retries = 0", function()
    local before = select(2, procs.read_file(ferry.log):gsub("attempt %d to", ""))
    local status = procs.curl { proxy = via(F_NORETRY), url = base .. "/" }
    assert.equal(502, status)
    procs.sleep(0.1)
    local after = select(2, procs.read_file(ferry.log):gsub("attempt %d to", ""))
    assert.equal(before + 1, after)
  end)

  it("answers 504 FERRY-3008 when the upstream never sends a response", function()
    local T, F_SILENT = procs.free_port(), procs.free_port()
    local tiny = procs.tinyproxy(T)
    procs.signal(tiny, "STOP")
    local f2 = procs.ferry(string.format([[
listen { addr = "127.0.0.1:%d" }
pool "silent" { retries = 0, timeouts = { first_byte = 0.5 }, proxies = { "http://127.0.0.1:%d" } }
route(function() return "silent" end)
]], F_SILENT, T), { F_SILENT })
    local t0 = socket.gettime()
    local status, body, headers = procs.curl { proxy = via(F_SILENT), url = base .. "/" }
    local took = socket.gettime() - t0
    procs.stop_ferry(f2)
    procs.stop(tiny)
    assert.equal(504, status)
    assert.matches("X%-Ferry%-Error: FERRY%-3008", headers)
    assert.matches('"error":"FERRY%-3008"', body)
    assert.is_true(took < 5, "took " .. took)
  end)

  it("gives up on a proxy that never answers after the connect timeout, and fails over", function()
    for _ = 1, 2 do
      local status, body = procs.curl { proxy = via(F_STOPPED), url = base .. "/" }
      assert.equal(200, status)
      assert.equal("hello from origin\n", body)
    end
    procs.sleep(0.1)
    assert.matches('"code":"FERRY%-3007"', procs.read_file(ferry.log))
  end)
end)
