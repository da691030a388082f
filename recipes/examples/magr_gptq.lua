-- magr_gptq.lua — MagR-like magnitude reduction before GPTQ, written with the toolkit (issue 18's
-- clipping example). MagR (arXiv 2406.00800) preprocesses each weight to a smaller ℓ∞ norm per
-- output channel while keeping the layer's outputs:
--   min_Ŵ  ½·tr((Ŵ − W) Σ (Ŵ − W)ᵀ) + α·Σ_rows ‖ŵ_r‖∞,
-- by proximal gradient: V = Ŵ − η·(Ŵ − W)·Σ with η = 1/λmax(Σ), then Ŵ = prox_{ηα‖·‖∞}(V) row by
-- row. The prox of the ℓ∞ norm clips: prox(v) = sign(v)·min(|v|, θ), where θ solves
-- Σ_i max(|v_i| − θ, 0) = ηα (recipes/examples/prox.lua). The quantizer (GPTQ, per channel) then fits
-- a grid to the smaller range. Here α = alpha·λmax(Σ)·mean|W| so `alpha` is scale-free: each step
-- clips at most alpha·mean|W| of ℓ1 mass per row.
-- The engine's MagR (docs/methods.md#magr: the sort-based ℓ1-ball prox, α on the reference code's
-- scale, per-group variant) composes with every pipeline recipe as `pre=magr`
-- (recipes/gptq.lua pre=magr magr_alpha=3e-3); this example stays as the toolkit-only version.
--   qforge run recipes/examples/magr_gptq.lua bits=3 alpha=0.05 prox_iters=30
local P = require("qforge.pipeline")
local opt = P.options(P.solve_options(P.solver_options("gptq", nil, { alpha = 0.05, prox_iters = 30 }, {
  alpha = { "ℓ∞ penalty, in units of λmax(Σ)·mean|W| (0: plain GPTQ)", min = 0 },
  prox_iters = { "proximal-gradient iterations per linear", min = 1 },
})))
local ctx = P.prepare(opt)
local spec = P.grid(opt)
local gptq = P.solver("gptq", opt, spec)

local prox_linf = require("prox").linf  -- recipes/examples/prox.lua: clip each row at θ

local seconds, shrink = 0, {}
local s = P.quantize_model(ctx.model, ctx.cal, function(l, g)
  local W, S = l.W, l.sigma
  if opt.alpha == 0 then return gptq(l, g) end
  local t0 = qf.now()
  local lmax = qf.lambda_max(S)
  local eta = 1 / lmax
  local t = opt.alpha * W:clone():abs():mean()              -- η·α with α = alpha·λmax·mean|W|
  local What = W:clone()
  for _ = 1, opt.prox_iters do
    What = prox_linf(What - ((What - W):matmul(S)) * eta, t)
  end
  seconds = seconds + (qf.now() - t0)
  local before = W:clone():abs():max(2)
  local after = What:clone():abs():max(2)
  shrink[#shrink + 1] = (after / before):mean()
  -- GPTQ on the reduced weight; the pipeline measures the objective against the original W.
  return gptq({ block = l.block, name = l.name, W = What, sigma = S, mu = l.mu, tokens = l.tokens }, g)
end, { true_sequential = opt.true_sequential })
local mean_shrink = 0
for _, x in ipairs(shrink) do mean_shrink = mean_shrink + x / #shrink end
qf.record("magr_seconds", seconds)
qf.record("linf_ratio_mean", #shrink > 0 and mean_shrink or 1)
P.record_summary(s)
P.evaluate(ctx, opt)
