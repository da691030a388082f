-- quantease_outliers.lua — QuantEase with a sparse full-precision outlier matrix found by
-- iterative hard thresholding (docs/methods.md#outliers). ratio=0.005 keeps 0.5% of the weights in
-- full precision.
--   qforge run recipes/quantease_outliers.lua bits=3 ratio=0.01
local P = require("qforge.pipeline")
local opt = P.options(P.finetune_options({ ratio = 0.005, structured = false, iters = 30, alpha = 1.0 },
  { ratio = { "fraction of weights (or of columns when structured) kept in full precision", min = 0, lt = 1 },
    structured = "outliers are whole columns", iters = { "QuantEase sweeps", min = 1 },
    alpha = { "IHT step size (times 1/(2 lambda_max))", gt = 0 } }))
local ctx = P.prepare(opt)
local grid = P.grid(opt)
print("grid: " .. tostring(grid))
local s = P.quantize_model(ctx.model, ctx.cal, function(l)
  return qf.quantease_outliers(l.W, l.sigma, grid, { ratio = opt.ratio, structured = opt.structured,
                                                     iters = opt.iters, alpha = opt.alpha })
end, { true_sequential = opt.true_sequential, finetune = P.finetune(opt) })
P.record_summary(s)
P.evaluate(ctx, opt)
