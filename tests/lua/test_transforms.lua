-- Quantization in a transformed basis (issue 18, item 6): a QLinear's input/output transforms give
-- the effective weight O·Ŵ·T (checked against explicit products), count in storage, survive the
-- qforge format, are refused by formats that store plain codes, and fold into the RMSNorm gain.
local H = dofile("tests/lua/harness.lua")
local check, check_eq, check_error = H.check, H.check_eq, H.check_error

local spec = qf.grid{ bits = 4, group = 2 }
local W = qf.tensor{ { 0.1, -0.4, 0.3, 0.8 }, { 1.0, 0.5, -0.2, 0.0 }, { -0.6, 0.2, 0.9, -0.1 } }
local base = qf.rtn(W, spec)
local g, codes = base:grid(), base:codes()
local B = base:dequantize()  -- Ŵ in the transformed basis

H.section("input transforms: W_eff = Ŵ·T")
local d = qf.tensor{ 2, 0.5, -1, 4 }
local qd = qf.qlinear{ grid = g, codes = codes, input = { kind = "diag", diag = d } }
check_eq((qd:dequantize() - B * d):abs_max(), 0, "diag: columns scaled")
check_eq((qd:dequantize_basis() - B):abs_max(), 0, "the basis is the grid's values")
local qp = qf.qlinear{ grid = g, codes = codes, input = { kind = "perm", perm = qf.tensor{ 3, 1, 4, 2 } } }
local E = qp:dequantize()
for r = 1, 3 do
  for c, pc in ipairs{ 3, 1, 4, 2 } do check_eq(E:get(r, pc), B:get(r, c), "perm: column " .. c .. " lands at " .. pc) end
end
local T = qf.tensor{ { 0, 1, 0, 0 }, { 0.6, 0, 0.8, 0 }, { 0.8, 0, -0.6, 0 }, { 0, 0, 0, 1 } }  -- orthogonal
local qT = qf.qlinear{ grid = g, codes = codes, input = { kind = "dense", matrix = T } }
check((qT:dequantize() - B:matmul(T)):abs_max() < 1e-6, "dense: Ŵ·T")

local Th = qf.linalg.random_hadamard_matrix(4, 7)
local qh = qf.qlinear{ grid = g, codes = codes, input = { kind = "hadamard", seed = 7 } }
check((qh:dequantize() - B:matmul(Th)):abs_max() < 1e-6, "hadamard: Ŵ·T with T = qf.linalg.random_hadamard_matrix(n, seed)")
check_eq(qh:transforms().seed, 7)

H.section("output transforms: W_eff = O·Ŵ")
local Oh = qf.linalg.random_hadamard_matrix(3, 11)  -- 3 = 2^0·3: a random orthogonal 3×3 with signs
local qoh = qf.qlinear{ grid = g, codes = codes, output = { kind = "hadamard", seed = 11 } }
check((qoh:dequantize() - Oh:matmul(B)):abs_max() < 1e-6, "hadamard output: O·Ŵ")
local o = qf.tensor{ 3, -2, 0.25 }
local qo = qf.qlinear{ grid = g, codes = codes, output = { kind = "diag", diag = o } }
check_eq((qo:dequantize() - B * o:view(3, 1)):abs_max(), 0, "diag: rows scaled")
local qop = qf.qlinear{ grid = g, codes = codes, output = { kind = "perm", perm = qf.tensor{ 2, 3, 1 } } }
local Eo = qop:dequantize()
for r, pr in ipairs{ 2, 3, 1 } do
  for c = 1, 4 do check_eq(Eo:get(r, c), B:get(pr, c), "perm: row " .. r .. " is row " .. pr) end
end
local O = qf.tensor{ { 0, 0, 1 }, { 1, 0, 0 }, { 0, 1, 0 } }
local both = qf.qlinear{ grid = g, codes = codes, input = { kind = "dense", matrix = T }, output = { kind = "dense", matrix = O } }
check((both:dequantize() - O:matmul(B):matmul(T)):abs_max() < 1e-6, "both sides: O·Ŵ·T")
local ti, to = both:transforms()
check_eq(ti.kind, "dense")
check_eq(to.kind, "dense")
check_eq(ti.n, 4)
check_eq(to.matrix:to_table(), O:to_table())
check(select(1, qd:transforms()).diag ~= nil and select(2, qd:transforms()) == nil, "q:transforms() → input, output (nil when none)")
check_eq(qp:transforms().perm:to_table(), { 3, 1, 4, 2 }, "the permutation comes back 1-based")
check(tostring(both):find("input dense, output dense", 1, true), tostring(both))

H.section("errors")
check_error(function() qf.qlinear{ grid = g, codes = codes, input = { kind = "diag", diag = qf.tensor{ 1, 2, 3 } } } end, "the diagonal has 3 entries, expected 4")
check_error(function() qf.qlinear{ grid = g, codes = codes, input = { kind = "diag", diag = qf.tensor{ 1, 0, 3, 4 } } } end, "diagonal entry 2 is 0")
check_error(function() qf.qlinear{ grid = g, codes = codes, input = { kind = "perm", perm = qf.tensor{ 1, 2, 2, 4 } } } end, "permutation entry 3 repeats 2")
check_error(function() qf.qlinear{ grid = g, codes = codes, input = { kind = "perm", perm = qf.tensor{ 1, 2, 5, 4 } } } end, "permutation entry 3 is 5, outside 1..4")
check_error(function() qf.qlinear{ grid = g, codes = codes, output = { kind = "dense", matrix = T } } end, "must be [3, 3], got [4, 4]")
check_error(function() qf.qlinear{ grid = g, codes = codes, input = { kind = "diag" } } end, "kind \"diag\" needs 'diag'")
check_error(function() qf.qlinear{ grid = g, codes = codes, input = { kind = "diag", diag = d, seed = 3 } } end, "'seed' does not belong to kind \"diag\"")
check_error(function() qf.qlinear{ grid = g, codes = codes, input = { kind = "rotate" } } end, "kind must be \"perm\", \"diag\", \"hadamard\", \"butterfly\" or \"dense\"")
check_error(function() qf.qlinear{ grid = g, codes = codes, input = { kind = "diag", diag = d, scale = 1 } } end, "unknown option 'scale'")
check_error(function() qf.qlinear{ grid = g, codes = codes, input = "diag" } end, "must be a table")
check_error(function() qf.qlinear{ grid = g, codes = codes, input = { kind = "hadamard", seed = -1 } } end, "seed must be >= 0")

H.section("a model: storage counts the transform, qforge keeps it, code formats refuse it, the norm absorbs it")
local m = qf.load_model("../shared/models/stories260K")
local ids = m:tokenizer():encode(qf.read_text("../shared/data/tinystories_head.txt"))
local text_ppl = function(mm) return mm:perplexity(ids, { seqlen = 64, max_windows = 4 }).ppl end
local ppl0 = text_ppl(m)
local dim = m:config().dim
-- AWQ-style: one scale per input column shared by q, k, v; quantize W·diag(s), keep T = diag(1/s).
local s = qf.linspace and qf.linspace(0.5, 2, dim) or qf.tensor((function() local t = {} for i = 1, dim do t[i] = 0.5 + 1.5 * (i - 1) / (dim - 1) end return t end)())
local inv = qf.reciprocal(s)
local sp8 = qf.grid{ bits = 8, sym = true }
for _, name in ipairs{ "q", "k", "v" } do
  local Wl = m:weight(1, name):clone()
  local q = qf.rtn(Wl * s, sp8)
  m:set_linear(1, name, qf.qlinear{ grid = q:grid(), codes = q:codes(), input = { kind = "diag", diag = inv } })
end
local st = m:storage{ per_linear = true }
local lq = st.linears[1]
check_eq(lq.transform, 32 * dim / (dim * dim), 1e-12, "32 bits per diagonal entry, per weight of q")
check(math.abs(text_ppl(m) / ppl0 - 1) < 0.01, "8-bit in the scaled basis keeps perplexity")
local ppl_t = text_ppl(m)
local path = qf.run_dir() .. "/t.safetensors"
m:save(path, { format = "qforge" })
local m2 = qf.load_model(path)
check_eq((m2:weight(1, "q") - m:weight(1, "q")):abs_max(), 0, "the effective weight comes back exactly")
check_eq(m2:block(1):qlinear("k"):transforms().diag:to_table(), inv:to_table(), "the transform comes back")
check_error(function() m:save(qf.run_dir() .. "/t.gguf", { format = "gguf", dtype = "Q8_0" }) end,
            "block 1 linear 'q' is quantized with an input diag transform, which GGUF Q8_0 cannot store")
check_error(function() m:save(qf.run_dir() .. "/t-gptq", { format = "gptq" }) end, "which GPTQ cannot store")
local opt_name, msg = qf.check_save{ format = "gptq", model = m, path = "x" }
check_eq(opt_name, "save", "check_save refuses before writing: " .. tostring(msg))

-- A rotation: 64 bits of seed; kept by the qforge format, refused by GGUF, never folded.
local mh = m:clone()
local Wo = mh:weight(3, "o"):clone()
local qrot = qf.rtn(qf.linalg.random_hadamard(Wo, 5), sp8)  -- rows w → T·w: Ŵ ≈ W·Tᵀ
mh:set_linear(3, "o", qf.qlinear{ grid = qrot:grid(), codes = qrot:codes(), input = { kind = "hadamard", seed = 5 } })
check((mh:weight(3, "o") - Wo):abs_max() < 0.02 * Wo:abs():max(), "8 bits in the rotated basis, rotated back, is close to W")
local lo
for _, l in ipairs(mh:storage{ per_linear = true }.linears) do if l.block == 3 and l.name == "o" then lo = l end end
check_eq(lo.transform, 64 / (dim * dim), 1e-12, "a seed costs 64 bits")
local ph = qf.run_dir() .. "/h.safetensors"
mh:save(ph, { format = "qforge" })
check_eq((qf.load_model(ph):weight(3, "o") - mh:weight(3, "o")):abs_max(), 0, "rebuilt from the seed, bit for bit")
local rh = mh:fold_transforms()
local hleft = false
for _, e in ipairs(rh) do if e.block == 3 and e.linear == "o" then hleft = not e.folded and e.kind == "hadamard" and e.why:find("no norm precedes attn_out", 1, true) end end
check(hleft, "a rotation of o's input stays, with the reason")

-- A transform on q alone cannot fold: k and v read the same norm output.
local m3 = m:clone()
local Wq = m3:weight(2, "q"):clone()
local q3 = qf.rtn(Wq * s, sp8)
m3:set_linear(2, "q", qf.qlinear{ grid = q3:grid(), codes = q3:codes(), input = { kind = "diag", diag = inv } })
local g0 = m:norm(1, "attn_norm"):clone()
local rep = m:fold_transforms()
local folded, left = 0, 0
for _, e in ipairs(rep) do if e.folded then folded = folded + 1 else left = left + 1 end end
check_eq(folded, 3, "q, k, v folded")
check_eq(left, 0)
check_eq(rep[1].into, "attn_norm")
check_eq((m:norm(1, "attn_norm") - g0 * inv):abs_max(), 0, "g ← g ⊙ d")
check(m:block(1):qlinear("q"):transforms() == nil, "no transform left")
check_eq(m:storage().transform, 0)
check(math.abs(text_ppl(m) / ppl_t - 1) < 1e-4, "folding changes the function only by rounding: " .. text_ppl(m) .. " vs " .. ppl_t)
check_eq(qf.check_save{ format = "gptq", model = m, path = "x" }, nil, "after folding GPTQ stores it")
local rep3 = m3:fold_transforms()
local n3 = 0
for _, e in ipairs(rep3) do
  if not e.folded then
    n3 = n3 + 1
    check(e.block == 2 and e.linear == "q" and e.why:find("'k' does not carry the same diagonal", 1, true), H.show(e))
  end
end
check_eq(n3, 1, "q of block 2 stays")

H.section("v/o: a per-head orthogonal pair cancels across attention and folds away")
local mv = qf.load_model("../shared/models/stories260K")
local c = mv:config()
local hd, nkv, nh = c.head_dim, c.n_kv_heads, c.n_heads
local kvd, group = hd * nkv, nh // nkv
local Bs = {}
for gi = 1, nkv do Bs[gi] = qf.linalg.random_orthogonal(hd, qf.rng(100 + gi)) end
local Ov, To = qf.zeros{ kvd, kvd }, qf.zeros{ c.dim, c.dim }
for gi = 1, nkv do Ov:narrow(1, (gi - 1) * hd + 1, hd):narrow(2, (gi - 1) * hd + 1, hd):copy(Bs[gi]) end
for h = 1, nh do To:narrow(1, (h - 1) * hd + 1, hd):narrow(2, (h - 1) * hd + 1, hd):copy(Bs[(h - 1) // group + 1]:t()) end
local function quant_vo(mm, b, Tin)
  local Wv, Wo = mm:weight(b, "v"):clone(), mm:weight(b, "o"):clone()
  local qv = qf.rtn(Ov:t():matmul(Wv), sp8)   -- W_eff = O·Ŵ ≈ Wv
  local qo = qf.rtn(Wo:matmul(Tin:t()), sp8)  -- W_eff = Ŵ·T ≈ Wo
  mm:set_linear(b, "v", qf.qlinear{ grid = qv:grid(), codes = qv:codes(), output = { kind = "dense", matrix = Ov } })
  mm:set_linear(b, "o", qf.qlinear{ grid = qo:grid(), codes = qo:codes(), input = { kind = "dense", matrix = Tin } })
end
quant_vo(mv, 2, To)
local Tbad = To:clone()
Tbad:narrow(1, 1, hd):narrow(2, 1, hd):copy(Bs[1])  -- not transposed: no cancellation
quant_vo(mv, 3, Tbad)
local p_before = text_ppl(mv)
local rv = mv:fold_transforms()
local got = {}
for _, e in ipairs(rv) do got[#got + 1] = string.format("%d.%s.%s:%s", e.block, e.linear, e.side, tostring(e.folded)) end
table.sort(got)
check_eq(got, { "2.o.input:true", "2.v.output:true", "3.o.input:false", "3.v.output:false" }, "block 2's pair folds, block 3's (wrong blocks) stays")
check(mv:block(2):qlinear("v"):transforms() == nil and select(2, mv:block(2):qlinear("v"):transforms()) == nil, "v's output transform is gone")
check(math.abs(text_ppl(mv) / p_before - 1) < 1e-4, "the function is unchanged: " .. text_ppl(mv) .. " vs " .. p_before)

H.summary()
