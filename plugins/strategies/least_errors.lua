-- least_errors: the eligible proxy with the fewest failures, then the
-- fewest consecutive failures; ties rotate.
return {
  name = "least_errors",
  version = "1",
  select = function(pool, req)
    local list, st = pool.proxies, pool.state
    local n = #list
    local start = st.cursor or 0
    local best, best_i, bf, bc
    for k = 1, n do
      local i = (start + k - 1) % n + 1
      local p = list[i]
      if pool:eligible(p, req) then
        local f, c = tonumber(p.c.failures), p.c.consecutive_failures
        if not best or f < bf or (f == bf and c < bc) then
          best, best_i, bf, bc = p, i, f, c
        end
      end
    end
    if best then st.cursor = best_i end
    return best
  end,
}
