-- split_text.lua — the calibration and held-out halves of a text as the pipeline splits it (its
-- first calib_fraction of the model's tokens, the rest), decoded back to text files for tools that
-- read text (llama-imatrix on the calibration half, llama-perplexity on the held-out half).
--   qforge run scripts/verify/split_text.lua model=M text=T first=OUT1 second=OUT2 [calib_fraction=0.5]
local opt = qf.options({ model = "", text = "", first = "", second = "", calib_fraction = 0.5 },
  { model = "model whose tokenizer cuts the text", text = "text file", first = "output: the calibration half",
    second = "output: the held-out half", calib_fraction = { "fraction of the tokens in the first part", gt = 0, lt = 1 } })
for _, k in ipairs({ "model", "text", "first", "second" }) do
  if opt[k] == "" then qf.option_error(k, "is required") end
end
local tok = qf.load_model(opt.model):tokenizer()
local ids = tok:encode(qf.read_text(opt.text))
local split = math.floor(#ids * opt.calib_fraction)
local a, b = {}, {}
for i = 1, split do a[#a + 1] = ids[i] end
for i = split + 1, #ids do b[#b + 1] = ids[i] end
for _, w in ipairs({ { opt.first, a }, { opt.second, b } }) do
  local f = assert(io.open(w[1] .. ".tmp", "wb"))
  f:write(tok:decode(w[2]))
  f:close()
  assert(os.rename(w[1] .. ".tmp", w[1]))
end
print(string.format("%s: %d tokens -> %s (%d) + %s (%d)", opt.text, #ids, opt.first, #a, opt.second, #b))
qf.record("split", { tokens = #ids, first = #a, second = #b })
