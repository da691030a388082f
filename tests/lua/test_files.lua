-- Files a recipe writes and reads: non-finite records, m:save refusing NaN weights (every
-- format, naming block, linear and 1-based position, writing nothing), qf.read_text refusing
-- devices, FIFOs and directories, and `require` of modules beside the recipe.
local H = dofile("tests/lua/harness.lua")
local check, check_eq, check_error = H.check, H.check_eq, H.check_error

local out = assert(qf.run_dir(), "run with `qforge run ... out=DIR`")
local function exists(p)
  local f = io.open(p, "rb")
  if f then f:close() end
  return f ~= nil
end
local function slurp(p)
  local f = assert(io.open(p, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

H.section("qf.record / qf.log keep NaN and inf")
qf.record("nan_value", 0 / 0)
qf.record("inf_value", math.huge)
qf.record("ninf_value", -math.huge)
qf.record("nested", { ppl = 0 / 0, list = { 1.5, math.huge } })
qf.log({ event = "diverged", loss = 0 / 0 })
local res = slurp(out .. "/results.json")
check(res:find('"nan_value": "nan"', 1, true), "NaN recorded as \"nan\": " .. res)
check(res:find('"inf_value": "inf"', 1, true), "inf recorded as \"inf\"")
check(res:find('"ninf_value": "-inf"', 1, true), "-inf recorded as \"-inf\"")
check(res:find('"ppl": "nan"', 1, true), "nested NaN recorded")
check(not res:find("null", 1, true), "no null in results.json")
check(slurp(out .. "/log.jsonl"):find('"loss":"nan"', 1, true), "qf.log keeps NaN")

H.section("m:save refuses non-finite weights before writing anything")
local MODEL = "../shared/models/stories260K"
local m = qf.load_model(MODEL)
local bad = m:clone()
bad:weight(2, "k"):set(3, 5, 0 / 0)
for _, f in ipairs({ { "hf", out .. "/nan_hf" }, { "gguf", out .. "/nan.gguf" }, { "qforge", out .. "/nan.safetensors" } }) do
  check_error(function() bad:save(f[2], { format = f[1] }) end, "block 2 linear 'k': weight is NaN at row 3, column 5 (1-based)")
  check(not exists(f[2]) and not exists(f[2] .. "/config.json"), f[1] .. ": nothing written")
end
local emb = m:clone()
emb:embedding():set(7, 1, math.huge)
check_error(function() emb:save(out .. "/inf.gguf", { format = "gguf" }) end, "token embedding: weight is +inf at row 7, column 1")
local nrm = m:clone()
nrm:norm(4, "ffn_norm"):set(9, -math.huge)
check_error(function() nrm:save(out .. "/ninf.safetensors", { format = "qforge" }) end, "block 4 ffn_norm: weight is -inf at element 9")
local fin = m:clone()
fin:final_norm():set(2, 0 / 0)
check_error(function() fin:save(out .. "/fin_hf", { format = "hf" }) end, "final norm: weight is NaN at element 2")
-- A quantized model (what gptq needs) with a NaN in a weight: gptq refuses it too.
local q = m:clone()
local grid = qf.grid{ bits = 4, sym = true, group = 32 }
for b = 1, q:nblocks() do
  for _, name in ipairs(q:linear_names()) do q:set_linear(b, name, qf.rtn(q:weight(b, name), grid)) end
end
q:weight(5, "down"):set(1, 2, 0 / 0)
check_error(function() q:save(out .. "/nan_gptq", { format = "gptq" }) end, "block 5 linear 'down': weight is NaN at row 1, column 2")
check(not exists(out .. "/nan_gptq"), "gptq: nothing written")
-- The finite model still saves.
m:save(out .. "/ok.safetensors", { format = "qforge" })
check(exists(out .. "/ok.safetensors"), "a finite model saves")

H.section("qf.read_text refuses what is not a regular file")
check_error(function() qf.read_text("/dev/zero") end, "'/dev/zero' is a character device, expected a regular file")
check_error(function() qf.read_text("tests") end, "'tests' is a directory")
check_error(function() qf.read_text(out .. "/no_such.txt") end, "no_such.txt'")
local fifo = out .. "/fifo"
if os.execute("mkfifo '" .. fifo .. "' 2>/dev/null") then
  check_error(function() qf.read_text(fifo) end, "is a FIFO (named pipe), expected a regular file")
  check_error(function() qf.load_model(fifo) end, "is a FIFO (named pipe)")
  check_error(function() qf.load_tensors(fifo) end, "is a FIFO (named pipe)")
end
-- Over the 1 GiB limit (a sparse file: no disk space used), refused before reading.
local big = out .. "/big.txt"
if os.execute("truncate -s 1073741825 '" .. big .. "' 2>/dev/null") then
  check_error(function() qf.read_text(big) end, "is 1073741825 bytes, over the limit of 1073741824 bytes (1 GiB)")
  os.remove(big)
end
check_eq(qf.read_text("tests/lua/files_mods/sub/init.lua"), slurp("tests/lua/files_mods/sub/init.lua"), "a regular file reads")

H.section("require finds modules beside the recipe and the run directory keeps copies")
local mod = require("files_local_mod")
check_eq(mod.answer, 42, "local module loaded")
check_eq(mod.sub.name, "sub", "nested local module (init.lua) loaded")
check_eq(slurp(out .. "/lua/files_local_mod.lua"), slurp("tests/lua/files_local_mod.lua"), "copied to RUN_DIR/lua")
check_eq(slurp(out .. "/lua/files_mods/sub/init.lua"), slurp("tests/lua/files_mods/sub/init.lua"), "nested copy")
local run = slurp(out .. "/run.json")
check(run:find('"module": "files_local_mod"', 1, true), "module noted in run.json inputs")
check(run:find('"module": "files_mods.sub"', 1, true), "nested module noted in run.json inputs")
check_error(function() require("files_no_such_module") end, "module 'files_no_such_module' not found")

H.summary()
