// qforge — GPTQ / OPTQ (docs/methods.md#gptq): column-sequential rounding with the optimal
// update of the not-yet-quantized columns, lazy-batch Cholesky form.
#pragma once
#include "quant/grid.h"
#include "quant/layer_problem.h"

#include <vector>

namespace qf {

struct GptqOptions {
  int64_t blocksize = 128;
  double percdamp = 0.01;
  bool act_order = false;      // columns by decreasing diag(Σ)
  bool static_groups = false;  // group params from the original W up front (needs group > 0)
  int max_damp_tries = 8;      // Cholesky failure: multiply the damping by 10 and retry, logged
  // Stochastic OPTQ (docs/methods.md#stochastic-rounding): each column rounded to one of its two
  // neighbouring grid values, unbiased, from counter draws keyed by (seed, block, name) of the
  // problem and (row, column) — the same codes for any thread count.
  bool stochastic = false;
  uint64_t seed = 0;
};

struct GptqResult {
  QuantizedLinear q;        // codes, grid (g_idx reflects act-order when groups follow the permutation)
  double percdamp_used = 0; // after any escalation
  double proxy_loss = 0;    // Σ_j (w_j − q_j)² / U_jj² / 2 bookkeeping of the reference code
};

// W [rows, cols] f32, Sigma [cols, cols] (any positive scaling: H = 2/n·XXᵀ or raw XXᵀ).
GptqResult gptq(const Tensor& W, const Tensor& Sigma, const GridSpec& spec, const GptqOptions& opt = {},
                const SolverLog& log = nullptr);
GptqResult gptq(const LayerProblem& p, const GridSpec& spec, const GptqOptions& opt = {}, const SolverLog& log = nullptr);

// GPTQ with columns kept in full precision (OWQ's weak columns, methods.md#owq-gptq): the columns
// `keep` (0-based, distinct) take the last processing positions, in the order given (the others
// in index order, or by decreasing diag Σ under act_order), and are never rounded. They receive
// the error feedback of every rounded column; their final values go to *kept ([rows, keep.size()]
// f32, in keep's order) when kept is given, and their codes are the code of 0 (value exactly 0).
// The grid is fitted on the other columns only: per channel and static groups from W without
// the kept columns (a group of kept columns only is fitted on zeros), dynamic groups over the
// processing positions before the kept tail. Needs a uniform grid with integer zeros and no
// allocation, and at least one column to round. keep empty: exactly gptq().
GptqResult gptq_keep_columns(const LayerProblem& p, const GridSpec& spec, const std::vector<int64_t>& keep, Tensor* kept,
                             const GptqOptions& opt = {}, const SolverLog& log = nullptr);

// GPTQ's error-feedback rounding onto a FIXED grid (methods.md#gptq-on-grid; decoupleQ's integer
// step, methods.md#decoupleq-gptq): the same dead-input fix, damping (with escalation), act-order
// and lazy-batch loop as gptq(), but no grid is fit — column col is rounded in group
// grid.g_idx[col] with the grid's own (scale, zero), which the result keeps unchanged
// (static_groups is ignored). The grid must match W's shape.
GptqResult gptq_on_grid(const Tensor& W, const Tensor& Sigma, const Grid& grid, const GptqOptions& opt = {},
                        const SolverLog& log = nullptr);
GptqResult gptq_on_grid(const LayerProblem& p, const Grid& grid, const GptqOptions& opt = {}, const SolverLog& log = nullptr);

// The inverse factor (methods.md#gptq-cholesky): U upper triangular with H⁻¹ = UᵀU (f64). False
// when H is not numerically positive definite (LLT failure, a Cholesky pivot² ≤ 1e-10·max diag H,
// or a non-finite U).
bool gptq_inverse_cholesky(const Eigen::MatrixXd& H, Eigen::MatrixXd& U);

}  // namespace qf
