-- hclient.lua: HTTP requests from Lua on the loop (core/hclient.c).
--
--   hclient.request{ method, url, headers = { name = value }, body, timeout, tls }, cb)
--     -> id, or nil, code, message (bad URL, too many in flight)
--   tls: an index from hclient.tls(verify, ca) for https:// (else plain).
--   cb(status, headers, body, err, detail, elapsed_ms) runs later, from
--   the loop, pcall'ed: status 0 and err ("refused", "timeout", "resolve",
--   "reset", "tls", "garbage", "body_limit", "head_limit", "local") when there was
--   no whole answer; headers: a table of lower-case names.
--   hclient.cancel(id): cb will not run.
-- https:// goes through the core's TLS client, the certificate verified
-- against the context's CA (see core/hclient.h).
local ffi = require("ffi")

if not pcall(ffi.typeof, "struct ferry_hclient_result") then
  ffi.cdef[[
struct ferry_hclient_result {
  int64_t id; int status; const char *error; const char *detail;
  const char *headers; size_t headers_len; const char *body; size_t body_len;
  double elapsed_ms;
};
int64_t ferry_hclient_request(const char *host, int port, const char *head, const char *body,
                              size_t body_len, double timeout, int tls);
int ferry_hclient_tls(int verify, const char *ca, const char **err);
int ferry_hclient_inflight(void);
int ferry_hclient_cancel(int64_t id);
void *ferry_bridge_arg(void);
void ferry_log(int level, const char *code, const char *msg);
]]
end

local C = ffi.C
local ffi_string = ffi.string
local tonumber, pairs, type, pcall, tostring = tonumber, pairs, type, pcall, tostring
local format, concat = string.format, table.concat

local M = { MAX_INFLIGHT = 64, MAX_BODY = 1024 * 1024 }

local pending = {} -- id -> cb
local res_ptr = ffi.typeof("struct ferry_hclient_result *")

-- "http(s)://host[:port][/path]" -> host, port, path, scheme; or nil, why.
function M.parse_url(u)
  if type(u) ~= "string" then return nil, "expected a URL string" end
  local scheme, rest = u:match("^(%a[%w+.-]*)://(.*)$")
  if not scheme then return nil, "expected http://host:port" end
  scheme = scheme:lower()
  if scheme ~= "http" and scheme ~= "https" then
    return nil, format('scheme "%s" is not supported (http:// or https://)', scheme)
  end
  local auth, path = rest:match("^([^/?#]*)(.*)$")
  if auth:find("@", 1, true) then return nil, "user:password in an endpoint URL is not " ..
    "supported (use token)" end
  local host, port = auth:match("^%[([%x:.]+)%]:?(%d*)$")
  if not host then host, port = auth:match("^([%w.-]+):?(%d*)$") end
  if not host or host == "" then return nil, "expected a host" end
  port = port ~= "" and tonumber(port) or (scheme == "https" and 443 or 80)
  if port < 1 or port > 65535 then return nil, "port must be 1 to 65535" end
  if path == "" then path = "/" end
  if path:find("[%s%c]") then return nil, "the path must not hold spaces or control bytes" end
  return host, port, path, scheme
end

-- A TLS context index for https:// requests (verify the certificate
-- against the PEM file ca, or the system store), or nil and why.  Reads
-- the CA file: call it at config time.
local errp = ffi.new("const char *[1]")
function M.tls(verify, ca)
  local i = C.ferry_hclient_tls(verify and 1 or 0, ca, errp)
  if i < 0 then return nil, ffi_string(errp[0]) end
  return i
end

local function parse_headers(s)
  local h = {}
  for name, value in s:gmatch("([^:\n]+): ([^\n]*)\n") do h[name] = value end
  return h
end

-- o.host, o.port and o.path (all three) skip parsing o.url.
function M.request(o, cb)
  local host, port, path = o.host, o.port, o.path
  if not (host and port and path) then
    local scheme
    host, port, path, scheme = M.parse_url(o.url)
    if not host then return nil, "url", port end
    if scheme == "https" and not o.tls then return nil, "url", "https:// needs o.tls" end
  end
  local lines = { format("%s %s HTTP/1.1", o.method or "GET", path) }
  for k, v in pairs(o.headers or {}) do
    k, v = tostring(k), tostring(v)
    if k:find("[\r\n:]") or v:find("[\r\n]") then return nil, "header", "bad header " .. k end
    lines[#lines + 1] = k .. ": " .. v
  end
  local body = o.body or ""
  local id = C.ferry_hclient_request(host, port, concat(lines, "\r\n"), body, #body,
    o.timeout or 5, o.tls or -1)
  if id == -1 then
    return nil, "full", format("%d HTTP requests in flight, the maximum", M.MAX_INFLIGHT)
  end
  if id < 0 then return nil, "memory", "out of memory" end
  id = tonumber(id)
  pending[id] = cb
  return id
end

function M.cancel(id)
  if pending[id] then
    pending[id] = nil
    C.ferry_hclient_cancel(id)
  end
end

function M.inflight()
  return tonumber(C.ferry_hclient_inflight())
end

-- From the core (bridge_hclient_done): one request ended.
function M.done(ud)
  local r = ffi.cast(res_ptr, ud or C.ferry_bridge_arg())
  local id = tonumber(r.id)
  local cb = pending[id]
  if not cb then return end
  pending[id] = nil
  local status = tonumber(r.status)
  local err = r.error ~= nil and ffi_string(r.error) or nil
  local detail = r.detail ~= nil and ffi_string(r.detail) or nil
  local headers = parse_headers(ffi_string(r.headers, r.headers_len))
  local body = ffi_string(r.body, r.body_len)
  local ok, e = pcall(cb, status, headers, body, err, detail, tonumber(r.elapsed_ms))
  if not ok then
    C.ferry_log(3, "FERRY-8101", "http client callback failed: " .. tostring(e))
  end
end

return M
