-- fake_console.lua: a stand-in for the daemon's console socket, for the
-- specs of the `ferry console` client.  HTTP/1.1 on a unix socket, one
-- connection at a time.
--
--   luajit spec/helpers/fake_console.lua SOCKET [MODE]
--
-- MODE "keep" (default) keeps connections open; "close" closes each one
-- right after its answer without saying so (no Connection: close), as a
-- daemon that restarted or timed the connection out would.  MODE "drop"
-- answers the first request of a connection and closes on the second
-- without answering it (the client's retry after a keep-alive race).
--
-- The answer depends on the line (the request body):
--   error(MSG)    400, {"error":"FERRY-9999","message":MSG}
--   status(N)     N with a body that is not JSON
--   sleep(S)      waits S seconds, then answers like any other line
--   chunked(TEXT) 200, TEXT sent chunked
--   garbage       a reply that is not HTTP
--   anything else 200, "=> LINE\n"
-- It logs "ready" once it listens, "conn N" for each connection and
-- "line N: LINE" for each request on stdout, and exits after 60 s
-- without a connection.
local unix = require("socket.unix")
local socket = require("socket")

local path, mode = arg[1], arg[2] or "keep"
assert(path, "usage: fake_console.lua SOCKET [keep|close]")
os.remove(path)
local srv = assert(unix.stream())
assert(srv:bind(path))
assert(srv:listen(16))
srv:settimeout(60)

local function log(...)
  io.stdout:write(string.format(...), "\n")
  io.stdout:flush()
end

local function json_string(s)
  return '"' .. s:gsub('[%c"\\]', function(ch)
    if ch == '"' then return '\\"' end
    if ch == "\\" then return "\\\\" end
    if ch == "\n" then return "\\n" end
    return string.format("\\u%04x", ch:byte())
  end) .. '"'
end

local function answer(status, ctype, body)
  return string.format("HTTP/1.1 %d X\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n%s",
    status, ctype, #body, body)
end

local function reply(line)
  local msg = line:match("^error%((.*)%)$")
  if msg then
    return answer(400, "application/json",
      '{"error":"FERRY-9999","message":' .. json_string(msg) .. "}")
  end
  local status = tonumber(line:match("^status%((%d+)%)$"))
  if status then
    return answer(status, "text/plain", "not json\n")
  end
  local secs = tonumber(line:match("^sleep%(([%d.]+)%)$"))
  if secs then
    socket.sleep(secs)
  end
  local text = line:match("^chunked%((.*)%)$")
  if text then
    local half = math.floor(#text / 2)
    return string.format("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" ..
      "%x\r\n%s\r\n%x;ext=1\r\n%s\r\n0\r\n\r\n", half, text:sub(1, half),
      #text - half, text:sub(half + 1))
  end
  if line == "garbage" then
    return "SSH-2.0-OpenSSH\r\n\r\n"
  end
  return answer(200, "text/plain", "=> " .. line .. "\n")
end

-- One request: its body, or nil when the client went away.
local function request(c)
  local length
  local first = c:receive("*l")
  if not first then return nil end
  assert(first == "POST /api/v1/console HTTP/1.1", "bad request line: " .. first)
  while true do
    local h = c:receive("*l")
    if not h then return nil end
    if h == "" then break end
    local n = h:match("^[Cc]ontent%-[Ll]ength:%s*(%d+)")
    if n then length = tonumber(n) end
  end
  assert(length, "no Content-Length")
  if length == 0 then return "" end
  return c:receive(length)
end

local conns, lines = 0, 0
log("ready")
while true do
  local c = srv:accept()
  if not c then break end -- idle for 60 s
  conns = conns + 1
  log("conn %d", conns)
  c:settimeout(30)
  local served = 0
  while true do
    local line = request(c)
    if not line then break end
    lines = lines + 1
    log("line %d: %s", lines, line)
    served = served + 1
    if mode == "drop" and served > 1 then
      log("dropped")
      break
    end
    c:send(reply(line))
    if mode == "close" or line == "garbage" then break end
  end
  c:close()
end
srv:close()
os.remove(path)
