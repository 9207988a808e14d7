-- The admin plane's transport: the HTTP admin listener and the console's
-- unix socket, bearer tokens, /health while serving and draining, bad
-- requests, and the structured log files (reopened on SIGUSR1).
local procs = require("procs")
local cjson = require("cjson.safe")

local TOKEN = "spec-token-0123456789"

-- curl against the admin plane; returns status, body, headers.
local function admin(args)
  local flags = args.flags or ""
  if args.token then flags = flags .. " -H " .. procs.quote("Authorization: Bearer " .. args.token) end
  if args.unix then flags = flags .. " --unix-socket " .. procs.quote(args.unix) end
  if args.method then flags = flags .. " -X " .. args.method end
  if args.data then flags = flags .. " --data-binary " .. procs.quote(args.data) end
  return procs.curl { url = args.url, flags = flags, max_time = args.max_time }
end

-- bin/ferry in the foreground, under `timeout 20` so that a ferry that
-- wrongly starts serving cannot hang the suite (its status is then 124).
local function run(args)
  local out = procs.tmp .. "/admin-cli-" .. math.random(1, 1e9)
  local ok, _, code = os.execute("timeout 20 " .. procs.quote(procs.bin) .. " " .. args .. " >" ..
    out .. " 2>&1")
  local text = procs.read_file(out)
  os.remove(out)
  if type(ok) == "number" then code = ok / 256 end
  return code, text
end

local function sh(cmd)
  local p = io.popen(cmd)
  local s = p:read("*a")
  p:close()
  return s
end

describe("admin plane", function()
  local origin, ferry
  local O, P, A = procs.free_port(), procs.free_port(), procs.free_port()
  local sock = procs.tmp .. "/admin-" .. A .. ".sock"
  local base = "http://127.0.0.1:" .. A

  setup(function()
    origin = procs.origin(O)
    ferry = procs.ferry(string.format([[
listen { name = "proxy", addr = "127.0.0.1:%d" }
admin { addr = "127.0.0.1:%d", socket = %q, token = %q }
route(function() return "direct" end)
]], P, A, sock, TOKEN), { P, A })
  end)

  teardown(function()
    procs.stop_ferry(ferry)
    procs.stop(origin)
  end)

  it("answers /health with 200 and JSON, without a token", function()
    local status, body, headers = admin { url = base .. "/health" }
    assert.equal(200, status)
    assert.equal("ok", cjson.decode(body).status)
    assert.matches("Content%-Type: application/json", headers)
    assert.matches("X%-Request%-Id: %x+", headers)
  end)

  it("needs the bearer token for everything else over TCP", function()
    local status, body, headers = admin { url = base .. "/api/v1/proxies" }
    assert.equal(401, status)
    assert.equal("FERRY-7005", cjson.decode(body).error)
    assert.matches('WWW%-Authenticate: Bearer realm="ferry"', headers)
    status, body = admin { url = base .. "/api/v1/proxies", token = "wrong-token-000000" }
    assert.equal(401, status)
    assert.equal("FERRY-7005", cjson.decode(body).error)
    assert.is_nil(body:find(TOKEN, 1, true))
  end)

  it("answers 404 for an unknown path and 405 for a wrong method, with codes", function()
    local status, body = admin { url = base .. "/nope", token = TOKEN }
    assert.equal(404, status)
    assert.equal("FERRY-7007", cjson.decode(body).error)
    status, body = admin { url = base .. "/health", token = TOKEN, method = "DELETE" }
    assert.equal(405, status)
    assert.equal("FERRY-7006", cjson.decode(body).error)
  end)

  it("creates the console socket with mode 0600 and trusts it without a token", function()
    assert.equal("600", sh("stat -c %a " .. procs.quote(sock)):match("%d+"))
    local status, body = admin { url = "http://ferry/api/v1/reload", unix = sock, method = "POST" }
    assert.equal(200, status)
    assert.equal("reloaded", cjson.decode(body).status)
    -- The log is flushed when the loop next waits, so the answer can
    -- reach us first: wait (bounded) for the line.
    local found = procs.wait_for(function()
      for _, l in ipairs(procs.log_lines(ferry)) do
        if l.code == "FERRY-0101" then return l end
      end
    end, 5)
    assert.is_table(found)
  end)

  it("refuses a body over the limit (413) and a chunked body (411), and goes on", function()
    local big = string.rep("x", 20000)
    local status, body = admin { url = base .. "/api/v1/reload", token = TOKEN, method = "POST",
      data = big }
    assert.equal(413, status)
    assert.equal("FERRY-7003", cjson.decode(body).error)
    status, body = admin { url = base .. "/api/v1/reload", token = TOKEN, method = "POST",
      data = "{}", flags = "-H 'Transfer-Encoding: chunked'" }
    assert.equal(411, status)
    assert.equal("FERRY-7002", cjson.decode(body).error)
    assert.equal(200, (admin { url = base .. "/health" }))
  end)

  it("serves several requests on one keep-alive connection", function()
    local out = sh("curl -s -o /dev/null -o /dev/null -w '%{num_connects} %{http_code}\\n' " ..
      base .. "/health " .. base .. "/health")
    local first, second = out:match("^(%d+) 200\n(%d+) 200\n$")
    assert.equal("1", first)
    assert.equal("0", second) -- the second request reused the connection
  end)

  it("every log line is one JSON object", function()
    local lines = procs.log_lines(ferry)
    -- Listeners, start, a reload and the admin requests above were logged.
    assert.is_true(#lines > 5, "only " .. #lines .. " log lines:\n" .. procs.read_file(ferry.log))
    for _, l in ipairs(lines) do
      assert.is_nil(l.unparsed, l.unparsed)
      assert.is_string(l.time)
      assert.is_string(l.level)
      assert.is_string(l.code)
    end
  end)
end)

describe("admin plane without a token", function()
  local ferry
  local P, A = procs.free_port(), procs.free_port()
  local base = "http://127.0.0.1:" .. A
  local socket = require("socket")

  setup(function()
    ferry = procs.ferry(string.format([[
listen { name = "proxy", addr = "127.0.0.1:%d" }
admin { addr = "127.0.0.1:%d" }
]], P, A), { P, A })
  end)

  teardown(function() procs.stop_ferry(ferry) end)

  it("refuses what a web page could send: an Origin, or a rebound Host name", function()
    local status, body = admin { url = base .. "/api/v1/reload", method = "POST",
      flags = "-H 'Origin: http://evil.example'" }
    assert.equal(403, status)
    assert.equal("FERRY-7008", cjson.decode(body).error)
    status, body = admin { url = base .. "/api/v1/proxies",
      flags = "-H 'Host: rebound.evil.example:" .. A .. "'" }
    assert.equal(403, status)
    assert.equal("FERRY-7008", cjson.decode(body).error)
    -- Loopback names are what local programs send.
    assert.equal(200, (admin { url = "http://localhost:" .. A .. "/api/v1/proxies" }))
    assert.equal(200, (admin { url = base .. "/api/v1/proxies" }))
  end)

  it("answers pipelined requests in order, each with its own path in the log", function()
    local c = socket.tcp()
    c:settimeout(5)
    assert(c:connect("127.0.0.1", A))
    local long = "/nope/" .. string.rep("x", 500)
    c:send("GET " .. long .. " HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" ..
      "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    local statuses = {}
    for _ = 1, 2 do
      local line = assert(c:receive("*l"))
      statuses[#statuses + 1] = tonumber(line:match("^HTTP/1%.1 (%d+)"))
      local len
      repeat
        local h = assert(c:receive("*l"))
        len = len or tonumber(h:match("^Content%-Length: (%d+)"))
      until h == ""
      assert(c:receive(len))
    end
    c:close()
    assert.same({ 404, 200 }, statuses)
    -- Log lines are flushed when the loop goes idle: wait for them.
    local paths
    for _ = 1, 50 do
      paths = {}
      for _, l in ipairs(procs.log_lines(ferry)) do
        if l.msg == "access" and l.listener == "admin" then paths[#paths + 1] = l.path end
      end
      if paths[#paths] == "/health" then break end
      procs.sleep(0.02)
    end
    assert.equal(long, paths[#paths - 1])
    assert.equal("/health", paths[#paths])
  end)

  it("a reload that turns the admin address into a proxy listener changes its kind", function()
    local O = procs.free_port()
    local origin = procs.origin(O)
    procs.write_file(ferry.config, string.format([[
listen { name = "proxy", addr = "127.0.0.1:%d" }
listen { name = "was_admin", addr = "127.0.0.1:%d" }
]], P, A))
    procs.signal(ferry, "HUP")
    local status
    for _ = 1, 50 do
      status = procs.curl { proxy = base, url = "http://127.0.0.1:" .. O .. "/" }
      if status == 200 then break end
      procs.sleep(0.05)
    end
    assert.equal(200, status)
    procs.stop(origin)
  end)
end)

describe("admin config", function()
  local function check(text)
    local cfg = procs.write_file(procs.tmp .. "/admin-check-" .. math.random(1, 1e9) .. ".lua",
      text)
    return run("check -c " .. cfg)
  end

  it("refuses a non-loopback admin address without a token", function()
    local code, out = check('admin { addr = "0.0.0.0:9090" }\n')
    assert.equal(1, code)
    assert.matches(":1: admin: refusing an admin listener on 0%.0%.0%.0 without a token", out)
  end)

  it("refuses a short token and an admin block with neither addr nor socket", function()
    local code, out = check('admin { addr = "127.0.0.1:9090", token = "short" }\n')
    assert.equal(1, code)
    assert.matches("token: at least 8 characters", out)
    code, out = check('admin { token = "long-enough-token" }\n')
    assert.equal(1, code)
    assert.matches("give addr", out)
  end)

  it("refuses to start when another process serves the console socket", function()
    local A = procs.free_port()
    local sock = procs.tmp .. "/admin-busy-" .. A .. ".sock"
    local first = procs.ferry(string.format('listen { addr = "127.0.0.1:%d" }\nadmin { socket = %q }\n',
      A, sock), { A })
    local B = procs.free_port()
    local cfg = procs.write_file(procs.tmp .. "/admin-busy2-" .. B .. ".lua",
      string.format('listen { addr = "127.0.0.1:%d" }\nadmin { socket = %q }\n', B, sock))
    local code, out = run("-c " .. cfg)
    assert.equal(1, code)
    assert.matches("another process is listening on this socket", out)
    procs.stop_ferry(first)
    -- The first one removed its socket on the way out.
    assert.is_nil(io.open(sock, "r"))
  end)

  it("replaces a stale socket file left by a killed daemon", function()
    local A = procs.free_port()
    local sock = procs.tmp .. "/admin-stale-" .. A .. ".sock"
    local text = string.format('listen { addr = "127.0.0.1:%d" }\nadmin { socket = %q }\n', A, sock)
    local first = procs.ferry(text, { A })
    procs.stop(first, "KILL")
    assert.equal("socket", sh("stat -c %F " .. procs.quote(sock)):match("socket"))
    local second = procs.ferry(text, { A })
    local status = admin { url = "http://ferry/health", unix = sock }
    assert.equal(200, status)
    procs.stop_ferry(second)
  end)
end)

describe("store at start", function()
  local function start_with_store(db)
    local P = procs.free_port()
    local cfg = procs.write_file(procs.tmp .. "/store-start-" .. P .. ".lua", string.format(
      'listen { addr = "127.0.0.1:%d" }\nstore { path = %q }\n', P, db))
    return run("-c " .. cfg)
  end

  it("refuses a corrupt store file with a clear error and leaves it as it was", function()
    local db = procs.tmp .. "/corrupt-" .. math.random(1, 1e9) .. ".db"
    local garbage = string.rep("not a database, ", 300)
    procs.write_file(db, garbage)
    local code, out = start_with_store(db)
    assert.equal(1, code)
    assert.matches(db:gsub("%p", "%%%0"), out)
    assert.equal(garbage, procs.read_file(db)) -- never silently recreated
  end)

  it("refuses a store another process holds locked", function()
    local db = procs.tmp .. "/locked-" .. math.random(1, 1e9) .. ".db"
    -- A valid store first (a ferry creates it), then a writer that keeps
    -- it locked for a while.
    local P = procs.free_port()
    local first = procs.ferry(string.format(
      'listen { addr = "127.0.0.1:%d" }\nstore { path = %q }\n', P, db), { P })
    procs.stop_ferry(first)
    assert.is_string(procs.read_file(db):match("^SQLite format 3"))
    local holder = procs.sqlite_lock(db, "EXCLUSIVE", 10)
    finally(function() procs.stop(holder) end)
    local code, out = start_with_store(db)
    local still_held = procs.alive(holder)
    procs.stop(holder)
    assert.is_true(still_held, "the lock was released before ferry tried it")
    assert.equal(1, code)
    assert.matches("locked", out)
  end)
end)

describe("draining", function()
  it("answers /health with 503 while in-flight requests finish, then exits 0", function()
    local O, P, A = procs.free_port(), procs.free_port(), procs.free_port()
    local origin = procs.origin(O)
    local cfg = procs.write_file(string.format("%s/drain-%d.lua", procs.tmp, P), string.format([[
listen { name = "proxy", addr = "127.0.0.1:%d" }
admin { addr = "127.0.0.1:%d" }
route(function() return "direct" end)
]], P, A))
    -- sh starts ferry in the background, says its PID, waits for it and
    -- writes its exit status: signals go to ferry itself, not to sh.
    local pidfile, codefile = cfg .. ".pid", cfg .. ".status"
    local shell = procs.spawn("ferry-sh", "sh -c " .. procs.quote(string.format(
      "%s -c %s & echo $! > %s; wait $!; echo $? > %s", procs.quote(procs.bin), procs.quote(cfg),
      procs.quote(pidfile), procs.quote(codefile))))
    local pid = procs.wait_for(function() return tonumber(procs.read_file(pidfile):match("%d+")) end)
    assert.is_number(pid, procs.read_file(shell.log))
    local ferry = { name = "ferry", pid = pid, log = shell.log }
    finally(function()
      procs.stop(ferry)
      procs.stop(shell)
      procs.stop(origin)
    end)
    for _, port in ipairs { P, A } do
      assert.is_true(procs.wait_port(port, procs.asan and 15 or 5), procs.read_file(shell.log))
    end
    local function open_conns() return procs.metric(A, "ferry_connections_open") end
    -- The scrape's own connection is the only one open.
    assert.equal(1, procs.wait_for(function() return open_conns() == 1 and 1 end))
    local out = procs.tmp .. "/drain-" .. P
    os.execute(string.format("curl -s -o %s -w '%%{http_code}' -x http://127.0.0.1:%d " ..
      "http://127.0.0.1:%d/slow/2 > %s.code 2>&1 &", out, P, O, out))
    -- The slow request is in flight: a second connection besides the scrape.
    assert.equal(2, procs.wait_for(function() return open_conns() == 2 and 2 end, 1.5),
      "the slow request never reached ferry")
    procs.signal(ferry, "TERM")
    local status, body
    procs.wait_for(function()
      status, body = admin { url = "http://127.0.0.1:" .. A .. "/health" }
      return status ~= 200
    end, 1.5)
    assert.equal(503, status)
    assert.equal("draining", cjson.decode(body).status)
    -- It exits by itself once the request is done (a second TERM would
    -- cut the drain short), with status 0.
    local code = procs.wait_for(function() return procs.read_file(codefile):match("^(%d+)\n") end,
      10)
    assert.equal("0", code, procs.read_file(shell.log))
    assert.is_false(procs.alive(ferry))
    ferry.stopped = true
    assert.is_nil(procs.sanitizer_report(ferry))
    assert.equal("200", procs.wait_for(function()
      return procs.read_file(out .. ".code"):match("^%d+$")
    end))
    local lines = procs.log_lines(ferry)
    local codes = {}
    for _, l in ipairs(lines) do codes[l.code or "?"] = (codes[l.code or "?"] or 0) + 1 end
    assert.equal(1, codes["FERRY-0003"]) -- draining
    assert.is_nil(codes["FERRY-0004"])  -- not cut short by the drain timeout
    assert.equal("FERRY-0005", lines[#lines].code, procs.read_file(shell.log))
  end)
end)

describe("log files", function()
  it("writes events and access lines to their files and reopens them on SIGUSR1", function()
    local O, P, S = procs.free_port(), procs.free_port(), procs.free_port()
    local origin = procs.origin(O)
    local socks = procs.microsocks(S, "alice", "pw-never-logged-42")
    local events = procs.tmp .. "/events-" .. P .. ".log"
    local access = procs.tmp .. "/access-" .. P .. ".log"
    local ferry = procs.ferry(string.format([[
listen { name = "proxy", addr = "127.0.0.1:%d" }
log { file = %q, access_file = %q }
pool "p" { proxies = { "socks5://alice:pw-never-logged-42@127.0.0.1:%d" } }
exchange "ex" { hosts = { "127.0.0.1" }, pool = "p" }
]], P, events, access, S), { P })
    local url = "http://127.0.0.1:" .. O .. "/"
    assert.equal(200, (procs.curl { proxy = "http://127.0.0.1:" .. P, url = url }))
    os.rename(access, access .. ".1")
    os.rename(events, events .. ".1")
    procs.signal(ferry, "USR1")
    -- Reopening creates the files again under their names.
    assert.is_true(procs.wait_for(function()
      local f = io.open(access, "r")
      if f then f:close() end
      return f ~= nil
    end), "access log not reopened")
    assert.equal(200, (procs.curl { proxy = "http://127.0.0.1:" .. P, url = url }))
    procs.stop_ferry(ferry)
    local function lines(path)
      local t = {}
      for line in procs.read_file(path):gmatch("[^\n]+") do
        local v = cjson.decode(line)
        assert.is_table(v, "not JSON: " .. line)
        t[#t + 1] = v
      end
      return t
    end
    local old_access, new_access = lines(access .. ".1"), lines(access)
    assert.equal(1, #old_access)
    assert.equal(1, #new_access)
    assert.equal("access", new_access[1].msg)
    assert.equal("p", new_access[1].pool)
    assert.equal("ex", new_access[1].exchange)
    assert.equal("socks5://127.0.0.1:" .. S, new_access[1].proxy)
    local started = lines(events .. ".1")
    assert.equal("FERRY-0001", started[1].code)
    local stopped = lines(events)
    assert.equal("FERRY-0005", stopped[#stopped].code)
    for _, path in ipairs { access, access .. ".1", events, events .. ".1", ferry.log } do
      assert.is_nil(procs.read_file(path):find("pw-never-logged-42", 1, true), path)
    end
    procs.stop(socks)
    procs.stop(origin)
  end)
end)

describe("admin plane with scoped tokens", function()
  local socket = require("socket")
  local ferry
  local P, A, S = procs.free_port(), procs.free_port(), procs.free_port()
  local sock = procs.tmp .. "/admin-scoped-" .. A .. ".sock"
  local base = "http://127.0.0.1:" .. A
  local FULL = "full-admin-token-1"
  local BROKER = "broker-only-token-0123"
  local READER = "metrics-and-read-token-0123"

  -- extra: more proxies of pool "p", as Lua text.
  local function config(extra)
    return string.format([[
listen { name = "proxy", addr = "127.0.0.1:%d" }
admin { addr = "127.0.0.1:%d", socket = %q, token = %q, tokens = {
  { token = %q, scope = { "broker" } },
  { token = %q, scope = { "metrics", "inventory:read" } },
} }
pool "p" { proxies = { { url = "socks5://carol:pw1@127.0.0.1:%d", id = "cfg" }, %s } }
exchange "ex" { hosts = { "example.invalid" }, pool = "p" }
route(function() return "p" end)
]], P, A, sock, FULL, BROKER, READER, S, extra or "")
  end

  setup(function()
    ferry = procs.ferry(config(), { P, A })
  end)

  teardown(function() procs.stop_ferry(ferry) end)

  local function call(token, method, path, data)
    local status, body, headers = admin { url = base .. path, token = token, method = method,
      data = data }
    return status, cjson.decode(body) or body, headers
  end

  it("gives each token exactly the endpoints of its scopes", function()
    local lease = '{"exchange_id":"ex","connection_type":"http"}'
    -- token -> { method, path, body, status }
    local cases = {
      { BROKER, "POST", "/api/v1/proxy/request", lease, 200 },
      { BROKER, "GET", "/metrics", nil, 403 },
      { BROKER, "GET", "/api/v1/proxies", nil, 403 },
      { BROKER, "POST", "/api/v1/console", "1 + 1", 403 },
      { BROKER, "POST", "/api/v1/reload", nil, 403 },
      { READER, "GET", "/metrics", nil, 200 },
      { READER, "GET", "/api/v1/proxies", nil, 200 },
      { READER, "GET", "/api/v1/proxies/cfg", nil, 200 },
      { READER, "POST", "/api/v1/proxies", '{"pool":"p","url":"http://127.0.0.1:9"}', 403 },
      { READER, "POST", "/api/v1/proxies/cfg/disable", nil, 403 },
      { READER, "DELETE", "/api/v1/proxies/cfg", nil, 403 },
      { READER, "POST", "/api/v1/proxy/request", lease, 403 },
      { READER, "POST", "/api/v1/console", "1 + 1", 403 },
      { FULL, "POST", "/api/v1/proxy/request", lease, 200 },
      { FULL, "GET", "/metrics", nil, 200 },
      { FULL, "POST", "/api/v1/console", "1 + 1", 200 },
      { FULL, "POST", "/api/v1/reload", nil, 200 },
      { "not-a-configured-token", "GET", "/metrics", nil, 401 },
      { nil, "GET", "/health", nil, 200 },
      { nil, "GET", "/metrics", nil, 401 },
    }
    for _, c in ipairs(cases) do
      local status, body, headers = call(c[1], c[2], c[3], c[4])
      local what = string.format("%s %s with %s", c[2], c[3], tostring(c[1]))
      assert.equal(c[5], status, what .. ": " .. tostring(body))
      if status == 403 then
        assert.equal("FERRY-7020", body.error, what)
        assert.matches("X%-Ferry%-Error: FERRY%-7020", headers, what)
      elseif status == 401 then
        assert.equal("FERRY-7005", body.error, what)
      end
    end
    -- The console socket stays trusted with everything.
    assert.equal(200, (admin { url = "http://ferry/api/v1/console", unix = sock, method = "POST",
      data = "1 + 1" }))
  end)

  -- One raw request with exactly these header lines; the status back.
  local function raw(lines)
    local c = socket.tcp()
    c:settimeout(5)
    assert(c:connect("127.0.0.1", A))
    c:send("GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n" .. lines .. "Connection: close\r\n\r\n")
    local line = c:receive("*l")
    c:close()
    return tonumber(line and line:match("^HTTP/1%.1 (%d+)"))
  end

  it("parses Authorization strictly", function()
    local ok = {
      "Authorization: Bearer " .. READER .. "\r\n",
      "Authorization: bearer " .. READER .. "\r\n",
      "Authorization: BEARER   " .. READER .. "  \r\n",
    }
    for _, l in ipairs(ok) do assert.equal(200, raw(l), l) end
    local refused = {
      "Authorization: Bearer " .. READER .. " extra\r\n",
      "Authorization: Bearer\t" .. READER .. "\r\n",
      "Authorization: Bearer " .. READER .. ",\r\n",
      "Authorization: Bearer" .. READER .. "\r\n",
      "Authorization: Basic " .. READER .. "\r\n",
      "Authorization: Bearer " .. READER .. "\r\nAuthorization: Bearer " .. READER .. "\r\n",
    }
    for _, l in ipairs(refused) do assert.equal(401, raw(l), l) end
  end)

  it("keeps one inventory entry per scheme, host, port and user in a pool", function()
    local function add(body) return call(FULL, "POST", "/api/v1/proxies", cjson.encode(body)) end
    local u = "socks5://dave:pw@127.0.0.1:" .. S
    local status, body = add { pool = "p", url = u, id = "d1" }
    assert.equal(201, status, tostring(body))
    -- The same proxy under another id, another password, another spelling.
    for _, again in ipairs {
      { pool = "p", url = u, id = "d2" },
      { pool = "p", url = "socks5://dave:other@127.0.0.1:" .. S, id = "d3" },
      { pool = "p", url = "socks5h://dave:pw@127.0.0.1:" .. S, id = "d4" },
      { pool = "p", url = "socks5://carol:pw2@127.0.0.1:" .. S, id = "d5" }, -- the config's
    } do
      status, body = add(again)
      assert.equal(409, status, again.url)
      assert.equal("FERRY-7021", body.error)
      assert.is_nil(body.message:find("pw", 1, true), body.message)
    end
    -- Another user on the same endpoint is another proxy.
    status, body = add { pool = "p", url = "socks5://erin:pw@127.0.0.1:" .. S, id = "e1" }
    assert.equal(201, status, tostring(body))
    -- The console refuses it the same way.
    local s2, text = admin { url = "http://ferry/api/v1/console", unix = sock, method = "POST",
      data = string.format('proxy.add("p", %q, { id = "d6" })', u) }
    assert.equal(400, s2)
    assert.matches('already has socks5://***@127.0.0.1:' .. S, text, 1, true)
    local _, list = call(READER, "GET", "/api/v1/proxies?pool=p")
    assert.equal(3, list.total)
    -- When the config comes to declare dave's proxy (another id, another
    -- password), the runtime entry waits instead of doubling it.
    procs.write_file(ferry.config, config(string.format(
      '{ url = "socks5://dave:newpw@127.0.0.1:%d", id = "cfg-dave" }', S)))
    status, body = call(FULL, "POST", "/api/v1/reload")
    assert.equal(200, status, tostring(body))
    _, list = call(READER, "GET", "/api/v1/proxies?pool=p")
    assert.equal(3, list.total)
    assert.equal(1, #list.waiting)
    assert.equal("d1", list.waiting[1].name)
    assert.equal("socks5://***@127.0.0.1:" .. S, list.waiting[1].url)
  end)
end)
