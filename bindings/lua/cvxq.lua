-- qforge.cvxq — CVXQ's bit allocation (algorithms.md §6) as plain Lua over the engine primitives.
--   local C = require("qforge.cvxq")
--   local alloc = C.allocate(m, stats, {target_bits = 3, cluster_rows = 16})
--   alloc.layers["3.q"] = {row_groups = {...}, bits = Tensor[clusters, in], block=, name=}
-- Groups are (row cluster × input column). Sensitivity G² of column j: Σ_jj / tokens, the mean
-- squared input — the Hessian-diagonal proxy from the layer inputs alone (§6 (b)); CVXQ's own
-- PCA-projected gradient statistics plug in here once the backward-pass statistics land.
local C = {}

local SITES = { q = "attn_in", k = "attn_in", v = "attn_in", o = "attn_out", gate = "ffn_in", up = "ffn_in", down = "ffn_mid" }
C.SITES = SITES

function C.allocate(m, stats, opt)
  local groups, keys, meta = {}, {}, {}
  for b = 1, m:nblocks() do
    for _, name in ipairs(m:linear_names()) do
      local W = m:weight(b, name)
      local out, inn = W:size(1), W:size(2)
      local st = stats[b][SITES[name]]
      local key = b .. "." .. name
      -- column sensitivity G²_j and the row score log2 Var(W_i) + log2 Ḡ²_i (Ḡ² is the same for
      -- every row under the proxy, so rows cluster by spread)
      local colg = qf.zeros({ inn })
      for j = 1, inn do colg:set(j, st.sigma:get(j, j) / st.tokens) end
      local rowvar = qf.row_log2_variance(W)
      local lg = math.log(math.max(colg:mean(), 1e-300), 2)
      local score = {}
      for i = 1, out do score[i] = rowvar:get(i) + lg end
      local k = math.max(1, out // opt.cluster_rows)
      local rg = qf.row_clusters(score, k)
      local var = qf.group_spread(W, { group = 1, row_groups = rg })
      local cnt = {}
      for c = 1, k do cnt[c] = 0 end
      for i = 1, out do cnt[rg[i]] = cnt[rg[i]] + 1 end
      local g2, n = qf.zeros({ k, inn }), qf.zeros({ k, inn })
      for c = 1, k do for j = 1, inn do g2:set(c, j, colg:get(j)); n:set(c, j, cnt[c]) end end
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

-- The grid of one allocated linear: (row cluster × column) groups with their bits.
function C.grid(L, opt)
  return qf.grid{ group = 1, row_groups = L.row_groups, alloc = L.bits, kind = opt.kind or "uniform",
                  compand_search = opt.compand_search or false, sym = opt.sym or false }
end

return C
