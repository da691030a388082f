-- cvxq.lua — CVXQ (docs/methods.md#cvxq): full-precision statistics → bit allocation by dual ascent
-- to a target average rate over (row cluster × column) groups → companded RTN at the allocated
-- bits (0-bit groups pruned to their median) → bias correction b' = b − (Ŵ − W) μ_x.
-- Sensitivity: CVXQ's squared gradients of PCA-projected final hidden states (default), or the
-- mean squared layer input (diag Σ proxy, sensitivity=proxy). Checkpoint selection on evaluation
-- data (the published code's quirk) is not done: one run, one model.
--   qforge run recipes/cvxq.lua target_bits=3
local P = require("qforge.pipeline")
local C = require("qforge.cvxq")
local opt = P.options(C.options({ target_bits = 3.0, cluster_rows = 64, kind = "compand", compand_search = true, bias_correction = true,
                        bmax = 8 },
  { target_bits = { "average code bits per weight over all linears (the allocation's rate; realized bits/weight add scales, zeros and side info, see m:storage())", gt = 0, max = 8 },
    kind = { "compand | uniform", choices = { "compand", "uniform" } }, compand_search = "grid-search the compander's scale and offset per group",
    bias_correction = "b' = b - (W^ - W) mu_x after quantizing", bmax = { "most bits a group may get", min = 1, max = 8 } }))
C.check_options(opt)
if opt.checkpoint ~= "" then qf.option_error("checkpoint", "CVXQ quantizes from one full-precision statistics pass (RTN at the allocated bits), not block by block: nothing to checkpoint") end
local ctx = P.prepare(opt)
local m = ctx.model
local alloc, stats = C.allocate_model(ctx, opt)
local t0 = qf.now()
local total, layers = 0, {}
for _, L in ipairs(C.each_linear(alloc, m)) do  -- overrides: L.skip stays full precision, L.rule pins a grid
  if L.skip then
    layers[#layers + 1] = { block = L.block, layer = L.name, objective = 0, relative = 0, skipped = true, rule = L.rule.index }
    io.stderr:write(string.format("block %d %-5s skipped: full precision (override rule %d '%s')\n", L.block, L.name, L.rule.index, L.rule.text))
    goto continue
  end
  do
  local W = m:weight(L.block, L.name):clone()
  local st = stats[L.block][C.site(m, L.name)]
  local q = qf.rtn(W, C.grid(L, opt))
  local What = q:dequantize()
  local obj, rel = qf.objective(W, What, st.sigma)
  m:set_linear(L.block, L.name, q)
  if opt.bias_correction then m:set_bias(L.block, L.name, qf.bias_correction(W, What, st.mu, m:bias(L.block, L.name))) end
  total = total + obj
  local bits = L.rule and L.rule.spec.bits or L.bits:mean()
  layers[#layers + 1] = { block = L.block, layer = L.name, objective = obj, relative = rel, bits = bits,
                          rule = L.rule and L.rule.index or nil }
  io.stderr:write(string.format("block %d %-5s %.2f bits  objective %.5g (rel %.3e)%s\n", L.block, L.name, bits, obj, rel,
    L.rule and string.format("  (override rule %d '%s')", L.rule.index, L.rule.text) or ""))
  end
  ::continue::
end
P.record_summary({ layers = layers, objective = total, seconds = qf.now() - t0 })
P.evaluate(ctx, opt)
