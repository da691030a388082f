-- custom_loop.lua — the solver loop written in Lua from the primitives, no C++ touched:
-- start from GPTQ, then repeat { `sweeps` CD sweeps on target W − Hs; one IHT step on Hs }.
-- The dense part stays on the GPTQ grid (per-channel: identical to grid_fit(W)); the result is
-- what it really holds — the dense part's codes on that grid plus Hs as sparse outliers
-- (grid:quantize(What, Hs)), so m:storage() counts bits-bit codes + scales + 48 bits per outlier.
--   qforge run recipes/custom_loop.lua bits=3 rounds=4 sweeps=5 ratio=0.005
local P = require("qforge.pipeline")
local opt = P.options({ rounds = 4, sweeps = 5, ratio = 0.005, alpha = 1.0 },
  { rounds = { "outer rounds of (CD sweeps, IHT step)", min = 1 }, sweeps = { "CD sweeps per round", min = 1 },
    ratio = { "fraction of each linear's weights kept as full-precision outliers", min = 0, lt = 1 },
    alpha = { "IHT step size (times 1/(2 lambda_max))", gt = 0 } })
local ctx = P.prepare(opt)
local spec = P.grid(opt)
local s = P.quantize_model(ctx.model, ctx.cal, function(l, g)  -- g: an override's grid for this layer
  local W, S = l.W, l.sigma
  local q = qf.gptq(W, S, g or spec, { static_groups = (g or spec).group > 0 })
  local grid = q:grid()
  local What = q:dequantize()
  local Hs = qf.zeros(W:shape())
  local k = math.floor(W:numel() * opt.ratio + 0.5)
  local lmax = qf.lambda_max(S)
  local before = qf.objective(W, What, S)
  for _ = 1, opt.rounds do
    local target = W - Hs
    for _ = 1, opt.sweeps do qf.cd_sweep(target, S, What, grid) end
    if k > 0 then qf.iht_step(W, S, What, Hs, { k = k, alpha = opt.alpha, lambda_max = lmax }) end
  end
  local r = grid:quantize(What, Hs)  -- What is on the grid: exact codes; Hs's nonzeros: the outliers
  return r, { gptq_objective = before, objective = qf.objective(W, r:dequantize(), S), outliers = r:nnz() }
end, { true_sequential = opt.true_sequential })
P.record_summary(s)
P.evaluate(ctx, opt)
