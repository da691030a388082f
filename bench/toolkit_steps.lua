-- Wall time of the toolkit examples' steps on one 4096×4096 layer (issue 18): the rotation of
-- rotate_gptq.lua (W → W·Tᵀ and Σ → T·Σ·Tᵀ with randomized Hadamard transforms) and one MagR
-- iteration of magr_gptq.lua (a gradient step (Ŵ − W)·Σ: one 4096³ GEMM, then the row-wise ℓ∞
-- prox: sort, cumsum, gather, clip), against the GEMM alone.
--   build/qforge run bench/toolkit_steps.lua [n=4096]
local opt = qf.options({ n = 4096 }, { n = "layer width (W is n×n, Σ is n×n)" })
local n = opt.n
local rng = qf.rng(1)
local W = rng:randn(n, n) * 0.02
local A = rng:randn(n, n)
local t0 = qf.now()
local S = A:matmul(A:t()) / n                        -- a dense SPD Σ
local gemm = qf.now() - t0
package.path = "recipes/examples/?.lua;" .. package.path
local prox = dofile("recipes/examples/prox.lua")
local H = qf.linalg.random_hadamard
local function time(f, reps)
  local best = math.huge
  for _ = 1, reps or 3 do local t = qf.now(); f(); best = math.min(best, qf.now() - t) end
  return best
end
local rot_w = time(function() return H(W, 7) end)
local rot_s = time(function() return H(H(S, 7):t(), 7) end)
local eta, thr = 1 / qf.lambda_max(S), 0.05 * qf.abs(W):mean()
local What = W:clone()
local grad = time(function() return What - ((What - W):matmul(S)) * eta end, 2)
local V = What - ((What - W):matmul(S)) * eta
local px = time(function() return prox.linf(V, thr) end)
print(string.format("n = %d, %d threads", n, qf.threads()))
print(string.format("| step | seconds | × one %d³ GEMM |", n))
print("|---|---|---|")
print(string.format("| GEMM A·Aᵀ (reference) | %.3f | 1.00 |", gemm))
print(string.format("| rotate W (randomized Hadamard, rows) | %.3f | %.3f |", rot_w, rot_w / gemm))
print(string.format("| rotate Σ (both sides) | %.3f | %.3f |", rot_s, rot_s / gemm))
print(string.format("| MagR gradient step (Ŵ − W)·Σ | %.3f | %.3f |", grad, grad / gemm))
print(string.format("| MagR ℓ∞ prox (sort, cumsum, gather, clip) | %.3f | %.3f |", px, px / gemm))
qf.record("gemm_seconds", gemm)
qf.record("rotate_w_seconds", rot_w)
qf.record("rotate_sigma_seconds", rot_s)
qf.record("magr_grad_seconds", grad)
qf.record("magr_prox_seconds", px)
