-- qforge.cvxq — CVXQ's bit allocation (docs/methods.md#dual-ascent) as plain Lua over the
-- engine primitives.
--   local C = require("qforge.cvxq")
--   local alloc = C.allocate(m, stats, {target_bits = 3, cluster_rows = 64})
--   alloc.layers["3.q"] = {row_groups = {...}, bits = Tensor[clusters, in], block=, name=}
-- Groups are (row cluster × input column). Sensitivity G²: with `grads` (cal:gradient_statistics,
-- CVXQ's own squared gradients of PCA-projected hidden states) the mean of the per-weight
-- squared gradient over the group, and rows cluster by log2 Var(W_i) + log2 Ḡ²_i; without it the
-- Hessian-diagonal proxy from the layer inputs alone, G²_j = Σ_jj / tokens (the mean squared
-- input of column j), and rows cluster by spread.
local C = {}

-- The activation site feeding linear `name` of model m (the architecture table, m:arch()).
function C.site(m, name) return m:arch().site_of[name] end

-- Recipe options of the sensitivity statistics; C.options(own, help) adds them to a recipe's own.
local SENS = { sensitivity = "gradient", pca = 1024, stride = 128, grad_iters = 0, alloc_file = "" }
local SENS_HELP = {
  sensitivity = { "gradient (CVXQ's squared gradients of PCA-projected hidden states) | proxy (diag Sigma, no backward pass)",
                  choices = { "gradient", "proxy" } },
  pca = { "PCA components of the final hidden states (capped at the model width)", min = 1 },
  stride = { "gradient statistics: token positions every stride tokens", min = 1 },
  grad_iters = { "gradient statistics: calibration iterations (0: each window once)", min = 0 },
  alloc_file = "an allocation.safetensors saved by an earlier run: reuse it instead of statistics + dual ascent" }
-- The allocation's own options (a recipe's value is its default).
local ALLOC = { cluster_rows = 64 }
local ALLOC_HELP = { cluster_rows = { "rows per CVXQ row cluster (one fp16 scale + zero per cluster and column)", min = 1 } }
function C.options(own, help)
  for k, v in pairs(SENS) do own[k] = v end
  for k, v in pairs(SENS_HELP) do help[k] = v end
  for k, v in pairs(ALLOC) do if own[k] == nil then own[k] = v end end
  for k, v in pairs(ALLOC_HELP) do if help[k] == nil then help[k] = v end end
  return own, help
end

-- The gradient statistics of the full-precision model over cal's windows (nil for the proxy).
local function check_sensitivity(opt)
  qf.check_options(opt, SENS, SENS_HELP)
  if opt.sensitivity == nil then qf.option_error("sensitivity", "is required (gradient or proxy)") end
end

-- Gradient statistics as a safetensors file (the cache= form): "<block>.<name>.g2" [out, in] and
-- "<block>.<name>.row" [out] per linear (f32, exactly what the pass returned), the pass's counts
-- and seconds in the metadata.
local GRAD_FORMAT = "1"
local function save_gradient_statistics(g, path, m)
  local t = {}
  for b = 1, m:nblocks() do
    for _, name in ipairs(m:linear_names()) do
      t[b .. "." .. name .. ".g2"], t[b .. "." .. name .. ".row"] = g[b][name].g2, g[b][name].row
    end
  end
  local ev = {}
  for i, e in ipairs(g.pca.eigenvalues) do ev[i] = string.format("%.17g", e) end
  qf.save_tensors(path, t, { qforge_gradient_statistics = GRAD_FORMAT, iters = tostring(g.iters), samples = tostring(g.samples),
                             seconds = string.format("%.17g", g.seconds), pca_seconds = string.format("%.17g", g.pca_seconds),
                             pca_k = tostring(g.pca.k), pca_explained = string.format("%.17g", g.pca.explained),
                             pca_eigenvalues = table.concat(ev, ",") })
end

local function load_gradient_statistics(path, m)
  local t, md = qf.load_tensors(path)
  local function bad(what) error("gradient statistics file '" .. path .. "': " .. what, 0) end
  if md.qforge_gradient_statistics ~= GRAD_FORMAT then bad("not qforge gradient statistics (metadata qforge_gradient_statistics missing or not " .. GRAD_FORMAT .. ")") end
  local g = {}
  for b = 1, m:nblocks() do
    g[b] = {}
    for _, name in ipairs(m:linear_names()) do
      local key = b .. "." .. name
      local g2, row, W = t[key .. ".g2"], t[key .. ".row"], m:weight(b, name)
      if g2 == nil or row == nil then bad("no statistics for linear " .. key) end
      if g2:dim() ~= 2 or g2:size(1) ~= W:size(1) or g2:size(2) ~= W:size(2) or row:dim() ~= 1 or row:size(1) ~= W:size(1) then
        bad("tensors of linear " .. key .. " do not match its weight's shape")
      end
      g[b][name] = { g2 = g2, row = row }
    end
  end
  local ev = {}
  for e in (md.pca_eigenvalues or ""):gmatch("[^,]+") do ev[#ev + 1] = tonumber(e) end
  g.pca = { k = math.tointeger(tonumber(md.pca_k)), explained = tonumber(md.pca_explained), eigenvalues = ev }
  g.iters, g.samples = math.tointeger(tonumber(md.iters)), math.tointeger(tonumber(md.samples))
  g.seconds, g.pca_seconds = tonumber(md.seconds), tonumber(md.pca_seconds)
  return g
end

-- m (optional): the full-precision model cal was drawn from; with opt.cache (P.cached) the
-- statistics are read from the shared file of this model, these windows and these options when
-- an earlier run wrote it (the same f32 values, bit for bit), else computed and written there.
function C.sensitivity(cal, opt, m)
  check_sensitivity(opt)
  if opt.sensitivity == "proxy" then return nil end
  local P = require("qforge.pipeline")
  local path = m and P.cached(opt, "gradient_statistics", "safetensors", m,
                              { cal:fingerprint(), opt.pca, opt.stride, opt.grad_iters }) or nil
  local g, loaded = nil, ""
  local f = path and io.open(path, "rb")
  if f then
    f:close()
    local t = qf.now()
    g, loaded = load_gradient_statistics(path, m), path
    io.stderr:write(string.format("gradient statistics: read %s (computed in %.1f s by an earlier run; read in %.1f s)\n",
      path, g.seconds + g.pca_seconds, qf.now() - t))
  else
    g = cal:gradient_statistics{ pca = opt.pca, stride = opt.stride, iters = opt.grad_iters }
    if path then
      save_gradient_statistics(g, path, m)
      io.stderr:write("gradient statistics: written to " .. path .. "\n")
    end
  end
  qf.record("gradient_statistics", { seconds = g.seconds, pca_seconds = g.pca_seconds, iters = g.iters, samples = g.samples,
                                     pca_components = g.pca.k, pca_explained = g.pca.explained, loaded_from = loaded,
                                     saved = (path and loaded == "") and path or "" })
  return g
end

-- The budget with overrides (ov, a P.overrides plan): a skipped linear stays in full precision
-- and is outside the allocation; a rule's grid pins its linears at the rule's bits, which count
-- in the target — the dual ascent spreads what is left over the other linears:
--   target_free = (target · N_covered − Σ_pinned bits · n) / N_free.
local function pinned_budget(m, opt, ov)
  local covered, free, pinned_bits, pinned = 0, 0, 0, {}
  for b = 1, m:nblocks() do
    for _, name in ipairs(m:linear_names()) do
      local W = m:weight(b, name)
      local n = W:size(1) * W:size(2)
      local rule = ov and ov.of[b][name]
      if not (rule and rule.skip) then covered = covered + n end
      if rule and not rule.skip then
        pinned_bits = pinned_bits + rule.spec.bits * n
        pinned[rule.index] = rule
      elseif not rule then
        free = free + n
      end
    end
  end
  if not ov then return opt.target_bits end
  if free == 0 then qf.option_error("overrides", "every linear is pinned or skipped: nothing is left for the CVXQ allocation") end
  local t = (opt.target_bits * covered - pinned_bits) / free
  if t <= 0 or t > (opt.bmax or 8) then
    local names = {}
    for _, q in pairs(pinned) do names[#names + 1] = "rule " .. q.index .. " '" .. q.text .. "'" end
    table.sort(names)
    qf.option_error("overrides", string.format("the pinned linears (%s) take %.4g of the %.4g bits/weight budget (target_bits=%g over %d covered weights); the %d weights left would need %.4g bits each, outside (0, bmax=%d]",
      table.concat(names, ", "), pinned_bits / covered, opt.target_bits, opt.target_bits, covered, free, t, opt.bmax or 8))
  end
  return t, covered, free, pinned_bits
end

-- Checks overrides against the budget before any work (P.prepare calls it for allocating recipes).
function C.check_overrides(m, opt, ov)
  if ov then pinned_budget(m, opt, ov) end
end

-- stats (P.fp_statistics) is needed only without grads (the proxy). ov: a P.overrides plan
-- (skipped and pinned linears, see pinned_budget).
function C.allocate(m, stats, opt, grads, ov)
  qf.check_options(opt, ALLOC, ALLOC_HELP)
  if opt.cluster_rows == nil then qf.option_error("cluster_rows", "is required (an integer >= 1)") end
  local target, covered, free, pinned_bits = pinned_budget(m, opt, ov)
  local groups, keys, meta, fixed = {}, {}, {}, {}
  for b = 1, m:nblocks() do
    for _, name in ipairs(m:linear_names()) do
      local W = m:weight(b, name)
      local out, inn = W:size(1), W:size(2)
      local key = b .. "." .. name
      local rule = ov and ov.of[b][name]
      if rule then
        fixed[#fixed + 1] = key
        meta[key] = { block = b, name = name, skip = rule.skip or nil, rule = rule }
        goto next_linear
      end
      do
      local rowvar = qf.row_log2_variance(W)
      local k = math.max(1, out // opt.cluster_rows)
      local score, rg, g2 = {}, nil, nil
      if grads then
        local gs = grads[b][name]
        for i = 1, out do score[i] = rowvar:get(i) + math.log(math.max(gs.row:get(i), 1e-300), 2) end
        rg = qf.row_clusters(score, k)
        g2 = qf.group_mean(gs.g2, { group = 1, row_groups = rg })
      else
        if not stats then error("C.allocate: the diag-Sigma proxy needs the full-precision statistics (stats is nil)", 0) end
        local st = stats[b][C.site(m, name)]
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
      ::next_linear::
    end
  end
  local r = qf.dual_ascent{ groups = groups, target_bits = target, bmin = opt.bmin or 0, bmax = opt.bmax or 8 }
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
  local a = { layers = layers, keys = keys, rate = r.rate, log2_lambda = r.log2_lambda, steps = r.steps,
              bisections = r.bisections, converged = r.converged, history = r.history, pruned_fraction = pruned / total }
  if ov then  -- the rate over every covered linear; the dual ascent's own over the free ones
    for _, key in ipairs(fixed) do layers[key] = meta[key] end
    a.fixed, a.free_rate, a.free_target = fixed, r.rate, target
    a.rate = (r.rate * free + pinned_bits) / covered
    a.pruned_fraction = pruned / covered
  end
  return a
end

-- Every linear of the allocation in model order: {key, L} where L.skip (full precision),
-- L.rule (a pinned grid: L.rule.spec) or L.bits/L.row_groups (allocated).
function C.each_linear(alloc, m)
  local out = {}
  for b = 1, m:nblocks() do
    for _, name in ipairs(m:linear_names()) do
      local key = b .. "." .. name
      if alloc.layers[key] then out[#out + 1] = alloc.layers[key] end
    end
  end
  return out
end

-- An allocation as a safetensors file (qf.save_tensors): per linear "<block>.<name>.bits" (I32
-- [clusters, in]) and "<block>.<name>.row_groups" (I32 [out], 1-based cluster of each row), and
-- the dual ascent's outcome in the metadata. Every allocating recipe writes one into its run
-- directory, so the expensive statistics are paid once and any solver can reuse them
-- (alloc_file=run/allocation.safetensors), and an edited allocation is a file a run can take.
local ALLOC_FORMAT = "1"
function C.save_allocation(alloc, path, opt)
  local t = {}
  for _, key in ipairs(alloc.keys) do
    local L = alloc.layers[key]
    t[key .. ".bits"] = L.bits:to("i32")
    t[key .. ".row_groups"] = qf.tensor(L.row_groups):to("i32")
  end
  qf.save_tensors(path, t, {
    qforge_allocation = ALLOC_FORMAT, keys = table.concat(alloc.keys, ","),
    target_bits = string.format("%.17g", opt.target_bits), rate = string.format("%.17g", alloc.rate),
    log2_lambda = string.format("%.17g", alloc.log2_lambda), pruned_fraction = string.format("%.17g", alloc.pruned_fraction),
    steps = tostring(alloc.steps), bisections = tostring(alloc.bisections), converged = tostring(alloc.converged),
    sensitivity = tostring(opt.sensitivity), cluster_rows = tostring(opt.cluster_rows), bmax = tostring(opt.bmax or 8),
    overrides = type(opt.overrides) == "string" and opt.overrides or "" })
end

-- Reads an allocation written by C.save_allocation and checks it against model m: every linear
-- present with its shapes, cluster indices in range and every cluster used, bits in [0, bmax];
-- errors name the file and the tensor. The rate and the pruned fraction are recomputed from the
-- file (the metadata is only a record).
-- The metadata checks shared by C.load_allocation and C.check_options (no model needed).
local function check_allocation_header(path, md, opt)
  local function bad(what) error("allocation file '" .. path .. "': " .. what, 0) end
  if md.qforge_allocation ~= ALLOC_FORMAT then bad("not a qforge allocation (metadata qforge_allocation missing or not " .. ALLOC_FORMAT .. ")") end
  for _, k in ipairs({ "target_bits", "log2_lambda" }) do
    if tonumber(md[k]) == nil then bad("metadata " .. k .. " missing or not a number") end
  end
  if math.abs(tonumber(md.target_bits) - opt.target_bits) > 1e-9 then
    bad(string.format("made for target_bits=%s, this run asks for target_bits=%s (pass target_bits=%s)", md.target_bits, opt.target_bits, md.target_bits))
  end
  local mine = type(opt.overrides) == "string" and opt.overrides or ""
  if type(opt.overrides) == "table" and #opt.overrides > 0 then bad("overrides given as a Lua table: an allocation file is checked against the string form (overrides=\"...\")") end
  if (md.overrides or "") ~= mine then
    bad(string.format("made with overrides=\"%s\", this run gives overrides=\"%s\" (the skipped and pinned linears must be the same)", md.overrides or "", mine))
  end
  return bad
end

function C.load_allocation(path, m, opt, ov)
  local t, md = qf.load_tensors(path)
  local bad = check_allocation_header(path, md, opt)
  local bmax = opt.bmax or 8
  local layers, keys, bits_sum, pruned, total = {}, {}, 0, 0, 0
  for b = 1, m:nblocks() do
    for _, name in ipairs(m:linear_names()) do
      local key = b .. "." .. name
      local W = m:weight(b, name)
      local out, inn = W:size(1), W:size(2)
      local bt, rt = t[key .. ".bits"], t[key .. ".row_groups"]
      local rule = ov and ov.of[b][name]
      if rule then  -- skipped or pinned by the same overrides the file was made with (checked in the header)
        if bt ~= nil or rt ~= nil then bad("holds an allocation for linear " .. key .. ", which override rule " .. rule.index .. " '" .. rule.text .. "' takes") end
        layers[key] = { block = b, name = name, skip = rule.skip or nil, rule = rule }
        if not rule.skip then
          bits_sum = bits_sum + rule.spec.bits * out * inn
          total = total + out * inn
        end
        goto next_linear
      end
      do
      if bt == nil or rt == nil then bad("no allocation for linear " .. key .. " (tensors '" .. key .. ".bits' and '" .. key .. ".row_groups')") end
      if rt:dim() ~= 1 or rt:size(1) ~= out then bad(string.format("tensor '%s.row_groups' has shape %s, linear %s has %d rows", key, tostring(rt:size(1)), key, out)) end
      if bt:dim() ~= 2 or bt:size(2) ~= inn then bad(string.format("tensor '%s.bits' must be [clusters, %d]", key, inn)) end
      local k = bt:size(1)
      local rg, used = {}, {}
      for i = 1, out do
        local c = math.tointeger(rt:get(i))
        if c == nil or c < 1 or c > k then bad(string.format("tensor '%s.row_groups': row %d names cluster %g of %d", key, i, rt:get(i), k)) end
        rg[i] = c
        used[c] = (used[c] or 0) + 1
      end
      local bits = bt:to("f32")
      for c = 1, k do
        if not used[c] then bad(string.format("tensor '%s.row_groups': cluster %d has no rows", key, c)) end
        for j = 1, inn do
          local v = bits:get(c, j)
          if v ~= v or v ~= math.floor(v) then  -- NaN fails every comparison, so test it first
            bad(string.format("tensor '%s.bits' [%d, %d] = %g is not a whole number of bits", key, c, j, v))
          end
          if v < 0 or v > bmax then bad(string.format("tensor '%s.bits' [%d, %d] = %g is outside [0, %d]", key, c, j, v, bmax)) end
          bits_sum = bits_sum + v * used[c]
          if v == 0 then pruned = pruned + used[c] end
        end
      end
      total = total + out * inn
      layers[key] = { block = b, name = name, row_groups = rg, bits = bits }
      keys[#keys + 1] = key
      end
      ::next_linear::
    end
  end
  return { layers = layers, keys = keys, rate = bits_sum / total, pruned_fraction = pruned / total,
           log2_lambda = tonumber(md.log2_lambda), steps = math.tointeger(tonumber(md.steps)) or 0,
           bisections = math.tointeger(tonumber(md.bisections)) or 0, converged = md.converged == "true", history = {},
           file = path }
end

-- Checks the allocation options before any work (a recipe calls it right after P.options): the
-- sensitivity name, and that alloc_file is a qforge allocation made for this target_bits. The
-- model-dependent checks follow in C.load_allocation.
function C.check_options(opt)
  check_sensitivity(opt)
  -- The allocation fits its own grids (C.grid): llama.cpp's mapping and the importance search are
  -- for the uniform grids of P.grid.
  if opt.mapping ~= nil and opt.mapping ~= "gptq" then qf.option_error("mapping", "does not apply to the CVXQ allocation's grids (C.grid)") end
  if opt.importance ~= nil and opt.importance ~= "none" then qf.option_error("importance", "does not apply to the CVXQ allocation's grids (C.grid)") end
  if opt.target_bits ~= nil and opt.bmax ~= nil and opt.target_bits > opt.bmax then
    qf.option_error("target_bits", string.format("%g exceeds bmax=%d (the most bits a group may get)", opt.target_bits, opt.bmax))
  end
  if opt.alloc_file ~= nil and opt.alloc_file ~= "" then
    local ok, err = pcall(function()
      local _, md = qf.load_tensors(opt.alloc_file)
      check_allocation_header(opt.alloc_file, md, opt)
    end)
    if not ok then qf.option_error("alloc_file", tostring(err)) end
  end
end

-- The whole allocation stage of a recipe: sensitivity statistics (gradient or proxy) over
-- ctx.cal, then dual ascent — or, with opt.alloc_file, the allocation an earlier run saved;
-- prints the result, records it as "allocation" (with its seconds and the dual ascent history)
-- and saves it to the run directory as allocation.safetensors. want_stats (default true): also
-- return the full-precision Σ/μ of every site over ctx.cal, stats[b][site] = {sigma=, mu=,
-- tokens=}. ctx.cal is consumed (its blocks advanced) whenever a pass ran.
function C.allocate_model(ctx, opt, want_stats)
  if want_stats == nil then want_stats = true end
  local t0 = qf.now()
  local alloc, stats
  if opt.alloc_file ~= nil and opt.alloc_file ~= "" then
    alloc = C.load_allocation(opt.alloc_file, ctx.model, opt, ctx.overrides)
    if want_stats then stats = require("qforge.pipeline").fp_statistics(ctx.cal) end
  else
    local grads = C.sensitivity(ctx.cal, opt, ctx.model)
    if want_stats or not grads then stats = require("qforge.pipeline").fp_statistics(ctx.cal) end
    alloc = C.allocate(ctx.model, stats, opt, grads, ctx.overrides)
  end
  alloc.seconds = qf.now() - t0
  local saved = qf.run_dir() and (qf.run_dir() .. "/allocation.safetensors") or ""
  if saved ~= "" then C.save_allocation(alloc, saved, opt) end
  print(string.format("dual ascent: rate %.4f bits (target %.2f) after %d steps + %d bisections, log2 lambda %.3f, pruned %.2f%%  (%.1fs)%s",
    alloc.rate, opt.target_bits, alloc.steps, alloc.bisections, alloc.log2_lambda, 100 * alloc.pruned_fraction, alloc.seconds,
    alloc.file and ("  [loaded from " .. alloc.file .. "]") or ""))
  if alloc.free_target then
    local ns, np = 0, 0
    for _, key in ipairs(alloc.fixed) do if alloc.layers[key].skip then ns = ns + 1 else np = np + 1 end end
    print(string.format("overrides: %d linears pinned, %d skipped (full precision); the other %d linears get %.4f bits (target %.4f)",
      np, ns, #alloc.keys, alloc.free_rate, alloc.free_target))
  end
  qf.record("allocation", { rate = alloc.rate, steps = alloc.steps, bisections = alloc.bisections, converged = alloc.converged,
                            log2_lambda = alloc.log2_lambda, pruned_fraction = alloc.pruned_fraction, history = alloc.history,
                            seconds = alloc.seconds, loaded_from = alloc.file or "", saved = saved,
                            free_rate = alloc.free_rate, free_target = alloc.free_target })
  return alloc, stats
end

-- The grid of one allocated linear: (row cluster × column) groups with their bits.
function C.grid(L, opt)
  if L.skip then error("C.grid: linear " .. L.block .. "." .. L.name .. " is skipped (override rule " .. L.rule.index .. "): it has no grid", 0) end
  if L.rule then return qf.grid(L.rule.spec) end  -- pinned by an override rule
  return qf.grid{ group = 1, row_groups = L.row_groups, alloc = L.bits, kind = opt.kind or "uniform",
                  compand_search = opt.compand_search or false, sym = opt.sym or false }
end

return C
