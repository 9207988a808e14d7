-- exchanges/okx.lua: OKX bans come from the exchange's ban rule (HTTP 429
-- or "Too Many Requests" in the body); the script only keeps the
-- example's nodes from sending OKX traffic round the pool again.
return {
  on_request = function(req)
    if req.listener ~= "front" then return { pool = "direct" } end
    return nil
  end,
}
