-- headers.lua: header fields of a raw HTTP head, by lower-case name (the
-- first of repeated fields wins; trailing blanks trimmed).  Used for the
-- data plane's req.headers and the admin plane's requests alike.  Lines
-- end in CRLF or a bare LF, as core/http.c accepts them, so Lua sees the
-- fields the core forwards.
local rtrim = require("ferry.text").rtrim

local M = {}

function M.parse(head)
  local t = {}
  for k, v in head:gmatch("\r?\n([^:\r\n]+):[ \t]*([^\r\n]*)") do
    k = k:lower()
    -- Not gsub("[ \t]+$"): quadratic on a long run of blanks.
    if t[k] == nil then t[k] = rtrim(v, true) end
  end
  return t
end

return M
