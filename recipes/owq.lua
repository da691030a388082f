-- owq.lua — OWQ (docs/methods.md#owq): in every linear the weak input columns — the largest
-- Σ_jj·‖W_j − RTN(W)_j‖² (score=sigma_diag: Σ_jj) — stay in fp16 and absorb GPTQ's error feedback;
-- GPTQ rounds the other columns on a grid fitted without them. How many: the paper's budget rule
-- for an average of target_bits (methods.md#owq-budget: attention linears ratio 1, MLP 0.375,
-- owq_layers linears per block), or columns=N per linear (with target_bits=0). The storage line
-- counts the weak columns as fp16 columns (methods.md#owq-storage).
--   qforge run recipes/owq.lua bits=3 target_bits=3.01
--   qforge run recipes/owq.lua bits=3 target_bits=0 columns=4 act_order=true
local P = require("qforge.pipeline")
local opt = P.options(P.solve_options(P.finetune_options(P.solver_options("owq", nil, { bits = 3, target_bits = 3.01 }))))
if opt.columns >= 0 and opt.target_bits ~= 0 then
  qf.option_error("columns", string.format("columns=%d and target_bits=%g both set the weak columns: give target_bits=0 with columns", opt.columns, opt.target_bits))
end
if opt.columns < 0 and opt.target_bits == 0 then
  qf.option_error("target_bits", "is 0 and columns is -1: give target_bits (the budget rule) or columns (weak columns per linear)")
end
if opt.target_bits ~= 0 and opt.target_bits < opt.bits then
  qf.option_error("target_bits", string.format("%g is below bits=%d: the weak columns can only add bits", opt.target_bits, opt.bits))
end
if opt.ktype ~= "none" then
  qf.option_error("ktype", "OWQ's weak columns need a uniform grid whose codes can hold 0 (bits, group, sym), not a K-quant grid")
end
local grid = P.grid(opt)  -- bad grid options fail now, not after calibration
local ctx = P.prepare(opt, nil, { outliers = opt.columns > 0 or opt.target_bits > opt.bits })
print("grid: " .. tostring(grid))
local s = P.quantize_model(ctx.model, ctx.cal, P.solver("owq", opt, grid),
                           { true_sequential = opt.true_sequential, finetune = P.finetune(opt),
                           refit_scales = opt.refit_scales, sigma_shrink = opt.sigma_shrink })
local weak = 0
for _, l in ipairs(s.layers) do weak = weak + (l.outliers or 0) end
qf.record("weak_weights", weak)
P.record_summary(s)
P.evaluate(ctx, opt)
