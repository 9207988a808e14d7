-- CONNECT tunnels at rest and under load: a stalled reader costs ferry no
-- CPU (CPU time read from /proc, work done rather than time taken), many
-- tunnels stay byte-exact when the pipe quota is spent, half-closes drain
-- both ways, and a slow reader gets every byte.
local procs = require("procs")
local socket = require("socket")
local pattern = require("pattern")

local PEER = procs.root .. "/spec/helpers/tunnel_peer.lua"
local STALL_SECS = 2.0
local STALL_CPU_MAX = 0.3

local function clk_tck()
  local p = io.popen("getconf CLK_TCK")
  local v = tonumber(p:read("*l"))
  p:close()
  return v or 100
end
local HZ = clk_tck()

-- utime + stime of a process, seconds (/proc/PID/stat fields 14 and 15).
local function cpu_seconds(pid)
  local rest = procs.read_file("/proc/" .. pid .. "/stat"):match("%) (.*)$")
  local f = {}
  for w in rest:gmatch("%S+") do f[#f + 1] = w end
  return (tonumber(f[12]) + tonumber(f[13])) / HZ
end

-- The flood has filled every buffer on the way: its total stopped growing.
local function flood_settled(status_file)
  local last, still = -1, 0
  return procs.wait_for(function()
    local now = tonumber(procs.read_file(status_file)) or 0
    still = (now == last and now > 0) and still + 1 or 0
    last = now
    return still >= 3
  end, 60, 0.25)
end

-- CPU seconds ferry spends over STALL_SECS once nothing can move.
local function stall_cpu(proc, status_file)
  assert(flood_settled(status_file), "the flood did not fill the tunnels")
  local t0 = cpu_seconds(proc.pid)
  procs.sleep(STALL_SECS)
  return cpu_seconds(proc.pid) - t0
end

local function peer(mode, port, extra)
  if mode == "flood" then
    extra = string.format("%s/flood-%d.status %s", procs.tmp, math.random(1, 1e9), extra or "")
  end
  local proc = procs.spawn("peer-" .. mode, "luajit " .. PEER .. " " .. mode .. " " .. port ..
    (extra and (" " .. extra) or ""))
  assert(procs.wait_port(port), "tunnel peer did not start:\n" .. procs.read_file(proc.log))
  proc.status = mode == "flood" and extra:match("^%S+") or nil
  return proc
end

-- A client socket with an open CONNECT tunnel to 127.0.0.1:port.
local function tunnel(proxy_port, port)
  local s = assert(socket.connect("127.0.0.1", proxy_port))
  s:settimeout(5)
  assert(s:send("CONNECT 127.0.0.1:" .. port .. " HTTP/1.1\r\nHost: 127.0.0.1:" .. port ..
    "\r\n\r\n"))
  local status = assert(s:receive("*l"))
  assert.matches("^HTTP/1%.1 200", status)
  repeat local line = assert(s:receive("*l")) until line == ""
  return s
end

-- Read n bytes of the flood (pattern stream 3) from offset 0; true if exact.
local function reads_flood(s, n)
  local got = 0
  while got < n do
    local k = math.min(32768, n - got)
    local data = s:receive(k)
    if data ~= pattern.slice(3, got, k) then return false end
    got = got + k
  end
  return true
end

local function config(port)
  return string.format([[
listen { name = "front", addr = "127.0.0.1:%d" }
route(function(req) return "direct" end)
]], port)
end

local function log_has(proc, text)
  return procs.read_file(proc.log):find(text, 1, true) ~= nil
end

-- Send `n` bytes of stream `seed` on each socket and half-close; read the
-- echo to EOF checking it byte for byte.  Returns the bad count, and what
-- probe() returned when it was called: once, when every socket had a
-- quarter of its echo back (every tunnel busy both ways).
local function echo_all(socks, n, seeds, secs, probe)
  local st = {}
  for i, s in ipairs(socks) do
    s:settimeout(0)
    st[s] = { sent = 0, got = 0, seed = seeds[i] }
  end
  local deadline, left = socket.gettime() + secs, #socks
  local probed
  while left > 0 and socket.gettime() < deadline do
    if probe and probed == nil then
      local busy = true
      for _, x in pairs(st) do busy = busy and x.got >= n / 4 end
      if busy then probed = probe() or false end
    end
    local rd, wr = {}, {}
    for s, x in pairs(st) do
      if not x.done then rd[#rd + 1] = s end
      if x.sent < n then wr[#wr + 1] = s end
    end
    local r, w = socket.select(rd, wr, 1)
    for _, s in ipairs(w) do
      local x = st[s]
      local k = math.min(32768, n - x.sent)
      local last, err, partial = s:send(pattern.slice(x.seed, x.sent, k))
      x.sent = x.sent + (last or partial or 0)
      if err == "closed" then x.sent = n end
      if x.sent == n then s:shutdown("send") end
    end
    for _, s in ipairs(r) do
      local x = st[s]
      local data, err, partial = s:receive(32768)
      data = data or partial
      if data and #data > 0 then
        if pattern.slice(x.seed, x.got, #data) ~= data then x.bad = true end
        x.got = x.got + #data
      end
      if err == "closed" and not x.done then
        x.done = true
        left = left - 1
      end
    end
  end
  local bad = 0
  for s, x in pairs(st) do
    if not x.done or x.bad or x.got ~= n then bad = bad + 1 end
    s:close()
  end
  return bad, probed
end

-- The sizes of the pipes a process holds, smallest first: each pipe is
-- opened again through /proc and asked (F_GETPIPE_SZ).
local ffi = require("ffi")
ffi.cdef [[
  int open(const char *path, int flags, ...);
  int close(int fd);
  int fcntl(int fd, int cmd, ...);
]]
local O_RDONLY_NONBLOCK, F_GETPIPE_SZ = 0x800, 1032

local function pipe_sizes(pid)
  local sizes, seen = {}, {}
  local ls = io.popen("ls -l /proc/" .. pid .. "/fd 2>/dev/null")
  for line in ls:lines() do
    local fd, ino = line:match(" (%d+) %-> pipe:%[(%d+)%]")
    if fd and not seen[ino] then
      seen[ino] = true
      local h = ffi.C.open("/proc/" .. pid .. "/fd/" .. fd, O_RDONLY_NONBLOCK)
      if h >= 0 then
        sizes[#sizes + 1] = ffi.C.fcntl(h, F_GETPIPE_SZ)
        ffi.C.close(h)
      end
    end
  end
  ls:close()
  table.sort(sizes)
  return sizes
end

describe("CONNECT tunnels", function()
  local ferry, flood, echo
  local F, FL, EC = procs.free_port(), procs.free_port(), procs.free_port()

  setup(function()
    flood = peer("flood", FL)
    echo = peer("echo", EC)
    ferry = procs.ferry(config(F), { F })
  end)

  teardown(function()
    procs.stop_ferry(ferry)
    procs.stop(flood)
    procs.stop(echo)
  end)

  it("cost no CPU while a client does not read what the origin floods", function()
    local s = tunnel(F, FL)
    local used = stall_cpu(ferry, flood.status)
    assert.is_true(used < STALL_CPU_MAX, string.format("ferry used %.2f s CPU in %.1f s of stall",
      used, STALL_SECS))
    -- Reading again resumes the tunnel where it stopped, byte for byte.
    s:settimeout(10)
    assert.is_true(reads_flood(s, 4 * 1024 * 1024))
    s:close()
  end)

  it("cost no CPU with 100 stalled tunnels at once", function()
    local socks = {}
    for i = 1, 100 do socks[i] = tunnel(F, FL) end
    local used = stall_cpu(ferry, flood.status)
    assert.is_true(used < STALL_CPU_MAX, string.format("ferry used %.2f s CPU in %.1f s of stall",
      used, STALL_SECS))
    for i = 1, 100 do
      socks[i]:settimeout(10)
      assert.is_true(reads_flood(socks[i], 256 * 1024), "tunnel " .. i)
      socks[i]:close()
    end
  end)

  it("carries 4 MB each way byte-exact and drains a client's half-close", function()
    local socks, seeds = {}, {}
    for i = 1, 8 do
      socks[i], seeds[i] = tunnel(F, EC), 100 + i
    end
    assert.equal(0, echo_all(socks, 4 * 1024 * 1024, seeds, 60))
  end)

  it("drains what a client still sends after the origin half-closed", function()
    local P = procs.free_port()
    local first = peer("first", P, 3 * 1024 * 1024)
    finally(function() procs.stop(first) end)
    local s = tunnel(F, P)
    s:settimeout(10)
    -- The origin's 3 MB (stream 1), then its FIN through the tunnel.
    local got, exact = 0, true
    while true do
      local data, err, partial = s:receive(32768)
      data = data or partial
      if data and #data > 0 then
        exact = exact and pattern.slice(1, got, #data) == data
        got = got + #data
      end
      if err then
        assert.equal("closed", err)
        break
      end
    end
    assert.equal(3 * 1024 * 1024, got)
    assert.is_true(exact)
    -- Now the client's 3 MB (stream 2) still reaches the origin.
    local sent = 0
    while sent < 3 * 1024 * 1024 do
      assert(s:send(pattern.slice(2, sent, 32768)))
      sent = sent + 32768
    end
    s:shutdown("send")
    assert.truthy(procs.wait_for(function()
      return procs.read_file(first.log):find("received [1-9]")
    end, 20))
    s:close()
    procs.stop(first)
    assert.matches("received 3145728 ok", procs.read_file(first.log))
  end)

  it("gives a slow reader every byte (curl --limit-rate through CONNECT)", function()
    local dir = procs.tmp .. "/tunnel-www-" .. math.random(1, 1e9)
    os.execute("mkdir -p " .. dir .. " && head -c 786432 /dev/urandom > " .. dir .. "/blob")
    local W = procs.free_port()
    local www = procs.spawn("http.server", "python3 -m http.server " .. W ..
      " --bind 127.0.0.1 --directory " .. procs.quote(dir))
    finally(function()
      procs.stop(www)
      os.execute("rm -rf " .. procs.quote(dir))
    end)
    assert(procs.wait_port(W, 10), "http.server did not start")
    local status, have = procs.curl { proxy = "http://127.0.0.1:" .. F,
      flags = "-p --limit-rate 256k", url = "http://127.0.0.1:" .. W .. "/blob", max_time = 30 }
    procs.stop(www)
    local want = procs.read_file(dir .. "/blob")
    os.execute("rm -rf " .. procs.quote(dir))
    assert.equal(200, status)
    assert.equal(#want, #have)
    assert.is_true(want == have)
  end)
end)

-- The per-user pipe quota (fs.pipe-user-pages-soft) spent by another
-- process of ferry's user: the kernel refuses larger pipes and hands out
-- two-slot ones.  As root both run as nobody, so the quota applies and the
-- system setting is never touched.
describe("CONNECT tunnels when the pipe quota is spent", function()
  local soft = tonumber(procs.read_file("/proc/sys/fs/pipe-user-pages-soft")) or 0
  local root = os.getenv("USER") == "root" or io.popen("id -u"):read("*l") == "0"
  local as_user = root and "setpriv --reuid=65534 --regid=65534 --clear-groups " or ""
  local ferry, flood, echo, hog
  local F, FL, EC = procs.free_port(), procs.free_port(), procs.free_port()

  setup(function()
    if soft > 0 then
      -- 1 MiB pipes are 256 pages each; a few more than the quota holds.
      local n = math.min(math.ceil(soft / 256) + 8, 400)
      hog = procs.spawn("pipe-hog", as_user .. "luajit " .. PEER .. " hog " .. n)
      assert(procs.wait_for(function() return log_has(hog, "pipes ") end, 10),
        "the pipe hog did not start:\n" .. procs.read_file(hog.log))
    end
    flood = peer("flood", FL)
    echo = peer("echo", EC)
    local cfg = procs.write_file(string.format("%s/ferry-%d.lua", procs.tmp,
      math.random(1, 1e9)), config(F))
    ferry = procs.spawn("ferry", as_user .. procs.quote(procs.bin) .. " -c " .. procs.quote(cfg))
    assert(procs.wait_port(F, procs.asan and 15 or 5), "ferry did not start:\n" ..
      procs.read_file(ferry.log))
  end)

  teardown(function()
    procs.stop_ferry(ferry)
    procs.stop(flood)
    procs.stop(echo)
    if hog then procs.stop(hog) end
  end)

  it("carries 80 concurrent tunnels of 4 MB each way byte-exact", function()
    local socks, seeds = {}, {}
    for i = 1, 80 do
      socks[i], seeds[i] = tunnel(F, EC), 200 + i
    end
    assert.equal(0, echo_all(socks, 4 * 1024 * 1024, seeds, 120))
    if soft > 0 then
      assert.is_true(log_has(ferry, "FERRY-3020"), procs.read_file(ferry.log))
    end
  end)

  it("cost no CPU while 20 tunnels with small pipes are stalled", function()
    local socks = {}
    for i = 1, 20 do socks[i] = tunnel(F, FL) end
    local used = stall_cpu(ferry, flood.status)
    assert.is_true(used < STALL_CPU_MAX, string.format("ferry used %.2f s CPU in %.1f s of stall",
      used, STALL_SECS))
    for i = 1, 20 do
      socks[i]:settimeout(10)
      assert.is_true(reads_flood(socks[i], 256 * 1024), "tunnel " .. i)
      socks[i]:close()
    end
  end)
end)

-- An unprivileged ferry with many bulk tunnels at once: its pipes grow
-- only within half of the user's pipe quota, so it never spends the quota
-- and no later pipe is cut down to two slots.
describe("CONNECT tunnels of an unprivileged ferry", function()
  local soft = tonumber(procs.read_file("/proc/sys/fs/pipe-user-pages-soft")) or 0
  local root = io.popen("id -u"):read("*l") == "0"
  local as_user = root and "setpriv --reuid=65534 --regid=65534 --clear-groups " or ""
  local ferry, echo
  local F, EC = procs.free_port(), procs.free_port()

  setup(function()
    echo = peer("echo", EC)
    local cfg = procs.write_file(string.format("%s/ferry-%d.lua", procs.tmp,
      math.random(1, 1e9)), config(F))
    ferry = procs.spawn("ferry", as_user .. procs.quote(procs.bin) .. " -c " .. procs.quote(cfg))
    assert(procs.wait_port(F, procs.asan and 15 or 5), "ferry did not start:\n" ..
      procs.read_file(ferry.log))
  end)

  teardown(function()
    procs.stop_ferry(ferry)
    procs.stop(echo)
  end)

  it("keeps every pipe at 16 slots or more with 80 bulk tunnels", function()
    if soft == 0 then
      pending("fs.pipe-user-pages-soft is 0: no quota to spend")
      return
    end
    local socks, seeds = {}, {}
    for i = 1, 80 do
      socks[i], seeds[i] = tunnel(F, EC), 400 + i
    end
    local bad, sizes = echo_all(socks, 4 * 1024 * 1024, seeds, 120, function()
      return pipe_sizes(ferry.pid)
    end)
    assert.equal(0, bad)
    assert.is_table(sizes)
    assert.is_true(#sizes >= 80, "pipes seen: " .. #sizes)
    assert.is_true(sizes[1] >= 65536, "smallest pipe: " .. sizes[1] .. " bytes")
    assert.is_false(log_has(ferry, "FERRY-3020"), procs.read_file(ferry.log))
  end)

  it("grows the pipes of stalled bulk tunnels only within half the quota", function()
    if soft == 0 then
      pending("fs.pipe-user-pages-soft is 0: no quota to spend")
      return
    end
    local P = procs.free_port()
    local bulk = peer("flood", P, 60000) -- large segments: pipes fill by bytes
    finally(function() procs.stop(bulk) end)
    local socks = {}
    for i = 1, 80 do socks[i] = tunnel(F, P) end
    assert(flood_settled(bulk.status), "the flood did not fill the tunnels")
    local sizes = pipe_sizes(ferry.pid)
    for i = 1, 80 do socks[i]:close() end
    procs.stop(bulk)
    -- A pipe grows only while ferry's pipes stay within half the quota
    -- (default-size pipes are taken regardless: a tunnel needs one).
    local grown = 0
    for _, v in ipairs(sizes) do
      if v > 65536 then grown = grown + v end
    end
    assert.is_true(sizes[1] >= 65536, "smallest pipe: " .. sizes[1] .. " bytes")
    assert.equal(1024 * 1024, sizes[#sizes]) -- bulk pipes do grow
    assert.is_true(grown <= soft * 4096 / 2, "grown pipes hold " .. grown .. " bytes")
    assert.is_false(log_has(ferry, "FERRY-3020"), procs.read_file(ferry.log))
  end)
end)

-- Out of descriptors for pipes: a tunnel still carries every byte, through
-- its buffers.  The limit leaves room for exactly the two sockets.
describe("CONNECT tunnels without pipes", function()
  local ferry, echo
  local F, EC = procs.free_port(), procs.free_port()

  setup(function()
    echo = peer("echo", EC)
    ferry = procs.ferry(config(F), { F })
  end)

  teardown(function()
    procs.stop_ferry(ferry)
    procs.stop(echo)
  end)

  it("relays through the buffers, byte-exact, when no pipe can be opened", function()
    local open = 0
    for _ in io.popen("ls /proc/" .. ferry.pid .. "/fd"):lines() do open = open + 1 end
    assert(os.execute(string.format("prlimit --pid %d --nofile=%d:%d", ferry.pid, open + 2,
      open + 2)) == 0)
    local s = tunnel(F, EC)
    assert.equal(0, echo_all({ s }, 1024 * 1024, { 300 }, 30))
    assert.is_true(log_has(ferry, "FERRY-3021"), procs.read_file(ferry.log))
  end)
end)
