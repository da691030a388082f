// qforge — MagR: ℓ∞ weight-magnitude reduction before quantization (docs/methods.md#magr).
// A preprocessing step: it returns a weight W′ with smaller per-row (or per-group) maxima and
// nearly the same layer outputs, for any solver to quantize; Σ and μ are unchanged.
#pragma once
#include <cstdint>
#include <vector>

#include "quant/layer_problem.h"

namespace qf {

// Euclidean projection of v (n values) onto the ℓ1 ball of the given radius (finite, >= 0),
// written to out (which may alias v): out = v when ‖v‖₁ <= radius, else
// out_i = sign(v_i)·max(|v_i| − θ, 0) with θ > 0 chosen so that ‖out‖₁ = radius — the sort-based
// rule of docs/methods.md#magr-prox, in f64. Returns θ (0 when v is inside the ball; radius 0
// projects a nonzero v onto {0} and returns max|v_i|).
double project_l1_ball(const double* v, int64_t n, double radius, double* out);

// The proximal map of τ‖·‖∞ at v (τ finite, >= 0), by Moreau's decomposition
// prox_{τ‖·‖∞}(v) = v − Proj_{τ·B₁}(v) = v − τ·Proj_{B₁}(v/τ): every |v_i| is clipped at the
// projection's θ, out_i = sign(v_i)·min(|v_i|, θ) (all zero when ‖v‖₁ <= τ; out = v when τ = 0).
// out may alias v. Returns θ (+inf when τ = 0).
double prox_linf(const double* v, int64_t n, double tau, double* out);

struct MagrOptions {
  // Weight of the ℓ∞ penalty, with the quadratic term normalised by λmax(Σ) (methods.md#magr-alpha):
  // the reference code's α (1e-3 per channel, 1e-4 per group of 128).
  double alpha = 1e-3;
  int iters = 200;      // proximal-gradient iterations (fixed count, no early stop)
  int64_t group = -1;   // -1: one ℓ∞ term per row; g >= 1: one per group of g consecutive inputs of a row
};

struct MagrResult {
  Tensor W;                        // W′ [rows, cols] f32 (contiguous)
  std::vector<double> objective;   // the composite objective F (methods.md#magr) at W and after every iteration
  double fidelity = 0;             // tr((W′ − W) Σ (W′ − W)ᵀ): the layer objective of W′ (objective(p, W′))
  double relative = 0;             // fidelity / tr(W Σ Wᵀ)
  double linf_ratio = 1;           // mean over rows of max|W′_row| / max|W_row| (an all-zero row counts 1)
  double linf_group_ratio = 1;     // the same over (row, group) cells (= linf_ratio per row)
  double lambda_max = 0;           // λmax(Σ) (power iteration, f64)
  int iters = 0;                   // iterations run (0 when Σ = 0: W′ = W)
  double seconds = 0;
};

// min over W′ of F(W′) = ½·tr((W′ − W) Σ (W′ − W)ᵀ)/λmax(Σ) + alpha·Σ_rows Σ_groups ‖W′_cell‖∞ by
// proximal gradient with step 1 (= 1/λmax in Σ's units) from W′ = W (methods.md#magr). Rows are
// independent: they run in fixed chunks, in f64, so the result is the same bits for any thread
// count. Σ = 0 leaves W unchanged. Options out of range fail naming the option.
MagrResult magr(const LayerProblem& p, const MagrOptions& opt = {}, const SolverLog& log = nullptr);

}  // namespace qf
