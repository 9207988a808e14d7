-- plugins.lua: find and load strategy and breaker plugins by name.
-- A plugin is a file DIR/KIND/NAME.lua returning a table.  Plugins from
-- the user's directories run interpreted (jit.off) so the core's
-- instruction budget can stop one that loops; the built-in ones stay
-- compiled for speed.
local M = {}

local cache = {}
local builtin_dir = nil

-- The directory whose plugins are trusted to stay JIT-compiled.
function M.set_builtin(dir)
  builtin_dir = dir
end

function M.reset()
  cache = {}
end

local function readable(path)
  local f = io.open(path, "r")
  if f then f:close() return true end
  return false
end

function M.find(kind, name, dirs)
  if type(name) ~= "string" or not name:match("^[%w_]+$") then return nil end
  for _, dir in ipairs(dirs) do
    local path = dir .. "/" .. kind .. "/" .. name .. ".lua"
    if readable(path) then return path, dir end
  end
  return nil
end

local REQUIRED = { strategies = "select", breakers = "on_result" }

function M.load(kind, name, dirs)
  local path, dir = M.find(kind, name, dirs)
  if not path then
    return nil, string.format('no plugin "%s" in %s/', tostring(name),
      table.concat(dirs, "/" .. kind .. "/, ") .. "/" .. kind)
  end
  if cache[path] then return cache[path] end
  local chunk, err = loadfile(path)
  if not chunk then return nil, err end
  if dir ~= builtin_dir then jit.off(chunk, true) end
  setfenv(chunk, setmetatable({}, { __index = _G }))
  local ok, plugin = pcall(chunk)
  if not ok then return nil, path .. ": " .. tostring(plugin) end
  local fn = REQUIRED[kind]
  if type(plugin) ~= "table" or (fn and type(plugin[fn]) ~= "function") then
    return nil, string.format("%s: plugin must return a table with a %s function", path,
      fn or "?")
  end
  if plugin.name ~= name then
    return nil, string.format('%s: plugin name "%s" does not match its file name "%s"', path,
      tostring(plugin.name), name)
  end
  if type(plugin.version) ~= "string" then
    return nil, path .. ": plugin must have a version string"
  end
  cache[path] = plugin
  return plugin
end

return M
