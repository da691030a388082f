-- AWQ (issue 19 item 6; bindings/lua/awq.lua, docs/methods.md#awq): the scale formula, the fold
-- leaving the model's logits unchanged (GQA's v→o included, and a wrong head mapping caught), the
-- α search picking the α of least output error against a brute-force recomputation that really
-- folds the scales, the clip search against a brute-force per (row, group), α = 0 reproducing the
-- plain solvers bit for bit, every option changing the result, and determinism.
local H = dofile("tests/lua/harness.lua")
local check, check_eq, check_error = H.check, H.check_eq, H.check_error
local P = require("qforge.pipeline")
local A = require("qforge.awq")

H.section("scales: s = max(x^a, 1e-4)/sqrt(max·min); a = 0 is exactly 1")
local xm = qf.tensor{ 0, 0.5, 2, 8, 1e-9 }
local s0 = A.scales(xm, 0)
check_eq(s0:to_table(), { 1, 1, 1, 1, 1 }, "alpha 0: s = 1 exactly")
local s5 = A.scales(xm, 0.5)
local raw = { 1e-4, math.sqrt(0.5), math.sqrt(2), math.sqrt(8), 1e-4 }
local norm = math.sqrt(math.sqrt(8) * 1e-4)
for i = 1, 5 do check(math.abs(s5:get(i) - raw[i] / norm) <= 1e-5 * raw[i] / norm, "s[" .. i .. "] = " .. s5:get(i)) end
check(math.abs(s5:max() * s5:min() - 1) < 1e-5, "normalised: max·min = 1")
check_eq({ A.alpha(1, 21), A.alpha(11, 21), A.alpha(21, 21), A.alpha(1, 1) }, { 0, 0.5, 1, 0 }, "the alpha grid")

H.section("clip search (synthetic): the chosen ratio per (row, group) is the brute-force argmin")
local rng = qf.rng(7)
local rows, cols = 6, 20
local W = rng:randn{ rows, cols }
W:set(2, 3, 9.0)                                      -- an outlier: clipping it should pay
W:set(5, 17, -7.5)
local X = rng:randn{ 200, cols } * qf.linspace(0.2, 3, cols)
local S = X:t():matmul(X)
for _, group in ipairs{ -1, 8 } do                   -- 8: groups of 8, 8, 4 (ragged)
  local spec = qf.grid{ bits = 3, group = group }
  local Wc, info = A.clip(W, S, spec)
  local gs = group == -1 and cols or group
  local nclipped = 0
  for r = 1, rows do
    for c0 = 1, cols, gs do
      local len = math.min(gs, cols - c0 + 1)
      local w = W:narrow(1, r, 1):narrow(2, c0, len):clone()
      local mx = w:clone():abs():max()
      local Sg = S:narrow(1, c0, len):narrow(2, c0, len)
      local best, best_r = math.huge, nil
      for _, ratio in ipairs(A.CLIP_RATIOS) do
        -- the whole row clipped at this ratio, quantized as one row; the error of this group's columns
        local wr = W:narrow(1, r, 1):clone()
        local v = wr:narrow(2, c0, len)
        v:copy(qf.clamp(v, -ratio * mx, ratio * mx))
        local q = qf.rtn(wr, spec):dequantize():narrow(2, c0, len)
        local d = w - q
        local e = d:matmul(Sg):matmul(d:t()):item()
        if e < best * (1 - 1e-6) then best, best_r = e, ratio end
      end
      local got = Wc:narrow(1, r, 1):narrow(2, c0, len):clone():abs():max()
      check(math.abs(got - best_r * mx) <= 1e-6 * mx, string.format("group %d row %d cols %d..: clip %.6g = %.2f·max (brute force %.2f)",
        group, r, c0, got, got / mx, best_r))
      if best_r < 1 then nclipped = nclipped + 1 end
    end
  end
  check(nclipped > 0, "some groups are clipped (group " .. group .. ")")
  check_eq(info.clipped, nclipped / (rows * math.ceil(cols / gs)), 1e-12, "info.clipped")
  local q1 = qf.rtn(W, spec):dequantize()
  local q2 = qf.rtn(Wc, spec):dequantize()
  check(qf.objective(W, q2, S) < qf.objective(W, q1, S), "clipping lowers the RTN objective against the unclipped W")
end

-- stories260K: 5 blocks, dim 64, 8 heads over 4 kv heads (GQA: v→o scales live in kv space).
local m0 = qf.load_model("../shared/models/stories260K")
local cfg = m0:config()
check(cfg.n_heads ~= cfg.n_kv_heads, "the test model has grouped-query attention")
local ids = m0:tokenizer():encode(qf.read_text("../shared/data/tinystories_head.txt"))
local T, NS = 64, 8
local window = {}
for i = 1, 128 do window[i] = ids[1000 + i] end
local L0 = m0:forward(window)
local function rel_logits(m)
  return (m:forward(window) - L0):abs_max() / L0:abs_max()
end

H.section("the fold keeps the logits: random scales at every site of every block")
local mf = m0:clone()
local r2 = qf.rng(11)
local kvd = cfg.head_dim * cfg.n_kv_heads
local group = cfg.n_heads // cfg.n_kv_heads
local function expand(skv)  -- kv-space → q-space (q head h reads kv head ⌊(h−1)/group⌋+1), written out
  local s = qf.zeros{ cfg.n_heads * cfg.head_dim }
  for h = 1, cfg.n_heads do
    local g = (h - 1) // group
    s:narrow(1, (h - 1) * cfg.head_dim + 1, cfg.head_dim):copy(skv:narrow(1, g * cfg.head_dim + 1, cfg.head_dim))
  end
  return s
end
for b = 1, mf:nblocks() do
  A.fold(mf, b, "attn_in", qf.exp(r2:randn{ cfg.dim } * 0.7))
  local skv = qf.exp(r2:randn{ kvd } * 0.7)
  A.fold(mf, b, "attn_out", expand(skv), skv)
  A.fold(mf, b, "ffn_in", qf.exp(r2:randn{ cfg.dim } * 0.7))
  A.fold(mf, b, "ffn_mid", qf.exp(r2:randn{ cfg.hidden_dim } * 0.7))
end
check((mf:norm(2, "ffn_norm") - m0:norm(2, "ffn_norm")):abs_max() > 0.01, "the weights did change")
local rl = rel_logits(mf)
check(rl < 1e-5, "logits unchanged to " .. rl .. " relative")
-- The negative control: o's scale tiled over heads (head h ↔ kv head (h−1) mod nkv) instead of
-- consecutive heads sharing a kv head breaks the function.
local mw = m0:clone()
local skv = qf.exp(r2:randn{ kvd } * 0.7)
local tiled = qf.cat({ skv, skv }, 1)
check((tiled - expand(skv)):abs_max() > 0, "the tiled expansion differs")
A.fold(mw, 3, "attn_out", tiled, skv)
check(rel_logits(mw) > 1e-3, "a wrong head mapping changes the logits (" .. rel_logits(mw) .. ")")

-- The options of a run: the common ones, AWQ's, and the chosen solver's defaults, overridden by `o`.
local function options(o)
  local opt = {}
  for k, v in pairs(P.common_options) do opt[k] = v end
  for k, v in pairs(A.defaults) do opt[k] = v end
  opt.solver = o.solver or opt.solver
  local d = qf.solver_options(opt.solver)
  for k, v in pairs(d) do opt[k] = v end
  opt.nsamples, opt.seqlen, opt.awq_windows, opt.bits = NS, T, 4, 3
  opt.sigma_shrink, opt.refit_scales, opt.seed = 0.0, false, 3
  for k, v in pairs(o) do opt[k] = v end
  return opt
end
local function context(opt)
  local m = m0:clone()
  return { model = m, cal = qf.calibration{ model = m, tokens = ids, range = { 1, 20000 }, nsamples = opt.nsamples, seqlen = opt.seqlen,
                                            seed = opt.seed, fp_chain = false } }
end
local function awq_run(o, overrides)
  local opt = options(o)
  local ctx = context(opt)
  if overrides then ctx.overrides = P.overrides(overrides, ctx.model, opt) end
  local s, rec = A.quantize_model(ctx, opt)
  return ctx.model, s, rec
end
local function plain_run(o)
  local opt = options(o)
  local ctx = context(opt)
  local s = P.quantize_model(ctx.model, ctx.cal, P.solver(opt.solver, opt, P.grid(opt)), {})
  return ctx.model, s
end
local function max_weight_diff(ma, mb)
  local d = 0
  for b = 1, ma:nblocks() do
    for _, n in ipairs(ma:linear_names()) do d = math.max(d, (ma:weight(b, n) - mb:weight(b, n)):abs_max()) end
    for _, n in ipairs{ "attn_norm", "ffn_norm" } do d = math.max(d, (ma:norm(b, n) - mb:norm(b, n)):abs_max()) end
  end
  return d
end

H.section("the search and fold over the whole model, before any quantization, keeps the logits")
do
  local opt = options{}
  local ctx = context(opt)
  local m, cal = ctx.model, ctx.cal
  local alphas = 0
  for b = 1, m:nblocks() do
    for _, site in ipairs(A.SITES) do
      local r = A.search(m, cal, b, site, { windows = 4, seqlen = T, grid = 11, loss = "block" }, function() return P.grid(opt) end)
      if r.alpha > 0 then alphas = alphas + 1 end
    end
    cal:advance()
  end
  check(alphas > 0, "some site took alpha > 0 (" .. alphas .. " of 20)")
  local rl2 = rel_logits(m)
  check(rl2 < 1e-5, "logits unchanged to " .. rl2 .. " relative after the search and fold")
end

H.section("the alpha search picks the alpha of least output error (brute force: fold for real, then RTN)")
local function brute_force(loss)
  local opt = options{ awq_loss = loss }
  local ctx = context(opt)
  local m, cal = ctx.model, ctx.cal
  local spec = P.grid(opt)
  local npts = 11
  local nonzero = 0
  for b = 1, 2 do
    for _, site in ipairs(A.SITES) do
      local before = m:clone()
      local X = cal:activations(site, { first = 1, count = 4 })
      local Xin = cal:inputs():rows(1, 4 * T)
      local Y0 = before:block_forward(b, Xin, T)
      local r = A.search(m, cal, b, site, { windows = 4, seqlen = T, grid = npts, loss = loss }, function() return spec end)
      local mean_abs = X:clone():abs():mean(1)
      if site == "attn_out" then  -- pooled over the heads of each kv head, written out
        local pooled = qf.zeros{ kvd }
        for h = 1, cfg.n_heads do
          local g = (h - 1) // group
          pooled:narrow(1, g * cfg.head_dim + 1, cfg.head_dim):add(mean_abs:narrow(1, (h - 1) * cfg.head_dim + 1, cfg.head_dim), 1 / group)
        end
        mean_abs = pooled
      end
      local errs = {}
      for i = 1, npts do
        local alpha = (i - 1) / (npts - 1)
        local s = qf.cmax(qf.pow(mean_abs, alpha), 1e-4)
        s = s / math.sqrt(s:max() * s:min())
        local mc = before:clone()
        local sq = site == "attn_out" and expand(s) or s
        local readers = ({ attn_in = { "q", "k", "v" }, attn_out = { "o" }, ffn_in = { "gate", "up" }, ffn_mid = { "down" } })[site]
        local prev = ({ attn_in = "attn_norm", attn_out = "v", ffn_in = "ffn_norm", ffn_mid = "up" })[site]
        if site == "attn_in" or site == "ffn_in" then mc:norm(b, prev):copy(mc:norm(b, prev) / s)
        else mc:weight(b, prev):copy(mc:weight(b, prev) / s:view(s:size(1), 1)) end
        local e = 0
        for _, n in ipairs(readers) do
          local Wn = mc:weight(b, n) * sq
          local Qn = qf.rtn(Wn, spec):dequantize()
          if loss == "block" then mc:weight(b, n):copy(Qn)
          else  -- the linear's output on the folded model's input (x/s) against the original's
            local Xs = X / sq
            e = e + (X:matmul(before:weight(b, n):t()) - Xs:matmul(Qn:t())):norm() ^ 2
          end
        end
        if loss == "block" then e = (mc:block_forward(b, Xin, T) - Y0):norm() ^ 2 end
        errs[i] = e / X:size(1)
      end
      local bmin, bi = math.huge, 1
      for i = 1, npts do if errs[i] < bmin then bmin, bi = errs[i], i end end
      local agree = true
      for i = 1, npts do
        if math.abs(r.errors[i] - errs[i]) > 1e-3 * errs[i] + 1e-12 then agree = false end
      end
      check(agree, string.format("%s loss, block %d %s: recorded errors match the folded recomputation (%s vs %s)", loss, b, site,
        H.show(r.errors), H.show(errs)))
      check(errs[r.alpha_index] <= bmin * (1 + 1e-4), string.format("%s loss, block %d %s: picked alpha %.2f (error %.6g), brute-force best %.2f (%.6g)",
        loss, b, site, r.alpha, errs[r.alpha_index], (bi - 1) / (npts - 1), bmin))
      if r.alpha_index > 1 then nonzero = nonzero + 1 end
      check(r.errors[r.alpha_index] <= r.errors[1], "never worse than alpha 0 on its own measure")
    end
    cal:advance()
  end
  check(nonzero >= 2, loss .. ": the search is not trivial (alpha > 0 at " .. nonzero .. " of 8 sites)")
end
brute_force("block")
brute_force("linear")

H.section("alpha = 0 (awq_grid=1) is the plain solver, bit for bit")
for _, o in ipairs{ { solver = "rtn" }, { solver = "gptq" }, { solver = "quantease", iters = 3 } } do
  local ma, sa = awq_run({ solver = o.solver, iters = o.iters, awq_grid = 1 })
  local mb, sb = plain_run(o)
  check_eq(max_weight_diff(ma, mb), 0, o.solver .. ": every weight and norm identical")
  check_eq(sa.objective, sb.objective, o.solver .. ": the same summed objective")
end

H.section("every option changes the result; AWQ lowers block 1's output error under RTN")
local m_def, s_def = awq_run{}
do  -- what AWQ minimizes: with every linear of block 1 quantized by RTN, its output error on the
    -- calibration windows (block 1's inputs are the embeddings, the same for both) is lower with AWQ.
    -- (The summed layer objective is not what it minimizes, and need not fall.)
  local m_rtn = plain_run{ solver = "rtn" }
  local m_awq = awq_run{ solver = "rtn" }
  local X1 = qf.calibration{ model = m0, tokens = ids, range = { 1, 20000 }, nsamples = NS, seqlen = T, seed = 3, fp_chain = false }:inputs()
  local Y = m0:block_forward(1, X1, T)
  local e_rtn, e_awq = (m_rtn:block_forward(1, X1, T) - Y):norm(), (m_awq:block_forward(1, X1, T) - Y):norm()
  check(e_awq < e_rtn, string.format("block 1 output error: AWQ→RTN %.5g < RTN %.5g", e_awq, e_rtn))
end
local variants = {
  { awq_windows = 2 }, { awq_grid = 5 }, { awq_loss = "linear" }, { awq_sites = "ffn_in,ffn_mid" }, { awq_clip = true },
  { solver = "rtn" }, { solver = "quantease", iters = 2 }, { percdamp = 0.1 }, { act_order = true },
  { true_sequential = true }, { sigma_shrink = 0.5 }, { refit_scales = true }, { bits = 4 }, { group = 32 },
}
for _, o in ipairs(variants) do
  local mv = awq_run(o)
  check(max_weight_diff(mv, m_def) > 0, "changes the model: " .. H.show(o))
end
for _, o in ipairs{ { importance = "diag" }, { ktype = "Q4_K", bits = 4 } } do  -- the search's RTN takes diag Σ / the K-quant fallback
  local mv, _, rec = awq_run(o)
  check(max_weight_diff(mv, m_def) > 0 and #rec.searches == 20, "runs and changes the model: " .. H.show(o))
end
do  -- overrides: the search quantizes on each linear's own grid; a skipped linear is not quantized in it
  local mo, so, rec = awq_run({}, "skip:name:down;block:1=bits:8;re:^2\\.q$=type:Q8_0")
  local n_mid = 0
  for _, r in ipairs(rec.searches) do
    if r.site == "ffn_mid" then
      n_mid = n_mid + 1
      check(r.alpha == 0 and #r.errors == 1 and r.errors[1] == 0, "ffn_mid (down skipped): no search, s = 1")
    end
  end
  check_eq(n_mid, 5)
  check(mo:block(3):qlinear("down") == nil and mo:block(3):qlinear("up") ~= nil, "down stays unquantized")
  check_eq(mo:block(1):qlinear("q"):grid():spec().bits, 8, "block 1 at 8 bits")
  local b1 = rec.searches[1]
  check(b1.block == 1 and b1.site == "attn_in" and b1.errors[b1.alpha_index] < 0.1 * rec.searches[5].errors[rec.searches[5].alpha_index],
    "block 1's search saw its 8-bit grid (error " .. b1.errors[b1.alpha_index] .. " vs block 2's " .. rec.searches[5].errors[rec.searches[5].alpha_index] .. ")")
end
do  -- awq_sites: only the named sites' norms / producers change
  local opt = options{ awq_sites = "ffn_in" }
  local ctx = context(opt)
  A.quantize_model(ctx, opt)
  check_eq((ctx.model:norm(1, "attn_norm") - m0:norm(1, "attn_norm")):abs_max(), 0, "awq_sites=ffn_in leaves attn_norm")
  check((ctx.model:norm(1, "ffn_norm") - m0:norm(1, "ffn_norm")):abs_max() > 0, "and scales ffn_norm")
end

H.section("deterministic: two runs, the same bits")
local m_again, s_again = awq_run{}
check_eq(max_weight_diff(m_again, m_def), 0, "identical weights")
check_eq(s_again.objective, s_def.objective, "identical objective")
local mc1 = awq_run{ awq_clip = true, solver = "quantease", iters = 2 }
local mc2 = awq_run{ awq_clip = true, solver = "quantease", iters = 2 }
check_eq(max_weight_diff(mc1, mc2), 0, "with the clip search too")

H.section("option checks")
check_error(function() A.check_options(options{ awq_sites = "attn_in,mlp" }) end, "option 'awq_sites': unknown site 'mlp'")
check_error(function() A.check_options(options{ awq_sites = "ffn_in,ffn_in" }) end, "site 'ffn_in' given twice")
check_error(function() A.check_options(options{ awq_sites = "," }) end, "option 'awq_sites': is empty")
check_eq(A.windows(options{ awq_windows = 9 }), NS, "awq_windows is capped at nsamples")
check_eq(A.windows(options{ awq_windows = 3 }), 3)
check_error(function() A.check_options(options{ awq_clip = true, ktype = "Q4_K" }) end, "option 'awq_clip'")
check_eq(#A.sites(options{ awq_sites = "none" }), 0, "none: no scaling")

H.summary()
