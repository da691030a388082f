-- QuIP in Lua (docs/methods.md#quip, #ldlq, #transforms): the butterfly transform of qf.linalg; a
-- QLinear whose seeded transforms carry a diagonal (T = R·diag(d)) dequantizes to O·Ŵ·T with the
-- dense matrices; set into stories260K its forward equals the dense weight's, bit for bit; storage
-- counts 64 bits per seed and 32 per diagonal entry; the qforge format keeps it exactly, code
-- formats refuse it naming block and linear; qf.ldlq rounds as qf.gptq; the "quip" preprocessing
-- step (qf.preprocess) composes with the registered solvers.
local H = dofile("tests/lua/harness.lua")
local check, check_eq, check_error = H.check, H.check_eq, H.check_error
local L = qf.linalg

H.section("qf.linalg.random_butterfly: T = P_out·(Q_a ⊗ Q_b)·P_in, orthogonal, fast = dense")
for _, n in ipairs{ 1, 12, 97, 172, 576 } do
  local T = L.random_butterfly_matrix(n, 40 + n)
  check((T:t():matmul(T) - qf.eye(n)):abs_max() < 1e-6, "orthogonal, n = " .. n)
  local X = qf.rng(n):randn({ 3, n })
  check((L.random_butterfly(X, 40 + n) - X:matmul(T:t())):abs_max() < 1e-5, "X·Tᵀ, n = " .. n)
  check((L.random_butterfly(X, 40 + n, { inverse = true }) - X:matmul(T)):abs_max() < 1e-5, "inverse: X·T, n = " .. n)
  check((L.random_butterfly(X:t():contiguous(), 40 + n, { dim = 1 }) - T:matmul(X:t())):abs_max() < 1e-5, "dim = 1, n = " .. n)
end
check((L.random_butterfly_matrix(64, 1) - L.random_butterfly_matrix(64, 2)):abs_max() > 0.01, "another seed, another transform")
check_error(function() L.random_butterfly(qf.zeros({ 2, 3 }), 1, { dim = 3 }) end, "dimension 3 out of range")
check_error(function() L.random_butterfly_matrix(0, 1) end, "n must be >= 1")
check_error(function() L.random_butterfly(qf.zeros({ 2, 3 }), 1, { inverse = true, scale = 2 }) end, "unknown option 'scale'")

H.section("a QLinear with seeded transforms and diagonals: W_eff = O·Ŵ·T, T = R·diag(d)")
local rng = qf.rng(3)
local spec = qf.grid{ bits = 4 }
local W = rng:randn({ 12, 20 })
local base = qf.rtn(W, spec)
local g, codes, B = base:grid(), base:codes(), base:dequantize()
local d = rng:rand({ 20 }) + 0.5
local o = rng:rand({ 12 }) + 0.5
local Tin = L.random_hadamard_matrix(20, 5) * d         -- R·diag(d): column j of R times d_j
local Oout = L.random_butterfly_matrix(12, 6) * o       -- the same on the output side
local q = qf.qlinear{ grid = g, codes = codes, input = { kind = "hadamard", seed = 5, diag = d },
                      output = { kind = "butterfly", seed = 6, diag = o } }
check((q:dequantize() - Oout:matmul(B):matmul(Tin)):abs_max() < 1e-5, "O·Ŵ·T with the dense matrices")
check_eq((q:dequantize_basis() - B):abs_max(), 0, "the basis is the grid's values")
local ti, to = q:transforms()
check_eq(ti.kind, "hadamard")
check_eq(ti.seed, 5)
check_eq(ti.diag:to_table(), d:to_table(), "the diagonal comes back")
check_eq(to.kind, "butterfly")
check_eq(to.diag:to_table(), o:to_table())
check(tostring(q):find("input hadamard, output butterfly", 1, true), tostring(q))
local qb = qf.qlinear{ grid = g, codes = codes, input = { kind = "butterfly", seed = 8 } }
check((qb:dequantize() - B:matmul(L.random_butterfly_matrix(20, 8))):abs_max() < 1e-5, "butterfly without a diagonal")
check(qb:transforms().diag == nil, "no diagonal: none given back")
check_error(function() qf.qlinear{ grid = g, codes = codes, input = { kind = "hadamard", seed = 5, diag = qf.ones({ 3 }) } } end,
            "input transform: the diagonal has 3 entries, expected 20")
check_error(function() qf.qlinear{ grid = g, codes = codes, input = { kind = "butterfly", seed = 5, diag = qf.zeros({ 20 }) } } end,
            "diagonal entry 1 is 0")
check_error(function() qf.qlinear{ grid = g, codes = codes, input = { kind = "hadamard", seed = 5, diag = qf.ones({ 4, 5 }) } } end,
            "'diag' must be a 1-d tensor, got [4, 5]")
check_error(function() qf.qlinear{ grid = g, codes = codes, input = { kind = "butterfly" } } end, "kind \"butterfly\" needs 'seed'")
check_error(function() qf.qlinear{ grid = g, codes = codes, input = { kind = "butterfly", seed = 1, n = 12 } } end,
            "input transform: n = 12 but this side has 20")
check((qf.qlinear{ grid = g, codes = codes, input = ti, output = to }:dequantize() - q:dequantize()):abs_max() == 0, "q:transforms() goes back into qf.qlinear")
check_error(function() qf.qlinear{ grid = g, codes = codes, input = { kind = "butterfly", seed = 1, matrix = qf.eye(20) } } end,
            "'matrix' does not belong to kind \"butterfly\"")

H.section("stories260K: the forward through transformed QLinears = the dense weights; storage; qforge; refusals")
local m = qf.load_model("../shared/models/stories260K")
local cfg = m:config()
local dense_m = m:clone()
local ids = m:tokenizer():encode(qf.read_text("../shared/data/tinystories_head.txt"))
local window = {}
for i = 1, 64 do window[i] = ids[i] end
-- q of block 2: input Hadamard with a diagonal, output butterfly; down of block 3 (172 inputs = 4·43):
-- input butterfly with a diagonal, output Hadamard. Ŵ′ = RTN(O⁻¹·W·T⁻¹) at 4 bits.
local cases = { { 2, "q", "hadamard", "butterfly", 101 }, { 3, "down", "butterfly", "hadamard", 202 } }
local Weff = {}
for _, c in ipairs(cases) do
  local b, name, kin, kout, seed = c[1], c[2], c[3], c[4], c[5]
  local Wl = m:weight(b, name):clone()
  local rows, cols = Wl:size(1), Wl:size(2)
  local dd = qf.rng(seed):rand({ cols }) + 0.5
  local R = { hadamard = L.random_hadamard, butterfly = L.random_butterfly }
  local M = { hadamard = L.random_hadamard_matrix, butterfly = L.random_butterfly_matrix }
  local Wp = R[kin](Wl / dd, seed)                                          -- W·T⁻¹ = (W·diag(1/d))·Rᵀ: rows w → R·w
  Wp = R[kout](Wp:t():contiguous(), seed + 1, { inverse = true }):t():contiguous()  -- O⁻¹·(·) = Rᵀ·(·)
  local qq = qf.rtn(Wp, spec)
  local ql = qf.qlinear{ grid = qq:grid(), codes = qq:codes(), input = { kind = kin, seed = seed, diag = dd },
                         output = { kind = kout, seed = seed + 1 } }
  local dense = M[kout](rows, seed + 1):matmul(qq:dequantize()):matmul(M[kin](cols, seed) * dd)
  check((ql:dequantize() - dense):abs_max() < 1e-5 * dense:abs():max(), name .. ": O·Ŵ′·T from the dense matrices")
  check((ql:dequantize() - Wl):abs_max() < 0.25 * Wl:abs():max(), name .. ": 4 bits in the rotated basis stay near W")
  m:set_linear(b, name, ql)
  dense_m:set_linear(b, name, ql:dequantize())
  Weff[name] = ql:dequantize()
end
check_eq((m:forward(window) - dense_m:forward(window)):abs_max(), 0, "logits: the transformed QLinears = their dense weights set in")
check_eq((m:weight(2, "q") - Weff.q):abs_max(), 0, "m:weight is W_eff")
-- The forward is x·W_effᵀ: block 2's q output for some inputs, by hand.
local x = qf.rng(9):randn({ 4, cfg.dim })
check((x:matmul(m:weight(2, "q"):t()) - x:matmul(Weff.q:t())):abs_max() == 0, "x·W_effᵀ")

local st = m:storage{ per_linear = true }
for _, l in ipairs(st.linears) do
  if l.block == 2 and l.name == "q" then
    check_eq(l.transform, (64 + 32 * cfg.dim + 64) / (cfg.dim * cfg.dim), 1e-12, "q: two seeds and a diagonal of dim entries")
  elseif l.block == 3 and l.name == "down" then
    check_eq(l.transform, (64 + 32 * cfg.hidden_dim + 64) / (cfg.dim * cfg.hidden_dim), 1e-12, "down: two seeds and a diagonal of hidden entries")
  else
    check_eq(l.transform, 0, "no transform elsewhere")
  end
end

local path = qf.run_dir() .. "/quip.safetensors"
m:save(path, { format = "qforge" })
local m2 = qf.load_model(path)
check_eq((m2:forward(window) - m:forward(window)):abs_max(), 0, "qforge round trip: the same logits")
for _, c in ipairs(cases) do
  check_eq((m2:weight(c[1], c[2]) - m:weight(c[1], c[2])):abs_max(), 0, c[2] .. ": the effective weight, bit for bit")
  local a, b2 = m2:block(c[1]):qlinear(c[2]):transforms()
  local ea, eb = m:block(c[1]):qlinear(c[2]):transforms()
  check_eq(a.kind, ea.kind)
  check_eq(a.seed, ea.seed)
  check_eq(a.diag:to_table(), ea.diag:to_table())
  check_eq(b2.kind, eb.kind)
  check_eq(b2.seed, eb.seed)
end
check_error(function() m:save(qf.run_dir() .. "/q.gguf", { format = "gguf", dtype = "Q8_0" }) end,
            "block 2 linear 'q' is quantized with an input hadamard transform, which GGUF Q8_0 cannot store")
check_error(function() m:save(qf.run_dir() .. "/q-gptq", { format = "gptq" }) end, "block 2 linear 'q' is quantized with an input hadamard transform")
local opt_name = qf.check_save{ format = "gptq", model = m, path = "x" }
check_eq(opt_name, "save", "check_save refuses before writing")
-- Steps that work in the codes' basis refuse a transformed linear instead of working in the wrong one.
local Xf = qf.rng(4):randn({ 2 * 16, cfg.dim })
check_error(function() m:block(2):finetune{ inputs = Xf, targets = Xf, windows = 2, params = { "scales" } } end,
            "block 2 linear 'q' carries an input transform")
local ft = m:clone():block(2):finetune{ inputs = Xf, targets = Xf, windows = 2, params = { "norms" }, epochs = 1 }
check(ft.after ~= nil, "norms alone still train")
check_error(function() qf.refit_scales(m:weight(2, "q"), qf.eye(cfg.dim), m:block(2):qlinear("q")) end,
            "refit_scales: the quantized linear carries transforms")
local kept = 0
for _, e in ipairs(m:fold_transforms()) do
  if not e.folded then kept = kept + 1 end
end
check_eq(kept, 4, "rotations never fold (two sides of two linears)")

H.section("qf.ldlq rounds as qf.gptq (QuIP's theorem), and is a registered solver")
local r2 = qf.rng(21)
local Xc = r2:randn({ 24, 24 }):matmul(r2:randn({ 24, 200 }))
local S = Xc:matmul(Xc:t())
local Wq = r2:randn({ 16, 24 })
for _, sp in ipairs{ qf.grid{ bits = 3 }, qf.grid{ bits = 4, group = 8 } } do
  local ql, info = qf.ldlq(Wq, S, sp, { blocksize = 1 })
  local qg = qf.gptq(Wq, S, sp, { blocksize = 1 })
  check_eq((ql:codes() - qg:codes()):abs_max(), 0, "the same codes: " .. tostring(sp))
  check_eq(info.target:size(), { 16, 24 })
  check_eq(info.percdamp, 0.01)
  local qs, sinfo = qf.solve("ldlq", { W = Wq, sigma = S }, sp, { blocksize = 1 })
  check_eq((qs:codes() - ql:codes()):abs_max(), 0, "qf.solve('ldlq') = qf.ldlq")
  check_eq(sinfo.solver, "ldlq")
end
check_error(function() qf.ldlq(Wq, S, spec, { blocksize = 0 }) end, "ldlq: option 'blocksize' must be an integer >= 1, got 0")
check_error(function() qf.ldlq(Wq, S, spec, { block = 4 }) end, "ldlq: unknown option 'block'")

H.section("qf.preprocess('quip'): the transformed problem, its transforms, any solver on it")
local r3 = qf.rng(31)
local X3 = r3:randn({ 36, 36 }):matmul(r3:randn({ 36, 300 }))
local S3 = X3:matmul(X3:t())
local W3 = r3:randn({ 20, 36 })
local mu3 = r3:randn({ 36 })
local g3 = qf.grid{ bits = 3 }
local prob = { W = W3, sigma = S3, mu = mu3, tokens = 300, site = "attn_in", block = 2, name = "q" }
local lp, info = qf.preprocess("quip", prob, g3, { seed = 7 })
check_eq(info.preprocess, "quip")
check_eq(info.kind, "hadamard")
check_eq(info.sides, "both")
check_eq(info.options, { seed = 7, rescale = true, sides = "both", kind = "hadamard", measure_sigma = false })
check_eq(lp.input.kind, "hadamard")
check_eq(lp.input.seed, info.input_seed)
check_eq(lp.output.seed, info.output_seed)
check_eq(lp.input.diag:size(), { 36 })
check_eq(info.transform_bits, 64 + 32 * 36 + 64)
check_eq({ lp.tokens, lp.site, lp.block, lp.name }, { 300, "attn_in", 2, "q" }, "the problem's labels are kept")
local T3 = L.random_hadamard_matrix(36, info.input_seed) * lp.input.diag  -- T = V·diag(1/s)
local O3 = L.random_hadamard_matrix(20, info.output_seed)                 -- O = Uᵀ
check((O3:matmul(lp.W):matmul(T3) - W3):abs_max() < 1e-5 * W3:abs_max(), "O·W′·T = W")
check((lp.sigma - T3:matmul(S3):matmul(T3:t())):abs_max() < 1e-5 * S3:abs_max(), "Σ′ = T·Σ·Tᵀ")
check((lp.mu - T3:matmul(mu3:view(36, 1)):view(36)):abs_max() < 1e-5 * mu3:abs_max(), "μ′ = T·μ")
check(info.mu_w_after > 0 and info.mu_w_before > 0 and info.sigma_diag_after < info.sigma_diag_before, "measures recorded")
check(info.mu_sigma_before == nil, "Σ's eigenvectors only with measure_sigma")
check(select(2, qf.preprocess("quip", prob, g3, { seed = 7, measure_sigma = true })).mu_sigma_after > 0, "measure_sigma")
for _, solver in ipairs{ "gptq", "ldlq", "quantease" } do
  local q3, sinfo = qf.solve(solver, lp, g3)  -- the transforms go onto the result
  local ti3, to3 = q3:transforms()
  check(ti3.seed == info.input_seed and to3.seed == info.output_seed, solver .. ": the result carries T and O")
  local obj = qf.objective(W3, q3:dequantize(), S3)
  check(math.abs(obj / sinfo.objective - 1) < 1e-4, solver .. ": the objective on (W, Σ) = the transformed problem's: " .. obj .. " vs " .. sinfo.objective)
end
local lp2 = qf.preprocess("quip", prob, g3, { seed = 7 })
check_eq((lp2.W - lp.W):abs_max(), 0, "deterministic")
local _, info_b = qf.preprocess("quip", { W = W3, sigma = S3, block = 3, name = "q" }, g3, { seed = 7 })
check(info_b.input_seed ~= info.input_seed and info_b.output_seed ~= info.output_seed, "another block, other transforms")
local _, info_s = qf.preprocess("quip", prob, g3, { seed = 8 })
check(info_s.input_seed ~= info.input_seed, "another run seed, other transforms")
local lpi, infoi = qf.preprocess("quip", prob, g3, { seed = 7, sides = "input", kind = "butterfly", rescale = false })
check(lpi.output == nil and lpi.input.kind == "butterfly" and lpi.input.diag == nil, "input side only, no rescaling")
check_eq(infoi.output_seed, 0)
check((lpi.W - L.random_butterfly(W3, infoi.input_seed)):abs_max() < 1e-5, "W′ = W·Vᵀ")
local lpo = qf.preprocess("quip", prob, g3, { seed = 7, sides = "output" })
check(lpo.input.kind == "diag" and lpo.output.kind == "hadamard", "output side only: T = diag(1/s)")
local dq, dd = qf.preprocess_options("quip")
check_eq(dq, { seed = 0, rescale = true, sides = "both", kind = "hadamard", measure_sigma = false })
check_eq(dd.sides.choices, { "both", "input", "output" })
local found = false
for _, e in ipairs(qf.preprocessors()) do found = found or (e.name == "quip" and #e.options == 5) end
check(found, "qf.preprocessors() lists quip with its 5 options")
local basis = {}
for _, e in ipairs(qf.preprocessors()) do basis[e.name] = e.changes_basis end
check(basis.quip == true and basis.magr == false, "changes_basis: quip leaves transforms on the result, magr does not")
check_error(function() qf.preprocess("quip", prob, g3, { seed = 7, side = "both" }) end, "quip: unknown option 'side'")
check_error(function() qf.preprocess("quip", prob, g3, { kind = "dense" }) end, "quip: option 'kind' must be one of hadamard, butterfly")
check_error(function() qf.preprocess("quip", prob, g3, { seed = -1 }) end, "quip: option 'seed' must be an integer >= 0, got -1")
check_error(function() qf.preprocess("quip", { W = W3, block = 2, name = "q" }, g3) end, "quip (block 2 linear q): the problem has no 'sigma'")
check_error(function() qf.preprocess("quip", lp, g3) end, "the problem already has an input transform (hadamard)")

H.summary()
