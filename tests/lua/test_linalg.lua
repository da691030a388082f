-- qf.linalg: each function against values worked out by hand on small matrices, non-contiguous
-- inputs (transposed views, narrows), other dtypes, named errors, and every function's arity.
local H = dofile("tests/lua/harness.lua")
local check, check_eq, check_error = H.check, H.check_eq, H.check_error
local la = qf.linalg

-- max |a − b| over two tensors / nested tables of the same shape
local function flat(x, out)
  out = out or {}
  if type(x) == "number" then out[#out + 1] = x return out end
  if qf.is_tensor(x) then x = x:to_table() end
  for _, v in ipairs(x) do flat(v, out) end
  return out
end
local function diff(a, b)
  local fa, fb = flat(a), flat(b)
  if #fa ~= #fb then return math.huge end
  local d = 0
  for i = 1, #fa do d = math.max(d, math.abs(fa[i] - fb[i])) end
  return d
end
local function close(a, b, tol, msg)
  local d = diff(a, b)
  return check(d <= (tol or 1e-6), (msg or "values") .. ": max difference " .. d .. " > " .. (tol or 1e-6) ..
               "\n  got " .. H.show(flat(a)) .. "\n  want " .. H.show(flat(b)))
end
local function eye(n)
  local t = qf.zeros(n, n)
  for i = 1, n do t:set(i, i, 1) end
  return t
end
local function same(a, b) return H.equal(a:to_table(), b:to_table()) end

H.section("qf.linalg")
for _, name in ipairs({"cholesky", "solve_triangular", "solve", "inv", "eigh", "svd", "qr", "random_orthogonal",
                       "hadamard", "random_hadamard", "random_hadamard_matrix"}) do
  check(type(la[name]) == "function", "qf.linalg." .. name)
end

H.section("cholesky")
-- L = [[2, 0, 0], [1, 3, 0], [-1, 1, √19]]; A = L·Lᵀ worked out by hand
local A = qf.tensor{{4, 2, -2}, {2, 10, 2}, {-2, 2, 21}}
local L = la.cholesky(A)
close(L, {{2, 0, 0}, {1, 3, 0}, {-1, 1, math.sqrt(19)}}, 1e-6, "cholesky L")
check(L:is_contiguous() and L:dtype() == "f32", "a contiguous f32 result")
check(not L:same_storage(A), "a copy")
close(la.cholesky(A, {upper = true}), L:t(), 0, "upper = Lᵀ")
close(L:matmul(L:t()), A, 1e-5, "L·Lᵀ = A")
close(la.cholesky(A:t()), L, 0, "a transposed view (symmetric A)")
local big = qf.zeros(5, 7)
big:narrow(1, 2, 3):narrow(2, 3, 3):copy(A)
local view = big:narrow(1, 2, 3):narrow(2, 3, 3)
check(not view:is_contiguous(), "the narrow is a non-contiguous view")
close(la.cholesky(view), L, 0, "a narrow")
close(la.cholesky(A:to("f16")), L, 0, "an f16 matrix")
check_eq(la.cholesky(qf.zeros(0, 0)):shape(), {0, 0}, "0x0 gives 0x0")
check_error(function() return la.cholesky(qf.tensor{{1, 2}, {2, 1}}) end, "cholesky: A [2, 2] is not positive definite: pivot 2 of 2 is -3")
check_error(function() return la.cholesky(qf.tensor{{1, 2}, {2, 1}}) end, "add damping")
check_error(function() return la.cholesky(qf.tensor{{1, 2, 3}, {4, 5, 6}}) end, "cholesky: A must be a square 2-d matrix, got shape [2, 3]")
check_error(function() return la.cholesky(qf.tensor{{1, 2}, {3, 1}}) end, "cholesky: A is not symmetric")
check_error(function() return la.cholesky(qf.tensor{{0 / 0, 0}, {0, 1}}) end, "cholesky: A holds a non-finite value")
check_error(function() return la.cholesky(qf.tensor{{math.huge, 0}, {0, 1}}) end, "non-finite value (inf) at (1, 1)")
check_error(function() return la.cholesky(3) end, "bad argument #1 to 'cholesky' (qforge.Tensor expected, got number)")
check_error(function() return la.cholesky(A, {lower = true}) end, "unknown option 'lower' to 'cholesky' (known: upper)")
check_error(function() return la.cholesky(A, {upper = 1}) end, "bad option 'upper' to 'cholesky' (boolean expected, got number)")
check_error(function() return la.cholesky(A, 5) end, "bad argument #2 to 'cholesky' (options table expected, got number)")

H.section("solve_triangular")
local Lt = qf.tensor{{2, 0}, {1, 4}}
close(la.solve_triangular(Lt, qf.tensor{4, 6}), {2, 1}, 0, "[[2,0],[1,4]]·x = [4,6]")
close(la.solve_triangular(Lt, qf.tensor{{4, 2}, {6, 9}}), {{2, 1}, {1, 2}}, 0, "two right-hand sides")
-- x·L = b: 2·x1 + x2 = 5, 4·x2 = 8
close(la.solve_triangular(Lt, qf.tensor{5, 8}, {left = false}), {1.5, 2}, 0, "right side")
-- Lᵀ·x = b: [[2, 1], [0, 4]]·x = [5, 8]
close(la.solve_triangular(Lt, qf.tensor{5, 8}, {transpose = true}), {1.5, 2}, 0, "transpose")
close(la.solve_triangular(Lt:t(), qf.tensor{5, 8}, {upper = true}), {1.5, 2}, 0, "upper, on a transposed view")
close(la.solve_triangular(qf.tensor{{2, 99}, {1, 4}}, qf.tensor{4, 6}), {2, 1}, 0, "the other triangle is not read")
close(la.solve_triangular(qf.tensor{{7, 0}, {1, 7}}, qf.tensor{4, 6}, {unit = true}), {4, 2}, 0, "unit diagonal")
check_error(function() return la.solve_triangular(qf.tensor{{2, 0}, {1, 0}}, qf.tensor{4, 6}) end,
            "solve_triangular: A is singular: its diagonal is 0 at (2, 2)")
check_error(function() return la.solve_triangular(Lt, qf.tensor{1, 2, 3}) end,
            "solve_triangular: B of shape [3] does not match A of shape [2, 2]")
check_error(function() return la.solve_triangular(Lt, qf.zeros(2, 3), {left = false}) end, "expected [k, 2]")
check_error(function() return la.solve_triangular(Lt, qf.tensor{1, 2}, {side = "left"}) end,
            "unknown option 'side' to 'solve_triangular' (known: upper, left, transpose, unit)")
check_error(function() return la.solve_triangular(Lt) end, "bad argument #2 to 'solve_triangular' (qforge.Tensor expected, got no value)")

H.section("solve, inv")
-- Cramer: det 10, x = [(5·4 − 1·6)/10, (3·6 − 2·5)/10]
local S = qf.tensor{{3, 1}, {2, 4}}
close(la.solve(S, qf.tensor{5, 6}), {1.4, 0.8}, 1e-6, "solve")
check_eq(la.solve(S, qf.tensor{5, 6}):shape(), {2}, "a vector B gives a vector")
close(la.solve(S:t(), qf.tensor{{5}, {6}}), {{(5 * 4 - 2 * 6) / 10}, {(3 * 6 - 1 * 5) / 10}}, 1e-6, "solve with Aᵀ as a view")
close(la.inv(S), {{0.4, -0.1}, {-0.2, 0.3}}, 1e-7, "inv")
close(la.inv(S):matmul(S), eye(2), 1e-6, "inv(A)·A = I")
check_error(function() return la.solve(qf.tensor{{1, 2}, {2, 4}}, qf.tensor{1, 1}) end,
            "solve: A [2, 2] is singular (LU with partial pivoting: pivot 2 of 2 is 0)")
check_error(function() return la.inv(qf.tensor{{1, 2}, {2, 4}}) end, "inv: A [2, 2] is singular")
check_error(function() return la.solve(S, qf.zeros(3, 1)) end, "solve: B of shape [3, 1] does not match A of shape [2, 2]")
check_error(function() return la.inv(qf.zeros(2, 3)) end, "inv: A must be a square 2-d matrix, got shape [2, 3]")
check_error(function() return la.inv(qf.zeros(2, 2, 2)) end, "got shape [2, 2, 2]")

H.section("eigh")
-- [[2, 1], [1, 2]]: eigenvalues 1 (vector (1, −1)/√2) and 3 ((1, 1)/√2); the largest-magnitude
-- component of each vector is positive, the first one on ties
local r2 = math.sqrt(0.5)
local w, V = la.eigh(qf.tensor{{2, 1}, {1, 2}})
close(w, {1, 3}, 1e-6, "eigenvalues ascending")
close(V, {{r2, r2}, {-r2, r2}}, 1e-6, "eigenvectors as columns")
w, V = la.eigh(qf.tensor{{-2, 0}, {0, 5}}:t())
close(w, {-2, 5}, 1e-7, "diagonal")
close(V, {{1, 0}, {0, 1}}, 1e-7, "diagonal vectors")
w, V = la.eigh(qf.tensor{{3, 0, 0}, {0, 1, 0}, {0, 0, 2}})
close(w, {1, 2, 3}, 1e-7, "sorted")
close(V, {{0, 0, 1}, {1, 0, 0}, {0, 1, 0}}, 1e-7, "vectors follow their values")
check_error(function() return la.eigh(qf.tensor{{1, 2}, {3, 4}}) end, "eigh: A is not symmetric: A(2, 1) = 3 but A(1, 2) = 2")
check_error(function() return la.eigh(qf.tensor{1, 2}) end, "eigh: A must be a square 2-d matrix, got shape [2]")

H.section("svd")
-- [[3, 0], [4, 5]]: AᵀA = [[25, 20], [20, 25]] has eigenvalues 45 and 5
local M = qf.tensor{{3, 0}, {4, 5}}
local U, Sv, Vv = la.svd(M)
close(Sv, {math.sqrt(45), math.sqrt(5)}, 1e-5, "singular values descending")
close(U:matmul(Sv:diag()):matmul(Vv:t()), M, 1e-5, "U·diag(S)·Vᵀ = A")
close(Vv:t():matmul(Vv), eye(2), 1e-6, "V orthogonal")
-- a 3×2 matrix as a transposed view: reduced and full shapes
local W = qf.tensor{{1, 0, 2}, {0, 3, 0}}:t()
U, Sv, Vv = la.svd(W)
check_eq({U:shape(), Sv:shape(), Vv:shape()}, {{3, 2}, {2}, {2, 2}}, "reduced shapes")
close(Sv, {3, math.sqrt(5)}, 1e-6, "singular values of [[1,0],[0,3],[2,0]]")
close(U, {{0, r2 * math.sqrt(0.4)}, {1, 0}, {0, 2 * math.sqrt(0.2)}}, 1e-6, "U with positive largest components")
U, Sv, Vv = la.svd(W, {full = true})
check_eq({U:shape(), Sv:shape(), Vv:shape()}, {{3, 3}, {2}, {2, 2}}, "full shapes")
close(U:t():matmul(U), eye(3), 1e-6, "full U orthogonal")
check_error(function() return la.svd(W, {thin = true}) end, "unknown option 'thin' to 'svd' (known: full)")

H.section("qr")
-- [[3, 1], [4, 2]]: q1 = (0.6, 0.8), r12 = 2.2, (1, 2) − 2.2·q1 = (−0.32, 0.24), r22 = 0.4
local Qr, R = la.qr(qf.tensor{{3, 1}, {4, 2}})
close(Qr, {{0.6, -0.8}, {0.8, 0.6}}, 1e-6, "Q")
close(R, {{5, 2.2}, {0, 0.4}}, 1e-6, "R")
-- one column both ways: a Householder reflection makes one of the two diagonals −5
Qr, R = la.qr(qf.tensor{{-3, -4}}:t())
close(R, {{5}}, 1e-6, "R's diagonal positive")
close(Qr, {{-0.6}, {-0.8}}, 1e-6, "Q's column")
Qr, R = la.qr(qf.tensor{{3, 4}}:t())
close(R, {{5}}, 1e-6, "R's diagonal made positive")
close(Qr, {{0.6}, {0.8}}, 1e-6, "Q's column flipped with it")
Qr, R = la.qr(qf.tensor{{3, 1}, {4, 2}, {0, 0}}, {mode = "complete"})
check_eq({Qr:shape(), R:shape()}, {{3, 3}, {3, 2}}, "complete shapes")
close(Qr:matmul(R), {{3, 1}, {4, 2}, {0, 0}}, 1e-6, "Q·R = A")
close(R:select(1, 3), {0, 0}, 0, "R's last row is zero")
check_error(function() return la.qr(M, {mode = "economic"}) end, "qr: unknown mode 'economic' (expected \"reduced\" or \"complete\")")
check_error(function() return la.qr(M, {mode = 1}) end, "bad option 'mode' to 'qr' (string expected, got number)")

H.section("random_orthogonal")
local O = la.random_orthogonal(5, qf.rng(11))
check_eq(O:shape(), {5, 5})
close(O:t():matmul(O), eye(5), 1e-6, "orthogonal")
check(same(O, la.random_orthogonal(5, qf.rng(11))), "same seed, same bits")
check(not same(O, la.random_orthogonal(5, qf.rng(12))), "another seed, another matrix")
local g = qf.rng(11)
local O1, O2 = la.random_orthogonal(5, g), la.random_orthogonal(5, g)
check(same(O1, O) and not same(O1, O2), "the Rng advances")
check_error(function() return la.random_orthogonal(5, 11) end, "bad argument #2 to 'random_orthogonal' (qforge.Rng expected, got number)")
check_error(function() return la.random_orthogonal(0, qf.rng(1)) end, "bad argument #1 to 'random_orthogonal' (n must be >= 1, got 0)")
check_error(function() return la.random_orthogonal(2.5, qf.rng(1)) end, "bad argument #1 to 'random_orthogonal'")

H.section("hadamard")
-- H_4 = [[1,1,1,1],[1,-1,1,-1],[1,1,-1,-1],[1,-1,-1,1]]
close(la.hadamard(qf.tensor{1, 2, 3, 4}, {normalize = false}), {10, -2, -4, 0}, 0, "H_4·x")
close(la.hadamard(qf.tensor{1, 2, 3, 4}), {5, -1, -2, 0}, 0, "normalized by 1/√4")
close(la.hadamard(qf.tensor{{1, 2}, {3, 4}}), {{3 * r2, -r2}, {7 * r2, -r2}}, 1e-6, "rows")
close(la.hadamard(qf.tensor{{1, 2}, {3, 4}}, {dim = 1}), {{4 * r2, 6 * r2}, {-2 * r2, -2 * r2}}, 1e-6, "dim = 1: columns")
close(la.hadamard(qf.tensor{{1, 3}, {2, 4}}:t()), {{3 * r2, -r2}, {7 * r2, -r2}}, 1e-6, "a transposed view")
local X = qf.rng(3):randn(3, 16)
close(la.hadamard(la.hadamard(X)), X, 1e-6, "its own inverse")
check_eq(la.hadamard(qf.tensor{5}):to_table(), {5}, "n = 1")
check_error(function() return la.hadamard(qf.zeros(2, 6)) end, "hadamard: the size 6 of dimension 2 of X [2, 6] is not a power of two")
check_error(function() return la.hadamard(qf.zeros(2, 4), {dim = 3}) end, "hadamard: dimension 3 out of range for X of shape [2, 4] (valid: 1..2)")
check_error(function() return la.hadamard(qf.zeros(2, 4), {dim = 0}) end, "hadamard: dimension 0 out of range")
check_error(function() return la.hadamard(qf.zeros(2, 4), {norm = true}) end, "unknown option 'norm' to 'hadamard' (known: dim, normalize)")
check_error(function() return la.hadamard(qf.tensor{1, 0 / 0}) end, "hadamard: X holds a non-finite value (")

H.section("random_hadamard")
for _, n in ipairs({12, 7, 1, 16}) do
  local T = la.random_hadamard_matrix(n, 7)
  check_eq(T:shape(), {n, n})
  close(T:matmul(T:t()), eye(n), 1e-6, "T orthogonal, n = " .. n)
  local Xn = qf.rng(n):randn(3, n)
  local Y = la.random_hadamard(Xn, 7)
  close(Y, Xn:matmul(T:t()), 1e-5, "X·Tᵀ, n = " .. n)
  close(la.random_hadamard(Xn, 7, {inverse = true}), Xn:matmul(T), 1e-5, "inverse = X·T, n = " .. n)
  close(la.random_hadamard(Y, 7, {inverse = true}), Xn, 1e-5, "round trip, n = " .. n)
  close(la.random_hadamard(Xn:t(), 7, {dim = 1}), Y:t(), 0, "dim = 1 on the transposed view, n = " .. n)
end
-- n = 2 = 2¹·1: T = H_2/√2 · diag(s), so |T(i, j)| = 1/√2
close(la.random_hadamard_matrix(2, 3):abs_max(), r2, 1e-7, "n = 2 entries are ±1/√2")
check(same(la.random_hadamard_matrix(12, 7), la.random_hadamard_matrix(12, 7)), "same seed, same bits")
check(not same(la.random_hadamard_matrix(12, 7), la.random_hadamard_matrix(12, 8)), "another seed")
check(la.random_hadamard(qf.zeros(2, 12), -5):is_contiguous(), "negative seeds are seeds")
check_error(function() return la.random_hadamard(qf.zeros(2, 12), 1.5) end, "bad argument #2 to 'random_hadamard' (number has no integer representation)")
check_error(function() return la.random_hadamard(qf.zeros(2, 12), "1") end, "bad argument #2 to 'random_hadamard' (integer expected, got string)")
check_error(function() return la.random_hadamard(qf.zeros(2, 12), 1, {inverse = "yes"}) end, "bad option 'inverse' to 'random_hadamard' (boolean expected, got string)")
check_error(function() return la.random_hadamard(qf.zeros(2, 12), 1, {dim = 3}) end, "random_hadamard: dimension 3 out of range")
check_error(function() return la.random_hadamard(qf.zeros(2, 0), 1) end, "random_hadamard: n must be >= 1, got 0")
check_error(function() return la.random_hadamard_matrix(0, 1) end, "bad argument #1 to 'random_hadamard_matrix' (n must be >= 1, got 0)")
check_error(function() return la.random_hadamard_matrix(100000, 1) end, "too large for a dense matrix")

H.section("arity: one argument too many is refused before anything runs")
local names = {}
for k, f in pairs(la) do if type(f) == "function" then names[#names + 1] = k end end
table.sort(names)
check_eq(#names, 13, "qf.linalg holds 13 functions")
for _, k in ipairs(names) do
  local n = qf._arity[la[k]]
  if check(math.type(n) == "integer" and n >= 0, "qf.linalg." .. k .. " has a declared arity") then
    local want = string.format("bad argument #%d to '%s' (at most %d argument%s expected, got %d)", n + 1, k, n,
                               n == 1 and "" or "s", n + 1)
    local ok, err = pcall(la[k], table.unpack({}, 1, n + 1))
    check(not ok and tostring(err):find(want, 1, true), "qf.linalg." .. k .. ": expected '" .. want .. "', got " .. tostring(err))
  end
end

H.summary()
