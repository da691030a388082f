-- decoupleq.lua — decoupleQ (docs/methods.md#decoupleq), layer stage: every linear, sequentially on the
-- quantized prefix's Σ, is solved by qf.alt_min — Ŵ = s·w_int + z per row (or per group), alternating
--   integer step  GPTQ rounding on the fixed affine grid (round=gptq) or projected Adam on the
--                 relaxed codes with column-wise round-and-freeze (round=pgd),
--   float step    closed-form least squares for (s, z) with the integers fixed,
-- each step kept per row only where it lowers that row's Σ-weighted loss. The grid is a float_zero
-- grid (s and z free floats): the qforge format saves it exactly; GGUF/GPTQ exports refuse it.
--   qforge run recipes/decoupleq.lua bits=2            (per channel, the paper's W2 setting)
--   qforge run recipes/decoupleq.lua bits=2 group=64 round=pgd
--   qforge run recipes/decoupleq.lua bits=2 finetune=true ft_lr=1e-3   (layer stage + block stage)
local P = require("qforge.pipeline")
local opt = P.options(P.finetune_options({ bits = 2, iters = 4, round = "gptq", shrink_search = true, percdamp = 0.01, act_order = false,
                        pgd_steps = 200, pgd_inner_steps = 5, pgd_lr = 0.02 },
  { iters = { "decoupleQ max_iter_num: the init (min/max + RTN, then GPTQ) counts as one, then iters-1 rounds", min = 1 },
    round = { "integer step: gptq (error feedback on the fixed grid) | pgd (projected Adam, round-and-freeze)", choices = { "gptq", "pgd" } },
    shrink_search = "first round: (s, z) from range-shrink factors scored by the Sigma-weighted loss",
    percdamp = { "GPTQ rounding damping (fraction of mean diag Sigma)", min = 0 }, act_order = "GPTQ rounding in decreasing diag(Sigma) order",
    pgd_steps = { "round=pgd: Adam steps before rounding", min = 0 }, pgd_inner_steps = { "round=pgd: Adam steps after each column is frozen", min = 0 },
    pgd_lr = { "round=pgd: Adam step size in code units", gt = 0 } }))
if opt.mse then qf.option_error("mse", "does not apply to decoupleQ (its (s, z) search is shrink_search)") end
if opt.f16_scales then qf.option_error("f16_scales", "does not apply to decoupleQ (s and z are free floats)") end

local grid = qf.grid{ bits = opt.bits, group = opt.group, sym = opt.sym, float_zero = true }
local solve_opts = { iters = opt.iters, round = opt.round, shrink_search = opt.shrink_search, percdamp = opt.percdamp,
                     act_order = opt.act_order, pgd_steps = opt.pgd_steps, pgd_inner_steps = opt.pgd_inner_steps,
                     pgd_lr = opt.pgd_lr }
qf.alt_min(qf.tensor{ { 0.5, -1 } }, qf.tensor{ { 1, 0 }, { 0, 1 } }, grid, solve_opts)  -- bad options fail now, not after calibration
local ctx = P.prepare(opt, nil, { float_zero = true })
print("grid: " .. tostring(grid))

-- Step 4, the block stage (finetune=true; methods.md#block-finetune): after a block's
-- linears, freeze w_int and train the block's s, z and norms with Adam against the
-- full-precision block output.
local block_opts = { true_sequential = opt.true_sequential, finetune = P.finetune(opt) }

local s = P.quantize_model(ctx.model, ctx.cal, function(l)
  return qf.alt_min(l.W, l.sigma, grid, solve_opts)
end, block_opts)
P.record_summary(s)
P.evaluate(ctx, opt)
