-- Every FERRY-dddd code has one list: docs/errors.md.  A code counts as
-- used when the text "FERRY-" and four digits appears in any .c, .h or
-- .lua file under core/, lua/ or plugins/ (comments included); it counts
-- as documented when a table row of docs/errors.md starts with it
-- ("| FERRY-dddd |").  Each used code must be documented and each
-- documented code used.  The client answers of core/errors.c must sit in
-- the "Responses to clients" table with the status the core sends.

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

local function source_files()
  local p = assert(io.popen("find core lua plugins -type f \\( -name '*.c' -o -name '*.h' "
    .. "-o -name '*.lua' \\) | sort"))
  local files = {}
  for line in p:lines() do
    files[#files + 1] = line
  end
  p:close()
  return files
end

-- code -> first file using it
local function used_codes()
  local used = {}
  for _, path in ipairs(source_files()) do
    for code in read(path):gmatch("FERRY%-(%d%d%d%d)%f[%D]") do
      used["FERRY-" .. code] = used["FERRY-" .. code] or path
    end
  end
  return used
end

-- code -> { [section] = status-or-level column }
local function documented_codes()
  local docs, section = {}, ""
  for line in read("docs/errors.md"):gmatch("[^\n]*") do
    local h = line:match("^##%s+(.-)%s*$")
    if h then
      section = h
    end
    local code, col = line:match("^|%s*(FERRY%-%d%d%d%d)%s*|%s*([^|]-)%s*|")
    if code then
      docs[code] = docs[code] or {}
      docs[code][section] = col
    end
  end
  return docs
end

local function sorted_keys(t)
  local keys = {}
  for k in pairs(t) do
    keys[#keys + 1] = k
  end
  table.sort(keys)
  return keys
end

describe("FERRY codes", function()
  local used, docs = used_codes(), documented_codes()

  it("finds codes in the sources and in the docs", function()
    assert.is_true(#sorted_keys(used) > 50)
    assert.is_true(#sorted_keys(docs) > 50)
  end)

  it("documents every code the sources use", function()
    local missing = {}
    for _, code in ipairs(sorted_keys(used)) do
      if not docs[code] then
        missing[#missing + 1] = code .. " (" .. used[code] .. ")"
      end
    end
    assert.same({}, missing)
  end)

  it("uses every documented code", function()
    local stale = {}
    for _, code in ipairs(sorted_keys(docs)) do
      if not used[code] then
        stale[#stale + 1] = code
      end
    end
    assert.same({}, stale)
  end)

  it("documents each client answer of core/errors.c with its status", function()
    local wrong, n = {}, 0
    for code, status in read("core/errors.c"):gmatch('{%s*"(FERRY%-%d%d%d%d)",%s*(%d+),') do
      n = n + 1
      local row = docs[code] and docs[code]["Responses to clients"]
      if row ~= status then
        wrong[#wrong + 1] = code .. ": core " .. status .. ", docs " .. tostring(row)
      end
    end
    assert.is_true(n >= 28)
    assert.same({}, wrong)
  end)
end)
