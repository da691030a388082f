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
-- The solver's options (defaults, ranges, help) come from the registry (qf.solver_options).
local opt = P.options(P.finetune_options(P.solver_options("decoupleq",
  { "iters", "round", "shrink_search", "percdamp", "act_order", "pgd_steps", "pgd_inner_steps", "pgd_lr" }, { bits = 2 })))
if opt.mse then qf.option_error("mse", "does not apply to decoupleQ (its (s, z) search is shrink_search)") end
if opt.f16_scales then qf.option_error("f16_scales", "does not apply to decoupleQ (s and z are free floats)") end
if opt.mapping ~= "gptq" then qf.option_error("mapping", "does not apply to decoupleQ (s and z are free floats)") end
if opt.importance ~= "none" then qf.option_error("importance", "does not apply to decoupleQ (its (s, z) search is shrink_search, then the Σ-weighted float step)") end

local grid = qf.grid{ bits = opt.bits, group = opt.group, sym = opt.sym, float_zero = true }
local solve = P.solver("decoupleq", opt, grid)  -- bad options fail now, not after calibration
local ctx = P.prepare(opt, nil, { float_zero = true })
print("grid: " .. tostring(grid))

-- Step 4, the block stage (finetune=true; methods.md#block-finetune): after a block's
-- linears, freeze w_int and train the block's s, z and norms with Adam against the
-- full-precision block output.
local block_opts = { true_sequential = opt.true_sequential, finetune = P.finetune(opt) }

local s = P.quantize_model(ctx.model, ctx.cal, solve, block_opts)
P.record_summary(s)
P.evaluate(ctx, opt)
