-- The store key from the config (lua/ferry/store_key.lua): 64 hex digits
-- or base64 of 32 bytes as text, or 32 raw bytes in a file; anything
-- else refused without quoting the key.
local store_key = require("ferry.store_key")

local RAW = ("0123456789abcdef0123456789abcdef"):gsub("..", function(h)
  return string.char(tonumber(h, 16)) end) .. string.rep("\255", 16)
local HEX = (RAW:gsub(".", function(c) return string.format("%02x", c:byte()) end))
local B64 = "ASNFZ4mrze8BI0VniavN7/////////////////////8="

local function tmpfile(content)
  local path = os.tmpname()
  local f = assert(io.open(path, "wb"))
  f:write(content)
  f:close()
  return path
end

describe("store_key", function()
  it("decodes hex (any case) and base64 to the same 32 bytes", function()
    assert.equal(32, #RAW)
    assert.equal(RAW, store_key.decode(HEX))
    assert.equal(RAW, store_key.decode(HEX:upper()))
    assert.equal(RAW, store_key.decode(B64))
    assert.equal(RAW, store_key.decode(B64:sub(1, -2))) -- unpadded
    assert.equal(RAW, store_key.decode("  " .. HEX .. "\n"))
  end)

  it("refuses what is not a 32-byte key, never quoting it", function()
    for _, bad in ipairs { "", "   ", HEX:sub(1, 62), HEX .. "00", HEX:sub(1, 63) .. "g",
                           B64:sub(1, 40), "ASNFZ4mrze8BI0VniavN7/////////////////////9=",
                           "this is a passphrase, not a key", string.rep("x", 32) } do
      local raw, why = store_key.decode(bad)
      assert.is_nil(raw, bad)
      assert.is_string(why)
      assert.is_true(#bad < 8 or not why:find(bad, 1, true), why)
    end
    assert.is_nil((store_key.decode(42)))
  end)

  it("reads a file of 32 raw bytes or of the text forms", function()
    for _, content in ipairs { RAW, HEX .. "\n", B64 .. "\n" } do
      local path = tmpfile(content)
      assert.equal(RAW, store_key.read_file(path))
      os.remove(path)
    end
    local path = tmpfile(RAW .. "x")
    local raw, why = store_key.read_file(path)
    os.remove(path)
    assert.is_nil(raw)
    assert.matches("not 32 raw bytes, nor 64 hex digits", why)
    raw, why = store_key.read_file("/nonexistent/ferry.key")
    assert.is_nil(raw)
    assert.matches("^cannot read: ", why)
  end)
end)
