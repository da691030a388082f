-- checkpoint_interrupted.lua — tests/cli_checkpoint_test.sh: decoupleQ's layer stage and block
-- stage through P.quantize_model (as recipes/decoupleq.lua finetune=true), failing at the start of
-- block $QF_TEST_FAIL_AT when that variable is set: a run killed mid-way, made reproducible.
local P = require("qforge.pipeline")
local opt = P.options(P.finetune_options(P.solver_options("decoupleq", { "iters" }, { bits = 2, iters = 2 })))
local grid = qf.grid{ bits = opt.bits, group = opt.group, sym = opt.sym, float_zero = true }
local solve = P.solver("decoupleq", opt, grid)
local ctx = P.prepare(opt, nil, { float_zero = true })
local fail_at = tonumber(os.getenv("QF_TEST_FAIL_AT") or "")
local s = P.quantize_model(ctx.model, ctx.cal, solve, {
  finetune = P.finetune(opt),
  before_block = function(b) if b == fail_at then error("injected failure at the start of block " .. b, 0) end end })
P.record_summary(s)
P.evaluate(ctx, opt)
