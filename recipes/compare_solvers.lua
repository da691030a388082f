-- compare_solvers.lua — every layer solver on the *same* layer problem (W, Σ), layer by layer.
--
-- The per-method recipes each follow their own quantized prefix, so their per-layer Σ differ
-- after block 1 and per-layer objectives are not comparable across runs. Here each linear's
-- problem is solved by RTN, GPTQ, QuantEase (init w and gptq) and QuantEase + outliers
-- (0.5%, 1%) from one Σ; the chain advances with the result of `apply`. Prints one row per
-- linear and counts where the published order QuantEase ≤ GPTQ ≤ RTN holds.
-- `methods` picks the columns, `only` (a regex on "block.name") the linears compared; the others
-- are solved by `apply` alone (a large model's chain to the layers of interest).
--   qforge run recipes/compare_solvers.lua bits=3 group=-1 apply=gptq
--   qforge run recipes/compare_solvers.lua methods=rtn,gptq,qe_w,qe_gptq only='^12\.down$'
local P = require("qforge.pipeline")
local ALL = { "rtn", "gptq", "gptq_static", "qe_w", "qe_gptq", "qe_out05", "qe_out1" }
local opt = P.options({ apply = "gptq", iters = 30, wiki_windows = 0, methods = "rtn,gptq,qe_w,qe_gptq,qe_out05,qe_out1", only = "",
                        qe_percdamp = 0.0 },
  { apply = { "which result advances the sequential chain: rtn | gptq | gptq_static | qe_w | qe_gptq | qe_out05 | qe_out1",
              choices = ALL },
    iters = { "QuantEase sweeps", min = 1 },
    qe_percdamp = { "QuantEase's damping (fraction of mean diag Sigma; its default 0, GPTQ's 0.01), also of its GPTQ init", min = 0 },
    methods = "comma-separated columns: " .. table.concat(ALL, ", ") .. " (apply is always solved)",
    only = "compare only the linears whose \"block.name\" matches this regex (e.g. ^12\\.down$); \"\": all" })
-- Each column: a registered solver (qf.solvers()) with its options.
local methods, chosen = {}, {}
for k in opt.methods:gmatch("[^,%s]+") do
  local known = false
  for _, a in ipairs(ALL) do known = known or a == k end
  if not known then qf.option_error("methods", string.format("unknown method '%s' (%s)", k, table.concat(ALL, ", "))) end
  chosen[k] = true
end
chosen[opt.apply] = true
for _, k in ipairs(ALL) do if chosen[k] then methods[#methods + 1] = k end end
if opt.only ~= "" then
  local ok, err = pcall(qf.regex_search, opt.only, "")
  if not ok then qf.option_error("only", (tostring(err):gsub("^.-regex_search: ", ""))) end
end
local SOLVERS = {
  rtn = { "rtn" },
  gptq = { "gptq" },
  gptq_static = { "gptq", { static_groups = true } },  -- every group's scale fitted on W before the solve, as QuantEase's grid
  qe_w = { "quantease", { iters = opt.iters, init = "w", percdamp = opt.qe_percdamp } },
  qe_gptq = { "quantease", { iters = opt.iters, init = "gptq", percdamp = opt.qe_percdamp } },
  qe_out05 = { "quantease_outliers", { ratio = 0.005, iters = opt.iters } },
  qe_out1 = { "quantease_outliers", { ratio = 0.01, iters = opt.iters } },
}
for _, k in ipairs(methods) do qf.check_solver_options(SOLVERS[k][1], SOLVERS[k][2]) end
if opt.importance ~= "none" and (chosen.qe_out05 or chosen.qe_out1) then
  qf.option_error("importance", "does not apply to the outlier columns qe_out05 / qe_out1 (their grid is the trimmed min-max range, docs/methods.md#outlier-grid)")
end

local ctx = P.prepare(opt, nil, { outliers = opt.apply:match("^qe_out") ~= nil })
local grid = P.grid(opt)
print("grid: " .. tostring(grid))
local rows = {}
local s = P.quantize_model(ctx.model, ctx.cal, function(l, g)  -- g: an override's grid for this layer
  if opt.only ~= "" and not qf.regex_search(opt.only, l.block .. "." .. l.name) then
    return qf.solve(SOLVERS[opt.apply][1], l, g or grid, SOLVERS[opt.apply][2])
  end
  local row, res = { block = l.block, layer = l.name }, {}
  for _, k in ipairs(methods) do
    local q, info = qf.solve(SOLVERS[k][1], l, g or grid, SOLVERS[k][2])
    res[k], row[k] = q, info.objective
    if info.sweeps and opt.only ~= "" then row[k .. "_sweeps"] = info.sweeps end  -- convergence, for the few compared
    if info.init_objective and opt.only ~= "" then row[k .. "_init"] = info.init_objective end
  end
  rows[#rows + 1] = row
  return res[opt.apply]
end, { true_sequential = opt.true_sequential })

-- Per-layer table and the order checks (ties within 1e-9 relative count as holding); a check
-- needs its columns.
local function le(a, b) return a <= b * (1 + 1e-9) end
local LABEL = { rtn = "RTN", gptq = "GPTQ", gptq_static = "GPTQ static groups", qe_w = "QE init w", qe_gptq = "QE init gptq", qe_out05 = "QE+0.5%", qe_out1 = "QE+1%" }
local head = { "block", "layer" }
for _, k in ipairs(methods) do head[#head + 1] = LABEL[k] end
local full = chosen.rtn and chosen.gptq and chosen.qe_w
if full then head[#head + 1] = "QE≤GPTQ≤RTN" end
print("| " .. table.concat(head, " | ") .. " |")
print("|" .. string.rep("---|", #head))
local n_qe_gptq, n_gptq_rtn, n_all, n_out = 0, 0, 0, 0
for _, r in ipairs(rows) do
  local cells = { tostring(r.block), r.layer }
  for _, k in ipairs(methods) do cells[#cells + 1] = string.format("%.4g", r[k]) end
  if full then
    local a, b = le(r.qe_w, r.gptq), le(r.gptq, r.rtn)
    if a then n_qe_gptq = n_qe_gptq + 1 end
    if b then n_gptq_rtn = n_gptq_rtn + 1 end
    if a and b then n_all = n_all + 1 end
    r.order_holds = a and b
    cells[#cells + 1] = (a and b) and "yes" or (a and "GPTQ>RTN" or "QE>GPTQ")
  end
  if chosen.qe_out05 and chosen.qe_out1 and chosen.qe_w and le(r.qe_out05, r.qe_w) and le(r.qe_out1, r.qe_out05) then n_out = n_out + 1 end
  print("| " .. table.concat(cells, " | ") .. " |")
end
local n = #rows
if full then
  print(string.format("QE(init w) ≤ GPTQ on %d/%d layers; GPTQ ≤ RTN on %d/%d; both on %d/%d; QE+1%% ≤ QE+0.5%% ≤ QE on %d/%d",
    n_qe_gptq, n, n_gptq_rtn, n, n_all, n, n_out, n))
end
qf.record("comparison", rows)
qf.record("order_counts", { layers = n, qe_le_gptq = n_qe_gptq, gptq_le_rtn = n_gptq_rtn, both = n_all, outliers_monotone = n_out })
P.record_summary(s)
P.evaluate(ctx, opt)
