-- quantease_outliers.lua — QuantEase with a sparse full-precision outlier matrix found by
-- iterative hard thresholding (docs/methods.md#outliers). ratio=0.005 keeps 0.5% of the weights in
-- full precision.
--   qforge run recipes/quantease_outliers.lua bits=3 ratio=0.01
local P = require("qforge.pipeline")
local opt = P.options(P.finetune_options(P.solver_options("quantease_outliers", { "ratio", "structured", "iters", "alpha" })))
local ctx = P.prepare(opt)
local grid = P.grid(opt)
print("grid: " .. tostring(grid))
local s = P.quantize_model(ctx.model, ctx.cal, P.solver("quantease_outliers", opt, grid),
                           { true_sequential = opt.true_sequential, finetune = P.finetune(opt) })
P.record_summary(s)
P.evaluate(ctx, opt)
