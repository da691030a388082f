-- The solver registry (engine/solvers/solver.h): qf.solve gives each primitive's exact result with
-- the common info fields; options come from one declared table (defaults, ranges, choices).
local H = dofile("tests/lua/harness.lua")
local check, check_eq, check_error = H.check, H.check_eq, H.check_error

local rng = qf.rng(11)
local X = rng:randn({ 16, 300 })
X = rng:randn({ 16, 16 }):matmul(X)
local S = X:matmul(X:t())
local W = rng:randn({ 12, 16 })
local grid = qf.grid{ bits = 3, group = 8 }
local problem = { W = W, sigma = S, tokens = 300, site = "attn_in", block = 2, name = "q" }

H.section("the registry")
local names = {}
for _, s in ipairs(qf.solvers()) do names[#names + 1] = s.name end
check_eq(names, { "rtn", "gptq", "quantease", "quantease_outliers", "decoupleq", "qronos", "gpfq", "owq", "ldlq" })
local qe = qf.solvers()[3]
check_eq(qe.options[2], { name = "init", type = "string", default = "w", choices = { "w", "rtn", "gptq" },
                          help = "starting point: w (the weight), rtn or gptq" })
check_eq(qe.options[1].min, 1)
check_eq(#qf.solvers()[1].options, 0)

H.section("qf.solve = the primitive, plus objective, relative, seconds")
local function same(a, b) return (a:dequantize() - b:dequantize()):abs_max() == 0 end
local cases = {
  { "rtn", nil, function() return qf.rtn(W, grid) end },
  { "gptq", { blocksize = 4 }, function() return qf.gptq(W, S, grid, { blocksize = 4 }) end },
  { "quantease", { iters = 6, init = "gptq" }, function() return qf.quantease(W, S, grid, { iters = 6, init = "gptq" }) end },
  { "quantease_outliers", { ratio = 0.02, iters = 5 }, function() return qf.quantease_outliers(W, S, grid, { ratio = 0.02, iters = 5 }) end },
  { "decoupleq", { iters = 2, round = "pgd", pgd_steps = 10 },
    function() return qf.alt_min(W, S, grid, { iters = 2, round = "pgd", pgd_steps = 10 }) end },
}
for _, c in ipairs(cases) do
  local q, info = qf.solve(c[1], problem, grid, c[2])
  local p, pinfo = c[3]()
  check(same(q, p), c[1] .. ": the same weights as the primitive")
  local obj, rel = qf.objective(W, q:dequantize(), S)
  check_eq(info.solver, c[1])
  check_eq(info.objective, obj, c[1] .. ": objective")
  check_eq(info.relative, rel, c[1] .. ": relative")
  check(info.seconds >= 0, c[1] .. ": seconds")
  if c[1] == "quantease" then check_eq(info.sweeps, pinfo.objective) end
  if c[1] == "gptq" then check_eq(info.percdamp, pinfo.percdamp) end
  if c[1] == "decoupleq" then check_eq(info.history, pinfo.history) end
  if c[1] == "quantease_outliers" then check_eq(info.outliers, p:nnz()) end
end
local _, info = qf.solve("gptq", problem, grid)
check_eq(info.options, { blocksize = 128, percdamp = 0.01, act_order = false, static_groups = false, stochastic = false, seed = 0 })

H.section("options are checked from the declarations, before any work")
check_error(function() qf.solve("gptq", problem, grid, { blocksiz = 4 }) end,
  "gptq: unknown option 'blocksiz' (known: blocksize, percdamp, act_order, static_groups, stochastic, seed)")
check_error(function() qf.solve("gptq", problem, grid, { blocksize = 0 }) end, "gptq: option 'blocksize' must be an integer >= 1, got 0")
check_error(function() qf.solve("gptq", problem, grid, { blocksize = 2.5 }) end, "gptq: option 'blocksize' must be an integer, got 2.5")
check_error(function() qf.solve("quantease", problem, grid, { init = "zero" }) end,
  "quantease: option 'init' must be one of w, rtn, gptq; got \"zero\"")
check_error(function() qf.solve("quantease_outliers", problem, grid, { ratio = 1.5 }) end,
  "quantease_outliers: option 'ratio' must be a finite number >= 0 and < 1, got 1.5")
check_error(function() qf.solve("quantease_outliers", problem, grid, { ratio = 1 }) end, "must be a finite number >= 0 and < 1, got 1")
check_error(function() qf.solve("quantease_outliers", problem, grid, { alpha = 0 }) end, "option 'alpha' must be a finite number > 0, got 0")
check_error(function() qf.solve("rtn", problem, grid, { iters = 1 }) end, "rtn: unknown option 'iters' (it takes none)")
check_error(function() qf.solve("awq", problem, grid) end, "unknown solver 'awq' (known: rtn, gptq, quantease, quantease_outliers, decoupleq, qronos, gpfq, owq, ldlq)")
check_error(function() qf.solve("gptq", { W = W, block = 2, name = "q" }, grid) end, "gptq (block 2 linear q): the problem has no 'sigma'")
check_error(function() qf.solve("gptq", { W = W, sigma = S, Sigma = S }, grid) end, "unknown option 'Sigma'")
check_error(function() qf.solve("gptq", { W = W, sigma = qf.zeros({ 3, 3 }) }, grid) end, "gptq")
check_error(function() qf.solve("gptq", { W = W, sigma = S, mu = qf.zeros({ 3 }) }, grid) end, "mu must be [16]")
check_eq(qf.check_solver_options("decoupleq", { round = "pgd" }).round, "pgd")
check_error(function() qf.check_solver_options("decoupleq", { round = "sgd" }) end,
  "decoupleq: option 'round' must be one of gptq, pgd; got \"sgd\"")

H.section("qf.solver_options: defaults and declarations in qf.options' form")
local defaults, decl = qf.solver_options("quantease")
check_eq(defaults, { iters = 30, init = "w", continuous_every = 3, percdamp = 0, act_order = false })
check_eq(decl.init, { "starting point: w (the weight), rtn or gptq", choices = { "w", "rtn", "gptq" } })
check_eq(decl.iters.min, 1)
local _, odecl = qf.solver_options("quantease_outliers")
check_eq(odecl.ratio.min, 0)
check_eq(odecl.ratio.lt, 1)
check_eq(odecl.alpha.gt, 0)
check_eq(odecl.ratio.max, nil)

H.summary()
