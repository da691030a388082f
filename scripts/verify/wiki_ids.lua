-- wiki_ids.lua — qforge's token ids of the first `windows` × `seqlen` tokens of a text and its
-- perplexity on them, for tools that must score exactly the same tokens.
local opt = qf.options({ model = "../shared/models/stories260K", text = "../shared/data/wikitext2_test.txt", windows = 20, seqlen = 2048 },
  { windows = "windows to score", seqlen = "window length" })
local m = qf.load_model(opt.model)
local ids = m:tokenizer():encode(qf.read_text(opt.text))
local n = opt.windows * opt.seqlen
if #ids < n then error(string.format("text has %d tokens, fewer than %d", #ids, n)) end
local head = {}
for i = 1, n do head[i] = ids[i] end
qf.record("ids", head)
local r = m:perplexity(head, { seqlen = opt.seqlen })
qf.record("ppl", r.ppl)
qf.record("protocol", r.protocol)
qf.record("seconds", r.seconds)
print(string.format("ppl %.4f  [%s]  %.1f s", r.ppl, r.protocol, r.seconds))
