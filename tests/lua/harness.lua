-- Tiny test harness for qforge Lua tests.
--   local H = dofile("tests/lua/harness.lua")
--   H.check(cond, msg); H.check_eq(a, b [, tol] [, msg]); H.check_error(fn, pattern); H.summary()
-- Failures are counted and printed with their location; summary() raises an error (so
-- `qforge run` exits non-zero) when any check failed.
local H = { passed = 0, failed = 0 }

local function where()
  local info = debug.getinfo(3, "Sl")
  return info and (info.short_src .. ":" .. info.currentline) or "?"
end

local function report(ok, msg, loc)
  if ok then
    H.passed = H.passed + 1
  else
    H.failed = H.failed + 1
    io.stderr:write("FAIL ", loc, ": ", tostring(msg), "\n")
  end
  return ok
end

local function show(v)
  if type(v) ~= "table" then return type(v) == "string" and string.format("%q", v) or tostring(v) end
  local parts = {}
  for i = 1, #v do parts[#parts + 1] = show(v[i]) end
  for k, x in pairs(v) do
    if not (math.type(k) == "integer" and k >= 1 and k <= #v) then parts[#parts + 1] = tostring(k) .. "=" .. show(x) end
  end
  return "{" .. table.concat(parts, ", ") .. "}"
end
H.show = show

-- Deep equality; numbers within tol (absolute) when tol is given.
local function equal(a, b, tol)
  if type(a) == "number" and type(b) == "number" then
    if tol then return math.abs(a - b) <= tol end
    return a == b
  end
  if type(a) ~= "table" or type(b) ~= "table" then return a == b end
  for k, v in pairs(a) do if not equal(v, b[k], tol) then return false end end
  for k in pairs(b) do if a[k] == nil then return false end end
  return true
end
H.equal = equal

function H.check(cond, msg)
  return report(cond and true or false, msg or "check failed", where())
end

-- check_eq(a, b [, tol] [, msg]): deep equality, numbers within tol when given.
function H.check_eq(a, b, tol, msg)
  if type(tol) == "string" then tol, msg = nil, tol end
  local ok = equal(a, b, tol)
  return report(ok, (msg and (msg .. ": ") or "") .. "expected " .. show(b) .. ", got " .. show(a) ..
                (tol and (" (tol " .. tol .. ")") or ""), where())
end

-- fn must raise an error whose message contains `pattern` (plain text or a Lua pattern).
function H.check_error(fn, pattern)
  local ok, err = pcall(fn)
  local loc = where()
  if ok then return report(false, "expected an error matching '" .. pattern .. "', got none", loc) end
  local msg = tostring(err)
  local found = msg:find(pattern, 1, true)
  if not found then
    local pok, r = pcall(string.find, msg, pattern)
    found = pok and r
  end
  return report(found and true or false, "error '" .. msg .. "' does not match '" .. pattern .. "'", loc)
end

function H.section(name)
  io.stderr:write("-- ", name, "\n")
end

function H.summary()
  local total = H.passed + H.failed
  print(string.format("%d checks, %d passed, %d failed", total, H.passed, H.failed))
  if qf and qf.run_dir and qf.run_dir() then
    qf.record("checks", { total = total, passed = H.passed, failed = H.failed })
  end
  if H.failed > 0 then error(H.failed .. " of " .. total .. " checks failed", 0) end
end

return H
