-- The command line and signals: check, version, usage errors, and a
-- SIGTERM that lets the request in flight finish before exiting 0.
local procs = require("procs")

local function run(args)
  local out = procs.tmp .. "/cli-" .. math.random(1, 1e9)
  local ok, _, code = os.execute(procs.quote(procs.bin) .. " " .. args .. " >" .. out .. " 2>&1")
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
end)
