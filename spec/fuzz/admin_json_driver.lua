-- admin_json_driver.lua: the checks of fuzz_admin_json (see fuzz_admin_json.c).
--
-- The input is an admin request body.  It goes through the admin plane's
-- one JSON-object decoder (admin.decode_object) and the validators that
-- use it: the broker's lease request and feedback, and the inventory
-- API's POST /api/v1/proxies fields and proxy entry.  Each must answer
-- with a clean table or a coded refusal, never raise, and never let
-- through a value its schema refuses.  A broken promise raises
-- "FINDING: ...".
local cjson = require("cjson.safe")
local admin = require("ferry.admin")
local broker = require("ferry.broker")
local inventory = require("ferry.inventory")

local format, huge = string.format, math.huge
local NULL = cjson.null

local function finding(fmt, ...)
  error("FINDING: " .. format(fmt, ...), 0)
end

local function call(what, f, ...)
  local r = { pcall(f, ...) }
  if not r[1] then finding("%s raised: %s", what, tostring(r[2])) end
  return unpack(r, 2, table.maxn(r))
end

local function refusal(what, status, code, field, msg)
  if status ~= 400 or type(code) ~= "string" or not code:match("^FERRY%-7%d%d%d$")
      or type(msg) ~= "string" or (field ~= nil and type(field) ~= "string") then
    finding("%s refused with %s %s %s %s", what, tostring(status), tostring(code),
      tostring(field), tostring(msg))
  end
end

local function no_null(what, t)
  for k, v in pairs(t) do
    if v == NULL then finding("%s: field %s is JSON null after validation", what, tostring(k)) end
  end
end

local function opt_string(what, v, max, nonempty)
  if v ~= nil and (type(v) ~= "string" or #v > max or (nonempty and v == "")) then
    finding("%s: %q", what, tostring(v))
  end
end

local function check_request(out)
  no_null("request", out)
  if type(out.exchange_id) ~= "string" or out.exchange_id == "" or #out.exchange_id > 128 then
    finding("request: exchange_id %q", tostring(out.exchange_id))
  end
  if not broker.CONNECTION_TYPES[out.connection_type] then
    finding("request: connection_type %q", tostring(out.connection_type))
  end
  opt_string("request: region", out.region, 64, true)
  opt_string("request: client_id", out.client_id, 256)
  if out.metadata ~= nil and type(out.metadata) ~= "table" then finding("request: metadata") end
end

local function check_feedback(out)
  no_null("feedback", out)
  if type(out.proxy_url) ~= "string" or out.proxy_url == "" or #out.proxy_url > 2048 then
    finding("feedback: proxy_url")
  end
  if type(out.exchange_id) ~= "string" or out.exchange_id == "" then finding("feedback: exchange_id") end
  if type(out.success) ~= "boolean" or type(out.ok) ~= "boolean" then finding("feedback: success/ok") end
  if out.status ~= nil and (type(out.status) ~= "number" or out.status % 1 ~= 0
      or out.status < 100 or out.status > 599) then
    finding("feedback: status %s", tostring(out.status))
  end
  if not out.ok and not broker.FAIL_KINDS[out.kind] then
    finding("feedback: a failure of kind %q", tostring(out.kind))
  end
  local l = out.latency_ms
  if l ~= nil and (type(l) ~= "number" or l ~= l or l < 0 or l > 3600000 or l == huge) then
    finding("feedback: latency_ms %s", tostring(l))
  end
  opt_string("feedback: client_id", out.client_id, 256)
end

local function check_entry(px)
  local schemes = { http = true, https = true, socks5 = true, socks4 = true, socks4a = true }
  if not schemes[px.scheme] then finding("entry: scheme %q", tostring(px.scheme)) end
  if type(px.host) ~= "string" or px.host == "" or px.host:find("[%s%c@/]") then
    finding("entry: host %q", tostring(px.host))
  end
  if type(px.port) ~= "number" or px.port % 1 ~= 0 or px.port < 1 or px.port > 65535 then
    finding("entry: port")
  end
  if px.id ~= nil and (type(px.id) ~= "string" or px.id:match("^%d+$") or #px.id > 64
      or not px.id:match("^[%w_.:@/-]+$")) then -- proxy_entry.lua's rule
    finding("entry: id %q", tostring(px.id))
  end
  if type(px.weight) ~= "number" or px.weight % 1 ~= 0 or px.weight < 1 or px.weight > 1000 then
    finding("entry: weight %s", tostring(px.weight))
  end
  if px.region ~= nil and (type(px.region) ~= "string" or px.region:find("%c")) then
    finding("entry: region")
  end
  -- The whole display is fixed by scheme, host and port, so comparing it
  -- whole catches a password or user however short (a password "5" is
  -- inside "socks5" and must not count as shown).
  local host = type(px.host) == "string" and px.host:find(":", 1, true) and "[" .. px.host .. "]"
    or tostring(px.host)
  local want = string.format("%s://%s%s:%s", tostring(px.scheme), px.user and "***@" or "", host,
    tostring(px.port))
  if px.display ~= want then
    finding("entry: display %q, expected %q", tostring(px.display), want)
  end
end

return function(body)
  local obj, why = call("admin.decode_object", admin.decode_object, body)
  if obj ~= nil then
    if type(obj) ~= "table" or not body:match("^%s*{") then
      finding("decode_object took a body that is not a JSON object")
    end
  elseif type(why) ~= "string" then
    finding("decode_object refused without a reason")
  end

  local out, status, code, field, msg = call("broker.validate_request", broker.validate_request, body)
  if out then check_request(out) else refusal("validate_request", status, code, field, msg) end
  if out and not obj then finding("validate_request took a body decode_object refuses") end

  out, status, code, field, msg = call("broker.validate_feedback", broker.validate_feedback, body)
  if out then check_feedback(out) else refusal("validate_feedback", status, code, field, msg) end

  -- POST /api/v1/proxies, as its route calls them.
  if type(obj) == "table" and obj[1] == nil then
    local f, err = call("inventory.check_fields", inventory.check_fields, obj)
    if not f then
      if type(err) ~= "table" then finding("check_fields refused without an error") end
    elseif type(f.url) == "string" then
      local px, perr = call("inventory.parse_proxy", inventory.parse_proxy, f.url, f.opts)
      if px then
        check_entry(px)
      elseif type(perr) ~= "string" then
        finding("parse_proxy refused without a message")
      end
    end
  end
end
