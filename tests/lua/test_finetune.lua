-- Block-wise finetuning from Lua (decoupleQ's step 4, docs/methods.md#block-finetune): cal:finetune
-- and m:block(b):finetune on stories260K with RTN 2-bit blocks — lr = 0 is a bit-exact no-op, the
-- loss goes down, codes never move, the two entry points agree, option errors name the option.
local H = dofile("tests/lua/harness.lua")
local check, check_eq, check_error = H.check, H.check_eq, H.check_error

local m = qf.load_model("../shared/models/stories260K")
local ids = m:tokenizer():encode(qf.read_text("../shared/data/tinystories_head.txt"))
local cal = qf.calibration{ model = m, tokens = ids, range = { 1, 5000 }, nsamples = 4, seqlen = 64, seed = 1 }
local names = m:linear_names()

-- Everything finetuning may touch in block b, as plain tables (copies, not views).
local function snapshot(model, b)
  local s = { attn_norm = model:norm(b, "attn_norm"):to_table(), ffn_norm = model:norm(b, "ffn_norm"):to_table() }
  local blk = model:block(b)
  for _, n in ipairs(names) do
    local q = blk:qlinear(n)
    s[n] = { W = model:weight(b, n):to_table(), codes = q and q:codes():to_table(),
             scales = q and q:grid():scales():to_table(), zeros = q and q:grid():zeros():to_table(),
             spec = q and q:grid():spec() }
  end
  return s
end

H.section("before the block's first capture")
check_error(function() cal:finetune{} end, "block 1 has no full-precision outputs yet")
check_eq(tostring(m:block(2)), "qforge.Block 2 of 5")
check_eq(m:block(3):index(), 3)
check_error(function() m:block(6) end, "block 6 out of range (the model has 5 blocks")
check_eq(m:block(1):qlinear("q"), nil, "an unquantized linear has no QLinear")

H.section("quantize block 1 with RTN 2-bit")
cal:capture()
local spec = qf.grid{ bits = 2 }
local codes = {}
for _, n in ipairs(names) do
  local q = qf.rtn(m:weight(1, n), spec)
  m:set_linear(1, n, q)
  codes[n] = q:codes():to_table()
end
local blk = m:block(1)
check_eq(blk:qlinear("down"):codes():to_table(), codes.down, "qlinear returns the linear's codes")

H.section("lr = 0 leaves the block bit-identical")
local s0 = snapshot(m, 1)
local r0 = cal:finetune{ lr = 0, epochs = 2, params = { "scales", "zeros", "norms", "biases" } }
check_eq(#r0.losses, 3)
check_eq(r0.losses[2], r0.losses[1], "epoch 1 loss at lr 0 = the loss before")
check_eq(r0.losses[3], r0.losses[1])
check_eq(r0.after, r0.losses[1])
check_eq(r0.steps, 8)
check(r0.losses[1] > 0, "a 2-bit block has a loss")
check(H.equal(snapshot(m, 1), s0), "weights, norms, grids and codes unchanged at lr 0")

H.section("the same options through m:block(b):finetune on a clone agree with cal:finetune")
local m2 = m:clone()
local opts = { params = { "scales", "zeros", "norms" }, lr = 1e-3, betas = { 0.9, 0.99 }, epochs = 3, batch = 2 }
local r2 = m2:block(1):finetune{ inputs = cal:inputs(), targets = cal:fp_outputs(), windows = 4, params = opts.params,
                                 lr = opts.lr, betas = opts.betas, epochs = opts.epochs, batch = opts.batch }

H.section("cal:finetune lowers the loss and never moves a code")
local r = cal:finetune(opts)
check_eq(#r.losses, 4)
check_eq(#r.epoch_seconds, 3)
check_eq(r.steps, 6)
check(r.params > 0, "floats were trained")
check(r.after < r.losses[1], string.format("loss after %.6g < before %.6g", r.after, r.losses[1]))
check(r.losses[4] < r.losses[2], "the last epoch's loss is below the first's")
check(r.seconds >= 0, "seconds reported")
io.stderr:write(string.format("finetune block 1: before %.6g, epochs %.6g %.6g %.6g, after %.6g\n",
  r.losses[1], r.losses[2], r.losses[3], r.losses[4], r.after))
check_eq(r2.losses, r.losses, "same losses from both entry points")
check_eq(r2.after, r.after)
local s1, s2 = snapshot(m, 1), snapshot(m2, 1)
check(H.equal(s1, s2), "same block from both entry points")
for _, n in ipairs(names) do
  local q = blk:qlinear(n)
  check_eq(q:codes():to_table(), codes[n], "codes of " .. n .. " unchanged")
  check(H.equal(q:dequantize():to_table(), m:weight(1, n):to_table()), "weight of " .. n .. " = its QLinear's dequantize()")
  check(not H.equal(s1[n].scales, s0[n].scales), "scales of " .. n .. " trained")
  check(not H.equal(s1[n].zeros, s0[n].zeros), "zeros of " .. n .. " trained")
  check_eq(s1[n].spec.float_zero, true, "trained zeros of " .. n .. " are floats")
end
check(not H.equal(s1.attn_norm, s0.attn_norm), "attn_norm trained")

H.section("the pipeline goes on with the finetuned block")
cal:advance()
check_eq(cal:block(), 2)
check_error(function() cal:finetune{} end, "block 2 has no full-precision outputs yet")
cal:capture()
-- block 2 is still full precision: only norms can be trained; scales alone have nothing to train
check_error(function() cal:finetune{ params = { "scales" } } end, "nothing to train for params {scales}")
local rn = cal:finetune{ params = { "norms" }, lr = 0, epochs = 1 }
check(rn.losses[1] > 0 and rn.after == rn.losses[1], "block 2 sees the quantized prefix: a loss, unchanged at lr 0")

H.section("bad options name the option")
check_error(function() cal:finetune{ lr = -1 } end, "option 'lr' must be a finite number >= 0")
check_error(function() cal:finetune{ lr = 0 / 0 } end, "option 'lr'")
check_error(function() cal:finetune{ lr = "fast" } end, "lr")
check_error(function() cal:finetune{ params = { "scale" } } end, "option 'params': unknown parameter group 'scale'")
check_error(function() cal:finetune{ params = "scales" } end, "option 'params' must be a list")
check_error(function() cal:finetune{ params = {} } end, "option 'params' is empty")
check_error(function() cal:finetune{ epochs = 0 } end, "option 'epochs'")
check_error(function() cal:finetune{ batch = 5 } end, "option 'batch' (windows per step) must be in 1..4")
check_error(function() cal:finetune{ betas = { 0.9 } } end, "option 'betas' must be {beta1, beta2}")
check_error(function() cal:finetune{ betas = { 0.9, 1.5 } } end, "option 'betas': beta2 must be in [0, 1)")
check_error(function() cal:finetune{ eps = 0 } end, "option 'eps'")
check_error(function() cal:finetune{ lrate = 1e-3 } end, "unknown option 'lrate'")
check_error(function() cal:finetune{ inputs = cal:inputs() } end, "unknown option 'inputs'")
local b2 = m:block(2)
check_error(function() b2:finetune{ targets = cal:fp_outputs(), windows = 4 } end, "option 'inputs' must be a Tensor")
check_error(function() b2:finetune{ inputs = cal:inputs(), windows = 4 } end, "option 'targets' must be a Tensor")
check_error(function() b2:finetune{ inputs = cal:inputs(), targets = cal:fp_outputs() } end, "option 'windows'")
check_error(function() b2:finetune{ inputs = cal:inputs(), targets = cal:fp_outputs(), windows = 3 } end,
  "option 'windows' = 3 does not divide the 256 rows")
check_error(function() b2:finetune{ inputs = cal:inputs(), targets = qf.zeros({ 128, 64 }), windows = 4, params = { "norms" } } end,
  "targets is f32 [128, 64], expected f32 [B·T, dim] = [256, 64]")

H.section("the pipeline's finetune hook: every block finetuned after its linears, losses returned")
local P = require("qforge.pipeline")
local mp = qf.load_model("../shared/models/stories260K")
local calp = qf.calibration{ model = mp, tokens = ids, range = { 1, 5000 }, nsamples = 2, seqlen = 64, seed = 4 }
local rtn = function(l) return qf.rtn(l.W, spec) end
local sp = P.quantize_model(mp, calp, rtn, { finetune = { lr = 1e-3, epochs = 2 } })
check_eq(#sp.finetune, 5)
for b, f in ipairs(sp.finetune) do
  check_eq(f.block, b)
  check_eq(#f.losses, 3)
  check(f.after < f.losses[1], string.format("block %d: finetuned loss %.6g < %.6g", b, f.after, f.losses[1]))
end
local q = qf.load_model("../shared/models/stories260K")
local plain = P.quantize_model(q, qf.calibration{ model = q, tokens = ids, range = { 1, 5000 }, nsamples = 2, seqlen = 64, seed = 4 }, rtn)
check_eq(plain.finetune, nil, "no finetune without the option")
check(not H.equal(mp:weight(1, "q"):to_table(), q:weight(1, "q"):to_table()), "finetuning changed the model")

H.summary()
