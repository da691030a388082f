// qforge — QuIP's incoherence processing (docs/methods.md#quip, arXiv 2307.13304): a layer problem
// (W, Σ, μ) turned into an equivalent one in which no weight and no input direction stands out,
//   W′ = O⁻¹·W·T⁻¹ = U·W·diag(s)·Vᵀ,   Σ′ = T·Σ·Tᵀ,   μ′ = T·μ,
//   T = V·diag(1/s) (input side),  O = Uᵀ (output side),
// with s_j = ((Σ_jj / max_k Σ_kk) / ‖W_:j‖²)^{1/4} the diagonal rescaling and U, V random orthogonal
// transforms rebuilt from 64-bit seeds (randomized Hadamard or QuIP's Kronecker butterfly,
// core/linalg.h). A solver quantizes W′ on Σ′; the quantized linear carries T and O
// (QuantizedLinear::input/output), so its effective weight O·Ŵ′·T approximates W and
// tr((W − O·Ŵ′·T)·Σ·(…)ᵀ) = tr((W′ − Ŵ′)·Σ′·(…)ᵀ) exactly in real arithmetic.
#pragma once
#include <cstdint>
#include <string>

#include "quant/grid.h"
#include "quant/layer_problem.h"

namespace qf {

enum class IncoherenceSides : uint8_t { Both, Input, Output };
const char* incoherence_sides_name(IncoherenceSides s);  // "both", "input", "output"
bool incoherence_sides_from_name(const std::string& name, IncoherenceSides* s);

struct IncoherenceOptions {
  uint64_t seed = 0;  // the layer's seed (quip_layer_seed); the two sides' seeds derive from it
  bool rescale = true;  // the diagonal rescaling s (off: s = 1)
  IncoherenceSides sides = IncoherenceSides::Both;
  TransformKind kind = TransformKind::Hadamard;  // Hadamard or Butterfly
  bool measure_sigma = false;  // also μ of Σ's eigenvectors before and after (two O(n³) eigendecompositions)
};

// How incoherent the problem was and became (f64). μ(W) = max|W_ij|·√(rows·cols)/‖W‖_F, in
// [1, √(rows·cols)]; diag ratio = max_j Σ_jj / mean_j Σ_jj, in [1, n]; μ(Σ) = max|Q_ij|·√n for
// the eigenvectors Q of Σ, in [1, √n] (NaN unless measured).
struct IncoherenceStats {
  double mu_w_before = 0, mu_w_after = 0;
  double sigma_diag_before = 0, sigma_diag_after = 0;
  double mu_sigma_before = NAN, mu_sigma_after = NAN;
  double scale_min = 1, scale_max = 1;  // the range of s
  int64_t dead_inputs = 0;              // Σ_jj = 0: W[:, j] zeroed before rotating (methods.md#dead-inputs)
};

struct IncoherenceResult {
  LayerProblem problem;           // W′, Σ′, μ′ (tokens, site, block, name kept)
  LinearTransform input, output;  // T and O: W_eff = O·Ŵ′·T
  uint64_t input_seed = 0, output_seed = 0;
  IncoherenceStats stats;
};

// The transformed problem and its transforms. sides = input: O = none; sides = output: T =
// diag(1/s) (a Diagonal transform; none when rescale is off). Deterministic in (problem, options).
IncoherenceResult incoherence(const LayerProblem& p, const IncoherenceOptions& o);

// The per-side seeds of a layer seed: the first two outputs of splitmix64 started at it, each
// shifted right by 1 (below 2^63, so Lua integers hold them).
uint64_t incoherence_side_seed(uint64_t layer_seed, bool output_side);
// A layer's seed from a run seed and the linear's place (block 1-based, linear name):
// x = splitmix64(run_seed) ⊕ block; x = splitmix64(x) ⊕ FNV-1a-64(name); splitmix64(x) — every
// splitmix64 here the stateless mix of its argument (rng.h's, one step from the argument).
uint64_t quip_layer_seed(uint64_t run_seed, int64_t block, const std::string& linear);

double mu_incoherence(const Tensor& W);          // μ(W) above
double mu_eigen_incoherence(const Tensor& Sigma);  // μ(Σ) above (symmetric part, f64 eigenvectors)
double sigma_diag_ratio(const Tensor& Sigma);      // max diag / mean diag (1 for a zero diagonal)

}  // namespace qf
