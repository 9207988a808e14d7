-- weighted_random: a proxy of weight 3 is chosen three times as often as
-- one of weight 1.  init builds Vose's alias table once per pool, so a
-- draw is O(1): one uniform index and one coin.  Ineligible draws are
-- retried a few times (rejection keeps the weights exact among the
-- eligible); when they keep missing, most proxies are unusable and a
-- weighted scan over the eligible ones decides.
local random = math.random
local tonumber = tonumber

local DRAWS = 4

-- Weights come from the config (>= 1); anything else counts as nothing.
local function weight_of(p)
  local w = tonumber(p.weight) or 1
  if w ~= w or w < 0 then return 0 end
  return w
end

-- Alias table: column i keeps itself with probability prob[i], else
-- hands over to alias[i].  Rebuilt when the proxy list is replaced or
-- changes size, so a strategy never draws from a stale table.
local function build(pool)
  local st, list = pool.state, pool.proxies
  local n = #list
  local total = 0
  for i = 1, n do total = total + weight_of(list[i]) end
  st.list, st.n, st.prob, st.alias = list, n, nil, nil
  if n == 0 or total <= 0 then return st end
  local prob, alias, scaled = {}, {}, {}
  local small, large = {}, {}
  for i = 1, n do
    local s = weight_of(list[i]) * n / total
    scaled[i] = s
    if s < 1 then small[#small + 1] = i else large[#large + 1] = i end
  end
  while #small > 0 and #large > 0 do
    local s = small[#small]
    small[#small] = nil
    local l = large[#large]
    prob[s], alias[s] = scaled[s], l
    scaled[l] = scaled[l] + scaled[s] - 1
    if scaled[l] < 1 then
      large[#large] = nil
      small[#small + 1] = l
    end
  end
  -- What is left is 1 up to rounding: keeps its whole column.
  for _, i in ipairs(large) do prob[i], alias[i] = 1, i end
  for _, i in ipairs(small) do prob[i], alias[i] = 1, i end
  st.prob, st.alias = prob, alias
  return st
end

local function table_for(pool)
  local st = pool.state
  if st.list ~= pool.proxies or st.n ~= #pool.proxies then return build(pool) end
  return st
end

-- Weighted choice among the eligible proxies only: O(n), no allocation.
local function scan(pool, req)
  local list = pool.proxies
  local sum, any = 0, nil
  for i = 1, #list do
    local p = list[i]
    if pool:eligible(p, req) then
      sum = sum + weight_of(p)
      any = p
    end
  end
  if not any then return nil end
  if sum <= 0 then return any end -- only weightless ones left: still usable
  local x = random() * sum
  for i = 1, #list do
    local p = list[i]
    if pool:eligible(p, req) then
      x = x - weight_of(p)
      if x < 0 then return p end
    end
  end
  return any -- x landed on the upper edge through rounding
end

return {
  name = "weighted_random",
  version = "1",
  init = function(pool) build(pool) end,
  select = function(pool, req)
    local list = pool.proxies
    local n = #list
    if n == 0 then return nil end
    local st = table_for(pool)
    local prob, alias = st.prob, st.alias
    if prob then
      for _ = 1, DRAWS do
        local i = random(n)
        if random() >= prob[i] then i = alias[i] end
        local p = list[i]
        if pool:eligible(p, req) then return p end
      end
    end
    return scan(pool, req)
  end,
}
