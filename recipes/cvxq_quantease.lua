-- cvxq_quantease.lua — CVXQ's bit allocation (docs/methods.md#dual-ascent, from full-precision
-- statistics) with QuantEase (methods.md#quantease) as the solver: a second, sequential pass
-- quantizes each linear on its allocated (row cluster × column) grid against the quantized-prefix
-- Σ; optional bias correction. solver=gptq puts GPTQ (methods.md#gptq) on the same allocated
-- grids instead.
--   qforge run recipes/cvxq_quantease.lua target_bits=3 kind=uniform
local P = require("qforge.pipeline")
local C = require("qforge.cvxq")
local opt = P.options(C.options({ target_bits = 3.0, cluster_rows = 64, kind = "compand", compand_search = true, bias_correction = true,
                        bmax = 8, iters = 30, init = "rtn", solver = "quantease" },
  { target_bits = { "average code bits per weight over all linears (the allocation's rate; realized bits/weight add scales, zeros and side info, see m:storage())", gt = 0, max = 8 },
    kind = { "compand | uniform", choices = { "compand", "uniform" } }, compand_search = "grid-search the compander's scale and offset per group",
    bias_correction = "b' = b - (W^ - W) mu_x after quantizing", bmax = { "most bits a group may get", min = 1, max = 8 },
    iters = { "QuantEase sweeps", min = 1 }, init = { "QuantEase start: w | rtn | gptq", choices = { "w", "rtn", "gptq" } },
    solver = { "quantease | gptq: the solver on the allocated grids", choices = { "quantease", "gptq" } } }))
C.check_options(opt)
local ctx = P.prepare(opt)
local m = ctx.model
local alloc = C.allocate_model(ctx, opt, false)
local cal = P.calibration(ctx, opt)
local s = P.quantize_model(m, cal, function(l)
  local L = alloc.layers[l.block .. "." .. l.name]
  local q
  if opt.solver == "gptq" then q = qf.gptq(l.W, l.sigma, C.grid(L, opt))
  else q = qf.quantease(l.W, l.sigma, C.grid(L, opt), { iters = opt.iters, init = opt.init }) end
  if opt.bias_correction then
    m:set_bias(l.block, l.name, qf.bias_correction(l.W, q:dequantize(), l.mu, m:bias(l.block, l.name)))
  end
  return q
end, { true_sequential = opt.true_sequential })
P.record_summary(s)
P.evaluate(ctx, opt)
