-- console_fmt.lua: how console values print.
--
-- show(v) turns what a console line returns or prints into text.  A
-- command's result is plain data (a list of records, or a record) marked
-- with view(t, spec) so it prints as an aligned table, a record of
-- aligned fields, or a message; any other table prints as a Lua-like
-- literal.  Bounds: a list prints at most MAX_ROWS rows and says how many
-- were left out, a cell at most MAX_CELL characters, a plain table at
-- most MAX_ITEMS entries and three levels.  mask(s) hides URL userinfo:
-- scheme://user:pass@host -> scheme://***@host.
local text = require("ferry.text")

local format, concat, rep = string.format, table.concat, string.rep
local rtrim = text.rtrim
local pairs, ipairs, type, tostring, setmetatable = pairs, ipairs, type, tostring, setmetatable
local huge = math.huge

local M = {
  MAX_ROWS = 200,            -- rows a list prints
  MAX_CELL = 48,             -- characters of a table cell
  MAX_ITEMS = 50,            -- entries shown per plain Lua table
}

-- scheme://user:pass@host -> scheme://***@host, wherever it appears
-- (linear in the output: text.lua).
M.mask = text.mask

---------------------------------------------------------------------------
-- Views: what a command returns is plain data (a list of records, or a
-- record) that prints as an aligned table.  How it prints is kept aside,
-- so scripts see only the data: #proxy.list("p"), proxy.list()[1].id.

local views = setmetatable({}, { __mode = "k" })

-- Mark t to print by spec (kind = "table", "record" or "message");
-- returns t.
local function as_view(t, spec)
  views[t] = spec
  return t
end
M.view = as_view

local function num(v)
  if v ~= v then return "nan" end
  if v == huge then return "inf" end
  if v == -huge then return "-inf" end
  if v % 1 == 0 and v > -2 ^ 53 and v < 2 ^ 53 then return format("%d", v) end
  return format("%.14g", v)
end

local function cell(v)
  local s
  if v == nil then
    s = "-"
  elseif type(v) == "boolean" then
    s = v and "yes" or "no"
  elseif type(v) == "number" then
    if v % 1 ~= 0 and v == v and v ~= huge and v ~= -huge then
      s = format("%.1f", v)
    else
      s = num(v)
    end
  elseif type(v) == "table" then
    local parts = {}
    for i = 1, math.min(#v, 8) do parts[i] = tostring(v[i]) end
    if #v > 8 then parts[#parts + 1] = "..." end
    s = concat(parts, ",")
  else
    s = tostring(v)
  end
  s = s:gsub("%c", "?")
  if #s > M.MAX_CELL then s = s:sub(1, M.MAX_CELL - 3) .. "..." end
  return s
end

-- spec.columns: { { key, title, right = bool, fmt = function(v, row) }, ... }
local function render_table(rows, spec)
  local cols = spec.columns
  local n = #rows
  local shown = math.min(n, M.MAX_ROWS)
  local grid, widths = {}, {}
  local head = {}
  for j, col in ipairs(cols) do
    head[j] = col[2]
    widths[j] = #col[2]
  end
  for i = 1, shown do
    local row, line = rows[i], {}
    for j, col in ipairs(cols) do
      local v = type(row) == "table" and row[col[1]] or nil
      local s = col.fmt and cell(col.fmt(v, row)) or cell(v)
      line[j] = s
      if #s > widths[j] then widths[j] = #s end
    end
    grid[i] = line
  end
  local lines = {}
  local function put(line)
    local parts = {}
    for j, col in ipairs(cols) do
      local s = line[j]
      local pad = rep(" ", widths[j] - #s)
      parts[j] = col.right and (pad .. s) or (s .. pad)
    end
    lines[#lines + 1] = rtrim(concat(parts, "  "))
  end
  if spec.title then lines[#lines + 1] = spec.title end
  put(head)
  for i = 1, shown do put(grid[i]) end
  if n == 0 then lines[#lines + 1] = spec.empty or "(none)" end
  if n > shown then
    lines[#lines + 1] = format("... %d more%s", n - shown, spec.hint and ("; " .. spec.hint) or "")
  end
  for _, f in ipairs(spec.footer or {}) do lines[#lines + 1] = f end
  return concat(lines, "\n")
end

local show

-- spec.fields: { { key, title, fmt = function(v, rec) }, ... };
-- spec.after: keys of the record holding views printed below.
local function render_record(rec, spec)
  local width = 0
  for _, f in ipairs(spec.fields) do
    if #f[2] > width then width = #f[2] end
  end
  local lines = {}
  if spec.title then lines[#lines + 1] = spec.title end
  for _, f in ipairs(spec.fields) do
    local v = rec[f[1]]
    if f.fmt then v = f.fmt(v, rec) end
    if v ~= nil or not f.optional then
      local s = type(v) == "string" and v:gsub("%c", "?") or cell(v)
      lines[#lines + 1] = rtrim(f[2] .. rep(" ", width - #f[2]) .. "  " .. s)
    end
  end
  for _, k in ipairs(spec.after or {}) do
    if rec[k] ~= nil then
      lines[#lines + 1] = ""
      lines[#lines + 1] = show(rec[k])
    end
  end
  return concat(lines, "\n")
end

local function quote(s)
  return (format("%q", s):gsub("\\\n", "\\n"))
end

local function show_plain(t, depth, seen)
  if seen[t] then return "<cycle>" end
  if depth > 3 then return "{...}" end
  seen[t] = true
  local parts, n = {}, 0
  local len = #t
  for i = 1, len do
    n = n + 1
    if n > M.MAX_ITEMS then break end
    local v = t[i]
    parts[n] = type(v) == "table" and show_plain(v, depth + 1, seen) or show(v, true)
  end
  local keys = {}
  for k in pairs(t) do
    if not (type(k) == "number" and k >= 1 and k <= len and k % 1 == 0) then
      keys[#keys + 1] = k
      if #keys > M.MAX_ITEMS * 4 then break end
    end
  end
  table.sort(keys, function(a, b)
    if type(a) == type(b) and (type(a) == "string" or type(a) == "number") then return a < b end
    return type(a) < type(b)
  end)
  for _, k in ipairs(keys) do
    n = n + 1
    if n > M.MAX_ITEMS then break end
    local v = t[k]
    local ks = type(k) == "string" and k:match("^[%a_][%w_]*$") and k or ("[" .. show(k, true) .. "]")
    parts[n] = ks .. " = " .. (type(v) == "table" and show_plain(v, depth + 1, seen) or show(v, true))
  end
  seen[t] = nil
  if n > M.MAX_ITEMS then parts[M.MAX_ITEMS + 1] = "..." end
  if #parts == 0 then return "{}" end
  return "{ " .. concat(parts, ", ", 1, math.min(#parts, M.MAX_ITEMS + 1)) .. " }"
end

-- A value as the console prints it; nested: inside a plain table.
function show(v, nested)
  local t = type(v)
  if t == "string" then return nested and quote(v) or v end
  if t == "number" then return num(v) end
  if t == "table" then
    local spec = views[v]
    if spec and not nested then
      if spec.kind == "table" then return render_table(v, spec) end
      if spec.kind == "record" then return render_record(v, spec) end
      if spec.kind == "message" then return spec.text end
    end
    return show_plain(v, 1, {})
  end
  if t == "cdata" then return (tostring(v):gsub("U?LL$", "")) end
  return tostring(v)
end
M.show = show

return M
