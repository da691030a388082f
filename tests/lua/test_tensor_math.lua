-- Elementwise math from Lua: methods change the tensor in place and return it, qf.* functions
-- return new tensors; numpy broadcasting in operators, methods and qf.where; u8 masks; NaN and
-- inf; non-contiguous views; every bad argument a named error. Values against Lua's math library.
local H = dofile("tests/lua/harness.lua")
local check, check_eq, check_error = H.check, H.check_eq, H.check_error

local function map2(tbl, f)
  local out = {}
  for i, row in ipairs(tbl) do
    out[i] = {}
    for j, x in ipairs(row) do out[i][j] = f(x, i, j) end
  end
  return out
end
-- Values as f32 stores them (tables from to_table are f32 rounded).
local function f32(x) return (string.unpack("f", string.pack("f", x))) end
local function close(a, b, rel)
  rel = rel or 2e-7
  if a ~= a then return b ~= b end
  if a == math.huge or a == -math.huge then return a == b end
  return math.abs(a - b) <= rel * math.max(1, math.abs(a))
end
local function check_close(got, want, rel, msg)
  local ok = true
  for i = 1, #want do
    for j = 1, #want[i] do
      if not close(want[i][j], got[i][j], rel) then ok = false end
    end
  end
  check(ok, (msg or "values") .. ": expected " .. H.show(want) .. ", got " .. H.show(got))
end

local vals = {{0.25, -1.5, 2.5, 4}, {9, -0.5, 1e-3, 16}}
local A = qf.tensor(vals)

H.section("unary: in place returns self, qf.* returns a new tensor")
local unary_ref = {
  abs = math.abs,
  sign = function(x) return x > 0 and 1 or x < 0 and -1 or x end,
  sqrt = math.sqrt,
  rsqrt = function(x) return 1 / math.sqrt(x) end,
  exp = math.exp,
  log = math.log,
  floor = math.floor,
  ceil = math.ceil,
  round = function(x)  -- half to even
    local f = math.floor(x)
    if x - f == 0.5 then return (f % 2 == 0) and f or f + 1 end
    return math.floor(x + 0.5)
  end,
  neg = function(x) return -x end,
  square = function(x) return x * x end,
  reciprocal = function(x) return 1 / x end,
  sigmoid = function(x) return 1 / (1 + math.exp(-x)) end,
  tanh = function(x) return (math.exp(2 * x) - 1) / (math.exp(2 * x) + 1) end,
}
check(qf.log == qf.log and type(qf.math.log) == "function" and qf.math.log ~= qf.log, "qf.log stays the run logger")
for name, ref in pairs(unary_ref) do
  local want = map2(vals, function(x) return f32(ref(f32(x))) end)
  check(name == "log" or H.show(qf[name](A):to_table()) == H.show(qf.math[name](A):to_table()) or name == "log", "qf." .. name .. " = qf.math." .. name)
  local r = qf.math[name](A)
  check_close(r:to_table(), want, 1e-6, "qf." .. name)
  check_eq(A:to_table(), map2(vals, f32), "qf." .. name .. " leaves its argument alone")
  local c = A:clone()
  check(rawequal(c[name](c), c), name .. " in place returns self")
  check_close(c:to_table(), want, 1e-6, "t:" .. name)
end
check_eq(qf.round(qf.tensor{0.5, 1.5, 2.5, -2.5}):to_table(), {0, 2, 2, -2}, "round half to even")
check(qf.math.log(qf.tensor{-1}):get(1) ~= qf.math.log(qf.tensor{-1}):get(1), "log(-1) is NaN (IEEE)")
check_eq(qf.sqrt(qf.tensor{0, 4}):to_table(), {0, 2})

H.section("in place through a non-contiguous view writes only the view")
local B = qf.tensor{{1, -2, 3}, {-4, 5, -6}}
local col = B:cols(2, 1)
col:abs()
check_eq(B:to_table(), {{1, 2, 3}, {-4, 5, -6}})
local Bt = B:t()
Bt:neg()
check_eq(B:to_table(), {{-1, -2, -3}, {4, -5, 6}})

H.section("broadcasting in operators")
local M = qf.tensor{{1, 2, 3}, {4, 5, 6}}
local c = qf.tensor{{10}, {20}}
local r = qf.tensor{100, 200, 300}
check_eq((M + c):to_table(), {{11, 12, 13}, {24, 25, 26}}, "column")
check_eq((M + r):to_table(), {{101, 202, 303}, {104, 205, 306}}, "row")
check_eq((c + r):to_table(), {{110, 210, 310}, {120, 220, 320}}, "outer: [2,1] + [3]")
check_eq((M - c):to_table(), {{-9, -8, -7}, {-16, -15, -14}})
check_eq((M * r):to_table(), {{100, 400, 900}, {400, 1000, 1800}})
check_eq((M / c):to_table(), map2({{1, 2, 3}, {4, 5, 6}}, function(x, i) return f32(x / (i * 10)) end))
check_eq((2 - M):to_table(), {{1, 0, -1}, {-2, -3, -4}}, "number first")
check_eq((M ^ 2):to_table(), {{1, 4, 9}, {16, 25, 36}})
check_eq((2 ^ qf.tensor{1, 3}):to_table(), {2, 8})
check_eq((M:t() + r:view(3, 1)):to_table(), {{101, 104}, {202, 205}, {303, 306}}, "a transposed view")
check_eq((qf.full({}, 5) + M):shape(), {2, 3}, "a 0-d tensor broadcasts to anything")
check_error(function() return M + qf.tensor{1, 2} end, "add: shapes [2, 3] and [2] do not broadcast")
check_error(function() return M * qf.tensor{{1, 2, 3}, {4, 5, 6}, {7, 8, 9}} end, "do not broadcast")

H.section("in-place methods broadcast into the tensor's own shape")
local W = qf.tensor{{2, 4}, {6, 8}}
W:div(qf.tensor{{2}, {2}})  -- per-row scale
check_eq(W:to_table(), {{1, 2}, {3, 4}})
W:mul(qf.tensor{10, 100})
check_eq(W:to_table(), {{10, 200}, {30, 400}})
W:add(qf.tensor{1, 1}, -5)  -- t += alpha·x with a broadcast x
check_eq(W:to_table(), {{5, 195}, {25, 395}})
check_error(function() qf.tensor{{1}, {2}}:add(qf.tensor{1, 2, 3}) end, "in place, the result must keep the shape [2, 1]")
local S = qf.tensor{{1, 2}, {3, 4}}
S:add(S:t())  -- the operand overlaps the destination: staged
check_eq(S:to_table(), {{2, 5}, {5, 8}})

H.section("pow, cmin, cmax, clamp")
local P = qf.tensor{{1, 4}, {9, 16}}
check_eq(qf.pow(P, 0.5):to_table(), {{1, 2}, {3, 4}})
check_eq(qf.pow(2, qf.tensor{0, 10}):to_table(), {1, 1024})
check_eq(P:clone():pow(qf.tensor{1, 0}):to_table(), {{1, 1}, {9, 1}})
check_eq(qf.cmin(P, qf.tensor{{5}, {10}}):to_table(), {{1, 4}, {9, 10}})
check_eq(qf.cmax(P, 5):to_table(), {{5, 5}, {9, 16}})
check_eq(P:clone():cmin(3):to_table(), {{1, 3}, {3, 3}})
local nanv = qf.tensor{0} / 0
check(qf.cmax(nanv, 1):get(1) ~= qf.cmax(nanv, 1):get(1), "cmax propagates NaN")
check_eq(qf.clamp(P, 2, 10):to_table(), {{2, 4}, {9, 10}})
check_eq(qf.clamp(P, nil, 5):to_table(), {{1, 4}, {5, 5}}, "one-sided")
check_eq(P:clone():clamp(5):to_table(), {{5, 5}, {9, 16}})
check_error(function() P:clamp(3, 2) end, "clamp: lower bound 3 is above upper bound 2")
check_error(function() P:clamp() end, "clamp: expected a lower bound, an upper bound or both")
check_error(function() qf.pow(2, 3) end, "pow: expected at least one qforge.Tensor, got two numbers")

H.section("comparisons give new u8 masks; where; logical ops; any/all; isnan/isfinite")
local X = qf.tensor{{-1, 0, 2}, {3, -4, 5}}
local pos = X:gt(0)
check_eq(pos:dtype(), "u8")
check_eq(pos:to_table(), {{0, 0, 1}, {1, 0, 1}})
check_eq(X:ge(qf.tensor{{0}, {5}}):to_table(), {{0, 1, 1}, {0, 0, 1}}, "broadcast comparison")
check_eq(X:lt(0):to_table(), {{1, 0, 0}, {0, 1, 0}})
check_eq(X:le(0):to_table(), {{1, 1, 0}, {0, 1, 0}})
check_eq(X:eq(qf.tensor{-1, -4, 5}):to_table(), {{1, 0, 0}, {0, 1, 1}})
check_eq(X:ne(0):to_table(), {{1, 0, 1}, {1, 1, 1}})
check_eq(pos:sum(), 3, "a mask sums to its count")
check_eq((X * pos):to_table(), {{0, 0, 2}, {3, 0, 5}}, "a u8 mask in arithmetic")
check_eq(qf.where(pos, X, 0):to_table(), {{0, 0, 2}, {3, 0, 5}})
check_eq(qf.where(pos, 1, qf.tensor{7, 8, 9}):to_table(), {{7, 8, 1}, {1, 8, 1}})
check_eq(pos:logical_and(X:lt(3)):to_table(), {{0, 0, 1}, {0, 0, 0}})
check_eq(pos:logical_or(X:eq(0)):to_table(), {{0, 1, 1}, {1, 0, 1}})
check_eq(pos:logical_not():to_table(), {{1, 1, 0}, {0, 1, 0}})
check(pos:any() and not pos:all(), "any/all")
check(qf.zeros{0}:all() and not qf.zeros{0}:any(), "empty: all true, any false")
local bad = qf.tensor{1, 0, -1} / 0
check_eq(bad:isnan():to_table(), {0, 1, 0})
check_eq(bad:isfinite():to_table(), {0, 0, 0})
check(not (qf.tensor{1, 2} / qf.tensor{1, 0}):isfinite():all(), "division by zero is caught by isfinite")
check_error(function() pos:abs() end, "in-place math needs an f32 tensor, got u8")
check_eq(qf.abs(pos):dtype(), "f32", "out of place reads any dtype")

H.section("argument errors")
check_error(function() X:lt("a") end, "bad argument #1 to 'lt' (number or qforge.Tensor expected, got string)")
check_error(function() qf.where(1, X, X) end, "qforge.Tensor expected")
check_error(function() qf.abs({1, 2}) end, "qforge.Tensor expected")
check_error(function() X:exp(1) end, "no arguments expected, got 1")
check_error(function() return X + "x" end, "number expected")

H.section("expand: numpy broadcasting as a read-only view")
local col3 = qf.tensor{ { 1 }, { 2 } }
local E = col3:expand(2, 3)
check_eq(E:to_table(), { { 1, 1, 1 }, { 2, 2, 2 } })
check(E:same_storage(col3) and E:is_expanded() and not E:is_contiguous(), "a view with a zero stride")
check_eq(qf.tensor{ 1, 2 }:expand{ 3, -1 }:to_table(), { { 1, 2 }, { 1, 2 }, { 1, 2 } }, "a new leading dimension; -1 keeps a size")
check_eq((E + qf.tensor{ 10, 20, 30 }):to_table(), { { 11, 21, 31 }, { 12, 22, 32 } }, "reads like the broadcast it is")
check_eq(E:contiguous():to_table(), E:to_table())
check_eq(E:sum(2):to_table(), { 3, 6 })
check_error(function() E:add(1) end, "expanded view")
check_error(function() E:abs() end, "expanded view")
check_error(function() E:fill(0) end, "expanded view")
check_error(function() E:set(1, 1, 0) end, "expanded view")
check_error(function() E:copy(qf.zeros{ 2, 3 }) end, "expanded view")
check_error(function() E:masked_fill(qf.ones{ 2, 3 }, 0) end, "expanded view")
check_error(function() E:scatter(2, qf.tensor{ { 1 }, { 1 } }, 0) end, "expanded view")
check_error(function() E:index_fill(2, qf.tensor{ 1 }, 0) end, "expanded view")
check_error(function() qf.tensor{ 1, 2 }:expand(3) end, "cannot expand [2] to [3]")
check_error(function() qf.tensor{ { 1, 2 } }:expand(2) end, "fewer dimensions")
check_error(function() qf.tensor{ 1 }:expand(-1, 2) end, "-1 is not allowed for a new leading dimension")

H.section("empty tensors")
check_eq(qf.exp(qf.zeros{0, 3}):shape(), {0, 3})
check_eq((qf.zeros{0, 3} + qf.tensor{1, 2, 3}):shape(), {0, 3})

H.summary()
