-- eval.lua — the default recipe: perplexity of a model on a text, with its protocol, and
-- optionally its KL divergence from a reference model or recorded reference logits.
--   qforge run recipes/eval.lua [model=DIR_OR_BIN] [text=FILE] [seqlen=N] [max_windows=N] [protocol=llamacpp]
--   qforge run recipes/eval.lua model=fp.gguf save_reference=fp.qfref            # record the FP model once
--   qforge run recipes/eval.lua model=q.gguf reference=fp.qfref                 # then KLD with one model resident
local opt = qf.options({
  model = "../shared/models/stories260K",
  text = "../shared/data/tinystories_head.txt",
  seqlen = 0,
  max_windows = 0,
  lazy = false,
  protocol = "nonoverlap",
  reference = "",
  save_reference = "",
  topk = 0,
}, {
  model = "model directory or checkpoint file",
  text = "text file to score",
  seqlen = { "window length in tokens (0 = the protocol's default: the model's seq_len; gptq 2048, at most the context)", min = 2, also = { 0 } },
  max_windows = { "score at most this many windows (0 = all)", min = 0 },
  lazy = "convert each block from the file when it is used (streams models larger than RAM-for-f32)",
  protocol = { "perplexity protocol (docs/methods.md#evaluation)", choices = { "nonoverlap", "llamacpp", "gptq" } },
  reference = "KL divergence from this: a reference-logits file (.qfref, from save_reference=) or a model path (loaded beside the model)",
  save_reference = "write this model's reference logits (top-`topk` tokens per scored position) to this file",
  topk = { "save_reference: 0 keeps the hidden states (exact KL divergence later), k > 0 only the top k tokens per position", min = 0 },
})
if opt.reference ~= "" and opt.save_reference ~= "" then
  qf.option_error("save_reference", "give reference= or save_reference=, not both")
end
if opt.reference ~= "" and not io.open(opt.reference, "rb") then
  qf.option_error("reference", "cannot read '" .. opt.reference .. "'")
end

local t_load = qf.now()
local m = qf.load_model(opt.model, { lazy = opt.lazy })
local load_seconds = qf.now() - t_load
local c = m:config()
if opt.seqlen > c.seq_len then qf.option_error("seqlen", string.format("%d exceeds the model's context length %d", opt.seqlen, c.seq_len)) end
qf.record("load_seconds", load_seconds)
print(string.format("loaded in %.2f s%s", load_seconds, opt.lazy and " (lazy)" or ""))
print(string.format("model %s: %s, dim %d, hidden %d, %d layers, %d heads (%d kv), vocab %d, seq_len %d",
  opt.model, c.arch, c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.vocab_size, c.seq_len))
print(string.format("params %d", m:n_params()))

local text = qf.read_text(opt.text)
local eopt = { seqlen = opt.seqlen, max_windows = opt.max_windows, protocol = opt.protocol }
if opt.reference ~= "" then
  local f = io.open(opt.reference, "rb")
  local magic = f:read(8)
  f:close()
  -- a reference-logits file by its magic, else a model (checked against this one's vocabulary by m:perplexity)
  eopt.reference = magic == "QFREFLG1" and qf.load_reference(opt.reference) or qf.load_model(opt.reference, { lazy = opt.lazy })
end
local r = m:perplexity(text, eopt)
print(string.format("perplexity %s on %s: %.4f", opt.model, opt.text, r.ppl))
print(r.protocol)
print(string.format("(%d windows of %d tokens, %d tokens scored of %d, %.2f s)",
  r.windows, r.seqlen, r.tokens_scored, r.text_tokens, r.seconds))

qf.record("ppl", r.ppl)
qf.record("nll", r.nll)
qf.record("tokens", r.tokens_scored)
qf.record("text_tokens", r.text_tokens)
qf.record("windows", r.windows)
qf.record("seqlen", r.seqlen)
qf.record("protocol", r.protocol)
if r.kld then
  local k = r.kld
  print(string.format("KLD from %s: mean %.6f ± %.6f, median %.6f, p90 %.6f, p95 %.6f, p99 %.6f, p99.9 %.6f, max %.6f",
    opt.reference, k.mean, k.mean_stderr, k.median, k.p90, k.p95, k.p99, k.p999, k.max))
  print(string.format("same top token %.3f ± %.3f %%, mean Δp %.3f ± %.3f %%, RMS Δp %.3f %%, reference ppl %.4f (top-%d)",
    100 * k.same_top, 100 * k.same_top_stderr, 100 * k.dp_mean, 100 * k.dp_stderr, 100 * k.dp_rms, k.ppl_reference, k.topk))
  local c = k.llamacpp
  print(string.format("llama-perplexity's KLD (reference log p > -16 only): mean %.6f ± %.6f, median %.6f, p90 %.6f, p95 %.6f, p99 %.6f, max %.6f",
    c.mean, c.mean_stderr, c.median, c.p90, c.p95, c.p99, c.max))
  qf.record("kld", k)
end
if opt.save_reference ~= "" then
  local t = qf.now()
  local ref = m:reference_logits(text, { seqlen = opt.seqlen, max_windows = opt.max_windows, protocol = opt.protocol, topk = opt.topk })
  ref:save(opt.save_reference)
  print(string.format("reference logits -> %s: %s (%.2f s)", opt.save_reference, tostring(ref), qf.now() - t))
  qf.record("saved_reference", ref:info())
end
