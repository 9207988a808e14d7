-- latency: the eligible proxy with the lowest connect+handshake latency
-- (EWMA).  A proxy without a sample yet counts as fastest, so every
-- proxy gets measured; ties rotate.
return {
  name = "latency",
  version = "1",
  select = function(pool, req)
    local list, st = pool.proxies, pool.state
    local n = #list
    local start = st.cursor or 0
    local best, best_i, best_ms
    for k = 1, n do
      local i = (start + k - 1) % n + 1
      local p = list[i]
      if pool:eligible(p, req) then
        local ms = p.c.latency_ewma_ms
        if not best or ms < best_ms then
          best, best_i, best_ms = p, i, ms
        end
      end
    end
    if best then st.cursor = best_i end
    return best
  end,
}
