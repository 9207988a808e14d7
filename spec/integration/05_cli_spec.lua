-- The command line and signals: check, version, usage errors, and a
-- SIGTERM that lets the request in flight finish before exiting 0.
local procs = require("procs")

local function run(args, env)
  local out = procs.tmp .. "/cli-" .. math.random(1, 1e9)
  local ok, _, code = os.execute((env and (env .. " ") or "") .. procs.quote(procs.bin) .. " " ..
    args .. " >" .. out .. " 2>&1")
  local text = procs.read_file(out)
  os.remove(out)
  if type(ok) == "number" then code = ok / 256 end -- LuaJIT returns the raw status
  return code, text
end

describe("ferry CLI", function()
  it("check accepts a valid config with exit 0", function()
    local code, out = run("check -c examples/quickstart.lua")
    assert.equal(0, code)
    assert.matches("quickstart%.lua: ok", out)
  end)

  it("check rejects a broken config with exit 1 and file:line", function()
    local cfg = procs.write_file(procs.tmp .. "/broken-" .. math.random(1, 1e9) .. ".lua",
      'listen { addr = "127.0.0.1:1" }\npool "p" { strategy = "fastest", proxies = { "http://h:1" } }\n')
    local code, out = run("check -c " .. cfg)
    assert.equal(1, code)
    assert.matches(cfg:gsub("%p", "%%%0") .. ':2: pool "p": unknown strategy "fastest"', out)
    local code2, out2 = run("check -c /nonexistent.lua")
    assert.equal(1, code2)
    assert.matches("/nonexistent%.lua", out2)
  end)

  it("check opens no socket", function()
    local port = procs.free_port()
    local cfg = procs.write_file(procs.tmp .. "/nobind-" .. port .. ".lua",
      string.format('listen { addr = "127.0.0.1:%d" }\n', port))
    assert.equal(0, (run("check -c " .. cfg)))
    assert.is_false(procs.wait_port(port, 0.2))
  end)

  local function cfg_file(name, text)
    return procs.write_file(string.format("%s/%s-%d.lua", procs.tmp, name, math.random(1, 1e9)),
      text)
  end
  local function lit(path) return (path:gsub("%p", "%%%0")) end

  it("check stops a config whose Lua runs away, with file:line and a code", function()
    local cfg = cfg_file("spin", 'listen { addr = "127.0.0.1:1" }\nwhile true do end\n')
    local code, out = run("check -c " .. cfg)
    assert.equal(1, code)
    assert.matches("^" .. lit(cfg) .. ":2: script exceeded its budget of 200000000 instructions " ..
      "%(runaway loop%?%) %[FERRY%-4011%]\n$", out)
    cfg = cfg_file("huge", 'local s = string.rep("x", 2^30)\n')
    code, out = run("check -c " .. cfg)
    assert.equal(1, code)
    assert.matches("^" .. lit(cfg) .. ": script exceeded its budget of 256 MiB of memory", out)
    -- The bounds are the operator's: FERRY_LOAD_INSTRUCTIONS, FERRY_LOAD_MEMORY_MB.
    cfg = cfg_file("busy", "local n = 0\nfor i = 1, 3e6 do n = n + i end\n")
    assert.equal(0, (run("check -c " .. cfg)))
    code, out = run("check -c " .. cfg, "FERRY_LOAD_INSTRUCTIONS=1000000")
    assert.equal(1, code)
    assert.matches("budget of 1000000 instructions", out)
    code, out = run("check -c " .. cfg_file("rep", 'local s = string.rep("x", 2^25)\n'),
      "FERRY_LOAD_MEMORY_MB=16")
    assert.equal(1, code)
    assert.matches("budget of 16 MiB of memory %(FERRY_LOAD_MEMORY_MB%) %[FERRY%-4012%]", out)
  end)

  it("check stops a plugin whose init loops", function()
    local dir = procs.tmp .. "/cli-plugins-" .. math.random(1, 1e9)
    os.execute("mkdir -p " .. procs.quote(dir .. "/strategies"))
    procs.write_file(dir .. "/strategies/spin.lua", [[
return { name = "spin", version = "1", select = function() end,
  init = function() while true do end end }
]])
    local cfg = cfg_file("plug", string.format(
      'plugins { %q }\npool "p" { strategy = "spin", proxies = { "http://127.0.0.1:1" } }\n', dir))
    local code, out = run("check -c " .. cfg)
    assert.equal(1, code)
    assert.matches("^" .. lit(cfg) .. ':2: pool "p": strategy "spin" init failed: .*FERRY%-4011', out)
  end)

  it("check reports an error that is not a string at its line, never :0:", function()
    local cfg = cfg_file("errobj", 'listen { addr = "127.0.0.1:1" }\n\nerror({})\n')
    local code, out = run("check -c " .. cfg)
    assert.equal(1, code)
    assert.equal(cfg .. ":3: error object is not a string (table)\n", out)
    cfg = cfg_file("errnil", "local function f() error() end\nf()\n")
    code, out = run("check -c " .. cfg)
    assert.equal(1, code)
    assert.equal(cfg .. ":1: error object is not a string (nil)\n", out)
    cfg = cfg_file("errlevel0", 'error("no place", 0)\n')
    code, out = run("check -c " .. cfg)
    assert.equal(1, code)
    assert.equal(cfg .. ":1: no place\n", out)
  end)

  it("check refuses two listeners on one address, admin included", function()
    local port = procs.free_port()
    local cfg = cfg_file("twice", string.format(
      'listen { name = "a", addr = "127.0.0.1:%d" }\n' ..
      'listen { name = "b", addr = "0.0.0.0:%d", open = true }\n',
      port, port))
    local code, out = run("check -c " .. cfg)
    assert.equal(1, code)
    assert.matches("^" .. lit(cfg) .. ':2: listen "b": address 0%.0%.0%.0:' .. port ..
      ' is already used by listen "a" %(line 1%) %[FERRY%-0130%]', out)
    cfg = cfg_file("adm", string.format(
      'listen { name = "a", addr = "127.0.0.1:%d" }\nadmin { addr = "127.0.0.1:%d" }\n', port, port))
    code, out = run("check -c " .. cfg)
    assert.equal(1, code)
    assert.matches(':2: admin "admin": address 127%.0%.0%.1:' .. port .. " is already used", out)
    -- No listen: the default proxy listener is on 127.0.0.1:8080.
    code, out = run("check -c " .. cfg_file("dflt", 'admin { addr = "127.0.0.1:8080" }\n'))
    assert.equal(1, code)
    assert.matches("already used by the default proxy listener", out)
    -- ferry run refuses the same config (it cannot bind the second).
    code = run("-c " .. cfg)
    assert.equal(1, code)
  end)

  it("check refuses log and store paths ferry run could not open, creating nothing", function()
    local dir = procs.tmp .. "/cli-paths-" .. math.random(1, 1e9)
    os.execute("mkdir -p " .. procs.quote(dir))
    local function check(body)
      return run("check -c " .. cfg_file("paths", 'listen { addr = "127.0.0.1:1" }\n' .. body))
    end
    local code, out = check(string.format('log { file = "%s/missing/events.log" }\n', dir))
    assert.equal(1, code)
    assert.matches(":2: log: cannot open .*/missing/events%.log: .*No such file or directory " ..
      "%[FERRY%-0131%]", out)
    code, out = check(string.format('log { access_file = "%s" }\n', dir))
    assert.equal(1, code)
    assert.matches("is a directory", out)
    code, out = check(string.format('store { path = "%s/missing/ferry.db" }\n', dir))
    assert.equal(1, code)
    assert.matches(":2: store: cannot open .*/missing/ferry%.db: .*%[FERRY%-0132%]", out)
    local notdb = procs.write_file(dir .. "/not.db", "plain text, not SQLite\n")
    code, out = check(string.format('store { path = "%s" }\n', notdb))
    assert.equal(1, code)
    assert.matches("file is not a database", out)
    code, out = check(string.format('admin { socket = "%s" }\n', notdb))
    assert.equal(1, code)
    assert.matches(":2: admin: cannot listen on unix:.*the path exists and is not a socket " ..
      "%[FERRY%-0133%]", out)
    code, out = check(string.format('admin { socket = "%s/missing/ferry.sock" }\n', dir))
    assert.equal(1, code)
    assert.matches("FERRY%-0133", out)
    -- Openable paths pass, and check leaves no file behind.
    code, out = check(string.format('log { file = "%s/e.log", access_file = "%s/a.log" }\n' ..
      'store { path = "%s/new.db" }\nadmin { socket = "%s/new.sock" }\n', dir, dir, dir, dir))
    assert.equal(0, code, out)
    for _, f in ipairs { "e.log", "a.log", "new.db", "new.sock" } do
      assert.is_nil(io.open(dir .. "/" .. f, "r"), f .. " was created")
    end
  end)

  it("prints its version", function()
    local code, out = run("version")
    assert.equal(0, code)
    assert.matches("^ferry %d+%.%d+%.%d+", out)
  end)

  it("exits 2 on usage errors", function()
    assert.equal(2, (run("frobnicate")))
    assert.equal(2, (run("run")))
    assert.equal(2, (run("-c")))
  end)

  it("refuses to start when a listen port is taken, naming it", function()
    local port = procs.free_port()
    local cfg = string.format('listen { name = "a", addr = "127.0.0.1:%d" }\n', port)
    local first = procs.ferry(cfg, { port })
    local path = procs.write_file(procs.tmp .. "/dup-" .. port .. ".lua", cfg)
    local code, out = run("-c " .. path)
    procs.stop_ferry(first)
    assert.equal(1, code)
    assert.matches('listen "a": cannot listen on 127%.0%.0%.1:' .. port, out)
  end)
end)

describe("SIGTERM", function()
  it("stops accepting, lets the request in flight finish, and exits", function()
    local O, F = procs.free_port(), procs.free_port()
    local origin = procs.origin(O)
    local ferry = procs.ferry(string.format([[
listen { addr = "127.0.0.1:%d" }
route(function() return "direct" end)
]], F), { F })
    local out = procs.tmp .. "/slow-" .. F
    local curl = procs.spawn("curl", "curl -s -o " .. out .. " -w '%{http_code}' -x http://127.0.0.1:" ..
      F .. " http://127.0.0.1:" .. O .. "/slow/1")
    procs.sleep(0.3)
    procs.signal(ferry, "TERM")
    procs.sleep(0.2)
    assert.is_false(procs.wait_port(F, 0.2)) -- no longer accepting
    local deadline = os.time() + 10
    while procs.alive(curl) and os.time() < deadline do procs.sleep(0.05) end
    assert.equal("slow\n", procs.read_file(out))
    assert.equal("200", procs.read_file(curl.log))
    while procs.alive(ferry) and os.time() < deadline do procs.sleep(0.05) end
    assert.is_false(procs.alive(ferry))
    assert.matches("FERRY%-0005", procs.read_file(ferry.log))
    procs.stop_ferry(ferry)
    procs.stop(origin)
  end)

  -- A ferry whose Lua budgets are (nearly) unbounded, so a runaway runs
  -- until something else stops it; its admin listener answers /health.
  local function unbounded_ferry(env, extra)
    local F, A = procs.free_port(), procs.free_port()
    local sock = string.format("%s/term-%d.sock", procs.tmp, F)
    local text = string.format('listen { addr = "127.0.0.1:%d" }\n' ..
      'admin { addr = "127.0.0.1:%d", socket = "%s" }\n', F, A, sock)
    local cfg = procs.write_file(string.format("%s/term-%d.lua", procs.tmp, F), text)
    local ferry = procs.spawn("ferry", "env " .. env .. " " .. procs.quote(procs.bin) .. " -c " ..
      procs.quote(cfg))
    ferry.config, ferry.text, ferry.sock, ferry.admin = cfg, text .. (extra or ""), sock, A
    finally(function() procs.stop(ferry) end) -- also when an assertion fails first
    assert(procs.wait_port(A, procs.asan and 15 or 5), procs.read_file(ferry.log))
    return ferry
  end

  -- Wait (bounded) until the loop is busy: /health goes unanswered.
  local function wait_busy(ferry)
    return procs.wait_for(function()
      local code = procs.curl { url = "http://127.0.0.1:" .. ferry.admin .. "/health", max_time = 0.5 }
      return code == 0
    end, 15, 0.05)
  end

  local function wait_exit(ferry)
    return procs.wait_for(function() return not procs.alive(ferry) end, 15)
  end

  it("stops a reload whose Lua still runs, then drains and exits", function()
    local ferry = unbounded_ferry("FERRY_LOAD_INSTRUCTIONS=1e15")
    procs.write_file(ferry.config, ferry.text .. "while true do end\n")
    procs.signal(ferry, "HUP")
    assert.is_truthy(wait_busy(ferry), "the reload never kept the loop busy")
    procs.signal(ferry, "TERM")
    local exited = wait_exit(ferry)
    local log = procs.read_file(ferry.log)
    procs.stop_ferry(ferry)
    assert.is_truthy(exited, "SIGTERM was not honoured:\n" .. log)
    assert.matches('"FERRY%-0102"[^\n]*ferry is stopping[^\n]*FERRY%-4014', log)
    assert.matches("FERRY%-0005", log)
  end)

  it("gives a reload from the console the config load's bounds, a line the admin's", function()
    local ferry = unbounded_ferry("FERRY_ADMIN_INSTRUCTIONS=1000000")
    local function console(expr)
      local out = procs.tmp .. "/budget-console-" .. ferry.admin
      local ok, _, code = os.execute(procs.quote(procs.bin) .. " console -s " ..
        procs.quote(ferry.sock) .. " -e " .. procs.quote(expr) .. " >" .. out .. " 2>&1")
      if type(ok) == "number" then code = ok / 256 end
      local text = procs.read_file(out)
      os.remove(out)
      return code, text
    end
    -- 3 million instructions: over the admin bound set here, well under the load's.
    procs.write_file(ferry.config, ferry.text .. "local n = 0\nfor i = 1, 3e6 do n = n + i end\n")
    local code, out = console("reload()")
    assert.equal(0, code, out)
    assert.matches("^reloaded ", out)
    code, out = console("local n = 0 for i = 1, 3e6 do n = n + i end")
    assert.equal(1, code)
    assert.matches("budget of 1000000 instructions.*FERRY%-4011", out)
    procs.stop_ferry(ferry)
  end)

  it("stops a console line that still runs, then drains and exits", function()
    local ferry = unbounded_ferry("FERRY_ADMIN_INSTRUCTIONS=1e15")
    local out = procs.tmp .. "/term-console-" .. ferry.admin
    local console = procs.spawn("console", "sh -c " .. procs.quote(procs.quote(procs.bin) ..
      " console -s " .. procs.quote(ferry.sock) .. " -e 'while true do end' 2>" .. out ..
      "; echo $? >>" .. out))
    finally(function() procs.stop(console) procs.stop(ferry) end) -- replaces unbounded_ferry's
    assert.is_truthy(wait_busy(ferry), "the line never kept the loop busy")
    procs.signal(ferry, "TERM")
    local exited = wait_exit(ferry)
    procs.wait_for(function() return not procs.alive(console) end, 15)
    procs.stop(console)
    local log = procs.read_file(ferry.log)
    procs.stop_ferry(ferry)
    assert.is_truthy(exited, "SIGTERM was not honoured:\n" .. log)
    assert.matches("^error: console:1: script stopped: ferry is stopping %(SIGTERM or SIGINT%) " ..
      "%[FERRY%-4014%]\n1\n$", procs.read_file(out))
    assert.matches("FERRY%-0005", log)
  end)
end)
