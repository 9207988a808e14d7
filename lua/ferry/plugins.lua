-- plugins.lua: find, load and list strategy and breaker plugins by name.
-- A plugin is a file DIR/KIND/NAME.lua returning a table.  Directories
-- are searched in order, so a user directory listed before the built-in
-- one can replace a built-in plugin.  Plugins from the user's
-- directories run interpreted (jit.off) so the core's instruction budget
-- can stop one that loops; the built-in ones stay compiled for speed.
local ffi = require("ffi")
local budget = require("ferry.budget")

local type, pairs, ipairs, tostring = type, pairs, ipairs, tostring
local pcall, loadfile, setfenv, setmetatable = pcall, loadfile, setfenv, setmetatable
local format, concat, sort = string.format, table.concat, table.sort

local M = {}

-- What each kind of plugin must provide besides name and version.
-- Breakers may also bring `defaults` (a table) and `check` (a function
-- judging a pool's settings when the config is applied).
local KINDS = {
  strategies = { "select" },
  breakers = { "should_open" },
}

local cache = {}       -- path -> loaded plugin table
local builtin_dir = nil

-- The directory whose plugins are trusted to stay JIT-compiled.
function M.set_builtin(dir)
  builtin_dir = dir
end

-- Forget every loaded plugin so the next load re-reads the files (reload).
function M.reset()
  cache = {}
end

-- Only plain names: "../x" or "a/b" must not reach outside a plugin dir.
local function valid_name(name)
  return type(name) == "string" and name:match("^[%w_]+$") ~= nil
end

local function readable(path)
  local f = io.open(path, "r")
  if not f then return false end
  -- io.open succeeds on a directory; only reading it fails (EISDIR).
  -- An empty file reads as plain end-of-file, without an error message.
  local _, err = f:read(1)
  f:close()
  return err == nil
end

-- The first DIR/KIND/NAME.lua that exists, and its DIR; or nil.
function M.find(kind, name, dirs)
  if not KINDS[kind] or not valid_name(name) then return nil end
  for _, dir in ipairs(dirs or {}) do
    local path = dir .. "/" .. kind .. "/" .. name .. ".lua"
    if readable(path) then return path, dir end
  end
  return nil
end

local function searched(kind, dirs)
  local t = {}
  for i, dir in ipairs(dirs or {}) do t[i] = dir .. "/" .. kind .. "/" end
  return #t > 0 and concat(t, ", ") or "(no plugin directories)"
end

-- Errors raised by the chunk usually carry "path:line:" already.
local function with_path(path, msg)
  msg = tostring(msg)
  if msg:sub(1, #path) == path then return msg end
  return path .. ": " .. msg
end

local function check(plugin, kind, name, path)
  if type(plugin) ~= "table" then
    local fn = KINDS[kind][1]
    if fn then
      return format("%s: plugin must return a table with a %s function", path, fn)
    end
    return format("%s: plugin must return a table, got %s", path, type(plugin))
  end
  for _, fn in ipairs(KINDS[kind]) do
    if type(plugin[fn]) ~= "function" then
      return format("%s: plugin must return a table with a %s function", path, fn)
    end
  end
  if type(plugin.name) ~= "string" then
    return format("%s: plugin must have a name string", path)
  end
  if plugin.name ~= name then
    return format('%s: plugin name "%s" does not match its file name "%s"', path,
      plugin.name, name)
  end
  if type(plugin.version) ~= "string" then
    return format("%s: plugin must have a version string", path)
  end
  if plugin.init ~= nil and type(plugin.init) ~= "function" then
    return format("%s: plugin init must be a function", path)
  end
  if plugin.check ~= nil and type(plugin.check) ~= "function" then
    return format("%s: plugin check must be a function", path)
  end
  if plugin.defaults ~= nil and type(plugin.defaults) ~= "table" then
    return format("%s: plugin defaults must be a table", path)
  end
  if plugin.ignores_successes ~= nil and type(plugin.ignores_successes) ~= "boolean" then
    return format("%s: plugin ignores_successes must be a boolean", path)
  end
  return nil
end

-- The plugin table for KIND/NAME, or nil and an error naming the file.
-- Each file runs once (until reset) in its own environment that falls
-- back to the normal globals, so a plugin's stray globals stay its own.
function M.load(kind, name, dirs)
  if not KINDS[kind] then
    return nil, format('unknown plugin kind "%s"', tostring(kind))
  end
  local path, dir = M.find(kind, name, dirs)
  if not path then
    return nil, format('no plugin "%s" in %s', tostring(name), searched(kind, dirs))
  end
  local cached = cache[path]
  if cached then return cached end
  local chunk, lerr = loadfile(path)
  if not chunk then return nil, with_path(path, lerr) end
  local env = setmetatable({}, { __index = _G })
  if dir ~= builtin_dir then
    jit.off(chunk, true)
    -- A loop around pcall must not swallow the budget's error.
    env.pcall, env.xpcall, env.coroutine = budget.pcall, budget.xpcall, budget.coroutine()
  end
  setfenv(chunk, env)
  local ok, plugin = pcall(chunk)
  if not ok then return nil, with_path(path, plugin) end
  local err = check(plugin, kind, name, path)
  if err then return nil, err end
  cache[path] = plugin
  return plugin
end

-- Directory listing through libc: LuaJIT has no lfs, and io.popen("ls")
-- would fork from inside the daemon.  The struct dirent layout is per
-- OS; the functions are declared under private names (asm redirects) so
-- they cannot clash with another module's cdef of opendir/readdir.
local dirent_ok, dirent_err = false, nil
do
  local decl
  if ffi.os == "Linux" then
    -- 64-bit layout; 32-bit glibc gives it through readdir64.
    local rd = ffi.abi("64bit") and "readdir" or "readdir64"
    decl = [[
struct ferry_dirent { uint64_t d_ino; int64_t d_off; unsigned short d_reclen;
                      unsigned char d_type; char d_name[256]; };
void *ferry_opendir(const char *name) __asm__("opendir");
struct ferry_dirent *ferry_readdir(void *dir) __asm__("]] .. rd .. [[");
int ferry_closedir(void *dir) __asm__("closedir");
]]
  elseif ffi.os == "OSX" then
    local sfx = ffi.arch == "x64" and "$INODE64" or ""
    decl = [[
struct ferry_dirent { uint64_t d_ino; uint64_t d_seekoff; uint16_t d_reclen;
                      uint16_t d_namlen; uint8_t d_type; char d_name[1024]; };
void *ferry_opendir(const char *name) __asm__("opendir]] .. sfx .. [[");
struct ferry_dirent *ferry_readdir(void *dir) __asm__("readdir]] .. sfx .. [[");
int ferry_closedir(void *dir) __asm__("closedir");
]]
  end
  if decl then
    if pcall(ffi.typeof, "struct ferry_dirent") then
      dirent_ok = true -- declared by an earlier load of this module (reload)
    else
      dirent_ok, dirent_err = pcall(ffi.cdef, decl)
    end
  else
    dirent_err = "listing directories is not supported on " .. ffi.os
  end
end

local function each_name(dir, fn)
  local C = ffi.C
  local d = C.ferry_opendir(dir)
  if d == nil then return end -- a missing directory simply has no plugins
  while true do
    local e = C.ferry_readdir(d)
    if e == nil then break end
    fn(ffi.string(e.d_name))
  end
  C.ferry_closedir(d)
end

-- Sorted names of the KIND plugins found in dirs (each name once, even
-- when a user directory shadows a built-in).  nil, err if unsupported.
function M.list(kind, dirs)
  if not KINDS[kind] then
    return nil, format('unknown plugin kind "%s"', tostring(kind))
  end
  if not dirent_ok then return nil, tostring(dirent_err) end
  local seen = {}
  for _, dir in ipairs(dirs or {}) do
    local sub = dir .. "/" .. kind
    each_name(sub, function(file)
      local name = file:match("^(.+)%.lua$")
      if name and valid_name(name) and readable(sub .. "/" .. file) then
        seen[name] = true
      end
    end)
  end
  local names = {}
  for name in pairs(seen) do names[#names + 1] = name end
  sort(names)
  return names
end

return M
