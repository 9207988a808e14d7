-- store.lua: the one store interface the inventory writes to, whichever
-- backend keeps it.
--
--   SQLite (ferry.store_sqlite, the default): store { path = ... }; every
--     call is synchronous and its answer is final.
--   PostgreSQL (ferry.store_pg): store { postgres = ... }; shared by the
--     fleet.  Writes are asynchronous: they return at once (the change is
--     queued, also while the database is down) and call done(ok, err[, u])
--     when the database acknowledged it (u: its updated_at in epoch
--     microseconds) or refused it.  The inventory is read when the
--     connection comes up (store_pg.read_all), not at config load.
--
-- The same calls on both:
--   store.put(key, url, pool, opts, enabled[, done])   -> true | nil, err
--   store.delete(key[, done])                          -> true | nil, err
--   store.set_enabled(key, enabled[, done, row])       -> true | nil, err
--   store.save_health() / store.load_health()          -> count | nil, err
--   store.backend()  -> "sqlite" | "pg";  store.async() -> boolean
-- SQLite only (the file): store.open(path[, key]), close(), is_open(),
-- proxies() (ferry.store_sqlite documents them).
local sqlite = require("ferry.store_sqlite")

local M = {}

local cur = sqlite -- the backend the inventory writes to

-- "sqlite" or "pg": choose the backend (on config commit).
function M.use(name)
  if name == "pg" then
    cur = require("ferry.store_pg")
  else
    cur = sqlite
  end
end

function M.backend() return cur.NAME end
function M.async() return cur.ASYNC end

-- The SQLite file.
M.open = sqlite.open
M.close = sqlite.close
M.is_open = sqlite.is_open
M.proxies = sqlite.proxies

function M.put(key, url, pool, opts, enabled, done)
  return cur.put(key, url, pool, opts, enabled, done)
end

function M.delete(key, done)
  return cur.delete(key, done)
end

-- row: the entry ({ url, pool, opts }) for a backend that writes it whole.
function M.set_enabled(key, enabled, done, row)
  return cur.set_enabled(key, enabled, done, row)
end

function M.save_health()
  return cur.save_health()
end

function M.load_health()
  return cur.load_health()
end

return M
