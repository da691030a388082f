-- The sequential pipeline (qforge.pipeline): what Σ each solver sees, with and without
-- true_sequential, checked against captures done by hand; m:set_linear keeps the codes.
local H = dofile("tests/lua/harness.lua")
local check, check_eq, check_error = H.check, H.check_eq, H.check_error
local P = require("qforge.pipeline")

local MODEL = "../shared/models/stories260K"
local ids = qf.load_model(MODEL):tokenizer():encode(qf.read_text("../shared/data/tinystories_head.txt"))
local spec = qf.grid{ bits = 2 }
local function new_cal(m)
  return qf.calibration{ model = m, tokens = ids, range = { 1, 5000 }, nsamples = 4, seqlen = 64, seed = 3 }
end
local function diff(a, b) return a:clone():sub(b):abs_max() end

-- Runs the pipeline with RTN on every linear, keeping a copy of the Σ each call saw.
local function run(ts)
  local m = qf.load_model(MODEL)
  local seen, qs = {}, {}
  P.quantize_model(m, new_cal(m), function(l)
    seen[l.block .. l.name] = l.sigma:clone()
    local q = qf.rtn(l.W, spec)
    qs[l.block .. l.name] = q
    return q
  end, { true_sequential = ts })
  return seen, qs, m
end
local plain, plain_q, plain_m = run(false)
local seq = run(true)

H.section("reference captures by hand (block 1)")
local m = qf.load_model(MODEL)
local cal = new_cal(m)
local st0 = cal:capture()                      -- all sites, block 1 untouched
for _, n in ipairs({ "q", "k", "v" }) do m:set_linear(1, n, qf.rtn(m:weight(1, n), spec)) end
local st_o = cal:capture({ "attn_out" })       -- o's inputs after q/k/v are quantized
m:set_linear(1, "o", qf.rtn(m:weight(1, "o"), spec))
local st_ffn = cal:capture({ "ffn_in" })       -- gate/up inputs after the attention half is quantized
for _, n in ipairs({ "gate", "up" }) do m:set_linear(1, n, qf.rtn(m:weight(1, n), spec)) end
local st_down = cal:capture({ "ffn_mid" })

H.section("without true_sequential every linear of a block sees the block-start Σ")
check_eq(diff(plain["1q"], st0.attn_in.sigma), 0)
check_eq(diff(plain["1o"], st0.attn_out.sigma), 0)
check_eq(diff(plain["1gate"], st0.ffn_in.sigma), 0)
check_eq(diff(plain["1down"], st0.ffn_mid.sigma), 0)

H.section("true_sequential re-collects Σ after each sub-group")
check_eq(diff(seq["1q"], st0.attn_in.sigma), 0, "q/k/v see the same inputs either way")
check_eq(diff(seq["1o"], st_o.attn_out.sigma), 0, "o sees quantized q/k/v")
check_eq(diff(seq["1gate"], st_ffn.ffn_in.sigma), 0, "gate/up see the quantized attention half")
check_eq(diff(seq["1up"], st_ffn.ffn_in.sigma), 0)
check_eq(diff(seq["1down"], st_down.ffn_mid.sigma), 0, "down sees quantized gate/up")
check(diff(seq["1o"], plain["1o"]) > 0, "quantizing q/k/v changes o's Σ (so the test can tell the modes apart)")
check(diff(seq["1down"], plain["1down"]) > 0, "quantizing gate/up changes down's Σ")

H.section("set_linear: weights are the dequantized codes, and shape errors are clear")
for _, n in ipairs({ "q", "down" }) do
  check_eq(diff(plain_m:weight(5, n), plain_q["5" .. n]:dequantize()), 0, "block 5 " .. n .. " holds its QLinear")
end
check_error(function() plain_m:set_linear(1, "q", qf.zeros({ 3, 3 })) end, "linear 'q' is %[64, 64%], the tensor is %[3, 3%]")
check_error(function() plain_m:set_linear(1, "q", plain_q["1down"]) end, "the QLinear is %[64, 172%]")
check_error(function() plain_m:set_linear(9, "q", plain_q["1q"]) end, "block 9 out of range")
plain_m:set_linear(1, "q", qf.zeros({ 64, 64 }))
check_eq(plain_m:weight(1, "q"):abs_max(), 0, "a Tensor replaces the weight")

H.summary()
