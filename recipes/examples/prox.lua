-- prox.lua — proximal operators over the rows of a matrix, with the tensor toolkit (required by
-- magr_gptq.lua as a local module; tested in tests/lua/test_prox.lua against bisection).
local M = {}

-- Row-wise prox of t·‖·‖∞ at V (t > 0 a number): each row v becomes sign(v)·min(|v|, θ), where θ
-- removes ℓ1 mass t: Σ_i max(|v_i| − θ, 0) = t; a row with ‖v‖₁ ≤ t becomes 0. (Moreau: v minus its
-- projection onto the ℓ1 ball of radius t; θ from the sorted |v| and their cumulative sums.)
function M.linf(V, t)
  local A = qf.abs(V)
  local S = A:sort(2, true)                                     -- |v| descending, per row
  local C = S:cumsum(2)
  local j = qf.arange(1, V:size(2) + 1)                         -- 1..n, broadcast over rows
  local rho = qf.cmax((S - (C - t) / j):gt(0):sum(2, true), 1)  -- the largest j with u_j > (c_j − t)/j
  local theta = qf.cmax((C:gather(2, rho) - t) / rho, 0)        -- [rows, 1]
  return qf.sign(V) * qf.cmin(A, theta), theta
end

return M
