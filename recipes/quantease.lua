-- quantease.lua — QuantEase cyclic coordinate descent (docs/methods.md#quantease), target always
-- the original W.
--   qforge run recipes/quantease.lua bits=3 init=gptq iters=30
local P = require("qforge.pipeline")
local opt = P.options(P.finetune_options({ iters = 30, init = "w", continuous_every = 3, percdamp = 0.0, act_order = false },
  { iters = { "coordinate-descent sweeps", min = 1 }, init = { "start: w | rtn | gptq", choices = { "w", "rtn", "gptq" } },
    continuous_every = { "every k-th early sweep is unquantized (0: never)", min = 0 },
    percdamp = { "damping: fraction of mean diag Sigma added", min = 0 }, act_order = "sweep columns in decreasing diag(Sigma) order" }))
local ctx = P.prepare(opt)
local grid = P.grid(opt)
print("grid: " .. tostring(grid))
local s = P.quantize_model(ctx.model, ctx.cal, function(l)
  return qf.quantease(l.W, l.sigma, grid, { iters = opt.iters, init = opt.init, continuous_every = opt.continuous_every,
                                            percdamp = opt.percdamp, act_order = opt.act_order })
end, { true_sequential = opt.true_sequential, finetune = P.finetune(opt) })
P.record_summary(s)
P.evaluate(ctx, opt)
