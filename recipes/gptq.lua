-- gptq.lua — GPTQ (lazy-batch Cholesky form, docs/methods.md#gptq) layer by layer on calibration
-- Σ; finetune=true adds decoupleQ's block stage (Adam on each block's scales/zeros/norms against
-- its FP output).
--   qforge run recipes/gptq.lua bits=3 act_order=true
--   qforge run recipes/gptq.lua bits=2 finetune=true ft_lr=1e-3
local P = require("qforge.pipeline")
local opt = P.options(P.solve_options(P.finetune_options(P.solver_options("gptq"))))  -- the solver's options from the registry
local ctx = P.prepare(opt)
local grid = P.grid(opt)
print("grid: " .. tostring(grid))
local s = P.quantize_model(ctx.model, ctx.cal, P.solver("gptq", opt, grid),
                           { true_sequential = opt.true_sequential, finetune = P.finetune(opt),
                           refit_scales = opt.refit_scales, sigma_shrink = opt.sigma_shrink })
P.record_summary(s)
P.evaluate(ctx, opt)
