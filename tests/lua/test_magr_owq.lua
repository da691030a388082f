-- MagR (qf.magr, docs/methods.md#magr) and OWQ (the registry's "owq", docs/methods.md#owq) from
-- Lua, on a synthetic layer and on stories260K: MagR's composite objective never rises, alpha = 0
-- returns W bit for bit, heavy-tailed rows lose their maxima at a small layer objective; OWQ keeps
-- exactly n columns in full precision (the top scores), never does worse than GPTQ when a few
-- inputs dominate Σ, n = 0 is GPTQ, and the model's storage counts the weak columns as fp16 columns.
local H = dofile("tests/lua/harness.lua")
local check, check_eq, check_error = H.check, H.check_eq, H.check_error

local rng = qf.rng(21)
local X = rng:randn({ 32, 400 })
X = (rng:randn({ 32, 32 }) * 0.3 + qf.eye(32)):matmul(X)
local S = X:matmul(X:t())
-- heavy tails: normal / sqrt(uniform)
local W = rng:randn({ 24, 32 }) / qf.cmax(rng:rand({ 24, 32 }), 0.01):sqrt()

H.section("qf.magr on a synthetic layer")
local Wm, info = qf.magr(W, S, { alpha = 0.05, iters = 80 })
check_eq(Wm:shape(), { 24, 32 })
check_eq(#info.objective, 81, "the objective at W and after each iteration")
local mono = true
for k = 2, #info.objective do mono = mono and info.objective[k] <= info.objective[k - 1] * (1 + 1e-13) end
check(mono, "the composite objective never rises")
check(info.objective[81] < info.objective[1], "and falls")
check_eq(info.objective_end, info.objective[81])
local ob, rel = qf.objective(W, Wm, S)
check_eq(info.fidelity, ob, "fidelity is the layer objective of W'")
check_eq(info.relative, rel)
check(rel < 0.05, "small layer objective: " .. rel)
local before, after = W:clone():abs():max(2), Wm:clone():abs():max(2)
local ratio = (after / before):mean()
check(math.abs(ratio - info.linf_ratio) < 1e-6, "linf_ratio is the mean per-row ratio")
check(info.linf_ratio < 0.9, "row maxima drop: " .. info.linf_ratio)
check((after - before):max() <= 1e-6, "no row maximum grows")
check_eq(info.lambda_max, qf.lambda_max(S))
check_eq(info.options, { alpha = 0.05, iters = 80, group = 0 })
local W0 = qf.magr(W, S, { alpha = 0, iters = 20 })
check_eq((W0 - W):abs_max(), 0, "alpha = 0: W unchanged")
local Wg, ig = qf.magr(W, S, { alpha = 0.02, iters = 40, group = 8 })
check(ig.linf_group_ratio < 0.95, "group 8: group maxima drop: " .. ig.linf_group_ratio)
local Wr = qf.magr(W, S, { alpha = 0.02, iters = 40, group = 32 })
local Wp = qf.magr(W, S, { alpha = 0.02, iters = 40 })
check_eq((Wr - Wp):abs_max(), 0, "group = cols is the per-row variant")
check_error(function() qf.magr(W, S, { alpha = -1 }) end, "magr: option 'alpha' must be a finite number >= 0, got -1")
check_error(function() qf.magr(W, S, { alpah = 1 }) end, "magr: unknown option 'alpah' (known: alpha, iters, group)")
check_error(function() qf.magr(W, S, { group = -3 }) end, "magr: option 'group'")
check_error(function() qf.magr(W, S, { iters = 1.5 }) end, "magr: option 'iters' must be an integer, got 1.5")
check_error(function() qf.magr(W, qf.zeros({ 31, 31 }), {}) end, "Sigma is [31, 31] but W has 32 columns")

H.section("magr as a preprocessing step: qf.preprocess = qf.magr with the grid's group")
local pnames = {}
for _, e in ipairs(qf.preprocessors()) do pnames[#pnames + 1] = e.name end
check(table.concat(pnames, ","):find("magr", 1, true), "qf.preprocessors() lists magr")
local layer = { W = W, sigma = S, site = "ffn_in", block = 2, name = "up" }
local p2, pinfo = qf.preprocess("magr", layer, qf.grid{ bits = 3, group = 8 }, { alpha = 0.02, iters = 40 })
check_eq((p2.W - Wg):abs_max(), 0, "qf.preprocess('magr') on a g8 grid = qf.magr with group = 8")
check_eq((p2.sigma - S):abs_max(), 0, "Σ unchanged")
check(p2.input == nil and p2.output == nil, "no transforms")
check_eq(pinfo.preprocess, "magr")
check_eq(pinfo.linf_group_ratio, ig.linf_group_ratio, "the same info as qf.magr")
local p3 = qf.preprocess("magr", layer, qf.grid{ bits = 3 }, { alpha = 0.02, iters = 40 })
check_eq((p3.W - Wp):abs_max(), 0, "per-channel grid: one term per row")
local qm, qmi = qf.solve("gptq", p2, qf.grid{ bits = 3, group = 8 })
check_eq((qm:dequantize() - qf.gptq(p2.W, S, qf.grid{ bits = 3, group = 8 }):dequantize()):abs_max(), 0, "then any solver on W'")
check_error(function() qf.preprocess("magr", layer, qf.grid{ bits = 3 }, { alpha = -1 }) end, "magr: option 'alpha' must be a finite number >= 0")

H.section("owq through the registry")
local names = {}
for _, s in ipairs(qf.solvers()) do names[#names + 1] = s.name end
local has_owq = false
for _, n in ipairs(names) do has_owq = has_owq or n == "owq" end
check(has_owq, "qf.solvers() lists owq")
-- inputs 4 and 18 (1-based) dominate Σ
local Xh = X:clone()
Xh:select(1, 4):mul(12)
Xh:select(1, 18):mul(9)
local Sh = Xh:matmul(Xh:t())
local grid = qf.grid{ bits = 3 }
local problem = { W = W, sigma = Sh, site = "attn_in" }
local q, qi = qf.solve("owq", problem, grid, { columns = 4 })
check_eq(q:nnz(), 4 * 24, "4 weak columns, every row")
check_eq(qi.columns, 4)
check_eq(#qi.weak_columns, 4)
local cols = {}
for _, o in ipairs(q:outliers()) do cols[o[2]] = true end
local ncols = 0
for _ in pairs(cols) do ncols = ncols + 1 end
check_eq(ncols, 4, "outliers fill exactly 4 columns")
check(cols[4] and cols[18], "the dominant inputs 4 and 18 are weak")
for _, j in ipairs(qi.weak_columns) do check(cols[j], "weak_columns lists the outlier columns (1-based)") end
local _, gi = qf.solve("gptq", problem, grid)
check(qi.objective <= gi.objective, "owq " .. qi.objective .. " <= gptq " .. gi.objective)
local q0, q0i = qf.solve("owq", problem, grid, { columns = 0 })
local g0 = qf.gptq(W, Sh, grid)
check_eq((q0:dequantize() - g0:dequantize()):abs_max(), 0, "columns = 0 is GPTQ")
check_eq(q0:nnz(), 0)
check_error(function() qf.solve("owq", problem, grid) end, "give option 'columns' (weak columns per linear) or option 'target_bits'")
check_error(function() qf.solve("owq", { W = W, sigma = Sh }, grid, { target_bits = 3.5 }) end, "option 'layer_kind' is 'auto' but the [24, 32] linear has no site")
check_error(function() qf.solve("owq", problem, grid, { target_bits = 2.5 }) end, "option 'target_bits' must be >= the grid's bits (3)")
check_error(function() qf.solve("owq", problem, grid, { scores = "x" }) end, "owq: unknown option 'scores'")

H.section("stories260K: MagR and OWQ on real layers, storage")
local m = qf.load_model("../shared/models/stories260K")
local ids = m:tokenizer():encode(qf.read_text("../shared/data/tinystories_head.txt"))
local cal = qf.calibration{ model = m, tokens = ids, range = { 1, 5000 }, nsamples = 8, seqlen = 64, seed = 1 }
local st = cal:capture()
for _, name in ipairs({ "q", "down" }) do
  local Wl = m:weight(1, name):clone()
  local Sl = st[qf.input_site(name)].sigma
  local Wl2, mi = qf.magr(Wl, Sl, { alpha = 1e-3, iters = 200 })
  local ok = true
  for k = 2, #mi.objective do ok = ok and mi.objective[k] <= mi.objective[k - 1] * (1 + 1e-13) end
  check(ok, name .. ": MagR objective never rises")
  check(mi.linf_ratio < 0.95, name .. ": row maxima drop: " .. mi.linf_ratio)
  check(mi.relative < 0.02, name .. ": small layer objective: " .. mi.relative)
  local gw = qf.grid{ bits = 3 }
  local pr = { W = Wl, sigma = Sl, site = qf.input_site(name), block = 1, name = name }
  local oq, oi = qf.solve("owq", pr, gw, { columns = 4 })
  local _, gi2 = qf.solve("gptq", pr, gw)
  check(oi.objective <= gi2.objective, name .. ": owq " .. oi.objective .. " <= gptq " .. gi2.objective)
  m:set_linear(1, name, oq)
end
local per = m:storage{ per_linear = true }.linears
for _, l in ipairs(per) do
  if l.block == 1 and (l.name == "q" or l.name == "down") then
    local rows, c = m:weight(1, l.name):size(1), m:weight(1, l.name):size(2)
    -- 3-bit codes on c − 4 columns, fp16 scale + zero per row, 4 fp16 columns and their 16-bit indices
    local want = (3 * rows * (c - 4) + 32 * rows + 16 * rows * 4 + 16 * 4) / (rows * c)
    check(math.abs(l.bits_per_weight - want) < 1e-12, l.name .. ": " .. l.bits_per_weight .. " bits/weight = " .. want)
  end
end

H.summary()
