-- hash: the same destination (host:port) always goes through the same
-- proxy while that proxy is eligible.  Rendezvous hashing: each proxy
-- scores hash(destination, proxy id) and the highest wins, so when a
-- proxy drops out only the destinations it carried move elsewhere.
local bit = require("bit")

local bxor, tobit = bit.bxor, bit.tobit
local byte = string.byte

local function fnv1a(s, seed)
  local h = tobit(seed)
  for i = 1, #s do
    h = tobit(bxor(h, byte(s, i)) * 16777619)
  end
  -- Final mix so nearby seeds spread out.
  h = bxor(h, bit.rshift(h, 15))
  h = tobit(h * 0x2c1b3c6d)
  return bxor(h, bit.rshift(h, 12))
end

return {
  name = "hash",
  version = "1",
  select = function(pool, req)
    local key = req.host .. ":" .. tostring(req.port)
    local best, best_score
    for _, p in ipairs(pool.proxies) do
      if pool:eligible(p, req) then
        local score = fnv1a(key, p.id * 2654435761 % 4294967296)
        if not best or score > best_score then
          best, best_score = p, score
        end
      end
    end
    return best
  end,
}
