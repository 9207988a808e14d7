-- pattern.lua: an endless, non-repeating-looking byte stream that specs
-- send and check byte for byte.  The stream is a pseudo-random block of
-- a prime length (so it never lines up with pipe or buffer sizes), seeded
-- per stream, repeated; slice(off, n) is the stream's bytes [off, off+n).
local M = {}

M.PERIOD = 65521

local function block(seed)
  local t, x = {}, seed % 2147483647
  if x == 0 then x = 1 end
  for i = 1, M.PERIOD do
    x = (x * 16807) % 2147483647 -- Park-Miller
    t[i] = string.char(x % 256)
  end
  local b = table.concat(t)
  return b .. b -- two periods: any slice up to PERIOD bytes is one sub()
end

local cache = {}

-- Bytes [off, off+n) of stream `seed`; n <= PERIOD.
function M.slice(seed, off, n)
  assert(n <= M.PERIOD)
  local b = cache[seed]
  if not b then
    b = block(seed)
    cache[seed] = b
  end
  local start = off % M.PERIOD
  return b:sub(start + 1, start + n)
end

return M
