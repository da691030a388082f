-- Activations for Lua (issue 18, item 7): cal:activations(site) against what capture() sums into Σ,
-- against RMSNorm computed here with the toolkit, chunked windows against all windows, and
-- m:block_forward against the calibration's own advance; errors named.
local H = dofile("tests/lua/harness.lua")
local check, check_eq, check_error = H.check, H.check_eq, H.check_error

local m = qf.load_model("../shared/models/stories260K")
local cfg = m:config()
local ids = m:tokenizer():encode(qf.read_text("../shared/data/tinystories_head.txt"))
local T, N = 64, 3
local cal = qf.calibration{ model = m, tokens = ids, range = { 1, 5000 }, nsamples = N, seqlen = T, seed = 4 }

H.section("attn_in is RMSNorm(x)·gain of the block inputs")
local X = cal:inputs()
local A = cal:activations("attn_in")
check_eq(A:shape(), { N * T, cfg.dim })
local rms = qf.rsqrt((X * X):mean(2, true) + cfg.norm_eps)  -- [N·T, 1]
local want = X * rms * m:norm(1, "attn_norm")           -- broadcast the gain over rows
check((A - want):abs_max() <= 1e-5 * want:abs_max(), "attn_in = x/rms(x)·g (max diff " .. (A - want):abs_max() .. ")")

H.section("Σ and μ of capture() are XᵀX and the mean of the activations")
local st = cal:capture()
for _, site in ipairs{ "attn_in", "attn_out", "ffn_in", "ffn_mid" } do
  local Xs = cal:activations(site)
  local S = Xs:t():matmul(Xs)
  local rel = (S - st[site].sigma):abs_max() / st[site].sigma:abs_max()
  check(rel < 1e-5, site .. ": Σ = XᵀX (rel " .. rel .. ")")
  check_eq(st[site].tokens, N * T)
  check((Xs:mean(1) - st[site].mu):abs_max() < 1e-5 * (1 + st[site].mu:abs_max()), site .. ": μ = mean")
end

H.section("a window subset is the same rows as all windows")
local mid = cal:activations("ffn_mid")
local one = cal:activations("ffn_mid", { first = 2, count = 1 })
check_eq(one:shape(), { T, cfg.hidden_dim })
check_eq((one - mid:rows(T + 1, T)):abs_max(), 0, "window 2 alone is bit-identical")

H.section("activations follow the model's current weights")
local att0 = cal:activations("attn_out")
local W0 = m:weight(1, "v"):clone()
m:weight(1, "v"):mul(0.5)  -- attn_out is softmax(qkᵀ)·v: halving v halves it exactly (a power of two)
check_eq((cal:activations("attn_out") - att0 * 0.5):abs_max(), 0, "v halved → attn_out halved")
m:weight(1, "v"):copy(W0)
check_eq((cal:activations("attn_out") - att0):abs_max(), 0, "restored")
check_eq((cal:activations("attn_out", { chain = "fp" }) - att0):abs_max(), 0, "block 1: both chains start from the same embeddings")

H.section("m:block_forward on given inputs equals the calibration's advance")
local Y = m:block_forward(1, X, T)
check_eq(Y:shape(), X:shape())
cal:advance()
check_eq((Y - cal:inputs()):abs_max(), 0, "block_forward(1, inputs) is block 2's inputs, bit for bit")
local Yh = m:block_forward(1, X:rows(1, T), T)
check_eq((Yh - Y:rows(1, T)):abs_max(), 0, "windows are independent")

H.section("errors")
check_error(function() cal:activations("attn") end, "attn")
check_error(function() cal:activations("ffn_in", { first = 4 }) end, "first window 4 is outside 1..3")
check_error(function() cal:activations("ffn_in", { first = 2, count = 3 }) end, "count 3 from window 2 runs past the calibration's 3 windows")
check_error(function() cal:activations("ffn_in", { chain = "float" }) end, "chain must be \"quantized\" or \"fp\"")
check_error(function() cal:activations("ffn_in", { windows = 2 }) end, "unknown option 'windows'")
local cal2 = qf.calibration{ model = m, tokens = ids, range = { 1, 5000 }, nsamples = 1, seqlen = T, seed = 4, fp_chain = false }
check_error(function() cal2:activations("ffn_in", { chain = "fp" }) end, "no full-precision chain")
check_error(function() m:block_forward(0, X, T) end, "block 0 out of range")
check_error(function() m:block_forward(1, X, 100) end, "expected [n·seqlen, " .. cfg.dim .. "] with seqlen 100")
check_error(function() m:block_forward(1, X, cfg.seq_len + 1) end, "is outside 1..")

H.summary()
