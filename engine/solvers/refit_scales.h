// qforge — scale refit for fixed codes (docs/methods.md#refit-scales): with a quantized linear's
// codes and zeros fixed, each row's group scales s minimize the layer objective
//   ℓ_i(s) = (w_i − h_i − ŵ_i(s)) Σ (w_i − h_i − ŵ_i(s))ᵀ,  ŵ_ij = s_g(j)·(q_ij − z_i,g(j))
// (h: the linear's sparse outliers, kept) — the normal equations (AᵀΣA) s = AᵀΣ(w − h) of one row,
// A_jg = (q_j − z_g)·[j ∈ g]; decoupleQ's float step (arXiv 2404.12759, eq. 7) restricted to the
// scales, so the grid keeps integer zeros and stays exportable. With f16_scales the solution is
// rounded to fp16; a row takes its new scales only when its loss falls (f64), so the objective
// never rises. Codes are unchanged.
#pragma once
#include "quant/grid.h"
#include "quant/layer_problem.h"

namespace qf {

struct RefitResult {
  QuantizedLinear q;
  int64_t rows_improved = 0;   // rows whose scales changed
  int64_t rows_damped = 0;     // rows whose normal equations needed damping
  double objective_before = 0, objective_after = 0;
};

// Refuses companded, float-zero, row-grouped and mixed-bit grids (their parameters are not
// per-row scales on integer zeros) and a q whose shape differs from the problem's W.
RefitResult refit_scales(const LayerProblem& p, const QuantizedLinear& q);

}  // namespace qf
