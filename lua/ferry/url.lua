-- url.lua: proxy URLs ("scheme://user:pass@host:port") and "host:port"
-- pairs, parsed strictly.  They come from configs and API callers; what
-- we do not understand is refused with a reason instead of guessed at,
-- and no message ever echoes credentials (errors end up in logs).
local type, tonumber, error = type, tonumber, error
local format, char = string.format, string.char

local M = {}

local DEFAULT_PORT = { http = 8080, https = 443, socks5 = 1080, socks4 = 1080, socks4a = 1080 }
-- socks5h means "let the proxy resolve names"; ferry always sends the
-- destination as a name, so both spellings are the same connector.
-- https is an HTTP proxy reached over TLS.  socks4 carries an IPv4
-- address (ferry resolves names); socks4a a name.
local SCHEMES = {
  http = "http", https = "https", socks5 = "socks5", socks5h = "socks5",
  socks4 = "socks4", socks4a = "socks4a",
}

-- RFC 1929 carries user name and password with a one-byte length; ferry
-- bounds a SOCKS4 user id the same way.
local SOCKS5_CRED_MAX = 255
local SOCKS4_USER_MAX = 255

local function valid_ipv4(s)
  local parts = { s:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$") }
  if #parts ~= 4 then return false end
  for i = 1, 4 do
    local o = parts[i]
    -- "010" means 8 to inet_aton and 10 to a reader: refuse the ambiguity.
    if #o > 3 or (#o > 1 and o:sub(1, 1) == "0") or tonumber(o) > 255 then return false end
  end
  return true
end

-- Hex groups separated by ":" in one side of a "::"; nil if malformed.
local function count_groups(part)
  if part == "" then return 0 end
  local n = 0
  for g in (part .. ":"):gmatch("([^:]*):") do
    if g == "" or #g > 4 then return nil end
    n = n + 1
  end
  return n
end

local function valid_ipv6(s)
  local extra = 0
  local v4 = s:match("^.*:(%d+%.%d+%.%d+%.%d+)$")
  if v4 then
    if not valid_ipv4(v4) then return false end
    -- A trailing dotted quad fills two groups; stand one "0" group in for it.
    s = s:sub(1, #s - #v4) .. "0"
    extra = 1
  end
  if not s:find(":", 1, true) or s:find("[^%x:]") then return false end
  local a, b = s:find("::", 1, true)
  if not a then
    local n = count_groups(s)
    return n ~= nil and n + extra == 8
  end
  if s:find("::", b, true) then return false end -- ":::" or a second "::"
  local left, right = count_groups(s:sub(1, a - 1)), count_groups(s:sub(b + 1))
  return left ~= nil and right ~= nil and left + right + extra <= 7
end

local function valid_name(s)
  if #s > 253 then return false end
  for label in (s .. "."):gmatch("([^.]*)%.") do
    if #label == 0 or #label > 63 or label:find("[^%w_-]")
      or label:sub(1, 1) == "-" or label:sub(-1) == "-" then
      return false
    end
  end
  return true
end

-- "ipv4", "ipv6" (unbracketed) or "name"; nil when s is none of them.
function M.host_kind(s)
  if type(s) ~= "string" then error("url.host_kind: expected a string, got a " .. type(s), 2) end
  if s:find(":", 1, true) then return valid_ipv6(s) and "ipv6" or nil end
  -- All digits and dots is an IPv4 address or nothing, never a name.
  if s:match("^[%d.]+$") then return valid_ipv4(s) and "ipv4" or nil end
  return valid_name(s) and "name" or nil
end

local function check_port(p)
  local n = tonumber(p)
  if not p:match("^%d+$") or #p > 5 or n < 1 or n > 65535 then
    return nil, format('invalid port "%s"', p)
  end
  return n
end

-- "host:port", "[v6]:port", or "host" / "[v6]" when a default port is
-- given.  Returns host (lower-cased, IPv6 without brackets), port.
function M.parse_hostport(s, default_port)
  if type(s) ~= "string" then
    error("url.parse_hostport: expected a string, got a " .. type(s), 2)
  end
  if default_port ~= nil and (type(default_port) ~= "number" or default_port % 1 ~= 0
      or default_port < 1 or default_port > 65535) then
    error("url.parse_hostport: default port must be an integer in 1..65535", 2)
  end
  if s == "" then return nil, "missing address" end
  if s:find("[%s%c]") then return nil, "address contains whitespace or control characters" end
  local host, rest
  if s:sub(1, 1) == "[" then
    host, rest = s:match("^%[([^%]]*)%](.*)$")
    if not host then return nil, format('invalid address "%s" (unclosed "[")', s) end
    if host == "" then return nil, "missing host" end
    if not valid_ipv6(host) then return nil, format('invalid IPv6 address "%s"', host) end
  else
    local _, colons = s:gsub(":", "")
    if colons > 1 then
      return nil, format('invalid address "%s" (write IPv6 addresses as [::1]:port)', s)
    end
    host, rest = s:match("^([^:]*)(.*)$")
    if host == "" then return nil, "missing host" end
    if not M.host_kind(host) then return nil, format('invalid host "%s"', host) end
  end
  local port
  if rest == "" then
    if not default_port then return nil, format('missing port in "%s"', s) end
    port = default_port
  else
    local p = rest:match("^:(.*)$")
    if not p then return nil, format('invalid address "%s" (use host:port)', s) end
    if p == "" then return nil, format('missing port in "%s"', s) end
    local err
    port, err = check_port(p)
    if not port then return nil, err end
  end
  return host:lower(), port
end

-- Percent-decoding; nil when an escape is not "%" and two hex digits.
local function unescape(s)
  if s:find("%%%X") or s:find("%%%x%X") or s:find("%%%x?$") then return nil end
  return (s:gsub("%%(%x%x)", function(h) return char(tonumber(h, 16)) end))
end

local CRED_HINT = ' (percent-encode "/", "?", "#" and "@" in credentials)'

function M.parse(s)
  if type(s) ~= "string" then error("url.parse: expected a string, got a " .. type(s), 2) end
  if s:find("[%s%c]") then return nil, "proxy URL contains whitespace or control characters" end
  local scheme, rest = s:match("^(%a[%w+.-]*)://(.*)$")
  if not scheme then
    return nil, "invalid proxy URL: missing scheme (want http://host:port or socks5://host:port)"
  end
  local canon = SCHEMES[scheme:lower()]
  if not canon then
    return nil, format('unsupported scheme "%s" (use http, https, socks5, socks4 or socks4a)',
      scheme)
  end
  local authority, tail = rest:match("^([^/?#]*)(.*)$")
  if tail ~= "" and tail ~= "/" then
    local what = tail:find("^/[^?#]") and "a path" or "a query or fragment"
    -- An unencoded "/", "?" or "#" in a password ends the authority early.
    return nil, "proxy URL must not have " .. what .. (tail:find("@", 1, true) and CRED_HINT or "")
  end
  local userinfo, hostport = authority:match("^(.*)@([^@]*)$")
  if not userinfo then hostport = authority end
  if hostport == "" then return nil, "missing host" end
  local host, port = M.parse_hostport(hostport, DEFAULT_PORT[canon])
  if not host then return nil, port end
  local out = { scheme = canon, host = host, port = port }
  if userinfo then
    local u, p = userinfo:match("^([^:]*):(.*)$")
    if not u then u, p = userinfo, "" end
    u, p = unescape(u), unescape(p)
    if not u or not p then return nil, "invalid percent-escape in credentials" end
    if u == "" then return nil, "empty user name in credentials" end
    -- The core hands credentials to C as NUL-terminated strings.
    if u:find("%z") or p:find("%z") then return nil, "credentials must not contain NUL" end
    if (canon == "http" or canon == "https") and u:find(":", 1, true) then
      return nil, 'user name must not contain ":" (HTTP Basic auth cannot carry it)'
    end
    if canon == "socks5" and (#u > SOCKS5_CRED_MAX or #p > SOCKS5_CRED_MAX) then
      return nil, "SOCKS5 user name and password are limited to 255 bytes each"
    end
    if canon == "socks4" or canon == "socks4a" then
      -- The user id is the only credential SOCKS4 has.
      if userinfo:find(":", 1, true) then
        return nil, "SOCKS4 has no password: give only a user id (socks4://user@host:port)"
      end
      if #u > SOCKS4_USER_MAX then return nil, "SOCKS4 user id is limited to 255 bytes" end
    end
    out.user, out.pass = u, p
  end
  return out
end

-- A backend of a reverse pool: "http://host[:port]" or "https://host[:port]"
-- (a trailing "/" allowed), nothing else: no credentials, no path.
-- Returns { scheme = "backend" | "backend_tls", host, port }.
local BACKEND_SCHEMES = { http = "backend", https = "backend_tls" }
local BACKEND_PORT = { backend = 80, backend_tls = 443 }
-- How displays write a backend's scheme (core/upstream.c's url column).
local SHOWN = { backend = "http", backend_tls = "https" }
M.BACKEND_SCHEMES = { backend = true, backend_tls = true }

function M.parse_backend(s)
  if type(s) ~= "string" then error("url.parse_backend: expected a string, got a " .. type(s), 2) end
  if s:find("[%s%c]") then return nil, "backend URL contains whitespace or control characters" end
  local scheme, rest = s:match("^(%a[%w+.-]*)://(.*)$")
  if not scheme then
    return nil, "invalid backend URL: missing scheme (want http://host:port or https://host:port)"
  end
  local canon = BACKEND_SCHEMES[scheme:lower()]
  if not canon then
    return nil, format('unsupported backend scheme "%s" (use http or https)', scheme)
  end
  local authority, tail = rest:match("^([^/?#]*)(.*)$")
  if tail ~= "" and tail ~= "/" then
    return nil, "a backend URL names host and port only (no path, query or fragment)"
  end
  if authority:find("@", 1, true) then return nil, "a backend URL must not carry credentials" end
  if authority == "" then return nil, "missing host" end
  local host, port = M.parse_hostport(authority, BACKEND_PORT[canon])
  if not host then return nil, port end
  return { scheme = canon, host = host, port = port }
end

-- A form safe for logs, metrics and errors: never the password, and the
-- user only as "***" (user names of rotating proxies carry secrets too).
function M.display(p)
  if type(p) ~= "table" or type(p.scheme) ~= "string" or type(p.host) ~= "string"
    or type(p.port) ~= "number" then
    error("url.display: expected a parsed proxy URL", 2)
  end
  local host = p.host
  if host:find(":", 1, true) then host = "[" .. host .. "]" end
  return format("%s://%s%s:%d", SHOWN[p.scheme] or p.scheme, p.user and "***@" or "", host, p.port)
end

return M
