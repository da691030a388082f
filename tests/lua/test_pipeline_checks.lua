-- qforge.pipeline's contracts (issue 14): solve gets a copy of the weight and the objective is
-- measured against the original; a bad solve result names its block and linear; honest storage
-- labels; grid:quantize with outliers; 1-based messages; the export checks; m:forward's context.
local H = dofile("tests/lua/harness.lua")
local check, check_eq, check_error = H.check, H.check_eq, H.check_error
local P = require("qforge.pipeline")

local MODEL = "../shared/models/stories260K"
local ids = qf.load_model(MODEL):tokenizer():encode(qf.read_text("../shared/data/tinystories_head.txt"))
local function new_cal(m)
  return qf.calibration{ model = m, tokens = ids, range = { 1, 5000 }, nsamples = 2, seqlen = 32, seed = 5 }
end

H.section("a solve that edits l.W in place: the objective is against the original weight")
do
  local orig = qf.load_model(MODEL)
  local m = qf.load_model(MODEL)
  local spec8 = qf.grid{ bits = 8 }
  local seen = {}
  local s = P.quantize_model(m, new_cal(m), function(l)
    local live = m:weight(l.block, l.name)
    check(not l.W:same_storage(live), "l.W is a copy, not the model's weight")
    l.W:mul(0.5)                                 -- the issue's recipe: edit, then RTN at 8 bits
    check_eq(live:clone():sub(orig:weight(l.block, l.name)):abs_max(), 0, "editing l.W leaves the model untouched")
    local q = qf.rtn(l.W, spec8)
    seen[#seen + 1] = { b = l.block, name = l.name, sigma = l.sigma:clone(), What = q:dequantize() }
    return q
  end)
  local worst = 0
  for i, r in ipairs(seen) do
    local want = qf.objective(orig:weight(r.b, r.name), r.What, r.sigma)
    local got = s.layers[i].objective
    worst = math.max(worst, math.abs(got - want) / want)
  end
  check(worst < 1e-9, "every layer objective equals tr((W - What) Σ (W - What)ᵀ) with the original W (worst rel diff " .. worst .. ")")
  -- Halving every weight costs about a quarter of tr(WΣWᵀ) per layer: far from 8-bit rounding.
  check(s.layers[1].relative > 0.2, "the halved weight shows in the objective (rel " .. s.layers[1].relative .. ")")
  check_eq(m:weight(1, "q"):clone():sub(seen[1].What):abs_max(), 0, "the model holds what solve returned")
end

H.section("a solve that returns nothing or something else names the block and linear")
do
  local m = qf.load_model(MODEL)
  check_error(function() P.quantize_model(m, new_cal(m), function(l) end) end,
    "solve for block 1 linear 'q' returned nothing, expected a QLinear or a Tensor")
  m = qf.load_model(MODEL)
  check_error(function()
    P.quantize_model(m, new_cal(m), function(l) if l.name == "v" then return 42 end return qf.rtn(l.W, qf.grid{ bits = 4 }) end)
  end, "solve for block 1 linear 'v' returned number")
end

H.section("storage: unquantized linears are labelled by what they hold")
do
  local m = qf.load_model(MODEL)
  local st = m:storage()
  check_eq(st.unquantized_dtype, "f32", "stories260K's weights are f32, not fp16-exact")
  check_eq(st.bits_per_weight, 32, 1e-12, "an unquantized f32 model is 32 bits/weight")
  check(st.fp16 == nil, "no field claims fp16")
  for b = 1, m:nblocks() do
    for _, n in ipairs(m:linear_names()) do m:set_linear(b, n, m:weight(b, n):to("f16"):to("f32")) end
  end
  st = m:storage()
  check_eq(st.unquantized_dtype, "f16", "fp16-rounded weights count as f16")
  check_eq(st.bits_per_weight, 16, 1e-12)
end

H.section("grid:quantize(W, outliers): codes plus sparse outliers")
do
  local W = qf.tensor{ { 0.1, -0.7, 0.3, 0.9 }, { -0.2, 0.5, 0.05, -1.0 } }
  local g = qf.fit_grid(W, qf.grid{ bits = 3 })
  local What = g:quantize(W):dequantize()
  local Hs = qf.zeros({ 2, 4 }):set(1, 2, 0.25):set(2, 4, -0.125)
  local q = g:quantize(What, Hs)
  check_eq(q:nnz(), 2, "two nonzero entries, two outliers")
  check_eq(q:outliers(), { { 1, 2, 0.25 }, { 2, 4, -0.125 } }, "1-based (row, col, value)")
  check_eq(q:dequantize():clone():sub(What + Hs):abs_max(), 0, "dequantize = on-grid part + outliers, exactly")
  check_error(function() g:quantize(What, qf.zeros({ 2, 3 })) end, "outliers [2, 3] do not match the grid's [2, 4]")
  check_error(function() g:quantize(What, qf.zeros({ 2, 4 }):set(2, 3, 0 / 0)) end, "outlier at row 2, column 3 is not finite")
end

H.section("messages: 1-based indices, one prefix")
do
  local e
  check_error(function() qf.grid{ bits = 0 } end, "grid: bits must be in 1..8, got 0")
  local ok, err = pcall(qf.grid, { bits = 0 })
  check(not tostring(err):find("grid: grid:", 1, true), "no doubled prefix: " .. tostring(err))
  local W = qf.tensor{ { 0 / 0, 1 }, { 2, 3 } }
  check_error(function() qf.rtn(W, qf.grid{ bits = 4 }) end, "non-finite weight at row 1, column 1 of group 1")
  local m = qf.load_model(MODEL)
  check_error(function() qf.calibration{ model = m, tokens = ids, range = { 1, 10 }, nsamples = 1, seqlen = 64 } end,
    "token range [1, 10] holds 10 tokens, fewer than one window of 64")
  e = select(2, pcall(function() m:forward({ 1, 99999 }) end))
  check(tostring(e):find("at position 2", 1, true) ~= nil, "token positions are 1-based: " .. tostring(e))
end

H.section("m:forward refuses windows longer than the model's context, like m:perplexity")
do
  local m = qf.load_model(MODEL)
  local long = {}
  for i = 1, 600 do long[i] = 1 + (i % 50) end
  check_error(function() m:forward(long) end, "forward: a window of 600 tokens exceeds the model's context length 512")
  check_error(function() m:perplexity(long, { seqlen = 600 }) end, "exceeds the model's context length 512")
  check_eq(m:forward({ 1, 2, 3 }):size(1), 3, "short windows still run")
end

H.section("export options are checked before any work (P.check_save)")
do
  local dir = qf.run_dir()
  local base = { save = dir .. "/m.gguf", save_format = "gguf", save_dtype = "Q4_0", bits = 4, group = 32, sym = true, f16_scales = true }
  local function with(t)
    local o = {}
    for k, v in pairs(base) do o[k] = v end
    for k, v in pairs(t) do o[k] = v end
    return o
  end
  P.check_save(base)  -- a storable configuration passes
  check(io.open(dir .. "/m.gguf") == nil, "the check writes nothing at the save path")
  check_error(function() P.check_save(with{ sym = false }) end, "option 'save_format': gguf Q4_0 cannot store this run's model: Q4_0 is symmetric: pass sym=true")
  check_error(function() P.check_save(with{ group = 16 }) end, "need group=-1 or a multiple of 32, got group=16")
  check_error(function() P.check_save(with{ f16_scales = false }) end, "pass f16_scales=true")
  check_error(function() P.check_save(with{ bits = 5 }) end, "Q4_0 holds 4-bit codes, got bits=5 (Q5_0 holds them)")
  P.check_save(with{ bits = 5, save_dtype = "Q5_0" })
  check_error(function() P.check_save(with{ save_dtype = "Q8_K" }) end, "option 'save_dtype': 'Q8_K' is not a gguf dtype (F16, F32, Q2_K, Q3_K, Q4_0, Q4_1, Q4_K, Q5_0, Q5_1, Q5_K, Q6_K, Q8_0)")
  -- K types: the grids must be that K type (ktype), and ktype fixes the grid's other keys
  check_error(function() P.check_save(with{ save_dtype = "Q5_K" }) end, "option 'save_format': gguf Q5_K cannot store this run's model: its Q5_K super-blocks need ktype=Q5_K")
  P.check_save(with{ save_dtype = "Q5_K", ktype = "Q5_K" })
  check_error(function() P.check_save(with{ save_dtype = "Q4_0", ktype = "Q4_K" }) end, "a Q4_K grid is stored by gguf Q4_K (save_dtype=Q4_K)")
  check_error(function() P.grid{ ktype = "Q4_K", bits = 3, group = -1, sym = false, mse = false, mapping = "gptq", f16_scales = false, importance = "none" } end,
    "option 'bits': does not go with ktype=Q4_K")
  check_error(function() P.grid{ ktype = "Q4_K", bits = 4, group = -1, sym = false, mse = false, mapping = "gptq", f16_scales = false, importance = "diag_x" } end,
    "option 'importance': ktype grids take importance none or diag")
  check(tostring(P.grid{ ktype = "Q3_K", bits = 4, group = -1, sym = false, mse = false, mapping = "gptq", f16_scales = false, importance = "diag" }) == "qforge.grid Q3_K importance-diag", "P.grid makes the K-quant grid")
  local fb = P.kquant_fallback{ ktype = "Q4_K", importance = "diag" }
  check(fb.bits == 5 and fb.sym and fb.group == 32 and fb.mapping == "llamacpp" and fb.f16_scales and fb.importance == "diag", "Q4_K falls back to Q5_0's grid")
  check(P.kquant_fallback{ ktype = "Q5_K" }.sym == false and P.kquant_fallback{ ktype = "Q6_K" }.bits == 8 and P.kquant_fallback{ ktype = "none" } == nil, "fallback table")
  check_error(function() P.check_save(with{}, { outliers = true }) end, "stores no sparse outliers")
  check_error(function() P.check_save(with{ save_format = "gptq", save_dtype = "" }, { allocated = true }) end, "the CVXQ allocation")
  check_error(function() P.check_save(with{ save_format = "gptq", save_dtype = "", bits = 5 }) end, "GPTQ packs 2, 3, 4 or 8 bits, got bits=5")
  check_error(function() P.check_save(with{ save_format = "qforge", save_dtype = "F16" }) end, "option 'save_dtype': format 'qforge' takes no dtype")
  check_error(function() P.check_save(with{ save_format = "hf", save_dtype = "Q4_0" }) end, "'Q4_0' is not a hf dtype (BF16, F16, F32)")
  check_error(function() P.check_save(with{ save = dir .. "/no/such/dir/m.gguf" }) end, "option 'save': cannot write into directory")
  check_error(function() P.check_save(with{ save = "", save_dtype = "F16" }) end, "option 'save_dtype': given without save=")
  P.check_save(with{ save_format = "hf", save_dtype = "BF16" }, { outliers = true })  -- hf stores dequantized weights
  local m = qf.load_model(MODEL)
  check_error(function() P.check_model_options({ seqlen = 600, eval_seqlen = 0 }, m) end, "option 'seqlen': 600 exceeds the model's context length 512")
  check_error(function() P.check_model_options({ seqlen = 64, eval_seqlen = 513 }, m) end, "option 'eval_seqlen': 513 exceeds")
end

H.section("C.allocate names a bad cluster_rows instead of dividing by zero")
do
  local C = require("qforge.cvxq")
  local m = qf.load_model(MODEL)
  check_error(function() C.allocate(m, nil, { target_bits = 3, cluster_rows = 0 }) end, "option 'cluster_rows' must be an integer >= 1, got 0")
  check_error(function() C.allocate(m, nil, { target_bits = 3, cluster_rows = 2.5 }) end, "option 'cluster_rows' must be an integer, got 2.5")
  check_error(function() C.allocate(m, nil, { target_bits = 3 }) end, "option 'cluster_rows': is required")
  check_error(function() C.sensitivity(nil, { sensitivity = "hessian" }) end, "option 'sensitivity' must be one of gradient, proxy; got \"hessian\"")
  check_eq(C.sensitivity(nil, { sensitivity = "proxy" }), nil, "the proxy needs no statistics")
end

H.section("qf.check_options: a library function checks a recipe-built table by the qf.options declarations")
do
  local FT = { finetune = true, ft_params = "scales", ft_lr = 1e-5, ft_epochs = 4, ft_batch = 1 }
  local function ft(over) local o = {} for k, v in pairs(FT) do o[k] = v end for k, v in pairs(over) do o[k] = v end return o end
  check_eq(P.finetune(ft{}).epochs, 4, "a good table passes")
  check_eq(P.finetune(ft{ ft_epochs = 3.0 }).epochs, 3.0, "an integral float stands for the integer")
  check_error(function() P.finetune(ft{ ft_lr = -1 }) end, "option 'ft_lr' must be a finite number >= 0, got -1")
  check_error(function() P.finetune(ft{ ft_lr = 0/0 }) end, "option 'ft_lr' must be a finite number >= 0")
  check_error(function() P.finetune(ft{ ft_epochs = 0 }) end, "option 'ft_epochs' must be an integer >= 1, got 0")
  check_error(function() P.finetune(ft{ ft_batch = 1.5 }) end, "option 'ft_batch' must be an integer, got 1.5")
  check_error(function() P.finetune(ft{ ft_batch = "2" }) end, "option 'ft_batch' must be an integer, got \"2\"")
  check_error(function() P.finetune(ft{ ft_batch = {} }) end, "option 'ft_batch' must be an integer, got a table")
  check_error(function() qf.check_options({ g = 0 }, { g = 8 }, { g = { "group", min = 1, also = { -1 } } }) end,
    "option 'g' must be -1 or an integer >= 1, got 0")
  qf.check_options({ g = -1 }, { g = 8 }, { g = { "group", min = 1, also = { -1 } } })
  check_error(function() qf.check_options({}, { g = 8 }, { h = "x" }) end, "qf.check_options: help given for undeclared option 'h'")
  check_error(function() qf.check_options({}, { g = 8 }, {}, 4) end, "check_options")  -- no silently ignored argument
end

H.summary()
