-- mixed_precision.lua — per-layer precision by name, as a Lua table of rules (issue 18's first
-- example): attention's v and the MLP's down at 4 bits, every linear of the first and last block
-- at 8, the rest at `bits`, all solved by GPTQ on their own grid. The rules are resolved and
-- checked before any work (a rule that matches nothing is an error); the progress lines, the
-- per-linear records and storage_linears show each linear's grid and rule.
--   qforge run recipes/examples/mixed_precision.lua bits=3
local P = require("qforge.pipeline")
local opt = P.options({ sensitive_bits = 4, edge_bits = 8 },
  { sensitive_bits = { "bits of v and down", min = 1, max = 8 }, edge_bits = { "bits of the first and last block", min = 1, max = 8 } })
if opt.overrides ~= "" then qf.option_error("overrides", "this recipe writes its own rules; use recipes/gptq.lua for string rules") end
-- First match wins: the edge blocks are listed first so they keep edge_bits for v and down too.
local rules = {
  { block = { 1, -1 }, bits = opt.edge_bits },
  { name = { "v", "down" }, bits = opt.sensitive_bits },
}
local ctx = P.prepare(opt)
local plan = P.overrides(rules, ctx.model, opt)
local spec = P.grid(opt)
local s = P.quantize_model(ctx.model, ctx.cal, P.solver("gptq", opt, spec), { overrides = plan })
P.record_summary(s)
local st = ctx.model:storage{ per_linear = true }
local by_bits = {}
for _, l in ipairs(st.linears) do
  local b = string.format("%.4f", l.bits_per_weight)
  by_bits[b] = (by_bits[b] or 0) + 1
end
qf.record("linears_by_bits_per_weight", by_bits)
P.evaluate(ctx, opt)
