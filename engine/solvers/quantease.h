// qforge — QuantEase cyclic coordinate descent (docs/methods.md#quantease).
#pragma once
#include <string>
#include <vector>

#include "quant/grid.h"
#include "quant/layer_problem.h"

namespace qf {

struct CdSweepOptions {
  bool continuous = false;     // set each coordinate to its unquantized minimizer β
  std::vector<int64_t> order;  // columns to update, in order (empty: 0..cols−1); distinct, may be a subset
};

// One Gauss–Seidel sweep over all columns, every row at once:
//   β_:j = [(T Σ)_:j − Σ_{k≠j} Ŵ_:k Σ_kj] / Σ_jj,   Ŵ_:j ← Q(β_:j)  (or β when continuous).
// `target` is T (the original W, or W − outliers). Dead columns (Σ_jj = 0) are rounded.
// Blocked so most work is matrix–matrix (≈ 2·rows·cols² flops per sweep). Updates What in place.
// Returns f(Ŵ after) − f(Ŵ before) under this Σ, summed exactly per coordinate in f64 (free).
double cd_sweep(const Tensor& target, const Tensor& Sigma, Tensor& What, const Grid& grid,
                const CdSweepOptions& opt = {});
// The same on a validated problem's Σ (target: p.W, or W − outliers; only its shape is checked).
double cd_sweep(const LayerProblem& p, const Tensor& target, Tensor& What, const Grid& grid,
                const CdSweepOptions& opt = {});

// QuantEase's sweep schedule (docs/methods.md#quantease-schedule), shared with outlier-aware
// QuantEase: sweep `it` (1-based) of `iters` is continuous (unquantized) iff every > 0,
// it % every == 1 % every, it <= iters − 5 and it != iters.
inline bool continuous_sweep(int it, int iters, int every) {
  return every > 0 && it % every == 1 % every && it <= iters - 5 && it != iters;
}

// The grid is fitted once from the original W (grid_fit; group params never change). Sweep `it`
// (1-based) is continuous iff continuous_every > 0, it % every == 1 % every, it <= iters − 5 and
// it != iters — and never after an "rtn"/"gptq" init (fmchisel: the init is already on the grid).
//   init "w": Ŵ = W, the first sweep quantizes; "rtn": Ŵ = W rounded on the grid; "gptq": Ŵ = GPTQ
//   (percdamp max(percdamp, 0.01), same act_order, static groups so its grid is grid_fit(W)),
//   projected onto the grid, then CD with target = the original W.
// act_order: sweep order = stable argsort of diag Σ, descending; groups stay contiguous in the
// original column order (g_idx = identity), so no g_idx is needed at inference.
// After an rtn/gptq init the result is never worse than the init under Σ: if the last sweep ends
// above init_objective (only via damping or f32 near-ties), the init is returned (logged "keep_init").
struct QuantEaseOptions {
  int iters = 30;
  std::string init = "w";     // "w" | "rtn" | "gptq"
  int continuous_every = 3;   // see above (0: never continuous)
  double percdamp = 0.0;      // damping of Σ before solving (reference QuantEase: none)
  bool act_order = false;
};

struct QuantEaseResult {
  QuantizedLinear q;
  std::vector<double> objective;  // after every sweep: f of the current Ŵ under the undamped Σ, tracked
                                  // from cd_sweep's exact per-coordinate changes; the last entry is
                                  // objective() of the returned weight
  double init_objective = 0;      // f of the init (0 for init "w")
};

QuantEaseResult quantease(const Tensor& W, const Tensor& Sigma, const GridSpec& spec, const QuantEaseOptions& opt = {},
                          const SolverLog& log = nullptr);
QuantEaseResult quantease(const LayerProblem& p, const GridSpec& spec, const QuantEaseOptions& opt = {},
                          const SolverLog& log = nullptr);

}  // namespace qf
