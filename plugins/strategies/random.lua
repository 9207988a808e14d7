-- random: uniform among eligible proxies.  A few random draws find one
-- at once in a mostly healthy pool; a scan from a random start is the
-- fallback when most proxies are unusable.
local random = math.random

return {
  name = "random",
  version = "1",
  select = function(pool, req)
    local list = pool.proxies
    local n = #list
    if n == 0 then return nil end
    for _ = 1, 4 do
      local p = list[random(n)]
      if pool:eligible(p, req) then return p end
    end
    local start = random(n)
    for k = 0, n - 1 do
      local p = list[(start + k - 1) % n + 1]
      if pool:eligible(p, req) then return p end
    end
    return nil
  end,
}
