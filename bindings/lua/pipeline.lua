-- qforge.pipeline — the sequential layer-wise quantization loop and the standard
-- calibrate/evaluate protocol, in plain Lua over the engine primitives.
--   local P = require("qforge.pipeline")
-- Compiled into the qforge binary, so a run directory's recipe copy reruns as is.
local P = {}
local CAL_OVERRIDES = setmetatable({}, { __mode = "k" })  -- calibration -> P.overrides plan (P.prepare)
local CAL_KQUANT = setmetatable({}, { __mode = "k" })     -- calibration -> K-quant fallback spec (P.prepare)
local CAL_PRE = setmetatable({}, { __mode = "k" })        -- calibration -> preprocessing steps (P.preprocess)
local CAL_OPT = setmetatable({}, { __mode = "k" })        -- calibration -> the recipe's options (block checkpoints)
local CHECKPOINT = { calls = 0, used = false }            -- quantize_model calls so far; whether checkpoint= was read
-- Preprocessing steps that put transforms on the solve's result: the registry says (changes_basis).
local BASIS_STEPS = {}
for _, e in ipairs(qf.preprocessors()) do BASIS_STEPS[e.name] = e.changes_basis end

-- Options every layer-wise recipe shares (merge with the recipe's own, then qf.options).
P.common_options = {
  model = "../shared/models/stories260K",
  bits = 4, group = -1, sym = false, mse = false,
  mapping = "gptq",       -- how a symmetric range becomes (scale, zero): the GPTQ reference's or llama.cpp's
  importance = "none",    -- weigh the grid fit by diag Σ (llama.cpp's imatrix): none | diag | diag_x
  ktype = "none",         -- a llama.cpp K-quant grid (Q2_K..Q6_K) instead of bits/group/sym (P.grid)
  calib_text = "../shared/data/tinystories_head.txt",
  calib_fraction = 0.5,   -- calibration windows come from the first fraction of the text's tokens
  nsamples = 128, seqlen = 256,
  eval_seqlen = 512,      -- perplexity on the remaining tokens of calib_text
  wiki_text = "../shared/data/wikitext2_test.txt", wiki_windows = 40,
  eval_protocol = "nonoverlap",  -- how perplexity windows are cut and scored (m:perplexity protocols)
  kld = true, kld_topk = 0, fp_logits = "",  -- KL divergence from the full-precision model beside every perplexity
  cache = "",             -- full-precision results shared between runs, keyed by what they were computed from (P.cached)
  eval_fp = false,        -- also evaluate the full-precision model first (results prefixed fp_)
  overrides = "",         -- per-layer grids or full precision: "re:^1%.=bits:8;skip:name:down" (P.overrides)
  true_sequential = false,
  f16_scales = false,     -- fp16-exact scales: exports to GGUF Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 and GPTQ lose nothing
  save = "", save_format = "qforge", save_dtype = "",  -- write the quantized model (m:save) when save is set
  checkpoint = "",        -- block checkpoints: a killed run resumes after its last finished block (P.quantize_model)
  -- Mixture of experts (docs/methods.md#moe-calibration); a non-default value on a dense model is an option error.
  moe_calibrate = "routed", moe_min_tokens = 16, moe_fallback = "all_tokens", moe_router = "fp",
}

-- Help and accepted values (qf.options declarations: {"help", min=, max=, gt=, lt=, also=, choices=}).
P.common_help = {
  model = "model: llama2.c checkpoint or directory, HF directory, GGUF file or qforge .safetensors",
  bits = { "code bits per weight of the uniform grid", min = 1, max = 8 },
  group = { "columns per quantization group (-1: one group per row)", min = 1, also = { -1 } },
  sym = "symmetric grid (zero point at the middle code) instead of asymmetric min/max",
  mse = "fit each group's clipping range by squared error (shrink search) instead of min/max",
  mapping = { "symmetric grids: gptq (the GPTQ reference: scale 2·max|w|/maxq, zero (maxq+1)/2) or llamacpp (llama.cpp's Q4_0/Q5_0/Q8_0: the signed extreme on code 0, step max|w|/2^(bits-1)); docs/methods.md#grid-mappings",
              choices = { "gptq", "llamacpp" } },
  importance = { "grid fit weighted by column importance diag(Sigma) (llama.cpp's imatrix): none (min/max), diag (weights Sigma_jj), diag_x (Sigma_jj*sqrt(sigma^2+w^2), llama.cpp's) — a weighted least-squares scale search; docs/methods.md#grid-importance",
                 choices = { "none", "diag", "diag_x" } },
  ktype = { "llama.cpp K-quant grid: Q2_K Q3_K Q4_K Q5_K Q6_K (super-blocks of 256, fp16 d/dmin, 4/6-bit sub-block scales; replaces bits, group, sym, mapping, f16_scales; importance none or diag); linears whose width is not a multiple of 256 get llama-quantize's fallback (Q2_K/Q3_K: Q4_0, Q4_K: Q5_0, Q5_K: Q5_1, Q6_K: Q8_0); docs/methods.md#kquant-grids",
            choices = { "none", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K" } },
  calib_text = "text file: calibration windows from its first calib_fraction of tokens, held-out perplexity on the rest",
  calib_fraction = { "calibration draws from the first fraction of the text's tokens; perplexity is measured on the rest", gt = 0, lt = 1 },
  nsamples = { "calibration windows", min = 1 },
  seqlen = { "calibration window length (tokens; at most the model's context)", min = 1 },
  eval_seqlen = { "window length of the held-out and WikiText-2 perplexity (tokens; 0: the protocol's default — the model's context; gptq 2048, at most the context)", min = 2, also = { 0 } },
  wiki_text = "WikiText-2 test text (read when wiki_windows > 0)",
  wiki_windows = { "WikiText-2 windows to evaluate (0: skip)", min = 0 },
  eval_protocol = { "perplexity protocol: nonoverlap (every prediction of non-overlapping windows), llamacpp (llama-perplexity's: BOS per chunk, second half scored), gptq (the GPTQ repos' formula)",
                    choices = { "nonoverlap", "llamacpp", "gptq" } },
  kld = "record the KL divergence from the full-precision model (its next-token distributions, recorded before quantizing) beside every perplexity",
  kld_topk = { "0: exact KL divergence (the full-precision hidden states are kept, dim floats per position); k > 0: only the top k reference tokens per position, the rest one bucket (a lower bound)", min = 0 },
  fp_logits = "directory of full-precision reference logits (heldout.qfref, wikitext2.qfref): read when present and matching, else computed and written there (empty: computed in memory)",
  eval_fp = "also evaluate the full-precision model first (results prefixed fp_)",
  cache = "directory of full-precision results shared between runs (reference logits, CVXQ's gradient statistics), each file named by the fingerprint of the model's weights, the tokens and the options it was computed from: read when present, else computed and written there (qforge sweep sets it to SWEEP/cache; empty: off)",
  overrides = "per-layer rules, first match wins, ';'-separated: SELECTOR=key:value,... or skip:SELECTOR; SELECTOR re:REGEX (on \"block.name\", e.g. \"3.down\"), block:LIST[/names] (1,-1 or 2..4; negative from the end), name:names; keys bits, group, sym, mse, f16_scales, or type (a GGUF type: Q2_K..Q6_K, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 — the whole grid; a K type on a width not a multiple of 256 gets llama-quantize's fallback); every rule must match a linear; under the CVXQ allocation a rule pins bits (counted in target_bits) and skipped linears are outside the budget",
  true_sequential = "re-collect Σ after each sub-group q/k/v -> o -> gate/up -> down",
  f16_scales = "round grid scales to fp16 (asym <= 5 bits: so scale*zero is fp16 too): exact GGUF Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 and GPTQ exports",
  save = "write the quantized model here after evaluation (empty: don't); checked before any work",
  save_format = { "qforge | gguf | gptq | compressed-tensors | hf", choices = { "qforge", "gguf", "gptq", "compressed-tensors", "hf" } },
  moe_calibrate = { "mixture of experts: each expert's Σ from the tokens routed to it (routed), or from every token (all: llm-compressor's moe_calibrate_all_experts; the forward still combines only the routed experts)", choices = { "routed", "all" } },
  moe_min_tokens = { "mixture of experts: an expert whose Σ has fewer tokens gets moe_fallback (named in the progress, the log and results.json's moe_fallbacks)", min = 1 },
  moe_fallback = { "mixture of experts: what an expert with fewer than moe_min_tokens tokens gets: all_tokens (Σ from every token through it), rtn (round to nearest, no Σ) or fp (left in full precision, counted as unquantized)", choices = { "all_tokens", "rtn", "fp" } },
  moe_router = { "mixture of experts: the router and Qwen2-MoE's shared-expert gate (decisions, not computations; llm-compressor and GPTQModel leave them unquantized too) stay in full precision (fp) or are solved like the other linears (quantize); an override rule naming one decides instead", choices = { "fp", "quantize" } },
  checkpoint = "directory of block checkpoints: after each block P.quantize_model saves the run's state under DIR/<fingerprint of recipe, options, seed, commit, model, windows>/; a run with the same fingerprint (the same command, killed or failed) resumes after the last finished block, bit-identically; removed when the run ends ok (qforge sweep sets it to SWEEP/checkpoints; empty: off)",
  save_dtype = "gguf: F32 F16 Q8_0 Q4_0 Q4_1 Q5_0 Q5_1, or Q2_K..Q6_K with ktype (default F16); hf: F32 F16 BF16 (default F32); qforge, gptq, compressed-tensors: none",
}

-- Merges help tables: a recipe's plain-string help for an option with a declaration keeps the
-- declaration's accepted values.
local function merge_help(h, extra)
  for k, v in pairs(extra or {}) do
    if type(v) == "string" and type(h[k]) == "table" then
      local t = {}
      for dk, dv in pairs(h[k]) do t[dk] = dv end
      t[1] = v
      h[k] = t
    else
      h[k] = v
    end
  end
end

function P.options(own, help)
  local d, h = {}, {}
  for k, v in pairs(P.common_options) do d[k] = v end
  for k, v in pairs(own or {}) do d[k] = v end
  merge_help(h, P.common_help)
  merge_help(h, help)
  return qf.options(d, h)
end

-- The block-finetune options (decoupleQ's block stage, docs/methods.md#block-finetune) a recipe
-- offers, merged into its own option and help tables; a recipe's own value of any of them (e.g.
-- finetune = true, ft_lr = 1e-3) is its default. P.finetune(opt) turns them into quantize_model's
-- `finetune` table (nil when off).
local FT = { finetune = false, ft_params = "scales,zeros,norms", ft_lr = 1e-5, ft_epochs = 4, ft_batch = 1 }
local FT_HELP = {
  finetune = "after each block: Adam on its floats against the full-precision block output (decoupleQ, docs/methods.md#block-finetune)",
  ft_params = "finetune parameter groups: scales,zeros,norms,biases", ft_lr = { "finetune learning rate", min = 0 },
  ft_epochs = { "finetune epochs over the calibration windows", min = 1 }, ft_batch = { "finetune windows per Adam step", min = 1 },
}
function P.finetune_options(own, help)
  own, help = own or {}, help or {}
  for k, v in pairs(FT) do if own[k] == nil then own[k] = v end end
  for k, v in pairs(FT_HELP) do if help[k] == nil then help[k] = v end end
  return own, help
end

-- Options applied around every solve, which a recipe offers when its solves take any Σ and
-- return QLinears on integer-zero grids: sigma_shrink (the solve sees (1 − α)Σ + α·diag Σ,
-- docs/methods.md#sigma-shrink) and refit_scales (after the solve, every row's scales refitted
-- with the codes fixed, qf.refit_scales, docs/methods.md#refit-scales). Pass opt.sigma_shrink and
-- opt.refit_scales to P.quantize_model.
local SOLVE = { sigma_shrink = 0.0, refit_scales = false }  -- 0.0: a number option, not an integer
local SOLVE_HELP = {
  sigma_shrink = { "shrink each layer's Sigma toward its diagonal before the solve: (1-a)Sigma + a diag(Sigma) (0: Sigma, 1: llama.cpp's imatrix view); objectives are still reported on Sigma; docs/methods.md#sigma-shrink", min = 0, max = 1 },
  refit_scales = "after each solve: refit every row's scales to the layer objective with the codes and zeros fixed (least squares under Sigma; a row keeps the new scales only when its loss falls; docs/methods.md#refit-scales)",
}
function P.solve_options(own, help)
  own, help = own or {}, help or {}
  for k, v in pairs(SOLVE) do if own[k] == nil then own[k] = v end end
  for k, v in pairs(SOLVE_HELP) do if help[k] == nil then help[k] = v end end
  return P.preprocess_options(own, help)
end

-- Preprocessing steps (docs/methods.md#preprocess): `pre` names registered steps (qf.preprocessors(),
-- e.g. "magr", "quip", "magr+quip"), applied in order to each linear's problem before the solve;
-- each step's options are recipe options prefixed by its name (magr_alpha, quip_seed, ...). A
-- step's transforms go onto the solve's quantized linear, and the objective is measured on the
-- original weight and Σ. P.solve_options includes these; P.prepare checks them before any work.
function P.preprocess_options(own, help)
  own, help = own or {}, help or {}
  local names = {}
  for _, e in ipairs(qf.preprocessors()) do
    names[#names + 1] = e.name
    local defaults, decl = qf.preprocess_options(e.name)
    for _, o in ipairs(e.options) do
      local k = e.name .. "_" .. o.name
      if own[k] == nil then own[k] = defaults[o.name] end
      if help[k] == nil then
        local d = decl[o.name]
        local t = {}
        for dk, dv in pairs(d) do t[dk] = dv end
        t[1] = e.name .. ": " .. d[1]
        help[k] = t
      end
    end
  end
  if own.pre == nil then own.pre = "none" end
  if help.pre == nil then
    help.pre = "preprocessing before each solve, in order, joined by + (a comma works in qforge run; qforge sweep reads commas as a list): none or " ..
      (#names > 0 and table.concat(names, ", ") or "(no steps registered)") ..
      "; a step's options are prefixed by its name; docs/methods.md#preprocess"
  end
  return own, help
end

-- opt.pre as a list of {name =, options = {...}} (nil for "none"), every step's options checked;
-- an option of a step that pre does not name, set to other than its default, is an error (it would
-- be silently ignored).
function P.preprocess(opt)
  if opt.pre == nil then return nil end
  local steps, named = {}, {}
  if opt.pre ~= "none" then
    for name in opt.pre:gmatch("[^+,%s]+") do
      local ok = false
      for _, e in ipairs(qf.preprocessors()) do ok = ok or e.name == name end
      if not ok then
        local known = {}
        for _, e in ipairs(qf.preprocessors()) do known[#known + 1] = e.name end
        qf.option_error("pre", string.format("unknown preprocessing step '%s' (none, %s)", name,
          #known > 0 and table.concat(known, ", ") or "no steps registered"))
      end
      if named[name] then qf.option_error("pre", "names '" .. name .. "' twice") end
      named[name] = true
      steps[#steps + 1] = { name = name }
    end
    if #steps == 0 then qf.option_error("pre", "is empty (none, or step names)") end
  end
  for _, e in ipairs(qf.preprocessors()) do
    local defaults = qf.preprocess_options(e.name)
    local o = {}
    for k, d in pairs(defaults) do
      local v = opt[e.name .. "_" .. k]
      if v ~= nil then
        if not named[e.name] and v ~= d then
          qf.option_error(e.name .. "_" .. k, string.format("is set to %s but pre does not include %s (pre = %s)", tostring(v), e.name, opt.pre))
        end
        o[k] = v
      end
    end
    for _, st in ipairs(steps) do
      if st.name == e.name then
        local ok, err = pcall(qf.check_preprocess_options, e.name, o)
        if not ok then  -- name the recipe option: magr_alpha, not alpha
          local k = tostring(err):match("option '([^']+)'")
          qf.option_error(k and (e.name .. "_" .. k) or "pre", tostring(err))
        end
        st.options = o
      end
    end
  end
  return #steps > 0 and steps or nil
end

-- A registered solver's options as recipe options: its declared defaults and declarations
-- (qf.solver_options, engine/solvers/solver.cpp), all of them or only `names`, added to own/help.
--   local opt = P.options(P.finetune_options(P.solver_options("gptq")))
function P.solver_options(solver, names, own, help)
  own, help = own or {}, help or {}
  local defaults, decl = qf.solver_options(solver)
  if names == nil then
    names = {}
    for _, f in ipairs(qf.solvers()) do
      if f.name == solver then for _, o in ipairs(f.options) do names[#names + 1] = o.name end end
    end
  end
  for _, n in ipairs(names) do
    if defaults[n] == nil then error(string.format("P.solver_options: solver '%s' has no option '%s'", solver, n), 2) end
    if own[n] == nil then own[n] = defaults[n] end
    if help[n] == nil then help[n] = decl[n] end
  end
  return own, help
end

-- The solve function of P.quantize_model for a registered solver, with the recipe's values of
-- that solver's options (those opt holds; the rest keep their defaults). The options are
-- checked now, before any calibration work. Returns the function and the options passed.
-- P.quantize_model takes the objective of these solves from their info: qf.solve measured it on
-- the untouched copy of W the pipeline handed over (the same numbers), so it is not computed twice.
local REGISTRY_SOLVES = setmetatable({}, { __mode = "k" })
function P.solver(solver, opt, grid)
  local defaults = qf.solver_options(solver)
  local o = {}
  for k in pairs(defaults) do
    if opt[k] ~= nil then o[k] = opt[k] end
  end
  qf.check_solver_options(solver, o)
  local f = function(l, g) return qf.solve(solver, l, g or grid, o) end  -- g: an override's grid
  REGISTRY_SOLVES[f] = qf.grid(grid)  -- its base grid spec: overrides change only the keys they name
  return f, o
end

-- Checked here, before any calibration work, so a bad option fails the run at once.
local FT_GROUPS = { scales = true, zeros = true, norms = true, biases = true }
function P.finetune(opt)
  if not opt.finetune then return nil end
  local params = {}
  for p in opt.ft_params:gmatch("[^,%s]+") do
    if not FT_GROUPS[p] then
      qf.option_error("ft_params", "unknown parameter group '" .. p .. "' (scales, zeros, norms, biases)")
    end
    params[#params + 1] = p
  end
  if #params == 0 then qf.option_error("ft_params", "is empty (scales, zeros, norms, biases)") end
  qf.check_options(opt, FT, FT_HELP)  -- ft_lr, ft_epochs, ft_batch: the declarations above
  return { params = params, lr = opt.ft_lr, epochs = opt.ft_epochs, batch = opt.ft_batch }
end

local function slice(t, first, last)
  local r = {}
  for i = first, last do r[#r + 1] = t[i] end
  return r
end

-- The grid options that contradict each other, refused before any work (P.prepare, P.grid).
local KQUANT_FIXES = { "bits", "group", "sym", "mse", "mapping", "f16_scales" }
local function check_grid_options(opt)
  if opt.ktype ~= nil and opt.ktype ~= "none" then  -- the layout fixes the grid: a changed key would be ignored
    for _, k in ipairs(KQUANT_FIXES) do
      if opt[k] ~= nil and opt[k] ~= P.common_options[k] then
        qf.option_error(k, string.format("does not go with ktype=%s (the K-quant layout fixes bits, group, sym, mse, mapping and f16_scales)", opt.ktype))
      end
    end
    if opt.importance == "diag_x" then qf.option_error("importance", "ktype grids take importance none or diag") end
    if (opt.ratio or 0) > 0 then qf.option_error("ratio", "K-quant grids store no outliers (ratio=0 with ktype)") end
    return
  end
  if opt.mapping == "llamacpp" and not opt.sym then qf.option_error("mapping", "llamacpp is llama.cpp's symmetric mapping: give sym=true") end
  if opt.importance ~= nil and opt.importance ~= "none" and opt.mse then
    qf.option_error("importance", "and mse are two range searches: give one")
  end
end

-- The grid spec of the common options.
function P.grid(opt)
  check_grid_options(opt)
  if opt.ktype ~= nil and opt.ktype ~= "none" then return qf.grid{ ktype = opt.ktype, importance = opt.importance } end
  return qf.grid{ bits = opt.bits, group = opt.group, sym = opt.sym, mse = opt.mse, f16_scales = opt.f16_scales,
                  mapping = opt.mapping, importance = opt.importance }
end

-- GGUF storage types as qforge grid specs: what a per-linear `type:` override asks for (and
-- recipes/gguf_target.lua allocates). K types keep their layout (ktype); llama.cpp's legacy
-- 32-element blocks are grid options (Q4_0/Q5_0/Q8_0: its signed-extreme symmetric mapping;
-- Q4_1/Q5_1: min/max), fp16 scales as the blocks store them.
P.GGUF_TYPE_GRIDS = {
  Q4_0 = { bits = 4, group = 32, sym = true, mapping = "llamacpp", f16_scales = true, mse = false },
  Q4_1 = { bits = 4, group = 32, sym = false, mapping = "gptq", f16_scales = true, mse = false },
  Q5_0 = { bits = 5, group = 32, sym = true, mapping = "llamacpp", f16_scales = true, mse = false },
  Q5_1 = { bits = 5, group = 32, sym = false, mapping = "gptq", f16_scales = true, mse = false },
  Q8_0 = { bits = 8, group = 32, sym = true, mapping = "llamacpp", f16_scales = true, mse = false },
  Q2_K = { ktype = "Q2_K" }, Q3_K = { ktype = "Q3_K" }, Q4_K = { ktype = "Q4_K" }, Q5_K = { ktype = "Q5_K" },
  Q6_K = { ktype = "Q6_K" },
}
P.GGUF_TYPE_NAMES = { "Q2_K", "Q3_K", "Q4_0", "Q4_1", "Q4_K", "Q5_0", "Q5_1", "Q5_K", "Q6_K", "Q8_0" }
-- llama-quantize's type for a tensor whose width is not a multiple of 256 under a K type.
P.KQUANT_FALLBACK_TYPE = { Q2_K = "Q4_0", Q3_K = "Q4_0", Q4_K = "Q5_0", Q5_K = "Q5_1", Q6_K = "Q8_0" }

-- The grid spec of GGUF type `name` with importance `importance`, for a linear `cols` wide (nil:
-- any): a K type on a width not a multiple of 256 becomes its fallback. Returns spec, fallback?.
function P.type_grid(name, importance, cols)
  local fallback = false
  if cols and P.KQUANT_FALLBACK_TYPE[name] and cols % 256 ~= 0 then name, fallback = P.KQUANT_FALLBACK_TYPE[name], true end
  local spec = {}
  for k, v in pairs(P.GGUF_TYPE_GRIDS[name]) do spec[k] = v end
  spec.importance = importance or "none"
  return spec, fallback, name
end

-- llama-quantize's fallback for opt.ktype as a grid spec table (nil: no K type).
function P.kquant_fallback(opt)
  local f = P.KQUANT_FALLBACK_TYPE[opt.ktype]
  if not f then return nil end
  return (P.type_grid(f, opt.importance))
end

-- The export options, checked before any work: the format takes the dtype, the grids the run
-- will make can be stored in it (as far as the options tell: `grid` describes them, see
-- P.prepare), and the output's directory is writable. The format rules are the engine's
-- (qf.check_save: the exporter and storage-type tables), not restated here.
function P.check_save(opt, grid)
  grid = grid or {}
  if opt.save == nil then return end
  local dtype = opt.save_dtype or ""
  if opt.save == "" then
    if dtype ~= "" then qf.option_error("save_dtype", "given without save= (nothing is written)") end
    return
  end
  local plan = opt.bits ~= nil and { bits = opt.bits, group = opt.group, sym = opt.sym, f16_scales = opt.f16_scales, mapping = opt.mapping,
    outliers = grid.outliers, allocated = grid.allocated, float_zero = grid.float_zero, transforms = grid.transforms,
    ktype = opt.ktype ~= nil and opt.ktype ~= "none" and opt.ktype or nil } or nil
  local option, msg = qf.check_save{ format = opt.save_format, dtype = dtype ~= "" and dtype or nil, grid = plan }
  if option then qf.option_error(option, msg) end
  -- The output's directory must exist and take a file (the export writes a temporary, then renames).
  local dir = opt.save:match("^(.*)/[^/]*$") or "."
  if dir == "" then dir = "/" end
  local probe = dir .. "/.qforge-write-test-" .. tostring(qf.now()):gsub("%.", "")
  local f = io.open(probe, "w")
  if not f then qf.option_error("save", "cannot write into directory '" .. dir .. "' (missing or not writable)") end
  f:close()
  os.remove(probe)
end

-- The options the model decides (window lengths within its context), checked after loading.
function P.check_model_options(opt, m)
  local ctxlen = m:config().seq_len
  if m:arch().block_kind ~= "llama_moe" then  -- the moe_* options must not be silently ignored
    for k, v in pairs(P.common_options) do
      if k:match("^moe_") and opt[k] ~= nil and opt[k] ~= v then
        qf.option_error(k, string.format("applies to mixture-of-experts models; %s has none", m:arch().name))
      end
    end
  end
  if opt.seqlen ~= nil and opt.seqlen > ctxlen then
    qf.option_error("seqlen", string.format("%d exceeds the model's context length %d", opt.seqlen, ctxlen))
  end
  if opt.eval_seqlen ~= nil and opt.eval_seqlen > ctxlen then
    qf.option_error("eval_seqlen", string.format("%d exceeds the model's context length %d", opt.eval_seqlen, ctxlen))
  end
end

-- ---- per-layer overrides ---------------------------------------------------------------------
-- P.overrides(rules, m, opt) -> a resolved plan, or nil when there are no rules. rules: the
-- `overrides` option string, or a list of tables {re = "..." | block = {1, -1} | block = "2..4",
-- name = {"q", "k"} | "q,k", skip = true, bits =, group =, sym =, mse =, f16_scales =, type =}
-- (type: a GGUF type name, P.GGUF_TYPE_GRIDS, alone: it fixes the grid). The first
-- matching rule decides a linear: skip keeps it in full precision, the keys replace the common
-- grid options for it. A rule that matches no linear, an unknown key, a bad value, a selector
-- out of range are option errors naming the rule (1-based) — raised before any work.
local OVERRIDE_KEYS = { bits = "int", group = "int", sym = "bool", mse = "bool", f16_scales = "bool", type = "type" }

local function override_error(i, text, msg)
  qf.option_error("overrides", string.format("rule %d '%s': %s", i, text, msg))
end

local function parse_value(i, text, key, v)
  local kind = OVERRIDE_KEYS[key]
  if not kind then
    override_error(i, text, "unknown key '" .. key .. "' (bits, group, sym, mse, f16_scales, type)")
  end
  if kind == "type" then
    if type(v) ~= "string" or not P.GGUF_TYPE_GRIDS[v] then
      override_error(i, text, string.format("type expects a GGUF type (%s), got '%s'", table.concat(P.GGUF_TYPE_NAMES, " "), tostring(v)))
    end
    return v
  end
  if type(v) == "string" then
    if kind == "int" then
      local n = tonumber(v)
      if not n or math.type(n) ~= "integer" then n = nil end
      if not n then override_error(i, text, string.format("%s expects an integer, got '%s'", key, v)) end
      return n
    end
    if v == "true" then return true elseif v == "false" then return false end
    override_error(i, text, string.format("%s expects true or false, got '%s'", key, v))
  end
  if (kind == "int" and math.type(v) ~= "integer") or (kind == "bool" and type(v) ~= "boolean") then
    override_error(i, text, string.format("%s expects %s, got %s", key, kind == "int" and "an integer" or "a boolean", tostring(v)))
  end
  return v
end

-- "1,-1" / "2..4" / {1, -1}: a set of 1-based block indices (negative: from the end).
local function parse_blocks(i, text, spec, nb)
  local set, items = {}, {}
  if type(spec) == "table" then items = spec else for it in tostring(spec):gmatch("[^,]+") do items[#items + 1] = it end end
  local function index(v)
    local n = math.tointeger(tonumber(v))
    if not n or n == 0 or n > nb or n < -nb then
      override_error(i, text, string.format("block %s is not in 1..%d or -%d..-1", tostring(v), nb, nb))
    end
    return n < 0 and nb + 1 + n or n
  end
  for _, it in ipairs(items) do
    local a, b = tostring(it):match("^%s*(-?%d+)%s*%.%.%s*(-?%d+)%s*$")
    if a then
      for k = index(a), index(b) do set[k] = true end
    else
      set[index(tostring(it):match("^%s*(.-)%s*$"))] = true
    end
  end
  return set
end

local function parse_names(i, text, spec, m)
  local known, set = {}, {}
  for _, l in ipairs(m:arch().linears) do
    known[l.name] = l.name
    if l.alias and l.alias ~= "" then known[l.alias] = l.name end
  end
  local items = {}
  if type(spec) == "table" then items = spec else for it in tostring(spec):gmatch("[^,%s/]+") do items[#items + 1] = it end end
  for _, n in ipairs(items) do
    if not known[n] then
      override_error(i, text, string.format("no linear '%s' in the %s architecture (%s)", n, m:arch().name, table.concat(m:linear_names(), ", ")))
    end
    set[known[n]] = true
  end
  return set
end

-- One rule from its string form "SELECTOR=k:v,..." or "skip:SELECTOR".
local function parse_rule_string(i, text)
  local r = {}
  local body = text
  if body:match("^skip:") then r.skip = true; body = body:sub(6) end
  local sel, settings = body, nil
  if not r.skip then
    sel, settings = body:match("^(.-)=(.*)$")
    if not sel then override_error(i, text, "expected SELECTOR=key:value,... or skip:SELECTOR") end
  end
  local kind, arg = sel:match("^(%a+):(.*)$")
  if kind == "re" then r.re = arg
  elseif kind == "block" then
    local b, n = arg:match("^([^/]*)/(.*)$")
    r.block = b or arg
    r.name = n
  elseif kind == "name" then r.name = arg
  else override_error(i, text, "selector must start with re:, block: or name:") end
  for kv in (settings or ""):gmatch("[^,]+") do
    local k, v = kv:match("^%s*([%w_]+)%s*:%s*(.-)%s*$")
    if not k then override_error(i, text, "setting '" .. kv .. "' is not key:value") end
    r[k] = v
  end
  r.text = text
  return r
end

function P.overrides(rules, m, opt)
  if rules == nil or rules == "" or (type(rules) == "table" and #rules == 0) then return nil end
  local list = {}
  if type(rules) == "string" then
    local i = 0
    for text in rules:gmatch("[^;]+") do
      text = text:match("^%s*(.-)%s*$")
      if text ~= "" then i = i + 1; list[i] = parse_rule_string(i, text) end
    end
  else
    for i, r in ipairs(rules) do
      local c = {}
      for k, v in pairs(r) do c[k] = v end
      c.text = c.text or string.format("{%s}", (function()
        local parts = {}
        for k, v in pairs(r) do parts[#parts + 1] = k .. "=" .. (type(v) == "table" and table.concat(v, ",") or tostring(v)) end
        table.sort(parts)
        return table.concat(parts, ", ")
      end)())
      list[i] = c
    end
  end
  local nb = m:nblocks()
  local resolved = {}
  for i, r in ipairs(list) do
    local q = { index = i, text = r.text, skip = r.skip == true or r.skip == "true", settings = {} }
    for k, v in pairs(r) do
      if k == "re" then
        if type(v) ~= "string" or v == "" then override_error(i, r.text, "re: needs a regular expression") end
        local ok, err = pcall(qf.regex_search, v, "")
        if not ok then override_error(i, r.text, tostring(err):gsub("^.-regex_search: ", "")) end
        q.re = v
      elseif k == "block" then q.blocks = parse_blocks(i, r.text, v, nb)
      elseif k == "name" then q.names = parse_names(i, r.text, v, m)
      elseif k ~= "skip" and k ~= "text" then
        if q.skip then override_error(i, r.text, "a skip rule takes no settings (got " .. k .. ")") end
        q.settings[k] = parse_value(i, r.text, k, v)
      end
    end
    if not (q.re or q.blocks or q.names) then override_error(i, r.text, "no selector (re, block or name)") end
    if not q.skip and next(q.settings) == nil then override_error(i, r.text, "no settings (bits, group, sym, mse, f16_scales, type) and not skip") end
    if not q.skip then  -- the grid it makes must be valid, and storable where save= writes
      local spec = {}
      if q.settings.type then  -- a GGUF type fixes the whole grid
        for k in pairs(q.settings) do
          if k ~= "type" then override_error(i, r.text, "type:" .. q.settings.type .. " fixes the grid: it takes no other key (got " .. k .. ")") end
        end
        spec = P.type_grid(q.settings.type, opt.importance == "diag_x" and P.GGUF_TYPE_GRIDS[q.settings.type].ktype and "diag" or opt.importance)
        q.type = q.settings.type
      else
        for _, k in ipairs({ "bits", "group", "sym", "mse", "f16_scales", "mapping", "importance" }) do spec[k] = opt[k] end
        for k, v in pairs(q.settings) do spec[k] = v end
      end
      local ok, err = pcall(qf.grid, spec)
      if not ok then override_error(i, r.text, tostring(err):gsub("^.-grid: ", "")) end
      q.spec = spec
      if opt.save and opt.save ~= "" then
        local o2 = {}
        for k, v in pairs(opt) do o2[k] = v end
        for k, v in pairs(spec) do o2[k] = v end
        local ok2, err2 = pcall(P.check_save, o2)
        if not ok2 then override_error(i, r.text, tostring(err2)) end
      end
    end
    resolved[i] = q
  end
  -- Every linear's rule (first match), and every rule must match one.
  local plan, hits = { rules = resolved, of = {} }, {}
  for b = 1, nb do
    plan.of[b] = {}
    for _, name in ipairs(m:linear_names()) do
      for _, q in ipairs(resolved) do
        if (not q.blocks or q.blocks[b]) and (not q.names or q.names[name]) and
           (not q.re or qf.regex_search(q.re, b .. "." .. name)) then
          plan.of[b][name] = q
          hits[q.index] = (hits[q.index] or 0) + 1
          break
        end
      end
    end
  end
  for _, q in ipairs(resolved) do
    if not hits[q.index] then
      override_error(q.index, q.text, "matches no linear (or only linears an earlier rule took)")
    end
  end
  return plan
end

-- "3-bit g32 sym" for progress lines and records.
local function spec_label(spec)
  if spec.ktype then return spec.ktype .. (spec.importance and spec.importance ~= "none" and (" importance-" .. spec.importance) or "") end
  return string.format("%d-bit %s%s%s", spec.bits, spec.group == -1 and "per-channel" or ("g" .. spec.group),
    spec.sym and " sym" or "", spec.mse and " mse" or "")
end

-- Loads the model, tokenizes the calibration text once, and splits its tokens: windows are
-- drawn from [1, split], perplexity is measured on [split+1, n] — never overlapping. The
-- full-precision chain (one more block forward per block) is kept only when opt.finetune needs it,
-- or as `fp_chain` says (a recipe whose ctx.cal only feeds a statistics pass passes false).
-- `grid` describes the grids the recipe will make, for the export checks: {outliers=, allocated=,
-- float_zero=, transforms=}; by default outliers when opt.ratio > 0, allocated when opt.target_bits is set
-- (and opt.alloc is not false); grid.check_model(m), when given, runs the recipe's own checks that
-- need the loaded model. Every option is checked before the calibration work starts.
function P.prepare(opt, fp_chain, grid)
  if fp_chain == nil then fp_chain = opt.finetune == true end
  if opt.finetune ~= nil then P.finetune(opt) end  -- bad finetune options fail before any work
  grid = grid or {}
  if grid.outliers == nil then grid.outliers = (opt.ratio or 0) > 0 end
  if grid.allocated == nil then grid.allocated = opt.target_bits ~= nil and opt.alloc ~= false end
  -- Steps that change the basis (docs/methods.md#quip) leave transforms on every linear: exports of
  -- plain codes and a finetune of scales/zeros (which does not pass through them) are refused now.
  local basis_step
  for name in (opt.pre or "none"):gmatch("[^+,%s]+") do  -- pre=magr+quip: every step, as P.preprocess reads it
    if BASIS_STEPS[name] then basis_step = name end
  end
  if basis_step then
    if grid.transforms == nil then grid.transforms = true end
    if opt.finetune and ((opt.ft_params or ""):find("scales", 1, true) or (opt.ft_params or ""):find("zeros", 1, true)) then
      qf.option_error("ft_params", string.format("pre=%s leaves transforms on the quantized linears; finetuning their scales or zeros is not supported (ft_params=norms or biases)", opt.pre))
    end
  end
  if opt.ktype ~= nil and opt.ktype ~= "none" and (grid.allocated or grid.float_zero) then
    qf.option_error("ktype", string.format("this recipe makes %s grids, not K-quant grids (ktype applies to rtn, gptq, quantease and recipes built on P.grid)",
      grid.allocated and "CVXQ-allocated" or "decoupleQ float-zero"))
  end
  check_grid_options(opt)
  P.check_save(opt, grid)
  local function readable(name, extra)
    local f = io.open(opt[name], "rb")
    if not f then qf.option_error(name, "cannot read '" .. opt[name] .. "'" .. (extra or "")) end
    f:close()
  end
  readable("model")
  readable("calib_text")
  if (opt.wiki_windows or 0) > 0 then readable("wiki_text", " (wiki_windows=0 skips it)") end
  local m = qf.load_model(opt.model)
  P.check_model_options(opt, m)
  if grid.check_model then grid.check_model(m) end  -- the recipe's own checks that need the model's shapes
  local ids = m:tokenizer():encode(qf.read_text(opt.calib_text))
  local split = math.floor(#ids * opt.calib_fraction)
  if split < opt.seqlen then
    qf.option_error("calib_fraction", string.format("the first %g of %s's %d tokens are %d, fewer than one calibration window of seqlen=%d",
      opt.calib_fraction, opt.calib_text, #ids, split, opt.seqlen))
  end
  local L = opt.eval_seqlen > 0 and opt.eval_seqlen or m:config().seq_len
  if #ids - split < L then
    qf.option_error("eval_seqlen", string.format("the held-out tokens [%d, %d] of %s are %d, fewer than one window of %d (lower eval_seqlen or calib_fraction)",
      split + 1, #ids, opt.calib_text, #ids - split, L))
  end
  local ov = P.overrides(opt.overrides, m, opt)
  if ov and grid.allocated then  -- under the CVXQ allocation a rule pins its linears' grid: its bits must be stated
    for _, q in ipairs(ov.rules) do
      if not q.skip and q.settings.bits == nil then
        qf.option_error("overrides", string.format("rule %d '%s': under the CVXQ allocation a rule pins its linears' grid and its bits count in target_bits: give bits (e.g. bits:8)", q.index, q.text))
      end
    end
    require("qforge.cvxq").check_overrides(m, opt, ov)  -- the budget left for the others, before any work
  end
  local pre = P.preprocess(opt)
  local ctx = { model = m, heldout = slice(ids, split + 1, #ids), split = split, ntokens = #ids, ids = ids, overrides = ov, pre = pre }
  -- The model is still full precision: its own evaluation and reference logits come first (a
  -- reference file that does not match is an option error before the calibration work).
  if opt.kld then ctx.references = P.references(ctx, opt) end
  if opt.eval_fp then P.evaluate(ctx, opt, "fp_") end
  ctx.cal = qf.calibration{ model = m, tokens = ids, range = { 1, split }, nsamples = opt.nsamples,
                            seqlen = opt.seqlen, seed = opt.seed, fp_chain = fp_chain }
  CAL_OVERRIDES[ctx.cal] = ov
  CAL_PRE[ctx.cal] = pre
  CAL_OPT[ctx.cal] = opt
  if opt.ktype ~= nil and opt.ktype ~= "none" then CAL_KQUANT[ctx.cal] = P.kquant_fallback(opt) end
  io.stderr:write(string.format("calibration tokens [1, %d] of %d; held-out tokens [%d, %d]\n", split, #ids, split + 1, #ids))
  if ov then
    for _, q in ipairs(ov.rules) do
      io.stderr:write(string.format("override rule %d '%s': %s\n", q.index, q.text, q.skip and "full precision" or spec_label(q.spec)))
    end
  end
  return ctx
end

-- What P.evaluate scores: {name, label, source (token ids or text), options} per evaluation.
local function evaluations(ctx, opt)
  local e = { { name = "heldout", label = "held-out", source = ctx.heldout,
                options = { seqlen = opt.eval_seqlen, protocol = opt.eval_protocol } } }
  if opt.wiki_windows > 0 then
    ctx.wiki = ctx.wiki or qf.read_text(opt.wiki_text)
    e[2] = { name = "wikitext2", label = "WikiText-2", source = ctx.wiki,
             options = { seqlen = opt.eval_seqlen, max_windows = opt.wiki_windows, protocol = opt.eval_protocol } }
  end
  return e
end

-- The full-precision reference logits of every evaluation (kld_topk tokens per position), from
-- ctx.model before it is quantized: computed, or read from opt.fp_logits when a file there was made
-- from the same tokens, protocol, seqlen, windows and topk (else computed and written there:
-- opt.fp_logits).
-- The path of a shared result under opt.cache: cache/<kind>-<16 hex digits>.<ext>, the digits the
-- fingerprint of parts (the model's weights, the tokens, every option the result depends on), so
-- a file there is read only by a run that would compute the same numbers. nil when cache is off.
-- The model's fingerprint (m:fingerprint(), every weight hashed) is taken on each call, so a
-- model changed in between never reuses its earlier key.
function P.cached(opt, kind, ext, m, parts)
  if opt.cache == nil or opt.cache == "" then return nil end
  local strs = {}
  for i, v in ipairs(parts) do strs[i] = tostring(v) end
  local key = qf.fingerprint(m:fingerprint() .. "\n" .. table.concat(strs, "\n")):gsub("^fnv1a64:", "")
  qf.make_dirs(opt.cache)
  return string.format("%s/%s-%s.%s", opt.cache, kind, key, ext)
end

function P.references(ctx, opt)
  local m, refs = ctx.model, {}
  for _, e in ipairs(evaluations(ctx, opt)) do
    local o = { seqlen = e.options.seqlen, max_windows = e.options.max_windows, protocol = e.options.protocol, topk = opt.kld_topk }
    local path = opt.fp_logits ~= "" and (opt.fp_logits .. "/" .. e.name .. ".qfref") or nil
    if not path and opt.cache ~= "" then
      local plan = m:eval_plan(e.source, e.options)
      path = P.cached(opt, "fp_logits-" .. e.name, "qfref", m, { plan.protocol_name, plan.seqlen, plan.windows, plan.positions,
                                                                 plan.tokens, opt.kld_topk })
    end
    local f = path and io.open(path, "rb")
    if f then
      f:close()
      local r, plan = qf.load_reference(path), m:eval_plan(e.source, e.options)
      local i = r:info()
      local want_k = opt.kld_topk >= i.vocab and 0 or opt.kld_topk
      for _, k in ipairs({ "protocol_name", "seqlen", "windows", "positions", "tokens" }) do
        if i[k] ~= plan[k] then
          qf.option_error("fp_logits", string.format("%s was made with %s %s, this run evaluates %s (remove it or use another directory)",
            path, k, tostring(i[k]), tostring(plan[k])))
        end
      end
      if i.topk ~= want_k then
        qf.option_error("fp_logits", string.format("%s holds %s, this run asks kld_topk=%d", path,
          i.topk == 0 and "full distributions (kld_topk=0)" or ("the top " .. i.topk .. " tokens"), opt.kld_topk))
      end
      io.stderr:write(string.format("%s reference logits: %s (%d positions, %s)\n", e.label, path, i.positions,
        i.topk == 0 and "full distributions" or ("top-" .. i.topk)))
      refs[e.name] = r
    else
      local t = qf.now()
      refs[e.name] = m:reference_logits(e.source, o)
      if path then
        qf.make_dirs(path:match("^(.*)/[^/]*$") or ".")
        refs[e.name]:save(path)
      end
      local i = refs[e.name]:info()
      io.stderr:write(string.format("%s reference logits: %d positions, %s of %d, %.1f s%s\n", e.label, i.positions,
        i.topk == 0 and "full distributions" or ("top-" .. i.topk), i.vocab, qf.now() - t, path and (" -> " .. path) or ""))
    end
  end
  return refs
end

-- A fresh calibration over the same windows as ctx.cal (same ids, range, seed): for a second
-- sequential pass after a statistics pass.
function P.calibration(ctx, opt)
  local cal = qf.calibration{ model = ctx.model, tokens = ctx.ids, range = { 1, ctx.split }, nsamples = opt.nsamples,
                              seqlen = opt.seqlen, seed = opt.seed, fp_chain = opt.finetune == true }
  CAL_OVERRIDES[cal] = ctx.overrides
  CAL_PRE[cal] = ctx.pre
  CAL_OPT[cal] = opt
  if opt.ktype ~= nil and opt.ktype ~= "none" then CAL_KQUANT[cal] = P.kquant_fallback(opt) end
  return cal
end

-- Runs cal through every block without changing the model: the full-precision Σ, mean input μ
-- and token count of every site of every block, stats[b][site] = {sigma=, mu=, tokens=}.
-- Progress (block i/N, seconds, ETA) goes to stderr and the run log ("fp_statistics").
function P.fp_statistics(cal)
  local stats, nb, t0 = {}, cal:nblocks(), qf.now()
  for b = 1, nb do
    stats[b] = cal:capture()
    cal:advance()
    local el = qf.now() - t0
    local eta = el / b * (nb - b)
    io.stderr:write(string.format("full-precision statistics: block %d/%d  elapsed %.1fs  ETA %.1fs\n", b, nb, el, eta))
    qf.log{ event = "fp_statistics", block = b, nblocks = nb, seconds = el, eta = eta }
  end
  return stats
end

-- ---- Block checkpoints (checkpoint=DIR; docs/api/calibration.md#block-checkpoints) -------------------
-- A Lua value as Lua source that load() reads back exactly: integers in decimal, floats in
-- hexadecimal (%a: every bit), table keys sorted (the same value, the same text). `loose`: a
-- function or userdata becomes its type name (for fingerprints); otherwise it is an error.
local function serialize(v, where, loose)
  local t = type(v)
  if t == "number" then
    if math.type(v) == "integer" then return string.format("%d", v) end
    if v ~= v then return "(0/0)" end
    if v == math.huge then return "(1/0)" elseif v == -math.huge then return "(-1/0)" end
    return string.format("%a", v)
  elseif t == "string" then
    return string.format("%q", v)
  elseif t == "boolean" then
    return tostring(v)
  elseif t == "table" then
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = k end
    table.sort(keys, function(a, b)
      local ta, tb = type(a), type(b)
      if ta ~= tb then return ta < tb end
      if ta == "number" or ta == "string" then return a < b end
      return tostring(a) < tostring(b)
    end)
    local parts = {}
    for i, k in ipairs(keys) do
      parts[i] = "[" .. serialize(k, where, loose) .. "]=" .. serialize(v[k], where .. "." .. tostring(k), loose)
    end
    return "{" .. table.concat(parts, ",") .. "}"
  elseif loose then
    return "<" .. t .. ">"
  end
  error(string.format("checkpoint: %s is a %s (a checkpoint holds numbers, strings, booleans and tables)", where, t), 0)
end

local function write_atomic(path, text)
  local tmp = path .. ".tmp"
  local f, err = io.open(tmp, "wb")
  if not f then error("checkpoint: cannot write '" .. tmp .. "': " .. tostring(err), 0) end
  f:write(text)
  f:close()
  local ok, rerr = os.rename(tmp, path)
  if not ok then error("checkpoint: cannot rename '" .. tmp .. "' to '" .. path .. "': " .. tostring(rerr), 0) end
end

local function block_file(dir, b) return string.format("%s/block-%04d.qforge", dir, b) end
local function cal_file(dir, b) return string.format("%s/calibration-%04d.safetensors", dir, b) end

-- The checkpoint of this quantize_model call, or nil when checkpoint= is off. Its directory is
-- named by the fingerprint of everything the run's state depends on: the recipe's source, the
-- binary's commit (pipeline.lua is compiled in), the seed, every option but checkpoint, the data
-- options of this call (functions are the recipe's: its fingerprint covers them), the model's
-- weights as quantize_model finds them, the calibration windows, and which quantize_model call of
-- the run this is. A resume of the same command finds the same directory; any change, a fresh one.
local function checkpoint_open(m, cal, opts)
  local opt = CAL_OPT[cal]
  local dir = opts.checkpoint
  if dir == nil then dir = opt and opt.checkpoint or "" end
  if dir == false or dir == "" then return nil end
  CHECKPOINT.used = true
  CHECKPOINT.calls = CHECKPOINT.calls + 1
  if cal:block() ~= 1 then
    error(string.format("quantize_model: checkpoint=%s needs the calibration at block 1, it is at block %d", dir, cal:block()), 0)
  end
  local o = {}
  for k, v in pairs(opt or {}) do if k ~= "checkpoint" then o[k] = v end end
  local data = {}
  for k, v in pairs(opts) do if k ~= "checkpoint" and type(v) ~= "function" then data[k] = v end end
  local key = qf.fingerprint(table.concat({ "qforge block checkpoint 1", qf.recipe_fingerprint() or "", qf.version().commit,
    tostring(qf.seed()), serialize(o, "options", true), serialize(data, "opts", true), m:fingerprint(), cal:fingerprint(),
    tostring(CHECKPOINT.calls), tostring(cal:nblocks()) }, "\n")):gsub("^fnv1a64:", "")
  local ck = { root = dir, dir = dir .. "/" .. key, key = key }
  qf.make_dirs(ck.dir)
  return ck
end

-- The state a killed run left in ck.dir (nil when none): blocks 1..done restored into m, the
-- calibration moved to block done+1. A damaged checkpoint is an error naming its file.
local function checkpoint_resume(ck, m, cal)
  local path = ck.dir .. "/state.lua"
  local f = io.open(path, "rb")
  if not f then return nil end
  local text = f:read("a")
  f:close()
  local where = "checkpoint '" .. path .. "'"
  local chunk = load(text, "=" .. path, "t", {})
  local ok, st = false, nil
  if chunk then ok, st = pcall(chunk) end
  local nb = cal:nblocks()
  if not ok or type(st) ~= "table" or st.key ~= ck.key or math.type(st.done) ~= "integer" or st.done < 1 or st.done > nb
     or st.nblocks ~= nb or type(st.layers) ~= "table" then
    error(where .. ": unreadable or not this run's (remove " .. ck.dir .. " to start over)", 0)
  end
  for b = 1, st.done do m:load_blocks(block_file(ck.dir, b)) end
  cal:load_state(cal_file(ck.dir, st.done))
  return st
end

local function checkpoint_save(ck, m, cal, b, st)
  m:save_blocks(block_file(ck.dir, b), b, b)
  cal:save_state(cal_file(ck.dir, b))
  st.key, st.done, st.nblocks = ck.key, b, cal:nblocks()
  write_atomic(ck.dir .. "/state.lua", "return " .. serialize(st, "state") .. "\n")
  if b > 1 then os.remove(cal_file(ck.dir, b - 1)) end  -- state.lua names the new one now
end

-- After a complete quantize_model: the checkpoint stays until the run ends ok (a failure in the
-- evaluation resumes with every block done), then the runner removes it.
local function checkpoint_finish(ck, nb)
  for b = 1, nb do qf.remove_on_success(block_file(ck.dir, b)) end
  qf.remove_on_success(cal_file(ck.dir, nb))
  qf.remove_on_success(ck.dir .. "/state.lua")
  qf.remove_on_success(ck.dir)
  qf.remove_on_success(ck.root)  -- removed only when empty
end

-- Quantizes every linear, block by block. solve{block=, name=, W=, sigma=, mu=, tokens=} (mu: the
-- mean input) returns a QLinear (or a Tensor Ŵ) and optionally an info table; the weight is replaced
-- by Ŵ. W is a copy of the weight: a solve may edit it, the objective is always measured against
-- the original. Prints and logs block i/N, layer, objective, seconds and ETA; returns
-- {layers = {...}, objective = Σ, seconds}.
-- opts.finetune = {params=, lr=, epochs=, ...} (cal:finetune's options): after a block's linears are
-- quantized, train its floats against its full-precision outputs (decoupleQ's block stage); the
-- per-block losses are recorded as "finetune" and returned as .finetune.
-- opts.cross = true: each block's statistics are captured with cal:capture(nil, {cross = true}) at its
-- start and the problem carries cross and sigma_fp (Qronos, GPFQ; every registry solve then reports
-- the mismatched objective ‖WX − ŴX̃‖², recorded per layer as `mismatched`; docs/methods.md#qronos).
-- opts.pre: preprocessing steps (P.preprocess; default: what P.prepare stored for cal).
-- opts.sigma_shrink = α > 0: the solve (and the refit) see qf.shrink_sigma(Σ, α); the objective
-- recorded is still measured on Σ. opts.refit_scales: each QLinear a solve returns gets
-- qf.refit_scales (its info gains `refit`).
-- opts.checkpoint = DIR | false (default: the recipe's checkpoint= option): after every block the
-- finished blocks, the calibration's state and the records so far are saved under DIR/<fingerprint>/;
-- the same command, killed or failed, resumes after the last saved block with bit-identical results
-- (docs/api/calibration.md#block-checkpoints). State a recipe keeps in its own Lua variables is not saved.
-- opts.before_block(b): called at the start of block b, before its first capture — the block's
-- weights may be changed there (function-preservingly: AWQ's per-channel scales folded into the
-- norms and linears, bindings/lua/awq.lua, methods.md#awq), so its Σ, its objectives and its solves
-- see the changed weights; the calibration's inputs are block b's, from the quantized prefix.
--
-- ETA: remaining solves × the mean solve time so far, plus the remaining per-block work outside the
-- solves (capture, advance, finetune: "overhead"), estimated per block from the finished blocks —
-- in block 1 as 1.5 times its capture (the advance is one more forward of the block, without
-- the Σ accumulation; measured at a third to a half of a capture).
function P.quantize_model(m, cal, solve, opts)
  opts = opts or {}
  local ov = opts.overrides or CAL_OVERRIDES[cal]
  local pre = opts.pre or CAL_PRE[cal]  -- preprocessing steps (P.preprocess)
  local kfallback = opts.kquant_fallback or CAL_KQUANT[cal]  -- the grid of linears too narrow for K super-blocks
  -- Names, sites and true-sequential stages come from the architecture table (m:arch()).
  local arch = m:arch()
  local SITES = arch.site_of
  local groups = opts.true_sequential and arch.stage_groups or { m:linear_names() }
  local nb, t0 = cal:nblocks(), qf.now()
  local total, nlayers = 0, nb * #arch.linears
  local layers, finetunes = {}, {}
  -- Mixture of experts (docs/methods.md#moe-calibration): the options from the recipe's, else the defaults.
  local copt = CAL_OPT[cal] or {}
  local moe = arch.block_kind == "llama_moe" and {
    calibrate = copt.moe_calibrate or P.common_options.moe_calibrate,
    min_tokens = copt.moe_min_tokens or P.common_options.moe_min_tokens,
    fallback = copt.moe_fallback or P.common_options.moe_fallback,
    router = copt.moe_router or P.common_options.moe_router,
    tokens = {}, fallbacks = {} } or nil
  local starved = {}  -- expert (0-based) -> routed tokens, for the current capture
  local function capture(sites)
    local copts = opts.cross and { cross = true } or nil
    if moe and moe.calibrate == "all" then copts = { all_experts = true, cross = opts.cross } end
    local st = cal:capture(sites, copts)
    if not moe then return st end
    starved = {}
    for key, v in pairs(st) do
      local e = key:match("^experts%.(%d+)%.ffn_")
      if e and v.tokens < moe.min_tokens then starved[tonumber(e)] = v.tokens end
    end
    if next(starved) and moe.fallback == "all_tokens" then  -- those experts' Σ from every token through them
      local again = {}
      for key in pairs(st) do
        local e = key:match("^experts%.(%d+)%.ffn_")
        if e and starved[tonumber(e)] then again[#again + 1] = key end
      end
      table.sort(again)
      for k, v in pairs(cal:capture(again, { all_experts = true })) do st[k] = v end
    end
    return st
  end
  local solve_sum, overhead_done = 0, 0  -- solve seconds so far; overhead of the finished blocks
  local ck = checkpoint_open(m, cal, opts)
  local first = 1
  if ck then
    local st = checkpoint_resume(ck, m, cal)
    if st then
      layers, finetunes, total, solve_sum, overhead_done = st.layers, st.finetunes or {}, st.total, st.solve_sum, st.overhead_done
      t0 = qf.now() - st.elapsed  -- elapsed, ETA and the seconds recorded count the earlier attempts
      first = st.done + 1
      if #finetunes > 0 then qf.record("finetune", finetunes) end
      if moe then  -- the experts' token counts and fallbacks of the blocks done
        moe.tokens, moe.fallbacks = st.moe_tokens or {}, st.moe_fallbacks or {}
        if #moe.tokens > 0 then qf.record("moe_tokens", moe.tokens) end
        if #moe.fallbacks > 0 then qf.record("moe_fallbacks", moe.fallbacks) end
      end
      io.stderr:write(string.format("checkpoint %s: resuming after block %d/%d (%d layers, %.1f s of earlier work)\n",
        ck.dir, st.done, nb, #layers, st.elapsed))
      qf.log{ event = "resume", checkpoint = ck.dir, block = st.done, nblocks = nb, seconds_before = st.elapsed }
    else
      io.stderr:write(string.format("checkpoint %s: a new run (state saved after every block)\n", ck.dir))
    end
  end
  for b = first, nb do
    if opts.before_block then opts.before_block(b) end  -- e.g. AWQ's scales (methods.md#awq), before Σ is taken
    local tc = qf.now()
    local stats = capture(nil)
    local capture_seconds = qf.now() - tc
    qf.log{ event = "block_capture", block = b, nblocks = nb, seconds = capture_seconds }
    if moe then  -- tokens per expert, and the experts that get the fallback
      local counts, names = {}, {}
      for e = 0, m:config().n_experts - 1 do counts[e + 1] = starved[e] or stats["experts." .. e .. ".ffn_in"].tokens end  -- routed, before a fallback
      local sorted = {}
      for i, v in ipairs(counts) do sorted[i] = v end
      table.sort(sorted)
      for e = 0, #counts - 1 do
        if starved[e] then names[#names + 1] = string.format("%d (%d tokens)", e, starved[e]) end
      end
      moe.tokens[#moe.tokens + 1] = { block = b, tokens = counts, calibrate = moe.calibrate }
      io.stderr:write(string.format("block %d/%d experts: %s tokens per expert min %d, median %d, max %d%s\n", b, nb,
        moe.calibrate == "all" and "all" or "routed", sorted[1], sorted[(#sorted + 1) // 2], sorted[#sorted],
        #names > 0 and string.format("; under moe_min_tokens=%d: experts %s -> moe_fallback=%s", moe.min_tokens, table.concat(names, ", "), moe.fallback) or ""))
      qf.log{ event = "moe_tokens", block = b, nblocks = nb, tokens = counts, starved = #names }
      qf.record("moe_tokens", moe.tokens)
    end
    for gi, group in ipairs(groups) do
      if gi > 1 then  -- true-sequential: Σ of this sub-group sees the quantized earlier ones
        local sites, seen = {}, {}
        for _, name in ipairs(group) do
          if not seen[SITES[name]] then sites[#sites + 1] = SITES[name]; seen[SITES[name]] = true end
        end
        -- cross: X from the block's full-precision copy, X̃ from the partly quantized block
        stats = capture(sites)
      end
      for _, name in ipairs(group) do
        local rule = ov and ov.of[b][name]
        local expert = moe and tonumber(name:match("^experts%.(%d+)%."))
        local moe_fb = expert and starved[expert] and moe.fallback or nil
        if moe_fb then  -- named in the progress, the log and results.json's moe_fallbacks
          moe.fallbacks[#moe.fallbacks + 1] = { block = b, layer = name, expert = expert, tokens = starved[expert], fallback = moe_fb }
          qf.record("moe_fallbacks", moe.fallbacks)
        end
        if not rule and (moe_fb == "fp" or (moe and (name == "router" or name == "shared_gate") and moe.router == "fp")) then
          local why = moe_fb and string.format("expert %d had %d tokens < moe_min_tokens=%d, moe_fallback=fp", expert, starved[expert], moe.min_tokens)
                      or string.format("the %s (moe_router=fp)", name == "router" and "router" or "shared expert's gate")
          layers[#layers + 1] = { block = b, layer = name, objective = 0, relative = 0, seconds = 0, outliers = 0, skipped = true,
                                  reason = why }
          io.stderr:write(string.format("block %d/%d %-5s skipped: full precision (%s)\n", b, nb, name, why))
          qf.log{ event = "layer", block = b, nblocks = nb, layer = name, skipped = true, reason = why }
          goto continue
        end
        if rule and rule.skip then  -- stays in full precision
          layers[#layers + 1] = { block = b, layer = name, objective = 0, relative = 0, seconds = 0, outliers = 0,
                                  skipped = true, rule = rule.index }
          io.stderr:write(string.format("block %d/%d %-5s skipped: full precision (override rule %d '%s')\n", b, nb, name, rule.index, rule.text))
          qf.log{ event = "layer", block = b, nblocks = nb, layer = name, skipped = true, rule = rule.index }
          goto continue
        end
        do
        local W = m:weight(b, name):clone()  -- the original: solve gets its own copy
        local st = stats[SITES[name]]
        local tl = qf.now()
        local spec = rule and rule.spec
        local fallback = false
        if not spec and kfallback and W:size(2) % 256 ~= 0 then spec, fallback = kfallback, true end
        local tname
        if rule and rule.type then spec, fallback, tname = P.type_grid(rule.type, spec.importance, W:size(2)) end
        if rule and not rule.type and REGISTRY_SOLVES[solve] then  -- the solver's own grid (e.g. decoupleQ's float zero) with the rule's keys
          spec = {}
          for k, v in pairs(REGISTRY_SOLVES[solve]) do spec[k] = v end
          for k, v in pairs(rule.settings) do spec[k] = v end
        end
        local shrink = (opts.sigma_shrink or 0) > 0
        local sigma = shrink and qf.shrink_sigma(st.sigma, opts.sigma_shrink) or st.sigma
        local problem = { block = b, name = name, W = W:clone(), sigma = sigma, mu = st.mu, tokens = st.tokens, site = SITES[name],
                          cross = st.cross, sigma_fp = st.sigma_fp }
        local pre_info
        if pre then  -- docs/methods.md#preprocess: each step on the problem the previous one left
          pre_info = {}
          local pg = spec and qf.grid(spec) or REGISTRY_SOLVES[solve] and qf.grid(REGISTRY_SOLVES[solve]) or opts.grid
          if pg == nil then error("quantize_model: preprocessing needs the grid: pass opts.grid (a grid spec) for a recipe's own solve", 0) end
          for _, st in ipairs(pre) do
            local pinfo
            problem, pinfo = qf.preprocess(st.name, problem, pg, st.options)
            pre_info[#pre_info + 1] = pinfo
          end
        end
        local q, info
        if moe_fb == "rtn" then  -- too few tokens for a Σ: round to nearest on the grid the solve would use
          local g = spec and qf.grid(spec) or REGISTRY_SOLVES[solve] and qf.grid(REGISTRY_SOLVES[solve]) or opts.grid and qf.grid(opts.grid)
          if g == nil then error("quantize_model: moe_fallback=rtn needs the grid: pass opts.grid (a grid spec) for a recipe's own solve", 0) end
          q, info = qf.rtn(problem.W, g), { moe_fallback = "rtn" }
        else
          q, info = solve(problem, spec and qf.grid(spec) or nil)
        end
        if pre and (problem.input or problem.output) and not qf.is_tensor(q) then
          local qi, qo = q:transforms()
          if (problem.input and not qi) or (problem.output and not qo) then  -- a recipe's own solve: put them on
            q = q:with_transforms(not qi and problem.input or nil, not qo and problem.output or nil)
          end
        elseif pre and (problem.input or problem.output) then
          error(string.format("quantize_model: block %d linear '%s': preprocessing changed the basis but solve returned a Tensor (return a QLinear so the transforms can be kept)", b, name), 0)
        end
        if pre_info then info = info or {}; info.pre = pre_info end
        if opts.refit_scales and pre and (problem.input or problem.output) then
          error(string.format("quantize_model: block %d linear '%s': refit_scales works in the weight's own basis; it cannot follow a preprocessing step that changes the basis (%s)",
            b, name, opts.pre_label or "pre"), 0)
        end
        if not (qf.is_tensor(q) or (type(q) == "userdata" and tostring(q):match("^qforge%.QLinear"))) then
          error(string.format("quantize_model: solve for block %d linear '%s' returned %s, expected a QLinear or a Tensor",
            b, name, q == nil and "nothing" or type(q) == "userdata" and tostring(q) or type(q)), 0)
        end
        if kfallback and not rule and not qf.is_tensor(q) then  -- ktype must not be silently ignored by a solve
          local g = q:grid():spec()
          if fallback and g.ktype or not fallback and g.ktype == nil then
            error(string.format("quantize_model: block %d linear '%s' (%d columns) needs %s, but solve returned a %s grid: a solve must quantize on the grid it is passed (solve(l, grid)) or on P.grid(opt)",
              b, name, W:size(2), fallback and spec_label(spec) or "a K-quant grid", g.ktype or "uniform"), 0)
          end
        end
        if rule then  -- the override's grid must be the one used: never silently ignored
          local g = qf.is_tensor(q) and nil or q:grid():spec()
          if not g or g.ktype ~= spec.ktype or not spec.ktype and (g.bits ~= spec.bits or g.group ~= spec.group or (g.sym or false) ~= (spec.sym or false)) then
            error(string.format("quantize_model: override rule %d '%s' asks %s for block %d linear '%s', but solve returned %s: a solve must quantize on the grid it is passed (solve(l, grid))",
              rule.index, rule.text, spec_label(spec), b, name, g and spec_label(g) or "a Tensor"), 0)
          end
        end
        local obj, rel
        if opts.refit_scales and not qf.is_tensor(q) then  -- methods.md#refit-scales
          local rinfo
          q, rinfo = qf.refit_scales(W, sigma, q)
          info = info or {}
          info.refit = rinfo
        end
        if opts.refit_scales or shrink or pre then  -- measured on the layer's own Σ and original W
          obj, rel = qf.objective(W, qf.is_tensor(q) and q or q:dequantize(), st.sigma)
        elseif REGISTRY_SOLVES[solve] and moe_fb ~= "rtn" then
          obj, rel = info.objective, info.relative
        else  -- a recipe's own solve: measured here, against the original W
          obj, rel = qf.objective(W, qf.is_tensor(q) and q or q:dequantize(), st.sigma)
        end
        m:set_linear(b, name, q)  -- keeps a QLinear's codes for exports that store them
        local secs = qf.now() - tl
        total = total + obj
        solve_sum = solve_sum + secs
        layers[#layers + 1] = { block = b, layer = name, objective = obj, relative = rel, seconds = secs,
                                outliers = (not qf.is_tensor(q)) and q:nnz() or 0,
                                grid = tname or (rule or fallback) and spec_label(spec) or nil, rule = rule and rule.index or nil,
                                fallback = fallback or nil, mismatched = info and info.mismatched or nil,
                                tokens = expert and (starved[expert] or st.tokens) or nil, moe_fallback = moe_fb }
        local elapsed = qf.now() - t0
        local overhead = elapsed - solve_sum                      -- all non-solve time so far
        local per_block = b == 1 and 1.5 * overhead or overhead_done / (b - 1)
        local left_here = math.max(0, per_block - (overhead - overhead_done))
        local eta = (nlayers - #layers) * solve_sum / #layers + left_here + (nb - b) * per_block
        io.stderr:write(string.format("block %d/%d %-5s objective %.5g (rel %.3e)  %.2fs  elapsed %.1fs  ETA %.1fs%s%s\n",
          b, nb, name, obj, rel, secs, elapsed, eta, rule and string.format("  [%s: override rule %d%s]", tname or spec_label(spec), rule.index,
              fallback and string.format(", %s's fallback for %d columns", rule.type, W:size(2)) or "")
            or fallback and string.format("  [%s: K-quant fallback, %d columns]", spec_label(spec), W:size(2)) or "",
          moe_fb and string.format("  [expert %d: %d routed tokens < moe_min_tokens=%d: %s]", expert, starved[expert], moe.min_tokens,
            moe_fb == "all_tokens" and "Σ from all tokens" or "round to nearest") or ""))
        qf.log{ event = "layer", block = b, nblocks = nb, layer = name, objective = obj, relative = rel, moe_fallback = moe_fb,
                seconds = secs, elapsed = elapsed, eta = eta, info = info, solve_seconds = solve_sum,
                overhead_seconds = overhead, overhead_done = overhead_done, block_overhead = per_block,
                capture_seconds = capture_seconds }
        end
        ::continue::
      end
    end
    if opts.finetune then
      local ft = cal:finetune(opts.finetune)
      finetunes[#finetunes + 1] = { block = b, losses = ft.losses, after = ft.after, seconds = ft.seconds }
      qf.record("finetune", finetunes)
    end
    cal:advance()
    if ck then
      local tk = qf.now()
      checkpoint_save(ck, m, cal, b, { layers = layers, finetunes = finetunes, total = total, solve_sum = solve_sum,
                                       overhead_done = (qf.now() - t0) - solve_sum, elapsed = qf.now() - t0,
                                       moe_tokens = moe and moe.tokens, moe_fallbacks = moe and moe.fallbacks })
      qf.log{ event = "checkpoint", block = b, nblocks = nb, seconds = qf.now() - tk }
    end
    overhead_done = (qf.now() - t0) - solve_sum
  end
  if ck then checkpoint_finish(ck, nb) end
  return { layers = layers, objective = total, seconds = qf.now() - t0, finetune = opts.finetune and finetunes or nil }
end

-- Perplexity on the held-out tokens and on the first wiki_windows windows of WikiText-2, with
-- the KL divergence from the full-precision model when ctx.references holds its logits; printed
-- with their protocols and recorded (docs/results_schema.md).
function P.evaluate(ctx, opt, prefix)
  prefix = prefix or ""
  if prefix == "" and (opt.checkpoint or "") ~= "" and not CHECKPOINT.used then  -- never silently ignored
    qf.option_error("checkpoint", "this recipe never ran P.quantize_model, the loop that writes block checkpoints")
  end
  local m = ctx.model
  local st = m:storage()
  print(string.format("%sstorage %.4f bits/weight over the block linears (codes %.4f + scales/zeros %.4f + side info %.4f + outliers %.4f + unquantized %.4f [%s]), %.2f%% pruned",
    prefix, st.bits_per_weight, st.codes, st.params, st.side, st.outliers, st.unquantized, st.unquantized_dtype, 100 * st.pruned_fraction))
  qf.record(prefix .. "storage", st)
  if ctx.overrides then  -- per linear, so the mixed precision the rules made is visible
    local per = m:storage{ per_linear = true }.linears
    local rows = {}
    for i, l in ipairs(per) do
      local rule = ctx.overrides.of[l.block][l.name]
      rows[i] = { block = l.block, layer = l.name, bits_per_weight = l.bits_per_weight, quantized = l.quantized,
                  rule = rule and rule.index or nil }
    end
    qf.record(prefix .. "storage_linears", rows)
  end
  for _, e in ipairs(evaluations(ctx, opt)) do
    local o = { seqlen = e.options.seqlen, max_windows = e.options.max_windows, protocol = e.options.protocol,
                reference = prefix ~= "fp_" and ctx.references and ctx.references[e.name] or nil }
    local r = m:perplexity(e.source, o)
    local key = e.name == "heldout" and "heldout" or "wikitext2"
    if e.name == "heldout" then
      local name = opt.calib_text:match("([^/]+)$")
      print(string.format("%sheld-out ppl %.4f  [%s tokens %d..%d; %s]", prefix, r.ppl, name, ctx.split + 1, ctx.ntokens, r.protocol))
      qf.record(prefix .. "protocol_heldout", string.format("held-out tokens %d..%d of %s; %s",
        ctx.split + 1, ctx.ntokens, opt.calib_text, r.protocol))
    else
      print(string.format("%sWikiText-2 ppl %.4f  [%s]", prefix, r.ppl, r.protocol))
      qf.record(prefix .. "protocol_wikitext2", r.protocol)
    end
    qf.record(prefix .. "ppl_" .. key, r.ppl)
    if r.kld then
      local k = r.kld
      print(string.format("%s%s KLD %.6f ± %.6f  median %.6f  p99 %.6f  max %.4f  same top %.2f%%  Δp %.3f%%  (FP ppl %.4f, top-%d)",
        prefix, e.label, k.mean, k.mean_stderr, k.median, k.p99, k.max, 100 * k.same_top, 100 * k.dp_mean, k.ppl_reference, k.topk))
      qf.record(prefix .. "kld_" .. key, k)
    end
  end
  if prefix == "" and opt.save ~= "" then
    local t = qf.now()
    m:save(opt.save, { format = opt.save_format, dtype = opt.save_dtype ~= "" and opt.save_dtype or nil })
    print(string.format("saved %s (%s) in %.2f s", opt.save, opt.save_format, qf.now() - t))
    qf.record("saved", { path = opt.save, format = opt.save_format, dtype = opt.save_dtype })
  end
end

-- Records a quantize_model summary (total objective, per-layer table).
function P.record_summary(summary)
  qf.record("objective_total", summary.objective)
  qf.record("quantize_seconds", summary.seconds)
  qf.record("layers", summary.layers)
  print(string.format("summed layer objective %.6g over %d layers, %.1f s", summary.objective, #summary.layers, summary.seconds))
end

return P
