-- round_robin: each eligible proxy in turn.
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
