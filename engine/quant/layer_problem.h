// qforge — the layer-wise problem shared by every solver (docs/methods.md#objective):
//   f(Ŵ) = ‖WX − ŴX‖² = tr((W − Ŵ) Σ (W − Ŵ)ᵀ),   Σ = X Xᵀ  [cols × cols].
// W, Ŵ are [rows, cols] f32; Σ is f32 or f64-accumulated then stored f32 [cols, cols].
#pragma once
#include <vector>
#include <functional>
#include <string>

#include "core/tensor.h"

namespace qf {

struct Objective {
  double value = 0;     // tr((W−Ŵ)Σ(W−Ŵ)ᵀ), f64
  double relative = 0;  // value / tr(WΣWᵀ)  (0 when the denominator is 0)
};
Objective objective(const Tensor& W, const Tensor& What, const Tensor& Sigma);

// Shape/finite checks of a layer problem: W [r, c] and Σ [c, c] f32, finite, Σ symmetric
// enough to be a Gram matrix (within 1e-4 of its largest entry). `fn` names the caller in the
// message; positions are 1-based.
void check_layer_problem(const char* fn, const Tensor& W, const Tensor& Sigma);

// One linear's problem: min over Ŵ on a grid of tr((W − Ŵ) Σ (W − Ŵ)ᵀ). Made once, validated
// once: every solver taking a LayerProblem trusts it (no re-validation per sweep, round or
// objective). Σ is kept as given — symmetric within check_layer_problem's tolerance, not always
// exactly (the objective and decoupleQ take its symmetric part in f64 where they need it).
struct LayerProblem {
  Tensor W;             // [rows, cols] f32, contiguous (a solver never writes it)
  Tensor sigma;         // [cols, cols] f32 Gram matrix, contiguous
  Tensor mu;            // [cols] mean input, or undefined
  int64_t tokens = 0;   // calibration tokens behind Σ (0: unknown)
  std::string site;     // activation site ("attn_in", …), "" when unknown
  // Mismatched objectives (Qronos, GPFQ; docs/methods.md#qronos): with x the full-precision input
  // and x̃ the quantized-prefix input (whose Gram matrix is `sigma`), cross = Σ x·x̃ᵀ and sigma_fp =
  // Σ x·xᵀ [cols, cols] f32, or undefined. The mismatched objective is ‖WX − ŴX̃‖².
  Tensor cross, sigma_fp;
  int block = 0;        // 1-based block of the linear (0: unknown) — seeds per-layer draws (QuIP, stochastic rounding)
  std::string name;     // the linear's name ("q", "down", …), "" when unknown
  // check_layer_problem (and μ's length); `fn` names the caller in errors.
  static LayerProblem make(Tensor W, Tensor sigma, Tensor mu = {}, int64_t tokens = 0, std::string site = "",
                           const char* fn = "layer problem");
};

// The objective of Ŵ on a validated problem (only Ŵ is checked).
Objective objective(const LayerProblem& p, const Tensor& What);

// Checks and sets p.cross and p.sigma_fp (both [cols, cols] f32, finite); `fn` names the caller.
void set_cross_statistics(LayerProblem& p, Tensor cross, Tensor sigma_fp, const char* fn);
// ‖WX − ŴX̃‖² = tr(W Σ_fp Wᵀ) − 2 tr(W G Ŵᵀ) + tr(Ŵ Σ Ŵᵀ) in f64 (docs/methods.md#qronos), and
// relative to tr(W Σ_fp Wᵀ); needs p.cross and p.sigma_fp.
Objective mismatched_objective(const LayerProblem& p, const Tensor& What);

// (1 − α)Σ + α·diag(Σ): shrinkage toward the diagonal, α in [0, 1] (methods.md#sigma-shrink) —
// α = 1 keeps only the per-input importances (what llama.cpp's imatrix sees), α = 0 is Σ.
Tensor shrink_sigma(const Tensor& Sigma, double alpha);

// diag Σ as floats: the column importances a grid's importance search weighs by (methods.md#grid-importance).
std::vector<float> sigma_diag(const Tensor& Sigma);

// Σ + λI with λ = percdamp·mean(diag Σ); dead inputs (Σ_jj = 0) get Σ_jj = 1 (methods.md#damping).
// Returns the damped copy; `dead` receives the dead column indices.
Tensor damp_sigma(const Tensor& Sigma, double percdamp, std::vector<int64_t>* dead = nullptr);

// Solvers report events (damping escalation, per-sweep objective) through this sink.
using SolverLog = std::function<void(const std::string& event, const std::string& detail)>;

}  // namespace qf
