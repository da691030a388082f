// qforge — decoupleQ's block-wise stage (docs/methods.md#block-finetune): with every integer code
// frozen, train the float parameters of one transformer block — the grid scales and zeros of
// its quantized linears, the RMSNorm gains, optionally the linear biases — with Adam, to
// minimise the MSE between the block's output on the quantized-prefix inputs and the
// full-precision block's output on the full-precision inputs.
//
// Loss of a batch of windows: L = mean over all its elements of (y − target)², y = block output.
// dL/dy = 2(y − target)/count goes through block_backward, and each linear's dW is chained to
// its grid parameters (codes c fixed, outliers frozen additive entries):
//   uniform grid  v = s·(c − z):       ∂v/∂s = c − z,  ∂v/∂z = −s
//   companded     v = μ + b·t(c):      ∂v/∂μ = 1,      ∂v/∂b = t(c) = (v − μ)/b
//                 (scale = Laplace b, zero = location μ, t(k) = F⁻¹((k + ½)/2^bits) of Laplace(0, 1))
//   0-bit group   v = z:               ∂v/∂z = 1
// Rows of a row group share their parameters: each parameter sums dL/dW·∂v/∂param over every
// (row, column) it serves, in f64, rows ascending then columns ascending — the same bits for any
// thread count.
//
// What is trained (FinetuneOptions::params):
//   "scales"  every scale of every quantized linear (Linear::quant set), except 0-bit groups and
//             companded groups with b = 0 (constant groups); scales are kept >= FLT_MIN.
//   "zeros"   the zeros of asymmetric uniform grids (they become floats: spec.float_zero is set on
//             a grid once one of its zeros is no longer an integer), the locations μ of companded
//             grids, and the value of every 0-bit (pruned) group. Symmetric grids keep their zeros.
//   "norms"   attn_norm and ffn_norm gains.
//   "biases"  the biases the block's linears already have (a linear without a bias gains none).
// Linears without `quant` have no scales or zeros to train; their weights never change. A grid
// whose scales or zeros moved drops its f16_scales flag (its scales are no longer fp16-rounded).
// After every Adam step each touched linear gets a new QuantizedLinear (same codes and outliers,
// updated grid) and weight = its dequantize().
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "quant/grid.h"
#include "quant/layer_problem.h"
#include "model/model.h"

namespace qf {

struct FinetuneOptions {
  std::vector<std::string> params = {"scales", "zeros", "norms"};  // any of scales, zeros, norms, biases
  double lr = 1e-5;
  double beta1 = 0.9, beta2 = 0.99;  // decoupleQ's betas
  double eps = 1e-8;
  double weight_decay = 0.0;         // Adam's coupled L2 (decoupleQ's script uses 1e-6)
  int epochs = 4;
  int batch = 1;                     // windows per Adam step (the last step of an epoch may hold fewer)
  bool shuffle = false;              // window order per epoch from Rng(seed); false: windows in order
  uint64_t seed = 0;
  // Checks every option against B windows; messages name the option ("option 'lr' must be ...").
  void validate(int B) const;
};

struct FinetuneResult {
  double loss_before = 0;           // MSE over all windows before training
  std::vector<double> epoch_loss;   // per epoch: MSE over the epoch's elements, each step's batch
                                    // taken before that step's update (the usual training loss)
  double loss_after = 0;            // MSE over all windows with the final parameters
  std::vector<double> epoch_seconds;
  double seconds = 0;               // the whole call
  int64_t steps = 0;                // Adam steps taken
  int64_t nparams = 0;              // floats trained
};

// Finetunes block `layer` (0-based) of m in place. inputs and targets are f32 [B·T, dim]
// (B windows of T tokens). Every option is checked first; errors name the option. If the loss
// or a gradient becomes non-finite the block is restored to its state before the call and the
// call fails. Progress (one line per epoch) goes to `log` (event "epoch").
FinetuneResult block_finetune(Model& m, int layer, const Tensor& inputs, const Tensor& targets, int B, int T,
                              const FinetuneOptions& opt, const SolverLog& log = nullptr);

// ---- pieces (exposed for tests and custom loops) ----

// MSE (mean over all elements, accumulated in f64) of block `layer`'s output on x against target.
double block_mse(const Model& m, int layer, const Tensor& x, const Tensor& target, int B, int T);

// The loss and its gradient with respect to every float parameter of the block. Vectors are
// parallel to the parameters they differentiate: dscale/dzero to grid.scale/zero of each
// quantized linear (empty for a linear without quant, or when linears = false), dbias to a
// linear's bias (empty when it has none), d_attn_norm/d_ffn_norm to the gains (empty when
// norms = false). Entries of parameters the value formulas do not use (0-bit scales, b of a
// constant companded group, row groups without rows) are 0.
struct BlockParamGrads {
  double loss = 0;
  std::vector<std::string> names;  // the block's linears, Block::linears order
  std::vector<std::vector<double>> dscale, dzero, dbias;
  std::vector<double> d_attn_norm, d_ffn_norm;
  // Every norm of the block (the architecture table's order: attn_norm, ffn_norm, then q_norm,
  // k_norm, post_attn_norm, post_ffn_norm where it has them) and its gradient, when norms = true.
  std::vector<std::string> norm_names;
  std::vector<std::vector<double>> dnorms;
};
BlockParamGrads block_param_grads(const Model& m, int layer, const Tensor& x, const Tensor& target, int B, int T,
                                  bool linears = true, bool norms = true);

// Chains dL/dW [rows, cols] to q's grid parameters (the formulas above): dscale, dzero are
// resized to grid.scale.size() and overwritten.
void grid_param_grads(const QuantizedLinear& q, const Tensor& dW, std::vector<double>& dscale, std::vector<double>& dzero);

// t(k) = F⁻¹((k + ½)/2^bits) of the standard Laplace distribution (location 0, scale 1), f64:
// a companded level is μ + b·t(k).
double compand_unit_level(int k, int bits);

}  // namespace qf
