// qforge — the layer-wise problem shared by every solver (docs/methods.md#objective):
//   f(Ŵ) = ‖WX − ŴX‖² = tr((W − Ŵ) Σ (W − Ŵ)ᵀ),   Σ = X Xᵀ  [cols × cols].
// W, Ŵ are [rows, cols] f32; Σ is f32 or f64-accumulated then stored f32 [cols, cols].
#pragma once
#include <functional>
#include <string>

#include "core/tensor.h"

namespace qf {

struct Objective {
  double value = 0;     // tr((W−Ŵ)Σ(W−Ŵ)ᵀ), f64
  double relative = 0;  // value / tr(WΣWᵀ)  (0 when the denominator is 0)
};
Objective objective(const Tensor& W, const Tensor& What, const Tensor& Sigma);

// Shape/finite checks every solver runs first: W [r, c] and Σ [c, c] f32, finite, Σ symmetric
// enough to be a Gram matrix. `fn` names the caller in the message.
void check_layer_problem(const char* fn, const Tensor& W, const Tensor& Sigma);

// Σ + λI with λ = percdamp·mean(diag Σ); dead inputs (Σ_jj = 0) get Σ_jj = 1 (methods.md#damping).
// Returns the damped copy; `dead` receives the dead column indices.
Tensor damp_sigma(const Tensor& Sigma, double percdamp, std::vector<int64_t>* dead = nullptr);

// Solvers report events (damping escalation, per-sweep objective) through this sink.
using SolverLog = std::function<void(const std::string& event, const std::string& detail)>;

}  // namespace qf
