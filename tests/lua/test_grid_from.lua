-- Grids and quantized linears built from parameters (qf.grid_from, qf.qlinear): hand-computed
-- dequantization, a round trip through a fitted grid, every check on scales, zeros, g_idx and
-- codes a named error, and a model linear set from Lua-chosen codes counted and saved honestly.
local H = dofile("tests/lua/harness.lua")
local check, check_eq, check_error = H.check, H.check_eq, H.check_error

H.section("hand-computed: 2-bit asym, groups of 2")
local spec = qf.grid{bits = 2, group = 2}
local S = qf.tensor{{0.5, 0.25}, {2, 1}}
local Z = qf.tensor{{1, 2}, {0, 3}}
local g = qf.grid_from{spec = spec, cols = 4, scales = S, zeros = Z}
check_eq(g:scales():to_table(), S:to_table())
check_eq(g:zeros():to_table(), Z:to_table())
check_eq(g:g_idx(), {1, 1, 2, 2})
local q = qf.qlinear{grid = g, codes = qf.tensor{{0, 1, 2, 3}, {3, 2, 1, 0}}}
-- value = scale·(code − zero)
check_eq(q:dequantize():to_table(), {{-0.5, 0, 0, 0.25}, {6, 4, -2, -3}})
check_eq(q:codes():dtype(), "u8")
local c = q:codes()
c:fill(0)
check_eq(q:codes():to_table(), {{0, 1, 2, 3}, {3, 2, 1, 0}}, "q:codes() is a copy")

H.section("a permuted g_idx (act-order style)")
local gp = qf.grid_from{spec = spec, cols = 4, scales = S, zeros = Z, g_idx = qf.tensor{2, 1, 2, 1}}
check_eq(gp:g_idx(), {2, 1, 2, 1})
local qp = qf.qlinear{grid = gp, codes = qf.tensor{{0, 0, 0, 0}, {3, 3, 3, 3}}}
check_eq(qp:dequantize():to_table(), {{-0.5, -0.5, -0.5, -0.5}, {0, 6, 0, 6}})

H.section("outliers and round trips")
local qo = qf.qlinear{grid = g, codes = qf.tensor{{1, 1, 2, 2}, {0, 0, 3, 3}}, outliers = qf.tensor{{0, 9, 0, 0}, {0, 0, 0, -1}}}
check_eq(qo:nnz(), 2)
check_eq(qo:dequantize():to_table(), {{0, 9, 0, 0}, {0, 0, 0, -1}})
local W = qf.tensor{{0.1, -0.4, 0.3, 0.8, -0.05, 0.2}, {1.0, 0.5, -0.2, 0.0, 0.7, -0.9}, {0.3, 0.3, -0.3, 0.1, 0.0, 0.05}}
for _, sp in ipairs{qf.grid{bits = 3, group = 2}, qf.grid{bits = 4, sym = true}, qf.grid{bits = 4, group = 2, sym = true, mapping = "llamacpp", f16_scales = true},
                    qf.grid{bits = 2, group = 4}, qf.grid{bits = 3, kind = "compand"}} do
  local q1 = qf.rtn(W, sp)
  local g1 = q1:grid()
  local g2 = qf.grid_from{spec = g1:spec(), cols = 6, scales = g1:scales(), zeros = g1:zeros()}
  local q2 = qf.qlinear{grid = g2, codes = q1:codes()}
  check_eq((q2:dequantize() - q1:dequantize()):abs_max(), 0, "round trip " .. tostring(sp))
end

H.section("errors name the parameter")
check_error(function() qf.grid_from{spec = spec, cols = 4, scales = S} end, "grid_from: 'zeros' is required")
check_error(function() qf.grid_from{spec = spec, cols = 4, scales = S, zeros = Z, bits = 3} end, "unknown option 'bits'")
check_error(function() qf.grid_from{spec = spec, cols = 6, scales = S, zeros = Z} end, "needs [row groups, groups] = [2, 3]")
check_error(function() qf.grid_from{spec = spec, cols = 4, scales = qf.tensor{{0.5, 0}, {2, 1}}, zeros = Z} end,
            "scale at row group 1, group 2 is 0 (must be finite and nonzero)")
check_error(function() qf.grid_from{spec = spec, cols = 4, scales = qf.tensor{{0.5, -1}, {2, 1}}, zeros = Z} end,
            "only the llamacpp mapping stores negative scales")
check_error(function() qf.grid_from{spec = spec, cols = 4, scales = S, zeros = qf.tensor{{1, 4}, {0, 3}}} end,
            "zero at row group 1, group 2 is 4; a 2-bit grid needs an integer in 0..3")
check_error(function() qf.grid_from{spec = spec, cols = 4, scales = S, zeros = qf.tensor{{1, 1.5}, {0, 3}}} end, "float_zero = true")
check_error(function() qf.grid_from{spec = spec, cols = 4, scales = S / 0, zeros = Z} end, "must be finite")
check_error(function() qf.grid_from{spec = spec, cols = 4, scales = S, zeros = Z, g_idx = qf.tensor{1, 2, 3, 1}} end,
            "g_idx of column 3 is 3, outside 1..2")
check_error(function() qf.grid_from{spec = qf.grid{bits = 4, group = 2, f16_scales = true}, cols = 4, scales = qf.tensor{{0.1, 0.2}, {1, 1}}, zeros = Z} end,
            "not what f16_scales stores")
check_error(function() qf.grid_from{spec = qf.grid{ktype = "Q4_K"}, cols = 256, scales = qf.ones{1, 8}, zeros = qf.zeros{1, 8}} end,
            "K-quant grids hold integer sub-block scales")
check_error(function() qf.qlinear{grid = g, codes = qf.tensor{{0, 1, 2, 4}, {3, 2, 1, 0}}} end, "code at row 1, column 4 is 4; its group holds integers 0..3")
check_error(function() qf.qlinear{grid = g, codes = qf.tensor{{0, 1, 2, 1.5}, {3, 2, 1, 0}}} end, "column 4 is 1.5")
check_error(function() qf.qlinear{grid = g, codes = qf.zeros{2, 3}} end, "codes [2, 3] do not match the grid's [2, 4]")
check_error(function() qf.qlinear{grid = g, codes = qf.zeros{2, 4}, outliers = qf.zeros{2, 2}} end, "outliers [2, 2] do not match")
check_error(function() qf.qlinear{codes = qf.zeros{2, 4}} end, "'grid' is required")
check_error(function() qf.qlinear{grid = S, codes = qf.zeros{2, 4}} end, "qforge.Grid expected")

H.section("a model linear from Lua-chosen codes: storage counts the codes, the qforge format keeps them")
local m = qf.load_model("../shared/models/stories260K")
local Wq = m:weight(1, "q"):clone()
local rows, cols = Wq:size(1), Wq:size(2)
-- Per-row symmetric 3-bit scale from the row's max |w| (a Lua-side fit), codes by rounding, all
-- with toolkit ops: no element loops.
local amax = Wq:clone():abs():max(2, true)            -- [rows, 1]
local scale = amax / 3.5
local codes = qf.clamp(qf.round(Wq / scale) + 4, 0, 7)
local gq = qf.grid_from{spec = qf.grid{bits = 3, sym = true}, cols = cols, scales = scale, zeros = qf.full({rows, 1}, 4)}
local ql = qf.qlinear{grid = gq, codes = codes}
m:set_linear(1, "q", ql)
local st = m:storage{per_linear = true}
local lin = st.linears[1]
check_eq(lin.name, "q")
check(lin.quantized, "counted as quantized")
check_eq(lin.bits_per_weight, 3 + 16 / cols, 1e-9, "3-bit codes + one fp16 scale per row (the symmetric zero is implied)")
check_eq((m:weight(1, "q") - ql:dequantize()):abs_max(), 0, "the model's weight is the dequantized QLinear")
local path = qf.run_dir() .. "/saved.safetensors"
m:save(path, { format = "qforge" })
local m2 = qf.load_model(path)
check_eq((m2:weight(1, "q") - ql:dequantize()):abs_max(), 0, "saved and reloaded exactly")
check_eq(m2:block(1):qlinear("q"):codes():to_table(), ql:codes():to_table(), "the codes survive the round trip")

H.summary()
