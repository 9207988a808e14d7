-- Hot reload on SIGHUP: the whole new config is checked before the
-- switch, a broken one leaves the running one in place, and requests
-- and tunnels in flight are never cut.
local procs = require("procs")
local socket = require("socket")
local http = require("socket.http")
local ltn12 = require("ltn12")

local function via(port) return "http://127.0.0.1:" .. port end

-- How many lines of each code the log holds now.
local function codes(proc)
  local t = {}
  for _, l in ipairs(procs.log_lines(proc)) do
    if l.code then
      t[l.code] = (t[l.code] or 0) + 1
    end
  end
  return t
end

local function last_with(proc, code)
  local found
  for _, l in ipairs(procs.log_lines(proc)) do
    if l.code == code then found = l end
  end
  return found
end

-- One GET through the proxy with LuaSocket; returns the status.
local function get(proxy_port, url)
  local body = {}
  local _, status = http.request {
    url = url, proxy = via(proxy_port), sink = ltn12.sink.table(body),
    create = function()
      local s = socket.tcp()
      s:settimeout(5)
      return s
    end,
  }
  return status, table.concat(body)
end

describe("reload", function()
  local origin, s1, s2, ferry, cfg_path
  local O, S1, S2 = procs.free_port(), procs.free_port(), procs.free_port()
  local F, F2 = procs.free_port(), procs.free_port()
  local base = "http://127.0.0.1:" .. O

  local function config(extra)
    return string.format([[
listen { name = "main", addr = "127.0.0.1:%d" }
pool "p" { strategy = "round_robin", proxies = {
  { url = "socks5://127.0.0.1:%d", id = "one" }, { url = "socks5://127.0.0.1:%d", id = "two" } } }
route(function(req) return "p" end)
]], F, S1, S2) .. (extra or "")
  end

  local function reload_with(text)
    procs.write_file(cfg_path, text)
    local before = codes(ferry)
    procs.signal(ferry, "HUP")
    -- A runaway reload runs to its bound first (slower under ASAN).
    local deadline = socket.gettime() + (procs.asan and 60 or 20)
    repeat
      local now = codes(ferry)
      if (now["FERRY-0101"] or 0) > (before["FERRY-0101"] or 0) then return "ok" end
      if (now["FERRY-0102"] or 0) > (before["FERRY-0102"] or 0) then return "failed" end
      procs.sleep(0.02)
    until socket.gettime() > deadline
    return "timeout"
  end

  setup(function()
    origin = procs.origin(O)
    s1 = procs.microsocks(S1)
    s2 = procs.microsocks(S2)
    ferry = procs.ferry(config(), { F })
    cfg_path = ferry.config
  end)

  teardown(function()
    procs.stop_ferry(ferry)
    for _, p in ipairs { origin, s1, s2 } do procs.stop(p) end
  end)

  it("reloads a good config and says so", function()
    assert.equal("ok", reload_with(config()))
    assert.equal(200, (get(F, base .. "/")))
  end)

  it("keeps the running config when the new one has a syntax error, naming file:line", function()
    assert.equal("failed", reload_with(config() .. "pool \"x\" {{{\n"))
    local l = last_with(ferry, "FERRY-0102")
    assert.matches(cfg_path:gsub("%p", "%%%0") .. ":%d+:", l.msg)
    assert.equal(200, (get(F, base .. "/")))
  end)

  it("keeps the running config when a plugin file is missing", function()
    local text = config():gsub('strategy = "round_robin"', 'strategy = "no_such_strategy"')
    assert.equal("failed", reload_with(text))
    assert.matches('unknown strategy "no_such_strategy"', last_with(ferry, "FERRY-0102").msg)
    assert.equal(200, (get(F, base .. "/")))
  end)

  it("keeps the running config when an exchange script is broken", function()
    local script = procs.write_file(procs.tmp .. "/broken-ex-" .. F .. ".lua", "return {\n")
    local text = config(string.format(
      'exchange "e" { hosts = { "example.invalid" }, pool = "p", script = "%s" }\n', script))
    assert.equal("failed", reload_with(text))
    assert.matches("broken%-ex", last_with(ferry, "FERRY-0102").msg)
    assert.equal(200, (get(F, base .. "/")))
  end)

  -- A reload whose Lua runs away is refused with a coded error naming
  -- the bound; the running config goes on serving.
  local function refused(text, pattern)
    assert.equal("failed", reload_with(text))
    local msg = last_with(ferry, "FERRY-0102").msg
    assert.matches(pattern, msg)
    assert.equal(200, (get(F, base .. "/")))
    return msg
  end

  it("refuses a config that loops forever, naming its line", function()
    local msg = refused(config("local n = 0\nwhile true do n = n + 1 end\n"),
      "budget of %d+ instructions.*FERRY%-4011")
    assert.matches(cfg_path:gsub("%p", "%%%0") .. ":6: ", msg)
    -- A loop that catches the budget's error with pcall is stopped too.
    refused(config("while true do pcall(function() while true do end end) end\n"), "FERRY%-4011")
  end)

  it("refuses a plugin whose init or file loops, and an exchange script that loops", function()
    local dir = procs.tmp .. "/spin-plugins-" .. F
    os.execute("mkdir -p " .. procs.quote(dir .. "/strategies"))
    procs.write_file(dir .. "/strategies/spin_init.lua", [[
return { name = "spin_init", version = "1", select = function() return nil end,
  init = function() while true do end end }
]])
    procs.write_file(dir .. "/strategies/spin_file.lua", "while true do end\n")
    local plug = string.format("plugins { %q }\n", dir)
    refused(plug .. config():gsub('"round_robin"', '"spin_init"'), 'spin_init.*FERRY%-4011')
    refused(plug .. config():gsub('"round_robin"', '"spin_file"'), 'spin_file%.lua.*FERRY%-4011')
    local script = procs.write_file(dir .. "/spin-ex.lua", "local t = {}\nwhile true do end\n")
    refused(config(string.format(
      'exchange "e" { hosts = { "example.invalid" }, pool = "p", script = "%s" }\n', script)),
      "spin%-ex%.lua:2: .*FERRY%-4011")
  end)

  it("refuses a config that allocates without bound: one huge string, tables, copying", function()
    refused(config('local s = string.rep("x", 2^30)\n'), "budget of %d+ MiB of memory.*FERRY%-4012")
    refused(config("local t = {}\nfor i = 1, 1e9 do t[i] = { i } end\n"), "FERRY%-4012")
    refused(config('local s = ""\nfor i = 1, 1e6 do s = s .. string.rep("x", 1000) end\n'),
      "budget of %d+ MiB allocated.*FERRY%-4013")
    -- and then a good config is taken as before
    assert.equal("ok", reload_with(config()))
    assert.equal(200, (get(F, base .. "/")))
  end)

  it("keeps the running config when a new listener cannot bind", function()
    local busy = assert(socket.bind("127.0.0.1", F2))
    local text = config(string.format('listen { name = "extra", addr = "127.0.0.1:%d" }\n', F2))
    assert.equal("failed", reload_with(text))
    busy:close()
    assert.equal(200, (get(F, base .. "/")))
  end)

  it("opens listeners added by a reload and closes removed ones", function()
    local text = config(string.format('listen { name = "extra", addr = "127.0.0.1:%d" }\n', F2))
    assert.equal("ok", reload_with(text))
    assert.equal(200, (get(F2, base .. "/")))
    assert.equal("ok", reload_with(config()))
    local c = socket.tcp()
    c:settimeout(1)
    assert.is_nil(c:connect("127.0.0.1", F2))
    c:close()
    assert.equal(200, (get(F, base .. "/")))
  end)

  it("a route naming a pool that a reload removed gets a coded 503, others go on", function()
    local text = string.format([[
listen { name = "main", addr = "127.0.0.1:%d" }
pool "q" { proxies = { { url = "socks5://127.0.0.1:%d", id = "one" } } }
route(function(req) if req.path == "/" then return "p" end return "q" end)
]], F, S1)
    assert.equal("ok", reload_with(text))
    assert.equal(503, (get(F, base .. "/")))
    assert.matches('no pool "p"', last_with(ferry, "FERRY-4004").msg)
    assert.equal(200, (get(F, base .. "/bytes/3")))
    assert.equal("ok", reload_with(config()))
  end)

  it("loses no request while reloading many times under concurrent client loops", function()
    local alt = config():gsub('strategy = "round_robin"', 'strategy = "random"')
    -- Client loops in the background, each a bounded shell loop of curl
    -- writing one status a line, until the stop file appears.  One asks
    -- for /slow/0.2, so some request is nearly always in flight at a HUP.
    local tag = procs.tmp .. "/reload-loop-" .. F .. "-" .. math.random(1, 1e9)
    local script = procs.write_file(tag .. ".sh", [=[
proxy=$1 url=$2 stop=$3 out=$4
end_at=$(( $(date +%s) + 60 ))
i=0
while [ ! -e "$stop" ] && [ "$i" -lt 5000 ] && [ "$(date +%s)" -lt "$end_at" ]; do
  code=$(curl -s -o /dev/null --max-time 5 -w '%{http_code}' -x "$proxy" "$url")
  echo "$code" >> "$out"
  i=$((i + 1))
done
]=])
    local stop = tag .. ".stop"
    local clients = {}
    for i, path in ipairs { "/", "/bytes/2000", "/slow/0.2" } do
      local out = tag .. "-" .. i .. ".out"
      clients[i] = { out = out, path = path, proc = procs.spawn("reload-client",
        "sh " .. procs.quote(script) .. " " .. procs.quote(via(F)) .. " " ..
        procs.quote(base .. path) .. " " .. procs.quote(stop) .. " " .. procs.quote(out)) }
    end
    local function statuses(c)
      local t = {}
      for line in procs.read_file(c.out):gmatch("[^\n]+") do t[#t + 1] = line end
      return t
    end
    -- Every loop has finished one more request than `seen` (polled, 10 s).
    local function progress(seen)
      local deadline = socket.gettime() + 10
      repeat
        local all = true
        for i, c in ipairs(clients) do
          if #statuses(c) <= (seen[i] or 0) then all = false end
        end
        if all then break end
        procs.sleep(0.01)
      until socket.gettime() > deadline
      local now = {}
      for i, c in ipairs(clients) do
        now[i] = #statuses(c)
        assert.is_true(now[i] > (seen[i] or 0), c.path .. ": no request completed")
      end
      return now
    end

    local ok, err = pcall(function()
      local seen = progress({})
      local base_ok = codes(ferry)["FERRY-0101"] or 0
      local base_failed = codes(ferry)["FERRY-0102"] or 0
      for round = 1, 20 do
        procs.write_file(cfg_path, round % 2 == 0 and config() or alt)
        procs.signal(ferry, "HUP")
        local deadline = socket.gettime() + 10
        while (codes(ferry)["FERRY-0101"] or 0) < base_ok + round and socket.gettime() < deadline do
          procs.sleep(0.01)
        end
        assert.equal(base_ok + round, codes(ferry)["FERRY-0101"] or 0, "reload " .. round)
        -- Traffic goes on between two reloads.
        seen = progress(seen)
      end
      assert.equal(base_failed, codes(ferry)["FERRY-0102"] or 0)
    end)
    procs.write_file(stop, "")
    for _, c in ipairs(clients) do
      local deadline = socket.gettime() + 10
      while procs.alive(c.proc) and socket.gettime() < deadline do procs.sleep(0.02) end
      procs.stop(c.proc)
    end
    assert(ok, err)

    local total, failures = 0, {}
    for _, c in ipairs(clients) do
      local st = statuses(c)
      assert.is_true(#st >= 21, c.path .. ": only " .. #st .. " requests")
      for _, code in ipairs(st) do
        total = total + 1
        if code ~= "200" then failures[#failures + 1] = c.path .. " " .. code end
      end
      os.remove(c.out)
    end
    os.remove(script) os.remove(stop)
    assert.equal(0, #failures, table.concat(failures, ", "))
    assert.is_true(total >= 63, total .. " requests")
  end)

  it("never cuts a tunnel in flight, even when its proxy leaves the config", function()
    local c = socket.tcp()
    c:settimeout(5)
    assert(c:connect("127.0.0.1", F))
    c:send("CONNECT 127.0.0.1:" .. O .. " HTTP/1.1\r\nHost: x\r\n\r\n")
    local line = c:receive("*l")
    assert.matches("^HTTP/1.1 200", line)
    repeat line = c:receive("*l") until line == ""
    -- Both proxies replaced: the tunnel's proxy is gone from the config.
    local text = string.format([[
listen { name = "main", addr = "127.0.0.1:%d" }
pool "p" { proxies = { { url = "socks5://127.0.0.1:%d", id = "three" } } }
route(function(req) return "p" end)
]], F, S2)
    for _ = 1, 3 do assert.equal("ok", reload_with(text)) end
    c:send("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    local status = c:receive("*l")
    assert.matches("^HTTP/1.1 200", status)
    c:close()
    assert.equal("ok", reload_with(config()))
  end)

  it("keeps health across reloads: a proxy marked down stays down", function()
    local dead = procs.free_port()
    local text = string.format([[
listen { name = "main", addr = "127.0.0.1:%d" }
pool "p" { strategy = "round_robin", proxies = {
  { url = "socks5://127.0.0.1:%d", id = "one" }, { url = "socks5://127.0.0.1:%d", id = "dead" } } }
route(function(req) return "p" end)
]], F, S1, dead)
    assert.equal("ok", reload_with(text))
    for _ = 1, 4 do assert.equal(200, (get(F, base .. "/"))) end
    local deadline = socket.gettime() + 5
    while (codes(ferry)["FERRY-6001"] or 0) < 1 and socket.gettime() < deadline do
      procs.sleep(0.02)
    end
    local downs = codes(ferry)["FERRY-6001"] or 0
    assert.is_true(downs >= 1)
    assert.equal("ok", reload_with(text .. "-- touched\n"))
    for _ = 1, 6 do assert.equal(200, (get(F, base .. "/"))) end
    -- Had the reload forgotten the health, the dead proxy would be tried
    -- (and marked down) again.
    assert.equal(downs, codes(ferry)["FERRY-6001"] or 0)
    assert.equal("ok", reload_with(config()))
  end)
end)
