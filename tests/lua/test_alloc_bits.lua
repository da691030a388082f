-- Allocation files (issue 14 item 10): a bit depth that is NaN or not a whole number is refused
-- on load, naming the file and the tensor, instead of loading with a NaN rate.
local H = dofile("tests/lua/harness.lua")
local check, check_eq, check_error = H.check, H.check_eq, H.check_error
local C = require("qforge.cvxq")

local m = qf.load_model("../shared/models/stories260K")
local opt = { target_bits = 2 }
-- A hand-made allocation: one cluster per linear, 2 bits everywhere.
local function write(name, bits_dtype, edit)
  local t, keys = {}, {}
  for b = 1, m:nblocks() do
    for _, ln in ipairs(m:linear_names()) do
      local key = b .. "." .. ln
      local W = m:weight(b, ln)
      t[key .. ".bits"] = qf.full({ 1, W:size(2) }, 2, bits_dtype)
      t[key .. ".row_groups"] = qf.ones({ W:size(1) }, "i32")
      keys[#keys + 1] = key
    end
  end
  if edit then edit(t) end
  local p = qf.run_dir() .. "/" .. name .. ".safetensors"
  qf.save_tensors(p, t, { qforge_allocation = "1", keys = table.concat(keys, ","), target_bits = "2", log2_lambda = "-3" })
  return p
end

H.section("a well-formed allocation loads with its exact rate")
local good = C.load_allocation(write("good", "f32"), m, opt)
check_eq(good.rate, 2, "rate recomputed from the file: every weight at 2 bits")
check_eq(good.pruned_fraction, 0)

H.section("NaN and fractional bits are errors naming the file and the tensor")
-- f16 bits: qf.load_tensors refuses non-finite f32 values itself, not f16 ones.
local pnan = write("nan", "f16", function(t) t["2.v.bits"]:set(1, 3, 0 / 0) end)
check_error(function() C.load_allocation(pnan, m, opt) end, "allocation file '[^']*nan%.safetensors': tensor '2%.v%.bits' %[1, 3%] = [-]?nan is not a whole number of bits")
local pfrac = write("frac", "f32", function(t) t["1.q.bits"]:set(1, 7, 2.5) end)
check_error(function() C.load_allocation(pfrac, m, opt) end, "allocation file '[^']*frac%.safetensors': tensor '1%.q%.bits' %[1, 7%] = 2%.5 is not a whole number of bits")
local pinf = write("inf", "bf16", function(t) t["1.k.bits"]:set(1, 1, 1 / 0) end)
check_error(function() C.load_allocation(pinf, m, opt) end, "tensor '1%.k%.bits' %[1, 1%] = inf is outside %[0, 8%]")
H.summary()
