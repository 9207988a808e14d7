-- scopes.lua: who may call which admin endpoint -- the one table.
--
-- A token of admin { tokens = { { token = ..., scope = { ... } } } } grants
-- the scopes it lists; the old single admin { token = ... } grants
-- "admin".  The router (ferry.admin) answers 401 without a valid token
-- and 403 (FERRY-7020) when the token lacks the endpoint's scope.  The
-- console's unix socket (mode 0600) is trusted with every scope.  Pure
-- Lua: the config checker uses tokens() to check admin { token, tokens }.
local M = {}

-- The scopes a token may list, and what each grants.
M.NAMES = {
  broker = "the broker API: lease a proxy, report feedback",
  metrics = "GET /metrics",
  ["inventory:read"] = "read the proxy inventory (GET /api/v1/proxies..., GET /api/v1/rate, " ..
    "GET /api/v1/nodes)",
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
  ["GET /api/v1/rate"] = "inventory:read",
  ["GET /api/v1/cache"] = "inventory:read",
  ["GET /api/v1/nodes"] = "inventory:read",
  ["DELETE /api/v1/cache"] = "admin",
}

-- What an Authorization header can carry after "Bearer " (RFC 9110
-- §11.2 token68): a token with other characters could never be sent.
M.TOKEN68 = "^[%w%-%._~%+/]+=*$"
M.MAX_TOKENS = 64

local function sorted_names()
  local known = {}
  for k in pairs(M.NAMES) do known[#known + 1] = k end
  table.sort(known)
  return table.concat(known, ", ")
end

-- A list without holes or other keys; its length, or nil.
local function list_len(v)
  if type(v) ~= "table" then return nil end
  local n = 0
  for k in pairs(v) do
    if type(k) ~= "number" or k % 1 ~= 0 or k < 1 then return nil end
    n = n + 1
  end
  return n == #v and n or nil
end

-- admin { token, tokens } for config.lua: every token with its scope set,
-- { { token = ..., scopes = { name = true } } }, the old single token as
-- a full "admin" one; or nil and a message for `admin: ...`.  Refuses
-- unknown scopes, short or malformed tokens, and the same token twice.
function M.tokens(t)
  local out, seen = {}, {}
  local function add(field, token, min, granted)
    if type(token) ~= "string" then
      return string.format("%s must be a string, got a %s", field, type(token))
    end
    if #token < min then return string.format("%s: at least %d characters", field, min) end
    if not token:match(M.TOKEN68) then
      return field .. ": only letters, digits and - . _ ~ + / (then = padding) can be sent " ..
        "as a bearer token"
    end
    if seen[token] then return string.format("%s: the same token as %s", field, seen[token]) end
    seen[token] = field
    out[#out + 1] = { token = token, scopes = granted }
  end
  local err = t.token ~= nil and add("token", t.token, 8, { admin = true })
  if err then return nil, err end
  if t.tokens == nil then return out end
  local n = list_len(t.tokens)
  if not n then return nil, "tokens must be a list of { token = ..., scope = { ... } }" end
  if n > M.MAX_TOKENS then
    return nil, string.format("tokens: at most %d tokens, got %d", M.MAX_TOKENS, n)
  end
  for i = 1, n do
    local field, e = string.format("tokens[%d]", i), t.tokens[i]
    if type(e) ~= "table" then return nil, field .. ": expected { token = ..., scope = { ... } }" end
    for k in pairs(e) do
      if k ~= "token" and k ~= "scope" then
        return nil, string.format('%s: unknown field "%s"', field, tostring(k))
      end
    end
    local m = list_len(e.scope)
    if e.scope == nil then return nil, field .. ': scope is required (e.g. { "broker" })' end
    if not m or m == 0 then return nil, field .. ".scope must be a non-empty list of scopes" end
    local granted = {}
    for j = 1, m do
      local s = e.scope[j]
      if not M.NAMES[s] then
        return nil, string.format('%s.scope[%d]: unknown scope "%s" (known: %s)', field, j,
          tostring(s), sorted_names())
      end
      granted[s] = true
    end
    err = add(field .. ".token", e.token, 16, granted)
    if err then return nil, err end
  end
  return out
end

-- Whether a token with the scope set `granted` may use scope `needed`.
function M.allows(granted, needed)
  return needed == "public" or granted.admin == true or granted[needed] == true
end

return M
