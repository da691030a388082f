// qforge — Qronos and GPFQ (docs/methods.md#qronos): sequential rounding for the mismatched
// objective ‖W X − Ŵ X̃‖², X the full-precision inputs of the layer and X̃ the inputs the quantized
// prefix of the model produces. The problem carries H = Σ x̃x̃ᵀ (its sigma), G = Σ x·x̃ᵀ (cross) and
// Σ x·xᵀ (sigma_fp, for the reported objective).
#pragma once
#include "quant/grid.h"
#include "quant/layer_problem.h"

namespace qf {

struct QronosOptions {
  bool act_order = false;    // columns by decreasing diag(H)
  double percdamp = 0.0;     // λ += percdamp·mean(diag H)   (GPTQ's damping)
  double lambda_damp = 1e-6; // λ += lambda_damp·λmax(H)     (the Qronos reference's damping)
  int64_t blocksize = 128;   // lazy batch of the diffusion (and GPFQ's block GEMMs)
  bool stochastic = false;   // unbiased stochastic rounding (docs/methods.md#stochastic-rounding)
  uint64_t seed = 0;
  int max_damp_tries = 8;    // Cholesky failure: λ ×10 (0 → 1e-4·mean diag), logged
};

struct QronosResult {
  QuantizedLinear q;
  double lambda = 0;        // the damping used
  double first_value = 0;   // step 1's mean |unrounded target| (diagnostic)
};

// Qronos: step 1 rounds the first column (in processing order) against the past —
//   q₁ = Q( [ (W (G+λI))_{:,1} − Σ_{k>1} W_{:,k} (H+λI)_{k,1} ] / (H+λI)_{11} ),
// step 2 sets the other columns to their least-squares optimum given q₁ —
//   V = ( W (G+λI)_{:,2:} − q₁ (H+λI)_{1,2:} ) ((H+λI)_{2:,2:})⁻¹ (the trailing inverse by a rank-one
//   downdate of (H+λI)⁻¹),
// step 3 is GPTQ's error diffusion of V on (H+λI)_{2:,2:}. The grid is fitted up front from W (per
// channel, or every group from the original W as GPTQ's static_groups). With X̃ = X (G = H) it is GPTQ.
QronosResult qronos(const LayerProblem& p, const GridSpec& spec, const QronosOptions& opt = {}, const SolverLog& log = nullptr);

// GPFQ (greedy path following): q_t = Q( [ (G+λI)_{tt} w_t + Σ_{k<t} (w_k (G+λI)_{kt} − q_k (H+λI)_{kt}) ] / (H+λI)_{tt} ),
// no update of later columns. Same grid, damping, act-order and stochastic options.
QronosResult gpfq(const LayerProblem& p, const GridSpec& spec, const QronosOptions& opt = {}, const SolverLog& log = nullptr);

}  // namespace qf
