-- Defects found by trying the fleet and the broker client as a new user
-- would: each case here failed before its fix.
local procs = require("procs")

local function check(text)
  local cfg = procs.write_file(string.format("%s/trial-check-%d.lua", procs.tmp,
    math.random(1, 1e9)), text)
  local p = io.popen(procs.quote(procs.bin) .. " check -c " .. procs.quote(cfg) ..
    " 2>&1; echo \"rc=$?\"")
  local out = p:read("*a")
  p:close()
  return tonumber(out:match("rc=(%d+)")), out
end

describe("trial: ferry check on a mistyped connection string", function()
  local base = 'listen { name = "main", addr = "127.0.0.1:1" }\n'

  -- A misspelt option made only "not a valid connection string": the user
  -- could not tell which part was wrong.
  for _, c in ipairs {
    { "host=127.0.0.1 dbname=x user=u password=Trial-Pw-771 sslmod=require", "sslmod" },
    { "postgresql://u:Trial-Pw-771@127.0.0.1:5432/x?sslmod=require", "sslmod" },
    { "host=127.0.0.1 dbname=x password=Trial-Pw-771 bogus_opt=1", "bogus_opt" },
  } do
    it("names the unknown option of " .. c[1]:gsub("Trial%-Pw%-771", "***"), function()
      local rc, out = check(base .. 'store { postgres = "' .. c[1] .. '" }\n')
      assert.equal(1, rc, out)
      assert.truthy(out:find('unknown option "' .. c[2] .. '"', 1, true), out)
      assert.truthy(out:find("FERRY-0250", 1, true), out)
      assert.falsy(out:find("Trial-Pw-771", 1, true), out)
    end)
  end

  -- A piece of text that is not key=value may be the password itself:
  -- libpq's message quotes it, ferry's must not.
  it("never quotes a word without '=' (it may be the password)", function()
    local rc, out = check(base .. 'store { postgres = "host=x Trial-Pw-771" }\n')
    assert.equal(1, rc, out)
    assert.truthy(out:find("FERRY-0250", 1, true), out)
    assert.falsy(out:find("Trial-Pw-771", 1, true), out)
    rc, out = check(base .. 'store { postgres = "host=x Trial_Pw_771=1" }\n')
    assert.equal(1, rc, out)
    assert.falsy(out:find("Trial_Pw_771", 1, true), out)
  end)
end)
