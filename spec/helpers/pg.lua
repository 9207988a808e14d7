-- pg.lua: a real PostgreSQL 15 for integration specs, in a fresh
-- temporary directory, run as the `postgres` user, on 127.0.0.1 only.
--   local pg = require("pg")
--   local db = pg.start()              -- initdb + postgres on a free port
--   local conninfo = db:create_db("x") -- a fresh database (trust auth)
--   local uri = db:password_conninfo("x", "secret") -- the password role
--   db:psql("select 1", "x")           -- output lines as one string, or error()
--   db:stop(); db:start()              -- same data and port (a restart)
--   db:sigstop(); db:sigcont()         -- freeze every server process ("slow")
--   db:cleanup()                       -- stop and remove the directory
-- Only the processes it started (the postmaster and its children) are
-- signalled, by PID.
local procs = require("procs")
local socket = require("socket")

local BIN = os.getenv("FERRY_PG_BIN") or "/usr/lib/postgresql/15/bin"
local PW_ROLE = "ferry_pw"

local M = {}
M.__index = M
M.PW_ROLE = PW_ROLE

local q = procs.quote

-- Run a shell command; returns ok, output (stdout and stderr).
local function sh(cmd)
  local out = os.tmpname()
  local ok = os.execute(cmd .. " >" .. out .. " 2>&1")
  local text = procs.read_file(out)
  os.remove(out)
  return ok == 0 or ok == true, text
end

-- As the postgres user (we may run as root: PostgreSQL refuses root).
local function is_root()
  local p = io.popen("id -u")
  local uid = p:read("*l")
  p:close()
  return uid == "0"
end

local function as_pg(cmd)
  if is_root() then
    return "setpriv --reuid=postgres --regid=postgres --init-groups " .. cmd
  end
  return cmd
end

function M.available()
  return sh("test -x " .. q(BIN .. "/postgres"))
end

-- initdb a fresh cluster and start it; returns the server object.
function M.start_new(opts)
  opts = opts or {}
  local ok, dir = sh("mktemp -d /tmp/ferry-pg-XXXXXX")
  assert(ok, "mktemp: " .. dir)
  dir = dir:match("^%s*(.-)%s*$")
  local self = setmetatable({ dir = dir, data = dir .. "/data", port = procs.free_port(),
    opts = opts }, M)
  if is_root() then assert(sh("chown postgres:postgres " .. q(dir))) end
  assert(sh("chmod 700 " .. q(dir)))
  local iok, iout = sh(as_pg(q(BIN .. "/initdb") .. " -D " .. q(self.data) ..
    " -U postgres -A trust -E UTF8 --locale=C --no-sync --no-instructions"))
  assert(iok, "initdb failed:\n" .. iout)
  -- The password role authenticates with SCRAM over TCP; everything
  -- else is trusted (the socket is in a private directory).
  procs.write_file(self.data .. "/pg_hba.conf", table.concat({
    "local all all trust",
    "host all " .. PW_ROLE .. " 127.0.0.1/32 scram-sha-256",
    "host all all 127.0.0.1/32 trust", "" }, "\n"))
  if is_root() then sh("chown postgres:postgres " .. q(self.data .. "/pg_hba.conf")) end
  self:start()
  return self
end

-- Start (or start again) the server on the same data dir and port.
function M:start()
  assert(not self.proc, "already running")
  local args = {
    q(BIN .. "/postgres"), "-D", q(self.data), "-p", tostring(self.port),
    "-k", q(self.dir), "-c", "listen_addresses=127.0.0.1",
    "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
    "-c", "max_connections=" .. (self.opts.max_connections or 40),
    "-c", "shared_buffers=16MB", "-c", "log_min_messages=warning",
    "-c", "password_encryption=scram-sha-256",
  }
  self.proc = procs.spawn("postgres", as_pg(table.concat(args, " ")))
  local ready = procs.wait_for(function()
    return sh(q(BIN .. "/pg_isready") .. " -q -h " .. q(self.dir) .. " -p " .. self.port)
  end, 20, 0.05)
  if not ready then
    local log = procs.read_file(self.proc.log)
    self:stop()
    error("postgres did not start:\n" .. log)
  end
  if not self.role_made then
    self:psql("CREATE ROLE " .. PW_ROLE .. " LOGIN SUPERUSER PASSWORD " ..
      "'" .. (self.opts.password or "Pg-Secret-7731") .. "'")
    self.role_made = true
  end
end

-- The postmaster and its children (backends, checkpointer...).
function M:pids()
  if not self.proc then return {} end
  -- From /proc (procps may be missing on a fresh machine).
  local pids = { self.proc.pid }
  local p = io.popen("ls /proc")
  for name in p:lines() do
    if name:match("^%d+$") then
      local stat = procs.read_file("/proc/" .. name .. "/stat")
      local ppid = stat:match("^%d+ %b() %S+ (%d+)")
      if tonumber(ppid) == self.proc.pid then pids[#pids + 1] = tonumber(name) end
    end
  end
  p:close()
  return pids
end

-- Fast shutdown (SIGINT: clients are disconnected); mode "immediate"
-- (SIGQUIT) is a crash.  Waits until the postmaster is gone.
function M:stop(mode)
  if not self.proc then return end
  self:sigcont()
  procs.signal(self.proc, mode == "immediate" and "QUIT" or "INT")
  local gone = procs.wait_for(function() return not procs.alive(self.proc) end, 15, 0.05)
  if not gone then procs.signal(self.proc, "KILL") end
  procs.stop(self.proc)
  self.proc = nil
end

-- Freeze every server process: connections stay open, nothing answers.
function M:sigstop()
  self.frozen = self:pids()
  for _, pid in ipairs(self.frozen) do os.execute("kill -STOP " .. pid) end
end

function M:sigcont()
  for _, pid in ipairs(self.frozen or {}) do os.execute("kill -CONT " .. pid) end
  self.frozen = nil
end

-- Run sql in database db (default "postgres") with psql over the socket;
-- returns the unaligned, tuples-only output; error() on failure unless
-- soft, then nil and the message.
function M:psql(sql, db, soft)
  -- Bounded: a frozen server (a spec that failed between sigstop and
  -- sigcont) must fail the spec, not hang the suite.
  local ok, out = sh("timeout -k 5 60 " .. q(BIN .. "/psql") ..
    " -X -q -A -t -v ON_ERROR_STOP=1 -h " .. q(self.dir) ..
    " -p " .. self.port .. " -U postgres -d " .. q(db or "postgres") .. " -c " .. q(sql))
  if not ok then
    if soft then return nil, out end
    error("psql failed: " .. out .. "\nsql: " .. sql, 2)
  end
  return (out:gsub("\n$", ""))
end

-- A fresh database; returns a conninfo string (trust auth, no password).
function M:create_db(name)
  self:psql("DROP DATABASE IF EXISTS " .. name)
  self:psql("CREATE DATABASE " .. name)
  return self:conninfo(name)
end

function M:conninfo(name)
  return string.format("host=127.0.0.1 port=%d dbname=%s user=postgres connect_timeout=5",
    self.port, name)
end

-- A URI with the password role's credentials (wrong on purpose when
-- password is given and differs).
function M:password_conninfo(name, password)
  return string.format("postgresql://%s:%s@127.0.0.1:%d/%s", PW_ROLE,
    password or self.opts.password or "Pg-Secret-7731", self.port, name)
end

-- Stop and remove the directory.
function M:cleanup()
  self:stop()
  if self.dir and self.dir:match("^/tmp/ferry%-pg%-") then
    os.execute("rm -rf " .. q(self.dir))
  end
end

M.start = M.start        -- method: restart on the same dir and port
M.new = M.start_new      -- pg.new(opts): a fresh cluster, started
M.sleep = socket.sleep

return M
