-- qronos.lua — Qronos (docs/methods.md#qronos): each linear rounded for the mismatched objective
-- ‖W X − Ŵ X̃‖², X its full-precision inputs and X̃ the inputs the already-quantized prefix produces,
-- so a layer corrects the errors of the layers before it. Every block's statistics (H = X̃ᵀX̃,
-- G = XᵀX̃, XᵀX) are captured at its start from the two chains; with true_sequential = true again
-- before each later stage, X̃ then coming from the block's already quantized linears (X from its
-- full-precision copy). solver = gpfq runs the greedy
-- variant; solver = gptq runs GPTQ on the same statistics (it sees only H), so the three are
-- compared on one calibration — each layer's mismatched objective is recorded (`mismatched`).
--   qforge run recipes/qronos.lua bits=3 act_order=true
--   qforge run recipes/qronos.lua bits=2 pre=magr solver=gptq
local P = require("qforge.pipeline")
local own, help = P.solver_options("qronos", nil, { solver = "qronos", gptq_percdamp = 0.01 },
  { solver = { "qronos, gpfq (greedy, no future update) or gptq (on the quantized-prefix H alone); docs/methods.md#qronos",
               choices = { "qronos", "gpfq", "gptq" } },
    gptq_percdamp = { "solver = gptq: its damping (percdamp and lambda_damp are Qronos's and GPFQ's)", min = 0 } })
local opt = P.options(P.solve_options(P.finetune_options(own, help)))
local defaults = qf.solver_options("qronos")
if opt.solver == "gptq" then  -- options that would be silently ignored are errors
  for _, k in ipairs({ "percdamp", "lambda_damp" }) do
    if opt[k] ~= defaults[k] then qf.option_error(k, "is Qronos's and GPFQ's damping; solver = gptq takes gptq_percdamp") end
  end
elseif opt.gptq_percdamp ~= 0.01 then
  qf.option_error("gptq_percdamp", "applies to solver = gptq only (solver = " .. opt.solver .. ")")
end
local ctx = P.prepare(opt, true)  -- the full-precision chain: X
local grid = P.grid(opt)
print("grid: " .. tostring(grid) .. ", solver " .. opt.solver)
local sopt = opt
if opt.solver == "gptq" then
  sopt = {}
  for k, v in pairs(opt) do sopt[k] = v end
  sopt.percdamp = opt.gptq_percdamp
end
local s = P.quantize_model(ctx.model, ctx.cal, P.solver(opt.solver, sopt, grid),
                           { cross = true, finetune = P.finetune(opt), refit_scales = opt.refit_scales,
                             sigma_shrink = opt.sigma_shrink, true_sequential = opt.true_sequential })
local mism = 0
for _, l in ipairs(s.layers) do mism = mism + (l.mismatched or 0) end
qf.record("mismatched_objective", mism)
print(string.format("mismatched objective sum %.6g (sum of ||WX - QX~||^2 over the linears)", mism))
P.record_summary(s)
P.evaluate(ctx, opt)
