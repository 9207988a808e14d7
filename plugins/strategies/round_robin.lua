-- round_robin: each eligible proxy in turn.  The cursor lives in
-- pool.state so it survives between requests; skipping ineligible
-- proxies keeps the cycle fair among the ones that are left.  O(1)
-- amortized while most proxies are usable.
return {
  name = "round_robin",
  version = "1",
  select = function(pool, req)
    local list, st = pool.proxies, pool.state
    local n = #list
    local i = st.cursor or 0
    for _ = 1, n do
      i = i % n + 1
      local p = list[i]
      if pool:eligible(p, req) then
        st.cursor = i
        return p
      end
    end
    return nil
  end,
}
