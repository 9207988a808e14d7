-- A pool's `retry = { ... }` and `retries` (ferry.config): defaults per
-- kind of pool, the fields, and what is refused.
local config = require("ferry.config")

local function load(fields, kind)
  local members = kind == "backends" and 'backends = { "http://127.0.0.1:9001" }'
    or 'proxies = { "http://10.0.0.1:3128" }'
  return config.load_string('pool "p" { ' .. members .. (fields ~= "" and (", " .. fields) or "") ..
    " }\n", "cfg.lua")
end

local function set(list)
  local out = {}
  for _, v in ipairs(list) do out[v] = true end
  return out
end

describe("pool retry = { ... }", function()
  it("keeps a proxy pool's retries as they were: 2 after the first try, no budget", function()
    local p = assert(load("")).pools.p
    assert.equal(2, p.retries)
    assert.equal(3, p.retry.tries)
    assert.equal(0.01, p.retry.backoff)
    assert.equal(0.5, p.retry.max_backoff)
    assert.equal("equal", p.retry.jitter)
    assert.is_false(p.retry.budget)
    assert.same(set { "connect-failure", "reset", "timeout" }, p.retry.on)
    assert.same({}, p.retry.statuses)
    assert.equal(5, assert(load("retries = 5")).pools.p.retries)
    assert.equal(0, assert(load("retries = 0")).pools.p.retries)
  end)

  it("gives backend pools 3 tries, 100 ms doubling and a 20 % budget", function()
    local p = assert(load("", "backends")).pools.p
    assert.equal(2, p.retries)
    assert.equal(0.1, p.retry.backoff)
    assert.equal(2, p.retry.max_backoff)
    assert.equal(20, p.retry.budget)
    assert.equal(3, p.retry.budget_min)
    assert.same({}, p.retry.statuses) -- statuses are opt-in
  end)

  it("reads tries, back-off, jitter, budget and on", function()
    local p = assert(load('retry = { tries = 4, backoff = 0.2, max_backoff = 1, jitter = "full", ' ..
      'budget = 50, budget_min = 1, on = { "refused", "503", 504 } }')).pools.p
    assert.equal(3, p.retries)
    assert.equal(0.2, p.retry.backoff)
    assert.equal(1, p.retry.max_backoff)
    assert.equal("full", p.retry.jitter)
    assert.equal(50, p.retry.budget)
    assert.equal(1, p.retry.budget_min)
    assert.same(set { "refused" }, p.retry.on)
    assert.same({ [503] = true, [504] = true }, p.retry.statuses)
    local all = assert(load('retry = { on = { "5xx" } }')).pools.p.retry.statuses
    assert.is_true(all[500] and all[599])
    -- max_backoff follows a larger backoff when not given.
    assert.equal(3, assert(load("retry = { backoff = 3 }")).pools.p.retry.max_backoff)
    -- retry = false: one try; budget = false: no budget for a backend pool.
    assert.equal(0, assert(load("retry = false")).pools.p.retries)
    assert.is_false(assert(load("retry = { budget = false }", "backends")).pools.p.retry.budget)
    -- retries keeps working beside the other retry fields.
    p = assert(load("retries = 1, retry = { backoff = 0.3 }")).pools.p
    assert.equal(1, p.retries)
    assert.equal(0.3, p.retry.backoff)
  end)

  it("refuses what cannot be a retry policy, with its code", function()
    local cases = {
      { "retry = { tries = 0 }", "tries must be between 1 and 9", "FERRY-0235" },
      { "retry = { tries = 1.5 }", "tries must be a whole number", "FERRY-0235" },
      { "retry = { backoff = -1 }", "backoff must be between", "FERRY-0235" },
      { "retry = { backoff = 1, max_backoff = 0.5 }", "must not be under backoff", "FERRY-0235" },
      { 'retry = { jitter = "some" }', 'jitter must be "equal", "full" or "none"', "FERRY-0235" },
      { "retry = { budget = 101 }", "budget must be between 0 and 100", "FERRY-0235" },
      { "retry = { budget_min = -1 }", "budget_min must be between", "FERRY-0235" },
      { 'retry = { on = { "404" } }', '"404" is not connect-failure', "FERRY-0235" },
      { 'retry = { on = { "sometimes" } }', '"sometimes" is not', "FERRY-0235" },
      { 'retry = { on = "503" }', "on must be a list", "FERRY-0235" },
      { "retry = { tires = 3 }", 'unknown field "tires"', "FERRY-0235" },
      { "retry = 3", "expected a table", "FERRY-0235" },
      { "retries = 2, retry = { tries = 3 }", "retries and retry.tries", "FERRY-0236" },
    }
    for _, case in ipairs(cases) do
      local cfg, err = load(case[1])
      assert.is_nil(cfg, case[1])
      assert.matches("cfg.lua:1: pool \"p\": retry: ", err, 1, true)
      assert.matches(case[2], err, 1, true)
      assert.matches("[" .. case[3] .. "]", err, 1, true)
    end
  end)
end)
