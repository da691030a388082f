// qforge — LDLQ, QuIP's adaptive rounding (docs/methods.md#ldlq): with the damped Gram matrix
// factored as H = M·D·Mᵀ (M unit upper triangular, D diagonal), columns are rounded in order,
//   ŵ_k = Q(w_k + (W − Ŵ)_{:, <k} · M_{<k, k}),
// which minimises term k of f = Σ_k D_k‖((W − Ŵ)·M)_{:, k}‖² given the earlier columns. Written
// from the factorization alone (no GPTQ code): QuIP's theorem says it rounds exactly as GPTQ does
// (tests/test_ldlq.cpp checks it against our gptq()).
#pragma once
#include <Eigen/Core>

#include "quant/grid.h"
#include "quant/layer_problem.h"

namespace qf {

struct LdlqOptions {
  // Dynamic groups only: the group starting at position p is fitted from the weights with the
  // feedback of the columns before p's block of `blocksize` columns (GPTQ's lazy-batch staleness,
  // methods.md#gptq-groups); 1 = the feedback of every earlier column. Nothing else depends on it.
  int64_t blocksize = 128;
  double percdamp = 0.01;
  bool act_order = false;      // columns by decreasing diag(Σ) (stable)
  bool static_groups = false;  // group params from the original W up front (needs group > 0)
  int max_damp_tries = 8;      // factorization failure: damping ×10 and retry, logged
};

struct LdlqResult {
  QuantizedLinear q;
  double percdamp_used = 0;
  // [rows, cols] f32, original column order: the value each weight was rounded from,
  // w_k + (W − Ŵ)_{:, <k}·M_{<k, k} in processing order (W with dead columns zeroed).
  Tensor target;
};

// H = M·D·Mᵀ with M unit upper triangular and D > 0 (f64), from the LLᵀ factor of the reversed
// matrix: J·H·J = L·Lᵀ ⇒ M = J·L·diag(L)⁻¹·J, D = J·diag(L)²·J. False when H is not numerically
// positive definite (LLT failure, or a pivot D_k ≤ 1e-10·max diag H).
bool udu_factor(const Eigen::MatrixXd& H, Eigen::MatrixXd& M, Eigen::VectorXd& D);

// The same dead-input fix (Σ_jj = 0: H_jj = 1, W[:, j] = 0), damping (percdamp·mean diag, ×10 on
// failure), act-order and grids as gptq(); rows run in parallel, each row's arithmetic in a fixed
// order (f64), so results do not depend on the thread count.
LdlqResult ldlq(const LayerProblem& p, const GridSpec& spec, const LdlqOptions& opt = {}, const SolverLog& log = nullptr);
LdlqResult ldlq(const Tensor& W, const Tensor& Sigma, const GridSpec& spec, const LdlqOptions& opt = {},
                const SolverLog& log = nullptr);

}  // namespace qf
