-- quantease_outliers.lua — QuantEase with a sparse full-precision outlier matrix found by
-- iterative hard thresholding (docs/methods.md#outliers). ratio=0.005 keeps 0.5% of the weights in
-- full precision.
--   qforge run recipes/quantease_outliers.lua bits=3 ratio=0.01
local P = require("qforge.pipeline")
local opt = P.options(P.solve_options(P.finetune_options(P.solver_options("quantease_outliers", { "ratio", "structured", "iters", "alpha" }))))
if opt.importance ~= "none" and opt.ratio > 0 then
  qf.option_error("importance", "does not apply to the outlier grid (the trimmed min-max range, docs/methods.md#outlier-grid)")
end
local grid = P.grid(opt)  -- bad grid options fail now, not after calibration
local ctx = P.prepare(opt)
print("grid: " .. tostring(grid))
local s = P.quantize_model(ctx.model, ctx.cal, P.solver("quantease_outliers", opt, grid),
                           { true_sequential = opt.true_sequential, finetune = P.finetune(opt),
                           refit_scales = opt.refit_scales, sigma_shrink = opt.sigma_shrink })
P.record_summary(s)
P.evaluate(ctx, opt)
