-- hash: the same destination (host:port) always goes through the same
-- proxy while that proxy is eligible.
-- Up to pool.SCAN_MAX proxies: rendezvous hashing.  Each proxy scores
-- mix(hash(destination), proxy id) and the highest wins, so when a proxy
-- drops out only the destinations it carried move elsewhere.
-- Larger pools: jump consistent hashing (Lamping and Veach), O(log n)
-- with no table; an ineligible bucket is re-drawn with a salted key, so
-- again only the destinations of that proxy move.
-- Slow start (ferry.pool): a ramping proxy takes the share `ramp` of the
-- destinations it would carry, always the same ones for a given ramp.
local bit = require("bit")
local ffi = require("ffi")
local poolmod = require("ferry.pool")

local bxor, rshift, tobit = bit.bxor, bit.rshift, bit.tobit
local byte, floor = string.byte, math.floor
local u64 = ffi.typeof("uint64_t")

local REDRAWS = 8

local function fnv1a(s)
  local h = tobit(2166136261)
  for i = 1, #s do
    h = tobit(bxor(h, byte(s, i)) * 16777619)
  end
  return h
end

-- A 32-bit finalizer (after MurmurHash3's): nearby inputs spread out.
local function mix(h)
  h = bxor(h, rshift(h, 16))
  h = tobit(h * 0x45d9f3b)
  h = bxor(h, rshift(h, 16))
  h = tobit(h * 0x45d9f3b)
  return bxor(h, rshift(h, 16))
end

-- Bucket 0..n-1 of a 64-bit key.
local function jump(key, n)
  local b, j = -1, 0
  while j < n do
    b = j
    key = key * 2862933555777941757ULL + 1
    j = floor((b + 1) * (2147483648 / (tonumber(rshift(key, 33)) + 1)))
  end
  return b
end

local function rendezvous(pool, req, h)
  local best, best_score
  for _, p in ipairs(pool.proxies) do
    if pool:eligible(p, req) then
      local score = mix(bxor(h, tobit(p.id * 2654435761 % 4294967296)))
      if not best or score > best_score then
        best, best_score = p, score
      end
    end
  end
  return best
end

return {
  name = "hash",
  version = "2",
  select = function(pool, req)
    local h = fnv1a(req.host .. ":" .. tostring(req.port))
    -- Slow start admits a ramping proxy by a draw from this seed: the
    -- same destinations each time, more of them as the ramp grows.
    req.ramp_seed = h
    local list = pool.proxies
    local n = #list
    if n > poolmod.SCAN_MAX then
      for salt = 0, REDRAWS - 1 do
        local key = u64(bit.band(mix(h + salt * 0x9e3779b9), 0x7fffffff)) * 4294967296ULL +
          u64(bit.band(h, 0x7fffffff))
        local p = list[jump(key, n) + 1]
        if pool:eligible(p, req) then return p end
      end
    end
    return rendezvous(pool, req, h)
  end,
}
