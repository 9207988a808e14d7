-- health_score (the default): the eligible proxy with the best health
-- score (ferry.health), preferring those at or above MIN_SCORE; if none
-- reaches it, the best of the rest.  Scores within TIE points of the best
-- count as equal, and among equals the fewest active connections win,
-- then rotation: a pool of healthy proxies shares the load instead of
-- sending it all to whichever scores a hair higher.
--
-- Two passes: the first scores every eligible proxy and finds the best,
-- the second picks among those close to it.  A single pass comparing
-- each proxy with the running best would let the winner drift down a
-- chain of "ties" (100, 96, 92, ...) well below the real best.
local health = require("ferry.health")

local score_of = health.score
local MIN_SCORE = health.MIN_SCORE
local TIE = 5
local SCAN_MAX = require("ferry.pool").SCAN_MAX
-- Below any floor, even best - TIE of a best score near 0.
local INELIGIBLE = -math.huge

return {
  name = "health_score",
  version = "1",
  select = function(pool, req)
    local list, st = pool.proxies, pool.state
    local n = #list
    if n == 0 then return nil end
    -- Scores of this call, in a table reused across calls (no garbage).
    local scores = st.scores
    if not scores then
      scores = {}
      st.scores = scores
    end
    -- Large pools: score a random sample of eligible proxies.
    local checked = false
    if n > SCAN_MAX then
      local cand, m = pool:sample(req)
      if m > 0 then list, n, checked = cand, m, true end
    end
    -- Traffic of an exchange is scored on what that exchange saw of each
    -- proxy (its (proxy, exchange) pair), so a proxy failing on one
    -- exchange keeps its score on the others.
    local exid = req and req.exid or 0
    local by_pair = exid ~= 0 and pool.pair_of ~= nil
    local now, ceiling = pool.now(), pool.latency_ceiling
    local best_all, best_good = INELIGIBLE, INELIGIBLE
    for i = 1, n do
      local p = list[i]
      local s = INELIGIBLE
      if checked or pool:eligible(p, req) then
        s = score_of(by_pair and pool:pair(p, exid) or p.c, ceiling, now)
        if s > best_all then best_all = s end
        if s >= MIN_SCORE and s > best_good then best_good = s end
      end
      scores[i] = s
    end
    if best_all == INELIGIBLE then return nil end
    local floor
    if best_good ~= INELIGIBLE then
      -- Healthy ones exist: an unhealthy proxy is never "tied" with them.
      floor = best_good - TIE
      if floor < MIN_SCORE then floor = MIN_SCORE end
    else
      floor = best_all - TIE
    end
    -- Among the tied, fewest active; equal counts go to the next in
    -- rotation after the previous winner.
    local start = st.cursor or 0
    local best, best_i, best_active
    for k = 1, n do
      local i = (start + k - 1) % n + 1
      if scores[i] >= floor then
        local a = list[i].c.active
        if not best or a < best_active then
          best, best_i, best_active = list[i], i, a
        end
      end
    end
    st.cursor = best_i
    return best
  end,
}
