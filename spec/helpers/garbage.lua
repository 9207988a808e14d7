-- garbage.lua PORT: a hostile upstream.  It accepts, reads whatever
-- arrives, answers bytes that are neither HTTP nor SOCKS5, and closes.
local socket = require("socket")
local port = assert(tonumber(arg[1]), "usage: garbage.lua PORT")
local server = assert(socket.bind("127.0.0.1", port))
while true do
  local c = server:accept()
  if c then
    c:settimeout(2)
    c:receive(1) -- wait for the first byte of a handshake
    c:send("\255\254garbage \0 not a protocol\r\n\r\n")
    c:close()
  end
end
