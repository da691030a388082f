-- qf.check_save: the engine's up-front export check (the exporter and storage-type tables) that
-- P.check_save calls; on a grid plan and on a model it refuses what m:save refuses.
local H = dofile("tests/lua/harness.lua")
local check, check_eq, check_error = H.check, H.check_eq, H.check_error

local MODEL = "../shared/models/stories260K"
local out = assert(qf.run_dir(), "run with `qforge run ... out=DIR`")

H.section("format, dtype and grid plan: nil when storable, else the option and the message")
do
  check_eq(qf.check_save{ format = "gguf", dtype = "Q4_0", grid = { bits = 4, group = 32, sym = true, f16_scales = true } }, nil)
  check_eq(qf.check_save{ format = "gguf", dtype = "q4_0", grid = { bits = 3, group = 32, sym = false, f16_scales = true } }, nil,
    "asymmetric 3-bit codes minus their zero fit Q4_0's -8..7")
  local opt, msg = qf.check_save{ format = "gguf", dtype = "Q4_0", grid = { bits = 4, group = 32, sym = false, f16_scales = true } }
  check_eq(opt, "save_format")
  check(msg:find("gguf Q4_0 cannot store this run's model: Q4_0 is symmetric: pass sym=true", 1, true) ~= nil, msg)
  opt, msg = qf.check_save{ format = "onnx" }
  check_eq(opt, "save_format")
  check_eq(msg, "unknown format 'onnx' (expected hf, gguf, gptq, compressed-tensors or qforge)")
  opt, msg = qf.check_save{ format = "hf", dtype = "Q4_0" }
  check_eq(opt, "save_dtype")
  check_eq(msg, "'Q4_0' is not a hf dtype (BF16, F16, F32)")
  opt, msg = qf.check_save{ format = "gptq", grid = { bits = 4, outliers = true } }
  check_eq(opt, "save_format")
  check(msg:find("stores no sparse outliers", 1, true) ~= nil, msg)
  check_eq(qf.check_save{ format = "hf", grid = { bits = 4, outliers = true, allocated = true } }, nil, "hf stores dequantized weights")
  check_error(function() qf.check_save{ format = "gguf", grid = { group = 32 } } end, "check_save: option 'grid' needs bits")
  check_error(function() qf.check_save{ format = "gguf", grid = { bits = 4, zero = 1 } } end, "zero")
  check_error(function() qf.check_save{ dtype = "F16" } end, "option 'format' is required")
end

H.section("on a model: the same refusals as m:save, before writing")
do
  local function quantized(spec)
    local m = qf.load_model(MODEL)
    for b = 1, m:nblocks() do
      for _, n in ipairs(m:linear_names()) do m:set_linear(b, n, qf.rtn(m:weight(b, n), spec)) end
    end
    return m
  end
  local cases = {
    { spec = { bits = 4, group = 32, sym = true, f16_scales = true }, format = "gguf", dtype = "Q4_0" },
    { spec = { bits = 4, group = 32, sym = false, f16_scales = true }, format = "gguf", dtype = "Q4_0" },
    { spec = { bits = 4, group = 32, sym = false, f16_scales = true }, format = "gguf", dtype = "Q4_1" },
    { spec = { bits = 3, group = 32, sym = false, f16_scales = true }, format = "gguf", dtype = "Q4_0" },
    { spec = { bits = 8, group = 32, sym = false, f16_scales = true }, format = "gguf", dtype = "Q8_0" },
    { spec = { bits = 5, group = 32, sym = true, f16_scales = true }, format = "gguf", dtype = "Q5_0" },
    { spec = { bits = 5, group = 32, sym = true, f16_scales = true }, format = "gguf", dtype = "Q4_0" },
    { spec = { bits = 4, group = 32, sym = false, f16_scales = true }, format = "gguf", dtype = "Q5_1" },
    { spec = { bits = 5, group = 32, sym = false, f16_scales = true }, format = "gguf", dtype = "Q5_0" },
    { spec = { bits = 5, group = 32, sym = false, f16_scales = true }, format = "gguf", dtype = "Q5_1" },  -- fp16 min: f16_scales ≤ 4 bits
    { spec = { bits = 4, group = 32, sym = true, f16_scales = false }, format = "gguf", dtype = "Q8_0" },
    { spec = { bits = 5, group = 32, sym = true }, format = "gptq" },
    { spec = { bits = 4, group = 32, sym = true }, format = "gptq" },
  }
  for i, c in ipairs(cases) do
    local m = quantized(qf.grid(c.spec))
    local path = out .. "/case" .. i
    local plan = { bits = c.spec.bits, group = c.spec.group, sym = c.spec.sym, f16_scales = c.spec.f16_scales }
    local p_opt = qf.check_save{ format = c.format, dtype = c.dtype, grid = plan }
    local m_opt, m_msg = qf.check_save{ format = c.format, dtype = c.dtype, model = m, path = path }
    local ok, err = pcall(function() m:save(path, { format = c.format, dtype = c.dtype }) end)
    local what = string.format("case %d (%s %s, bits=%d sym=%s f16=%s)", i, c.format, c.dtype or "", c.spec.bits, tostring(c.spec.sym),
      tostring(c.spec.f16_scales))
    check_eq(p_opt == nil, ok, what .. ": the plan check agrees with m:save")
    check_eq(m_opt == nil, ok, what .. ": the model check agrees with m:save")
    if not ok then
      check_eq(m_opt, "save", what)
      check(tostring(err):find(m_msg, 1, true) ~= nil, what .. ": same message: " .. tostring(m_msg) .. " / " .. tostring(err))
    end
  end
end

H.summary()
