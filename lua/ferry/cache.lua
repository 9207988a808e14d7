-- cache.lua: the HTTP caches (core/cache.c) as Lua data, for the console
-- (cache.stats, cache.purge) and the admin API (/api/v1/cache).
local ffi = require("ffi")
require("ferry.cdef")

local C = ffi.C
local tonumber, type = tonumber, type

local M = {}

local FIELDS = { "hits", "misses", "stale", "revalidated", "coalesced", "evictions", "stored",
  "purged", "too_large", "bypass", "bytes", "entries", "size", "max_object",
  "filling", "fill_refused" }
M.FIELDS = FIELDS

-- Longest purge prefix taken (a key is a URL; longer prefixes match nothing useful).
M.PREFIX_MAX = 4096

-- Every cache: { name, kind = "pool" | "listener", hits, misses, ... }.
function M.stats()
  local out = {}
  local st = ffi.new("struct ferry_cache_stats")
  local name, kind = ffi.new("const char *[1]"), ffi.new("int[1]")
  for i = 0, C.ferry_cache_count() - 1 do
    if C.ferry_cache_info(i, st, name, kind) == C.FERRY_OK then
      local row = { name = ffi.string(name[0]),
                    kind = kind[0] == C.FERRY_CACHE_LISTENER and "listener" or "pool" }
      for _, f in ipairs(FIELDS) do row[f] = tonumber(st[f]) end
      out[#out + 1] = row
    end
  end
  return out
end

-- Drop the entries whose key (http://host[:port]/target) starts with
-- prefix ("" or nil: all; "/x": the target /x... of any host) in the cache
-- `name` (nil: every cache).  Returns how many went, or nil and why not.
function M.purge(prefix, name)
  prefix = prefix or ""
  if type(prefix) ~= "string" or #prefix > M.PREFIX_MAX or prefix:find("[%c ]") then
    return nil, "prefix: a URL or a path (\"/img/\"), at most 4096 bytes, no spaces"
  end
  if name ~= nil and type(name) ~= "string" then return nil, "cache: a pool or listener name" end
  return tonumber(C.ferry_cache_purge(name, prefix))
end

return M
