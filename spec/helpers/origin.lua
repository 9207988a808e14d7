-- origin.lua PORT: the HTTP origin server of the integration specs.
-- A real TCP server (LuaSocket, one select loop) with endpoints that
-- exercise framing and failure:
--   GET  /                 "hello from origin"
--   GET  /bytes/N          N bytes, Content-Length
--   GET  /chunked/N        N bytes, chunked in pieces of 1000
--   POST|PUT /echo         the request body back (Content-Length or chunked in)
--   GET  /headers          the request head as received, as the body
--   GET  /close            body delimited by closing the connection
--   GET  /truncated        promises 100000 bytes, sends 10, closes
--   GET  /garbage          a reply that is not HTTP
--   GET  /slow/S           answers after S seconds
--   GET  /status/N         an empty response with status N
--   GET  /say/N/TEXT       status N with TEXT (%-escapes decoded) as the body
--   GET  /ws               101 for "Upgrade: websocket", then echoes bytes
--   GET  /peer             the connection's source address (which proxy it came through)
--   GET  .../whoami        "origin PORT": which origin answered (reverse proxy backends;
--                          any path ending so, for routing by path)
-- Each response carries X-Origin-Conn: the connection's serial number.
local socket = require("socket")

local port = assert(tonumber(arg[1]), "usage: origin.lua PORT")
local server = assert(socket.bind("127.0.0.1", port))
server:settimeout(0)

local clients = {}   -- sock -> state
local serial = 0
local timers = {}    -- { at, fn }

local function send_all(st, data)
  st.out = st.out .. data
end

local function respond(st, status, headers, body, close)
  local lines = { "HTTP/1.1 " .. status .. "\r\n" }
  headers = headers or {}
  headers["X-Origin-Conn"] = tostring(st.id)
  if body and not headers["Transfer-Encoding"] and not close then
    headers["Content-Length"] = tostring(#body)
  end
  if close then headers["Connection"] = "close" end
  for k, v in pairs(headers) do lines[#lines + 1] = k .. ": " .. v .. "\r\n" end
  lines[#lines + 1] = "\r\n"
  send_all(st, table.concat(lines) .. (body or ""))
  if close then st.close_after = true end
end

local function chunked(n)
  local parts, left = {}, n
  while left > 0 do
    local k = math.min(1000, left)
    parts[#parts + 1] = string.format("%x\r\n%s\r\n", k, string.rep("c", k))
    left = left - k
  end
  parts[#parts + 1] = "0\r\n\r\n"
  return table.concat(parts)
end

local function handle(st, req)
  local m, path = req.method, req.path
  if path == "/" then
    respond(st, "200 OK", { ["Content-Type"] = "text/plain" }, "hello from origin\n")
  elseif path:match("^/bytes/%d+$") then
    respond(st, "200 OK", {}, string.rep("x", tonumber(path:match("%d+"))))
  elseif path:match("^/chunked/%d+$") and req.version == "1.0" then
    -- RFC 9112: never chunked to a 1.0 peer; delimit by closing instead.
    send_all(st, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" ..
      string.rep("c", tonumber(path:match("%d+"))))
    st.close_after = true
  elseif path:match("^/chunked/%d+$") then
    respond(st, "200 OK", { ["Transfer-Encoding"] = "chunked" },
      chunked(tonumber(path:match("%d+"))))
  elseif path == "/echo" and (m == "POST" or m == "PUT") then
    respond(st, "200 OK", { ["X-Method"] = m }, req.body)
  elseif path == "/headers" then
    respond(st, "200 OK", {}, req.head)
  elseif path:match("/whoami$") then
    respond(st, "200 OK", {}, "origin " .. port .. "\n")
  elseif path == "/peer" then
    respond(st, "200 OK", {}, tostring(st.peer) .. "\n")
  elseif path == "/close" then
    send_all(st, "HTTP/1.1 200 OK\r\nConnection: close\r\nX-Origin-Conn: " .. st.id ..
      "\r\n\r\nuntil the end")
    st.close_after = true
  elseif path == "/truncated" then
    send_all(st, "HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n0123456789")
    st.close_after = true
  elseif path == "/garbage" then
    send_all(st, "SSH-2.0-not-http\r\n\r\n")
    st.close_after = true
  elseif path:match("^/slow/[%d.]+$") then
    local s = tonumber(path:match("[%d.]+$"))
    st.busy = true
    timers[#timers + 1] = { at = socket.gettime() + s, fn = function()
      st.busy = false
      respond(st, "200 OK", {}, "slow\n")
    end }
  elseif path:match("^/status/%d+$") then
    respond(st, path:match("%d+$") .. " Status", {}, "")
  elseif path:match("^/say/%d+/") then
    -- /say/N/TEXT: status N with TEXT as the body (ban markers)
    local code, text = path:match("^/say/(%d+)/(.*)$")
    respond(st, code .. " Status", { ["Content-Type"] = "text/plain" },
      (text:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end)))
  elseif path == "/ws" and (req.headers["upgrade"] or ""):lower() == "websocket" then
    send_all(st, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n" ..
      "Connection: Upgrade\r\n\r\n")
    st.echo = true
  else
    respond(st, "404 Not Found", {}, "no such path\n")
  end
end

-- Parse as many whole requests as the buffer holds.
local function parse(st)
  while not st.busy and not st.echo do
    local head_end = st.inb:find("\r\n\r\n", 1, true)
    if not head_end then return end
    local head = st.inb:sub(1, head_end + 3)
    local method, path, version = head:match("^(%u+) (%S+) HTTP/(1%.%d)\r\n")
    if not method then
      respond(st, "400 Bad Request", {}, "bad request\n", true)
      st.inb = ""
      return
    end
    local headers = {}
    for k, v in head:gmatch("\r\n([^:\r\n]+):%s*([^\r\n]*)") do headers[k:lower()] = v end
    local rest = st.inb:sub(head_end + 4)
    local body = ""
    if headers["content-length"] then
      local n = tonumber(headers["content-length"])
      if #rest < n then return end
      body, rest = rest:sub(1, n), rest:sub(n + 1)
    elseif (headers["transfer-encoding"] or ""):lower():find("chunked") then
      local parts, pos = {}, 1
      while true do
        local line_end = rest:find("\r\n", pos, true)
        if not line_end then return end
        local size = tonumber(rest:sub(pos, line_end - 1):match("^%x+"), 16)
        if not size then return end
        if size == 0 then
          local fin = rest:find("\r\n\r\n", line_end, true)
          if rest:sub(line_end, line_end + 3) == "\r\n\r\n" then fin = line_end end
          if not fin then return end
          rest = rest:sub(fin + 4)
          break
        end
        if #rest < line_end + 1 + size + 2 then return end
        parts[#parts + 1] = rest:sub(line_end + 2, line_end + 1 + size)
        pos = line_end + 2 + size + 2
      end
      body = table.concat(parts)
    end
    st.inb = rest
    handle(st, { method = method, path = path, version = version, headers = headers,
                 body = body, head = head })
    if st.close_after then return end
  end
end

while true do
  local socks = { server }
  local writers = {}
  for s, st in pairs(clients) do
    socks[#socks + 1] = s
    if #st.out > 0 then writers[#writers + 1] = s end
  end
  local readable, writable = socket.select(socks, writers, 0.02)
  for _, s in ipairs(readable) do
    if s == server then
      local c = server:accept()
      if c then
        c:settimeout(0)
        c:setoption("tcp-nodelay", true)
        serial = serial + 1
        clients[c] = { id = serial, inb = "", out = "", peer = (c:getpeername()) }
      end
    else
      local st = clients[s]
      local data, err, partial = s:receive(65536)
      data = data or partial
      if data and #data > 0 then
        if st.echo then st.out = st.out .. data else st.inb = st.inb .. data end
      end
      if err == "closed" then
        if #st.out == 0 or st.echo then s:close() clients[s] = nil end
        st.peer_closed = true
      end
    end
  end
  for _, s in ipairs(writable) do
    local st = clients[s]
    if st and #st.out > 0 then
      local n, err, last = s:send(st.out)
      n = n or last or 0
      st.out = st.out:sub(n + 1)
      if err == "closed" then s:close() clients[s] = nil end
    end
  end
  local now = socket.gettime()
  for i = #timers, 1, -1 do
    if timers[i].at <= now then
      local t = table.remove(timers, i)
      t.fn()
    end
  end
  for s, st in pairs(clients) do
    if not st.close_after and not st.peer_closed then parse(st) end
    if (st.close_after or st.peer_closed) and #st.out == 0 and clients[s] then
      s:close()
      clients[s] = nil
    end
  end
end
