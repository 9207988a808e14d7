-- health_score (the default): the eligible proxy with the best health
-- score (ferry.health), preferring those at or above MIN_SCORE.  Scores
-- within TIE points of the best count as equal; among equals the one
-- with fewest active connections wins, then rotation, so a pool of
-- healthy proxies shares the load instead of sending it all to one.
local health = require("ferry.health")

local score_of = health.score
local TIE = 5

return {
  name = "health_score",
  version = "1",
  select = function(pool, req)
    local list, st = pool.proxies, pool.state
    local n = #list
    if n == 0 then return nil end
    local now, ceiling = pool.now(), pool.latency_ceiling
    local start = st.cursor or 0
    local best, best_i, best_score, best_active
    for k = 1, n do
      local i = (start + k - 1) % n + 1
      local p = list[i]
      if pool:eligible(p, req) then
        local s = score_of(p.c, ceiling, now)
        local a = p.c.active
        local better
        if not best then
          better = true
        elseif (s >= health.MIN_SCORE) ~= (best_score >= health.MIN_SCORE) then
          better = s >= health.MIN_SCORE
        elseif s > best_score + TIE then
          better = true
        elseif s >= best_score - TIE then
          better = a < best_active
        end
        if better then
          best, best_i, best_score, best_active = p, i, s, a
        end
      end
    end
    if best then st.cursor = best_i end
    return best
  end,
}
