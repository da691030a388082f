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
  block = { "block number (1-based)", min = 1 },
  linear = "a linear of the model's architecture, by name or llama2.c alias (m:arch().linears)",
  row = { "row (output feature) to zero, 1-based", min = 1 },
  max_windows = { "windows to score (0 = all)", min = 0 },
})

local m = qf.load_model(opt.model)
-- The model decides the names of linears and the ranges of block and row: checked before the
-- first perplexity.
local names, known = {}, false
for _, l in ipairs(m:arch().linears) do
  names[#names + 1] = l.name .. " (" .. l.alias .. ")"
  known = known or opt.linear == l.name or opt.linear == l.alias
end
if not known then
  qf.option_error("linear", string.format("must be one of %s, got '%s'", table.concat(names, ", "), opt.linear))
end
if opt.block > m:nblocks() then qf.option_error("block", string.format("%d is past the model's %d blocks", opt.block, m:nblocks())) end
if opt.row > m:weight(opt.block, opt.linear):size(1) then
  qf.option_error("row", string.format("%d is past the %d rows of block %d '%s'", opt.row, m:weight(opt.block, opt.linear):size(1), opt.block, opt.linear))
end
local text = qf.read_text(opt.text)
local ppl_opts = { max_windows = opt.max_windows }

local before = m:perplexity(text, ppl_opts)
print(string.format("before: perplexity %.4f", before.ppl))
local ref = m:reference_logits(text, ppl_opts)  -- the unedited model's distributions, for the KL divergence

local w = m:weight(opt.block, opt.linear)  -- a view: writes go into the model
local row = w:rows(opt.row, 1)
print(string.format("zeroing row %d of block %d '%s' %s (row norm %.4f)",
  opt.row, opt.block, opt.linear, table.concat(w:shape(), "x"), row:norm()))
row:zero()

local after = m:perplexity(text, { max_windows = opt.max_windows, reference = ref })
print(string.format("after:  perplexity %.4f (%+.4f), KL divergence from before %.6f ± %.6f, same top token %.2f%%",
  after.ppl, after.ppl - before.ppl, after.kld.mean, after.kld.mean_stderr, 100 * after.kld.same_top))
print(after.protocol)

qf.record("ppl_before", before.ppl)
qf.record("ppl_after", after.ppl)
qf.record("protocol", after.protocol)
qf.record("kld", after.kld)
