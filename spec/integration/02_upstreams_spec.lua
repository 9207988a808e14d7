-- Real upstream proxies: tinyproxy (HTTP, absolute form and CONNECT) and
-- microsocks (SOCKS5 with and without username/password).
local procs = require("procs")

describe("upstream proxies", function()
  local origin, tiny, socks, socks_auth, ferry
  local O, T, S, SA = procs.free_port(), procs.free_port(), procs.free_port(), procs.free_port()
  local F_TINY, F_SOCKS, F_AUTH, F_BADAUTH =
    procs.free_port(), procs.free_port(), procs.free_port(), procs.free_port()
  local base = "http://127.0.0.1:" .. O

  setup(function()
    origin = procs.origin(O)
    tiny = procs.tinyproxy(T)
    socks = procs.microsocks(S)
    socks_auth = procs.microsocks(SA, "feeduser", "s3cret-pw")
    ferry = procs.ferry(string.format([[
listen { name = "tiny", addr = "127.0.0.1:%d" }
listen { name = "socks", addr = "127.0.0.1:%d" }
listen { name = "auth", addr = "127.0.0.1:%d" }
listen { name = "badauth", addr = "127.0.0.1:%d" }
pool "tiny" { retries = 0, proxies = {
  { url = "http://127.0.0.1:%d", headers = { ["X-Feed-Client"] = "ferry-spec" } } } }
pool "socks" { retries = 0, proxies = { "socks5://127.0.0.1:%d" } }
pool "auth" { retries = 0, proxies = { "socks5://feeduser:s3cret-pw@127.0.0.1:%d" } }
pool "badauth" { retries = 0, proxies = { "socks5://feeduser:wrong-pw@127.0.0.1:%d" } }
route(function(req) return req.listener end)
]], F_TINY, F_SOCKS, F_AUTH, F_BADAUTH, T, S, SA, SA), { F_TINY, F_SOCKS, F_AUTH, F_BADAUTH })
  end)

  teardown(function()
    procs.stop_ferry(ferry)
    for _, p in ipairs { origin, tiny, socks, socks_auth } do procs.stop(p) end
  end)

  local function via(port) return "http://127.0.0.1:" .. port end

  it("sends plain HTTP to tinyproxy in absolute form, with the pool's extra headers", function()
    local status, body = procs.curl { proxy = via(F_TINY), url = base .. "/headers" }
    assert.equal(200, status)
    assert.matches("X%-Feed%-Client: ferry%-spec", body)
  end)

  it("opens CONNECT tunnels through tinyproxy", function()
    local status, body = procs.curl { proxy = via(F_TINY), url = base .. "/bytes/70000",
      flags = "-p" }
    assert.equal(200, status)
    assert.equal(70000, #body)
  end)

  it("carries plain HTTP and tunnels through microsocks", function()
    assert.equal(200, (procs.curl { proxy = via(F_SOCKS), url = base .. "/" }))
    local status, body = procs.curl { proxy = via(F_SOCKS), url = base .. "/", flags = "-p" }
    assert.equal(200, status)
    assert.equal("hello from origin\n", body)
  end)

  it("sends the destination to SOCKS5 as a name for the proxy to resolve", function()
    local status, body = procs.curl { proxy = via(F_SOCKS), url = "http://localhost:" .. O .. "/" }
    assert.equal(200, status)
    assert.equal("hello from origin\n", body)
  end)

  it("authenticates to microsocks with username and password", function()
    local status, body = procs.curl { proxy = via(F_AUTH), url = base .. "/", flags = "-p" }
    assert.equal(200, status)
    assert.equal("hello from origin\n", body)
  end)

  it("reports a rejected SOCKS5 password as 502 FERRY-3003, without the password", function()
    local status, body, headers = procs.curl { proxy = via(F_BADAUTH), url = base .. "/" }
    assert.equal(502, status)
    assert.matches("X%-Ferry%-Error: FERRY%-3003", headers)
    assert.matches('"error":"FERRY%-3003"', body)
    procs.sleep(0.1)
    local log = procs.read_file(ferry.log)
    assert.matches("FERRY%-3003", log)
    assert.is_nil(log:find("wrong-pw", 1, true))
    assert.is_nil(log:find("s3cret-pw", 1, true))
    assert.is_nil(body:find("wrong-pw", 1, true))
  end)
end)
