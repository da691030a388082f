-- Quantization primitives from Lua: grids, solvers, objective, calibration, errors.
local H = dofile("tests/lua/harness.lua")
local check, check_eq, check_error = H.check, H.check_eq, H.check_error

H.section("grid specs")
local g2 = qf.grid{ bits = 2 }
check_eq(g2.bits, 2)
check_eq(g2.group, -1)
check(tostring(g2):find("2-bit asym per-channel", 1, true), "tostring names the grid")
check_error(function() qf.grid{ bits = 9 } end, "bits must be in 1..8, got 9")
check_error(function() qf.grid{ bits = 0 } end, "bits must be in 1..8")
check_error(function() qf.grid{ bits = 4, group = 0 } end, "group must be %-1")
check_error(function() qf.grid{ bits = 4, grup = 32 } end, "unknown option 'grup'")

H.section("rtn on a hand-checked row")
-- row {-1, 0.5, 2} at 2 bits: xmin -1, xmax 2, scale 1, zero 1; code = round(0.5/1) + 1 = 0 + 1
-- (round half to even before adding the zero point, as the reference quantizer)
local W = qf.tensor{ { -1, 0.5, 2 } }
local q = qf.rtn(W, g2)
check_eq(q:dequantize():to_table(), { { -1, 0, 2 } })
check_eq(q:codes():to_table(), { { 0, 1, 3 } })
check_eq(q:grid():scales():to_table(), { { 1 } })
check_eq(q:grid():zeros():to_table(), { { 1 } })

H.section("solvers agree with the objective")
local rng = qf.rng(5)
local X = rng:randn({ 24, 400 })          -- 24 input features, 400 tokens
local Mix = rng:randn({ 24, 24 })
X = Mix:matmul(X)                          -- correlated inputs
local S = X:matmul(X:t())                  -- Σ = XXᵀ
local Wr = rng:randn({ 16, 24 })
local spec = qf.grid{ bits = 3 }
local o_rtn = qf.objective(Wr, qf.rtn(Wr, spec):dequantize(), S)
local qg, ginfo = qf.gptq(Wr, S, spec)
local o_gptq, rel = qf.objective(Wr, qg:dequantize(), S)
check(o_gptq <= o_rtn, "GPTQ objective <= RTN objective")
check(rel > 0 and rel < 1, "relative objective in (0, 1)")
check_eq(ginfo.percdamp, 0.01)
local qe, info = qf.quantease(Wr, S, spec, { init = "gptq", iters = 5 })

H.section("refit_scales: the codes kept, the scales refitted to Σ (methods.md#refit-scales)")
do
  local q0 = qf.gptq(Wr, S, qf.grid{ bits = 3, group = 8 })
  local q1, ri = qf.refit_scales(Wr, S, q0)
  check(ri.objective_after < ri.objective_before, string.format("objective falls: %.6g -> %.6g", ri.objective_before, ri.objective_after))
  check_eq(qf.objective(Wr, q1:dequantize(), S), ri.objective_after, 1e-4 * ri.objective_after, "the reported objective is the weight's")
  check_eq(q1:codes():to('f32'):sub(q0:codes():to('f32')):abs_max(), 0, "codes unchanged")
  check(ri.rows_improved > 0 and ri.rows_improved <= 16)
  check_error(function() qf.refit_scales(Wr, S, qf.rtn(Wr:narrow(2, 1, 8), qf.grid{ bits = 3 })) end, "does not match W")
  check_error(function() qf.refit_scales(Wr, S, (qf.alt_min(Wr, S, qf.grid{ bits = 3, float_zero = true }, { iters = 1 }))) end, "integer zeros")
end

H.section("shrink_sigma: off-diagonal scaled by 1 - alpha, diagonal kept (methods.md#sigma-shrink)")
do
  local S3 = qf.shrink_sigma(S, 0.25)
  check_eq(S3:get(2, 2), S:get(2, 2), "diagonal kept")
  check_eq(S3:get(2, 5), 0.75 * S:get(2, 5), 1e-6 * math.abs(S:get(2, 5)), "off-diagonal times 0.75")
  check_eq(qf.shrink_sigma(S, 1):sub(S:diag():diag()):abs_max(), 0, "alpha 1: diag(Sigma)")
  check_eq(qf.shrink_sigma(S, 0):sub(S):abs_max(), 0, "alpha 0: Sigma")
  check_error(function() qf.shrink_sigma(S, 1.5) end, "alpha must be in [0, 1], got 1.5")
  check_error(function() qf.shrink_sigma(Wr, 0.5) end, "expected a square 2-d")
end

H.section("grid importance: diag Σ weighs the fit (methods.md#grid-importance)")
do
  local d = S:diag()
  check_eq(d:shape()[1], 24)
  check_eq(d:get(3), S:get(3, 3), "S:diag() holds Σ_jj")
  check_eq(d:diag():get(3, 3), S:get(3, 3), "diag of a 1-d tensor is the diagonal matrix")
  check_eq(d:diag():get(2, 3), 0)
  local si = qf.grid{ bits = 3, importance = "diag" }
  check_eq(si.importance, "diag", "the spec echoes its importance")
  local o_imp = qf.objective(Wr, qf.rtn(Wr, si, d):dequantize(), S)
  check(o_imp <= o_rtn, string.format("RTN weighted by diag Σ: objective %.4g <= min/max's %.4g", o_imp, o_rtn))
  check(tostring(qf.fit_grid(Wr, si, d)):find("importance-diag", 1, true), "the fitted grid names its importance")
  check_error(function() qf.rtn(Wr, si) end, "needs the column importances (argument 3: a tensor of 24 values")
  check_error(function() qf.rtn(Wr, spec, d) end, "argument 3 (column importances) given, but the grid has importance \"none\"")
  check_error(function() qf.fit_grid(Wr, si, Wr) end, "must be a 1-d tensor of 24 values")
  check_error(function() qf.grid{ bits = 3, importance = "imatrix" } end, "option 'importance' must be \"none\", \"diag\" or \"diag_x\"")
  check_error(function() qf.grid{ bits = 3, importance = "diag", mse = true } end, "importance and mse")
  check_error(function() Wr:diag() end, "expected a square 2-d or a 1-d tensor")
  local qi = qf.gptq(Wr, S, si)  -- the solvers pass diag Σ themselves
  check(qf.objective(Wr, qi:dequantize(), S) <= o_imp, "GPTQ on an importance grid (diag Σ passed by the solver) <= RTN on it")
end
check(qf.objective(Wr, qe:dequantize(), S) <= o_gptq * (1 + 1e-9), "QuantEase(init gptq) <= GPTQ")
check_eq(#info.objective, 5)
-- a hand-written loop: CD sweeps never increase the objective on a fixed grid
local grid = qf.fit_grid(Wr, spec)
local What = grid:quantize(Wr):dequantize()
local prev = qf.objective(Wr, What, S)
local mono = true
for _ = 1, 4 do
  qf.cd_sweep(Wr, S, What, grid)
  local o = qf.objective(Wr, What, S)
  mono = mono and o <= prev * (1 + 1e-6)
  prev = o
end
check(mono, "quantized CD sweeps are monotone")
local Hs = qf.zeros({ 16, 24 })
qf.iht_step(Wr, S, What, Hs, { k = 7 })
local nz = 0
for _, row in ipairs(Hs:to_table()) do for _, v in ipairs(row) do if v ~= 0 then nz = nz + 1 end end end
check_eq(nz, 7, "IHT keeps exactly k entries")
local qo = qf.quantease_outliers(Wr, S, spec, { ratio = 0.05, iters = 6 })
check_eq(qo:nnz(), math.floor(16 * 24 * 0.05 + 0.5))
check_eq(#qo:outliers(), qo:nnz())

H.section("solver errors reach Lua")
check_error(function() qf.gptq(Wr, qf.zeros({ 23, 23 }), spec) end, "23")
local bad = S:clone(); bad:set(1, 1, 0 / 0)
check_error(function() qf.gptq(Wr, bad, spec) end, "NaN")
check_error(function() qf.quantease(Wr, S, spec, { init = "zero" }) end, "init")
check_error(function() qf.iht_step(Wr, S, What, Hs, {}) end, "'k'")

H.section("primitive options: parsed against the declared fields (qf.solvers(), as qf.solve)")
local function same(a, b, what) check_eq(a:dequantize():to_table(), b:dequantize():to_table(), what) end
local defaults = qf.solver_options("gptq")
same(qf.gptq(Wr, S, spec), qf.gptq(Wr, S, spec, defaults), "qf.gptq's defaults are the declared ones")
same(qf.gptq(Wr, S, spec, { blocksize = 4.0 }), qf.gptq(Wr, S, spec, { blocksize = 4 }), "an integer option takes a float with an integer value")
same(qf.quantease(Wr, S, spec), qf.quantease(Wr, S, spec, (qf.solver_options("quantease"))), "qf.quantease's defaults are the declared ones")
check_error(function() qf.gptq(Wr, S, spec, { blocksiz = 4 }) end, "gptq: unknown option 'blocksiz' (known: blocksize, percdamp, act_order, static_groups, stochastic, seed)")
check_error(function() qf.gptq(Wr, S, spec, { blocksize = 0 }) end, "gptq: option 'blocksize' must be an integer >= 1, got 0")
check_error(function() qf.gptq(Wr, S, spec, { blocksize = 2.5 }) end, "gptq: option 'blocksize' must be an integer, got 2.5")
check_error(function() qf.gptq(Wr, S, spec, { act_order = "yes" }) end, "gptq: option 'act_order' must be true or false, got \"yes\"")
check_error(function() qf.gptq(Wr, S, spec, 5) end, "bad argument #4 to 'gptq' (options table expected, got number)")
check_error(function() qf.quantease(Wr, S, spec, { init = "zero" }) end, "quantease: option 'init' must be one of w, rtn, gptq; got \"zero\"")
check_error(function() qf.quantease(Wr, S, spec, { iters = 0 }) end, "quantease: option 'iters' must be an integer >= 1, got 0")
check_error(function() qf.quantease_outliers(Wr, S, spec, { ratio = 1 }) end, "quantease_outliers: option 'ratio' must be a finite number >= 0 and < 1, got 1")
check_error(function() qf.quantease_outliers(Wr, S, spec, { ration = 0.1 }) end, "quantease_outliers: unknown option 'ration'")
check_error(function() qf.cd_sweep(Wr, S, What, grid, { ordre = { 1 } }) end, "cd_sweep: unknown option 'ordre' (known: continuous, order)")
check_error(function() qf.cd_sweep(Wr, S, What, grid, { continuous = 1 }) end, "cd_sweep: option 'continuous' must be true or false, got 1")
check_error(function() qf.cd_sweep(Wr, S, What, grid, { order = { 0 } }) end, "cd_sweep: order[1] is not a column index in 1..24")
check_error(function() qf.iht_step(Wr, S, What, Hs, {}) end, "iht_step: option 'k' (entries or columns to keep) is required and must be >= 0")
check_error(function() qf.iht_step(Wr, S, What, Hs, { k = -1 }) end, "iht_step: option 'k' must be an integer >= 0, got -1")
check_error(function() qf.iht_step(Wr, S, What, Hs, { k = 7, alpha = 0 }) end, "iht_step: option 'alpha' must be a finite number > 0, got 0")
check_error(function() qf.iht_step(Wr, S, What, Hs, { k = 7, lambda_max = -1 }) end, "iht_step: option 'lambda_max' must be a finite number >= 0, got -1")
check_error(function() qf.iht_step(Wr, S, What, Hs, { k = 7, kk = 1 }) end, "iht_step: unknown option 'kk' (known: k, alpha, structured, lambda_max)")

H.section("calibration")
local m = qf.load_model("../shared/models/stories260K")
local ids = m:tokenizer():encode(qf.read_text("../shared/data/tinystories_head.txt"))
local cal = qf.calibration{ model = m, tokens = ids, range = { 1, 5000 }, nsamples = 4, seqlen = 64, seed = 1 }
check_eq(cal:nblocks(), 5)
check_eq(cal:block(), 1)
check_eq(cal:tokens(), 256)
local st = cal:capture()
check_eq(st.attn_in.sigma:shape(), { 64, 64 })
check_eq(st.ffn_mid.sigma:shape(), { 172, 172 })
check_eq(st.attn_in.tokens, 256)
-- the mean Σ/tokens, computed here from Σ (capture returns no f32 copy of it)
local mean23 = st.attn_in.sigma:get(2, 3) / st.attn_in.tokens
check(math.abs(mean23 * 256 - st.attn_in.sigma:get(2, 3)) < 1e-3 * math.abs(st.attn_in.sigma:get(2, 3)) + 1e-6,
  "mean = sum / tokens")
check(st.attn_in.mean == nil, "capture keeps no f32 copy of Σ/tokens")
check_eq(cal:fp_outputs():shape(), { 256, 64 })
cal:advance()
check_eq(cal:block(), 2)
check_error(function() cal:capture({ "attn_mid" }) end, "unknown site 'attn_mid'")
check_error(function() qf.calibration{ model = m, tokens = ids, range = { 1, 10 }, seqlen = 64 } end, "fewer than one window")
check_error(function() qf.calibration{ model = m, text = "x", tokens = ids } end, "exactly one of")
local cal_nofp = qf.calibration{ model = m, tokens = ids, nsamples = 2, seqlen = 64, fp_chain = false }
cal_nofp:capture()
check_error(function() cal_nofp:fp_outputs() end, "no full-precision chain")
check_error(function() cal_nofp:fp_inputs() end, "no full-precision chain")
check_error(function() cal_nofp:finetune{ lr = 0 } end, "no full-precision chain")
check_error(function() qf.calibration{ model = m, tokens = ids, nsamples = 2, seqlen = 64, fp_chain = 1 } end, "fp_chain")
check_eq(qf.input_site("w2"), "ffn_mid")

H.section("allocations and companded grids")
-- 4 rows in 2 row groups, 3 columns each its own group; row group 1 gets {0, 2, 3} bits, row group 2 {1, 1, 8}
local Wa = qf.tensor{ { 1, -2, 3 }, { 4, 5, -6 }, { 0.5, 0.25, -1 }, { 2, 2, 2 } }
local ga = qf.grid{ group = 1, alloc = qf.tensor{ { 0, 2, 3 }, { 1, 1, 8 } }, row_groups = { 1, 1, 2, 2 } }
check(tostring(ga):find("mixed-bit asym g1 rowgroups 2", 1, true), "tostring names the allocation")
local qa = qf.rtn(Wa, ga)
local Da = qa:dequantize()
check_eq(Da:get(1, 1), 1.0, "0-bit group: median of {1, 4} (lower middle)")
check_eq(Da:get(2, 1), 1.0)
check_eq(qa:grid():scales():shape(), { 2, 3 })
check_eq(Da:get(3, 3), -1.0, "8 bits reproduce the pooled range's endpoints")
local gc = qf.grid{ bits = 2, group = 3, kind = "compand", compand_search = true }
check_eq(gc.kind, "compand")
local Dc = qf.rtn(Wa, gc):dequantize()
local I3 = qf.tensor{ { 1, 0, 0 }, { 0, 1, 0 }, { 0, 0, 1 } }
check(qf.objective(Wa, Dc, I3) < qf.objective(Wa, qf.zeros({ 4, 3 }), I3), "companded RTN beats zero")
check_error(function() qf.grid{ kind = "log" } end, "option 'kind' must be \"uniform\", \"compand\" or \"kquant\"")
-- K-quant grids: the layout fixes the grid (methods.md#kquant-grids)
check_error(function() qf.grid{ kind = "kquant" } end, "kind \"kquant\" needs option 'ktype'")
check_error(function() qf.grid{ ktype = "Q7_K" } end, "option 'ktype' must be Q2_K, Q3_K, Q4_K, Q5_K or Q6_K, got \"Q7_K\"")
check_error(function() qf.grid{ ktype = "Q4_K", bits = 4 } end, "option 'bits' does not go with ktype=Q4_K")
check_error(function() qf.grid{ ktype = "Q4_K", importance = "diag_x" } end, "option 'importance' must be \"none\" or \"diag\" with ktype")
do
  local g = qf.grid{ ktype = "q6_k", importance = "diag" }
  check(g.ktype == "Q6_K" and g.kind == "kquant" and g.importance == "diag", "ktype names are case-insensitive; the spec says kind and importance")
  local rng = qf.rng(3)
  local W = rng:randn({ 3, 512 })
  local q = qf.rtn(W, qf.grid{ ktype = "Q4_K" })
  check(q:grid():spec().ktype == "Q4_K", "a QLinear on a Q4_K grid says so")
  local _, rel = qf.objective(W, q:dequantize(), qf.ones({ 512 }):diag())
  check(rel > 0 and rel < 0.02, "Q4_K RTN: relative squared error < 2 % (" .. rel .. ")")
  check_error(function() qf.rtn(rng:randn({ 2, 320 }), qf.grid{ ktype = "Q4_K" }) end, "Q4_K needs rows of a multiple of 256 weights; this weight has 320")
end
check_error(function() qf.grid{ alloc = { 1, 9 } } end, "option 'alloc' entry 2 is 9, expected an integer in 0..8")
check_error(function() qf.grid{ row_groups = { 1, 0 } } end, "option 'row_groups' entry 2 is 0")
check_error(function() qf.rtn(Wa, qf.grid{ group = 1, alloc = { 1, 2 } }) end, "bit allocation has 2 entries, expected 4 row groups")

H.summary()
