-- exchanges/binance.lua: the per-exchange script of examples/exchanges.lua.
-- Hooks run inside ferry for every request to the exchange; they must be
-- quick and never do I/O (no io, os.execute or require here).

-- Body markers the exchange uses when it blocks an address.
local BAN_MARKERS = { "IP banned", "Way too many requests", "-1003" }

return {
  -- Tag our traffic and strip debugging headers before they leave.
  -- Return false to refuse the request, { pool = "name" } to send it
  -- through another pool.
  on_request = function(req)
    if req.path:find("^/sapi/") then
      return { pool = "binance_sapi" }
    end
    return { headers = { add = { ["X-MBX-Source"] = "ferry" }, drop = { "x-debug" } } }
  end,

  -- A 418 is Binance's "you ignored our 429s": ban the proxy for as long
  -- as Retry-After says (the core doubles it on repeat bans).  A 429 or
  -- a body marker bans it for a minute.  Anything else: no opinion, the
  -- pool's breaker sees 5xx as failures as usual.
  on_response = function(res, proxy)
    local _ = proxy -- proxy.id, proxy.label, proxy.display are there for logging rules
    if res.status == 418 or res.status == 429 then
      return { ban = tonumber(res.header("retry-after")) or 60 }
    end
    if res.body then
      for _, marker in ipairs(BAN_MARKERS) do
        if res.body:find(marker, 1, true) then return { ban = 120 } end
      end
    end
    if res.status == 503 and res.body and res.body:find("maintenance", 1, true) then
      return "ok" -- the exchange is down for everyone: not the proxy's fault
    end
    return nil
  end,
}
