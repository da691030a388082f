-- awq.lua — AWQ (activation-aware weight quantization, arXiv 2306.00978; docs/methods.md#awq), then
-- any solver: before each block is calibrated, the per-input-channel scales s = s_X^α/√(max·min) of
-- the inputs of q/k/v, o, gate/up and down are searched over α (RTN fake-quant on this run's grid,
-- output error on awq_windows windows of the block's quantized-prefix inputs) and folded into the
-- model (W·diag(s); 1/s into the RMSNorm gains and the rows of v and up), which keeps the
-- full-precision function; then `solver` quantizes the scaled weights on freshly captured Σ.
-- awq_clip=true adds AWQ's per-(row, group) clipping search inside each solve.
--   qforge run recipes/awq.lua bits=3 solver=quantease iters=30
--   qforge run recipes/awq.lua bits=4 group=32 solver=rtn awq_clip=true
-- solver=rtn|gptq|quantease; that solver's options (qf.solver_options) are this recipe's options.
local P = require("qforge.pipeline")
local A = require("qforge.awq")
local opt = P.options(A.options(P.solve_options(P.finetune_options())))
A.check_options(opt)
local ctx = P.prepare(opt)
print("grid: " .. tostring(P.grid(opt)) .. "; solver " .. opt.solver)
local s = A.quantize_model(ctx, opt)
P.record_summary(s)
P.evaluate(ctx, opt)
