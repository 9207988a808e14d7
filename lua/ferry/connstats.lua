-- connstats.lua: the upstream connection counters of a proxy or a pool
-- index (core/uppool.c), as a plain table for the console and the API.
local ffi = require("ffi")
require("ferry.cdef")

local C = ffi.C
local tonumber, pcall = tonumber, pcall

local M = {}

local buf = ffi.new("struct ferry_conn_stats")

local function read(fn, key)
  -- Without the core loaded (unit specs) there is nothing to count.
  local ok = pcall(fn, key, buf)
  if not ok then return nil end
  return {
    opened = tonumber(buf.opened), reused = tonumber(buf.reused),
    active = tonumber(buf.active), idle = tonumber(buf.idle),
    queued = tonumber(buf.queued), waiting = tonumber(buf.waiting),
    queue_timeouts = tonumber(buf.queue_timeouts), queue_full = tonumber(buf.queue_full),
    retired = tonumber(buf.retired),
  }
end

function M.proxy(id)
  return read(function(k, b) return C.ferry_conn_stats_proxy(k, b) end, id)
end

function M.pool(index)
  return read(function(k, b) return C.ferry_conn_stats_pool(k, b) end, index)
end

-- "opened/reused/active/idle/queued/queue timeouts" in one short line.
function M.line(s)
  if not s then return "-" end
  return string.format("%d opened, %d reused, %d active, %d idle, %d queued (%d waiting), "
    .. "%d queue timeouts, %d refused, %d retired", s.opened, s.reused, s.active, s.idle,
    s.queued, s.waiting, s.queue_timeouts, s.queue_full, s.retired)
end

return M
