-- decoupleQ's layer stage from Lua (docs/methods.md#decoupleq): qf.alt_min returns a QLinear on a
-- float_zero grid and an info table; its loss is the objective of the returned weight, never above
-- GPTQ's or RTN's on the same problem; bad options are errors that name the option.
local H = dofile("tests/lua/harness.lua")
local check, check_eq, check_error = H.check, H.check_eq, H.check_error

local rng = qf.rng(7)
local X = rng:randn({ 32, 500 })           -- 32 input features, 500 tokens
X = rng:randn({ 32, 32 }):matmul(X)          -- correlated inputs
local S = X:matmul(X:t())                    -- Σ = XXᵀ
local W = rng:randn({ 24, 32 })

H.section("qf.alt_min against qf.gptq and qf.rtn")
for _, g in ipairs({ { bits = 2 }, { bits = 3 }, { bits = 2, group = 8 }, { bits = 3, sym = true } }) do
  local spec = qf.grid(g)
  local name = tostring(spec)
  local o_rtn = qf.objective(W, qf.rtn(W, spec):dequantize(), S)
  local o_gptq = qf.objective(W, qf.gptq(W, S, spec):dequantize(), S)
  for _, round in ipairs({ "gptq", "pgd" }) do
    local q, info = qf.alt_min(W, S, spec, { round = round })
    check(tostring(q):find("qforge.QLinear", 1, true), name .. ": returns a QLinear")
    check_eq(q:grid():spec().float_zero, true, name .. ": float_zero grid")
    check_eq(q:grid():spec().bits, g.bits, name .. ": bits kept")
    local o = qf.objective(W, q:dequantize(), S)
    check(math.abs(o - info.loss) <= 1e-9 * o, name .. " " .. round .. ": info.loss " .. info.loss .. " is the objective " .. o)
    check(o <= o_gptq, name .. " " .. round .. ": alt_min " .. o .. " <= gptq " .. o_gptq)
    check(o <= o_rtn, name .. " " .. round .. ": alt_min <= rtn")
    check_eq(#info.history, info.iters, name .. ": one history entry per iteration")
    check_eq(#info.rows_improved, info.iters, name .. ": one rows_improved entry per iteration")
    check(info.iters >= 1 and info.iters <= 4, name .. ": iters within the default 4")
    local mono = true
    for k = 2, #info.history do mono = mono and info.history[k] <= info.history[k - 1] end
    check(mono, name .. " " .. round .. ": history never increases")
    check_eq(info.history[#info.history], info.loss)
    check_eq(info.steps[1].step, "init_rtn")
    check_eq(info.steps[2].step, "init_gptq")
    check(info.steps[#info.steps].step == "float", name .. ": the last step is the float step")
  end
end

H.section("options")
local spec = qf.grid{ bits = 2 }
local q1, i1 = qf.alt_min(W, S, spec, { iters = 1 })
check_eq(i1.iters, 1, "iters = 1: the init only")
check_eq(#i1.steps, 2)
local q2, i2 = qf.alt_min(W, S, spec, { iters = 8, shrink_search = false, act_order = true, percdamp = 0.1 })
check(i2.loss <= i1.loss, "more iterations never hurt")
check(i2.iters <= 8)
local _, i3 = qf.alt_min(W, S, spec, { round = "pgd", pgd_steps = 10, pgd_inner_steps = 0, pgd_lr = 0.05, shrink_steps = 20, shrink_grid = 40 })
check(i3.loss <= i1.loss, "pgd with custom options runs")
-- the QLinear goes wherever qf.gptq's does
local grid = q2:grid()
check(tostring(grid):find("float-zero", 1, true), "grid tostring names float-zero")
check_eq(q2:codes():shape(), { 24, 32 })

H.section("on a real layer: set_linear takes alt_min's QLinear")
local m = qf.load_model("../shared/models/stories260K")
local ids = m:tokenizer():encode(qf.read_text("../shared/data/tinystories_head.txt"))
local cal = qf.calibration{ model = m, tokens = ids, range = { 1, 5000 }, nsamples = 4, seqlen = 64, seed = 1 }
local st = cal:capture()
local Wq = m:weight(1, "q")
local qq, iq = qf.alt_min(Wq, st.attn_in.sigma, qf.grid{ bits = 2 })
local og = qf.objective(Wq, qf.gptq(Wq, st.attn_in.sigma, qf.grid{ bits = 2 }):dequantize(), st.attn_in.sigma)
check(iq.loss <= og, "real layer: alt_min " .. iq.loss .. " <= gptq " .. og)
m:set_linear(1, "q", qq)
check_eq(m:weight(1, "q"):to_table(), qq:dequantize():to_table(), "set_linear installs the dequantized weight")

H.section("errors name the option")
check_error(function() qf.alt_min(W, S, spec, { iter = 3 }) end, "unknown option 'iter'")
check_error(function() qf.alt_min(W, S, spec, { iters = 0 }) end, "option 'iters' must be an integer >= 1, got 0")
check_error(function() qf.alt_min(W, S, spec, { iters = "4" }) end, "alt_min: option 'iters' must be an integer, got \"4\"")
check_error(function() qf.alt_min(W, S, spec, { iters = 2.5 }) end, "alt_min: option 'iters' must be an integer, got 2.5")
check_error(function() qf.alt_min(W, S, spec, { round = "adam" }) end, "alt_min: option 'round' must be one of gptq, pgd; got \"adam\"")
check_error(function() qf.alt_min(W, S, spec, { round = 1 }) end, "alt_min: option 'round' must be a string, got 1")
check_error(function() qf.alt_min(W, S, spec, { shrink_search = 1 }) end, "alt_min: option 'shrink_search' must be true or false, got 1")
check_error(function() qf.alt_min(W, S, spec, { shrink_steps = 300 }) end, "'shrink_steps'")
check_error(function() qf.alt_min(W, S, spec, { percdamp = -1 }) end, "'percdamp'")
check_error(function() qf.alt_min(W, S, spec, { pgd_lr = 0 }) end, "'pgd_lr'")
check_error(function() qf.alt_min(W, S, spec, { pgd_steps = -1 }) end, "'pgd_steps'")
check_error(function() qf.alt_min(W, S, spec, { min_improved = 2 }) end, "'min_improved'")
check_error(function() qf.alt_min(W, S, spec, { blocksize = 0 }) end, "'blocksize'")
check_error(function() qf.alt_min(W, S, qf.grid{ bits = 2, mse = true }) end, "'mse'")
check_error(function() qf.alt_min(W, S, qf.grid{ bits = 2, f16_scales = true }) end, "'f16_scales'")
check_error(function() qf.alt_min(W, S, { bits = 2, grup = 8 }) end, "unknown option 'grup'")
check_error(function() qf.alt_min(W, S, 2) end, "grid table")
check_error(function() qf.alt_min(W, qf.zeros({ 31, 31 }), spec) end, "Sigma is [31, 31] but W has 32 columns")
check_error(function() qf.alt_min(W, S, spec, 5) end, "options table")

H.summary()
