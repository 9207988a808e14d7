-- procs.lua: start and stop the real processes integration specs use
-- (bin/ferry, microsocks, tinyproxy, the origin), on 127.0.0.1 only.
-- Every process is remembered by PID and stopped by PID.
local socket = require("socket")

local M = {}

local function cwd()
  local p = io.popen("pwd")
  local d = p:read("*l")
  p:close()
  return d
end

local ROOT = os.getenv("FERRY_ROOT") or cwd()
M.root = ROOT
M.bin = os.getenv("FERRY_BIN") or (ROOT .. "/bin/ferry")
M.asan = os.getenv("FERRY_ASAN") == "1"
M.tmp = ROOT .. "/spec/tmp"
os.execute("mkdir -p " .. M.tmp)

local started = {}

local function sh_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end
M.quote = sh_quote

function M.sleep(s)
  socket.sleep(s)
end

-- A free TCP port on 127.0.0.1, below the kernel's ephemeral range
-- (32768+), so no outgoing connection of a spec can take it between
-- this check and the server's bind.
local handed_out = {}
math.randomseed(os.time() + tonumber(tostring({}):match("0x(%x+)"), 16) % 100000)

function M.free_port()
  for _ = 1, 200 do
    local port = math.random(20000, 32000)
    if not handed_out[port] then
      local s = socket.bind("127.0.0.1", port)
      if s then
        s:close()
        handed_out[port] = true
        return port
      end
    end
  end
  error("no free port found")
end

function M.write_file(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
  return path
end

function M.read_file(path)
  local f = io.open(path, "r")
  if not f then return "" end
  local s = f:read("*a")
  f:close()
  return s
end

-- Start a command in the background; returns its PID and log path.
function M.spawn(name, cmd)
  local log = string.format("%s/%s-%d.log", M.tmp, name, math.random(1, 1e9))
  local p = assert(io.popen("exec " .. cmd .. " >" .. log .. " 2>&1 & echo $!"))
  local pid = tonumber(p:read("*l"))
  p:close()
  assert(pid, "could not start " .. name)
  local proc = { name = name, pid = pid, log = log }
  started[#started + 1] = proc
  return proc
end

function M.alive(proc)
  return os.execute("kill -0 " .. proc.pid .. " 2>/dev/null") == 0
end

-- Wait until a TCP port accepts connections.
function M.wait_port(port, timeout)
  local deadline = socket.gettime() + (timeout or 5)
  while socket.gettime() < deadline do
    local c = socket.tcp()
    c:settimeout(0.2)
    if c:connect("127.0.0.1", port) then
      c:close()
      return true
    end
    c:close()
    socket.sleep(0.02)
  end
  return false
end

-- Poll fn() every `step` seconds (0.02) until it returns a truthy value
-- or `timeout` seconds (5) pass; returns that value, or nil at the deadline.
function M.wait_for(fn, timeout, step)
  local deadline = socket.gettime() + (timeout or 5)
  repeat
    local v = fn()
    if v then return v end
    socket.sleep(step or 0.02)
  until socket.gettime() > deadline
  return nil
end

-- One sample of GET /metrics on a loopback admin listener without a
-- token: the value of `name{labels}` (labels exactly as rendered, e.g.
-- 'result="ok"'; nil for a sample without labels), or nil when absent.
function M.metric(admin_port, name, labels)
  local status, body = M.curl { url = "http://127.0.0.1:" .. admin_port .. "/metrics",
    max_time = 5 }
  if status ~= 200 then return nil end
  local key = name .. (labels and ("{" .. labels .. "}") or "")
  local v = ("\n" .. body):match("\n" .. key:gsub("%p", "%%%0") .. " (%S+)\n")
  return v and tonumber(v)
end

function M.signal(proc, sig)
  os.execute("kill -" .. sig .. " " .. proc.pid .. " 2>/dev/null")
end

-- Stop by PID; returns the exit status when it is a child we can reap.
function M.stop(proc, sig)
  if proc.stopped then return end
  M.signal(proc, "CONT")
  M.signal(proc, sig or "TERM")
  local deadline = socket.gettime() + 12
  while M.alive(proc) and socket.gettime() < deadline do
    socket.sleep(0.02)
  end
  if M.alive(proc) then
    M.signal(proc, "KILL")
    socket.sleep(0.05)
  end
  proc.stopped = true
  for i, p in ipairs(started) do
    if p == proc then table.remove(started, i) break end
  end
end

function M.stop_all()
  for i = #started, 1, -1 do
    M.stop(started[i])
  end
end

-- Sanitizer findings in a process's log (make asan fails on any).
function M.sanitizer_report(proc)
  local log = M.read_file(proc.log)
  return log:match("ERROR: AddressSanitizer[^\n]*") or log:match("ERROR: LeakSanitizer[^\n]*")
      or log:match("runtime error:[^\n]*")
end

-- Start bin/ferry with a config text; waits for every port given.
function M.ferry(config_text, ports, name)
  local cfg = M.write_file(string.format("%s/ferry-%d.lua", M.tmp, math.random(1, 1e9)),
    config_text)
  local proc = M.spawn(name or "ferry", sh_quote(M.bin) .. " -c " .. sh_quote(cfg))
  proc.config = cfg
  for _, port in ipairs(ports or {}) do
    if not M.wait_port(port, M.asan and 15 or 5) then
      local log = M.read_file(proc.log)
      M.stop(proc)
      error("ferry did not open port " .. port .. ":\n" .. log)
    end
  end
  return proc
end

-- Stop ferry and assert a clean exit with no sanitizer report.
function M.stop_ferry(proc)
  M.stop(proc)
  local report = M.sanitizer_report(proc)
  assert(report == nil, "sanitizer: " .. tostring(report) .. "\n" .. M.read_file(proc.log))
end

-- The JSON log lines ferry wrote so far.
function M.log_lines(proc)
  local cjson = require("cjson.safe")
  local out = {}
  for line in M.read_file(proc.log):gmatch("[^\n]+") do
    out[#out + 1] = cjson.decode(line) or { unparsed = line }
  end
  return out
end

-- A sqlite3 process holding the database `db` locked ("BEGIN <mode>",
-- IMMEDIATE or EXCLUSIVE) for `secs` seconds; returns once the lock is
-- taken (it touches a file then).  Stop it early with M.stop.
function M.sqlite_lock(db, mode, secs)
  local ready = string.format("%s/sqlite-ready-%d", M.tmp, math.random(1, 1e9))
  local proc = M.spawn("sqlite3", "sqlite3 -bail " .. sh_quote(db) .. " " ..
    sh_quote("BEGIN " .. mode .. ";") .. " " .. sh_quote(".shell touch " .. ready) .. " " ..
    sh_quote(".shell sleep " .. secs) .. " 'COMMIT;'")
  local locked = M.wait_for(function()
    local f = io.open(ready, "r")
    if f then f:close() end
    return f ~= nil or not M.alive(proc)
  end, 10)
  local held = io.open(ready, "r")
  if held then held:close() os.remove(ready) end
  if not (locked and held) then
    local log = M.read_file(proc.log)
    M.stop(proc)
    error("sqlite3 did not lock " .. db .. ":\n" .. log)
  end
  return proc
end

function M.microsocks(port, user, pass)
  local cmd = "microsocks -i 127.0.0.1 -p " .. port
  if user then cmd = cmd .. " -u " .. sh_quote(user) .. " -P " .. sh_quote(pass) end
  local proc = M.spawn("microsocks", cmd)
  assert(M.wait_port(port), "microsocks did not start")
  return proc
end

function M.tinyproxy(port)
  local conf = M.write_file(string.format("%s/tinyproxy-%d.conf", M.tmp, port), table.concat({
    "Port " .. port,
    "Listen 127.0.0.1",
    "Timeout 30",
    "MaxClients 50",
    "Allow 127.0.0.1",
    "DisableViaHeader Yes",
    "LogLevel Error",
  }, "\n") .. "\n")
  local proc = M.spawn("tinyproxy", "tinyproxy -d -c " .. conf)
  assert(M.wait_port(port), "tinyproxy did not start")
  return proc
end

-- stunnel4 in the foreground, one TLS-terminating service per entry of
-- services ({ accept = port, connect = port, cert = file, key = file }),
-- all in one process; waits for every accept port.
function M.stunnel(services)
  local lines = { "foreground = yes", "pid =", "debug = 3" }
  for i, sv in ipairs(services) do
    lines[#lines + 1] = "[s" .. i .. "]"
    lines[#lines + 1] = "accept = 127.0.0.1:" .. sv.accept
    lines[#lines + 1] = "connect = 127.0.0.1:" .. sv.connect
    lines[#lines + 1] = "cert = " .. sv.cert
    lines[#lines + 1] = "key = " .. sv.key
  end
  local conf = M.write_file(string.format("%s/stunnel-%d.conf", M.tmp, math.random(1, 1e9)),
    table.concat(lines, "\n") .. "\n")
  local proc = M.spawn("stunnel", "stunnel4 " .. sh_quote(conf))
  for _, sv in ipairs(services) do
    assert(M.wait_port(sv.accept), "stunnel did not start:\n" .. M.read_file(proc.log))
  end
  return proc
end

-- The spec origin: a real HTTP server in its own LuaJIT process.
function M.origin(port)
  local proc = M.spawn("origin", "luajit " .. ROOT .. "/spec/helpers/origin.lua " .. port)
  assert(M.wait_port(port), "origin did not start:\n" .. M.read_file(proc.log))
  return proc
end

-- The relay origin (spec/helpers/relay_origin.py): generated bodies with
-- checksums, upload sinks, streamed echo, pacing and stalls.
function M.relay_origin(port)
  local proc = M.spawn("relay-origin", "python3 " .. ROOT .. "/spec/helpers/relay_origin.py " .. port)
  assert(M.wait_port(port), "relay origin did not start:\n" .. M.read_file(proc.log))
  return proc
end

-- sha256 of a file's bytes (hex), or nil.
function M.sha256_file(path)
  local p = io.popen("sha256sum " .. sh_quote(path))
  local out = p:read("*l") or ""
  p:close()
  return out:match("^(%x+)")
end

-- A file's size in bytes, -1 when it cannot be opened.
function M.file_size(path)
  local f = io.open(path, "rb")
  if not f then return -1 end
  local n = f:seek("end")
  f:close()
  return n
end

-- One HTTP/1.1 response read from the LuaSocket c (Content-Length framed):
-- status, body, head text; nil and the error when no status line comes.
function M.read_response(c)
  local line, err = c:receive("*l")
  if not line then return nil, err end
  local head, len = line .. "\n", 0
  repeat
    local h = assert(c:receive("*l"))
    head = head .. h .. "\n"
    len = tonumber(h:match("^[Cc]ontent%-[Ll]ength: *(%d+)")) or len
  until h == ""
  local b = len > 0 and assert(c:receive(len)) or ""
  return tonumber(line:match("^HTTP/1%.%d (%d+)")), b, head
end

-- The value of the last `name:` field in a header dump (curl -D keeps
-- interim heads too, so the last one is the final response's), or nil.
function M.last_header(headers, name)
  local v
  for line in headers:gmatch("[^\r\n]+") do
    local k, val = line:match("^([^:]+):%s*(.-)%s*$")
    if k and k:lower() == name:lower() then v = val end
  end
  return v
end

-- curl through a proxy; returns status, body, headers text.
function M.curl(args)
  local hfile = string.format("%s/curl-h-%d", M.tmp, math.random(1, 1e9))
  local bfile = hfile .. ".body"
  local cmd = "curl -s -S --max-time " .. (args.max_time or 10) .. " -D " .. hfile ..
    " -o " .. bfile .. " -w '%{http_code}' " .. (args.flags or "") ..
    (args.proxy and (" -x " .. sh_quote(args.proxy)) or "") .. " " .. sh_quote(args.url) ..
    " 2>" .. bfile .. ".err"
  local p = io.popen(cmd)
  local code = p:read("*a")
  p:close()
  local body, headers = M.read_file(bfile), M.read_file(hfile)
  local err = M.read_file(bfile .. ".err")
  os.remove(hfile) os.remove(bfile) os.remove(bfile .. ".err")
  return tonumber(code) or 0, body, headers, err
end

-- One request to an admin listener on 127.0.0.1: status, the body decoded
-- from JSON (or its text), the raw body.
function M.admin_api(port, method, path, body, max_time)
  local cjson = require("cjson.safe")
  local p = io.popen("curl -s -S --max-time " .. (max_time or 10) .. " -X " .. method ..
    " -w '\\n%{http_code}' " .. (body and ("--data-binary " .. sh_quote(body) .. " ") or "") ..
    sh_quote("http://127.0.0.1:" .. port .. path) .. " 2>&1")
  local out = p:read("*a")
  p:close()
  local resp, code = out:match("^(.*)\n(%d+)$")
  return tonumber(code), cjson.decode(resp or "") or resp, resp
end

-- The record of proxy `name` in a node's GET /api/v1/proxies (nil: not there).
function M.admin_record(port, name)
  local code, body = M.admin_api(port, "GET", "/api/v1/proxies")
  if code ~= 200 or type(body) ~= "table" then return nil end
  for _, p in ipairs(body.proxies) do
    if p.name == name then return p end
  end
end

return M
