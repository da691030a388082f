-- eval.lua — the default recipe: perplexity of a model on a text, with its protocol.
--   qforge run recipes/eval.lua [model=DIR_OR_BIN] [text=FILE] [seqlen=N] [max_windows=N]
local opt = qf.options({
  model = "../shared/models/stories260K",
  text = "../shared/data/tinystories_head.txt",
  seqlen = 0,
  max_windows = 0,
  lazy = false,
}, {
  model = "model directory or checkpoint file",
  text = "text file to score",
  seqlen = { "window length in tokens (0 = the model's seq_len)", min = 2, also = { 0 } },
  max_windows = { "score at most this many windows (0 = all)", min = 0 },
  lazy = "convert each block from the file when it is used (streams models larger than RAM-for-f32)",
})

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

local r = m:perplexity(qf.read_text(opt.text), { seqlen = opt.seqlen, max_windows = opt.max_windows })
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
