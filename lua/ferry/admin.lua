-- admin.lua: the admin plane's router.
--
-- The core hands every request of an admin listener (the HTTP one and
-- the console's unix socket) to handle(); a handler answers
--   status, body[, headers]
-- where a table body is sent as JSON and a string as text/plain (or as
-- headers["Content-Type"] says).  Over TCP, when tokens are configured,
-- every endpoint needs a bearer token with the scope ferry.scopes names
-- for it (401 FERRY-7005 without a valid token, 403 FERRY-7020 without
-- the scope); /health needs none.  The unix socket is trusted (it is
-- created 0600).  A handler that raises gets a coded 500, never takes
-- the daemon down, and is logged.
local ffi = require("ffi")
local cjson = require("cjson.safe")
local cdef = require("ferry.cdef")

local scopes = require("ferry.scopes")

local C = ffi.C
local ffi_string = ffi.string
local pairs, type, tostring, pcall, concat = pairs, type, tostring, pcall, table.concat

local M = {}

local routes = {}   -- "METHOD /path" -> { handler, scope }
local prefixes = {} -- { method, prefix, handler, scope }: paths with an id at the end

-- The scope ferry.scopes gives an endpoint; a route without one is a bug.
local function scope_of(key)
  local scope = scopes.ENDPOINTS[key]
  if not scope then error("admin route " .. key .. " has no scope in ferry.scopes", 3) end
  return scope
end

-- handler(req, rt) -> status, body, headers
function M.route(method, path, handler)
  local key = method .. " " .. path
  routes[key] = { handler = handler, scope = scope_of(key) }
end

-- A route for "/path/<rest>": req.rest is what follows the prefix.
function M.route_prefix(method, prefix, handler)
  prefixes[#prefixes + 1] = { method = method, prefix = prefix, handler = handler,
                              scope = scope_of(method .. " " .. prefix .. "*") }
end

-- The JSON error body every admin error uses (like the data plane's).
function M.err(req, status, code, message)
  return status, { error = code, message = message, request_id = req.cid },
    { ["X-Ferry-Error"] = code }
end

local function unescape(s)
  s = s:gsub("+", " ")
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

local function parse_query(q)
  local t = {}
  if not q then return t end
  for k, v in q:gmatch("([^&=]+)=?([^&]*)") do t[unescape(k)] = unescape(v) end
  return t
end

local parse_headers = require("ferry.headers").parse

local LOOPBACK_HOST = { ["127.0.0.1"] = true, ["localhost"] = true, ["[::1]"] = true }

-- Requests a web page could make: any Origin (browsers send one on every
-- cross-site POST, even "no-cors"), and, without a token, a Host other
-- than loopback (a DNS-rebound name pointing at 127.0.0.1).  The admin
-- plane is for programs and operators, never for pages.
local function from_browser(req, tokens)
  if req.unix then return false end
  if req.headers["origin"] ~= nil then return true end
  if #tokens > 0 then return false end
  local host = (req.headers["host"] or ""):lower():gsub(":%d+$", "")
  return not LOOPBACK_HOST[host]
end

-- The token of an Authorization field, or nil unless it is exactly
--   Bearer 1*SP token68 OWS
-- (RFC 9110 §11.1: the scheme is case-insensitive; §11.2 token68).  One
-- field only: two Authorization fields are refused, not guessed between.
function M.bearer(head, value)
  if value == nil then return nil end
  local n = 0
  for name in head:gmatch("\r\n([^:\r\n]+):") do
    if name:lower() == "authorization" then n = n + 1 end
  end
  if n ~= 1 then return nil end
  local scheme, rest = value:match("^(%a+) +(.*)$")
  if not scheme or scheme:lower() ~= "bearer" then return nil end
  return rest:match("^([%w%-%._~%+/]+=*)[ \t]*$")
end

-- The scopes the request's token grants: every scope on the unix socket
-- or when no token is configured (loopback only: config.lua refuses
-- otherwise); nil without a valid token.  Every configured token is
-- compared, in constant time, whichever matches.
local ALL = { admin = true }

local function granted(req, tokens)
  if req.unix or #tokens == 0 then return ALL end
  local given = M.bearer(req.head, req.headers["authorization"])
  if not given then return nil end
  local found
  for _, t in ipairs(tokens) do
    if C.ferry_secret_equal(t.token, #t.token, given, #given) == 1 then found = t.scopes end
  end
  return found
end

-- A request body as a JSON object, or nil and why not (answered as
-- FERRY-7004).  An array is not an object, though cjson makes both tables.
function M.decode_object(body)
  if type(body) ~= "string" or body == "" then return nil, "a JSON body is required" end
  if not body:match("^%s*{") then return nil, "the body must be a JSON object" end
  local v, err = cjson.decode(body)
  if type(v) ~= "table" then return nil, "malformed JSON body: " .. tostring(err) end
  return v
end

-- The JSON body of a request, or nil and an error answer.
function M.json_body(req)
  local v, why = M.decode_object(req.body)
  if not v then return nil, { M.err(req, 400, "FERRY-7004", why) } end
  return v
end

-- The route of method and path: route, rest; or nil, nil, true when the
-- path exists for another method.
local function find(method, path)
  local r = routes[method .. " " .. path]
  if r then return r end
  for _, p in ipairs(prefixes) do
    if p.method == method and path:sub(1, #p.prefix) == p.prefix and #path > #p.prefix then
      return p, path:sub(#p.prefix + 1)
    end
  end
  for key in pairs(routes) do
    if key:match("^%S+ (.*)$") == path then return nil, nil, true end
  end
  return nil
end

local function encode(status, body, headers)
  local ctype = headers and headers["Content-Type"] or nil
  if type(body) == "table" then
    local s = cjson.encode(body)
    body = s and s:gsub("\\/", "/") or '{"error":"FERRY-7001"}'
    ctype = ctype or "application/json"
  elseif body == nil then
    body = ""
  end
  local extra = {}
  for k, v in pairs(headers or {}) do
    if k ~= "Content-Type" then
      -- No header splitting, whatever a handler puts there.
      extra[#extra + 1] = k .. ": " .. tostring(v):gsub("[\r\n]", " ") .. "\r\n"
    end
  end
  return status, ctype or "text/plain; charset=utf-8", tostring(body), concat(extra)
end

---------------------------------------------------------------------------
-- Answers that wait (core/admin.c): a handler that must wait for
-- something (the database acknowledging a change) returns
--   admin.waiting(w)      with w = admin.defer(req, bound, fallback...)
-- and later calls admin.answer(w, status, body[, headers]).  The loop
-- serves other connections meanwhile.  When the bound runs out first,
-- the fallback answer goes (the core logs FERRY-7716) and a later
-- admin.answer is a no-op; a connection closed meanwhile is forgotten.
-- An answer given before the handler returned goes at once.

local next_token = 0
local WAITER = {}

-- ferry_admin_waits_total{result}: "answered" (the real answer went),
-- "late" (nobody waited any more: the bound ran out, or the client
-- left), "refused" (FERRY_ADMIN_WAIT_MAX answers waited already).
local waits = { answered = 0, late = 0, refused = 0 }

function M.count_wait(result)
  waits[result] = (waits[result] or 0) + 1
end

function M.waits_text()
  return "# HELP ferry_admin_waits_total Admin answers that waited for the database, by " ..
    "outcome.\n# TYPE ferry_admin_waits_total counter\n" ..
    string.format('ferry_admin_waits_total{result="answered"} %d\n', waits.answered) ..
    string.format('ferry_admin_waits_total{result="late"} %d\n', waits.late) ..
    string.format('ferry_admin_waits_total{result="refused"} %d\n', waits.refused)
end

-- How many more answers may wait now (0: answer 503 FERRY-7717).
function M.wait_room()
  return tonumber(C.ferry_admin_wait_room())
end

-- A waiting answer for req: bound in seconds; the fallback status, body
-- and headers go when the bound runs out.
function M.defer(req, bound, status, body, headers)
  next_token = next_token + 1
  return setmetatable({ token = next_token, bound = bound, req = req,
                        fallback = { status, body, headers } }, WAITER)
end

function M.waiting(w)
  return w
end

-- Send w's answer: true when it reached a waiting connection (or the
-- handler has not returned yet), false when nobody waits any more.
function M.answer(w, status, body, headers)
  if w.done then return false end
  w.done = true
  if not w.returned then
    w.early = { status, body, headers }
    return true
  end
  local s, ctype, b, h = encode(status, body, headers)
  local ok = C.ferry_admin_answer(w.token, s, ctype, b, #b, h) == 1
  M.count_wait(ok and "answered" or "late")
  return ok
end

-- ar: struct ferry_admin_req *; rt: the runtime module.
function M.handle(ar, rt)
  local target = ffi_string(ar.target, ar.target_len)
  local path, query = target:match("^([^?]*)%??(.*)$")
  local req = {
    method = ffi_string(ar.method, ar.method_len),
    path = path,
    query = parse_query(query ~= "" and query or nil),
    head = ffi_string(ar.head, ar.head_len),
    body = ar.body ~= nil and ffi_string(ar.body, ar.body_len) or nil,
    peer = ffi_string(ar.peer),
    listener = ffi_string(ar.listener),
    cid = ffi_string(ar.cid),
    unix = ar.unix_socket ~= 0,
  }
  req.headers = parse_headers(req.head)
  local cur = rt.active()
  local tokens = cur and cur.cfg.admin and cur.cfg.admin.tokens or {}
  if from_browser(req, tokens) then
    return encode(M.err(req, 403, "FERRY-7008", "admin requests from web pages are refused"))
  end
  local method = req.method == "HEAD" and "GET" or req.method
  local route, rest, other_method = find(method, path)
  -- Unknown paths need a valid token too: nothing is told to strangers.
  local needed = route and route.scope or "any"
  local scopes_of_token = needed ~= "public" and granted(req, tokens)
  if needed ~= "public" and not scopes_of_token then
    local s, b, h = M.err(req, 401, "FERRY-7005", "a valid bearer token is required")
    h["WWW-Authenticate"] = 'Bearer realm="ferry"'
    return encode(s, b, h)
  end
  if not route then
    if other_method then
      return encode(M.err(req, 405, "FERRY-7006", "method " .. req.method ..
        " not allowed on " .. path))
    end
    return encode(M.err(req, 404, "FERRY-7007", "no such admin endpoint: " .. path))
  end
  if not scopes.allows(scopes_of_token or ALL, needed) then
    return encode(M.err(req, 403, "FERRY-7020", string.format(
      'this token lacks the "%s" scope that %s %s needs', needed, method, path:sub(1, 128))))
  end
  local handler = route.handler
  req.rest = rest
  local ok, status, body, headers = pcall(handler, req, rt)
  if not ok then
    C.ferry_log(cdef.LOG.error, "FERRY-7001", "admin " .. req.method .. " " .. path .. " failed: " ..
      tostring(status))
    return encode(M.err(req, 500, "FERRY-7001", "the admin handler failed; see the log"))
  end
  if getmetatable(status) == WAITER then
    local w = status
    if w.early then
      M.count_wait("answered")
      return encode(w.early[1], w.early[2], w.early[3])
    end
    w.returned = true
    local s, ctype, b, h = encode(w.fallback[1], w.fallback[2], w.fallback[3])
    return s, ctype, b, h, w.token, w.bound
  end
  return encode(status, body, headers)
end

return M
