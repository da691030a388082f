-- gptq.lua — GPTQ (lazy-batch Cholesky form, docs/methods.md#gptq) layer by layer on calibration
-- Σ; finetune=true adds decoupleQ's block stage (Adam on each block's scales/zeros/norms against
-- its FP output).
--   qforge run recipes/gptq.lua bits=3 act_order=true
--   qforge run recipes/gptq.lua bits=2 finetune=true ft_lr=1e-3
local P = require("qforge.pipeline")
local opt = P.options(P.finetune_options({ blocksize = 128, percdamp = 0.01, act_order = false, static_groups = false },
  { blocksize = { "columns per lazy-batch block", min = 1 }, percdamp = { "damping: fraction of mean diag Sigma added", min = 0 },
    act_order = "columns in decreasing diag(Sigma) order", static_groups = "fit the group grids before the sweep (with act_order)" }))
local ctx = P.prepare(opt)
local grid = P.grid(opt)
print("grid: " .. tostring(grid))
local s = P.quantize_model(ctx.model, ctx.cal, function(l)
  return qf.gptq(l.W, l.sigma, grid, { blocksize = opt.blocksize, percdamp = opt.percdamp,
                                       act_order = opt.act_order, static_groups = opt.static_groups })
end, { true_sequential = opt.true_sequential,
       finetune = P.finetune(opt) })
P.record_summary(s)
P.evaluate(ctx, opt)
