-- dump_logits_ids.lua — logits of a fixed list of token ids (no tokenizer needed), and optionally
-- the loaded model exported as HF and/or GGUF, for comparison with other tools
-- (scripts/verify_archs.py). Recorded in results.json: ids, logits[T][vocab], and per export
-- saved_hf / saved_gguf = { path = ... } or { error = "..." } (an export qforge refuses is recorded,
-- not raised, so the logits are still checked).
-- last=K records only the logits of the last K positions (a long prompt with a large vocabulary).
--   qforge run scripts/verify/dump_logits_ids.lua model=PATH ids=1,2,3 [last=K] [save_hf=DIR] [save_gguf=FILE gguf_dtype=F32]
local opt = qf.options({ model = "../shared/models/stories260K", ids = "1,2,3", save_hf = "", save_gguf = "", gguf_dtype = "F32", last = 0 },
  { model = "model file or directory", ids = "comma-separated token ids (0-based, as transformers takes them)",
    save_hf = "export the loaded model as an HF directory here", save_gguf = "export the loaded model as a GGUF file here",
    gguf_dtype = { "GGUF storage type of the float tensors", choices = { "F32", "F16" } },
    last = { "record the logits of the last this many positions only (0: all)", min = 0 } })
local ids = {}
for s in string.gmatch(opt.ids, "[^,%s]+") do
  local v = tonumber(s)
  if not v or v < 0 or v ~= math.floor(v) then qf.option_error("ids", "'" .. s .. "' is not a token id") end
  ids[#ids + 1] = math.floor(v)
end
if #ids == 0 then qf.option_error("ids", "is empty") end
local m = qf.load_model(opt.model)
qf.record("ids", ids)
local logits = m:forward(ids):to_table()
if opt.last > 0 and opt.last < #logits then
  local tail = {}
  for i = #logits - opt.last + 1, #logits do tail[#tail + 1] = logits[i] end
  logits = tail
end
qf.record("logits", logits)
print(string.format("%d tokens, logits recorded", #ids))
local function export(key, path, o)
  if path == "" then return end
  local ok, err = pcall(function() m:save(path, o) end)
  if ok then
    qf.record(key, { path = path })
    print("saved " .. path)
  else
    qf.record(key, { path = path, error = tostring(err) })
    print("export refused: " .. tostring(err))
  end
end
export("saved_hf", opt.save_hf, { format = "hf" })
export("saved_gguf", opt.save_gguf, { format = "gguf", dtype = opt.gguf_dtype })
