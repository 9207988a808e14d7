-- SOCKS4 and SOCKS4a upstreams (core/up_socks4.c) to a local origin:
-- socks4 through a real SOCKS server, Dante (danted, which speaks SOCKS4
-- but not 4a's names), socks4a through spec/helpers/socks4_server.py,
-- which logs what it was asked.  Plain requests and CONNECT tunnels with
-- 1 MB bodies checked by sha256; the destination ferry resolves itself
-- for socks4 and sends as a name for socks4a; refusals about the
-- destination never charged to the proxy; a garbled reply is a handshake
-- failure; probes of SOCKS4 proxies.
local procs = require("procs")
local socket = require("socket")

local MB = 1048576

describe("socks4 and socks4a upstreams", function()
  local origin, dante, s4a, fake, ferry
  local O, D, P4A, FK, DEAD = procs.free_port(), procs.free_port(), procs.free_port(),
    procs.free_port(), procs.free_port()
  local F4, F4A, FBAD, FRT, A = procs.free_port(), procs.free_port(), procs.free_port(),
    procs.free_port(), procs.free_port()
  local base = "http://127.0.0.1:" .. O

  local function start_dante()
    local conf = procs.write_file(string.format("%s/danted-%d.conf", procs.tmp, D), table.concat({
      "logoutput: stderr",
      "internal: 127.0.0.1 port = " .. D,
      "external: 127.0.0.1",
      "clientmethod: none",
      "socksmethod: none",
      "client pass { from: 127.0.0.0/8 to: 0.0.0.0/0 }",
      "socks pass { from: 127.0.0.0/8 to: 0.0.0.0/0 }",
    }, "\n") .. "\n")
    local proc = procs.spawn("danted", string.format("danted -f %s -N 1 -p %s/danted-%d.pid",
      procs.quote(conf), procs.tmp, D))
    -- The port is bound before the children that serve it are ready.
    assert(procs.wait_for(function()
      return procs.read_file(proc.log):find("running", 1, true) ~= nil
    end, 10), "danted did not start:\n" .. procs.read_file(proc.log))
    assert(procs.wait_port(D), "danted does not listen")
    return proc
  end

  setup(function()
    origin = procs.relay_origin(O)
    dante = start_dante()
    local server = "python3 " .. procs.quote(procs.root .. "/spec/helpers/socks4_server.py")
    s4a = procs.spawn("socks4a", server .. " " .. P4A .. " relay")
    fake = procs.spawn("fake-socks4", server .. " " .. FK .. " garbage")
    assert(procs.wait_port(P4A, 15), "the SOCKS4a server did not start")
    assert(procs.wait_port(FK, 15), "the fake SOCKS4 server did not start")
    ferry = procs.ferry(string.format([[
listen { name = "s4", addr = "127.0.0.1:%d" }
listen { name = "s4a", addr = "127.0.0.1:%d" }
listen { name = "bad", addr = "127.0.0.1:%d" }
listen { name = "rt", addr = "127.0.0.1:%d" }
admin { addr = "127.0.0.1:%d" }
pool "s4" { retries = 0, health = { fall = 1, rise = 1 },
  proxies = { { id = "d4", url = "socks4://ferry-spec@127.0.0.1:%d" } } }
pool "s4a" { retries = 0, health = { fall = 1, rise = 1 },
  proxies = { { id = "d4a", url = "socks4a://ferry-spec@127.0.0.1:%d" } } }
pool "bad" { retries = 0, health = { fall = 10, rise = 1 },
  proxies = { { id = "fake", url = "socks4://127.0.0.1:%d" } } }
pool "probe4" { proxies = { { id = "p4", url = "socks4://127.0.0.1:%d" } },
  health = { check = "connect", target = "127.0.0.1:%d", interval = 0.3, timeout = 0.3,
             rise = 1, fall = 1 } }
pool "probe4a" { proxies = { { id = "p4a", url = "socks4a://127.0.0.1:%d" } },
  health = { check = "http", url = "http://localhost:%d/gen?n=10", interval = 0.3, timeout = 0.3,
             rise = 1, fall = 1 } }
pool "probebad" { proxies = { { id = "pbad", url = "socks4://127.0.0.1:%d" } },
  health = { check = "connect", target = "127.0.0.1:%d", interval = 0.3, timeout = 0.3,
             rise = 1, fall = 1 } }
pool "rt" { retries = 0, proxies = { { id = "rt0", url = "socks4://127.0.0.1:%d" } } }
route(function(req) return req.listener end)
]], F4, F4A, FBAD, FRT, A, D, P4A, FK, D, O, P4A, O, FK, O, DEAD), { F4, F4A, FBAD, FRT, A })
  end)

  teardown(function()
    if ferry then procs.stop_ferry(ferry) end
    for _, p in ipairs { origin, dante, s4a, fake } do if p then procs.stop(p) end end
  end)

  local function via(port) return "http://127.0.0.1:" .. port end

  -- A sample of /metrics; 0 when absent (a counter not yet counted).
  local function m(name, labels) return procs.metric(A, name, labels) or 0 end

  local function label(id, pool) return string.format('proxy="%s",pool="%s"', id, pool) end

  -- No failure of any kind charged to the proxy, and it is up.
  local function uncharged(id, pool)
    local l = label(id, pool)
    assert.equal(1, m("ferry_proxy_up", l))
    for _, kind in ipairs { "refused", "timeout", "handshake", "auth", "http5xx", "reset" } do
      assert.equal(0, m("ferry_proxy_failures_total", l .. ',kind="' .. kind .. '"'), kind)
    end
  end

  -- 1 MB from the origin through `port`; the body's sha256 against the
  -- origin's X-Body-Sha256.
  local function fetch_mb(port, host, tunnel)
    local status, body, headers = procs.curl { proxy = via(port),
      url = string.format("http://%s:%d/gen?n=%d", host, O, MB), flags = tunnel and "-p" or "" }
    local file = procs.write_file(string.format("%s/s4-body-%d", procs.tmp, math.random(1, 1e9)),
      body)
    local size, sum = procs.file_size(file), procs.sha256_file(file)
    os.remove(file)
    assert.equal(200, status)
    assert.equal(MB, size)
    assert.equal(procs.last_header(headers, "X-Body-Sha256"), sum)
  end

  describe("through danted (socks4) and a SOCKS4a server", function()
    it("carries a plain GET through socks4 and socks4a, 1 MB intact", function()
      fetch_mb(F4, "127.0.0.1", false)
      fetch_mb(F4A, "127.0.0.1", false)
    end)

    it("opens CONNECT tunnels through socks4 and socks4a, 1 MB intact", function()
      fetch_mb(F4, "127.0.0.1", true)
      fetch_mb(F4A, "127.0.0.1", true)
    end)

    it("resolves a name itself for socks4 and sends it as a name for socks4a", function()
      fetch_mb(F4, "localhost", true)
      local status, body = procs.curl { proxy = via(F4), url = "http://localhost:" .. O .. "/gen?n=5" }
      assert.equal(200, status)
      assert.equal(5, #body)
      fetch_mb(F4A, "localhost", false)
      fetch_mb(F4A, "localhost", true)
      -- The name and the user id went to the proxy as they are.
      local log = procs.read_file(s4a.log)
      assert.truthy(log:find("REQUEST user=ferry-spec host=localhost port=" .. O, 1, true), log)
      assert.truthy(log:find("REQUEST user=ferry-spec host=127.0.0.1 port=" .. O, 1, true), log)
    end)

    it("answers an unreachable destination with 502 FERRY-3030, not charged", function()
      local before = m("ferry_proxy_target_failures_total", label("d4", "s4"))
      for _ = 1, 3 do
        local status, _, headers = procs.curl { proxy = via(F4),
          url = "http://127.0.0.1:" .. DEAD .. "/" }
        assert.equal(502, status)
        assert.equal("FERRY-3030", procs.last_header(headers, "X-Ferry-Error"))
        status, _, headers = procs.curl { proxy = via(F4A), url = "http://localhost:" .. DEAD .. "/" }
        assert.equal(502, status)
        assert.equal("FERRY-3030", procs.last_header(headers, "X-Ferry-Error"))
      end
      assert.equal(3, m("ferry_proxy_target_failures_total", label("d4", "s4")) - before)
      assert.equal(3, m("ferry_proxy_target_failures_total", label("d4a", "s4a")))
      uncharged("d4", "s4")
      uncharged("d4a", "s4a")
      fetch_mb(F4, "127.0.0.1", false)
    end)

    it("fails an IPv6 destination on socks4 with 502 FERRY-3050, not charged", function()
      local status, _, headers = procs.curl { proxy = via(F4), url = "http://[::1]:" .. O .. "/" }
      assert.equal(502, status)
      assert.equal("FERRY-3050", procs.last_header(headers, "X-Ferry-Error"))
      status, _, headers = procs.curl { proxy = via(F4A), url = "http://[::1]:" .. O .. "/" }
      assert.equal(502, status)
      assert.equal("FERRY-3050", procs.last_header(headers, "X-Ferry-Error"))
      uncharged("d4", "s4")
    end)

    it("fails a name that does not resolve on socks4 with 502 FERRY-3004, not charged", function()
      local status, _, headers = procs.curl { proxy = via(F4),
        url = "http://no-such-host.invalid/" }
      assert.equal(502, status)
      assert.equal("FERRY-3004", procs.last_header(headers, "X-Ferry-Error"))
      uncharged("d4", "s4")
    end)
  end)

  describe("a fake SOCKS4 server", function()
    it("whose reply is not SOCKS4 is a handshake failure (502 FERRY-3002)", function()
      local l = label("fake", "bad") .. ',kind="handshake"'
      local before = m("ferry_proxy_failures_total", l)
      for _ = 1, 2 do
        local status, _, headers = procs.curl { proxy = via(FBAD), url = base .. "/gen?n=5" }
        assert.equal(502, status)
        assert.equal("FERRY-3002", procs.last_header(headers, "X-Ferry-Error"))
      end
      assert.equal(2, m("ferry_proxy_failures_total", l) - before)
    end)
  end)

  describe("the inventory API", function()
    local function api(method, path, body)
      return procs.curl { url = "http://127.0.0.1:" .. A .. path,
        flags = "-X " .. method .. (body and (" --data-binary " .. procs.quote(body)) or "") }
    end

    it("adds socks4a and socks4 proxies at run time, and refuses a SOCKS4 password", function()
      local status, body = api("POST", "/api/v1/proxies", string.format(
        '{"pool":"rt","url":"socks4a://runtime-id@127.0.0.1:%d","id":"api4a"}', P4A))
      assert.equal(201, status, body)
      assert.matches('"url":"socks4a://%*%*%*@127%.0%.0%.1:' .. P4A .. '"', body)
      status, body = api("POST", "/api/v1/proxies", string.format(
        '{"pool":"rt","url":"socks4://127.0.0.1:%d","id":"api4"}', D))
      assert.equal(201, status, body)
      status, body = api("POST", "/api/v1/proxies",
        '{"pool":"rt","url":"socks4://u:secret-pw@127.0.0.1:1","id":"nope"}')
      assert.equal(400, status, body)
      assert.matches("SOCKS4 has no password", body)
      assert.is_nil(body:find("secret-pw", 1, true))
      for _, id in ipairs { "rt0", "api4" } do
        assert.equal(200, (api("POST", "/api/v1/proxies/" .. id .. "/disable")))
      end
      -- Only the runtime socks4a proxy is left: the name goes to it.
      local sum = procs.curl { proxy = via(FRT), url = "http://localhost:" .. O .. "/gen?n=7" }
      assert.equal(200, sum)
      assert.truthy(procs.read_file(s4a.log):find("REQUEST user=runtime-id host=localhost", 1,
        true))
    end)
  end)

  describe("probes", function()
    local function probes(id, pool, result)
      return m("ferry_proxy_probes_total", label(id, pool) .. ',result="' .. result .. '"')
    end

    it("pass through socks4 (connect check) and socks4a (http check by name)", function()
      assert.is_true(procs.wait_for(function()
        return probes("p4", "probe4", "ok") >= 2 and probes("p4a", "probe4a", "ok") >= 2
      end, 10))
      assert.equal(0, probes("p4", "probe4", "failed"))
      assert.equal(0, probes("p4a", "probe4a", "failed"))
      assert.equal(1, m("ferry_proxy_up", label("p4", "probe4")))
      assert.equal(1, m("ferry_proxy_up", label("p4a", "probe4a")))
    end)

    it("fail and take down a proxy whose reply is not SOCKS4", function()
      assert.is_true(procs.wait_for(function()
        return probes("pbad", "probebad", "failed") >= 1
      end, 10))
      assert.equal(0, probes("pbad", "probebad", "ok"))
      assert.is_true(procs.wait_for(function()
        return m("ferry_proxy_up", label("pbad", "probebad")) == 0
      end, 5))
    end)
  end)

  it("leaves no sanitizer report", function()
    socket.sleep(0.05)
    assert.equal("", procs.sanitizer_report(ferry) or "")
  end)
end)
