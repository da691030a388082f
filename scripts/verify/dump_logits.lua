-- dump_logits.lua — token ids and logits of a fixed prompt, for comparison with other tools
-- (scripts/verify_transformers.py). Recorded in results.json: ids, logits[T][vocab].
--   qforge run scripts/verify/dump_logits.lua model=PATH prompt="..."
local opt = qf.options({ model = "../shared/models/stories260K", prompt = "Once upon a time, there was a little girl named Lily." },
  { model = "model file or directory", prompt = "text to run" })
local m = qf.load_model(opt.model)
local ids = m:tokenizer():encode(opt.prompt)
qf.record("ids", ids)
qf.record("logits", m:forward(ids):to_table())
print(string.format("%d tokens, logits recorded", #ids))
