-- The reverse listener and its cache as nginx / HAProxy users drive them:
-- real clients (curl as an HTTP/1.0 client, with ranges and in parallel,
-- wget -c) against real backends (spec/helpers/cache_origin.py, and
-- spec/helpers/trial_backend.py that misbehaves on demand).  Each case is a
-- defect found by using ferry this way: chunked answers to HTTP/1.0 clients
-- never stored, Range ignored on hits, no Via on hits, concurrent fills
-- holding max_object each beyond the cache's size.
local procs = require("procs")
local cjson = require("cjson.safe")

local function spawn_py(name, script, port, ...)
  local args = table.concat({ ... }, " ")
  local proc = procs.spawn(name, "python3 " .. procs.root .. "/spec/helpers/" .. script .. " " ..
    port .. " " .. args)
  assert(procs.wait_port(port), name .. " did not start:\n" .. procs.read_file(proc.log))
  return proc
end

local function urlencode(s)
  return (s:gsub("[^%w%-%._~/]", function(ch) return string.format("%%%02X", ch:byte()) end))
end

-- Requests cache_origin.py at port O saw for target t.
local function seen(O, t)
  local status, body = procs.curl { url = "http://127.0.0.1:" .. O .. "/count?t=" .. urlencode(t) }
  assert.equal(200, status)
  return assert(cjson.decode(body)).n
end

describe("reverse listener with real clients", function()
  local O, B1, REV, A = procs.free_port(), procs.free_port(), procs.free_port(), procs.free_port()
  local blog = string.format("%s/trial-backend-%d.log", procs.tmp, B1)
  local ferry

  setup(function()
    spawn_py("cache-origin", "cache_origin.py", O)
    spawn_py("trial-backend", "trial_backend.py", B1, blog)
    ferry = procs.ferry(string.format([[
listen { name = "rev", protocol = "reverse", addr = "127.0.0.1:%d", pool = "app" }
admin { addr = "127.0.0.1:%d" }
pool "app" { backends = { "http://127.0.0.1:%d" },
  cache = { size = "4MB", max_object = "1MB", ttl = 60 } }
pool "trial" { backends = { "http://127.0.0.1:%d" },
  cache = { size = "4MB", max_object = "1MB", ttl = 60 } }
pool "fills" { backends = { "http://127.0.0.1:%d" },
  cache = { size = "1MB", max_object = "400KB", ttl = 60 } }
route(function(req)
  if req.host == "trial.example" then return "trial" end
  if req.host == "fills.example" then return "fills" end
end)
]], REV, A, O, B1, B1), { REV, A })
  end)

  teardown(function()
    if ferry then procs.stop_ferry(ferry) end
    procs.stop_all()
  end)

  it("stores a chunked answer it relays to an HTTP/1.0 client (then HIT)", function()
    local t = "/big?n=30000&chunked=1&c=http10"
    local url = "http://127.0.0.1:" .. REV .. t
    local s1, b1, h1 = procs.curl { url = url, flags = "-0" }
    assert.equal(200, s1)
    assert.equal(30000, #b1)
    assert.equal("MISS", procs.last_header(h1, "X-Cache"))
    local s2, b2, h2 = procs.curl { url = url, flags = "-0" }
    assert.equal(200, s2)
    assert.equal(b1, b2)
    assert.equal("HIT", procs.last_header(h2, "X-Cache"))
    assert.equal(1, seen(O, t))
  end)

  it("says Via on answers from the cache as on relayed ones", function()
    local url = "http://127.0.0.1:" .. REV .. "/fresh?c=via"
    local s1, _, h1 = procs.curl { url = url }
    local s2, _, h2 = procs.curl { url = url }
    assert.equal(200, s1)
    assert.equal(200, s2)
    assert.equal("MISS", procs.last_header(h1, "X-Cache"))
    assert.equal("HIT", procs.last_header(h2, "X-Cache"))
    assert.equal("1.1 ferry", procs.last_header(h1, "Via"))
    assert.equal("1.1 ferry", procs.last_header(h2, "Via"))
  end)

  it("answers a Range request from a stored 200 with 206 (curl -r, wget -c resume)", function()
    local t = "/big?n=100000&c=range"
    local url = "http://127.0.0.1:" .. REV .. t
    local s0, full = procs.curl { url = url }
    assert.equal(200, s0)
    assert.equal(100000, #full)
    local cases = {
      { "0-99", 1, 100 }, { "100-", 101, 100000 }, { "-50", 99951, 100000 },
      { "99990-200000", 99991, 100000 },
    }
    for _, cs in ipairs(cases) do
      local s, b, h = procs.curl { url = url, flags = "-r " .. cs[1] }
      assert.equal(206, s, cs[1])
      assert.equal("HIT", procs.last_header(h, "X-Cache"))
      assert.equal(full:sub(cs[2], cs[3]), b, cs[1])
      assert.equal(string.format("bytes %d-%d/100000", cs[2] - 1, cs[3] - 1),
        procs.last_header(h, "Content-Range"))
    end
    local s416, b416, h416 = procs.curl { url = url, flags = "-r 100000-" }
    assert.equal(416, s416)
    assert.equal("", b416)
    assert.equal("bytes */100000", procs.last_header(h416, "Content-Range"))
    -- A list of ranges, or an If-Range that does not match: the whole body.
    for _, f in ipairs { "-r 0-1,5-6", "-r 0-9 -H 'If-Range: \"other\"'" } do
      local s, b = procs.curl { url = url, flags = f }
      assert.equal(200, s, f)
      assert.equal(full, b, f)
    end
    -- wget -c resumes a partial download from the cache.
    local file = procs.tmp .. "/range-wget-" .. REV
    procs.write_file(file, full:sub(1, 1000))
    local p = io.popen("wget -q -c -O " .. file .. " '" .. url .. "'; echo rc=$?")
    local out = p:read("*a")
    p:close()
    assert.matches("rc=0", out)
    assert.equal(full, procs.read_file(file))
    os.remove(file)
    assert.equal(1, seen(O, t))
  end)

  it("never lets bytes a backend sent past its answer reach the next request", function()
    -- /long announces 5 bytes and sends a whole second response after them;
    -- a HEAD of /big/N gets a body it must not have.  Neither may become
    -- the answer to a later request on a kept backend connection.
    local base = "http://127.0.0.1:" .. REV
    local s1, b1 = procs.curl { url = base .. "/long", flags = "-H 'Host: trial.example'" }
    assert.equal(200, s1)
    assert.equal("hello", b1)
    local s2 = procs.curl { url = base .. "/big/5000?c=head", flags = "-I -H 'Host: trial.example'" }
    assert.equal(200, s2)
    for i = 1, 6 do
      local s, b, h = procs.curl { url = base .. "/after" .. i, flags = "-H 'Host: trial.example'" }
      assert.equal(200, s)
      assert.equal(B1 .. " /after" .. i .. "\n", b)
      assert.is_nil(procs.last_header(h, "X-Injected"))
    end
  end)

  it("keeps the bodies of concurrent fills within the cache's size", function()
    -- 8 clients each miss a 300 KB object the backend sends over 2 s: 8
    -- fills of up to 400 KB would hold 3.2 MB for a 1 MB cache.  Every
    -- client gets its whole answer; the fills past the bound are relayed,
    -- not stored.
    local urls = {}
    for i = 1, 8 do
      urls[#urls + 1] = string.format("-o /dev/null 'http://127.0.0.1:%d/drip/300000?fill=%d'",
        REV, i)
    end
    local p = io.popen("curl -s -Z --parallel-max 8 --max-time 60 " ..
      "-H 'Host: fills.example' -w '%{http_code} %{size_download}\\n' " ..
      table.concat(urls, " ") .. " 2>/dev/null")
    local out = p:read("*a")
    p:close()
    local ok = select(2, out:gsub("200 300000\n", ""))
    assert.equal(8, ok, out)
    local _, m = procs.curl { url = "http://127.0.0.1:" .. A .. "/metrics" }
    local refused = tonumber(m:match('ferry_cache_fill_refused_total{pool="fills"} (%d+)'))
    local filling = tonumber(m:match('ferry_cache_filling_bytes{pool="fills"} (%d+)'))
    local bytes = tonumber(m:match('ferry_cache_bytes{pool="fills"} (%d+)'))
    assert.is_true(refused ~= nil and refused >= 1, m:match("ferry_cache_fill[^\n]*"))
    assert.equal(0, filling)
    assert.is_true(bytes <= 1048576)
    local log = procs.read_file(ferry.log)
    assert.matches("FERRY%-3160", log)
  end)
end)
