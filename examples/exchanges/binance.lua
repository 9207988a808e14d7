-- exchanges/binance.lua: the per-exchange script of examples/exchanges.lua.
-- Hooks run inside ferry for every request to the exchange, sandboxed:
-- they must be quick and never do I/O (there is no io, os.execute or
-- require here).

-- Body markers Binance uses when it blocks an address.
local BAN_MARKERS = { "IP banned", "Way too many requests", '"code":-1003' }

local function latency(p) return p.c.latency_ewma_ms end

-- Request weights of the rate budget (Binance's docs list each
-- endpoint's); 1 for the rest.
local WEIGHTS = { ["/api/v3/depth"] = 5, ["/api/v3/exchangeInfo"] = 20,
                  ["/api/v3/ticker/24hr"] = 40 }

return {
  -- Runs before the pool is chosen.  Return nil (the exchange's pool, no
  -- changes), false (refuse: 403), or a table: { pool = "name" } to use
  -- another pool ("direct" for none), and/or header edits.
  on_request = function(req)
    -- The example's node listeners are the proxies: out they go.
    if req.listener ~= "front" then return { pool = "direct" } end
    if req.path:find("^/sapi/") then
      return { pool = "binance_sapi" }
    end
    return { headers = { add = { ["X-MBX-Source"] = "ferry" }, drop = { "x-debug" } } }
  end,

  -- Runs instead of the pool's strategy first: return an eligible proxy
  -- of the pool, or nil to let the strategy choose.  Orders take the
  -- fastest node; everything else is the strategy's.
  select = function(pool, req)
    if req.method == "POST" and req.path == "/api/v3/order" then
      return pool:lowest(req, latency)
    end
    return nil
  end,

  -- The tokens of the exchange's rate budget this request costs (its
  -- weight).  An error or a junk answer counts 1 (FERRY-4020).
  weight = function(req)
    return WEIGHTS[req.path:match("^[^?]*")] or 1
  end,

  -- Runs after each response through a proxy.  res: status, body (the
  -- first 4 KiB at most, or nil), header(name), latency_ms; proxy: id,
  -- label, display.  Return "ok" or "failure" to overrule how the
  -- breaker counts it, { ban = seconds } to ban this proxy for Binance
  -- only, or nil for no opinion (the ban = { ... } rules then apply).
  on_response = function(res, proxy)
    local _ = proxy -- proxy.id, proxy.label, proxy.display: for rules about one proxy
    -- The weight Binance counted for this address in its minute: the
    -- pair's budget is capped at limit - used ({ used = N }).
    local used = tonumber(res.header("x-mbx-used-weight-1m"))
    if res.status == 418 or res.status == 429 then
      -- 418 is "you ignored our 429s".  Retry-After says for how long;
      -- the core doubles the ban when it happens again, up to max_backoff.
      return { ban = tonumber(res.header("retry-after")) or 60, used = used }
    end
    local body = res.body
    if body then
      for _, marker in ipairs(BAN_MARKERS) do
        if body:find(marker, 1, true) then return { ban = 120 } end
      end
      if res.status == 503 and body:find("maintenance", 1, true) then
        return "ok" -- down for everyone: not the proxy's fault
      end
    end
    if used then return { used = used } end
    return nil
  end,
}
