-- match.lua: the host and path tests route() uses to choose a pool, the
-- same rules exchanges (hosts) and reverse listeners follow:
--   match_host(host, pattern, ...)  true when host is one of the patterns:
--     an exact name, or "*.suffix" for any name under suffix (never the
--     bare suffix itself); case does not matter.
--   match_path(path, prefix, ...)   true when the path starts with one of
--     the prefixes on a segment boundary: "/api" takes "/api", "/api/x"
--     and "/api?q", never "/apix"; a prefix ending in "/" takes what
--     starts with it.
local type, select, sub, lower, byte = type, select, string.sub, string.lower, string.byte

local M = {}

local function host_is(host, pat)
  if type(pat) ~= "string" then error("match_host: patterns must be strings", 3) end
  pat = lower(pat)
  if sub(pat, 1, 2) == "*." then
    local suffix = sub(pat, 2) -- ".example.com"
    return #host > #suffix and sub(host, -#suffix) == suffix
  end
  return host == pat
end

function M.host(host, ...)
  if type(host) ~= "string" then return false end
  host = lower(host)
  for i = 1, select("#", ...) do
    if host_is(host, (select(i, ...))) then return true end
  end
  return false
end

local SLASH, QUERY = byte("/"), byte("?")

local function path_is(path, prefix)
  if type(prefix) ~= "string" or prefix == "" then
    error("match_path: prefixes must be non-empty strings", 3)
  end
  local n = #prefix
  if sub(path, 1, n) ~= prefix then return false end
  if #path == n or byte(prefix, n) == SLASH then return true end
  local nxt = byte(path, n + 1)
  return nxt == SLASH or nxt == QUERY
end

function M.path(path, ...)
  if type(path) ~= "string" then return false end
  for i = 1, select("#", ...) do
    if path_is(path, (select(i, ...))) then return true end
  end
  return false
end

return M
