-- scopes.lua: who may call which admin endpoint -- the one table.
--
-- A token of admin { tokens = { { token = ..., scope = { ... } } } } grants
-- the scopes it lists; the old single admin { token = ... } grants
-- "admin".  The router (ferry.admin) answers 401 without a valid token
-- and 403 (FERRY-7020) when the token lacks the endpoint's scope.  The
-- console's unix socket (mode 0600) is trusted with every scope.  Pure
-- Lua: the config checker reads NAMES too.
local M = {}

-- The scopes a token may list, and what each grants.
M.NAMES = {
  broker = "the broker API: lease a proxy, report feedback",
  metrics = "GET /metrics",
  ["inventory:read"] = "read the proxy inventory (GET /api/v1/proxies...)",
  admin = "everything: the console, reload, inventory changes, and all of the above",
}

-- "METHOD /path" (a trailing "*": any id after the prefix) -> the scope
-- it needs; "public" needs no token.  A route without an entry here is
-- refused at registration (ferry.admin.route), so none is left open.
M.ENDPOINTS = {
  ["GET /health"] = "public",
  ["GET /metrics"] = "metrics",
  ["POST /api/v1/proxy/request"] = "broker",
  ["POST /api/v1/proxy/feedback"] = "broker",
  ["GET /api/v1/proxies"] = "inventory:read",
  ["GET /api/v1/proxies/*"] = "inventory:read",
  ["POST /api/v1/proxies"] = "admin",
  ["POST /api/v1/proxies/*"] = "admin",
  ["DELETE /api/v1/proxies/*"] = "admin",
  ["POST /api/v1/reload"] = "admin",
  ["POST /api/v1/console"] = "admin",
}

-- Whether a token with the scope set `granted` may use scope `needed`.
function M.allows(granted, needed)
  return needed == "public" or granted.admin == true or granted[needed] == true
end

return M
