-- gguf_target.lua — a GGUF file of a requested size (docs/methods.md#type-allocation): every
-- block linear gets one GGUF type from `types`, chosen to minimise the summed distortion under
-- the file's real bytes (blocks and their fp16 scales counted, target_bpw × weights / 8), then
-- quantized by `solver` on that type's grid and saved with each linear in its own type.
--   distortion of linear i at type t:  D_i(t) = Σ_jk G²_jk (W − Ŵ_t)²_jk
-- Ŵ_t: the reference fit of type t (RTN, importance-weighted by diag Σ when importance=diag);
-- G²: CVXQ's per-weight squared gradients (sensitivity=gradient) or the layer-input proxy
-- Σ_kk/tokens (sensitivity=proxy). One choice per linear by the Lagrangian (CVXQ's dual
-- variable over whole tensors) plus a greedy fill of the bytes left (qf.allocate_choices).
-- A K type on a linear whose width is not a multiple of 256 is its llama-quantize fallback
-- (Q2_K/Q3_K → Q4_0, Q4_K → Q5_0, Q5_K → Q5_1, Q6_K → Q8_0), with that type's bytes.
-- The token embedding / classifier stay F16 (as llama-quantize --token-embedding-type f16):
-- target_bpw counts the block linears only (those 32-block types fit: a linear whose width is not
-- a multiple of 32 stays full precision, written F32 as llama-quantize writes it).
--   qforge run recipes/gguf_target.lua model=models/SmolLM2-135M-Instruct.Q4_1.gguf target_bpw=4.5 solver=gptq save=out.gguf save_format=gguf
local P = require("qforge.pipeline")
local C = require("qforge.cvxq")

local own = { target_bpw = 4.5, types = "Q2_K,Q3_K,Q4_K,Q5_K,Q6_K,Q8_0", solver = "gptq", importance = "diag",
              sensitivity = "gradient", pca = 1024, stride = 128, grad_iters = 0,
              percdamp = -1.0, act_order = false, blocksize = 128, static_groups = false, iters = 30, init = "w",
              continuous_every = 3 }
local help = {
  target_bpw = { "bits per weight of the block linears in the file (real bytes: blocks with their scales)", gt = 0, max = 32 },
  types = "comma-separated GGUF types a linear may get (Q2_K Q3_K Q4_0 Q4_1 Q4_K Q5_0 Q5_1 Q5_K Q6_K Q8_0)",
  solver = { "the solver on each allocated grid", choices = { "rtn", "gptq", "quantease" } },
  sensitivity = { "gradient (CVXQ's squared gradients of PCA-projected hidden states) | proxy (diag Sigma / tokens per column)",
                  choices = { "gradient", "proxy" } },
  pca = { "gradient statistics: PCA components of the final hidden states", min = 1 },
  stride = { "gradient statistics: token positions every stride tokens", min = 1 },
  grad_iters = { "gradient statistics: calibration iterations (0: each window once)", min = 0 },
  percdamp = "GPTQ/QuantEase damping (fraction of mean diag Sigma); -1: the solver's default (GPTQ 0.01, QuantEase 0)",
  act_order = "GPTQ/QuantEase: columns in decreasing diag Sigma order",
  blocksize = { "GPTQ: lazy-batch block size", min = 1 }, static_groups = "GPTQ: group parameters fitted before the solve",
  iters = { "QuantEase: sweeps", min = 1 }, init = { "QuantEase: start from w (RTN) or gptq", choices = { "w", "gptq" } },
  continuous_every = { "QuantEase: a continuous update every k sweeps", min = 0 },
}
local opt = P.options(P.solve_options(own, help))

-- Options checked before any work.
local SOLVER_KEYS = { gptq = { "blocksize", "percdamp", "act_order", "static_groups" },
                      quantease = { "iters", "init", "continuous_every", "percdamp", "act_order" }, rtn = {} }
do
  local mine = {}
  for _, k in ipairs(SOLVER_KEYS[opt.solver]) do mine[k] = true end
  for _, k in ipairs({ "blocksize", "percdamp", "act_order", "static_groups", "iters", "init", "continuous_every" }) do
    if not mine[k] and opt[k] ~= own[k] then
      qf.option_error(k, string.format("is not an option of solver=%s (it would be ignored)", opt.solver))
    end
  end
end
local TYPES = {}
for t in opt.types:gmatch("[^,%s]+") do
  if not P.GGUF_TYPE_GRIDS[t] then
    qf.option_error("types", string.format("unknown GGUF type '%s' (%s)", t, table.concat(P.GGUF_TYPE_NAMES, " ")))
  end
  for _, u in ipairs(TYPES) do if u == t then qf.option_error("types", "lists " .. t .. " twice") end end
  TYPES[#TYPES + 1] = t
end
if #TYPES < 1 then qf.option_error("types", "is empty") end
if opt.importance == "diag_x" then qf.option_error("importance", "K-quant grids take importance none or diag") end
for _, k in ipairs({ "ktype", "overrides", "ratio" }) do
  if opt[k] ~= nil and opt[k] ~= P.common_options[k] then
    qf.option_error(k, "does not go with gguf_target.lua (the allocation chooses every linear's grid)")
  end
end
if opt.refit_scales then
  for _, t in ipairs(TYPES) do
    if P.GGUF_TYPE_GRIDS[t].ktype then qf.option_error("refit_scales", "refits uniform grids only, and types lists " .. t) end
  end
end
if opt.save ~= "" then
  if opt.save_format ~= "gguf" and opt.save_format ~= "qforge" then
    qf.option_error("save_format", "gguf_target.lua writes gguf (each linear in its own type) or qforge, got " .. opt.save_format)
  end
  if opt.save_format == "gguf" and opt.save_dtype ~= "" and not P.GGUF_TYPE_GRIDS[opt.save_dtype].ktype then
    qf.option_error("save_dtype", "names the file's type (general.file_type) of a mixed file: a K type, or empty (the most common K type allocated)")
  end
end

-- Every linear's candidates from its shape alone (fallbacks resolved by width, duplicates dropped)
-- and their bytes; the budget is checked against the cheapest choice before any work.
local items, unfit, total_weights, cheapest, dearest = {}, {}, 0, 0, 0
local function plan_candidates(m)
  for b = 1, m:nblocks() do
    for _, name in ipairs(m:linear_names()) do
      local W = m:weight(b, name)
      local rows, cols = W:size(1), W:size(2)
      local it = { block = b, name = name, types = {}, specs = {}, bytes = {}, requested = {} }
      for _, t in ipairs(TYPES) do
        local spec, _, eff = P.type_grid(t, opt.importance, cols)
        local k = nil
        for j, u in ipairs(it.types) do if u == eff then k = j end end
        if k then it.requested[k] = it.requested[k] .. "," .. t
        elseif cols % 32 == 0 then
          local n = #it.types + 1
          it.types[n], it.specs[n], it.requested[n], it.bytes[n] = eff, spec, t, qf.type_bytes(eff, rows, cols)
        end
      end
      if #it.types == 0 then  -- no 32-element block fits: stays full precision, written F32 (as llama-quantize does)
        unfit[#unfit + 1] = { block = b, layer = name, weights = rows * cols }
      else
        items[#items + 1] = it
        total_weights = total_weights + rows * cols
        local lo, hi = math.huge, 0
        for _, x in ipairs(it.bytes) do lo = math.min(lo, x); hi = math.max(hi, x) end
        cheapest, dearest = cheapest + lo, dearest + hi
      end
    end
  end
  if #items == 0 then qf.option_error("types", "no linear of this model can be stored in a 32-element block type") end
  if opt.target_bpw * total_weights / 8 < cheapest then
    qf.option_error("target_bpw", string.format("%.4g is below the cheapest of these types on this model (%.4f bits/weight over the block linears)",
      opt.target_bpw, 8 * cheapest / total_weights))
  end
end

local ctx = P.prepare(opt, false, { check_model = plan_candidates })
local m = ctx.model
local nb = m:nblocks()

-- 1. Sensitivities and full-precision statistics (one pass each over ctx.cal).
local grads = C.sensitivity(ctx.cal, opt, m)
local stats = P.fp_statistics(ctx.cal)

-- 2. The distortion of every candidate: the reference fit of its type, weighed by G².
local t0 = qf.now()
local D, Cost = {}, {}
for i, it in ipairs(items) do
  local W = m:weight(it.block, it.name)
  local cols = W:size(2)
  local st = stats[it.block][C.site(m, it.name)]
  local imp = st.sigma:diag()
  local g2 = grads and grads[it.block][it.name].g2 or nil
  local colw
  if not g2 then colw = imp:clone(); colw:div(st.tokens) end
  D[i], Cost[i] = {}, it.bytes
  for k, spec in ipairs(it.specs) do
    local q = qf.rtn(W, spec, spec.importance ~= "none" and imp or nil)
    local E = W - q:dequantize()
    E:mul(E)
    if g2 then E:mul(g2); D[i][k] = E:sum()
    else D[i][k] = (E:sum(1) * colw):sum() end
  end
  if i == #items or items[i + 1].block ~= it.block then
    io.stderr:write(string.format("type distortions: block %d/%d  elapsed %.1fs  ETA %.1fs\n", it.block, nb, qf.now() - t0,
      (qf.now() - t0) / it.block * (nb - it.block)))
  end
end
local budget = opt.target_bpw * total_weights / 8

-- 3. The allocation.
local a = qf.allocate_choices{ distortion = D, cost = Cost, budget = budget }
local count, rules, by_type, layers = {}, {}, {}, {}
local plan = { rules = rules, of = {} }
for b = 1, nb do plan.of[b] = {} end
if #unfit > 0 then
  rules[1] = { index = 1, text = "width not a multiple of 32: full precision, written F32", skip = true, settings = {} }
  for _, u in ipairs(unfit) do plan.of[u.block][u.layer] = rules[1] end
end
for i, it in ipairs(items) do
  local t = it.types[a.choice[i]]
  count[t] = (count[t] or 0) + 1
  if not by_type[t] then
    local spec = P.type_grid(t, opt.importance)
    by_type[t] = { index = #rules + 1, text = "type:" .. t .. " (allocated)", type = t, spec = spec, settings = { type = t } }
    rules[#rules + 1] = by_type[t]
  end
  plan.of[it.block][it.name] = by_type[t]
  layers[#layers + 1] = { block = it.block, layer = it.name, type = t, bytes = Cost[i][a.choice[i]], distortion = D[i][a.choice[i]],
                          candidates = it.types, candidate_distortion = D[i], candidate_bytes = Cost[i] }
end
local parts = {}
for _, t in ipairs(P.GGUF_TYPE_NAMES) do if count[t] then parts[#parts + 1] = string.format("%s×%d", t, count[t]) end end
local bpw = 8 * a.cost / total_weights
if #unfit > 0 then parts[#parts + 1] = string.format("(%d linears full precision: width not a multiple of 32)", #unfit) end
print(string.format("type allocation: %s — %.4f bits/weight over the block linears (target %.4g; cheapest %.4f, dearest %.4f), distortion %.5g (Lagrangian %.5g, %d greedy upgrades, lambda %.4g)  (%.1fs)",
  table.concat(parts, ", "), bpw, opt.target_bpw, 8 * cheapest / total_weights, 8 * dearest / total_weights, a.distortion,
  a.lagrangian_distortion, a.upgrades, a.lambda, qf.now() - t0))
qf.record("type_allocation", { target_bpw = opt.target_bpw, bits_per_weight = bpw, bytes = a.cost, weights = total_weights,
                               distortion = a.distortion, lagrangian_distortion = a.lagrangian_distortion,
                               lagrangian_bits_per_weight = 8 * a.lagrangian_cost / total_weights, upgrades = a.upgrades,
                               lambda = a.lambda, bisections = a.bisections, counts = count, layers = layers,
                               sensitivity = opt.sensitivity, seconds = qf.now() - t0, full_precision = unfit })
stats = nil

-- 4. The solver on each allocated grid, sequentially as every recipe (a fresh calibration pass).
local cal = P.calibration(ctx, opt)
local solve
if opt.solver == "rtn" then
  solve = P.solver("rtn", {}, P.type_grid(TYPES[1], opt.importance))
else
  local so = {}
  for _, k in ipairs(SOLVER_KEYS[opt.solver]) do if not (k == "percdamp" and opt.percdamp < 0) then so[k] = opt[k] end end
  solve = P.solver(opt.solver, so, P.type_grid(TYPES[1], opt.importance))
end
local s = P.quantize_model(m, cal, solve, { overrides = plan, refit_scales = opt.refit_scales, sigma_shrink = opt.sigma_shrink })
P.record_summary(s)
if opt.save ~= "" and opt.save_format == "gguf" and opt.save_dtype == "" then  -- general.file_type: the most common K type
  local best, n = "Q4_K", 0
  for _, t in ipairs(P.GGUF_TYPE_NAMES) do
    if P.GGUF_TYPE_GRIDS[t].ktype and (count[t] or 0) > n then best, n = t, count[t] or 0 end
  end
  opt.save_dtype = best
end
P.evaluate(ctx, opt)
