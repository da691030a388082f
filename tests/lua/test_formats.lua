-- Model formats from a recipe: save as hf / qforge / gptq and load back with the same
-- perplexity; bad formats and unquantized GPTQ exports are errors.
local H = dofile("tests/lua/harness.lua")
local check, check_eq, check_error = H.check, H.check_eq, H.check_error

local MODEL = "../shared/models/stories260K"
local TEXT = "../shared/data/tinystories_head.txt"
local out = assert(qf.run_dir(), "run with `qforge run ... out=DIR`")
local txt = qf.read_text(TEXT)
local win = { seqlen = 128, max_windows = 4 }

local function exists(p)
  local f = io.open(p, "rb")
  if f then f:close() end
  return f ~= nil
end

local m = qf.load_model(MODEL)
local base = m:perplexity(txt, win)

H.section("hf: F32 round trip")
m:save(out .. "/hf", { format = "hf" })
check(exists(out .. "/hf/config.json"), "config.json written")
check(exists(out .. "/hf/model.safetensors"), "model.safetensors written")
check(exists(out .. "/hf/tokenizer.bin"), "tokenizer carried over")
local h = qf.load_model(out .. "/hf")
check_eq(h:config().rope_interleaved, false)
check_eq(h:n_params(), m:n_params())
local rh = h:perplexity(txt, win)
check_eq(rh.tokens_scored, base.tokens_scored, "same tokens through the carried tokenizer")
check_eq(rh.ppl, base.ppl, 1e-5 * base.ppl, "hf F32 ppl")
check_eq(qf.load_model(out .. "/hf", { lazy = true }):perplexity(txt, win).ppl, rh.ppl, "lazy == eager")

H.section("hf: F16")
m:save(out .. "/hf16", { format = "hf", dtype = "F16" })
local r16 = qf.load_model(out .. "/hf16"):perplexity(txt, win)
check_eq(r16.ppl, base.ppl, 1e-3 * base.ppl, "hf F16 ppl within fp16 rounding")

H.section("qforge and gptq of an RTN model")
local q = m:clone()
local grid = qf.grid{ bits = 4, sym = true, group = 32 }
for b = 1, q:nblocks() do
  for _, name in ipairs(q:linear_names()) do q:set_linear(b, name, qf.rtn(q:weight(b, name), grid)) end
end
local rq = q:perplexity(txt, win)
check(rq.ppl ~= base.ppl, "quantization changed the model")
q:save(out .. "/q.safetensors", { format = "qforge" })
local q2 = qf.load_model(out .. "/q.safetensors")
check_eq(q2:perplexity(txt, win).ppl, rq.ppl, "qforge round trip is exact")
q:save(out .. "/gptq", { format = "gptq" })
check(exists(out .. "/gptq/config.json") and exists(out .. "/gptq/model.safetensors"), "gptq directory written")
check(qf.read_text(out .. "/gptq/config.json"):find('"quant_method": "gptq"', 1, true), "quantization_config in config.json")

H.section("GGUF Q4_0 / Q4_1 / Q5_0 / Q5_1 / Q8_0 exports of Lua-quantized models are exact (f16_scales)")
for _, case in ipairs({ { "Q4_0", { bits = 4, sym = true, group = 32 } }, { "Q4_1", { bits = 4, group = 32 } },
                        { "Q5_0", { bits = 5, sym = true, group = 32 } }, { "Q5_0", { bits = 5, sym = true, group = 32, mapping = "llamacpp" } },
                        { "Q5_1", { bits = 4, group = 32 } }, { "Q5_1", { bits = 5, group = 32 } }, { "Q5_1", { bits = 5, sym = true, group = 32 } },
                        { "Q8_0", { bits = 8, sym = true, group = 64 } },
                        { "Q4_0", { bits = 4, sym = true, group = 32, mapping = "llamacpp" } },
                        { "Q8_0", { bits = 8, sym = true, group = 32, mapping = "llamacpp" } } }) do
  local dtype, gspec = case[1], case[2]
  gspec.f16_scales = true
  local g = qf.grid(gspec)
  local mq = m:clone()
  for b = 1, mq:nblocks() do
    for _, name in ipairs(mq:linear_names()) do mq:set_linear(b, name, qf.rtn(mq:weight(b, name), g)) end
  end
  local path = out .. "/q_" .. dtype .. ".gguf"
  mq:save(path, { format = "gguf", dtype = dtype })
  local back = qf.load_model(path)
  -- GGUF stores q/k in RoPE-pair order and loads them in HF order: compare the linears that keep
  -- their row order, and the whole model through its perplexity.
  local worst = 0
  for b = 1, mq:nblocks() do
    for _, name in ipairs({ "v", "o", "gate", "up", "down" }) do
      worst = math.max(worst, mq:weight(b, name):clone():sub(back:weight(b, name)):abs_max())
    end
  end
  check_eq(worst, 0, dtype .. ": dequantized weights identical after the round trip")
  -- the token embedding is stored F16 in block exports (as llama.cpp does): ppl within its rounding
  local pq = mq:perplexity(txt, win).ppl
  check_eq(back:perplexity(txt, win).ppl, pq, 1e-3 * pq, dtype .. ": same perplexity up to the F16 embedding")
  check_eq(back:embedding():clone():sub(mq:embedding()):abs_max() <= 1e-3, true, dtype .. ": embedding is its F16 rounding")
end
local mf = m:clone()
local g32 = qf.grid{ bits = 4, sym = true, group = 32 }
for b = 1, mf:nblocks() do
  for _, name in ipairs(mf:linear_names()) do mf:set_linear(b, name, qf.rtn(mf:weight(b, name), g32)) end
end
H.section("mapping llamacpp: signed scales survive the qforge format; option errors")
do
  local g = qf.grid{ bits = 4, sym = true, group = 32, f16_scales = true, mapping = "llamacpp" }
  check_eq(g.mapping, "llamacpp", "the spec echoes its mapping")
  check_eq(qf.grid{ bits = 4, sym = true }.mapping, nil, "the default mapping (gptq) is not echoed")
  local mq = m:clone()
  mq:set_linear(1, "q", qf.rtn(mq:weight(1, "q"), g))
  mq:save(out .. "/llamacpp.safetensors", { format = "qforge" })
  local back = qf.load_model(out .. "/llamacpp.safetensors")
  check_eq(back:weight(1, "q"):clone():sub(mq:weight(1, "q")):abs_max(), 0, "qforge round trip keeps the dequantized weight")
  local grid_of_q
  for _, l in ipairs(back:storage{ per_linear = true }.linears) do
    if l.block == 1 and l.name == "q" then grid_of_q = l.grid end
  end
  check(grid_of_q and grid_of_q:find("llamacpp", 1, true), "qforge round trip keeps the mapping: " .. tostring(grid_of_q))
  check_error(function() qf.grid{ bits = 4, sym = true, mapping = "q4_0" } end, "option 'mapping' must be \"gptq\" or \"llamacpp\"")
  check_error(function() qf.grid{ bits = 4, mapping = "llamacpp" } end, "give sym = true")
  check_error(function() qf.grid{ bits = 4, sym = true, mapping = 1 } end, "mapping")
end
check_error(function() mf:save(out .. "/f32scales.gguf", { format = "gguf", dtype = "Q4_0" }) end, "not representable in fp16")
check(not exists(out .. "/f32scales.gguf"), "a refused GGUF export leaves nothing behind")

H.section("errors")
check_error(function() m:save(out .. "/x", { format = "onnx" }) end, "unknown format 'onnx'")
check_error(function() m:save(out .. "/x", { format = "hf", dtype = "Q4_0" }) end, "dtype 'Q4_0' is not supported")
check_error(function() m:save(out .. "/g", { format = "gptq" }) end, "block 1 linear 'q': not quantized")
check(not exists(out .. "/g/config.json"), "a refused export leaves nothing behind")

H.summary()
