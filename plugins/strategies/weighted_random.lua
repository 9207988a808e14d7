-- weighted_random: a proxy of weight 3 is chosen three times as often as
-- one of weight 1.  Cumulative weights are built once per pool; draws
-- use binary search, with a weighted scan when draws keep missing.
local random = math.random

local function cumulative(pool)
  local st = pool.state
  if st.cum and st.n == #pool.proxies then return st.cum, st.total end
  local cum, total = {}, 0
  for i, p in ipairs(pool.proxies) do
    total = total + (p.weight or 1)
    cum[i] = total
  end
  st.cum, st.total, st.n = cum, total, #pool.proxies
  return cum, total
end

local function draw(cum, total)
  local x = random() * total
  local lo, hi = 1, #cum
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cum[mid] < x then lo = mid + 1 else hi = mid end
  end
  return lo
end

return {
  name = "weighted_random",
  version = "1",
  init = function(pool) cumulative(pool) end,
  select = function(pool, req)
    local list = pool.proxies
    if #list == 0 then return nil end
    local cum, total = cumulative(pool)
    for _ = 1, 4 do
      local p = list[draw(cum, total)]
      if pool:eligible(p, req) then return p end
    end
    -- Most are unusable: weighted choice among the eligible ones.
    local sum = 0
    for _, p in ipairs(list) do
      if pool:eligible(p, req) then sum = sum + (p.weight or 1) end
    end
    if sum == 0 then return nil end
    local x = random() * sum
    for _, p in ipairs(list) do
      if pool:eligible(p, req) then
        x = x - (p.weight or 1)
        if x <= 0 then return p end
      end
    end
    return nil
  end,
}
