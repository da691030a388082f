-- cvxq_quantease_outliers_ft.lua — the composed pipeline qforge exists for:
--   1. CVXQ bit allocation (docs/methods.md#dual-ascent): gradient statistics of the
--      full-precision model → dual ascent to target_bits over (row cluster × column) groups;
--   2. QuantEase with unstructured full-precision outliers (methods.md#quantease,
--      methods.md#outliers: IHT, ratio of the weights) on each linear's allocated grid,
--      sequentially on quantized-prefix Σ;
--   3. block-wise finetuning (decoupleQ's block stage, methods.md#block-finetune): after each
--      block, Adam on its scales, zeros and norms against the full-precision block output
--      (integer codes and outliers frozen).
-- Any stage switches off from the command line, so an ablation is a command, not an edit:
--   alloc=false     uniform `bits` everywhere (no statistics, no dual ascent)
--   ratio=0         plain QuantEase (no outliers)
--   finetune=false  no block finetuning
--   qforge run recipes/cvxq_quantease_outliers_ft.lua target_bits=3 ratio=0.005 ft_lr=1e-3
local P = require("qforge.pipeline")
local C = require("qforge.cvxq")
local opt = P.options(P.finetune_options(C.options({
    alloc = true, target_bits = 3.0, cluster_rows = 64, kind = "compand", compand_search = true, bmax = 8,
    ratio = 0.005, iters = 30, init = "rtn",
    finetune = true, ft_lr = 1e-3 },
  { alloc = "CVXQ allocation to target_bits (false: uniform bits= everywhere)",
    target_bits = { "average code bits per weight over all linears (the allocation's rate; realized bits/weight add scales, zeros and side info, see m:storage())", gt = 0, max = 8 },
    kind = { "compand | uniform grid (alloc=true)", choices = { "compand", "uniform" } },
    compand_search = "grid-search the compander's scale and offset per group", bmax = { "most bits a group may get", min = 1, max = 8 },
    ratio = { "fraction of each linear's weights kept in full precision as outliers (0: plain QuantEase)", min = 0, lt = 1 },
    iters = { "QuantEase sweeps", min = 1 }, init = { "QuantEase start when ratio=0: w | rtn | gptq", choices = { "w", "rtn", "gptq" } } })))
-- With the allocation, ctx.cal only feeds the statistics pass: no full-precision chain there.
if opt.alloc then C.check_options(opt) end
if not opt.alloc and opt.ratio > 0 and opt.importance ~= "none" then
  qf.option_error("importance", "does not apply to the outlier grid (the trimmed min-max range, docs/methods.md#outlier-grid)")
end
local ctx = P.prepare(opt, opt.finetune and not opt.alloc)
local m = ctx.model

-- 1. allocation (or the uniform grid)
local alloc, cal = nil, ctx.cal
if opt.alloc then
  alloc = C.allocate_model(ctx, opt, false)
  cal = P.calibration(ctx, opt)  -- the statistics pass consumed ctx.cal
end
local uniform = P.grid(opt)
local function grid_of(l) return alloc and C.grid(alloc.layers[l.block .. "." .. l.name], opt) or uniform end

-- 2. QuantEase (+ outliers), 3. block finetuning after each block
local s = P.quantize_model(m, cal, function(l, g)  -- g: an override's grid (fixed-grid runs only)
  if opt.ratio > 0 then
    return qf.quantease_outliers(l.W, l.sigma, g or grid_of(l), { ratio = opt.ratio, iters = opt.iters })
  end
  return qf.quantease(l.W, l.sigma, g or grid_of(l), { iters = opt.iters, init = opt.init })
end, { true_sequential = opt.true_sequential, finetune = P.finetune(opt) })
P.record_summary(s)
P.evaluate(ctx, opt)
