-- quantease.lua — QuantEase cyclic coordinate descent (docs/methods.md#quantease), target always
-- the original W.
--   qforge run recipes/quantease.lua bits=3 init=gptq iters=30
local P = require("qforge.pipeline")
local opt = P.options(P.solve_options(P.finetune_options(P.solver_options("quantease"))))
local ctx = P.prepare(opt)
local grid = P.grid(opt)
print("grid: " .. tostring(grid))
local s = P.quantize_model(ctx.model, ctx.cal, P.solver("quantease", opt, grid),
                           { true_sequential = opt.true_sequential, finetune = P.finetune(opt),
                           refit_scales = opt.refit_scales, sigma_shrink = opt.sigma_shrink })
P.record_summary(s)
P.evaluate(ctx, opt)
