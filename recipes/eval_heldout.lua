-- eval_heldout.lua — the full-precision baseline of the layer-wise recipes: the same options,
-- the same calibration/held-out split and the same evaluation (held-out part of calib_text and
-- WikiText-2), nothing quantized.
--   qforge run recipes/eval_heldout.lua model=... calib_text=../shared/data/ptb_valid.txt eval_seqlen=2048
local P = require("qforge.pipeline")
local opt = P.options({ kld = false })  -- the full-precision model itself: nothing to compare with
if opt.checkpoint ~= "" then qf.option_error("checkpoint", "nothing is quantized: nothing to checkpoint") end
local ctx = P.prepare(opt)
P.evaluate(ctx, opt)
