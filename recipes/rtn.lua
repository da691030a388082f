-- rtn.lua — round to nearest on the uniform grid (docs/methods.md#grid) (no calibration needed;
-- the calibration pipeline still runs so the per-layer objective is reported on the same Σ as the
-- other methods).
--   qforge run recipes/rtn.lua bits=3 group=32
local P = require("qforge.pipeline")
local opt = P.options(P.solve_options(P.finetune_options()))
local ctx = P.prepare(opt)
local grid = P.grid(opt)
print("grid: " .. tostring(grid))
local s = P.quantize_model(ctx.model, ctx.cal, function(l, g)
  local spec = g or grid  -- an importance grid weighs its fit by diag Σ (methods.md#grid-importance)
  return qf.rtn(l.W, spec, spec.importance and l.sigma:diag() or nil)
end,
  { true_sequential = opt.true_sequential, finetune = P.finetune(opt),
                           refit_scales = opt.refit_scales, sigma_shrink = opt.sigma_shrink })
P.record_summary(s)
P.evaluate(ctx, opt)
