-- custom_loop.lua — the solver loop written in Lua from the primitives, no C++ touched:
-- start from GPTQ, then repeat { `sweeps` CD sweeps on target W − Hs; one IHT step on Hs }.
-- The dense part stays on the GPTQ grid (per-channel: identical to grid_fit(W)).
--   qforge run recipes/custom_loop.lua bits=3 rounds=4 sweeps=5 ratio=0.005
local P = require("qforge.pipeline")
local opt = P.options({ rounds = 4, sweeps = 5, ratio = 0.005, alpha = 1.0 },
  { rounds = "outer rounds of (CD sweeps, IHT step)", sweeps = "CD sweeps per round" })
local ctx = P.prepare(opt)
local spec = P.grid(opt)
local s = P.quantize_model(ctx.model, ctx.cal, function(l)
  local W, S = l.W:clone(), l.sigma
  local q = qf.gptq(W, S, spec, { static_groups = opt.group > 0 })
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
  local after = qf.objective(W, What + Hs, S)
  return What + Hs, { gptq_objective = before, objective = after }
end, { true_sequential = opt.true_sequential })
P.record_summary(s)
P.evaluate(ctx, opt)
