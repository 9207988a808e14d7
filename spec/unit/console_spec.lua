-- lua/ferry/console.lua: eval() of console lines against a running
-- config built by the real apply.lua around C proxies of
-- build/libferry.so (no listeners, no store): expressions and
-- statements, aligned tables, bounded lists and output, errors that
-- leave the session usable, a runaway line stopped by a budget hook
-- like the core's, credentials never printed, and the inventory
-- changes (memory only without a store).
local ffi = require("ffi")
require("ferry.cdef")
pcall(ffi.cdef, [[
struct ev_loop;
struct ev_loop *ev_loop_new(unsigned int flags);
void ev_loop_destroy(struct ev_loop *loop);
extern struct ev_loop *loop;
void log_init(int fd);
int open(const char *path, int flags, int mode);
]])
local core = ffi.load("./build/libferry.so", true)
-- ferry_now() reads the core's loop.  A loop of our own, dropped at the
-- end: a spec after this one that creates the default loop gets a fresh
-- clock (a libev loop's time moves only when someone looks).
local own_loop
if core.loop == nil then
  own_loop = core.ev_loop_new(0)
  core.loop = own_loop
end
core.log_init(ffi.C.open("/dev/null", 1, 0)) -- O_WRONLY: log lines go nowhere
-- After every spec of this file: give the core's loop back.
teardown(function()
  if own_loop then
    core.loop = nil
    core.ev_loop_destroy(own_loop)
    own_loop = nil
  end
end)

local config = require("ferry.config")
local apply = require("ferry.apply")
local inventory = require("ferry.inventory")
local console = require("ferry.console")
local budget = require("ferry.budget")

local C = ffi.C

local PASSWORD = "pw-Zq81x"
local serial = 0

-- A runtime (what console.eval sees as rt) running the config text.
local function runtime(text)
  serial = serial + 1
  local cfg = assert(config.load_string(text, "console-" .. serial .. ".lua"))
  cfg.listeners = {} -- nothing binds in a unit spec
  local rt, cur = {}, nil -- luacheck: ignore 311
  inventory._reset()
  inventory.merge(cfg)
  local prep = assert(apply.prepare(cfg, "."))
  cur = assert(apply.commit(prep, nil))
  cur.prep = prep
  inventory.committed(cur)
  function rt.active() return cur end
  function rt.recommit()
    inventory.merge(prep.cfg)
    local run, err = apply.commit(prep, cur)
    if not run then return nil, err end
    run.prep = prep
    cur = run
    inventory.committed(run)
    return true
  end
  function rt.reload_now() return true end
  return rt
end

-- Ports make the proxies' keys unique across specs (the C table is global).
local port = 40000

local function proxies(n, auth)
  local t = {}
  for i = 1, n do
    port = port + 1
    t[i] = auth and string.format('"http://user:%s@127.0.0.1:%d"', PASSWORD, port)
      or string.format('"socks5://127.0.0.1:%d"', port)
  end
  return "{ " .. table.concat(t, ", ") .. " }"
end

local function two_pools()
  port = port + 1
  return runtime(string.format([[
pool "p" { strategy = "round_robin", proxies = {
  { url = "http://user:%s@127.0.0.1:%d", id = "one", region = "eu" }, %s } }
pool "q" { proxies = %s }
]], PASSWORD, port, proxies(1, true):sub(3, -3), proxies(2)))
end

local function ok_eval(line, rt)
  local ok, text = console.eval(line, rt)
  assert(ok, "eval failed: " .. tostring(text))
  return text
end

local function err_eval(line, rt)
  local ok, text = console.eval(line, rt)
  assert(not ok, "eval should have failed, printed: " .. tostring(text))
  return text
end

local function lines(text)
  local t = {}
  for l in text:gmatch("([^\n]*)\n") do t[#t + 1] = l end
  return t
end

describe("console eval", function()
  local rt
  before_each(function()
    console._reset()
    rt = two_pools()
  end)

  it("evaluates expressions, several values, nil, and statements", function()
    assert.equal("2\n", ok_eval("1 + 1", rt))
    assert.equal("1\ttwo\n", ok_eval("1, 'two'", rt))
    assert.equal("nil\n", ok_eval("nil", rt))
    assert.equal("", ok_eval("local x = 1", rt))
    assert.equal("", ok_eval("   ", rt))
    assert.equal("a\tb\n3\n", ok_eval("print('a', 'b') print(1 + 2)", rt))
    assert.equal("1\n", ok_eval("1 -- a comment", rt))
  end)

  it("prints plain tables as Lua, sorted and bounded", function()
    assert.equal('{ 1, 2, a = "x", b = { c = true } }\n', ok_eval("{ 1, 2, b = { c = true }, a = 'x' }", rt))
    local t = ok_eval("local t = {} for i = 1, 500 do t[i] = i end return t", rt)
    assert.matches("%.%.%. }\n$", t)
    assert.is_true(#t < 1000)
    assert.equal("{ self = <cycle> }\n", ok_eval("local t = {} t.self = t return t", rt))
  end)

  it("keeps variables between lines, protects the commands, and forgets on reset()", function()
    ok_eval("x = 41", rt)
    assert.equal("42\n", ok_eval("x + 1", rt))
    ok_eval("function twice(n) return 2 * n end", rt)
    assert.equal("84\n", ok_eval("twice(42)", rt))
    assert.matches('"proxy" is a console command', err_eval("proxy = 1", rt))
    assert.matches("proxy.list", ok_eval("help()", rt))
    assert.equal("forgot 2 variables\n", ok_eval("reset()", rt))
    assert.equal("nil\n", ok_eval("x", rt))
  end)

  it("bounds the number of variables", function()
    local t = {}
    for i = 1, console.MAX_VARS + 1 do t[i] = "v" .. i .. " = " .. i end
    assert.matches("at most " .. console.MAX_VARS .. " variables", err_eval(table.concat(t, " "), rt))
    assert.equal(tostring(console.MAX_VARS) .. "\n", ok_eval("v" .. console.MAX_VARS, rt))
    ok_eval("v1 = nil", rt)
    assert.equal("", ok_eval("w = 1", rt))
  end)

  it("offers no way out of the sandbox", function()
    for _, name in ipairs { "os", "io", "require", "load", "loadstring", "dofile", "debug",
                            "jit", "ffi", "setmetatable", "getmetatable", "rawset", "_G",
                            "collectgarbage", "setfenv", "getfenv", "module", "package" } do
      assert.equal("nil\n", ok_eval(name, rt), name)
    end
    assert.equal("nil\n", ok_eval("string.dump", rt))
    assert.equal("nil\n", ok_eval("math.randomseed", rt))
  end)

  it("reports a line that does not parse, and the next line still works", function()
    local msg = err_eval("proxy.list(", rt)
    assert.matches("^console:1: ", msg)
    assert.equal("3\n", ok_eval("1 + 2", rt))
  end)

  it("reports a line that raises, with what it printed before", function()
    assert.equal("console:1: boom", err_eval("error('boom')", rt))
    assert.equal("before\nconsole:1: boom", err_eval("print('before') error('boom')", rt))
    assert.matches("attempt to call", err_eval("nope()", rt))
    assert.equal("3\n", ok_eval("1 + 2", rt))
  end)

  it("rejects non-strings and overlong lines", function()
    assert.is_false((console.eval(nil, rt)))
    assert.matches("line too long", err_eval(string.rep("1", console.MAX_LINE + 1), rt))
  end)

  it("caps string.rep, also as a method of strings, and restores the string library", function()
    assert.matches("string.rep", err_eval("string.rep('x', 1e9)", rt))
    assert.matches("string.rep", err_eval("('x'):rep(1e9)", rt))
    assert.equal("xxx\n", ok_eval("('x'):rep(3)", rt))
    assert.equal(2000000, #(("x"):rep(2000000)))
  end)

  it("stops output at MAX_OUTPUT bytes", function()
    local text = ok_eval("for i = 1, 1e5 do print(string.rep('y', 100)) end", rt)
    assert.is_true(#text <= console.MAX_OUTPUT + 200)
    assert.matches("output truncated", text)
  end)

  it("masks URL credentials anywhere in output and errors", function()
    local msg = err_eval('proxy.add("p" "http://user:' .. PASSWORD .. '@127.0.0.1:1")', rt)
    assert.is_nil(msg:find(PASSWORD, 1, true))
    assert.matches("http://%*%*%*@127.0.0.1:1", msg)
    assert.equal("see socks5://***@h:1 now\n", console.mask("see socks5://a:b@h:1 now") .. "\n")
  end)
end)

describe("console runaway lines", function()
  -- What core/bridge.c does: a count hook that raises the budget error.
  local function with_budget(steps, fn)
    local n = 0
    debug.sethook(function()
      n = n + 1
      if n > steps then
        n = 0
        error("script exceeded its budget of " .. steps * 1000 .. " instructions (runaway loop?)")
      end
    end, "", 1000)
    local ok, a, b = pcall(fn)
    debug.sethook()
    assert(ok, a)
    return a, b
  end

  it("comes back as an error, not a hang, even through the console's pcall", function()
    local rt = two_pools()
    local ok, msg = with_budget(20000, function() return console.eval("while true do end", rt) end)
    assert.is_false(ok)
    assert.matches(budget.MARK, msg, 1, true)
    ok, msg = with_budget(20000, function()
      return console.eval("while true do pcall(function() while true do end end) end", rt)
    end)
    assert.is_false(ok)
    assert.matches(budget.MARK, msg, 1, true)
    ok, msg = with_budget(20000, function()
      return console.eval("function spin() while true do end end", rt)
    end)
    assert.is_true(ok, msg)
    ok, msg = with_budget(20000, function() return console.eval("spin()", rt) end)
    assert.is_false(ok)
    assert.matches(budget.MARK, msg, 1, true)
    assert.equal("2\n", ok_eval("1 + 1", rt))
    assert.equal("xx", ("x"):rep(2))
  end)

  it("gives a line no Lua patterns, which could backtrack in C beyond the budget", function()
    local rt = two_pools()
    -- Exponential as a pattern; as plain text it is simply not found (the
    -- nil is the proof: as a pattern it would match the 40 a's).
    assert.equal("nil\n", ok_eval('("a"):rep(40):find(("a?"):rep(40) .. ("a"):rep(40))', rt))
    assert.equal("2\t2\n", ok_eval('("x.y"):find(".", 1)', rt))
    -- Called directly: an error; through pcall: pcall's false and the message.
    for _, line in ipairs { 'string.match("ab", "a")', '("ab"):gsub("a", "b")' } do
      assert.matches("patterns are not available", err_eval(line, rt))
    end
    for _, line in ipairs { 'pcall(string.gmatch, "ab", ".")', 'pcall(string.match, "a", "a")' } do
      assert.matches("^false\t.*patterns are not available", ok_eval(line, rt))
    end
    -- The console's own formatting still uses patterns behind the line.
    assert.matches("one", ok_eval('proxy.list("p")', rt))
  end)
end)

describe("console commands", function()
  local rt
  before_each(function()
    console._reset()
    rt = two_pools()
  end)

  it("proxy.list() prints an aligned table with a header row", function()
    local t = lines(ok_eval("proxy.list()", rt))
    assert.equal(5, #t)
    assert.matches("^ID%s+NAME%s+POOL%s+URL", t[1])
    -- Every row starts its URL column where the header's URL starts.
    local at = t[1]:find("URL", 1, true)
    for i = 2, 5 do
      assert.matches("^%a+5?://", t[i]:sub(at))
    end
    assert.matches("one%s+p%s+http://%*%*%*@127%.0%.0%.1:%d+%s+eu", t[2])
    assert.matches("%s+q%s+socks5://127%.0%.0%.1:%d+", t[5])
  end)

  it("never prints a password", function()
    for _, line in ipairs { "proxy.list()", "proxy.list('p')", "proxy.health()",
                            "proxy.health('one')", "pool.list()", "pool.stats('p')",
                            "stats()", "exchange.list()", "proxy.list()[1]",
                            "proxy.disable('one')", "proxy.enable('one')" } do
      local ok, text = console.eval(line, rt)
      assert.is_true(ok, text)
      assert.is_nil(text:find(PASSWORD, 1, true), line)
      assert.is_nil(text:find("user:", 1, true), line)
    end
  end)

  it("returns data a line can use", function()
    assert.equal("4\n", ok_eval("#proxy.list()", rt))
    assert.equal("one\n", ok_eval("proxy.list('p')[1].name", rt))
    assert.equal("2\n", ok_eval("pool.stats('q').proxies", rt))
  end)

  it("bounds a list at MAX_ROWS rows and says how many are left out", function()
    local big = runtime(string.format('pool "big" { proxies = %s }', proxies(250)))
    local t = lines(ok_eval("proxy.list()", big))
    assert.equal(1 + console.MAX_ROWS + 1, #t)
    assert.equal('... 50 more; use proxy.list("pool")', t[#t])
    t = lines(ok_eval("proxy.list('big')", big))
    assert.matches("^%.%.%. 50 more; ", t[#t])
    assert.equal("250\n", ok_eval("#proxy.list()", big))
  end)

  it("names an unknown pool, exchange or proxy, and the session goes on", function()
    assert.equal('no pool or exchange "nope" (pool.list() and exchange.list() show them)',
      err_eval("proxy.list('nope')", rt))
    assert.matches('^no pool "nope"', err_eval("pool.stats('nope')", rt))
    assert.matches('^no proxy "99999"', err_eval("proxy.health(99999)", rt))
    assert.matches('^no proxy "ghost"', err_eval("proxy.disable('ghost')", rt))
    assert.matches("expected a pool name", err_eval("pool.stats(1)", rt))
    assert.equal("4\n", ok_eval("#proxy.list()", rt))
  end)

  it("shows one proxy's health in detail", function()
    local text = ok_eval("proxy.health('one')", rt)
    assert.matches("\nname%s+one\n", text)
    assert.matches("\nstate%s+up\n", text)
    assert.matches("\nhealth %(counter/max%)%s+4/4\n", text)
  end)

  it("disables and enables a proxy: the core's flag, memory only without a store", function()
    local text = ok_eval("proxy.disable('one')", rt)
    assert.matches("^disabled proxy %d+ %(http://%*%*%*@127%.0%.0%.1:%d+%); no store configured: " ..
      "the change lives in memory only", text)
    local cid = rt.active().pools.p.proxies[1].id
    local c = C.ferry_proxy_get(cid)
    assert.equal(2, bit.band(c.flags, 2))
    assert.matches("one%s+p%s+%S+%s+eu%s+1%s+disabled", ok_eval("proxy.list('p')", rt))
    assert.matches("already was disabled", ok_eval("proxy.disable(" .. cid .. ")", rt))
    -- The overlay remembers it: rebuilding the pools (reload) keeps it off.
    assert(rt.recommit())
    assert.equal(2, bit.band(c.flags, 2))
    ok_eval("proxy.enable('one')", rt)
    assert.equal(0, bit.band(c.flags, 2))
  end)

  it("adds a proxy to a pool and removes it again", function()
    port = port + 1
    local text = ok_eval(string.format(
      'proxy.add("q", "socks5://u:%s@127.0.0.1:%d", { id = "added", weight = 3, region = "us" })',
      PASSWORD, port), rt)
    assert.matches('^added proxy %d+ %(socks5://%*%*%*@127%.0%.0%.1:%d+%) to pool "q"; no store', text)
    assert.is_nil(text:find(PASSWORD, 1, true))
    assert.equal(3, #rt.active().pools.q.proxies)
    assert.matches("added%s+q%s+socks5://%*%*%*@%S+%s+us%s+3%s+up.*runtime",
      ok_eval("proxy.list('q')", rt))
    assert.matches('already in the inventory', err_eval(string.format(
      'proxy.add("q", "socks5://127.0.0.1:1", { id = "added" })'), rt))
    assert.matches('unsupported scheme "ftp"', err_eval('proxy.add("q", "ftp://127.0.0.1:1")', rt))
    assert.matches('unknown field "colour"',
      err_eval('proxy.add("q", "socks5://127.0.0.1:1", { colour = 1 })', rt))
    assert.matches('^no pool "zz"', err_eval('proxy.add("zz", "socks5://127.0.0.1:1")', rt))
    assert.matches("declared in the config file", err_eval("proxy.remove('one')", rt))
    assert.matches('^removed proxy %d+ %(socks5://%*%*%*@', ok_eval("proxy.remove('added')", rt))
    assert.equal(2, #rt.active().pools.q.proxies)
    assert.matches('^no proxy "added"', err_eval("proxy.remove('added')", rt))
  end)

  it("bounds the changes one line makes", function()
    local msg = err_eval("for i = 1, " .. (console.MAX_CHANGES + 1) ..
      " do proxy.disable('one') end", rt)
    assert.matches("at most " .. console.MAX_CHANGES .. " inventory changes", msg)
    assert.matches("^enabled", ok_eval("proxy.enable('one')", rt)) -- a new line, a new count
  end)

  it("runs pool.list, pool.stats, exchange.list, stats, reload and help", function()
    assert.matches("^NAME%s+STRATEGY%s+PROXIES", ok_eval("pool.list()", rt))
    assert.matches("p%s+round_robin%s+2%s+2", ok_eval("pool.list()", rt))
    assert.matches("^pool%s+q\nstrategy%s+health_score\n", ok_eval("pool.stats('q')", rt))
    assert.matches("lowest scores:", ok_eval("pool.stats('q')", rt))
    assert.equal("(no exchanges)", lines(ok_eval("exchange.list()", rt))[2])
    assert.matches("\nproxies%s+4\n", ok_eval("stats()", rt))
    assert.matches("store%s+none", ok_eval("stats()", rt))
    assert.matches("^reloaded ", ok_eval("reload()", rt))
    for _, cmd in ipairs { "proxy.list", "proxy.health", "proxy.add", "proxy.remove",
                           "proxy.enable", "proxy.disable", "pool.list", "pool.stats",
                           "exchange.list", "reload", "stats", "help" } do
      assert.is_truthy(ok_eval("help()", rt):find(cmd .. "(", 1, true), cmd)
    end
  end)

  it("without a running config, says so", function()
    local none = { active = function() return nil end }
    assert.equal("no config is running", err_eval("proxy.list()", none))
    assert.equal("2\n", ok_eval("1 + 1", none))
  end)
end)
