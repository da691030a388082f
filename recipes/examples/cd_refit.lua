-- cd_refit.lua — coordinate-descent sweeps alternated with a least-squares refit of each row's
-- scale, written with the toolkit (no element loops; issue 18's third example).
--
-- For fixed codes c and zero z, the row scale minimizing the layer objective
--   (w − s·(c − z)) Σ (w − s·(c − z))ᵀ   is   s = (w Σ c̃ᵀ) / (c̃ Σ c̃ᵀ),  c̃ = c − z
-- (methods.md#refit-scales, one scale per row). Each round: refit every row's scale (the grid is
-- rebuilt with qf.grid_from, the codes kept with qf.qlinear), then `sweeps` CD sweeps on the new
-- grid (qf.cd_sweep, methods.md#cd-update). Both steps never increase the objective, so the
-- recorded trace per layer is non-increasing (tests/cli_examples_test.sh checks it).
--   qforge run recipes/examples/cd_refit.lua bits=3 rounds=3 sweeps=2
local P = require("qforge.pipeline")
local opt = P.options({ rounds = 3, sweeps = 2 },
  { rounds = { "rounds of (scale refit, CD sweeps)", min = 1 }, sweeps = { "CD sweeps per round", min = 1 } })
if opt.group ~= -1 or opt.ktype ~= "none" then qf.option_error("group", "cd_refit refits one scale per row: use group=-1 (per channel)") end
local ctx = P.prepare(opt)
local spec = P.grid(opt)

-- The least-squares scale of every row for fixed codes; rows whose fit is not positive keep theirs.
local function refit(W, S, q)
  local g = q:grid()
  local Cz = q:codes() - g:zeros()                     -- [rows, cols] − [rows, 1]: c̃
  local num = (W:matmul(S) * Cz):sum(2, true)          -- w Σ c̃ᵀ, per row
  local den = (Cz:matmul(S) * Cz):sum(2, true)         -- c̃ Σ c̃ᵀ
  local s = qf.where(den:gt(0), num / qf.cmax(den, 1e-30), g:scales())
  s = qf.where(s:gt(0):logical_and(s:isfinite()), s, g:scales())
  local g2 = qf.grid_from{ spec = g:spec(), cols = W:size(2), scales = s, zeros = g:zeros() }
  return qf.qlinear{ grid = g2, codes = q:codes() }
end

local traces = {}
local s = P.quantize_model(ctx.model, ctx.cal, function(l, g)
  local W, S = l.W, l.sigma
  local q = qf.gptq(W, S, g or spec)
  local trace = { (qf.objective(W, q:dequantize(), S)) }
  for _ = 1, opt.rounds do
    q = refit(W, S, q)
    trace[#trace + 1] = (qf.objective(W, q:dequantize(), S))
    local What = q:dequantize()
    for _ = 1, opt.sweeps do qf.cd_sweep(W, S, What, q:grid()) end
    q = q:grid():quantize(What)                         -- What is on the grid: exact codes
    trace[#trace + 1] = (qf.objective(W, q:dequantize(), S))
  end
  traces[#traces + 1] = trace
  return q, { gptq_objective = trace[1], objective = trace[#trace] }
end, { true_sequential = opt.true_sequential })
qf.record("objective_traces", traces)
P.record_summary(s)
P.evaluate(ctx, opt)
