-- More RFC 9111 rules seen through the real binary: s-maxage and Expires
-- freshness, the configured ttl and what it never covers, Age from the
-- backend, must-revalidate against stale-if-error, stale-while-revalidate,
-- only-if-cached, max-stale, a backend 503 answered stale.
local procs = require("procs")
local socket = require("socket")
local cjson = require("cjson.safe")

local function seen(O, t)
  local status, body = procs.curl { url = "http://127.0.0.1:" .. O .. "/count?t=" .. t }
  assert.equal(200, status)
  return assert(cjson.decode(body)).n
end

local function get(port, path, flags)
  local status, body, headers = procs.curl { url = "http://127.0.0.1:" .. port .. path,
    flags = flags }
  return status, body, procs.last_header(headers, "X-Cache"), headers
end

describe("HTTP cache rules", function()
  local O, REV, A = procs.free_port(), procs.free_port(), procs.free_port()
  local ferry

  setup(function()
    local proc = procs.spawn("cache-origin",
      "python3 " .. procs.root .. "/spec/helpers/cache_origin.py " .. O)
    assert(procs.wait_port(O), "cache origin did not start:\n" .. procs.read_file(proc.log))
    ferry = procs.ferry(string.format([[
listen { name = "rev", protocol = "reverse", addr = "127.0.0.1:%d", pool = "app" }
admin { addr = "127.0.0.1:%d" }
pool "app" { retries = 0, backends = { "http://127.0.0.1:%d" }, timeouts = { first_byte = 1 },
  cache = { size = "1MB", max_object = "64KB", ttl = 120 } }
]], REV, A, O), { REV, A })
  end)

  teardown(function()
    if ferry then procs.stop_ferry(ferry) end
    procs.stop_all()
  end)

  it("takes freshness from s-maxage over max-age, and from Expires", function()
    for _, p in ipairs { "/smaxage", "/expires" } do
      get(REV, p)
      local s, _, x = get(REV, p)
      assert.equal(200, s)
      assert.equal("HIT", x, p)
      assert.equal(1, seen(O, p), p)
    end
  end)

  it("gives ttl to a 200 that says nothing, never to one with Set-Cookie", function()
    get(REV, "/plain")
    assert.equal("HIT", select(3, get(REV, "/plain")))
    assert.equal(1, seen(O, "/plain"))
    get(REV, "/cookie?ttl")
    assert.equal("MISS", select(3, get(REV, "/cookie?ttl")))
  end)

  it("counts the backend's Age: an answer 299 s old of 300 expires within seconds", function()
    local _, _, x1 = get(REV, "/aged")
    assert.equal("MISS", x1)
    local _, _, _, h = get(REV, "/aged")
    assert.is_true(tonumber(procs.last_header(h, "Age")) >= 299)
    socket.sleep(2.1)
    local _, _, x3 = get(REV, "/aged")
    assert.equal("MISS", x3) -- stale, no validator: fetched again
    assert.equal(2, seen(O, "/aged"))
  end)

  it("serves stale within stale-while-revalidate", function()
    get(REV, "/swr")
    socket.sleep(2.1)
    local s, _, x = get(REV, "/swr")
    assert.equal(200, s)
    assert.equal("STALE", x)
    assert.equal(1, seen(O, "/swr"))
  end)

  it("accepts a stale entry for a request's max-stale, refuses only-if-cached misses", function()
    get(REV, "/failing?ms")
    socket.sleep(2.1)
    local _, _, x = get(REV, "/failing?ms", "-H 'Cache-Control: max-stale=600'")
    assert.equal("STALE", x)
    local s, _, _, h = get(REV, "/nothing-here", "-H 'Cache-Control: only-if-cached'")
    assert.equal(504, s)
    assert.equal("FERRY-3140", procs.last_header(h, "X-Ferry-Error"))
    assert.equal(0, seen(O, "/nothing-here"))
  end)

  it("answers a backend 503 with a stale entry that allows it, never past must-revalidate",
    function()
      get(REV, "/failing")
      get(REV, "/mustreval")
      socket.sleep(2.1)
      procs.curl { url = "http://127.0.0.1:" .. O .. "/break?p=/failing" }
      procs.curl { url = "http://127.0.0.1:" .. O .. "/break?p=/mustreval" }
      local s1, b1, x1 = get(REV, "/failing")
      assert.equal(200, s1)
      assert.equal("STALE", x1)
      assert.truthy(b1:find("#1", 1, true))
      local s2 = get(REV, "/mustreval")
      assert.equal(503, s2)
      assert.equal(2, seen(O, "/failing"))
    end)

  it("answers stale when the backend times out (stale-if-error)", function()
    local _, b1 = get(REV, "/hanging")
    socket.sleep(2.1)
    procs.curl { url = "http://127.0.0.1:" .. O .. "/hang?p=/hanging" }
    local s, b2, x = get(REV, "/hanging")
    assert.equal(200, s)
    assert.equal("STALE", x)
    assert.equal(b1, b2)
  end)

  it("does not store a HEAD miss", function()
    get(REV, "/fresh?headonly", "-I")
    local _, _, x = get(REV, "/fresh?headonly", "-I")
    assert.equal("MISS", x)
    assert.equal(2, seen(O, "/fresh?headonly"))
  end)
end)
