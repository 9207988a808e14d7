-- random: uniform among the eligible proxies.  A few random draws find
-- one at once in a mostly usable pool (rejection sampling keeps the
-- choice uniform); 16 of them still do when a third or more of the pool
-- is out (down, banned, or spent its rate budget), where a full count
-- of 10 000 proxies would cost a thousand times a draw.  When they all miss, most proxies are unusable: count
-- the eligible ones and take the k-th, which stays uniform where a scan
-- from a random start would favour a proxy that follows a run of dead ones.
local random = math.random

local DRAWS = 16

return {
  name = "random",
  version = "1",
  select = function(pool, req)
    local list = pool.proxies
    local n = #list
    if n == 0 then return nil end
    for _ = 1, DRAWS do
      local p = list[random(n)]
      if pool:eligible(p, req) then return p end
    end
    local count = 0
    for i = 1, n do
      if pool:eligible(list[i], req) then count = count + 1 end
    end
    if count == 0 then return nil end
    local k = random(count)
    for i = 1, n do
      local p = list[i]
      if pool:eligible(p, req) then
        k = k - 1
        if k == 0 then return p end
      end
    end
    return nil
  end,
}
