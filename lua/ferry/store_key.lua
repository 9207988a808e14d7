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
-- Messages never quote the key.
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

return M
