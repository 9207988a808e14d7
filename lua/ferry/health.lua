-- health.lua: the 0-100 health score of a proxy, as the design defines it:
-- 70 % success rate, 30 % latency score (100 at 0 ms, falling linearly to
-- 0 at the pool's latency ceiling), times 0.9 while the last failure is
-- recent.  It reads a struct ferry_proxy (or any table with the same
-- fields) and allocates nothing, because health_score calls it for every
-- proxy of a pool on every request.
local tonumber = tonumber

local M = {
  RECENT_ERROR_WINDOW = 60, -- seconds during which the last failure costs 10 %
  MIN_SCORE = 20,           -- strategies avoid proxies below this when others are above
}

local SUCCESS_WEIGHT, LATENCY_WEIGHT, RECENT_PENALTY = 0.7, 0.3, 0.9

-- The latency part, 0..100.  No sample yet (0) scores 100 so that a new
-- proxy gets traffic and thereby a measurement.
local function latency_score(ms, ceiling_ms)
  if ms <= 0 then return 100 end
  if not ceiling_ms or ceiling_ms <= 0 or ms >= ceiling_ms then return 0 end
  return 100 * (1 - ms / ceiling_ms)
end

-- c: struct ferry_proxy (uint64 counters arrive as cdata, hence tonumber).
-- ceiling_ms: latency that scores 0.  now: seconds, same clock as
-- last_failure_at.
function M.score(c, ceiling_ms, now)
  local ok = tonumber(c.successes) or 0
  local bad = tonumber(c.failures) or 0
  local total = ok + bad
  local rate = total > 0 and ok / total or 1
  local score = rate * 100 * SUCCESS_WEIGHT
    + latency_score(tonumber(c.latency_ewma_ms) or 0, ceiling_ms) * LATENCY_WEIGHT
  local last = tonumber(c.last_failure_at) or 0
  if last > 0 and now and now - last < M.RECENT_ERROR_WINDOW then
    score = score * RECENT_PENALTY
  end
  -- Rounding can leave 100.00000000000001; callers rely on 0..100.
  if score > 100 then return 100 end
  if score < 0 then return 0 end
  return score
end

return M
