-- Qronos's statistics and the registry solves on a real model (docs/methods.md#qronos): the cross
-- statistics of cal:capture{cross} against XᵀX̃ from cal:activations of both chains; at block 1 the
-- chains agree (G = H = Σ_fp); after a quantized block they differ and Qronos's mismatched objective
-- beats GPTQ's on the same statistics; qf.solve carries them and reports `mismatched`; errors named.
local H = dofile("tests/lua/harness.lua")
local check, check_eq, check_error = H.check, H.check_eq, H.check_error

local m = qf.load_model("../shared/models/stories260K")
local ids = m:tokenizer():encode(qf.read_text("../shared/data/tinystories_head.txt"))
local T, N = 64, 4
local cal = qf.calibration{ model = m, tokens = ids, range = { 1, 6000 }, nsamples = N, seqlen = T, seed = 2, fp_chain = true }

H.section("block 1: both chains are the embeddings, so G = H = Σ_fp")
local st = cal:capture(nil, { cross = true })
local plain = cal:capture()
for _, site in ipairs{ "attn_in", "attn_out", "ffn_in", "ffn_mid" } do
  local s = st[site]
  check_eq((s.sigma - plain[site].sigma):abs_max(), 0, site .. ": H is bit-identical to capture()'s Σ")
  local scale = s.sigma:abs_max()
  check((s.cross - s.sigma):abs_max() <= 1e-5 * scale, site .. ": G = H")
  check((s.sigma_fp - s.sigma):abs_max() <= 1e-5 * scale, site .. ": Σ_fp = H")
end

H.section("quantize block 1 with RTN at 2 bits: block 2's chains differ; G = XᵀX̃ from both chains' activations")
local g2 = qf.grid{ bits = 2 }
for _, name in ipairs(m:linear_names()) do
  m:set_linear(1, name, qf.rtn(m:weight(1, name), g2))
end
cal:advance()
local st2 = cal:capture(nil, { cross = true })
for _, site in ipairs{ "attn_in", "ffn_mid" } do
  local Xq = cal:activations(site)
  local Xf = cal:activations(site, { chain = "fp" })
  local G = Xf:t():matmul(Xq)
  local s = st2[site]
  local rel = (G - s.cross):abs_max() / G:abs_max()
  check(rel < 1e-5, site .. ": G = X_fpᵀ X̃ (rel " .. rel .. ")")
  local F = Xf:t():matmul(Xf)
  check((F - s.sigma_fp):abs_max() / F:abs_max() < 1e-5, site .. ": Σ_fp = X_fpᵀ X_fp")
  check((s.cross - s.sigma):abs_max() > 1e-3 * s.sigma:abs_max(), site .. ": the chains differ after a quantized block")
end

H.section("Qronos beats GPTQ on the mismatched objective of every linear of block 2 (3 bits)")
local g3 = qf.grid{ bits = 3 }
local arch = m:arch()
for _, name in ipairs(m:linear_names()) do
  local s = st2[arch.site_of[name]]
  local p = { block = 2, name = name, W = m:weight(2, name), sigma = s.sigma, cross = s.cross, sigma_fp = s.sigma_fp }
  local _, iq = qf.solve("qronos", p, g3)
  local _, ig = qf.solve("gptq", p, g3)
  local _, ir = qf.solve("rtn", p, g3)
  check(iq.mismatched < ig.mismatched, string.format("%s: qronos %.4g < gptq %.4g", name, iq.mismatched, ig.mismatched))
  check(ig.mismatched < ir.mismatched, string.format("%s: gptq %.4g < rtn %.4g", name, ig.mismatched, ir.mismatched))
  check(iq.objective > 0 and iq.lambda > 0, name .. ": objective and damping reported")
end

H.section("errors")
local s = st2.attn_in
local W = m:weight(2, "q")
check_error(function() qf.solve("qronos", { W = W, sigma = s.sigma }, g3) end, "no cross statistics")
check_error(function() qf.solve("qronos", { W = W, sigma = s.sigma, cross = s.cross }, g3) end, "give both 'cross' and 'sigma_fp'")
check_error(function() qf.solve("qronos", { W = W, sigma = s.sigma, cross = s.sigma_fp:rows(1, 4), sigma_fp = s.sigma_fp }, g3) end, "cross must be f32")
check_error(function() cal:capture(nil, { crosss = true }) end, "crosss")
local nofp = qf.calibration{ model = m, tokens = ids, range = { 1, 6000 }, nsamples = 2, seqlen = T, seed = 2, fp_chain = false }
check_error(function() nofp:capture(nil, { cross = true }) end, "full%-precision chain")
H.summary()
