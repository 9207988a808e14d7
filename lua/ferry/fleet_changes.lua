-- fleet_changes.lua: ferry_fleet_changes_total{kind,dir}, the changes
-- this node shared with the fleet (dir "out"), received and applied
-- ("in"), and received but not applied ("ignored": older than what the
-- node holds, or naming a proxy or exchange it does not run).  One
-- module for every fleet part, so the family is rendered once.
local pairs, sort, concat = pairs, table.sort, table.concat

local M = {}

M.KINDS = { "proxy", "ban", "breaker", "lease", "pin", "probe", "node" }
M.DIRS = { "out", "in", "ignored" }

local counts = {} -- kind -> dir -> n

function M.count(kind, dir, n)
  local k = counts[kind]
  if not k then
    k = {}
    counts[kind] = k
  end
  k[dir] = (k[dir] or 0) + (n or 1)
end

function M.get(kind, dir)
  local k = counts[kind]
  return k and k[dir] or 0
end

-- The Prometheus lines of the family ("" before anything was counted).
function M.text()
  local rows = {}
  for kind, dirs in pairs(counts) do
    for dir, n in pairs(dirs) do
      rows[#rows + 1] = string.format('ferry_fleet_changes_total{kind="%s",dir="%s"} %d', kind,
        dir, n)
    end
  end
  if #rows == 0 then return "" end
  sort(rows)
  return "# HELP ferry_fleet_changes_total Changes shared with the fleet (out), received and " ..
    "applied (in), received and not applied (ignored).\n" ..
    "# TYPE ferry_fleet_changes_total counter\n" .. concat(rows, "\n") .. "\n"
end

function M._reset()
  counts = {}
end

return M
