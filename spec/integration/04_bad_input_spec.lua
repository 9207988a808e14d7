-- Bad input from every side: malformed and oversized requests, slow and
-- vanishing clients, hostile upstreams, broken scripts.  Each ends in a
-- clear coded error, and ferry keeps serving afterwards.
local procs = require("procs")
local socket = require("socket")

local function raw(port, data, opts)
  opts = opts or {}
  local c = assert(socket.connect("127.0.0.1", port))
  c:settimeout(opts.timeout or 5)
  if data then c:send(data) end
  if opts.close_after_send then c:close() return nil end
  local all, _, partial = c:receive("*a")
  c:close()
  return all or partial
end

describe("bad input", function()
  local origin, garbage, ferry
  local O, G, F = procs.free_port(), procs.free_port(), procs.free_port()
  local F_GHTTP, F_GSOCKS, F_AUTH = procs.free_port(), procs.free_port(), procs.free_port()
  local F_ERR, F_LOOP, F_NONSENSE, F_ROUTE =
    procs.free_port(), procs.free_port(), procs.free_port(), procs.free_port()
  local base = "http://127.0.0.1:" .. O
  local plugdir = procs.tmp .. "/bad-plugins-" .. math.random(1, 1e9)

  setup(function()
    os.execute("mkdir -p " .. plugdir .. "/strategies")
    procs.write_file(plugdir .. "/strategies/raises.lua", [[
return { name = "raises", version = "1", select = function() error("boom from a plugin") end }
]])
    procs.write_file(plugdir .. "/strategies/loops.lua", [[
local function spin() local n = 0 while true do n = n + 1 end end
return { name = "loops", version = "1", select = function() return spin() end }
]])
    procs.write_file(plugdir .. "/strategies/nonsense.lua", [[
return { name = "nonsense", version = "1", select = function() return { id = 999 } end }
]])
    origin = procs.origin(O)
    garbage = procs.spawn("garbage", "luajit " .. procs.root .. "/spec/helpers/garbage.lua " .. G)
    assert(procs.wait_port(G))
    ferry = procs.ferry(string.format([[
plugins { %q }
timeouts { client_head = 1 }
listen { name = "main", addr = "127.0.0.1:%d" }
listen { name = "ghttp", addr = "127.0.0.1:%d" }
listen { name = "gsocks", addr = "127.0.0.1:%d" }
listen { name = "auth", addr = "127.0.0.1:%d", users = { "alice:wonder-land" } }
listen { name = "err", addr = "127.0.0.1:%d" }
listen { name = "loop", addr = "127.0.0.1:%d" }
listen { name = "nonsense", addr = "127.0.0.1:%d" }
listen { name = "route", addr = "127.0.0.1:%d" }
pool "ghttp" { retries = 0, proxies = { "http://127.0.0.1:%d" } }
pool "gsocks" { retries = 0, proxies = { "socks5://127.0.0.1:%d" } }
pool "err" { strategy = "raises", proxies = { "http://127.0.0.1:%d" } }
pool "loop" { strategy = "loops", proxies = { "http://127.0.0.1:%d" } }
pool "nonsense" { strategy = "nonsense", proxies = { "http://127.0.0.1:%d" } }
route(function(req)
  if req.listener == "route" then error("route script failure") end
  if req.listener == "main" or req.listener == "auth" then return "direct" end
  return req.listener
end)
]], plugdir, F, F_GHTTP, F_GSOCKS, F_AUTH, F_ERR, F_LOOP, F_NONSENSE, F_ROUTE,
      G, G, F, F, F), { F, F_GHTTP, F_GSOCKS, F_AUTH, F_ERR, F_LOOP, F_NONSENSE, F_ROUTE })
  end)

  teardown(function()
    procs.stop_ferry(ferry)
    procs.stop(origin)
    procs.stop(garbage)
  end)

  local function still_serving()
    local status, body = procs.curl { proxy = "http://127.0.0.1:" .. F, url = base .. "/" }
    assert.equal(200, status)
    assert.equal("hello from origin\n", body)
  end

  it("answers a malformed request line with 400 FERRY-1001", function()
    -- A token and a space (not FERRY-1010): the parser refuses the rest.
    local resp = raw(F, "GARBAGE / NOT-HTTP\r\n\r\n")
    assert.matches("^HTTP/1%.1 400 ", resp)
    assert.matches("X%-Ferry%-Error: FERRY%-1001", resp)
    still_serving()
  end)

  it("answers a malformed header with 400", function()
    local resp = raw(F, "GET " .. base .. "/ HTTP/1.1\r\nHost x no colon\r\n\r\n")
    assert.matches("^HTTP/1%.1 400 ", resp)
    still_serving()
  end)

  it("rejects an origin-form request with 400 FERRY-1002", function()
    local resp = raw(F, "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert.matches("^HTTP/1%.1 400 ", resp)
    assert.matches("FERRY%-1002", resp)
  end)

  -- https:// is originated over TLS (39_origin_spec.lua); other schemes are refused.
  it("rejects ftp:// in absolute form with 400 FERRY-1003", function()
    local resp = raw(F, "GET ftp://127.0.0.1:" .. O .. "/ HTTP/1.1\r\nHost: x\r\n\r\n")
    assert.matches("^HTTP/1%.1 400 ", resp)
    assert.matches("FERRY%-1003", resp)
  end)

  it("answers an oversized head with 431 FERRY-1004", function()
    local resp = raw(F, "GET " .. base .. "/ HTTP/1.1\r\nX-Big: " .. string.rep("a", 20000) ..
      "\r\n\r\n")
    assert.matches("^HTTP/1%.1 431 ", resp)
    assert.matches("FERRY%-1004", resp)
    still_serving()
  end)

  it("answers too many header fields with 431 FERRY-1005", function()
    local h = {}
    for i = 1, 150 do h[#h + 1] = "X-H" .. i .. ": v\r\n" end
    local resp = raw(F, "GET " .. base .. "/ HTTP/1.1\r\n" .. table.concat(h) .. "\r\n")
    assert.matches("^HTTP/1%.1 431 ", resp)
    assert.matches("FERRY%-1005", resp)
  end)

  it("answers a head that never completes with 408 FERRY-1006", function()
    local resp = raw(F, "GET " .. base .. "/ HTTP/1.1\r\nHost: x\r\n")
    assert.matches("^HTTP/1%.1 408 ", resp)
    assert.matches("FERRY%-1006", resp)
  end)

  it("survives a client that vanishes mid-body", function()
    raw(F, "POST " .. base .. "/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" ..
      string.rep("z", 1000), { close_after_send = true })
    procs.sleep(0.2)
    still_serving()
    assert.matches("FERRY%-1008", procs.read_file(ferry.log))
  end)

  it("answers a garbage response from the origin with 502 FERRY-3006", function()
    local status, _, headers = procs.curl { proxy = "http://127.0.0.1:" .. F,
      url = base .. "/garbage" }
    assert.equal(502, status)
    assert.matches("FERRY%-3006", headers)
  end)

  it("cuts the client off when the origin resets mid-body, and logs FERRY-3005", function()
    local status, body, _, err = procs.curl { proxy = "http://127.0.0.1:" .. F,
      url = base .. "/truncated" }
    assert.equal(200, status)
    assert.equal(10, #body)
    assert.matches("transfer closed", err)
    procs.sleep(0.1)
    assert.matches('"code":"FERRY%-3005"', procs.read_file(ferry.log))
    still_serving()
  end)

  it("answers 502 FERRY-3002 when an HTTP proxy answers CONNECT with garbage", function()
    -- curl reports a refused CONNECT through its headers, not http_code.
    local _, _, headers = procs.curl { proxy = "http://127.0.0.1:" .. F_GHTTP,
      url = base .. "/", flags = "-p" }
    assert.matches("^HTTP/1%.1 502 ", headers)
    assert.matches("FERRY%-3002", headers)
  end)

  it("answers 502 FERRY-3002 when a SOCKS5 proxy answers garbage", function()
    local status, _, headers = procs.curl { proxy = "http://127.0.0.1:" .. F_GSOCKS,
      url = base .. "/" }
    assert.equal(502, status)
    assert.matches("FERRY%-3002", headers)
  end)

  it("asks for credentials with 407 and Proxy-Authenticate", function()
    local status, _, headers = procs.curl { proxy = "http://127.0.0.1:" .. F_AUTH,
      url = base .. "/" }
    assert.equal(407, status)
    assert.matches('Proxy%-Authenticate: Basic realm="ferry"', headers)
    assert.matches("FERRY%-1007", headers)
    local bad = procs.curl { proxy = "http://127.0.0.1:" .. F_AUTH, url = base .. "/",
      flags = "-U alice:guess" }
    assert.equal(407, bad)
    local good, body = procs.curl { proxy = "http://127.0.0.1:" .. F_AUTH, url = base .. "/",
      flags = "-U alice:wonder-land" }
    assert.equal(200, good)
    assert.equal("hello from origin\n", body)
    procs.sleep(0.1)
    assert.is_nil(procs.read_file(ferry.log):find("wonder-land", 1, true))
  end)

  it("falls back to round robin when a strategy raises, and logs FERRY-4005", function()
    local status, body = procs.curl { proxy = "http://127.0.0.1:" .. F_ERR, url = base .. "/" }
    assert.equal(200, status)
    assert.equal("hello from origin\n", body)
    procs.sleep(0.1)
    assert.matches("FERRY%-4005.-boom from a plugin", procs.read_file(ferry.log))
  end)

  it("stops a strategy that loops forever and falls back", function()
    local status, body = procs.curl { proxy = "http://127.0.0.1:" .. F_LOOP, url = base .. "/" }
    assert.equal(200, status)
    assert.equal("hello from origin\n", body)
    procs.sleep(0.1)
    assert.matches("FERRY%-4005.-budget", procs.read_file(ferry.log))
    still_serving()
  end)

  it("falls back when a strategy returns nonsense, and logs FERRY-4006", function()
    local status = procs.curl { proxy = "http://127.0.0.1:" .. F_NONSENSE, url = base .. "/" }
    assert.equal(200, status)
    procs.sleep(0.1)
    assert.matches("FERRY%-4006", procs.read_file(ferry.log))
  end)

  it("answers 503 FERRY-2003 when route() raises", function()
    local status, _, headers = procs.curl { proxy = "http://127.0.0.1:" .. F_ROUTE,
      url = base .. "/" }
    assert.equal(503, status)
    assert.matches("FERRY%-2003", headers)
    procs.sleep(0.1)
    assert.matches("FERRY%-4002.-route script failure", procs.read_file(ferry.log))
  end)
end)
