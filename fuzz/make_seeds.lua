-- Fuzz seeds from the project's own writers: scripts/fuzz.sh runs
--   qforge run fuzz/make_seeds.lua dir=DIR
-- and gets DIR/<target>/ for every harness: stories260K exports (stories_*, ~1 MB each) and
-- the same exports of a tiny random model with stories260K's tokenizer (tiny_*, the seeds
-- committed under fuzz/corpus/<target>/).
local opt = qf.options({ dir = "" }, { dir = "output directory" })
assert(opt.dir ~= "", "dir= is required")
local shared = "../shared/models/stories260K"
local tokpath = shared .. "/tok512.bin"
local function mkdir(p) assert(os.execute("mkdir -p '" .. p .. "'")) end
local function copy(from, to) assert(os.execute("cp '" .. from .. "' '" .. to .. "'")) end
for _, t in ipairs({ "gguf", "safetensors", "hf_config", "tokenizer_json", "tokenizer_bin", "llama2c", "qforge", "allocation" }) do
  mkdir(opt.dir .. "/" .. t)
end
local work = qf.run_dir()

-- A tiny llama2.c checkpoint: dim 8, hidden 16, 1 layer, 2 heads, 1 kv head, vocab 512
-- (tok512's), seq_len 4, small deterministic weights.
local function tiny_llama2c(path)
  local dim, hidden, layers, heads, kv, vocab, seq = 8, 16, 1, 2, 1, 512, 4
  local kvd, hd = dim * kv // heads, dim // heads
  local n = vocab * dim + layers * dim + layers * dim * dim + 2 * layers * kvd * dim + layers * dim * dim + layers * dim +
            3 * layers * hidden * dim + dim + seq * hd
  local parts = { string.pack("<i4i4i4i4i4i4i4", dim, hidden, layers, heads, kv, vocab, seq) }
  local x = 12345
  for i = 1, n do
    x = (x * 1103515245 + 12345) % 2147483648
    parts[#parts + 1] = string.pack("<f", (x / 2147483648 - 0.5) * 0.2)
  end
  local f = assert(io.open(path, "wb"))
  f:write(table.concat(parts))
  f:close()
end

-- An allocation for model m: one cluster per linear, `bits` everywhere.
local function allocation(m, path, bits)
  local t, keys = {}, {}
  for b = 1, m:nblocks() do
    for _, ln in ipairs(m:linear_names()) do
      local key = b .. "." .. ln
      local W = m:weight(b, ln)
      t[key .. ".bits"] = qf.full({ 1, W:size(2) }, bits, "i32")
      t[key .. ".row_groups"] = qf.ones({ W:size(1) }, "i32")
      keys[#keys + 1] = key
    end
  end
  qf.save_tensors(path, t, { qforge_allocation = "1", keys = table.concat(keys, ","), target_bits = "2", log2_lambda = "-3" })
end

local function exports(m, prefix, src_bin)
  local d = opt.dir
  m:save(work .. "/" .. prefix .. "_f32.gguf", { format = "gguf", dtype = "F32" })
  copy(work .. "/" .. prefix .. "_f32.gguf", d .. "/gguf/" .. prefix .. "_f32.gguf")
  m:save(work .. "/" .. prefix .. "_f16.gguf", { format = "gguf", dtype = "F16" })
  copy(work .. "/" .. prefix .. "_f16.gguf", d .. "/gguf/" .. prefix .. "_f16.gguf")
  m:save(work .. "/" .. prefix .. "_hf", { format = "hf", dtype = "BF16" })
  copy(work .. "/" .. prefix .. "_hf/model.safetensors", d .. "/safetensors/" .. prefix .. "_bf16.safetensors")
  copy(work .. "/" .. prefix .. "_hf/config.json", d .. "/hf_config/" .. prefix .. "_config.json")
  copy(work .. "/" .. prefix .. "_hf/tokenizer.json", d .. "/tokenizer_json/" .. prefix .. "_tokenizer.json")
  -- qforge: RTN 4-bit per-group codes in every linear
  local q = m:clone()
  local grid = qf.grid{ bits = 4, sym = false, group = 8 }
  for b = 1, q:nblocks() do
    for _, name in ipairs(q:linear_names()) do q:set_linear(b, name, qf.rtn(q:weight(b, name), grid)) end
  end
  q:save(d .. "/qforge/" .. prefix .. "_rtn4.safetensors", { format = "qforge" })
  m:save(d .. "/qforge/" .. prefix .. "_f32.safetensors", { format = "qforge" })
  copy(src_bin, d .. "/llama2c/" .. prefix .. ".bin")
  qf.save_tensors(d .. "/safetensors/" .. prefix .. "_tensors.safetensors",
                  { a = qf.ones({ 2, 3 }), b = qf.zeros({ 4 }, "i32"), c = qf.full({ 3 }, 7, "u8") }, { note = "seed" })
end

local tiny = work .. "/tiny.bin"
tiny_llama2c(tiny)
exports(qf.load_model(tiny, { tokenizer = tokpath }), "tiny", tiny)
exports(qf.load_model(shared), "stories", shared .. "/stories260K.bin")
copy(tokpath, opt.dir .. "/tokenizer_bin/tok512.bin")
-- allocation seeds are for stories260K (the harness loads it)
local s = qf.load_model(shared)
allocation(s, opt.dir .. "/allocation/alloc_2bit.safetensors", 2)
allocation(s, opt.dir .. "/allocation/alloc_0bit.safetensors", 0)
print("seeds written to " .. opt.dir)
