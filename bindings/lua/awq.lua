-- qforge.awq — AWQ, activation-aware weight quantization (arXiv 2306.00978; docs/methods.md#awq),
-- as a stage of the block pipeline in plain Lua over the toolkit:
--   local A = require("qforge.awq")
-- Before block b is calibrated (P.quantize_model's before_block), for every scaled site (the
-- input of q/k/v, of o, of gate/up, of down) the per-input-channel scale s = s_X^α / √(max·min)
-- (s_X = mean |x_j| over awq_windows calibration windows of block b's input on the quantized
-- prefix) is searched over α on a grid in [0, 1]: the linears reading the site are fake-quantized
-- by RTN on the recipe's grid as Ŵ = RTN(W·diag(s))·diag(1/s), and the output error is measured
-- on the block (m:block_forward) or on the linears' own outputs. The best s is folded into the
-- model — W ← W·diag(s) and diag(1/s) into what produces the site (the RMSNorm gain, or the rows
-- of v / up) — which leaves the full-precision function unchanged; then the block's Σ is captured
-- on the scaled weights and any solve quantizes them. awq_clip adds AWQ's clipping search per
-- (row, group) inside each solve (A.clip).
-- Compiled into the qforge binary, so a run directory's recipe copy reruns as is.
local P = require("qforge.pipeline")
local A = {}

-- The sites AWQ scales, in forward order, and what makes each one's input (where 1/s folds).
-- attn_out's input is attention's per-head mix of v's rows (tokens mix, features never do), so
-- scaling o's input column of q head h, feature d by s folds into v's row of h's kv head, feature
-- d: the scale lives in kv space (GQA: the heads sharing a kv head share it). ffn_mid's input is
-- silu(gate·x) ⊙ (up·x), linear in up's rows.
A.SITES = { "attn_in", "attn_out", "ffn_in", "ffn_mid" }
local FOLD = {
  attn_in = { norm = "attn_norm" },
  attn_out = { linear = "v", heads = true },
  ffn_in = { norm = "ffn_norm" },
  ffn_mid = { linear = "up" },
}
-- AWQ's clip search skips q and k: their outputs meet in qᵀk, where a per-linear output error
-- says little (the reference's rule).
A.CLIP_SKIP = { q = true, k = true }
-- The clip ratios searched, AWQ's: max |w| of each (row, group) times 1 − i/20, i = 0..9.
A.CLIP_RATIOS = {}
for i = 0, 9 do A.CLIP_RATIOS[#A.CLIP_RATIOS + 1] = 1 - i / 20 end
A.SOLVERS = { "rtn", "gptq", "quantease" }

A.defaults = { solver = "gptq", awq_windows = 32, awq_grid = 21, awq_loss = "block",
               awq_sites = "attn_in,attn_out,ffn_in,ffn_mid", awq_clip = false }
A.help = {
  solver = { "the solver after AWQ's scaling: rtn | gptq | quantease (its options are this recipe's options: give solver= first to see them with --help)",
             choices = A.SOLVERS },
  awq_windows = { "calibration windows (the first ones) AWQ's scale search measures on (capped at nsamples)", min = 1 },
  awq_grid = { "points of the exponent grid alpha = 0, 1/(n-1), ..., 1 (1: alpha = 0 only, s = 1: the plain solver)", min = 1 },
  awq_loss = { "the search's output error: block (the block's output, m:block_forward, as AWQ's module outputs) | linear (the outputs of the linears reading the site)",
               choices = { "block", "linear" } },
  awq_sites = "comma-separated sites whose input channels are scaled: attn_in (q,k,v; 1/s into attn_norm), attn_out (o; 1/s into v's rows per kv head), ffn_in (gate,up; into ffn_norm), ffn_mid (down; into up's rows); none: no scaling",
  awq_clip = "AWQ's weight-clipping search inside each solve: per (row, group) the max |w| ratio in 1, 0.95, ..., 0.55 with the lowest RTN output error on the layer's Sigma (q and k skipped); the objective is still measured against the unclipped W",
}

-- The solver a run asks for: solver=... on the command line (arg), else `default`. Read before
-- qf.options so that only that solver's options are declared (another solver's option is then an
-- unknown option, never silently ignored).
local function chosen_solver(default)
  local s = default
  for i = 1, #(arg or {}) do
    local v = tostring(arg[i]):match("^solver=(.*)$")
    if v then s = v end
  end
  return s
end

-- AWQ's options (A.defaults, a recipe's own value of any of them is its default) and the chosen
-- solver's registry options, added to a recipe's own option and help tables (for P.options).
function A.options(own, help)
  own, help = own or {}, help or {}
  for k, v in pairs(A.defaults) do if own[k] == nil then own[k] = v end end
  for k, v in pairs(A.help) do if help[k] == nil then help[k] = v end end
  local solver = chosen_solver(own.solver)
  for _, s in ipairs(A.SOLVERS) do
    if s == solver then P.solver_options(solver, nil, own, help) end
  end
  return own, help
end

-- The list of sites of opt.awq_sites, checked (option errors name awq_sites).
function A.sites(opt)
  if opt.awq_sites == "none" then return {} end
  local known, seen, list = {}, {}, {}
  for _, s in ipairs(A.SITES) do known[s] = true end
  for s in tostring(opt.awq_sites):gmatch("[^,%s]+") do
    if not known[s] then
      qf.option_error("awq_sites", string.format("unknown site '%s' (attn_in, attn_out, ffn_in, ffn_mid, or none)", s))
    end
    if seen[s] then qf.option_error("awq_sites", string.format("site '%s' given twice", s)) end
    seen[s] = true
  end
  for _, s in ipairs(A.SITES) do if seen[s] then list[#list + 1] = s end end  -- forward order
  if #list == 0 then qf.option_error("awq_sites", "is empty (give sites, or none for no scaling)") end
  return list
end

-- The checks P.options cannot make, before any work (option errors).
function A.check_options(opt)
  A.sites(opt)
  if opt.awq_clip and opt.ktype ~= "none" then
    qf.option_error("awq_clip", "clips per (row, group) of a uniform grid; K-quant grids (ktype) have no such groups")
  end
end

-- The windows the search measures on: the first awq_windows of the calibration's, at most all.
function A.windows(opt)
  return math.min(opt.awq_windows, opt.nsamples)
end

-- α of grid point i (1-based) of n: 0, 1/(n−1), …, 1; n = 1 gives α = 0 only.
function A.alpha(i, n)
  if n == 1 then return 0 end
  return (i - 1) / (n - 1)
end

-- AWQ's scale from the per-channel mean |x| (a 1-d tensor): s = max(xm^α, 1e-4), divided by
-- √(max s · min s) so that the scales straddle 1 (the reference's normalisation). α = 0 gives
-- exactly 1 everywhere.
function A.scales(xm, alpha)
  local s = qf.pow(xm, alpha):clamp(1e-4)
  return s:div(math.sqrt(s:max() * s:min()))
end

-- The linears reading `site` (from the architecture table), in forward order.
local function site_linears(m, site)
  local out = {}
  for _, l in ipairs(m:arch().linears) do if l.site == site then out[#out + 1] = l.name end end
  return out
end

-- Per-head helpers for attn_out: o's input has n_heads·hd columns, v's output n_kv_heads·hd rows;
-- q head h reads kv head ⌊(h−1)/group⌋+1 (consecutive heads share one, as the forward does).
local function kv_pool(m, x)  -- [nh·hd] → mean over the heads of each kv head → [nkv·hd]
  local c = m:config()
  local group = c.n_heads // c.n_kv_heads
  if group == 1 then return x end
  return x:view(c.n_kv_heads, group, c.head_dim):mean(2):view(c.n_kv_heads * c.head_dim)
end
local function kv_expand(m, s)  -- [nkv·hd] → every q head's copy of its kv head's → [nh·hd]
  local c = m:config()
  local group = c.n_heads // c.n_kv_heads
  if group == 1 then return s end
  return s:view(c.n_kv_heads, 1, c.head_dim):expand(c.n_kv_heads, group, c.head_dim):contiguous():view(c.n_heads * c.head_dim)
end

-- Writes `value` into the view `t` (any storage dtype).
local function assign(t, value) t:copy(value) end

-- Folds the scales of `site` into block b: W ← W·diag(s) for the linears reading it, and
-- diag(1/s) into what produces it — the norm gain g ← g / s, or the rows (and bias) of v / up
-- (v: s_kv, the kv-space scale; the q-space one, s, is its per-head expansion). The function is
-- unchanged up to f32 rounding. s_kv: the kv-space scale for attn_out (nil elsewhere).
function A.fold(m, b, site, s, s_kv)
  local f = FOLD[site]
  if f.norm then
    local g = m:norm(b, f.norm)
    assign(g, g / s)
  else
    local sp = f.heads and s_kv or s
    local Wp = m:weight(b, f.linear)
    assign(Wp, Wp / sp:view(sp:size(1), 1))
    local bias = m:bias(b, f.linear)
    if bias then assign(bias, bias / sp) end
  end
  for _, name in ipairs(site_linears(m, site)) do
    local W = m:weight(b, name)
    assign(W, W * s)
  end
end

-- AWQ's search at one site of block b, then its fold. o = {windows=, seqlen=, grid=, loss=},
-- spec_of(name, cols) → the grid spec the search fake-quantizes linear `name` on (nil: the linear
-- stays in full precision, e.g. an override's skip). Returns {site, alpha, errors = {per α},
-- alpha_index, seconds}; errors are mean squared output errors per token (block: ‖y − ŷ‖² of the
-- block output; linear: Σ over the site's linears of ‖xWᵀ − x̃Ŵᵀ‖²).
function A.search(m, cal, b, site, o, spec_of)
  local t0 = qf.now()
  local X = cal:activations(site, { first = 1, count = o.windows })
  local ntok = X:size(1)
  local xm = X:clone():abs():mean(1)               -- s_X: mean |x_j| over the tokens
  local heads = FOLD[site].heads
  local xbase = heads and kv_pool(m, xm) or xm
  local names, W0, specs = site_linears(m, site), {}, {}
  local any = false
  for _, name in ipairs(names) do
    W0[name] = m:weight(b, name):clone():to("f32")
    local sp = spec_of(name, W0[name]:size(2))
    specs[name] = sp and qf.grid(sp) or nil
    any = any or specs[name] ~= nil
  end
  local xsq  -- Σ_jj of the inputs, for importance-weighted grids (divided by s² per α)
  local S, Xin, Y0
  if o.loss == "linear" then S = X:t():matmul(X)
  else
    Xin = cal:inputs():rows(1, o.windows * o.seqlen)
    Y0 = m:block_forward(b, Xin, o.seqlen)
  end
  local errors, best, best_i = {}, math.huge, 1
  local function fake_quant(name, s)  -- RTN(W·diag(s))·diag(1/s)
    local spec = specs[name]
    local imp = nil
    if spec.importance then
      xsq = xsq or (X * X):sum(1)
      imp = xsq / (s * s)
    end
    return qf.rtn(W0[name] * s, spec, imp):dequantize() / s
  end
  for i = 1, (any and o.grid or 1) do
    local alpha = A.alpha(i, o.grid)
    local sb = A.scales(xbase, alpha)
    local s = heads and kv_expand(m, sb) or sb
    local err = 0
    if any then
      if o.loss == "linear" then
        for _, name in ipairs(names) do
          if specs[name] then err = err + qf.objective(W0[name], fake_quant(name, s), S) end
        end
      else
        for _, name in ipairs(names) do
          if specs[name] then assign(m:weight(b, name), fake_quant(name, s)) end
        end
        local Y = m:block_forward(b, Xin, o.seqlen)
        for _, name in ipairs(names) do assign(m:weight(b, name), W0[name]) end  -- restored bit for bit
        err = (Y - Y0):norm() ^ 2
      end
    end
    errors[i] = err / ntok
    if errors[i] < best then best, best_i = errors[i], i end  -- ties: the smaller α
  end
  local alpha = A.alpha(best_i, o.grid)
  local sb = A.scales(xbase, alpha)
  A.fold(m, b, site, heads and kv_expand(m, sb) or sb, heads and sb or nil)
  return { site = site, alpha = alpha, alpha_index = best_i, errors = errors, seconds = qf.now() - t0,
           scale_min = sb:min(), scale_max = sb:max() }
end

-- AWQ's clipping search for one linear (docs/methods.md#awq): per (row, column group g of the
-- grid) the clip c = r·max|w_g| over r in A.CLIP_RATIOS minimizing the output error of that
-- group's partial product, (w_g − ŵ_g) Σ_gg (w_g − ŵ_g)ᵀ with ŵ = RTN(clamp(w, −c, c)) on `spec`
-- (ties keep the larger r). Returns the clipped W (a new tensor) and {ratio_mean, clipped}
-- (clipped: the fraction of (row, group) pairs with r < 1).
function A.clip(W, S, spec)
  spec = qf.grid(spec)
  local rows, cols = W:size(1), W:size(2)
  local gs = (spec.group == nil or spec.group == -1) and cols or spec.group
  local groups = {}
  for c0 = 1, cols, gs do
    local len = math.min(gs, cols - c0 + 1)
    local mx = W:narrow(2, c0, len):clone():abs():max(2, true)  -- [rows, 1]
    groups[#groups + 1] = { c0 = c0, len = len, max = mx,
                            S = S:narrow(1, c0, len):narrow(2, c0, len):contiguous() }
  end
  local imp = spec.importance and S:diag() or nil
  local function clipped(ratio_of)  -- W with each group clamped at ratio_of(g)·max
    local Wc = W:clone()
    for gi, g in ipairs(groups) do
      local c = g.max * ratio_of(gi)
      local v = Wc:narrow(2, g.c0, g.len)
      assign(v, qf.cmax(qf.cmin(v, c), -c))
    end
    return Wc
  end
  for ri, r in ipairs(A.CLIP_RATIOS) do
    local D = W - qf.rtn(clipped(function() return r end), spec, imp):dequantize()
    for _, g in ipairs(groups) do
      local Dg = D:narrow(2, g.c0, g.len):contiguous()
      local e = (Dg:matmul(g.S) * Dg):sum(2, true)      -- [rows, 1]
      if ri == 1 then g.err, g.ratio = e, qf.full({ rows, 1 }, r)
      else
        local better = e:lt(g.err)
        g.err, g.ratio = qf.where(better, e, g.err), qf.where(better, r, g.ratio)
      end
    end
  end
  local sum, n, cut = 0, 0, 0
  for _, g in ipairs(groups) do
    sum, n = sum + g.ratio:sum(), n + rows
    cut = cut + g.ratio:lt(1):sum()
  end
  return clipped(function(gi) return groups[gi].ratio end), { ratio_mean = sum / n, clipped = cut / n }
end

-- The whole stage in P.quantize_model: AWQ's search and fold before each block's capture, then
-- `solve` (default: the registered opt.solver on P.grid(opt) with the recipe's values of its
-- options) on the scaled weights, with AWQ's clip inside when opt.awq_clip. ctx from P.prepare.
-- Records `awq` = {sites, windows, grid, loss, clip, seconds, searches = {{block, site, alpha,
-- alpha_index, errors, seconds, scale_min, scale_max}, …}, clips = {{block, layer, ratio_mean,
-- clipped}, …}}; returns P.quantize_model's summary and that record.
function A.quantize_model(ctx, opt, solve)
  local m, cal = ctx.model, ctx.cal
  local grid = P.grid(opt)
  solve = solve or P.solver(opt.solver, opt, grid)
  local sites = A.sites(opt)
  local kfallback = P.kquant_fallback(opt)
  local ov = ctx.overrides
  local searches, clips, seconds = {}, {}, 0
  local function before_block(b)
    local t0 = qf.now()
    local function spec_of(name, cols)  -- the grid P.quantize_model will hand this linear's solve
      local rule = ov and ov.of[b][name]
      if rule and rule.skip then return nil end
      if rule and rule.type then return (P.type_grid(rule.type, rule.spec.importance, cols)) end
      if rule then return rule.spec end
      if kfallback and cols % 256 ~= 0 then return kfallback end
      return grid
    end
    for _, site in ipairs(sites) do
      local r = A.search(m, cal, b, site, { windows = A.windows(opt), seqlen = opt.seqlen, grid = opt.awq_grid,
                                            loss = opt.awq_loss }, spec_of)
      r.block = b
      searches[#searches + 1] = r
      io.stderr:write(string.format("block %d/%d awq %-8s alpha %.3f  error %.5g (alpha 0: %.5g)  scales %.3g..%.3g  %.2fs\n",
        b, m:nblocks(), site, r.alpha, r.errors[r.alpha_index], r.errors[1], r.scale_min, r.scale_max, r.seconds))
      qf.log{ event = "awq_search", block = b, site = site, alpha = r.alpha, errors = r.errors, seconds = r.seconds }
    end
    seconds = seconds + (qf.now() - t0)
  end
  local inner = solve
  if opt.awq_clip then
    -- Not a registry solve: P.quantize_model measures the objective itself, against the unclipped W.
    solve = function(l, g)
      if A.CLIP_SKIP[l.name] then return inner(l, g) end
      local t0 = qf.now()
      local Wc, info = A.clip(l.W, l.sigma, g or grid)
      seconds = seconds + (qf.now() - t0)
      clips[#clips + 1] = { block = l.block, layer = l.name, ratio_mean = info.ratio_mean, clipped = info.clipped }
      local q, sinfo = inner({ block = l.block, name = l.name, W = Wc, sigma = l.sigma, mu = l.mu, tokens = l.tokens }, g)
      sinfo = sinfo or {}
      sinfo.awq_clip = info
      return q, sinfo
    end
  end
  local s = P.quantize_model(m, cal, solve, { true_sequential = opt.true_sequential, finetune = P.finetune(opt),
                                              refit_scales = opt.refit_scales, sigma_shrink = opt.sigma_shrink,
                                              overrides = ov, kquant_fallback = kfallback, before_block = before_block })
  local rec = { sites = sites, windows = A.windows(opt), grid = opt.awq_grid, loss = opt.awq_loss,
                clip = opt.awq_clip, seconds = seconds, searches = searches, clips = clips }
  qf.record("awq", rec)
  return s, rec
end

return A
