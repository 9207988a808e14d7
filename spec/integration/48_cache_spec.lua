-- The HTTP cache (RFC 9111) on reverse listeners and on the forward
-- path: real bin/ferry, a real origin that counts requests per target
-- (spec/helpers/cache_origin.py), curl and LuaSocket clients.  Every
-- rule is seen at the origin (its request count) and at the client
-- (X-Cache, Age, status, bytes).
local procs = require("procs")
local socket = require("socket")
local cjson = require("cjson.safe")

local TOKEN = "cache-spec-admin-token-0123"

local function origin(port)
  local proc = procs.spawn("cache-origin",
    "python3 " .. procs.root .. "/spec/helpers/cache_origin.py " .. port)
  assert(procs.wait_port(port), "cache origin did not start:\n" .. procs.read_file(proc.log))
  return proc
end

local function urlencode(s)
  return (s:gsub("[^%w%-%._~/]", function(ch) return string.format("%%%02X", ch:byte()) end))
end

-- Requests the origin at port O saw for target t: n (304s included), n304.
local function seen(O, t)
  local status, body = procs.curl { url = "http://127.0.0.1:" .. O .. "/count?t=" .. urlencode(t) }
  assert.equal(200, status)
  local v = assert(cjson.decode(body))
  return v.n, v.n304
end

-- GET (or flags' method) through a reverse listener: status, body, X-Cache, headers.
local function get(port, path, flags)
  local status, body, headers = procs.curl { url = "http://127.0.0.1:" .. port .. path,
    flags = flags, max_time = 30 }
  return status, body, procs.last_header(headers, "X-Cache"), headers
end

-- Download url into a file: status and the file's path.
local function download(url)
  local file = procs.tmp .. "/cache-dl-" .. math.random(1, 1e9)
  local p = io.popen("curl -s -S --max-time 120 -o " .. file .. " -w '%{http_code}' '" .. url .. "'")
  local code = tonumber(p:read("*a"))
  p:close()
  return code, file
end

-- One sample of the admin plane's /metrics (with the admin token).
local function metric(admin, name, labels)
  local status, body = procs.curl { url = "http://127.0.0.1:" .. admin .. "/metrics",
    flags = "-H 'Authorization: Bearer " .. TOKEN .. "'" }
  assert.equal(200, status)
  local key = name .. "{" .. labels .. "}"
  local v = ("\n" .. body):match("\n" .. key:gsub("%p", "%%%0") .. " (%S+)\n")
  return tonumber(v)
end

describe("HTTP cache", function()
  local O, O2 = procs.free_port(), procs.free_port()
  local REV, FWD, SMALL, SIE, A = procs.free_port(), procs.free_port(), procs.free_port(),
    procs.free_port(), procs.free_port()
  local org2, ferry

  local function config(small)
    return string.format([[
listen { name = "rev", protocol = "reverse", addr = "127.0.0.1:%d", pool = "app" }
listen { name = "fwd", addr = "127.0.0.1:%d" }
listen { name = "small", protocol = "reverse", addr = "127.0.0.1:%d", pool = "app",
  cache = { size = "%s", max_object = "16KB" } }
listen { name = "sie", protocol = "reverse", addr = "127.0.0.1:%d", pool = "gone" }
admin { addr = "127.0.0.1:%d", token = "%s" }
direct { cache = { size = "1MB", max_object = "64KB" } }
pool "app" { backends = { "http://127.0.0.1:%d" },
  cache = { size = "4MB", max_object = "256KB", ttl = 60, lock_timeout = 10 } }
pool "gone" { retries = 0, backends = { "http://127.0.0.1:%d" }, cache = { size = "1MB" } }
route(function(req)
  if req.listener == "fwd" then return "direct" end
end)
]], REV, FWD, SMALL, small, SIE, A, TOKEN, O, O2)
  end

  setup(function()
    origin(O)
    org2 = origin(O2)
    ferry = procs.ferry(config("64KB"), { REV, FWD, SMALL, SIE, A })
  end)

  teardown(function()
    if ferry then procs.stop_ferry(ferry) end
    procs.stop_all()
  end)

  it("answers a fresh entry itself: HIT with Age, the origin asked once", function()
    local s1, b1, x1 = get(REV, "/fresh")
    assert.equal(200, s1)
    assert.equal("MISS", x1)
    local s2, b2, x2, h2 = get(REV, "/fresh")
    assert.equal(200, s2)
    assert.equal("HIT", x2)
    assert.equal(b1, b2)
    assert.truthy(tonumber(procs.last_header(h2, "Age")))
    assert.equal(tostring(#b1), procs.last_header(h2, "Content-Length"))
    assert.equal(1, (seen(O, "/fresh")))
    assert.is_true(metric(A, "ferry_cache_hits_total", 'pool="app"') >= 1)
  end)

  it("revalidates an expired entry with its ETag: a 304 refreshes it", function()
    local _, b1, x1 = get(REV, "/etag")
    assert.equal("MISS", x1)
    socket.sleep(3.1) -- max-age=2 runs out
    local s2, b2, x2 = get(REV, "/etag")
    assert.equal(200, s2)
    assert.equal("REVALIDATED", x2)
    assert.equal(b1, b2)
    local n, n304 = seen(O, "/etag")
    assert.equal(2, n)
    assert.equal(1, n304)
    local _, _, x3 = get(REV, "/etag")
    assert.equal("HIT", x3) -- refreshed: fresh again
    assert.equal(2, (seen(O, "/etag")))
  end)

  it("revalidates with Last-Modified", function()
    get(REV, "/lm")
    socket.sleep(2.1)
    local s, _, x = get(REV, "/lm")
    assert.equal(200, s)
    assert.equal("REVALIDATED", x)
    local _, n304 = seen(O, "/lm")
    assert.equal(1, n304)
  end)

  it("keeps one variant per Accept-Encoding (Vary)", function()
    local bodies = {}
    for _, enc in ipairs { "gzip", "br", "gzip", "br" } do
      local s, b = get(REV, "/vary", "-H 'Accept-Encoding: " .. enc .. "'")
      assert.equal(200, s)
      assert.truthy(b:find("enc=" .. enc, 1, true))
      bodies[#bodies + 1] = b
    end
    assert.equal(bodies[1], bodies[3])
    assert.equal(bodies[2], bodies[4])
    assert.equal(2, (seen(O, "/vary")))
  end)

  it("never stores Vary: *, no-store, private, Set-Cookie or Authorization answers", function()
    for _, p in ipairs { "/varystar", "/nostore", "/private", "/cookie" } do
      get(REV, p)
      local _, _, x = get(REV, p)
      assert.equal("MISS", x, p)
      assert.equal(2, (seen(O, p)), p)
    end
    local auth = "-H 'Authorization: Basic dTpw'"
    get(REV, "/auth", auth)
    get(REV, "/auth", auth)
    assert.equal(2, (seen(O, "/auth")))
  end)

  it("stores them when the response says public", function()
    for _, p in ipairs { "/cookiepublic", "/authpublic" } do
      local auth = "-H 'Authorization: Basic dTpw'"
      get(REV, p, auth)
      local _, _, x = get(REV, p, auth)
      assert.equal("HIT", x, p)
      assert.equal(1, (seen(O, p)), p)
    end
  end)

  it("revalidates when the request says no-cache (Cache-Control or Pragma)", function()
    get(REV, "/nocache")
    local _, _, x1 = get(REV, "/nocache", "-H 'Cache-Control: no-cache'")
    assert.equal("REVALIDATED", x1)
    local _, _, x2 = get(REV, "/nocache", "-H 'Pragma: no-cache'")
    assert.equal("REVALIDATED", x2)
    local n, n304 = seen(O, "/nocache")
    assert.equal(3, n)
    assert.equal(2, n304)
  end)

  it("answers a client's conditional GET with 304 from the entry", function()
    get(REV, "/nocache")
    local s, b, x = get(REV, "/nocache", "-H 'If-None-Match: \"n1\"'")
    assert.equal(304, s)
    assert.equal("", b)
    assert.equal("HIT", x)
  end)

  it("answers HEAD from a GET entry", function()
    local _, body = get(REV, "/fresh?head=1")
    local s, b, x, h = get(REV, "/fresh?head=1", "-I")
    assert.equal(200, s)
    assert.equal("HIT", x)
    assert.falsy(b:find(body, 1, true)) -- -I writes the head; no body came
    assert.equal(tostring(#body), procs.last_header(h, "Content-Length"))
    assert.equal(1, (seen(O, "/fresh?head=1")))
  end)

  it("stores a chunked answer and serves it whole", function()
    local _, b1 = get(REV, "/chunked")
    local _, b2, x = get(REV, "/chunked")
    assert.equal("HIT", x)
    assert.equal(b1, b2)
    assert.truthy(b1:find("GET /chunked #1", 1, true))
  end)

  it("drops the target of a POST (and what its Location names)", function()
    get(REV, "/item/a")
    assert.equal("HIT", select(3, get(REV, "/item/a")))
    get(REV, "/loc/item/a")
    assert.equal("HIT", select(3, get(REV, "/loc/item/a")))
    local s = get(REV, "/item/a", "-X POST -d x=1")
    assert.equal(200, s)
    assert.equal("MISS", select(3, get(REV, "/item/a")))
    assert.equal("MISS", select(3, get(REV, "/loc/item/a")))
  end)

  it("coalesces 50 concurrent misses into one origin request", function()
    local path = "/slow?s=1&k=coalesce"
    local socks = {}
    for i = 1, 50 do
      local c = socket.tcp()
      c:settimeout(20)
      assert(c:connect("127.0.0.1", REV))
      socks[i] = c
    end
    for _, c in ipairs(socks) do
      assert(c:send("GET " .. path .. " HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"))
    end
    local first
    for _, c in ipairs(socks) do
      local status, body = procs.read_response(c)
      assert.equal(200, status)
      first = first or body
      assert.equal(first, body)
      c:close()
    end
    assert.equal(1, (seen(O, path)))
    assert.is_true(metric(A, "ferry_cache_coalesced_total", 'pool="app"') >= 1)
  end)

  it("serves stale on error when the origin is gone (stale-if-error)", function()
    local _, b1, x1 = get(SIE, "/sie")
    assert.equal("MISS", x1)
    socket.sleep(2.1)
    procs.stop(org2)
    local s, b2, x2 = get(SIE, "/sie")
    assert.equal(200, s)
    assert.equal("STALE", x2)
    assert.equal(b1, b2)
    assert.is_true(metric(A, "ferry_cache_stale_total", 'pool="gone"') >= 1)
  end)

  it("purges by prefix from the console and the admin API (token required)", function()
    get(REV, "/item/p1")
    get(REV, "/item/p2")
    get(REV, "/fresh?purge=1")
    local auth = "-H 'Authorization: Bearer " .. TOKEN .. "'"
    local admin = "http://127.0.0.1:" .. A
    local s = procs.curl { url = admin .. "/api/v1/cache?prefix=/item/", flags = "-X DELETE" }
    assert.equal(401, s)
    local s2, body = procs.curl { url = admin .. "/api/v1/cache?prefix=/item/",
      flags = "-X DELETE " .. auth }
    assert.equal(200, s2)
    assert.is_true(assert(cjson.decode(body)).purged >= 2)
    assert.equal("MISS", select(3, get(REV, "/item/p1")))
    assert.equal("HIT", select(3, get(REV, "/fresh?purge=1")))
    local s3, text = procs.curl { url = admin .. "/api/v1/console",
      flags = "-X POST --data-binary 'cache.purge(\"http://127.0.0.1:" .. REV ..
        "/fresh?purge\")' " .. auth }
    assert.equal(200, s3, text)
    assert.truthy(text:find("purged 1 entry", 1, true), text)
    assert.equal("MISS", select(3, get(REV, "/fresh?purge=1")))
    local s4, stats = procs.curl { url = admin .. "/api/v1/cache", flags = auth }
    assert.equal(200, s4)
    local names = {}
    for _, c in ipairs(assert(cjson.decode(stats)).caches) do names[c.name] = c end
    assert.truthy(names.app and names.app.purged >= 3)
    local s5, text2 = procs.curl { url = admin .. "/api/v1/console",
      flags = "-X POST --data-binary 'cache.stats()' " .. auth }
    assert.equal(200, s5)
    assert.truthy(text2:find("REVALIDATED", 1, true), text2)
  end)

  it("evicts least recently used entries to stay within size", function()
    for i = 1, 20 do
      local s, b, x = get(SMALL, "/big?n=10000&i=" .. i)
      assert.equal(200, s)
      assert.equal(10000, #b)
      assert.equal("MISS", x)
      local bytes = metric(A, "ferry_cache_bytes", 'listener="small"')
      assert.is_true(bytes <= 65536, "bytes " .. bytes)
    end
    assert.is_true(metric(A, "ferry_cache_evictions_total", 'listener="small"') >= 10)
    assert.equal("HIT", select(3, get(SMALL, "/big?n=10000&i=20")))
    assert.equal("MISS", select(3, get(SMALL, "/big?n=10000&i=1")))
  end)

  it("serves a stored body larger than its buffers whole (checksum), chunked or not", function()
    for _, flag in ipairs { "", "&chunked=1" } do
      local path = "/big?n=200000" .. flag
      local want = select(2, procs.curl { url = "http://127.0.0.1:" .. O .. "/bigsum?n=200000" })
      for i = 1, 3 do
        local s, file = download("http://127.0.0.1:" .. REV .. path)
        assert.equal(200, s, path .. " " .. i)
        assert.equal(want, procs.sha256_file(file), path .. " " .. i)
        os.remove(file)
      end
      assert.equal(1, (seen(O, path)))
    end
  end)

  it("sends an entry whole to a slow reader though it is purged meanwhile", function()
    local path = "/big?n=250000&slow=1"
    get(REV, path .. "&warm=0")
    local _, _, x = get(REV, path .. "&warm=0")
    assert.equal("HIT", x)
    local file = procs.tmp .. "/cache-slow-" .. math.random(1, 1e9)
    local reader = procs.spawn("slow-curl", "curl -s --limit-rate 100k -o " .. file ..
      " 'http://127.0.0.1:" .. REV .. path .. "&warm=0'")
    assert.truthy(procs.wait_for(function() return procs.file_size(file) > 0 end, 10))
    local s, purged = procs.curl { url = "http://127.0.0.1:" .. A ..
      "/api/v1/cache?cache=app&prefix=/big%3Fn=250000", flags = "-X DELETE -H 'Authorization: Bearer " ..
      TOKEN .. "'" }
    assert.equal(200, s)
    assert.equal(1, assert(cjson.decode(purged)).purged)
    assert.truthy(procs.wait_for(function() return not procs.alive(reader) end, 20))
    local want = select(2, procs.curl { url = "http://127.0.0.1:" .. O .. "/bigsum?n=250000" })
    assert.equal(want, procs.sha256_file(file))
    os.remove(file)
  end)

  it("streams an answer over max_object whole and does not store it", function()
    for _, flag in ipairs { "", "&chunked=1" } do
      local path = "/big?n=300000" .. flag
      local want = select(2, procs.curl { url = "http://127.0.0.1:" .. O .. "/bigsum?n=300000" })
      for _ = 1, 2 do
        local s, file = download("http://127.0.0.1:" .. REV .. path)
        assert.equal(200, s)
        assert.equal(want, procs.sha256_file(file))
        os.remove(file)
      end
      assert.equal(2, (seen(O, path)))
    end
    assert.is_true(metric(A, "ferry_cache_too_large_total", 'pool="app"') >= 2)
  end)

  it("relays a 100 MB answer intact through the cache path", function()
    local n = 100 * 1024 * 1024
    local want = select(2, procs.curl { url = "http://127.0.0.1:" .. O .. "/bigsum?n=" .. n,
      max_time = 60 })
    local s, file = download("http://127.0.0.1:" .. REV .. "/big?n=" .. n)
    assert.equal(200, s)
    assert.equal(n, procs.file_size(file))
    assert.equal(want, procs.sha256_file(file))
    os.remove(file)
    assert.is_true(metric(A, "ferry_cache_bytes", 'pool="app"') <= 4 * 1024 * 1024)
  end)

  it("does not store a body cut short by the origin", function()
    for _ = 1, 2 do
      local s = get(REV, "/short")
      assert.is_not.equal(0, s) -- the head arrived; the body did not
    end
    assert.equal(2, (seen(O, "/short")))
  end)

  it("caches the forward path too (absolute-form through direct)", function()
    local url = "http://127.0.0.1:" .. O .. "/fresh?fwd=1"
    local _, b1, h1 = procs.curl { url = url, proxy = "http://127.0.0.1:" .. FWD }
    local _, b2, h2 = procs.curl { url = url, proxy = "http://127.0.0.1:" .. FWD }
    assert.equal("MISS", procs.last_header(h1, "X-Cache"))
    assert.equal("HIT", procs.last_header(h2, "X-Cache"))
    assert.equal(b1, b2)
    assert.equal(1, (seen(O, "/fresh?fwd=1")))
  end)

  it("keeps its entries across a reload; a smaller size evicts down to it", function()
    get(REV, "/fresh?reload=1")
    assert.equal("HIT", select(3, get(SMALL, "/big?n=10000&i=20")))
    local before = metric(A, "ferry_cache_entries", 'listener="small"')
    assert.is_true(before >= 4)
    procs.write_file(ferry.config, config("24KB"))
    procs.signal(ferry, "HUP")
    assert.truthy(procs.wait_for(function()
      local size = metric(A, "ferry_cache_size_bytes", 'listener="small"')
      return size == 24 * 1024
    end, 10), "the reload did not apply")
    assert.is_true(metric(A, "ferry_cache_bytes", 'listener="small"') <= 24 * 1024)
    assert.is_true(metric(A, "ferry_cache_entries", 'listener="small"') < before)
    assert.equal("HIT", select(3, get(SMALL, "/big?n=10000&i=20"))) -- the most recent stays
    assert.equal("HIT", select(3, get(REV, "/fresh?reload=1")))
    assert.equal(1, (seen(O, "/fresh?reload=1")))
  end)

  it("writes the cache outcome on the access line", function()
    local found = {}
    for _, l in ipairs(procs.log_lines(ferry)) do
      if l.msg == "access" and l.cache then found[l.cache] = true end
    end
    for _, k in ipairs { "HIT", "MISS", "STALE", "REVALIDATED", "BYPASS" } do
      assert.truthy(found[k], k)
    end
  end)
end)
