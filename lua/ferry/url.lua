-- url.lua: proxy URLs and host:port pairs, parsed strictly.
local M = {}

local DEFAULT_PORT = { http = 8080, socks5 = 1080 }
local SCHEME_ALIAS = { http = "http", socks5 = "socks5", socks5h = "socks5" }

local function unescape(s)
  local bad = false
  local out = s:gsub("%%(..)", function(h)
    local n = tonumber(h, 16)
    if not n then bad = true return "" end
    return string.char(n)
  end)
  if bad then return nil end
  return out
end

local function check_port(p)
  local n = tonumber(p)
  if not p:match("^%d+$") or not n or n < 1 or n > 65535 then
    return nil, string.format('invalid port "%s"', p)
  end
  return n
end

-- "host:port", "[v6]:port", or "host" when a default port is given.
function M.parse_hostport(s, default_port)
  if type(s) ~= "string" or s == "" then return nil, "missing address" end
  if s:find("[%s%c]") then return nil, "address contains whitespace or control characters" end
  local host, port = s:match("^%[([%x:.]+)%]:?(%d*)$")
  if not host then
    host, port = s:match("^([^:%[%]]+):?(%d*)$")
  end
  if not host then
    return nil, string.format('invalid address "%s" (use host:port)', s)
  end
  if port == "" then
    if s:sub(-1) == ":" or not default_port then
      return nil, string.format('missing port in "%s"', s)
    end
    return host, default_port
  end
  local n, err = check_port(port)
  if not n then return nil, err end
  return host, n
end

function M.parse(s)
  if type(s) ~= "string" then return nil, "proxy URL must be a string" end
  if s:find("[%s%c]") then return nil, "proxy URL contains whitespace or control characters" end
  local scheme, rest = s:match("^(%a[%w+.-]*)://(.*)$")
  if not scheme then return nil, string.format('invalid proxy URL "%s" (want scheme://host:port)', s) end
  local canon = SCHEME_ALIAS[scheme:lower()]
  if not canon then
    return nil, string.format('unsupported scheme "%s" (use http or socks5)', scheme)
  end
  if rest:find("[?#]") then return nil, "proxy URL must not have a query or fragment" end
  local authority, path = rest:match("^([^/]*)(.*)$")
  if path ~= "" and path ~= "/" then return nil, "proxy URL must not have a path" end
  local userinfo, hostport = authority:match("^(.*)@([^@]*)$")
  if not userinfo then hostport = authority end
  if hostport == "" or hostport:match("^:") or hostport == "[]" then
    return nil, "missing host"
  end
  local host, port = M.parse_hostport(hostport, DEFAULT_PORT[canon])
  if not host then return nil, port end
  local out = { scheme = canon, host = host, port = port }
  if userinfo then
    local u, p = userinfo:match("^([^:]*):(.*)$")
    if not u then u, p = userinfo, "" end
    out.user, out.pass = unescape(u), unescape(p)
    if not out.user or not out.pass then return nil, "invalid percent-escape in credentials" end
    if out.user == "" then return nil, "empty user name in credentials" end
  end
  return out
end

-- A form safe for logs, metrics and errors: never the password.
function M.display(p)
  local host = p.host
  if host:find(":", 1, true) then host = "[" .. host .. "]" end
  return string.format("%s://%s%s:%d", p.scheme, p.user and "***@" or "", host, p.port)
end

return M
