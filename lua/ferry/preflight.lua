-- preflight.lua: what `ferry check` verifies besides the config itself,
-- so that it accepts only what `ferry run` would start with: the log
-- files and the store can be opened for writing (or created), the
-- console socket can be bound.  Nothing is created or changed; nothing
-- is bound (a port or socket another process holds is found by ferry
-- run only).  Two listeners on one address are refused by config.lua.
local ffi = require("ffi")
local cdef = require("ferry.cdef")

local C = ffi.C
local format = string.format

local M = {}

local SQLITE_MAGIC = "SQLite format 3\0"

local function writable(path)
  local err = ffi.new("const char *[1]")
  if C.ferry_path_writable(path, err) ~= cdef.OK then return ffi.string(err[0]) end
  return nil
end

local function bindable(path)
  local err = ffi.new("const char *[1]")
  if C.ferry_socket_path_usable(path, err) ~= cdef.OK then return ffi.string(err[0]) end
  return nil
end

-- An existing store must be an SQLite database (an empty file becomes one).
local function not_a_database(path)
  local f = io.open(path, "rb")
  if not f then return nil end -- missing: ferry run creates it
  local head = f:read(#SQLITE_MAGIC)
  f:close()
  if head == nil or head == "" or head == SQLITE_MAGIC then return nil end
  return "file is not a database"
end

-- nil, or "file: message" for the first problem found.
function M.check(cfg)
  for _, k in ipairs { "file", "access_file" } do
    local path = cfg.log[k]
    if type(path) == "string" and path ~= "" then
      local why = writable(path)
      if why then
        return format("%s:%d: log: cannot open %s: %s [FERRY-0131]", cfg.file,
          cfg.log.line or 0, path, why)
      end
    end
  end
  for _, l in ipairs(cfg.listeners) do
    local why = l.path and bindable(l.path)
    if why then
      return format('%s:%d: admin: cannot listen on unix:%s: %s [FERRY-0133]', cfg.file,
        l.line or 0, l.path, why)
    end
  end
  local s = cfg.store
  if s and type(s.path) == "string" and s.path ~= "" then
    local path = s.path:sub(1, 1) == "/" and s.path or ((cfg.dir or ".") .. "/" .. s.path)
    local why = writable(path) or not_a_database(path)
    if why then
      return format("%s:%d: store: cannot open %s: %s [FERRY-0132]", cfg.file,
        cfg.store_line or 0, path, why)
    end
  end
  return nil
end

return M
