// qforge — QuantEase cyclic coordinate descent (algorithms.md §4).
#pragma once
#include <string>
#include <vector>

#include "grid.h"
#include "layer_problem.h"

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

struct QuantEaseOptions {
  int iters = 30;
  std::string init = "w";     // "w" | "rtn" | "gptq"
  int continuous_every = 3;   // sweeps with iter % every == 1 and iter <= iters−5 are continuous (0: never)
  double percdamp = 0.0;      // damping of Σ before solving (reference QuantEase: none)
  bool act_order = false;
};

struct QuantEaseResult {
  QuantizedLinear q;
  std::vector<double> objective;  // after every sweep: f of the current Ŵ under the undamped Σ, tracked
                                  // from cd_sweep's exact per-coordinate changes; the last entry is
                                  // objective() of the returned weight
  double init_objective = 0;
};

QuantEaseResult quantease(const Tensor& W, const Tensor& Sigma, const GridSpec& spec, const QuantEaseOptions& opt = {},
                          const SolverLog& log = nullptr);

}  // namespace qf
