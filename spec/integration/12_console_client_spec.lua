-- `ferry console`, the client side, against a fake daemon
-- (spec/helpers/fake_console.lua: HTTP/1.1 on a unix socket with fixed
-- answers): -e, error answers, a missing socket, lines from a pipe over one
-- kept-alive connection, reconnecting, bounded waits, and an interactive
-- session on a pseudo-terminal (spec/helpers/pty_session.py) with history
-- and TAB completion.  Every command runs under `timeout`.
local procs = require("procs")

local HELPERS = procs.root .. "/spec/helpers"
-- sun_path holds 107 bytes: keep socket paths short.
local SOCK_DIR = #procs.tmp < 70 and procs.tmp or "/tmp"

local function tmpname(what)
  return string.format("%s/console-%s-%d", SOCK_DIR, what, math.random(1, 1e9))
end

local function exit_code(ok, _, code)
  if type(ok) == "number" then return ok / 256 end -- LuaJIT returns the raw status
  return code
end

-- Start a fake daemon on a fresh socket (at PATH if given, run under the
-- command PREFIX if given); waits until it listens.
local function fake(mode, path, prefix)
  path = path or (tmpname("sock") .. ".sock")
  local proc = procs.spawn("fake-console", (prefix or "") .. "luajit " .. HELPERS ..
    "/fake_console.lua " .. procs.quote(path) .. " " .. (mode or "keep"))
  proc.path = path
  local deadline = os.time() + 5
  while not procs.read_file(proc.log):find("ready") do
    assert(os.time() <= deadline and procs.alive(proc),
      "the fake daemon did not start:\n" .. procs.read_file(proc.log))
    procs.sleep(0.02)
  end
  return proc
end

-- The lines the fake daemon received, and how many connections it took.
local function seen(proc)
  local lines, conns = {}, 0
  for l in procs.read_file(proc.log):gmatch("[^\n]+") do
    local line = l:match("^line %d+: (.*)$")
    if line then lines[#lines + 1] = line end
    if l:match("^conn %d+$") then conns = conns + 1 end
  end
  return lines, conns
end

-- Run `ferry console ARGS`, stdin from INPUT (a string) or /dev/null;
-- returns the exit code, stdout and stderr.
local function console(args, input, env)
  local out, err, inp = tmpname("out"), tmpname("err"), "/dev/null"
  if input then inp = procs.write_file(tmpname("in"), input) end
  local cmd = (env or "") .. " timeout 20 " .. procs.quote(procs.bin) .. " console " .. args ..
    " <" .. inp .. " >" .. out .. " 2>" .. err
  local code = exit_code(os.execute(cmd))
  local o, e = procs.read_file(out), procs.read_file(err)
  os.remove(out) os.remove(err)
  if input then os.remove(inp) end
  return code, o, e
end

-- An interactive session on a pseudo-terminal: STEPS are "expect:TEXT"
-- and "send:TEXT" (with \t, \r, \x04 escapes); returns the exit code and
-- the transcript.  After each prompt it waits until libedit has the
-- terminal in raw mode, so no key (Ctrl-D, Ctrl-C) meets the cooked one.
local function session(sock, history, steps)
  local transcript = tmpname("pty")
  local quoted = {}
  for _, s in ipairs(steps) do
    quoted[#quoted + 1] = procs.quote(s)
    if s == "expect:ferry> " then quoted[#quoted + 1] = "raw:" end
  end
  -- (under make asan: libedit's own leak is suppressed, see the file)
  local cmd = "LSAN_OPTIONS=suppressions=" .. HELPERS .. "/lsan-libedit.supp" ..
    " FERRY_HISTORY=" .. procs.quote(history) .. " TERM=xterm timeout 30 python3 " ..
    HELPERS .. "/pty_session.py 15 " .. transcript .. " " .. table.concat(quoted, " ") ..
    " -- " .. procs.quote(procs.bin) .. " console -s " .. procs.quote(sock)
  local code = exit_code(os.execute(cmd))
  local text = procs.read_file(transcript)
  os.remove(transcript)
  return code, text
end

local function history_lines(path)
  local t = {}
  for l in procs.read_file(path):gmatch("[^\n]+") do t[#t + 1] = l end
  return t
end

describe("ferry console", function()
  local daemon

  after_each(function()
    if daemon then
      procs.stop(daemon)
      os.remove(daemon.path)
      daemon = nil
    end
  end)

  it("-e sends one line, prints the answer and exits 0", function()
    daemon = fake()
    local code, out, err = console("-s " .. procs.quote(daemon.path) .. " -e 'proxy.list()'")
    assert.equal("", err)
    assert.equal(0, code)
    assert.equal("=> proxy.list()\n", out)
    assert.same({ "proxy.list()" }, (seen(daemon)))
  end)

  it("takes the socket from FERRY_SOCKET when -s is not given", function()
    daemon = fake()
    local code, out = console("-e 'pool.list()'", nil, "FERRY_SOCKET=" .. procs.quote(daemon.path))
    assert.equal(0, code)
    assert.equal("=> pool.list()\n", out)
  end)

  it("prints an error answer's message on stderr and exits 1", function()
    daemon = fake()
    local code, out, err = console("-s " .. procs.quote(daemon.path) ..
      [[ -e 'error(no proxy "p9" in pool "binance")']])
    assert.equal(1, code)
    assert.equal("", out)
    assert.equal('error: no proxy "p9" in pool "binance"\n', err)
    -- an error status whose body is not the JSON error shape still fails clearly
    code, out, err = console("-s " .. procs.quote(daemon.path) .. " -e 'status(500)'")
    assert.equal(1, code)
    assert.equal("", out)
    assert.matches("^error: the daemon answered 500: not json\n$", err)
  end)

  it("exits 2 naming the socket when it cannot connect", function()
    local path = tmpname("missing") .. ".sock"
    local code, out, err = console("-s " .. procs.quote(path) .. " -e 'help()'")
    assert.equal(2, code)
    assert.equal("", out)
    assert.equal("ferry console: cannot connect to " .. path .. ": No such file or directory\n", err)
    local code2, _, err2 = console("-e 'help()'", nil, "FERRY_SOCKET=" .. procs.quote(path))
    assert.equal(2, code2)
    assert.matches("cannot connect to " .. path:gsub("%p", "%%%0"), err2)
  end)

  it("exits 2 on usage errors", function()
    assert.equal(2, (console("-s")))
    assert.equal(2, (console("--frobnicate")))
    assert.equal(2, (console("-e")))
  end)

  it("evaluates lines from a pipe over one kept-alive connection; errors do not stop it", function()
    daemon = fake()
    local code, out, err = console("-s " .. procs.quote(daemon.path),
      'proxy.list()\n\n  proxy.health()  \nerror(bad line)\npool.stats("binance")\nexit\nreload()\n')
    assert.equal(1, code) -- one line was refused
    assert.equal('=> proxy.list()\n=> proxy.health()\n=> pool.stats("binance")\n', out)
    assert.equal("error: bad line\n", err)
    local lines, conns = seen(daemon)
    assert.same({ "proxy.list()", "proxy.health()", "error(bad line)", 'pool.stats("binance")' }, lines)
    assert.equal(1, conns)
  end)

  it("reconnects when the daemon closed the kept-alive connection", function()
    daemon = fake("close") -- closes after each answer, without a Connection: close
    local code, out = console("-s " .. procs.quote(daemon.path), "a()\nb()\nc()\n")
    assert.equal(0, code)
    assert.equal("=> a()\n=> b()\n=> c()\n", out)
    local lines, conns = seen(daemon)
    assert.same({ "a()", "b()", "c()" }, lines)
    assert.equal(3, conns)
  end)

  it("sends a line again, once, when the daemon closed without answering it", function()
    daemon = fake("drop") -- answers one request per connection, drops the second
    local code, out = console("-s " .. procs.quote(daemon.path), "a()\nb()\nc()\n")
    assert.equal(0, code)
    assert.equal("=> a()\n=> b()\n=> c()\n", out)
    assert.same({ "a()", "b()", "b()", "c()", "c()" }, (seen(daemon)))
  end)

  it("bounds the wait for an answer", function()
    daemon = fake()
    local t0 = os.time()
    local code, out, err = console("-s " .. procs.quote(daemon.path) .. " -e 'sleep(5)'", nil,
      "FERRY_CONSOLE_TIMEOUT=0.5")
    assert.equal(2, code)
    assert.equal("", out)
    assert.matches("no answer within 0%.5 s", err)
    assert.is_true(os.time() - t0 <= 3)
  end)

  it("reads chunked answers and refuses what is not HTTP", function()
    daemon = fake()
    local code, out = console("-s " .. procs.quote(daemon.path) .. " -e 'chunked(hello console)'")
    assert.equal(0, code)
    assert.equal("hello console\n", out)
    local code2, out2, err2 = console("-s " .. procs.quote(daemon.path) .. " -e garbage")
    assert.equal(2, code2)
    assert.equal("", out2)
    assert.matches("not an answer ferry understands", err2)
  end)

  describe("on a terminal", function()
    it("completes command names with TAB, goes on after errors and writes the history", function()
      daemon = fake()
      local history = tmpname("history")
      local code, text = session(daemon.path, history, {
        "expect:ferry> ",
        "send:proxy.li\\t()\\r", "expect:=> proxy.list()",
        "send:error(oops)\\r", "expect:error: oops",
        "send:pool.\\t", "expect:pool.list  pool.stats",
        'send:s\\t("binance")\\r', 'expect:=> pool.stats("binance")',
        "expect:ferry> ", "send:\\x04",
      })
      assert.equal(0, code, text)
      assert.same({ "proxy.list()", "error(oops)", 'pool.stats("binance")' }, (seen(daemon)))
      local h = history_lines(history)
      assert.equal("_HiStOrY_V2_", h[1]) -- libedit's history format
      assert.same({ "proxy.list()", "error(oops)", 'pool.stats("binance")' }, { h[2], h[3], h[4] })
      local p = io.popen("stat -c %a " .. procs.quote(history))
      assert.equal("600", p:read("*l")) -- lines may carry proxy credentials
      p:close()

      -- the next session starts with that history: Up recalls the last line
      code, text = session(daemon.path, history, {
        "expect:ferry> ", "send:\\x1b[A\\r", 'expect:=> pool.stats("binance")',
        "expect:ferry> ", "send:exit\\r",
      })
      assert.equal(0, code, text)
      local lines = seen(daemon)
      assert.equal('pool.stats("binance")', lines[#lines])
      assert.equal(4, #lines)
      os.remove(history)
    end)

    it("keeps at most 1000 history entries", function()
      daemon = fake()
      local history = tmpname("history")
      local old = { "_HiStOrY_V2_" }
      for i = 1, 1100 do old[#old + 1] = "old" .. i .. "()" end
      procs.write_file(history, table.concat(old, "\n") .. "\n")
      local code, text = session(daemon.path, history, {
        "expect:ferry> ", "send:newest()\\r", "expect:=> newest()",
        "expect:ferry> ", "send:\\x04",
      })
      assert.equal(0, code, text)
      local h = history_lines(history)
      assert.equal(1001, #h) -- the format line and 1000 entries
      assert.equal("newest()", h[#h])
      assert.equal("old1100()", h[#h - 1])
      assert.equal("old102()", h[2])
      os.remove(history)
    end)

    it("Ctrl-C drops the line being typed, not the session", function()
      daemon = fake()
      local history = tmpname("history")
      local code, text = session(daemon.path, history, {
        "expect:ferry> ", "send:half typed", "expect:half typed", "send:\\x03",
        "expect:ferry> ", "send:help\\r", "expect:=> help",
        "expect:ferry> ", "send:quit\\r",
      })
      assert.equal(0, code, text)
      assert.same({ "help" }, (seen(daemon)))
      os.remove(history)
    end)

    it("exits 2 when there is no daemon to talk to", function()
      local history = tmpname("history")
      local code, text = session(tmpname("missing") .. ".sock", history, {})
      assert.equal(2, code)
      assert.matches("cannot connect to ", text)
    end)
  end)

  -- The console runs whatever Lua it is sent and prints what comes back,
  -- so it talks only to a socket of this user's (or root's) daemon.
  describe("refuses a socket that is not this user's daemon", function()
    local is_root = (io.popen("id -u"):read("*l")) == "0"

    local function refused(path, why)
      local code, out, err = console("-s " .. procs.quote(path) .. " -e 'proxy.list()'")
      assert.equal(2, code, err)
      assert.equal("", out)
      assert.matches("^ferry console: refusing " .. path:gsub("%p", "%%%0") .. ": " .. why, err)
    end

    it("a group- or world-writable socket, before sending anything", function()
      daemon = fake()
      assert.equal(0, (console("-s " .. procs.quote(daemon.path) .. " -e 'first()'")))
      for _, mode in ipairs { "666", "620", "602" } do
        os.execute("chmod " .. mode .. " " .. procs.quote(daemon.path))
        refused(daemon.path, "mode 0" .. mode .. " lets other users write to it")
      end
      os.execute("chmod 600 " .. procs.quote(daemon.path))
      local code, out = console("-s " .. procs.quote(daemon.path) .. " -e 'second()'")
      assert.equal(0, code)
      assert.equal("=> second()\n", out)
      -- Nothing reached the daemon while the mode was wrong.
      assert.same({ "first()", "second()" }, (seen(daemon)))
    end)

    it("a path that is not a socket", function()
      local path = procs.write_file(tmpname("file"), "")
      refused(path, "not a socket")
      os.remove(path)
    end)

    it("a socket owned by another user", function()
      if not is_root then
        pending("needs root to chown a socket to another user (id -u is not 0)")
        return
      end
      daemon = fake()
      os.execute("chown nobody " .. procs.quote(daemon.path))
      refused(daemon.path, "owned by uid %d+, not by this user %(uid 0%) or root")
      assert.same({}, (seen(daemon)))
      os.execute("chown root " .. procs.quote(daemon.path))
      assert.equal(0, (console("-s " .. procs.quote(daemon.path) .. " -e 'x()'")))
    end)

    it("a root-owned socket that another user's process listens on (SO_PEERCRED)", function()
      if not is_root or os.execute("command -v setpriv >/dev/null 2>&1") ~= 0 then
        pending("needs root and setpriv(1) to run the fake daemon as nobody")
        return
      end
      -- /tmp: nobody may create the socket there; then root takes the
      -- file over, so only the peer's credentials can tell.
      daemon = fake("keep", string.format("/tmp/ferry-peer-%d.sock", math.random(1, 1e9)),
        "setpriv --reuid=nobody --regid=nogroup --clear-groups ")
      os.execute("chown root:root " .. procs.quote(daemon.path) .. " && chmod 600 " ..
        procs.quote(daemon.path))
      refused(daemon.path, "the process listening on it %(pid %d+%) runs as uid %d+, not as " ..
        "this user %(uid 0%) or root")
      assert.same({}, (seen(daemon)))
    end)
  end)
end)
