-- qforge.cvxq — CVXQ's bit allocation (algorithms.md §6) as plain Lua over the engine primitives.
--   local C = require("qforge.cvxq")
--   local alloc = C.allocate(m, stats, {target_bits = 3, cluster_rows = 16})
--   alloc.layers["3.q"] = {row_groups = {...}, bits = Tensor[clusters, in], block=, name=}
-- Groups are (row cluster × input column). Sensitivity G²: with `grads` (cal:gradient_statistics,
-- CVXQ's own squared gradients of PCA-projected hidden states) the mean of the per-weight
-- squared gradient over the group, and rows cluster by log2 Var(W_i) + log2 Ḡ²_i; without it the
-- Hessian-diagonal proxy from the layer inputs alone, G²_j = Σ_jj / tokens (the mean squared
-- input of column j), and rows cluster by spread.
local C = {}

local SITES = { q = "attn_in", k = "attn_in", v = "attn_in", o = "attn_out", gate = "ffn_in", up = "ffn_in", down = "ffn_mid" }
C.SITES = SITES

-- Recipe options of the sensitivity statistics; C.options(own, help) adds them to a recipe's own.
local SENS = { sensitivity = "gradient", pca = 1024, stride = 128, grad_iters = 0 }
local SENS_HELP = {
  sensitivity = "gradient (CVXQ's squared gradients of PCA-projected hidden states) | proxy (diag Sigma, no backward pass)",
  pca = "PCA components of the final hidden states (capped at the model width)",
  stride = "gradient statistics: token positions every stride tokens",
  grad_iters = "gradient statistics: calibration iterations (0: each window once)" }
function C.options(own, help)
  for k, v in pairs(SENS) do own[k] = v end
  for k, v in pairs(SENS_HELP) do help[k] = v end
  return own, help
end

-- The gradient statistics of the full-precision model over cal's windows (nil for the proxy).
function C.sensitivity(cal, opt)
  if opt.sensitivity == "proxy" then return nil end
  if opt.sensitivity ~= "gradient" then
    error("option 'sensitivity' must be \"gradient\" or \"proxy\", got \"" .. tostring(opt.sensitivity) .. "\"", 0)
  end
  local g = cal:gradient_statistics{ pca = opt.pca, stride = opt.stride, iters = opt.grad_iters }
  qf.record("gradient_statistics", { seconds = g.seconds, pca_seconds = g.pca_seconds, iters = g.iters, samples = g.samples,
                                     pca_components = g.pca.k, pca_explained = g.pca.explained })
  return g
end

function C.allocate(m, stats, opt, grads)
  local groups, keys, meta = {}, {}, {}
  for b = 1, m:nblocks() do
    for _, name in ipairs(m:linear_names()) do
      local W = m:weight(b, name)
      local out, inn = W:size(1), W:size(2)
      local st = stats[b][SITES[name]]
      local key = b .. "." .. name
      local rowvar = qf.row_log2_variance(W)
      local k = math.max(1, out // opt.cluster_rows)
      local score, rg, g2 = {}, nil, nil
      if grads then
        local gs = grads[b][name]
        for i = 1, out do score[i] = rowvar:get(i) + math.log(math.max(gs.row:get(i), 1e-300), 2) end
        rg = qf.row_clusters(score, k)
        g2 = qf.group_mean(gs.g2, { group = 1, row_groups = rg })
      else
        local colg = qf.zeros({ inn })
        for j = 1, inn do colg:set(j, st.sigma:get(j, j) / st.tokens) end
        local lg = math.log(math.max(colg:mean(), 1e-300), 2)  -- Ḡ² is the same for every row
        for i = 1, out do score[i] = rowvar:get(i) + lg end
        rg = qf.row_clusters(score, k)
        g2 = qf.zeros({ k, inn })
        for c = 1, k do for j = 1, inn do g2:set(c, j, colg:get(j)) end end
      end
      local var = qf.group_spread(W, { group = 1, row_groups = rg })
      local cnt = {}
      for c = 1, k do cnt[c] = 0 end
      for i = 1, out do cnt[rg[i]] = cnt[rg[i]] + 1 end
      local n = qf.zeros({ k, inn })
      for c = 1, k do for j = 1, inn do n:set(c, j, cnt[c]) end end
      groups[#groups + 1] = { var = var, g2 = g2, n = n }
      keys[#keys + 1] = key
      meta[key] = { block = b, name = name, row_groups = rg }
    end
  end
  local r = qf.dual_ascent{ groups = groups, target_bits = opt.target_bits, bmin = opt.bmin or 0, bmax = opt.bmax or 8 }
  local layers, pruned, total = {}, 0, 0
  for i, key in ipairs(keys) do
    local L = meta[key]
    L.bits = r.bits[i]
    layers[key] = L
    local n = groups[i].n
    for c = 1, L.bits:size(1) do
      for j = 1, L.bits:size(2) do
        total = total + n:get(c, j)
        if L.bits:get(c, j) == 0 then pruned = pruned + n:get(c, j) end
      end
    end
  end
  return { layers = layers, keys = keys, rate = r.rate, log2_lambda = r.log2_lambda, steps = r.steps,
           bisections = r.bisections, converged = r.converged, history = r.history, pruned_fraction = pruned / total }
end

-- The whole allocation stage of a recipe: sensitivity statistics (gradient or proxy) and the
-- full-precision Σ/μ of every site over ctx.cal, then dual ascent; prints the result and records
-- it as "allocation" (with its seconds and the dual ascent history). ctx.cal is consumed (its
-- blocks advanced): returns alloc and the statistics, stats[b][site] = {sigma=, mu=, tokens=}.
function C.allocate_model(ctx, opt)
  local t0 = qf.now()
  local grads = C.sensitivity(ctx.cal, opt)
  local stats = require("qforge.pipeline").fp_statistics(ctx.cal)
  local alloc = C.allocate(ctx.model, stats, opt, grads)
  alloc.seconds = qf.now() - t0
  print(string.format("dual ascent: rate %.4f bits (target %.2f) after %d steps + %d bisections, log2 lambda %.3f, pruned %.2f%%  (%.1fs)",
    alloc.rate, opt.target_bits, alloc.steps, alloc.bisections, alloc.log2_lambda, 100 * alloc.pruned_fraction, alloc.seconds))
  qf.record("allocation", { rate = alloc.rate, steps = alloc.steps, bisections = alloc.bisections, converged = alloc.converged,
                            log2_lambda = alloc.log2_lambda, pruned_fraction = alloc.pruned_fraction, history = alloc.history,
                            seconds = alloc.seconds })
  return alloc, stats
end

-- The grid of one allocated linear: (row cluster × column) groups with their bits.
function C.grid(L, opt)
  return qf.grid{ group = 1, row_groups = L.row_groups, alloc = L.bits, kind = opt.kind or "uniform",
                  compand_search = opt.compand_search or false, sym = opt.sym or false }
end

return C
