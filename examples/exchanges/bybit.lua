-- exchanges/bybit.lua: Bybit answers rate limits with HTTP 200 and a JSON
-- retCode, so its bans come from the body, not the status.  Sandboxed,
-- no I/O: see exchanges/binance.lua for the hooks.
local RATE_LIMITED = { '"retCode":10006', '"retCode":10018' }

return {
  on_request = function(req)
    -- The example's node listeners are the proxies: out they go.
    if req.listener ~= "front" then return { pool = "direct" } end
    return nil
  end,

  on_response = function(res)
    local body = res.body
    if not body then return nil end
    for _, code in ipairs(RATE_LIMITED) do
      if body:find(code, 1, true) then
        -- The limit resets at this time (ms since the epoch): ban until then.
        local reset = tonumber(res.header("x-bapi-limit-reset-timestamp"))
        local secs = reset and reset / 1000 - os.time()
        return { ban = (secs and secs > 0 and secs < 3600) and secs or 30 }
      end
    end
    return nil
  end,
}
