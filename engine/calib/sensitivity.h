// qforge — CVXQ's sensitivity statistics (docs/methods.md#cvxq-statistics), a calibration product
// built on the backward pass: squared gradients of PCA-projected final hidden states.
//
//  1. hidden_pca: the covariance of the final hidden states hn = rmsnorm(h_L) (the classifier
//     removed) over every calibration token, and its top-k eigenvectors V.
//  2. gradient_statistics: calibration iteration i takes window(s) i mod nwin and component
//     k = i mod K; for each token position t on the stride grid it back-propagates the scalar
//     z = Σ_batch v_kᵀ hn_t through the whole model, squares every linear's weight gradient
//     dz/dW = Σ_tokens δ xᵀ elementwise and adds it into a running mean per weight. The per-row
//     means Ḡ²_i and the (row cluster × column) means G²_g are reductions of that mean
//     (group_mean in cvxq.h), so the clustering can be redone at every allocation.
//
// Attention is causal, so dz/dW for position t needs only tokens 0..t: each position runs on
// its window's prefix of t + 1 tokens (the same gradient as the full window, ~T/2 less work).
// joint_positions sums the positions of an iteration into one z instead (one backward per
// iteration; the cross terms between positions then enter the square).
//
// Memory: one f32 per linear weight (the running means) plus one backward's activations per
// pass in flight. Small models run whole passes in parallel (one per thread, see
// max_concurrent_passes); their dW² still enter the sums in pass order, so results are
// bit-identical for any thread count.
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "model/model.h"

namespace qf {

struct HiddenPca {
  Tensor components;                // [k, dim] f32: eigenvectors, decreasing eigenvalue
  std::vector<double> eigenvalues;  // [k]
  double total_variance = 0;        // trace of the covariance (all dim eigenvalues)
  int64_t tokens = 0;
};

// windows: nwin·T token ids (window-major, as Calibration holds them). The covariance is
// centred, accumulated in f64; windows run `chunk` at a time. Each eigenvector's sign is fixed
// (largest-magnitude entry positive) so the basis is reproducible.
// progress(windows done, nwin, seconds) after every chunk of windows.
using GradStatsProgress = std::function<void(int done, int total, double seconds)>;
HiddenPca hidden_pca(const Model& m, const std::vector<int32_t>& windows, int nwin, int T, int k, int chunk = 8,
                     const GradStatsProgress& progress = nullptr);

struct GradStatsOptions {
  int iters = 0;                 // calibration iterations (0: one per window-batch, each window once)
  int batch = 1;                 // windows per iteration (z sums over them)
  int stride = 128;              // positions t = stride−1, 2·stride−1, … < T (T−1 if T < stride)
  bool joint_positions = false;  // one backward of Σ_t z_t per iteration instead of one per position
  // Backward passes run at once (0: as many as threads and memory allow for a model with
  // blocks under 2^20 weights, one at a time for bigger ones; 1: one at a time, each pass's
  // loops shared among the threads). Speed only: the bits are the same for any value.
  int max_concurrent_passes = 0;
};

struct GradStats {
  // g2[layer][j]: running mean of (dz/dW)² for the block's j-th linear (Block::linears order), [out, in].
  std::vector<std::vector<Tensor>> g2;
  std::vector<std::vector<std::string>> names;  // parallel to g2
  int iters = 0;
  int64_t samples = 0;  // backward passes averaged (iterations × positions, or iterations if joint)
  double seconds = 0;
};

// Errors (naming the option) unless 1 <= batch <= nwin, stride >= 1, iters >= 0.
void check_grad_stats_options(const GradStatsOptions& opt, int nwin);

// Progress: called after each iteration with (i + 1, iters, seconds so far).
GradStats gradient_statistics(const Model& m, const std::vector<int32_t>& windows, int nwin, int T,
                              const HiddenPca& pca, const GradStatsOptions& opt,
                              const GradStatsProgress& progress = nullptr);

// Ḡ²_i: the mean of each row of a g2 matrix [out, in] (f64 sums).
std::vector<double> row_means(const Tensor& g2);

}  // namespace qf
