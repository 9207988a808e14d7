-- tunnel_peer.lua MODE ARG: the far ends of the tunnel specs, one process.
--   flood PORT   a TCP server on 127.0.0.1 that writes pattern stream 3 to
--                every connection in small segments as fast as the
--                connection takes them (and discards what it reads), until
--                the peer goes away; with a third argument FILE it keeps the
--                total it has sent in FILE (rewritten at most 5 times a second);
--                a fourth, PIECE, sets the segment size (1000 bytes)
--   echo PORT    a TCP server on 127.0.0.1 that sends every byte back; at the
--                peer's EOF it sends what is left, then closes (a half-close
--                in, a full close out)
--   first PORT N sends N bytes of pattern stream 1, then half-closes, and
--                reads to the peer's EOF checking pattern stream 2; prints
--                "received COUNT ok|bad" per connection
--   hog N        takes pipes of 1 MiB (F_SETPIPE_SZ) until the kernel refuses
--                or N pipes are held, so this user's pipe quota is spent;
--                prints "pipes K" and holds them until it is killed
-- Stopped by PID by the spec that started it.
local mode, arg1 = arg[1], tonumber(arg[2])
assert(mode and arg1, "usage: tunnel_peer.lua flood|echo PORT | first PORT N | hog N")
package.path = (arg[0]:match("^(.*)/") or ".") .. "/?.lua;" .. package.path

if mode == "hog" then
  local ffi = require("ffi")
  ffi.cdef [[
    int pipe(int fds[2]);
    int fcntl(int fd, int cmd, ...);
    unsigned int sleep(unsigned int seconds);
  ]]
  local F_SETPIPE_SZ = 1031
  local held = 0
  for _ = 1, arg1 do
    local fds = ffi.new("int[2]")
    if ffi.C.pipe(fds) ~= 0 then break end
    if ffi.C.fcntl(fds[1], F_SETPIPE_SZ, ffi.new("int", 1024 * 1024)) == -1 then break end
    held = held + 1
  end
  io.stdout:write("pipes ", held, "\n")
  io.stdout:flush()
  for _ = 1, 3600 do ffi.C.sleep(1) end
  return
end

local socket = require("socket")
local pattern = require("pattern")
local first_n = tonumber(arg[3])
local status_file = mode == "flood" and arg[3] or nil
local flooded, reported, reported_at = 0, -1, 0

-- flood: the total sent, for a spec that waits until nothing moves.
local function report()
  local now = socket.gettime()
  if status_file and flooded ~= reported and now - reported_at >= 0.2 then
    local f = io.open(status_file .. ".new", "w")
    f:write(flooded, "\n")
    f:close()
    os.rename(status_file .. ".new", status_file)
    reported, reported_at = flooded, now
  end
end
local server = assert(socket.bind("127.0.0.1", arg1))
server:settimeout(0)

local conns = {}  -- sock -> { out = pending bytes, off = sent in out, eof = peer done }
-- flood: small writes, each its own segment, as an interactive origin
-- (or TLS records) makes them: a pipe then fills by slots long before bytes.
local FLOOD_PIECE = mode == "flood" and tonumber(arg[4]) or 1000
local ECHO_MAX = 256 * 1024 -- echo: stop reading while this much waits to go back

-- first: the next piece of what this connection still has to send.
local function first_fill(st)
  if st.off == #st.out and st.sent < first_n then
    local n = math.min(32768, first_n - st.sent)
    st.out, st.off = pattern.slice(1, st.sent, n), 0
    st.sent = st.sent + n
  end
end

local function first_check(st, data)
  if pattern.slice(2, st.got, #data) ~= data then st.bad = true end
  st.got = st.got + #data
end

local function drop(s)
  conns[s] = nil
  s:close()
end

local function on_readable(s, st)
  local data, err, partial = s:receive(32768)
  data = data or partial
  if data and #data > 0 and mode == "echo" then
    st.out = st.out:sub(st.off + 1) .. data
    st.off = 0
  elseif data and #data > 0 and mode == "first" then
    first_check(st, data)
  end
  if err == "closed" then
    st.eof = true
    if mode == "first" then
      io.stdout:write("received ", st.got, st.bad and " bad" or " ok", "\n")
      io.stdout:flush()
      return drop(s)
    end
    if mode == "flood" or #st.out == st.off then drop(s) end
  end
end

local function on_writable(s, st)
  if mode == "flood" and #st.out == st.off then
    st.out, st.off = pattern.slice(3, st.sent, FLOOD_PIECE), 0
    st.sent = st.sent + FLOOD_PIECE
  elseif mode == "first" then
    first_fill(st)
  end
  local last, err, partial = s:send(st.out, st.off + 1)
  flooded = flooded + ((last or partial or st.off) - st.off)
  st.off = last or partial or st.off
  if err == "closed" then return drop(s) end
  if mode == "echo" and st.eof and st.off == #st.out then drop(s) end
  if mode == "first" and st.off == #st.out and st.sent == first_n and not st.shut then
    st.shut = true
    s:shutdown("send")
  end
end

while true do
  local c = server:accept()
  while c do
    c:settimeout(0)
    if mode == "flood" then c:setoption("tcp-nodelay", true) end
    conns[c] = { out = "", off = 0, sent = 0, got = 0 }
    c = server:accept()
  end
  local rd, wr = { server }, {}
  for s, st in pairs(conns) do
    if not st.eof and (mode ~= "echo" or #st.out - st.off < ECHO_MAX) then
      rd[#rd + 1] = s
    end
    if mode == "flood" or st.off < #st.out or (mode == "first" and not st.shut) then
      wr[#wr + 1] = s
    end
  end
  local r, w = socket.select(rd, wr, 0.2)
  report()
  for _, s in ipairs(r) do
    if conns[s] then on_readable(s, conns[s]) end
  end
  for _, s in ipairs(w) do
    if conns[s] then on_writable(s, conns[s]) end
  end
end
