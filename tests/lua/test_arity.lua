-- Argument-count discipline: every function of the qforge module and every method of every
-- class is registered with a declared arity (qf._arity), and a call with one argument more than
-- it uses fails with a "too many arguments" error before doing anything. Also: indexing an
-- object with a number or an unknown method name gives a clear error.
local H = dofile("tests/lua/harness.lua")
local check, check_eq, check_error = H.check, H.check_eq, H.check_error

check(type(qf._arity) == "table", "qf._arity exists")
check(type(qf._classes) == "table", "qf._classes exists")
local arity = qf._arity or {}

-- Functions that take a variable number of arguments (a shape given as integers, or one index
-- per dimension) declare kVariadic (-1) and check the count themselves; each has a case below.
local variadic = {
  ["qf.zeros"] = true, ["qf.ones"] = true, ["qf.full"] = true,
  ["qforge.Tensor:get"] = true, ["qforge.Tensor:set"] = true, ["qforge.Tensor:view"] = true,
  ["qforge.Rng:rand"] = true, ["qforge.Rng:randn"] = true,
  ["qf.randint"] = true, ["qforge.Tensor:permute"] = true, ["qforge.Tensor:expand"] = true,
}

-- Every function table: the module, and the methods of every class metatable in the registry
-- (found there, so a class registered without register_class is still enumerated).
local tables = { { "qf", ".", qf } }
-- and the module's sub-tables of functions (qf.linalg, qf.math)
for _, sub in ipairs{ "linalg", "math" } do
  if check(type(qf[sub]) == "table", "qf." .. sub .. " exists") then tables[#tables + 1] = { "qf." .. sub, ".", qf[sub] } end
end
local classes = {}
for k, mt in pairs(debug.getregistry()) do
  if type(k) == "string" and k:match("^qforge%.") and type(mt) == "table" and rawget(mt, "__name") == k then
    classes[#classes + 1] = k
  end
end
table.sort(classes)
for _, name in ipairs(classes) do
  local mt = debug.getregistry()[name]
  local methods = (qf._classes or {})[name]
  if methods == nil and type(rawget(mt, "__index")) == "table" then methods = rawget(mt, "__index") end
  if rawget(mt, "__index") ~= nil then
    check(methods ~= nil, name .. ": its methods are listed in qf._classes")
  end
  if methods then tables[#tables + 1] = { name, ":", methods } end
end
check(#classes >= 8, "found the classes (" .. table.concat(classes, ", ") .. ")")

local nfun, nchecked = 0, 0
for _, entry in ipairs(tables) do
  local owner, sep, t = entry[1], entry[2], entry[3]
  local names = {}
  for k, v in pairs(t) do if type(v) == "function" then names[#names + 1] = k end end
  table.sort(names)
  for _, k in ipairs(names) do
    local f, full = t[k], owner .. sep .. k
    nfun = nfun + 1
    local n = arity[f]
    if check(math.type(n) == "integer", full .. " is registered with a declared arity") then
      if n < 0 then
        check(variadic[full], full .. " is variadic but has no test case here")
      else
        -- n + 1 nils: the arity check runs before the body looks at any argument.
        local args = {}
        local ok, err = pcall(f, table.unpack(args, 1, n + 1))
        local want = n == 0 and string.format("bad argument #1 to '%s' (no arguments expected, got 1)", k)
                     or string.format("bad argument #%d to '%s' (at most %d argument%s expected, got %d)", n + 1, k, n,
                                      n == 1 and "" or "s", n + 1)
        check(not ok and tostring(err):find(want, 1, true),
              full .. " with " .. (n + 1) .. " arguments: expected '" .. want .. "', got " .. tostring(err))
        nchecked = nchecked + 1
      end
    end
  end
end
check(nfun >= 120, "enumerated " .. nfun .. " functions")
io.stderr:write("checked ", nchecked, " of ", nfun, " functions with one argument too many\n")

H.section("method calls do not count self")
local t = qf.tensor{{1, 2}, {3, 4}}
check_error(function() return t:sum(1, true, 3) end, "bad argument #3 to 'sum' (at most 2 arguments expected, got 3)")
check_error(function() return t:dim(1) end, "bad argument #1 to 'dim' (no arguments expected, got 1)")
check_error(function() return t:clone(nil) end, "bad argument #1 to 'clone' (no arguments expected, got 1)")
check_error(function() return t.sum(t, 1, true, 3) end, "bad argument #4 to 'sum' (at most 3 arguments expected, got 4)")
check_error(function() return qf.now(1) end, "bad argument #1 to 'now' (no arguments expected, got 1)")
check_error(function() return qf.grid({bits = 4}, {}) end, "bad argument #2 to 'grid' (at most 1 argument expected, got 2)")
check_error(function() return qf.rng(1):uniform(0, 1, 2) end, "bad argument #3 to 'uniform' (at most 2 arguments expected, got 3)")

H.section("variadic functions check their own count")
check_error(function() return qf.zeros(2, 3, "f32", 1) end, "bad argument #4 to 'zeros' (at most 3 arguments expected, got 4)")
check_error(function() return qf.zeros({2, 3}, "f32", 1) end, "bad argument #3 to 'zeros' (at most 2 arguments expected, got 3)")
check_error(function() return qf.ones({2}, nil, 1) end, "bad argument #3 to 'ones'")
check_error(function() return qf.full({2}, 1, "f32", true) end, "bad argument #4 to 'full' (at most 3 arguments expected, got 4)")
check_error(function() return t:view(4, 1, "x") end, "bad argument #3 to 'view' (at most 2 arguments expected, got 3)")
check_error(function() return t:view({4}, 1) end, "bad argument #2 to 'view' (at most 1 argument expected, got 2)")
check_error(function() return t:get(1, 1, 1) end, "get: expected 2 indices for a tensor of shape [2, 2], got 3")
check_error(function() return t:set(1, 1, 1, 5) end, "set: expected 2 indices for a tensor of shape [2, 2], got 3")
check_error(function() return qf.rng(1):rand({2}, 1) end, "bad argument #2 to 'rand' (at most 1 argument expected, got 2)")
check_error(function() return qf.rng(1):randn(2, 2, "x") end, "bad argument #3 to 'randn' (at most 2 arguments expected, got 3)")
check_error(function() return qf.randint(qf.rng(1), 0, 1, {2}, 1) end, "bad argument #5 to 'randint' (at most 4 arguments expected, got 5)")
check_error(function() return t:permute({2, 1}, 1) end, "bad argument #2 to 'permute' (at most 1 argument expected, got 2)")
check_error(function() return t:expand({2, 2}, 1) end, "bad argument #2 to 'expand' (at most 1 argument expected, got 2)")
check_eq(qf.zeros(2, 3, "f16"):dtype(), "f16", "within the count still works")
check_eq(qf.rng(1):rand(2, 3):shape(), {2, 3})
check_eq(t:view(4):shape(), {4})

H.section("indexing objects")
local W = qf.tensor{{1, 2}, {3, 4}}
check_error(function() return W[1][1] end, "qforge.Tensor cannot be indexed with [1]; use t:get(i, j) / t:select(1, i)")
check_error(function() return W[2.5] end, "qforge.Tensor cannot be indexed with [2.5]")
check_error(function() return W[true] end, "qforge.Tensor cannot be indexed with a boolean key")
check_error(function() return W:frobnicate() end, "no method 'frobnicate' on qforge.Tensor")
check_error(function() return W.shape_ end, "no method 'shape_' on qforge.Tensor")
check_error(function() return qf.rng(1)[1] end, "qforge.Rng cannot be indexed with [1]")
check_error(function() return qf.rng(1):frobnicate() end, "no method 'frobnicate' on qforge.Rng")
check_eq(W:get(2, 1), 3, "methods still resolve")
check(W.sum == W.sum, "method lookup is stable")

H.summary()
