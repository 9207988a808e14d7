-- console.lua: one console line, evaluated inside the running daemon.
--
-- eval(line, rt) compiles the line as "return <line>" (an expression),
-- else as a statement, runs it in the console environment and answers
-- true, text or false, message.  The environment holds the commands
-- (proxy.*, pool.*, exchange.list, node.*, reload, stats: console_cmds.lua; help,
-- reset: here) and a few safe globals; variables a line sets persist for
-- the next lines (at most MAX_VARS of them; reset() forgets them).
-- Nothing in it reaches the file system, the process, the config's
-- credentials or the core's raw state.  How values print is
-- console_fmt.lua's.
--
-- Bounds: the line runs interpreted (jit.off) so the core's instruction
-- budget stops a runaway loop (the error comes back as the answer); the
-- environment's pcall passes that error on instead of swallowing it;
-- string.rep is capped; output stops at MAX_OUTPUT bytes; a list prints
-- at most MAX_ROWS rows and says how many were left out; a line makes at
-- most MAX_CHANGES inventory changes.  Proxy URLs print as
-- scheme://***@host:port, and any URL userinfo in the output (a line's
-- own text echoed by an error) is masked the same way.
local jit = require("jit")
local ffi = require("ffi")
local budget = require("ferry.budget")
local trim = require("ferry.text").trim
local cdef = require("ferry.cdef")
local cmds = require("ferry.console_cmds")
local fmt = require("ferry.console_fmt")

local format, concat, rep = string.format, table.concat, string.rep
local pairs, ipairs, type, tostring, tonumber, select, next = pairs, ipairs, type, tostring,
  tonumber, select, next
local pcall, error, setmetatable, getmetatable, setfenv, loadstring =
  pcall, error, setmetatable, getmetatable, setfenv, loadstring
local show, mask, as_view = fmt.show, fmt.mask, fmt.view

-- MAX_ROWS, MAX_CELL and MAX_ITEMS are console_fmt's, MAX_CHANGES is
-- console_cmds': shown here with the other bounds, to read.
local M = {
  MAX_ROWS = fmt.MAX_ROWS,        -- rows a list prints
  MAX_OUTPUT = 1024 * 1024,       -- bytes of output per line
  MAX_LINE = 16 * 1024,           -- bytes of a line
  MAX_CHANGES = cmds.MAX_CHANGES, -- proxy.add/remove/enable/disable per line
  MAX_VARS = 100,                 -- variables kept between lines
  MAX_CELL = fmt.MAX_CELL,        -- characters of a table cell
  MAX_STRING = 1024 * 1024,       -- bytes string.rep may build
  MAX_ITEMS = fmt.MAX_ITEMS,      -- entries shown per plain Lua table
}
M.mask = mask

---------------------------------------------------------------------------
-- State of the line being evaluated: its output (the commands keep the
-- rest, console_cmds.begin), and the variables kept between lines.

local out
local vars, nvars = {}, 0

local function emit(s)
  if out.full then return end
  if out.size + #s + 1 > M.MAX_OUTPUT then
    out[#out + 1] = s:sub(1, math.max(0, M.MAX_OUTPUT - out.size - 1))
    out[#out + 1] = format("... output truncated at %d bytes", M.MAX_OUTPUT)
    out.full = true
    return
  end
  out[#out + 1] = s
  out.size = out.size + #s + 1
end


local HELP = [[
Commands (a line is Lua; results print as tables):
  proxy.list([pool|exchange])   proxies: state, score, counters (first 200 rows)
  proxy.health([id])            health of every proxy, or everything about one
  proxy.add(pool, url[, opts])  add a proxy; opts = { id = "name", weight = 2, region = "eu" }
  proxy.remove(id)              remove a proxy added at runtime
  proxy.enable(id)              let a disabled proxy take requests again
  proxy.disable(id)             keep a proxy out of selection (work in flight finishes)
  pool.list()                   pools: strategy, size, up/down, failure rate
  pool.stats(name)              one pool's counters and its lowest-scoring proxies
  exchange.list()               exchanges: hosts, pool, bans and open breakers now
  rate(exchange)                rate budget of each (proxy, exchange) pair: tokens now
  cache.stats()                 HTTP caches: entries, bytes, hits, misses, stale...
  cache.purge(prefix, cache)    drop cached entries whose URL starts with prefix
                                ("/img/": that path on any host; "": all; cache: optional)
  node.list()                   the fleet's nodes: state, heartbeat age, probe duties
  node.self()                   this node: id, state, probe duties
  reload()                      reload the config file, as SIGHUP does
  stats()                       totals of the daemon, and where changes are stored
  help()                        this text
  reset()                       forget the variables set in this console
id is the number in the ID column or the proxy's name (its id in the config).
Also: string, table, math, pairs, ipairs, next, select, tostring, tonumber, type,
unpack, print, error, assert, pcall.  Variables set by a line stay for the next.]]

local function help()
  return as_view({}, { kind = "message", text = HELP })
end

local function reset()
  local n = nvars
  vars, nvars = {}, 0
  return as_view({}, { kind = "message", text = format("forgot %d variable%s", n,
    n == 1 and "" or "s") })
end

---------------------------------------------------------------------------
-- The environment.

local function copy(t)
  local c = {}
  for k, v in pairs(t) do c[k] = v end
  return c
end

local function bounded_rep(s, n, sep)
  s = tostring(s)
  n = tonumber(n) or 0
  local total = #s * math.max(n, 0) + (sep and #tostring(sep) * math.max(n - 1, 0) or 0)
  if total > M.MAX_STRING then
    error(format("string.rep: a result of %d bytes is over the console's %d", total,
      M.MAX_STRING), 2)
  end
  return rep(s, n, sep)
end

-- The string library the line sees, also as methods of strings ("x"):rep.
local safe_string = copy(string)
safe_string.rep = bounded_rep
safe_string.dump = nil
-- Lua patterns can backtrack exponentially inside C, where the instruction
-- budget cannot stop them: a console line searches plain text only.  The
-- console's own code (formatting, commands) keeps its patterns, so the
-- guard looks at who calls: the line itself, or C (pcall, table.sort)
-- on its behalf.
local getinfo = debug.getinfo
local run -- below; the line's frame when the line tail-called
local function line_calls()
  local info = getinfo(3, "Sf")
  -- A tail call (a statement line ending "return s:gsub(...)") leaves no
  -- frame of the line: the caller seen is then run() itself.
  return info == nil or info.source == "=console" or info.source == "=[C]" or info.func == run
end
-- Raise msg where the line called the function `level` frames up from
-- here (1: the caller of line_error); "console: msg" when the line
-- tail-called it and left no frame to name.
local function line_error(msg, level)
  local info = getinfo(level + 2, "S")
  if info and info.source == "=console" then error(msg, level + 2) end
  error("console: " .. msg, 0)
end

-- Work done in C on the line's behalf, which the instruction hook never
-- sees, is charged to the budget before it is done (in VM instructions:
-- memchr and memcmp go through some 16 bytes in the time of one); a
-- line that would exceed the budget gets the budget's error instead.
local C = ffi.C
local CHARGE_FREE = 4096 -- work below this is not worth an FFI call
local function charge(work)
  if work > CHARGE_FREE and C.ferry_budget_charge(work) ~= cdef.OK then
    line_error(ffi.string(C.ferry_budget_message()), 2)
  end
end

local find = string.find
safe_string.find = function(s, p, init, plain)
  if not line_calls() then return find(s, p, init, plain) end
  -- A plain search compares up to #p bytes at each of #s places.
  if type(s) == "string" and type(p) == "string" then charge(#s * math.max(#p, 1) / 16) end
  return find(s, p, init, true)
end

-- table.sort, insert and remove move or compare elements in C.
local safe_table = copy(table)
local sort, insert, remove = table.sort, table.insert, table.remove
local log = math.log
safe_table.sort = function(t, cmp)
  local n = type(t) == "table" and #t or 0
  if n > 1 then charge(2 * n * log(n) / log(2)) end
  return sort(t, cmp)
end
safe_table.insert = function(t, ...)
  if select("#", ...) >= 2 and type(t) == "table" then
    local pos = tonumber((...)) or 1
    charge(#t - pos)
  end
  return insert(t, ...)
end
safe_table.remove = function(t, pos)
  if pos ~= nil and type(t) == "table" then charge(#t - (tonumber(pos) or 1)) end
  return remove(t, pos)
end
for _, name in ipairs { "match", "gmatch", "gsub" } do
  local f = string[name]
  safe_string[name] = function(...)
    if line_calls() then
      line_error("patterns are not available in the console (string.find searches plain text)", 1)
    end
    return f(...)
  end
end

local function console_print(...)
  local n = select("#", ...)
  local parts = {}
  for i = 1, n do parts[i] = show((select(i, ...))) end
  emit(concat(parts, "\t"))
end

local function builtins()
  local b = {
    proxy = copy(cmds.proxy), pool = copy(cmds.pool), exchange = copy(cmds.exchange),
    reload = cmds.reload, stats = cmds.stats, help = help, reset = reset, rate = cmds.rate,
    cache = copy(cmds.cache), broker_client = copy(cmds.broker_client), node = copy(cmds.node),
    string = copy(safe_string), table = copy(safe_table), math = copy(math),
    pairs = pairs, ipairs = ipairs, next = next, select = select, tostring = tostring,
    tonumber = tonumber, type = type, unpack = unpack, error = error, assert = assert,
    pcall = budget.pcall, print = console_print,
  }
  b.math.randomseed = nil -- the data plane's random strategies share the generator
  return b
end

local function new_env()
  local b = builtins()
  return setmetatable({}, {
    __index = function(_, k)
      local v = b[k]
      if v ~= nil then return v end
      return vars[k]
    end,
    __newindex = function(_, k, v)
      if b[k] ~= nil then
        error(format('"%s" is a console command; choose another name', tostring(k)), 2)
      end
      if vars[k] == nil and v ~= nil then
        if nvars >= M.MAX_VARS then
          error(format("at most %d variables; reset() forgets them", M.MAX_VARS), 2)
        end
        nvars = nvars + 1
      elseif vars[k] ~= nil and v == nil then
        nvars = nvars - 1
      end
      vars[k] = v
    end,
    __metatable = false,
  })
end

local function pack(...)
  return { n = select("#", ...), ... }
end

-- Run the chunk and print what it returned.
function run(chunk)
  local r = pack(chunk())
  if r.n > 0 then
    local parts, multiline = {}, false
    for i = 1, r.n do
      parts[i] = show(r[i])
      if parts[i]:find("\n", 1, true) then multiline = true end
    end
    emit(concat(parts, multiline and "\n" or "\t"))
  end
end

-- An expression first.  It is wrapped in select(1, ...) so that a call
-- at its top is not a tail call: error("x") then names console:1, not
-- this file.  The newline keeps a trailing -- comment from eating ")".
local function compile(line)
  local chunk = loadstring("return select(1, " .. line .. "\n)", "=console")
  if chunk then return chunk end
  return loadstring(line, "=console")
end

-- One console line.  Returns true, text or false, message.
function M.eval(line, rt)
  if type(line) ~= "string" then return false, "expected a line of Lua" end
  line = trim(line) -- not match("^%s*(.-)%s*$"): quadratic on blanks
  if line == "" then return true, "" end
  if #line > M.MAX_LINE then
    return false, format("line too long (%d bytes, at most %d)", #line, M.MAX_LINE)
  end
  local chunk, err = compile(line)
  if not chunk then return false, mask(tostring(err)) end
  setfenv(chunk, new_env())
  jit.off(chunk, true)
  cmds.begin(rt)
  out = { size = 0 }
  -- ("x"):rep(...) reaches the string library through the strings'
  -- metatable: the bounded one stands in while the line runs.
  local smt = getmetatable("")
  local saved = smt.__index
  smt.__index = safe_string
  local ok, rerr = pcall(run, chunk)
  smt.__index = saved
  local text = concat(out, "\n")
  cmds.finish()
  out = nil
  -- A refused allocation reaches the line's pcall as LuaJIT's bare
  -- "not enough memory": say which bound it was.
  local tripped = C.ferry_budget_tripped()
  if tripped ~= nil and (ok or type(rerr) ~= "string" or not find(rerr, "[FERRY-401", 1, true)) then
    ok, rerr = false, "console: " .. ffi.string(tripped)
  end
  if not ok then
    local msg = type(rerr) == "string" and rerr or show(rerr)
    if text ~= "" then msg = text .. "\n" .. msg end
    return false, mask(msg)
  end
  return true, mask(text ~= "" and text .. "\n" or text)
end

-- For specs: forget the variables.
function M._reset()
  vars, nvars = {}, 0
end

return M
