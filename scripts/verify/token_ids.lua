-- token_ids.lua — qforge's token ids of the first `n` tokens of a text (the tokenizer's own BOS
-- convention), for comparing with the ids another tool scored (scripts/verify_llamacpp.sh).
--   qforge run scripts/verify/token_ids.lua model=PATH text=FILE n=N   -> results.json: ids, text_tokens
local opt = qf.options({ model = "../shared/models/stories260K", text = "../shared/data/wikitext2_test.txt", n = 0 },
  { model = "model file or directory", text = "text file", n = { "ids to record (0: all)", min = 0 } })
local m = qf.load_model(opt.model, { lazy = true })  -- only the tokenizer is used
local ids = m:tokenizer():encode(qf.read_text(opt.text))
local n = opt.n == 0 and #ids or math.min(opt.n, #ids)
local head = {}
for i = 1, n do head[i] = ids[i] end
qf.record("text_tokens", #ids)
qf.record("ids", head)
print(string.format("%d tokens, first %d recorded", #ids, n))
