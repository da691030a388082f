-- qforge.pipeline — the sequential layer-wise quantization loop and the standard
-- calibrate/evaluate protocol, in plain Lua over the engine primitives.
--   local P = require("qforge.pipeline")
-- Compiled into the qforge binary, so a run directory's recipe copy reruns as is.
local P = {}

-- Options every layer-wise recipe shares (merge with the recipe's own, then qf.options).
P.common_options = {
  model = "../shared/models/stories260K",
  bits = 4, group = -1, sym = false, mse = false,
  calib_text = "../shared/data/tinystories_head.txt",
  calib_fraction = 0.5,   -- calibration windows come from the first fraction of the text's tokens
  nsamples = 128, seqlen = 256,
  eval_seqlen = 512,      -- perplexity on the remaining tokens of calib_text
  wiki_text = "../shared/data/wikitext2_test.txt", wiki_windows = 40,
  true_sequential = false,
  f16_scales = false,     -- fp16-exact scales: exports to GGUF Q4_0/Q4_1/Q8_0 and GPTQ lose nothing
  save = "", save_format = "qforge", save_dtype = "",  -- write the quantized model (m:save) when save is set
}

P.common_help = {
  calib_fraction = "calibration draws from the first fraction of the text's tokens; perplexity is measured on the rest",
  nsamples = "calibration windows", seqlen = "calibration window length (tokens)",
  wiki_windows = "WikiText-2 windows to evaluate (0: skip)",
  true_sequential = "re-collect Σ after each sub-group q/k/v -> o -> gate/up -> down",
  f16_scales = "round grid scales to fp16 (asym: so scale*zero is fp16 too): exact GGUF Q4_0/Q4_1/Q8_0 and GPTQ exports",
  save = "write the quantized model here after evaluation (empty: don't)",
  save_format = "qforge | gguf | gptq | hf", save_dtype = "gguf: F32 F16 Q8_0 Q4_0 Q4_1; hf: F32 F16 BF16",
}

function P.options(own, help)
  local d, h = {}, {}
  for k, v in pairs(P.common_options) do d[k] = v end
  for k, v in pairs(own or {}) do d[k] = v end
  for k, v in pairs(P.common_help) do h[k] = v end
  for k, v in pairs(help or {}) do h[k] = v end
  return qf.options(d, h)
end

-- The block-finetune options (decoupleQ §7 block stage) a recipe offers, merged into its own
-- option and help tables; a recipe's own value of any of them (e.g. finetune = true, ft_lr = 1e-3)
-- is its default. P.finetune(opt) turns them into quantize_model's `finetune` table (nil when off).
local FT = { finetune = false, ft_params = "scales,zeros,norms", ft_lr = 1e-5, ft_epochs = 4, ft_batch = 1 }
local FT_HELP = {
  finetune = "after each block: Adam on its floats against the full-precision block output (decoupleQ §7)",
  ft_params = "finetune parameter groups: scales,zeros,norms,biases", ft_lr = "finetune learning rate",
  ft_epochs = "finetune epochs over the calibration windows", ft_batch = "finetune windows per Adam step",
}
function P.finetune_options(own, help)
  own, help = own or {}, help or {}
  for k, v in pairs(FT) do if own[k] == nil then own[k] = v end end
  for k, v in pairs(FT_HELP) do if help[k] == nil then help[k] = v end end
  return own, help
end

-- Checked here, before any calibration work, so a bad option fails the run at once.
local FT_GROUPS = { scales = true, zeros = true, norms = true, biases = true }
function P.finetune(opt)
  if not opt.finetune then return nil end
  local params = {}
  for p in opt.ft_params:gmatch("[^,%s]+") do
    if not FT_GROUPS[p] then
      error("option 'ft_params': unknown parameter group '" .. p .. "' (scales, zeros, norms, biases)", 0)
    end
    params[#params + 1] = p
  end
  if #params == 0 then error("option 'ft_params' is empty (scales, zeros, norms, biases)", 0) end
  if not (opt.ft_lr >= 0 and opt.ft_lr < math.huge) then error("option 'ft_lr' must be a finite number >= 0, got " .. opt.ft_lr, 0) end
  if opt.ft_epochs < 1 or opt.ft_epochs % 1 ~= 0 then error("option 'ft_epochs' must be an integer >= 1, got " .. opt.ft_epochs, 0) end
  if opt.ft_batch < 1 or opt.ft_batch % 1 ~= 0 then error("option 'ft_batch' must be an integer >= 1, got " .. opt.ft_batch, 0) end
  return { params = params, lr = opt.ft_lr, epochs = opt.ft_epochs, batch = opt.ft_batch }
end

local function slice(t, first, last)
  local r = {}
  for i = first, last do r[#r + 1] = t[i] end
  return r
end

-- The grid spec of the common options.
function P.grid(opt)
  return qf.grid{ bits = opt.bits, group = opt.group, sym = opt.sym, mse = opt.mse, f16_scales = opt.f16_scales }
end

-- Loads the model, tokenizes the calibration text once, and splits its tokens: windows are
-- drawn from [1, split], perplexity is measured on [split+1, n] — never overlapping. The
-- full-precision chain (one more block forward per block) is kept only when opt.finetune needs it,
-- or as `fp_chain` says (a recipe whose ctx.cal only feeds a statistics pass passes false).
function P.prepare(opt, fp_chain)
  if fp_chain == nil then fp_chain = opt.finetune == true end
  if opt.finetune ~= nil then P.finetune(opt) end  -- bad finetune options fail before any work
  local m = qf.load_model(opt.model)
  local ids = m:tokenizer():encode(qf.read_text(opt.calib_text))
  local split = math.floor(#ids * opt.calib_fraction)
  local cal = qf.calibration{ model = m, tokens = ids, range = { 1, split }, nsamples = opt.nsamples,
                              seqlen = opt.seqlen, seed = opt.seed, fp_chain = fp_chain }
  local ctx = { model = m, cal = cal, heldout = slice(ids, split + 1, #ids), split = split, ntokens = #ids, ids = ids }
  io.stderr:write(string.format("calibration tokens [1, %d] of %d; held-out tokens [%d, %d]\n", split, #ids, split + 1, #ids))
  return ctx
end

local SITES = { q = "attn_in", k = "attn_in", v = "attn_in", o = "attn_out", gate = "ffn_in", up = "ffn_in", down = "ffn_mid" }

-- A fresh calibration over the same windows as ctx.cal (same ids, range, seed): for a second
-- sequential pass after a statistics pass.
function P.calibration(ctx, opt)
  return qf.calibration{ model = ctx.model, tokens = ctx.ids, range = { 1, ctx.split }, nsamples = opt.nsamples,
                         seqlen = opt.seqlen, seed = opt.seed, fp_chain = opt.finetune == true }
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

-- Quantizes every linear, block by block. solve{block=, name=, W=, sigma=, mu=, tokens=} (mu: the
-- mean input) returns a QLinear (or a Tensor Ŵ) and optionally an info table; the weight is replaced by Ŵ. Prints and
-- logs block i/N, layer, objective, seconds and ETA; returns {layers = {...}, objective = Σ, seconds}.
-- opts.finetune = {params=, lr=, epochs=, ...} (cal:finetune's options): after a block's linears are
-- quantized, train its floats against its full-precision outputs (decoupleQ's block stage); the
-- per-block losses are recorded as "finetune" and returned as .finetune.
function P.quantize_model(m, cal, solve, opts)
  opts = opts or {}
  local groups = opts.true_sequential and { { "q", "k", "v" }, { "o" }, { "gate", "up" }, { "down" } }
                 or { { "q", "k", "v", "o", "gate", "up", "down" } }
  local nb, t0 = cal:nblocks(), qf.now()
  local total, nlayers = 0, nb * 7
  local layers, finetunes = {}, {}
  for b = 1, nb do
    local stats = cal:capture()
    for gi, group in ipairs(groups) do
      if gi > 1 then  -- true-sequential: Σ of this sub-group sees the quantized earlier ones
        local sites, seen = {}, {}
        for _, name in ipairs(group) do
          if not seen[SITES[name]] then sites[#sites + 1] = SITES[name]; seen[SITES[name]] = true end
        end
        stats = cal:capture(sites)
      end
      for _, name in ipairs(group) do
        local W = m:weight(b, name)
        local st = stats[SITES[name]]
        local tl = qf.now()
        local q, info = solve{ block = b, name = name, W = W, sigma = st.sigma, mu = st.mu, tokens = st.tokens }
        local What = qf.is_tensor(q) and q or q:dequantize()
        local obj, rel = qf.objective(W, What, st.sigma)
        m:set_linear(b, name, q)  -- keeps a QLinear's codes for exports that store them
        local secs = qf.now() - tl
        total = total + obj
        layers[#layers + 1] = { block = b, layer = name, objective = obj, relative = rel, seconds = secs,
                                outliers = (not qf.is_tensor(q)) and q:nnz() or 0 }
        local elapsed = qf.now() - t0
        local eta = elapsed / #layers * (nlayers - #layers)
        io.stderr:write(string.format("block %d/%d %-5s objective %.5g (rel %.3e)  %.2fs  elapsed %.1fs  ETA %.1fs\n",
          b, nb, name, obj, rel, secs, elapsed, eta))
        qf.log{ event = "layer", block = b, nblocks = nb, layer = name, objective = obj, relative = rel,
                seconds = secs, elapsed = elapsed, eta = eta, info = info }
      end
    end
    if opts.finetune then
      local ft = cal:finetune(opts.finetune)
      finetunes[#finetunes + 1] = { block = b, losses = ft.losses, after = ft.after, seconds = ft.seconds }
      qf.record("finetune", finetunes)
    end
    cal:advance()
  end
  return { layers = layers, objective = total, seconds = qf.now() - t0, finetune = opts.finetune and finetunes or nil }
end

-- Perplexity on the held-out tokens and on the first wiki_windows windows of WikiText-2;
-- printed with their protocols and recorded.
function P.evaluate(ctx, opt, prefix)
  prefix = prefix or ""
  local m = ctx.model
  local st = m:storage()
  print(string.format("%sstorage %.4f bits/weight over the block linears (codes %.4f + scales/zeros %.4f + side info %.4f + outliers %.4f + fp16 %.4f), %.2f%% pruned",
    prefix, st.bits_per_weight, st.codes, st.params, st.side, st.outliers, st.fp16, 100 * st.pruned_fraction))
  qf.record(prefix .. "storage", st)
  local r = m:perplexity(ctx.heldout, { seqlen = opt.eval_seqlen })
  local name = opt.calib_text:match("([^/]+)$")
  print(string.format("%sheld-out ppl %.4f  [%s tokens %d..%d; %s]", prefix, r.ppl, name, ctx.split + 1, ctx.ntokens, r.protocol))
  qf.record(prefix .. "ppl_heldout", r.ppl)
  qf.record(prefix .. "protocol_heldout", string.format("held-out tokens %d..%d of %s; %s",
    ctx.split + 1, ctx.ntokens, opt.calib_text, r.protocol))
  if opt.wiki_windows > 0 then
    local w = m:perplexity(qf.read_text(opt.wiki_text), { seqlen = opt.eval_seqlen, max_windows = opt.wiki_windows })
    print(string.format("%sWikiText-2 ppl %.4f  [%s]", prefix, w.ppl, w.protocol))
    qf.record(prefix .. "ppl_wikitext2", w.ppl)
    qf.record(prefix .. "protocol_wikitext2", w.protocol)
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
