-- zero_row.lua — recipes can change weights: zero one row of one linear, re-evaluate.
--   qforge run recipes/zero_row.lua [block=1] [linear=q] [row=1] [max_windows=8]
local opt = qf.options({
  model = "../shared/models/stories260K",
  text = "../shared/data/tinystories_head.txt",
  block = 1,
  linear = "q",
  row = 1,
  max_windows = 8,
}, {
  block = "block number (1-based)",
  linear = "linear name: q, k, v, o, gate, up, down (or wq..w3)",
  row = "row (output feature) to zero, 1-based",
  max_windows = "windows to score (0 = all)",
})

local m = qf.load_model(opt.model)
local text = qf.read_text(opt.text)
local ppl_opts = { max_windows = opt.max_windows }

local before = m:perplexity(text, ppl_opts)
print(string.format("before: perplexity %.4f", before.ppl))

local w = m:weight(opt.block, opt.linear)  -- a view: writes go into the model
local row = w:rows(opt.row, 1)
print(string.format("zeroing row %d of block %d '%s' %s (row norm %.4f)",
  opt.row, opt.block, opt.linear, table.concat(w:shape(), "x"), row:norm()))
row:zero()

local after = m:perplexity(text, ppl_opts)
print(string.format("after:  perplexity %.4f (%+.4f)", after.ppl, after.ppl - before.ppl))
print(after.protocol)

qf.record("ppl_before", before.ppl)
qf.record("ppl_after", after.ppl)
qf.record("protocol", after.protocol)
