-- rotate_gptq.lua — QuIP-style incoherence processing before GPTQ, written with the toolkit
-- (issue 18's second example; methods.md#transforms). Every linear is quantized in a rotated basis:
--   W_eff = O·Ŵ·T,  Ŵ = GPTQ(Oᵀ·W·Tᵀ, T·Σ·Tᵀ),
-- with T (input side) and O (output side) randomized Hadamard transforms of the linear's widths,
-- each rebuilt from a 64-bit seed (qf.linalg.random_hadamard: any width, 2^k·m). Rotations spread a
-- few large weights and input channels over all of them, so a per-channel grid fits better
-- (QuIP, arXiv 2307.13304; QuIP#, arXiv 2402.04396). The layer objective is unchanged by the change
-- of basis (T and O orthogonal), so P.quantize_model's objective against the original W is the
-- rotated problem's. Storage counts 64 bits per seed; the qforge format keeps the seeds, HF stores
-- the dense W_eff, and formats of plain codes refuse the run before any work (save= is checked).
-- The engine primitive is QuIP's incoherence processing (engine/quant/incoherence.h,
-- docs/methods.md#quip): the same rotations plus QuIP's diagonal rescaling, randomized Hadamard or
-- butterfly, seeded per layer, for any solver (`pre=quip` on recipes/gptq.lua, quantease.lua, …); this recipe stays as
-- the toolkit-only version of its rotations.
--   qforge run recipes/examples/rotate_gptq.lua bits=3 sides=input
local P = require("qforge.pipeline")
local opt = P.options(P.solve_options(P.solver_options("gptq", nil, { sides = "input", rot_seed = 1 }, {
  sides = { "which sides of each linear to rotate", choices = { "input", "output", "both", "none" } },
  rot_seed = { "base of the per-linear rotation seeds (seed = rot_seed·2^20 + 64·block + linear index)", min = 0 },
})))
local rotate_in = opt.sides == "input" or opt.sides == "both"
local rotate_out = opt.sides == "output" or opt.sides == "both"
local ctx = P.prepare(opt, nil, { transforms = opt.sides ~= "none" })
local spec = P.grid(opt)
local gptq = P.solver("gptq", opt, spec)
local index = {}
for i, n in ipairs(ctx.model:linear_names()) do index[n] = i end
local H = qf.linalg.random_hadamard

local rot_seconds = 0
local s = P.quantize_model(ctx.model, ctx.cal, function(l, g)
  local t0 = qf.now()
  local seed = opt.rot_seed * (1 << 20) + 64 * l.block + index[l.name]
  local W, S = l.W, l.sigma
  local input, output
  if rotate_in then   -- rows of W → T·w (W·Tᵀ); Σ → T·Σ·Tᵀ
    W = H(W, seed)
    S = H(H(S, seed):t(), seed)
    input = { kind = "hadamard", seed = seed }
  end
  if rotate_out then  -- columns of W → Oᵀ·w (Oᵀ·W); Σ is the input side's and stays
    W = H(W:t(), seed + 32, { inverse = true }):t():contiguous()
    output = { kind = "hadamard", seed = seed + 32 }
  end
  rot_seconds = rot_seconds + (qf.now() - t0)
  local rl = { block = l.block, name = l.name, W = W, sigma = S, mu = l.mu, tokens = l.tokens }
  local q, info = gptq(rl, g)
  if not input and not output then return q, info end
  return qf.qlinear{ grid = q:grid(), codes = q:codes(), input = input, output = output }, info
end, { true_sequential = opt.true_sequential })
qf.record("rotation_seconds", rot_seconds)
P.record_summary(s)
local folded = ctx.model:fold_transforms()  -- rotations never fold (methods.md#transforms); recorded as such
local kept = 0
for _, e in ipairs(folded) do if not e.folded then kept = kept + 1 end end
qf.record("transforms_kept", kept)
P.evaluate(ctx, opt)
