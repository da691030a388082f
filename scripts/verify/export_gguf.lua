-- export_gguf.lua — a model as a GGUF file for other tools (scripts/verify_llamacpp.sh), optionally
-- perturbed first by round-to-nearest on every block linear (no calibration: RTN needs none), so
-- the KL divergence of the perturbed copy from the original can be measured by both tools.
--   qforge run scripts/verify/export_gguf.lua model=PATH save=OUT.gguf [dtype=F32] [rtn_bits=4 group=32 sym=false]
local opt = qf.options({ model = "../shared/models/stories260K", save = "", dtype = "F32", rtn_bits = 0, group = 32, sym = false },
  { model = "model file or directory", save = "the GGUF file to write",
    dtype = { "GGUF storage type of the float tensors", choices = { "F32", "F16" } },
    rtn_bits = { "round every block linear to nearest on this many bits first (0: export unchanged)", min = 0, max = 8 },
    group = { "RTN group size in columns (-1: per row)", min = 1, also = { -1 } },
    sym = "symmetric RTN grid" })
if opt.save == "" then qf.option_error("save", "is required (the GGUF file to write)") end
local m = qf.load_model(opt.model)
if opt.rtn_bits > 0 then
  local spec = qf.grid{ bits = opt.rtn_bits, group = opt.group, sym = opt.sym }
  for b = 1, m:nblocks() do
    for _, name in ipairs(m:linear_names()) do m:set_linear(b, name, qf.rtn(m:weight(b, name), spec)) end
  end
  print(string.format("RTN %d bits, group %d, %s, on %d blocks", opt.rtn_bits, opt.group, opt.sym and "sym" or "asym", m:nblocks()))
end
m:save(opt.save, { format = "gguf", dtype = opt.dtype })
qf.record("saved", { path = opt.save, dtype = opt.dtype, rtn_bits = opt.rtn_bits, group = opt.group, sym = opt.sym })
print("saved " .. opt.save)
