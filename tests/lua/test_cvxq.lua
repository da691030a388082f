-- CVXQ primitives from Lua (docs/methods.md#cvxq): dual_ascent over mixed groupings, row clusters,
-- group spread, bias correction and set_bias — hand values and the defining properties.
local H = dofile("tests/lua/harness.lua")
local check, check_eq, check_error = H.check, H.check_eq, H.check_error

H.section("dual_ascent over a whole layer, rows and row-cluster × column groups at once")
local rng = qf.rng(7)
local layer = { var = 1e-4, g2 = 2.0, n = 4096 }                      -- one group: a whole layer
local rows = { var = rng:rand({ 64 }):add(0.01), g2 = rng:rand({ 64 }), n = 64 }
local cells = { var = rng:rand({ 4, 32 }):mul(1e-3):add(1e-5), g2 = rng:rand({ 4, 32 }):add(0.1), n = 16 }
local a = qf.dual_ascent{ groups = { layer, rows, cells }, target_bits = 3 }
check(a.converged, "converged")
check(math.abs(a.rate - 3) <= 0.01, "rate within 0.01 bit of the target: " .. a.rate)
check_eq(a.bits[3]:shape(), { 4, 32 }, "bits come back in each entry's shape")
local total, count = a.bits[1]:get(1) * 4096, 4096
for i = 1, 64 do total = total + a.bits[2]:get(i) * 64; count = count + 64 end
for i = 1, 4 do for j = 1, 32 do total = total + a.bits[3]:get(i, j) * 16; count = count + 16 end end
check_eq(total / count, a.rate, 1e-12, "rate = Σ n·B / Σ n, recomputed here")
check_eq(#a.history, a.steps + a.bisections)
-- B_g = clamp(round(½(log2 σ² + log2 G² − log2 λ))) at the returned λ
local want = math.floor(0.5 * (math.log(1e-4, 2) + 1 - a.log2_lambda) + 0.5)
check(math.abs(a.bits[1]:get(1) - math.max(0, math.min(8, want))) <= 1, "layer bits follow the closed form")
check_error(function() qf.dual_ascent{ groups = { layer }, target_bits = 9 } end, "target_bits 9 is outside")
check_error(function() qf.dual_ascent{ groups = {}, target_bits = 3 } end, "'groups' is empty")
check_error(function() qf.dual_ascent{ groups = { { var = -1, g2 = 1, n = 1 } }, target_bits = 3 } end, "must be >= 0")
check_error(function() qf.dual_ascent{ groups = { { var = 1, g2 = 1, n = 0 } }, target_bits = 3 } end, "size 0")
check_error(function() qf.dual_ascent{ groups = { layer } } end, "'target_bits' is required")

H.section("row clusters and group spread")
check_eq(qf.row_clusters({ 2, 0, 7, -5, 9, 1, 2 }, 3), { 2, 1, 3, 1, 3, 1, 2 })
local W = qf.tensor{ { 1, 2, 3, 3 }, { 0, 0, 1, -1 }, { 5, 9, 3, 3 } }
local s = qf.group_spread(W, { group = 2, row_groups = { 1, 2, 1 } })
check_eq(s:shape(), { 2, 2 })
check_eq(s:get(1, 1), 59 / 4, 1e-6, "{1,2,5,9}: lower median 2")
check_eq(qf.row_log2_variance(W):get(1), math.log(11 / 16, 2), 1e-6)

H.section("bias correction through set_bias keeps the mean output")
local m = qf.load_model("../shared/models/stories260K")
local ids = m:tokenizer():encode(qf.read_text("../shared/data/tinystories_head.txt"))
local cal = qf.calibration{ model = m, tokens = ids, range = { 1, 5000 }, nsamples = 4, seqlen = 64, seed = 1 }
local st = cal:capture({ "ffn_mid" })
local Wd = m:weight(1, "down"):clone()
local q = qf.rtn(Wd, qf.grid{ bits = 2 })
check(m:bias(1, "down") == nil, "llama linears have no bias")
m:set_linear(1, "down", q)
m:set_bias(1, "down", qf.bias_correction(Wd, q:dequantize(), st.ffn_mid.mu))
local b = m:bias(1, "down")
-- mean output change (Ŵ − W) μ + b must vanish
local mu = st.ffn_mid.mu
local worst = 0
for i = 1, 64 do
  local d = b:get(i)
  for j = 1, 172 do d = d + (q:dequantize():get(i, j) - Wd:get(i, j)) * mu:get(j) end
  worst = math.max(worst, math.abs(d))
end
check(worst < 1e-5, "mean output preserved (worst " .. worst .. ")")
check_error(function() m:set_bias(1, "down", qf.zeros({ 3 })) end, "has 64 outputs, the bias has 3 entries")
m:set_bias(1, "down", nil)
check(m:bias(1, "down") == nil, "set_bias(nil) removes it")

H.section("qforge.cvxq: allocation over a real model hits the target and drives the solvers")
local C = require("qforge.cvxq")
local P = require("qforge.pipeline")
local m2 = qf.load_model("../shared/models/stories260K")
local cal2 = qf.calibration{ model = m2, tokens = ids, range = { 1, 5000 }, nsamples = 4, seqlen = 64, seed = 2 }
local stats = P.fp_statistics(cal2)
check_eq(#stats, 5)
-- its progress reaches the run log: one event per block, in order, with an ETA
local seen = {}
for line in io.lines(qf.run_dir() .. "/log.jsonl") do
  if line:find('"event":"fp_statistics"', 1, true) then
    seen[#seen + 1] = tonumber(line:match('"block":(%d+)'))
    check(line:find('"nblocks":5', 1, true) and line:find('"eta":', 1, true), "fp_statistics event: " .. line)
  end
end
check_eq(seen, { 1, 2, 3, 4, 5 }, "fp_statistics progress events for blocks 1..5")
local alloc = C.allocate(m2, stats, { target_bits = 2.5, cluster_rows = 16 })
check(alloc.converged and math.abs(alloc.rate - 2.5) <= 0.01, "rate " .. alloc.rate .. " within 0.01 of 2.5")
check_eq(#alloc.keys, 35)
local L = alloc.layers["2.down"]
check_eq(L.bits:shape(), { 4, 172 }, "64 rows / 16 = 4 clusters × 172 columns")
check_eq(#L.row_groups, 64)
local qd = qf.rtn(m2:weight(2, "down"), C.grid(L, { kind = "compand", compand_search = true }))
local D = qd:dequantize()
local zero_bits = 0
for i = 1, 64 do
  for j = 1, 172 do
    if L.bits:get(L.row_groups[i], j) == 0 then
      zero_bits = zero_bits + 1
      check_eq(D:get(i, j), qd:grid():zeros():get(L.row_groups[i], j), "0-bit group holds its median")
    end
  end
end
check(alloc.pruned_fraction >= 0 and alloc.pruned_fraction < 0.5, "pruned fraction " .. alloc.pruned_fraction)


H.section("an allocation saved and loaded back is the same allocation; a bad file is a clear error")
local dir = qf.run_dir()
local apath = dir .. "/alloc_test.safetensors"
local aopt = { target_bits = 2.5, cluster_rows = 16, sensitivity = "proxy" }
C.save_allocation(alloc, apath, aopt)
local back = C.load_allocation(apath, m2, aopt)
check_eq(back.keys, alloc.keys, "keys in model order")
check_eq(back.rate, alloc.rate, 1e-12, "rate recomputed from the file equals the dual ascent's")
check_eq(back.pruned_fraction, alloc.pruned_fraction, 1e-12)
local same = true
for _, key in ipairs(alloc.keys) do
  local a1, a2 = alloc.layers[key], back.layers[key]
  if H.show(a1.row_groups) ~= H.show(a2.row_groups) then same = false end
  for i = 1, a1.bits:size(1) do for j = 1, a1.bits:size(2) do if a1.bits:get(i, j) ~= a2.bits:get(i, j) then same = false end end end
end
check(same, "row clusters and bits identical after the round trip")
local qb = qf.rtn(m2:weight(2, "down"), C.grid(back.layers["2.down"], { kind = "compand", compand_search = true }))
check_eq((qb:dequantize() - D):abs_max(), 0, "the loaded allocation quantizes bit-identically")
check_error(function() C.load_allocation(apath, m2, { target_bits = 3 }) end, "made for target_bits=2.5")
check_error(function() C.load_allocation(dir .. "/nope.safetensors", m2, aopt) end, "nope.safetensors")
-- edited files: bits out of range, a cluster index out of range, a missing linear, not an allocation
local t, md = qf.load_tensors(apath)
local function edited(name, edit)
  local tt, mm = {}, {}
  for k, v in pairs(t) do tt[k] = v:clone() end
  for k, v in pairs(md) do mm[k] = v end
  edit(tt, mm)
  local p = dir .. "/" .. name .. ".safetensors"
  qf.save_tensors(p, tt, mm)
  return p
end
local p1 = edited("bits9", function(tt) tt["3.up.bits"]:set(1, 1, 9) end)
check_error(function() C.load_allocation(p1, m2, aopt) end, "tensor '3.up.bits' %[1, 1%] = 9 is outside %[0, 8%]")
local p2 = edited("rg7", function(tt) tt["1.q.row_groups"]:set(5, 7) end)
check_error(function() C.load_allocation(p2, m2, aopt) end, "tensor '1.q.row_groups': row 5 names cluster 7 of 4")
local p3 = edited("missing", function(tt) tt["5.down.bits"] = nil end)
check_error(function() C.load_allocation(p3, m2, aopt) end, "no allocation for linear 5.down")
local p4 = edited("notalloc", function(_, mm) mm.qforge_allocation = nil end)
check_error(function() C.load_allocation(p4, m2, aopt) end, "not a qforge allocation")
local p6 = edited("nolambda", function(_, mm) mm.log2_lambda = nil end)
check_error(function() C.load_allocation(p6, m2, aopt) end, "metadata log2_lambda missing or not a number")
check_error(function() C.check_options({ sensitivity = "gradient", target_bits = 2.5, alloc_file = p6 }) end,
            "option 'alloc_file': allocation file '" .. p6 .. "': metadata log2_lambda missing")
local p5 = edited("shape", function(tt) tt["2.o.bits"] = qf.zeros({ 4, 63 }, "i32") end)
check_error(function() C.load_allocation(p5, m2, aopt) end, "tensor '2.o.bits' must be %[clusters, 64%]")

H.section("gradient statistics: CVXQ's squared gradients of PCA-projected hidden states")
local m3 = qf.load_model("../shared/models/stories260K")
local cal3 = qf.calibration{ model = m3, tokens = ids, range = { 1, 5000 }, nsamples = 3, seqlen = 64, seed = 3 }
local g = cal3:gradient_statistics{ pca = 8, stride = 32 }
check_eq(g.iters, 3, "one iteration per window")
check_eq(g.samples, 6, "positions 31 and 63 of each window")
check_eq(g.pca.k, 8)
check(g.pca.explained > 0 and g.pca.explained < 1, "8 of 64 components explain part of the variance: " .. g.pca.explained)
check_eq(#g, 5)
check_eq(g[2].gate.g2:shape(), { 172, 64 })
local r = g[4].o.row
for _, i in ipairs({ 1, 17, 64 }) do
  local s = 0
  for j = 1, 64 do s = s + g[4].o.g2:get(i, j) end
  check_eq(r:get(i), s / 64, 1e-6 * s, "row = mean of the row of g2")
end
check(g[1].q.g2:min() >= 0 and g[1].q.g2:max() > 0, "squares: non-negative, not all zero")
-- group_mean of g2 over row clusters × columns, by hand for one cell
local rg = {}
for i = 1, 172 do rg[i] = (i - 1) % 4 + 1 end
local gm = qf.group_mean(g[2].gate.g2, { group = 1, row_groups = rg })
check_eq(gm:shape(), { 4, 64 })
local s = 0
for i = 2, 172, 4 do s = s + g[2].gate.g2:get(i, 5) end
check_eq(gm:get(2, 5), s / 43, 1e-6 * s)
-- the allocation consumes them and still hits the target
local m3stats = P.fp_statistics(cal3)
local ag = C.allocate(m3, m3stats, { target_bits = 3, cluster_rows = 16 }, g)
check(ag.converged and math.abs(ag.rate - 3) <= 0.01, "gradient allocation rate " .. ag.rate)
local differs = false
local ap = C.allocate(m3, m3stats, { target_bits = 3, cluster_rows = 16 })
for _, key in ipairs(ag.keys) do
  local a1, a2 = ag.layers[key].bits, ap.layers[key].bits
  for i = 1, a1:size(1) do for j = 1, a1:size(2) do if a1:get(i, j) ~= a2:get(i, j) then differs = true end end end
end
check(differs, "gradient and proxy sensitivities give different allocations")
check_error(function() cal3:gradient_statistics{ pca = 0 } end, "option 'pca' must be >= 1")
check_error(function() cal3:gradient_statistics{ stride = 0 } end, "stride must be >= 1")
check_error(function() cal3:gradient_statistics{ bogus = 1 } end, "bogus")
check_error(function() C.sensitivity(cal3, { sensitivity = "hessian" }) end, "option 'sensitivity' must be one of gradient, proxy; got \"hessian\"")

H.summary()
