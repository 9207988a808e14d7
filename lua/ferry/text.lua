-- text.lua: string helpers for text a user, an operator or a peer
-- controls (console lines and output, header values).  Lua patterns run
-- inside C where no instruction budget reaches, and an unanchored
-- pattern with a repetition before an anchor or a literal
-- ("%s+$", "(%a[%w]*://)") backtracks quadratically on a long input.
-- These scan bytes or use plain finds and single-class searches only,
-- so each is linear in its input.
local byte, sub, find = string.byte, string.sub, string.find

local M = {}

-- Bytes of %s: space, \t, \n, \v, \f, \r.
local function is_space(b)
  return b == 32 or (b >= 9 and b <= 13)
end

-- s without trailing whitespace (%s); only spaces and tabs with blanks.
function M.rtrim(s, blanks)
  local i = #s
  while i > 0 do
    local b = byte(s, i)
    if not (blanks and (b == 32 or b == 9) or (not blanks and is_space(b))) then break end
    i = i - 1
  end
  if i == #s then return s end
  return sub(s, 1, i)
end

-- s without leading and trailing whitespace.
function M.trim(s)
  local first = find(s, "%S")
  if not first then return "" end
  return M.rtrim(sub(s, first))
end

-- scheme://user:pass@host -> scheme://***@host, wherever "://" is
-- followed by userinfo (bytes up to an "@" before any whitespace, "/",
-- or quote).  Each byte is looked at a bounded number of times: a
-- userinfo run holds no "/", so the search for the next "://" starts
-- past it.
function M.mask(s)
  local i = find(s, "://", 1, true)
  if not i then return s end
  local parts, last = {}, 1
  while i do
    local from = i + 3
    local stop = find(s, "[%s/@\"'`]", from)
    if stop and byte(s, stop) == 64 then -- "@"
      parts[#parts + 1] = sub(s, last, from - 1)
      parts[#parts + 1] = "***@"
      last = stop + 1
      i = find(s, "://", last, true)
    else
      i = find(s, "://", stop or from, true)
    end
  end
  if last == 1 then return s end
  parts[#parts + 1] = sub(s, last)
  return table.concat(parts)
end

return M
