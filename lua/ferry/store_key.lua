-- store_key.lua: the key that seals proxy credentials in the store
-- (store { key = env "FERRY_STORE_KEY" } or store { key_file = "/path" }),
-- decoded to the 32 bytes core/store_seal.c wants.  Pure Lua: the config
-- checker uses it, so `ferry check` refuses a bad key as `ferry run` does.
--
--   key      text: 64 hex digits, or base64 of 32 bytes (openssl rand -hex 32,
--            openssl rand -base64 32)
--   key_file the same text (a trailing newline is fine), or exactly 32 raw bytes
--            (head -c 32 /dev/urandom)
--
-- Messages never quote the key.  from_config checks store { ... } as a
-- whole for config.lua.
local byte, char, concat = string.byte, string.char, table.concat

local M = {}

M.LEN = 32

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local B64_VALUE = {}
for i = 1, #B64 do B64_VALUE[byte(B64, i)] = i - 1 end

local function from_hex(s)
  if #s ~= 2 * M.LEN or s:find("[^%x]") then return nil end
  return (s:gsub("%x%x", function(h) return char(tonumber(h, 16)) end))
end

local function from_base64(s)
  s = s:gsub("=+$", "")
  if #s % 4 == 1 or s:find("[^%w+/]") then return nil end
  local out, bits, nbits = {}, 0, 0
  for i = 1, #s do
    bits = bits * 64 + B64_VALUE[byte(s, i)]
    nbits = nbits + 6
    if nbits >= 8 then
      nbits = nbits - 8
      local v = math.floor(bits / 2 ^ nbits)
      out[#out + 1] = char(v)
      bits = bits - v * 2 ^ nbits
    end
  end
  if bits ~= 0 then return nil end -- stray bits: not canonical base64
  local raw = concat(out)
  return #raw == M.LEN and raw or nil
end

local HOW = "64 hex digits or base64 of 32 bytes (openssl rand -hex 32)"

-- The key given as text: 32 bytes, or nil and why not.
function M.decode(text)
  if type(text) ~= "string" then return nil, "expected a string" end
  local s = text:gsub("^%s+", ""):gsub("%s+$", "")
  if s == "" then return nil, "empty; want " .. HOW end
  local raw = from_hex(s) or from_base64(s)
  if not raw then return nil, "not a 32-byte key; want " .. HOW end
  return raw
end

-- The key in a file: 32 raw bytes, or the text forms of decode.
function M.read_file(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, "cannot read: " .. tostring(err) end
  local data = f:read(4096) or ""
  f:close()
  if #data == M.LEN then return data end
  local raw, why = M.decode(data)
  if not raw then
    return nil, (why:gsub("^not a 32%-byte key; want ", "not 32 raw bytes, nor "))
  end
  return raw
end

-- store { path, key, key_file }: the config's store table, or nil and a
-- message for `store: ...`.  The key is kept as a function returning its
-- bytes, so nothing that prints the config table shows it.  resolve: a
-- key_file path relative to the config file.
function M.from_config(t, resolve)
  for _, k in ipairs { "key", "key_file" } do
    if t[k] ~= nil and type(t[k]) ~= "string" then
      return nil, k .. " must be a string, got a " .. type(t[k])
    end
  end
  local s = { path = t.path }
  if t.key == nil and t.key_file == nil then return s end
  if t.key ~= nil and t.key_file ~= nil then return nil, "give key or key_file, not both" end
  if t.path == nil and t.postgres == nil then return nil, "a key needs a path or postgres" end
  local raw, why
  if t.key ~= nil then
    raw, why = M.decode(t.key)
  else
    s.key_file = resolve(t.key_file)
    raw, why = M.read_file(s.key_file)
  end
  if not raw then return nil, (t.key and "key: " or "key_file: ") .. why end
  s.key = function() return raw end
  return s
end

return M
