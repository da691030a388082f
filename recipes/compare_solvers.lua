-- compare_solvers.lua — every layer solver on the *same* layer problem (W, Σ), layer by layer.
--
-- The per-method recipes each follow their own quantized prefix, so their per-layer Σ differ
-- after block 1 and per-layer objectives are not comparable across runs. Here each linear's
-- problem is solved by RTN, GPTQ, QuantEase (init w and gptq) and QuantEase + outliers
-- (0.5%, 1%) from one Σ; the chain advances with the result of `apply`. Prints one row per
-- linear and counts where the published order QuantEase ≤ GPTQ ≤ RTN holds.
--   qforge run recipes/compare_solvers.lua bits=3 group=-1 apply=gptq
local P = require("qforge.pipeline")
local opt = P.options({ apply = "gptq", iters = 30, wiki_windows = 0 },
  { apply = { "which result advances the sequential chain: rtn | gptq | qe_w | qe_gptq | qe_out05 | qe_out1",
              choices = { "rtn", "gptq", "qe_w", "qe_gptq", "qe_out05", "qe_out1" } },
    iters = { "QuantEase sweeps", min = 1 } })
-- Each column: a registered solver (qf.solvers()) with its options.
local methods = { "rtn", "gptq", "qe_w", "qe_gptq", "qe_out05", "qe_out1" }
local SOLVERS = {
  rtn = { "rtn" },
  gptq = { "gptq" },
  qe_w = { "quantease", { iters = opt.iters, init = "w" } },
  qe_gptq = { "quantease", { iters = opt.iters, init = "gptq" } },
  qe_out05 = { "quantease_outliers", { ratio = 0.005, iters = opt.iters } },
  qe_out1 = { "quantease_outliers", { ratio = 0.01, iters = opt.iters } },
}
for _, k in ipairs(methods) do qf.check_solver_options(SOLVERS[k][1], SOLVERS[k][2]) end
if opt.importance ~= "none" then
  qf.option_error("importance", "does not apply to the outlier columns qe_out05 / qe_out1 (their grid is the trimmed min-max range, docs/methods.md#outlier-grid)")
end

local ctx = P.prepare(opt, nil, { outliers = opt.apply:match("^qe_out") ~= nil })
local grid = P.grid(opt)
print("grid: " .. tostring(grid))
local rows = {}
local s = P.quantize_model(ctx.model, ctx.cal, function(l, g)  -- g: an override's grid for this layer
  local row, res = { block = l.block, layer = l.name }, {}
  for _, k in ipairs(methods) do
    local q, info = qf.solve(SOLVERS[k][1], l, g or grid, SOLVERS[k][2])
    res[k], row[k] = q, info.objective
  end
  rows[#rows + 1] = row
  return res[opt.apply]
end, { true_sequential = opt.true_sequential })

-- Per-layer table and the order checks (ties within 1e-9 relative count as holding).
local function le(a, b) return a <= b * (1 + 1e-9) end
local n_qe_gptq, n_gptq_rtn, n_all, n_out = 0, 0, 0, 0
print("| block | layer | RTN | GPTQ | QE init w | QE init gptq | QE+0.5% | QE+1% | QE≤GPTQ≤RTN |")
print("|---|---|---|---|---|---|---|---|---|")
for _, r in ipairs(rows) do
  local a, b = le(r.qe_w, r.gptq), le(r.gptq, r.rtn)
  if a then n_qe_gptq = n_qe_gptq + 1 end
  if b then n_gptq_rtn = n_gptq_rtn + 1 end
  if a and b then n_all = n_all + 1 end
  if le(r.qe_out05, r.qe_w) and le(r.qe_out1, r.qe_out05) then n_out = n_out + 1 end
  r.order_holds = a and b
  print(string.format("| %d | %s | %.4g | %.4g | %.4g | %.4g | %.4g | %.4g | %s |", r.block, r.layer, r.rtn, r.gptq,
    r.qe_w, r.qe_gptq, r.qe_out05, r.qe_out1, (a and b) and "yes" or (a and "GPTQ>RTN" or "QE>GPTQ")))
end
local n = #rows
print(string.format("QE(init w) ≤ GPTQ on %d/%d layers; GPTQ ≤ RTN on %d/%d; both on %d/%d; QE+1%% ≤ QE+0.5%% ≤ QE on %d/%d",
  n_qe_gptq, n, n_gptq_rtn, n, n_all, n, n_out, n))
qf.record("comparison", rows)
qf.record("order_counts", { layers = n, qe_le_gptq = n_qe_gptq, gptq_le_rtn = n_gptq_rtn, both = n_all, outliers_monotone = n_out })
P.record_summary(s)
P.evaluate(ctx, opt)
