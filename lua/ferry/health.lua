-- health.lua: the 0-100 health score of a proxy.
-- 70 % success rate, 30 % latency (100 at 0 ms, 0 at the pool's
-- ceiling), and x0.9 while the last failure is recent.
local M = {
  RECENT_ERROR_WINDOW = 60, -- seconds a failure counts as "recent"
  MIN_SCORE = 20,           -- below this a proxy is avoided when others are better
}

function M.score(c, ceiling_ms, now)
  local ok, bad = tonumber(c.successes), tonumber(c.failures)
  local rate = (ok + bad) > 0 and ok / (ok + bad) or 1
  local lat = tonumber(c.latency_ewma_ms)
  local latency_score = 100
  if lat > 0 then
    latency_score = 100 * (1 - lat / ceiling_ms)
    if latency_score < 0 then latency_score = 0 end
  end
  local score = rate * 100 * 0.7 + latency_score * 0.3
  local last = tonumber(c.last_failure_at)
  if last > 0 and now - last < M.RECENT_ERROR_WINDOW then
    score = score * 0.9
  end
  return score
end

return M
