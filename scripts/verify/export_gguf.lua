-- export_gguf.lua — a model as a GGUF file for other tools (scripts/verify_llamacpp.sh), optionally
-- perturbed first by round-to-nearest on every block linear (no calibration: RTN needs none), so
-- the KL divergence of the perturbed copy from the original can be measured by both tools.
-- With type=T (a GGUF type: Q4_0 … Q8_0, Q2_K … Q6_K) every block linear is rounded on that type's
-- grid (llama.cpp's reference fit, P.type_grid; a K type on a width not a multiple of 256 gets
-- llama-quantize's fallback) and the file stores each linear in its type (the float tensors F16).
--   qforge run scripts/verify/export_gguf.lua model=PATH save=OUT.gguf [dtype=F32] [rtn_bits=4 group=32 sym=false]
--   qforge run scripts/verify/export_gguf.lua model=PATH save=OUT.gguf type=Q4_K
local P = require("qforge.pipeline")
local opt = qf.options({ model = "../shared/models/stories260K", save = "", dtype = "F32", rtn_bits = 0, group = 32, sym = false,
                         type = "" },
  { model = "model file or directory", save = "the GGUF file to write",
    dtype = { "GGUF storage type of the float tensors", choices = { "F32", "F16" } },
    rtn_bits = { "round every block linear to nearest on this many bits first (0: export unchanged)", min = 0, max = 8 },
    group = { "RTN group size in columns (-1: per row)", min = 1, also = { -1 } },
    sym = "symmetric RTN grid", type = "a GGUF type: every block linear rounded on its grid and stored in it (Q4_0 … Q8_0, Q2_K … Q6_K)" })
if opt.type ~= "" then
  if not P.GGUF_TYPE_GRIDS[opt.type] then qf.option_error("type", "unknown GGUF type '" .. opt.type .. "' (" .. table.concat(P.GGUF_TYPE_NAMES, " ") .. ")") end
  if opt.rtn_bits > 0 then qf.option_error("rtn_bits", "and type are two roundings: give one") end
  if opt.dtype ~= "F32" then qf.option_error("dtype", "is the float tensors' type of an unquantized export; type= writes F16 float tensors") end
end
if opt.save == "" then qf.option_error("save", "is required (the GGUF file to write)") end
local m = qf.load_model(opt.model)
if opt.rtn_bits > 0 then
  local spec = qf.grid{ bits = opt.rtn_bits, group = opt.group, sym = opt.sym }
  for b = 1, m:nblocks() do
    for _, name in ipairs(m:linear_names()) do m:set_linear(b, name, qf.rtn(m:weight(b, name), spec)) end
  end
  print(string.format("RTN %d bits, group %d, %s, on %d blocks", opt.rtn_bits, opt.group, opt.sym and "sym" or "asym", m:nblocks()))
end
if opt.type ~= "" then
  local counts = {}
  for b = 1, m:nblocks() do
    for _, name in ipairs(m:linear_names()) do
      local W = m:weight(b, name)
      local spec, _, eff = P.type_grid(opt.type, "none", W:size(2))
      m:set_linear(b, name, qf.rtn(W, spec))
      counts[eff] = (counts[eff] or 0) + 1
    end
  end
  local parts = {}
  for _, t in ipairs(P.GGUF_TYPE_NAMES) do if counts[t] then parts[#parts + 1] = t .. "×" .. counts[t] end end
  print("reference fit of " .. opt.type .. ": " .. table.concat(parts, ", "))
end
m:save(opt.save, { format = "gguf", dtype = opt.type ~= "" and opt.type or opt.dtype })
qf.record("saved", { path = opt.save, dtype = opt.dtype, type = opt.type, rtn_bits = opt.rtn_bits, group = opt.group, sym = opt.sym })
print("saved " .. opt.save)
