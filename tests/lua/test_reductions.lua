-- Reductions along a dimension: t:sum/mean/min/max([dim [, keepdim]]), t:norm([p [, dim [, keepdim]]]),
-- against brute force over to_table(), on contiguous tensors and views; ties, NaN, empty dims, errors.
local H = dofile("tests/lua/harness.lua")
local check, check_eq, check_error = H.check, H.check_eq, H.check_error

-- ---- brute force over nested tables ----
local function shape_of(tbl)
  local s, x = {}, tbl
  while type(x) == "table" do s[#s + 1] = #x; x = x[1] end
  return s
end
local function get(tbl, idx)
  local x = tbl
  for _, i in ipairs(idx) do x = x[i] end
  return x
end
-- Calls fn(idx) for every multi-index of `shape` in row-major order.
local function each_index(shape, fn)
  local n = 1
  for _, s in ipairs(shape) do n = n * s end
  if n == 0 then return end
  local idx = {}
  for d = 1, #shape do idx[d] = 1 end
  for _ = 1, n do
    fn(idx)
    for d = #shape, 1, -1 do
      idx[d] = idx[d] + 1
      if idx[d] <= shape[d] then break end
      idx[d] = 1
    end
  end
end
-- The reduction along dim d of the nested table, as a nested table of `op(values)` with the
-- output shape (d removed, or kept as 1). op gets the list of values along d.
local function brute(tbl, d, keepdim, op)
  local shape = shape_of(tbl)
  local out_shape = {}
  for k = 1, #shape do
    if k ~= d then out_shape[#out_shape + 1] = shape[k] elseif keepdim then out_shape[#out_shape + 1] = 1 end
  end
  local out = {}
  local function put(idx, v)
    if #idx == 0 then out = v; return end
    local x = out
    for k = 1, #idx - 1 do x[idx[k]] = x[idx[k]] or {}; x = x[idx[k]] end
    x[idx[#idx]] = v
  end
  each_index(out_shape, function(oidx)
    local vals = {}
    for i = 1, shape[d] do
      local full, j = {}, 1
      for k = 1, #shape do
        if k == d then full[k] = i; if keepdim then j = j + 1 end
        else full[k] = oidx[j]; j = j + 1 end
      end
      vals[#vals + 1] = get(tbl, full)
    end
    put({table.unpack(oidx)}, op(vals))
  end)
  return out, out_shape
end
local function f32(x) return (string.unpack("f", string.pack("f", x))) end
local ops = {
  sum = function(v) local s = 0 for _, x in ipairs(v) do s = s + x end return f32(s) end,
  mean = function(v) local s = 0 for _, x in ipairs(v) do s = s + x end return f32(s / #v) end,
  norm = function(v) local s = 0 for _, x in ipairs(v) do s = s + x * x end return f32(math.sqrt(s)) end,
  norm1 = function(v) local s = 0 for _, x in ipairs(v) do s = s + math.abs(x) end return f32(s) end,
  norm3 = function(v) local s = 0 for _, x in ipairs(v) do s = s + math.abs(x) ^ 3 end return f32(s ^ (1 / 3)) end,
  norminf = function(v) local s = 0 for _, x in ipairs(v) do s = math.max(s, math.abs(x)) end return s end,
  max = function(v) local b, at = v[1], 1 for i, x in ipairs(v) do if x > b then b, at = x, i end end return b end,
  argmax = function(v) local b, at = v[1], 1 for i, x in ipairs(v) do if x > b then b, at = x, i end end return at end,
  min = function(v) local b, at = v[1], 1 for i, x in ipairs(v) do if x < b then b, at = x, i end end return b end,
  argmin = function(v) local b, at = v[1], 1 for i, x in ipairs(v) do if x < b then b, at = x, i end end return at end,
}

-- Checks every reduction of t along every dim, keepdim both ways, against brute force.
-- Results are f32 from an f64 accumulation: equal to the f64 brute force rounded to f32 up to
-- the last bit (the brute force sums in a different order), so a relative tolerance of 1e-6.
local function close(a, b)
  if type(a) == "table" then
    if type(b) ~= "table" or #a ~= #b then return false end
    for i = 1, #a do if not close(a[i], b[i]) then return false end end
    return true
  end
  return math.abs(a - b) <= 1e-6 * math.max(1, math.abs(b))
end
local function check_all(t, what)
  local tbl = t:to_table()
  for d = 1, t:dim() do
    for _, kd in ipairs({false, true}) do
      local tag = what .. " dim " .. d .. (kd and " keepdim" or "")
      local want, want_shape = brute(tbl, d, kd, ops.sum)
      local got = t:sum(d, kd)
      check_eq(got:shape(), want_shape, "sum shape " .. tag)
      check(close(got:to_table(), want), "sum " .. tag)
      check(close(t:mean(d, kd):to_table(), (brute(tbl, d, kd, ops.mean))), "mean " .. tag)
      check(close(t:norm(2, d, kd):to_table(), (brute(tbl, d, kd, ops.norm))), "norm " .. tag)
      check(close(t:norm(1, d, kd):to_table(), (brute(tbl, d, kd, ops.norm1))), "norm p=1 " .. tag)
      check(close(t:norm(3, d, kd):to_table(), (brute(tbl, d, kd, ops.norm3))), "norm p=3 " .. tag)
      check_eq(t:norm(math.huge, d, kd):to_table(), (brute(tbl, d, kd, ops.norminf)), "norm p=inf " .. tag)
      local v, i = t:max(d, kd)
      check_eq(v:to_table(), (brute(tbl, d, kd, ops.max)), "max values " .. tag)
      check_eq(i:to_table(), (brute(tbl, d, kd, ops.argmax)), "max indices " .. tag)
      check_eq({v:shape(), i:shape()}, {want_shape, want_shape}, "max shapes " .. tag)
      v, i = t:min(d, kd)
      check_eq(v:to_table(), (brute(tbl, d, kd, ops.min)), "min values " .. tag)
      check_eq(i:to_table(), (brute(tbl, d, kd, ops.argmin)), "min indices " .. tag)
    end
  end
end

H.section("the issue's example: W:sum(2) is per row, not the total")
local W = qf.tensor{{1, 2, 3}, {4, 5, 6}}
check_eq(W:sum(2):to_table(), {6, 15})
check_eq(W:sum(1):to_table(), {5, 7, 9})
check_eq(W:sum(2, true):shape(), {2, 1})
check_eq(W:sum(2, true):to_table(), {{6}, {15}})
check_eq(W:sum(1, true):to_table(), {{5, 7, 9}})
check_eq(W:mean(2):to_table(), {2, 5})
check_eq(W:norm(2, 1):to_table(), {f32(math.sqrt(17)), f32(math.sqrt(29)), f32(math.sqrt(45))})
local v, i = W:max(2)
check_eq({v:to_table(), i:to_table()}, {{3, 6}, {3, 3}})
v, i = W:min(1)
check_eq({v:to_table(), i:to_table()}, {{1, 2, 3}, {1, 1, 1}})
check_eq(i:dtype(), "i32", "indices are an i32 tensor")
check_eq(v:dtype(), "f32", "values are f32")
check_eq({W:sum(), W:mean(), W:min(), W:max(), W:norm()}, {21, 3.5, 1, 6, math.sqrt(91)}, 1e-12,
         "without a dim: today's scalars")
check_eq(W:norm(1), 21)
check_eq(W:norm(math.huge), 6)
check_eq(W:norm(3), (1 + 8 + 27 + 64 + 125 + 216) ^ (1 / 3), 1e-12)

H.section("brute force: 3-d tensor, every dim, contiguous and views")
local g = qf.rng(11)
local X = g:randn{3, 4, 5}
check_all(X, "contiguous [3,4,5]")
check_all(X:transpose(1, 3), "transpose(1,3)")
check_all(X:narrow(2, 2, 2), "narrow(2,2,2)")
check_all(X:select(3, 4), "select(3,4)")
local M = g:randn{6, 7}
check_all(M:t(), "t()")
check_all(M:cols(3, 4), "cols(3,4)")
check_all(M:rows(2, 3):t(), "rows(2,3):t()")
check(not M:cols(3, 4):is_contiguous(), "cols view is non-contiguous")
check_all(M:to("f16"), "f16 storage")
check_all(qf.tensor{{1, -2}, {3, 4}}:to("i8"), "i8 storage")

H.section("1-d tensors reduce to a 0-d tensor")
local r = qf.tensor{1, 2, 3}:sum(1)
check_eq(r:shape(), {})
check_eq(r:item(), 6)
check_eq(qf.tensor{1, 2, 3}:sum(1, true):shape(), {1})
v, i = qf.tensor{4, 9, 2}:max(1)
check_eq({v:item(), i:item()}, {9, 2})

H.section("a large tensor (the threaded path) against brute force")
local B = g:randn{300, 400}
local rows = B:to_table()
local s2, s1 = B:sum(2):to_table(), B:sum(1):to_table()
local ok2, ok1 = true, true
for r0 = 1, 300 do
  local acc = 0
  for c = 1, 400 do acc = acc + rows[r0][c] end
  ok2 = ok2 and close(s2[r0], f32(acc))
end
for c = 1, 400 do
  local acc = 0
  for r0 = 1, 300 do acc = acc + rows[r0][c] end
  ok1 = ok1 and close(s1[c], f32(acc))
end
check(ok2, "sum(2) of [300, 400]")
check(ok1, "sum(1) of [300, 400]")
local am = select(2, B:t():max(2)):to_table()
local okm = true
for c = 1, 400 do
  local best, at = rows[1][c], 1
  for r0 = 2, 300 do if rows[r0][c] > best then best, at = rows[r0][c], r0 end end
  okm = okm and am[c] == at
end
check(okm, "argmax along rows of the transposed [400, 300] view")

H.section("ties: the first index")
v, i = qf.tensor{{1, 3, 3}, {2, 2, 1}, {5, 5, 5}}:max(2)
check_eq({v:to_table(), i:to_table()}, {{3, 2, 5}, {2, 1, 1}})
v, i = qf.tensor{{1, 3, 3}, {2, 1, 1}, {5, 5, 5}}:min(2)
check_eq({v:to_table(), i:to_table()}, {{1, 1, 5}, {1, 2, 1}})
v, i = qf.tensor{{7, 7}, {7, 7}}:t():max(1)
check_eq(i:to_table(), {1, 1})

H.section("NaN propagates through max and min (at the first NaN)")
local nan = 0 / 0
local N = qf.tensor{{1, nan, 5, nan}, {2, 3, 1, 0}}
v, i = N:max(2)
local vt = v:to_table()
check(vt[1] ~= vt[1], "max of a row with NaN is NaN")
check_eq({vt[2], i:to_table()}, {3, {2, 2}})
v, i = N:min(2)
vt = v:to_table()
check(vt[1] ~= vt[1], "min of a row with NaN is NaN")
check_eq({vt[2], i:to_table()}, {0, {2, 4}})
v = N:max(1):to_table()
check(v[2] ~= v[2] and v[4] ~= v[4] and v[1] == 2 and v[3] == 5, "max along dim 1: NaN only in the NaN columns")
check(N:max() ~= N:max(), "whole-tensor max with a NaN is NaN")
check(N:min() ~= N:min(), "whole-tensor min with a NaN is NaN")
local sn = N:sum(2):to_table()
check(sn[1] ~= sn[1] and sn[2] == 6, "sum propagates NaN")
v, i = qf.tensor{nan, 1}:max(1)
check(v:item() ~= v:item() and i:item() == 1, "a leading NaN")

H.section("empty dimensions")
local E = qf.zeros{3, 0}
check_eq(E:sum(2):to_table(), {0, 0, 0}, "sum over an empty dim is 0")
check_eq(E:sum(2, true):shape(), {3, 1})
check_eq(E:norm(2, 2):to_table(), {0, 0, 0}, "norm over an empty dim is 0")
check_eq(E:sum(1):shape(), {0}, "sum over a non-empty dim of an empty tensor")
check_error(function() return E:mean(2) end, "mean: dimension 2 of shape [3, 0] is empty")
check_error(function() return E:max(2) end, "max: dimension 2 of shape [3, 0] is empty")
check_error(function() return E:min(2) end, "min: dimension 2 of shape [3, 0] is empty")
check_error(function() return E:max() end, "max: empty tensor")
check_error(function() return E:mean() end, "mean: empty tensor")
check_eq(E:sum(), 0)

H.section("errors")
check_error(function() return W:sum(3) end, "sum: dimension 3 out of range for a 2-d tensor of shape [2, 3] (valid: 1..2)")
check_error(function() return W:max(0) end, "max: dimension 0 out of range")
check_error(function() return W:min(-1) end, "min: dimension -1 out of range")
check_error(function() return W:mean(1.5) end, "bad argument #1 to 'mean' (number has no integer representation)")
check_error(function() return W:sum("2") end, "bad argument #1 to 'sum' (integer expected, got string)")
check_error(function() return W:sum(1, 1) end, "bad argument #2 to 'sum' (boolean expected, got number)")
check_error(function() return W:sum(nil, true) end, "bad argument #2 to 'sum' (keepdim given without a dimension)")
check_error(function() return W:norm(0) end, "bad argument #1 to 'norm' (p must be > 0 (or math.huge))")
check_error(function() return W:norm(-1, 1) end, "p must be > 0")
check_error(function() return W:norm(2, 3) end, "norm: dimension 3 out of range")
check_error(function() return W:sum(1, true, 1) end, "bad argument #3 to 'sum' (at most 2 arguments expected, got 3)")
check_error(function() return W:norm(2, 1, true, 1) end, "bad argument #4 to 'norm' (at most 3 arguments expected, got 4)")
check_error(function() return qf.tensor{}:max(1) end, "max: dimension 1 of shape [0] is empty")

H.summary()
