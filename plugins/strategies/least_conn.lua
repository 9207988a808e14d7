-- least_conn: the eligible proxy with the fewest active connections;
-- ties are broken by rotation so equal proxies share the load.
return {
  name = "least_conn",
  version = "1",
  select = function(pool, req)
    local list, st = pool.proxies, pool.state
    local n = #list
    local start = st.cursor or 0
    local best, best_i, best_active
    for k = 1, n do
      local i = (start + k - 1) % n + 1
      local p = list[i]
      if pool:eligible(p, req) then
        local a = p.c.active
        if not best or a < best_active then
          best, best_i, best_active = p, i, a
        end
      end
    end
    if best then st.cursor = best_i end
    return best
  end,
}
