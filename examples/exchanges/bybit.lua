-- exchanges/bybit.lua: Bybit answers rate limits with HTTP 200 and a JSON
-- retCode, so bans come from the body, not the status.
return {
  on_response = function(res)
    local body = res.body
    if body and (body:find('"retCode":10006', 1, true) or body:find('"retCode":10018', 1, true)) then
      return { ban = 30 }
    end
    return nil
  end,
}
