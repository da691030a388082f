-- The toolkit's tensor functions (docs/api/tensor_index.md): var/std/cumsum/cumprod/argmax/argmin,
-- sort/topk/kthvalue/median/quantile, constructors (eye, arange, linspace, randint, randperm, cat,
-- stack) and indexing (index_select, gather, scatter, scatter_add, masked_fill, index_fill, permute,
-- flip, invert_permutation): hand-computed values, brute force over to_table() on contiguous tensors
-- and views, ties, NaN, empty dimensions, and named errors.
local H = dofile("tests/lua/harness.lua")
local check, check_eq, check_error = H.check, H.check_eq, H.check_error
local nan = 0 / 0
local function isnan(x) return x ~= x end
local function f32(x) return (string.unpack("f", string.pack("f", x))) end

-- ---- brute-force helpers ----
-- The lines of t along d as Lua lists, in a fixed order that is the same for every tensor of the
-- same shape (t moved so that d is last, then row-major): a result of t's shape (or t's with
-- size 1 or k at d) lines up with t's lines.
local function lines(t, d)
  local n = t:dim()
  local len = t:size(d)
  local flat = t:transpose(d, n):contiguous():view(-1):to_table()
  local out = {}
  if len == 0 then
    local count = 1
    for e = 1, n do if e ~= d then count = count * t:size(e) end end
    for k = 1, count do out[k] = {} end
    return out
  end
  for k = 1, #flat // len do
    local l = {}
    for i = 1, len do l[i] = flat[(k - 1) * len + i] end
    out[k] = l
  end
  return out
end
-- (value, index) pairs of a line in the toolkit's total order: NaN largest, ties by index.
local function less(a, b, desc)
  local an, bn = isnan(a[1]), isnan(b[1])
  if an or bn then
    if an ~= bn then if desc then return an else return bn end end
    return a[2] < b[2]
  end
  if a[1] ~= b[1] then if desc then return a[1] > b[1] else return a[1] < b[1] end end
  return a[2] < b[2]
end
local function sorted_pairs(l, desc)
  local p = {}
  for i, v in ipairs(l) do p[i] = {v, i} end
  table.sort(p, function(a, b) return less(a, b, desc) end)
  return p
end
-- Equality that treats NaN as equal to NaN.
local function same(a, b)
  if type(a) == "table" then
    if type(b) ~= "table" or #a ~= #b then return false end
    for i = 1, #a do if not same(a[i], b[i]) then return false end end
    return true
  end
  return a == b or (isnan(a) and isnan(b))
end
local function close(a, b, rel)
  rel = rel or 1e-6
  if type(a) == "table" then
    if type(b) ~= "table" or #a ~= #b then return false end
    for i = 1, #a do if not close(a[i], b[i], rel) then return false end end
    return true
  end
  if isnan(a) or isnan(b) then return isnan(a) and isnan(b) end
  return math.abs(a - b) <= rel * math.max(1, math.abs(b))
end
local function var_line(l, unbiased)
  local s = 0
  for _, x in ipairs(l) do s = s + x end
  local m = s / #l
  local ss = 0
  for _, x in ipairs(l) do ss = ss + (x - m) ^ 2 end
  local den = #l - (unbiased and 1 or 0)
  return den > 0 and ss / den or nan
end
-- numpy's "linear" quantile of a line.
local function quantile_line(l, q)
  local x = {}
  for i, v in ipairs(l) do
    if isnan(v) then return nan end
    x[i] = v
  end
  table.sort(x)
  local pos = q * (#x - 1)
  local lo = math.floor(pos)
  local hi = math.min(lo + 1, #x - 1)
  local frac = pos - lo
  local a, b = x[lo + 1], x[hi + 1]
  if frac >= 0.5 then return b - (b - a) * (1 - frac) end
  return a + (b - a) * frac
end

local g = qf.rng(7)
local X = g:randn{3, 4, 5}
local M = g:randn{6, 7}
-- Inputs for the brute-force checks: 1-d, 2-d, 3-d, contiguous and views.
local inputs = {
  {"1-d", g:randn{9}},
  {"[6,7]", M},
  {"[6,7]:t()", M:t()},
  {"[6,7]:cols(2,4)", M:cols(2, 4)},
  {"[3,4,5]", X},
  {"[3,4,5]:transpose(1,3)", X:transpose(1, 3)},
  {"[3,4,5]:narrow(2,2,2)", X:narrow(2, 2, 2)},
  {"ties", qf.tensor{{1, 3, 3, 1, 2}, {5, 5, 5, 5, 5}, {0, -1, 0, -1, 0}}},
  {"NaN", qf.tensor{{1, nan, 5, nan, -2}, {2, 3, 1, 0, 3}, {nan, nan, nan, nan, nan}}},
  {"f16", M:to("f16")},
}
check(not M:cols(2, 4):is_contiguous() and not X:transpose(1, 3):is_contiguous(), "the views are non-contiguous")

H.section("var / std: hand values")
local W = qf.tensor{{1, 2, 3, 4}, {2, 2, 2, 2}}
check_eq(W:var(2):to_table(), {f32(5 / 3), 0})
check_eq(W:var(2, false, false):to_table(), {1.25, 0})
check_eq(W:std(2, true, false):to_table(), {{f32(math.sqrt(1.25))}, {0}})
check_eq(W:var(1):to_table(), {0.5, 0, 0.5, 2})
check_eq(W:var(2, true):shape(), {2, 1})
check_eq(W:var(), var_line({1, 2, 3, 4, 2, 2, 2, 2}, true), 1e-15, "var() over all values")
check_eq(W:var(nil, nil, false), var_line({1, 2, 3, 4, 2, 2, 2, 2}, false), 1e-15, "biased var() over all values")
check_eq(W:std(), math.sqrt(var_line({1, 2, 3, 4, 2, 2, 2, 2}, true)), 1e-15)
check(isnan(qf.tensor{{3}}:var(2):to_table()[1]), "one value, unbiased: NaN")
check_eq(qf.tensor{{3}}:var(2, false, false):to_table(), {0}, "one value, biased: 0")
check(isnan(qf.tensor{3}:var()), "one value over all, unbiased: NaN")
local vn = qf.tensor{{1, nan}, {1, 3}}:var(2):to_table()
check(isnan(vn[1]) and vn[2] == 2, "NaN propagates through var")
-- a large offset: the two-pass form keeps the variance (a one-pass sum of squares would lose it)
check_eq(qf.tensor{1e4 + 1, 1e4 + 2, 1e4 + 3}:var(1):item(), 1, "two passes")

H.section("var / std / cumsum / cumprod: brute force over every dim")
for _, inp in ipairs(inputs) do
  local name, t = inp[1], inp[2]
  for d = 1, t:dim() do
    local tag = name .. " dim " .. d
    local L = lines(t, d)
    for _, ub in ipairs({true, false}) do
      local v = t:var(d, true, ub)
      local want = {}
      for k, l in ipairs(L) do want[k] = {f32(var_line(l, ub))} end
      check(close(lines(v, d), want), "var " .. tag)
      local s = lines(t:std(d, true, ub), d)
      for k, l in ipairs(L) do want[k] = {f32(math.sqrt(var_line(l, ub)))} end
      check(close(s, want), "std " .. tag)
    end
    local cs, cp = lines(t:cumsum(d), d), lines(t:cumprod(d), d)
    local ws, wp = {}, {}
    for k, l in ipairs(L) do
      local a, p = 0, 1
      ws[k], wp[k] = {}, {}
      for i, x in ipairs(l) do
        a, p = a + x, p * x
        ws[k][i], wp[k][i] = f32(a), f32(p)
      end
    end
    check(close(cs, ws), "cumsum " .. tag)
    check(close(cp, wp), "cumprod " .. tag)
    check_eq(t:cumsum(d):shape(), t:shape(), "cumsum shape " .. tag)
  end
end

H.section("cumsum / cumprod: hand values, empty")
check_eq(qf.tensor{{1, 2, 3}, {4, 5, 6}}:cumsum(2):to_table(), {{1, 3, 6}, {4, 9, 15}})
check_eq(qf.tensor{{1, 2, 3}, {4, 5, 6}}:cumsum(1):to_table(), {{1, 2, 3}, {5, 7, 9}})
check_eq(qf.tensor{{1, 2, 3}, {4, 5, 6}}:cumprod(2):to_table(), {{1, 2, 6}, {4, 20, 120}})
check_eq(qf.tensor{1e8, 1, -1e8}:cumsum(1):to_table(), {1e8, f32(1e8 + 1), 1}, "f64 running sum, rounded per element")
check_eq(qf.zeros{3, 0}:cumsum(2):shape(), {3, 0})
check_eq(qf.zeros{0, 2}:cumprod(1):shape(), {0, 2})
check_eq(qf.tensor({1, 2, 3}, "i8"):cumsum(1):dtype(), "f32", "any dtype in, f32 out")

H.section("argmax / argmin")
local A = qf.tensor{{1, 7, 7}, {9, 2, 9}}
check_eq(A:argmax(2):to_table(), {2, 1})
check_eq(A:argmax(2):dtype(), "i32")
check_eq(A:argmin(1):to_table(), {1, 2, 1})
check_eq(A:argmax(2, true):shape(), {2, 1})
check_eq(A:argmax(), 4, "without dim: the row-major position (first on ties)")
check_eq(A:argmin(), 1)
check_eq(A:t():argmax(), 2, "the transposed view's row-major order")
check_eq(qf.tensor{1, nan, 3}:argmax(), 2, "NaN wins")
for _, inp in ipairs(inputs) do
  local t = inp[2]
  for d = 1, t:dim() do
    check_eq(t:argmax(d):to_table(), select(2, t:max(d)):to_table(), "argmax = max's indices " .. inp[1] .. " dim " .. d)
    check_eq(t:argmin(d):to_table(), select(2, t:min(d)):to_table(), "argmin = min's indices " .. inp[1] .. " dim " .. d)
  end
end
check_error(function() return qf.zeros{0}:argmax() end, "argmax: empty tensor")
check_error(function() return A:argmin(3) end, "argmin: dimension 3 out of range")

H.section("sort / topk / kthvalue / median / quantile: brute force over every dim")
for _, inp in ipairs(inputs) do
  local name, t = inp[1], inp[2]
  for d = 1, t:dim() do
    local tag = name .. " dim " .. d
    local L = lines(t, d)
    local n = t:size(d)
    for _, desc in ipairs({false, true}) do
      local v, i = t:sort(d, desc)
      local wv, wi = {}, {}
      for k, l in ipairs(L) do
        wv[k], wi[k] = {}, {}
        for j, p in ipairs(sorted_pairs(l, desc)) do wv[k][j], wi[k][j] = p[1], p[2] end
      end
      check(same(lines(v, d), wv), "sort values " .. tag .. (desc and " descending" or ""))
      check(same(lines(i, d), wi), "sort indices " .. tag .. (desc and " descending" or ""))
      check_eq({v:shape(), i:shape(), i:dtype()}, {t:shape(), t:shape(), "i32"}, "sort shapes " .. tag)
    end
    for _, k in ipairs({0, 1, 3, n}) do
      if k <= n then
        for _, largest in ipairs({true, false}) do
          for _, srt in ipairs({true, false}) do
            local v, i = t:topk(k, d, largest, srt)
            local wv, wi = {}, {}
            for kk, l in ipairs(L) do
              local sel = {}
              for j, p in ipairs(sorted_pairs(l, largest)) do if j <= k then sel[j] = p end end
              if not srt then table.sort(sel, function(a, b) return a[2] < b[2] end) end
              wv[kk], wi[kk] = {}, {}
              for j, p in ipairs(sel) do wv[kk][j], wi[kk][j] = p[1], p[2] end
            end
            local tg = string.format("topk k=%d largest=%s sorted=%s %s", k, largest, srt, tag)
            local shp = t:shape()
            shp[d] = k
            check_eq(v:shape(), shp, tg .. " shape")
            if k > 0 then
              check(same(lines(v, d), wv), tg .. " values")
              check(same(lines(i, d), wi), tg .. " indices")
            end
          end
        end
      end
    end
    for _, k in ipairs({1, 2, n}) do
      if k <= n then
        local v, i = t:kthvalue(k, d, true)
        local wv, wi = {}, {}
        for kk, l in ipairs(L) do
          local p = sorted_pairs(l, false)[k]
          wv[kk], wi[kk] = {p[1]}, {p[2]}
        end
        check(same(lines(v, d), wv) and same(lines(i, d), wi), "kthvalue k=" .. k .. " " .. tag)
      end
    end
    local mv, mi = t:median(d, true)
    local wv, wi = {}, {}
    for kk, l in ipairs(L) do
      local first_nan
      for j, x in ipairs(l) do if isnan(x) and not first_nan then first_nan = j end end
      if first_nan then
        wv[kk], wi[kk] = {nan}, {first_nan}
      else
        local p = sorted_pairs(l, false)[(#l - 1) // 2 + 1]
        wv[kk], wi[kk] = {p[1]}, {p[2]}
      end
    end
    check(same(lines(mv, d), wv) and same(lines(mi, d), wi), "median " .. tag)
    local qs = {0, 0.1, 0.25, 0.5, 0.7, 1}
    local q = t:quantile(qf.tensor(qs), d, true)  -- [#qs, ...t's shape with 1 at d]
    for j, p in ipairs(qs) do
      local want = {}
      for kk, l in ipairs(L) do want[kk] = {f32(quantile_line(l, f32(p)))} end
      check(same(lines(q:select(1, j), d), want), "quantile q=" .. p .. " " .. tag)
    end
    local want, got = {}, {}
    for kk, l in ipairs(L) do want[kk] = f32(quantile_line(l, 0.3)) end
    for kk, l in ipairs(lines(t:quantile(0.3, d, true), d)) do got[kk] = l[1] end
    check(same(got, want), "quantile(0.3) " .. tag)
    local shp = t:shape()
    table.remove(shp, d)
    check_eq(t:quantile(0.3, d):shape(), shp, "quantile(0.3) shape " .. tag)
  end
end

H.section("sort: hand values, stability, NaN")
local v, i = qf.tensor{3, 1, 2, 1, nan, 0}:sort()
check(same(v:to_table(), {0, 1, 1, 2, 3, nan}) and same(i:to_table(), {6, 2, 4, 3, 1, 5}), "ascending: NaN last, ties in index order")
v, i = qf.tensor{3, 1, 2, 1, nan, 0}:sort(1, true)
check(same(v:to_table(), {nan, 3, 2, 1, 1, 0}) and same(i:to_table(), {5, 1, 3, 2, 4, 6}), "descending: NaN first (largest), ties in index order")
v, i = qf.tensor{{2, 1}, {0, 5}}:sort()
check_eq({v:to_table(), i:to_table()}, {{{1, 2}, {0, 5}}, {{2, 1}, {1, 2}}}, "default: the last dim")
v, i = qf.tensor{{2, 1}, {0, 5}}:sort(nil, true)
check_eq({v:to_table(), i:to_table()}, {{{2, 1}, {5, 0}}, {{1, 2}, {2, 1}}}, "nil dim: the last, descending")
v, i = qf.tensor{{2, 1}, {0, 5}}:sort(1)
check_eq({v:to_table(), i:to_table()}, {{{0, 1}, {2, 5}}, {{2, 1}, {1, 2}}})
v, i = qf.tensor{0, -0.0, 0}:sort()
check_eq(i:to_table(), {1, 2, 3}, "-0 and 0 are ties")
check_eq(1 / v:to_table()[2], -math.huge, "the value -0 comes back as -0")
v, i = qf.tensor{-0.0, 0, -1}:sort(1, true)
check_eq(i:to_table(), {1, 2, 3}, "-0 and 0 are ties descending too")
v, i = qf.tensor{-math.huge, math.huge, 1, -1}:sort()
check_eq({v:to_table(), i:to_table()}, {{-math.huge, -1, 1, math.huge}, {1, 4, 3, 2}}, "infinities")
v, i = qf.zeros{3, 0}:sort()
check_eq({v:shape(), i:shape()}, {{3, 0}, {3, 0}}, "an empty dim sorts to empty")
v, i = qf.zeros{0, 4}:sort(2)
check_eq(v:shape(), {0, 4})

H.section("topk / kthvalue / median / quantile: hand values")
v, i = qf.tensor{1, 5, 3, 5, nan, 2}:topk(3)
check(same(v:to_table(), {nan, 5, 5}) and same(i:to_table(), {5, 2, 4}), "topk: NaN counts as largest, ties by index")
v, i = qf.tensor{1, 5, 3, 5, nan, 2}:topk(2, 1, false)
check_eq({v:to_table(), i:to_table()}, {{1, 2}, {1, 6}}, "smallest")
v, i = qf.tensor{1, 5, 3, 5, 0, 2}:topk(3, 1, true, false)
check_eq({v:to_table(), i:to_table()}, {{5, 3, 5}, {2, 3, 4}}, "unsorted: in index order")
v, i = qf.tensor{{1, 9}, {8, 2}}:topk(1, 1)
check_eq({v:to_table(), i:to_table()}, {{{8, 9}}, {{2, 1}}})
v, i = qf.tensor{4, 1, 3}:topk(0)
check_eq(v:shape(), {0}, "k = 0: empty")
v, i = qf.tensor{{5, 1, 4, 1}}:kthvalue(2)
check_eq({v:to_table(), i:to_table()}, {{1}, {4}}, "2nd smallest: the second 1 (stable order)")
v, i = qf.tensor{{5, 1, 4, 1}}:kthvalue(3, 2, true)
check_eq({v:to_table(), i:to_table()}, {{{4}}, {{3}}})
v, i = qf.tensor{5, nan, 1}:kthvalue(3)
check(isnan(v:item()) and i:item() == 2, "kthvalue past the numbers: NaN")
check_eq(qf.tensor{4, 1, 3, 2}:median(), 2, "lower median of an even count")
check_eq(qf.tensor{4, 1, 3}:median(), 3)
check(isnan(qf.tensor{4, nan, 3}:median()), "median with NaN: NaN")
v, i = qf.tensor{{4, 1, 3, 2}, {1, 1, 1, 0}}:median(2)
check_eq({v:to_table(), i:to_table()}, {{2, 1}, {4, 1}}, "the index in the stable order")
v, i = qf.tensor{{4, nan, 3, nan}}:median(2)
check(isnan(v:to_table()[1]) and i:to_table()[1] == 2, "median along a dim with NaN: NaN at the first NaN")
check_eq(qf.tensor{1, 2, 3, 4}:quantile(0.5), 2.5)
check_eq(qf.tensor{1, 2, 3, 4}:quantile(0), 1)
check_eq(qf.tensor{1, 2, 3, 4}:quantile(1), 4)
check_eq(qf.tensor{1, 2, 3, 4}:quantile(0.25), 1.75)
check_eq(qf.tensor{10, 0}:quantile(0.9), 9, 1e-12)
check_eq(qf.tensor{1, 2, 3, 4}:quantile(qf.tensor{0.5, 1}):to_table(), {2.5, 4})
check(isnan(qf.tensor{1, nan}:quantile(0.5)), "quantile with NaN: NaN")
local Q = qf.tensor{{1, 2, 3, 4}, {10, 20, 30, 40}}
check_eq(Q:quantile(0.5, 2):to_table(), {2.5, 25})
check_eq(Q:quantile(0.5, 2, true):shape(), {2, 1})
check_eq(Q:quantile(qf.tensor{0, 0.5, 1}, 2):to_table(), {{1, 10}, {2.5, 25}, {4, 40}}, "q first, then the reduced shape")
check_eq(Q:quantile(qf.tensor{0.5, 1}, 1, true):shape(), {2, 1, 4})
check_eq(Q:quantile(qf.tensor(0.5), 2):shape(), {2}, "a 0-d q tensor acts as a number")
check_eq(Q:quantile(qf.tensor{}, 2):shape(), {0, 2}, "no probabilities")
check_eq(Q:quantile(0.5), 7, "over all values")

H.section("a large input: the threaded path agrees with brute force on sampled lines")
local B = g:randn{64, 3000}
local bv, bi = B:sort(2)
local bt, bvt, bit = B:to_table(), bv:to_table(), bi:to_table()
local ok = true
for _, r in ipairs({1, 17, 64}) do
  local p = sorted_pairs(bt[r], false)
  for j = 1, #p do ok = ok and bvt[r][j] == p[j][1] and bit[r][j] == p[j][2] end
end
check(ok, "sort of [64, 3000] rows")
local tv, ti = B:t():topk(5, 1)
ok = true
local tvt, tit = tv:to_table(), ti:to_table()
for _, c in ipairs({1, 17, 64}) do  -- column c of the [3000, 64] view is row c of B
  local p = sorted_pairs(bt[c], true)
  for j = 1, 5 do ok = ok and tvt[j][c] == p[j][1] and tit[j][c] == p[j][2] end
end
check(ok, "topk along dim 1 of the transposed [3000, 64] view")
local bq = B:quantile(0.9, 2):to_table()
check(bq[5] == f32(quantile_line(bt[5], 0.9)) and bq[64] == f32(quantile_line(bt[64], 0.9)), "quantile of [64, 3000] rows")

H.section("sort family: errors")
check_error(function() return W:sort(3) end, "sort: dimension 3 out of range for a 2-d tensor of shape [2, 4] (valid: 1..2)")
check_error(function() return W:sort(1, 1) end, "bad argument #2 to 'sort' (boolean expected, got number)")
check_error(function() return W:topk(5) end, "topk: k = 5 out of range for dimension 2 of size 4 (valid: 0..4)")
check_error(function() return W:topk(-1) end, "topk: k = -1 out of range")
check_error(function() return W:topk(1.5) end, "bad argument #1 to 'topk' (number has no integer representation)")
check_error(function() return W:kthvalue(0) end, "kthvalue: k = 0 out of range for dimension 2 of size 4 (valid: 1..4)")
check_error(function() return W:kthvalue(5, 2) end, "kthvalue: k = 5 out of range")
check_error(function() return qf.zeros{2, 0}:kthvalue(1) end, "kthvalue: k = 1 out of range for dimension 2 of size 0 (the dimension is empty)")
check_error(function() return qf.zeros{2, 0}:median(2) end, "median: dimension 2 of shape [2, 0] is empty")
check_error(function() return qf.zeros{0}:median() end, "median: empty tensor")
check_error(function() return W:quantile(1.5) end, "quantile: probability 1.5 out of range (valid: 0..1)")
check_error(function() return W:quantile(-0.1, 1) end, "quantile: probability -0.1 out of range")
check_error(function() return W:quantile(nan) end, "quantile: probability")
check_error(function() return W:quantile(qf.tensor{{0.5}}) end, "bad argument #1 to 'quantile' (q must be a number or a 1-d tensor, got shape [1, 1])")
check_error(function() return W:quantile("x") end, "bad argument #1 to 'quantile' (number or qforge.Tensor expected, got string)")
check_error(function() return qf.zeros{2, 0}:quantile(0.5, 2) end, "quantile: dimension 2 of shape [2, 0] is empty")
check_error(function() return qf.zeros{0}:quantile(0.5) end, "quantile: empty tensor")
check_error(function() return W:var(3) end, "var: dimension 3 out of range")
check_error(function() return qf.zeros{2, 0}:var(2) end, "var: dimension 2 of shape [2, 0] is empty")
check_error(function() return qf.zeros{0}:std() end, "std: empty tensor")
check_error(function() return W:var(nil, true) end, "bad argument #2 to 'var' (keepdim given without a dimension)")
check_error(function() return W:cumsum() end, "bad argument #1 to 'cumsum' (integer expected, got no value)")
check_error(function() return W:median(1, true, 1) end, "bad argument #3 to 'median' (at most 2 arguments expected, got 3)")
check_error(function() return qf.tensor(1):sort() end, "sort: a 0-d tensor has no dimension")

H.section("eye / arange / linspace")
check_eq(qf.eye(3):to_table(), {{1, 0, 0}, {0, 1, 0}, {0, 0, 1}})
check_eq(qf.eye(2, 3):to_table(), {{1, 0, 0}, {0, 1, 0}})
check_eq(qf.eye(0):shape(), {0, 0})
check_error(function() return qf.eye(-1) end, "eye: sizes must be >= 0, got -1 x -1")
check_eq(qf.arange(5):to_table(), {0, 1, 2, 3, 4})
check_eq(qf.arange(1, 4):to_table(), {1, 2, 3}, "stop exclusive")
check_eq(qf.arange(1, 10, 3):to_table(), {1, 4, 7})
check_eq(qf.arange(1, 11, 3):to_table(), {1, 4, 7, 10})
check_eq(qf.arange(5, 0, -2):to_table(), {5, 3, 1})
check_eq(qf.arange(3, 3):shape(), {0})
check_eq(qf.arange(3, 1):shape(), {0}, "an empty range")
check_eq(qf.arange(0, 1, 0.25):to_table(), {0, 0.25, 0.5, 0.75})
check_eq(qf.arange(0, 1, 0.1):numel(), 10, "numpy: ceil((stop - start)/step)")
check_eq(qf.arange(0, 1, 0.1):to_table()[4], f32(3 * 0.1), "start + i·step in f64, rounded")
check_eq(qf.arange(1.5, 0, -0.5):to_table(), {1.5, 1, 0.5})
check_eq(qf.arange(1, 1.3, 0.1):numel(), 4, "numpy's float length: ceil((1.3 - 1)/0.1) = ceil(3.0000000000000004) = 4")
check_eq(qf.arange(0, 0.3, 0.1):numel(), 3)
check_error(function() return qf.arange(0, 5, 0) end, "arange: step must not be 0")
check_error(function() return qf.arange(0, 5, 0.0) end, "arange: step must not be 0")
check_error(function() return qf.arange(0, 1e12) end, "(at most 2^31)")
check_error(function() return qf.arange(0, 1, 1e-12) end, "(at most 2^31)")
check_error(function() return qf.arange(0, math.huge) end, "arange: arguments must be finite")
check_error(function() return qf.arange("a") end, "bad argument #1 to 'arange' (number expected, got string)")
check_error(function() return qf.arange(1, nil, 2) end, "bad argument #3 to 'arange' (step given without stop)")
check_eq(qf.linspace(0, 1, 5):to_table(), {0, 0.25, 0.5, 0.75, 1})
check_eq(qf.linspace(1, 0, 3):to_table(), {1, 0.5, 0})
check_eq(qf.linspace(2, 3, 1):to_table(), {2})
check_eq(qf.linspace(2, 3, 0):shape(), {0})
check_eq(qf.linspace(0, 1, 3):to_table()[3], 1, "the last value is exactly b")
check_error(function() return qf.linspace(0, 1, -1) end, "linspace: n = -1 out of range")
check_error(function() return qf.linspace(0, 1, 2.5) end, "bad argument #3 to 'linspace' (number has no integer representation)")

H.section("randint / randperm: defined from Rng draws, bit for bit")
local ri = qf.randint(qf.rng(5), 3, 6, 200)
local r2 = qf.rng(5)
local want, lo_hit, hi_hit = {}, false, false
for k = 1, 200 do want[k] = r2:randint(3, 6) end
check_eq(ri:to_table(), want, "qf.randint(rng, lo, hi, n) = n draws of rng:randint(lo, hi)")
check_eq(ri:dtype(), "i32")
for _, x in ipairs(ri:to_table()) do lo_hit, hi_hit = lo_hit or x == 3, hi_hit or x == 6 end
check(lo_hit and hi_hit, "lo and hi are inclusive")
check_eq(qf.randint(qf.rng(1), 0, 9, {2, 3}):shape(), {2, 3})
check_eq(qf.randint(qf.rng(1), 0, 9, 2, 3):shape(), {2, 3})
check_error(function() return qf.randint(qf.rng(1), 5, 4, 2) end, "randint: empty range [5, 4]")
check_error(function() return qf.randint(qf.rng(1), 0, 2 ^ 40 // 1, 2) end, "does not fit in i32")
check_error(function() return qf.randint({}, 0, 1, 2) end, "bad argument #1 to 'randint' (qforge.Rng expected, got table)")
check_error(function() return qf.randint(qf.rng(1), 0, 1, 2, "x") end, "bad argument #5 to 'randint' (at most 4 arguments expected, got 5)")
local rp = qf.randperm(qf.rng(9), 50)
local r3 = qf.rng(9)
local p = {}
for k = 1, 50 do p[k] = k end
for k = 49, 1, -1 do
  local j = r3:randint(0, k)
  p[k + 1], p[j + 1] = p[j + 1], p[k + 1]
end
check_eq(rp:to_table(), p, "randperm = Fisher–Yates from rng:randint(0, i), i = n-1 .. 1, 1-based")
check_eq(rp:dtype(), "i32")
local seen = {}
for _, x in ipairs(rp:to_table()) do seen[x] = true end
local all = true
for k = 1, 50 do all = all and seen[k] end
check(all, "randperm is a permutation of 1..n")
check_eq(qf.randperm(qf.rng(1), 0):shape(), {0})
check_eq(qf.randperm(qf.rng(1), 1):to_table(), {1})
check_error(function() return qf.randperm(qf.rng(1), -1) end, "randperm: n = -1 out of range")

H.section("cat / stack")
local C1, C2 = qf.tensor{{1, 2}, {3, 4}}, qf.tensor{{5, 6}}
check_eq(qf.cat({C1, C2}):to_table(), {{1, 2}, {3, 4}, {5, 6}}, "default dim 1")
check_eq(qf.cat({C1, C1:t()}, 2):to_table(), {{1, 2, 1, 3}, {3, 4, 2, 4}}, "views")
check_eq(qf.cat({C1, qf.zeros{2, 0}}, 2):to_table(), {{1, 2}, {3, 4}}, "an empty part")
check_eq(qf.cat({X:narrow(3, 1, 2), X:narrow(3, 3, 3)}, 3):to_table(), X:to_table(), "3-d: the parts make the whole")
check_eq(qf.cat({qf.tensor{1, 2}:to("i32"), qf.tensor{3}:to("i32")}):dtype(), "i32", "dtype kept")
check_eq(qf.stack({qf.tensor{1, 2}, qf.tensor{3, 4}}):to_table(), {{1, 2}, {3, 4}})
check_eq(qf.stack({qf.tensor{1, 2}, qf.tensor{3, 4}}, 2):to_table(), {{1, 3}, {2, 4}})
check_eq(qf.stack({C1, C1:t()}, 3):to_table(), {{{1, 1}, {2, 3}}, {{3, 2}, {4, 4}}})
check_eq(qf.stack({qf.zeros{0}, qf.zeros{0}}):shape(), {2, 0})
check_error(function() return qf.cat({C1, qf.zeros{1, 3}}) end,
            "cat: tensor 2 has shape [1, 3], tensor 1 has [2, 2] (sizes must match except in dimension 1)")
check_error(function() return qf.cat({C1, qf.zeros{2}}) end, "cat: tensor 2 has shape [2]")
check_error(function() return qf.cat({C1, C1}, 3) end, "cat: dimension 3 out of range for 2-d tensors of shape [2, 2] (valid: 1..2)")
check_error(function() return qf.cat({C1, C1:to("f16")}) end, "cat: tensor 2 has dtype f16, tensor 1 has f32")
check_error(function() return qf.cat({}) end, "bad argument #1 to 'cat' (empty list of tensors)")
check_error(function() return qf.cat({C1, 3}) end, "bad argument #1 to 'cat' (element 2 is a number, not a qforge.Tensor)")
check_error(function() return qf.cat(C1) end, "bad argument #1 to 'cat' (table expected, got qforge.Tensor)")
check_error(function() return qf.stack({C1, C2}) end, "stack: tensor 2 has shape [1, 2], tensor 1 has [2, 2] (all shapes must be equal)")
check_error(function() return qf.stack({C1}, 4) end, "stack: dimension 4 out of range for stacking 2-d tensors (valid: 1..3)")

H.section("index_select / flip / permute")
local S = qf.tensor{{1, 2, 3}, {4, 5, 6}}
check_eq(S:index_select(2, qf.tensor{3, 1, 3}):to_table(), {{3, 1, 3}, {6, 4, 6}})
check_eq(S:index_select(1, qf.tensor{2}:to("i32")):to_table(), {{4, 5, 6}})
check_eq(S:index_select(1, qf.tensor{}):shape(), {0, 3}, "no indices")
check_eq(S:t():index_select(1, qf.tensor{3, 2}):to_table(), {{3, 6}, {2, 5}}, "a transposed view")
check(not S:index_select(1, qf.tensor{1}):same_storage(S), "index_select copies")
check_eq(S:to("i8"):index_select(2, qf.tensor{2}):dtype(), "i8", "dtype kept")
for _, inp in ipairs(inputs) do
  local t = inp[2]
  for d = 1, t:dim() do
    local n = t:size(d)
    local perm = qf.randperm(g, n)
    local L, P = lines(t, d), lines(t:index_select(d, perm), d)
    local F = lines(t:flip(d), d)
    local pt = perm:to_table()
    local okp, okf = true, true
    for k, l in ipairs(L) do
      for j = 1, n do
        okp = okp and same(P[k][j], l[pt[j]])
        okf = okf and same(F[k][j], l[n + 1 - j])
      end
    end
    check(okp, "index_select with a permutation " .. inp[1] .. " dim " .. d)
    check(okf, "flip " .. inp[1] .. " dim " .. d)
    -- invert_permutation undoes it
    local back = t:index_select(d, perm):index_select(d, qf.invert_permutation(perm))
    check(same(back:to_table(), t:to_table()), "index_select by the inverse undoes it")
  end
end
check_eq(qf.tensor{1, 2, 3}:flip(1):to_table(), {3, 2, 1})
check_eq(S:flip(1):to_table(), {{4, 5, 6}, {1, 2, 3}})
check_eq(qf.zeros{0, 2}:flip(1):shape(), {0, 2})
local P3 = X:permute(3, 1, 2)
check_eq(P3:shape(), {5, 3, 4})
check(P3:same_storage(X), "permute is a view")
check_eq(P3:get(5, 2, 3), X:get(2, 3, 5))
check_eq(X:permute{2, 3, 1}:shape(), {4, 5, 3})
check_eq(X:permute(1, 2, 3):to_table(), X:to_table())
local ok3 = true
local XP = X:permute(2, 3, 1)
for a = 1, 3 do for b = 1, 4 do for c = 1, 5 do ok3 = ok3 and XP:get(b, c, a) == X:get(a, b, c) end end end
check(ok3, "permute(2, 3, 1): out[b][c][a] = X[a][b][c]")
local Y = X:clone()
Y:permute(3, 2, 1):select(1, 2):fill(0)
check_eq(Y:select(3, 2):sum(), 0, "writes through a permuted view")
check_eq(qf.invert_permutation(qf.tensor{3, 1, 2}):to_table(), {2, 3, 1})
check_eq(qf.invert_permutation(qf.tensor{}):shape(), {0})
check_error(function() return S:index_select(2, qf.tensor{0}) end,
            "index_select: index 0 out of range for dimension 2 of size 3 (valid: 1..3)")
check_error(function() return S:index_select(1, qf.tensor{1, 3}) end, "index_select: index 3 out of range for dimension 1 of size 2 (valid: 1..2)")
check_error(function() return S:index_select(1, qf.tensor{1.5}) end, "index_select: the index tensor holds a non-integer value 1.5")
check_error(function() return S:index_select(1, qf.tensor{1e20}) end, "index_select: index 1e+20 out of range (at element 1)")
check_error(function() return S:index_select(1, qf.tensor{nan}) end, "index_select: the index tensor holds a non%-integer value %-?nan")
check_error(function() return S:index_select(1, qf.tensor{{1}}) end, "index_select: the index tensor must be 1-d, got shape [1, 1]")
check_error(function() return S:index_select(3, qf.tensor{1}) end, "index_select: dimension 3 out of range")
check_error(function() return S:index_select(1, {1}) end, "bad argument #2 to 'index_select' (qforge.Tensor expected, got table)")
check_error(function() return qf.zeros{2, 0}:index_select(2, qf.tensor{1}) end, "of size 0 (the dimension is empty)")
check_error(function() return S:flip(0) end, "flip: dimension 0 out of range")
check_error(function() return X:permute(1, 2) end, "permute: expected 3 dimensions for a tensor of shape [3, 4, 5], got 2")
check_error(function() return X:permute(1, 2, 2) end, "permute: dimension 2 repeated (expected a permutation of 1..3)")
check_error(function() return X:permute(1, 2, 4) end, "permute: dimension 4 out of range for a 3-d tensor of shape [3, 4, 5] (valid: 1..3)")
check_error(function() return X:permute({1, 2, 3}, 1) end, "bad argument #2 to 'permute' (at most 1 argument expected, got 2)")
check_error(function() return X:permute{1, "a", 3} end, "bad argument #1 to 'permute' (entry 2 is not an integer)")
check_error(function() return qf.invert_permutation(qf.tensor{1, 1}) end, "invert_permutation: value 1 appears at positions 1 and 2 (not a permutation)")
check_error(function() return qf.invert_permutation(qf.tensor{1, 3}) end, "invert_permutation: value 3 at position 2 out of range (valid: 1..2)")

H.section("gather / scatter / scatter_add")
local G = qf.tensor{{1, 2, 3}, {4, 5, 6}}
check_eq(G:gather(2, qf.tensor{{3, 1}, {2, 2}}):to_table(), {{3, 1}, {5, 5}})
check_eq(G:gather(1, qf.tensor{{2, 1, 2}}):to_table(), {{4, 2, 6}})
check_eq(G:t():gather(1, qf.tensor{{2, 1}}):to_table(), {{2, 4}}, "a transposed view")
-- brute force on 3-d: out[i][j][k] = X[i][idx[i][j][k]][k] along dim 2
local I3 = qf.randint(g, 1, 4, 3, 6, 5)
local Gx, Xt, It = X:gather(2, I3):to_table(), X:to_table(), I3:to_table()
local okg = true
for a = 1, 3 do for b = 1, 6 do for c = 1, 5 do okg = okg and Gx[a][b][c] == Xt[a][It[a][b][c]][c] end end end
check(okg, "gather along dim 2 of [3,4,5] with a [3,6,5] index")
local Z = qf.zeros{2, 4}
check(Z:scatter(2, qf.tensor{{1, 3}, {4, 4}}, qf.tensor{{10, 20, 99}, {30, 40, 99}}) == Z, "scatter returns self")
check_eq(Z:to_table(), {{10, 0, 20, 0}, {0, 0, 0, 40}}, "a repeated index keeps the last write")
Z:scatter(1, qf.tensor{{2, 1}}, 7)
check_eq(Z:to_table(), {{10, 7, 20, 0}, {7, 0, 0, 40}}, "a number source")
local SA = qf.zeros{3}
SA:scatter_add(1, qf.tensor{1, 3, 1, 1}, qf.tensor{1, 2, 3, 4})
check_eq(SA:to_table(), {8, 0, 2}, "scatter_add sums repeated indices")
-- brute force: scatter into a transposed view
local T0 = qf.zeros{5, 3}
local TV = T0:t()  -- [3, 5] view
local SI = qf.tensor{{5, 1}, {2, 2}, {3, 4}}
local SS = qf.tensor{{1, 2, 9}, {3, 4, 9}, {5, 6, 9}}
TV:scatter(2, SI, SS)
-- TV[1][5] = 1, TV[1][1] = 2; TV[2][2] = 3 then 4 (the last write); TV[3][3] = 5, TV[3][4] = 6
check_eq(T0:to_table(), {{2, 0, 0}, {0, 4, 0}, {0, 0, 5}, {0, 0, 6}, {1, 0, 0}}, "scatter through a transposed view")
-- scatter is gather's inverse on a permutation
local perm = qf.randperm(g, 7):view(1, 7)
local src = g:randn{1, 7}
local dst = qf.zeros{1, 7}:scatter(2, perm, src)
check_eq(dst:gather(2, perm):to_table(), src:to_table(), "gather(scatter(src)) = src for a permutation")
check_error(function() return G:gather(2, qf.tensor{{4}}) end, "gather: index 4 out of range for dimension 2 of size 3 (valid: 1..3)")
check_error(function() return G:gather(2, qf.tensor{1, 2}) end, "gather: the index tensor has shape [2], expected 2 dimensions")
check_error(function() return G:gather(2, qf.tensor{{1}, {1}, {1}}) end,
            "gather: the index shape [3, 1] exceeds the tensor's [2, 3] in dimension 1 (only dimension 2 may be larger)")
check_error(function() return Z:scatter(2, qf.tensor{{1, 2}}, qf.tensor{{1}}) end, "scatter: the source shape [1, 1] is smaller than the index shape [1, 2]")
check_error(function() return Z:scatter(2, qf.tensor{{5}}, 1) end, "scatter: index 5 out of range for dimension 2 of size 4 (valid: 1..4)")
check_error(function() return Z:scatter(2, qf.tensor{{1}}, "x") end, "bad argument #3 to 'scatter' (number or qforge.Tensor expected, got string)")
check_error(function() return Z:scatter_add(2, qf.tensor{{1}}, 1) end, "bad argument #3 to 'scatter_add' (qforge.Tensor expected, got number)")
check_error(function() return qf.zeros({2}, "i32"):scatter(1, qf.tensor{1}, 1) end, "scatter: tensor has dtype i32")

H.section("masked_fill / index_fill")
local MF = qf.tensor{{1, 2}, {3, 4}}
check(MF:masked_fill(qf.tensor{{1, 0}, {0, 2}}, -1) == MF, "masked_fill returns self")
check_eq(MF:to_table(), {{-1, 2}, {3, -1}})
MF:masked_fill(qf.tensor({{0, 1}, {0, 0}}, "u8"), 9)
check_eq(MF:to_table(), {{-1, 9}, {3, -1}}, "a u8 mask")
MF:masked_fill(MF:t(), 0)  -- the mask aliases the tensor (staged first)
check_eq(MF:to_table(), {{0, 0}, {0, 0}})
local NM = qf.tensor{1, 2}
NM:masked_fill(qf.tensor{nan, 0}, 5)
check_eq(NM:to_table(), {5, 2}, "NaN in a mask counts as true")
local MV = qf.zeros{3, 3}
MV:cols(2, 2):masked_fill(qf.tensor{{1, 0}, {0, 1}, {1, 1}}, 1)
check_eq(MV:to_table(), {{0, 1, 0}, {0, 0, 1}, {0, 1, 1}}, "through a column view")
check_error(function() return MF:masked_fill(qf.zeros{2}, 1) end, "masked_fill: the mask has shape [2], the tensor [2, 2]")
local IF = qf.zeros{2, 3}
check(IF:index_fill(2, qf.tensor{1, 3}, 4) == IF, "index_fill returns self")
check_eq(IF:to_table(), {{4, 0, 4}, {4, 0, 4}})
IF:t():index_fill(2, qf.tensor{2}, -1)
check_eq(IF:to_table(), {{4, 0, 4}, {-1, -1, -1}}, "through a transposed view")
check_error(function() return IF:index_fill(1, qf.tensor{3}, 0) end, "index_fill: index 3 out of range for dimension 1 of size 2 (valid: 1..2)")

H.section("arity of the variadic functions")
check_error(function() return qf.randint(qf.rng(1), 0, 1, {2}, 1) end, "bad argument #5 to 'randint' (at most 4 arguments expected, got 5)")
check_error(function() return X:permute({3, 1, 2}, nil, 1) end, "bad argument #2 to 'permute' (at most 1 argument expected, got 3)")

H.summary()
