// GPTQ / OPTQ, docs/methods.md#gptq (IST-DASLab/gptq fasterquant), lazy-batch Cholesky form.
//
// Layout: the working weight is column-major f32 [rows, cols] in processing order, so a column
// is contiguous and the block GEMM is a plain Eigen product. U (Cholesky of H⁻¹) is computed in
// f64 and used in f32, like the reference's W/H updates.
#include "solvers/gptq.h"

#include "core/rng.h"

#include <Eigen/Dense>
#include "backend/backend.h"
#include <algorithm>
#include <cmath>
#include <numeric>

namespace qf {

using MatD = Eigen::MatrixXd;
using MatF = Eigen::MatrixXf;  // column-major

// H = R Rᵀ with R upper (R = J·chol(JHJ)·J, J = reversal) ⇒ H⁻¹ = R⁻ᵀR⁻¹, so by uniqueness the
// upper Cholesky factor of H⁻¹ is U = R⁻¹ = J·L⁻¹·J with L = chol(JHJ). Same U as the
// reference's chol(H) → cholesky_inverse → chol(upper), without forming H⁻¹ (one LLT + one
// triangular inverse). A is consumed (holds the factor); peak memory is two c×c f64 matrices.
static bool inverse_cholesky_inplace(MatD& A, MatD& U) {
  const int64_t n = A.rows();
  if (n == 0 || A.cols() != n) return false;
  const double dmax = A.diagonal().maxCoeff();
  A.reverseInPlace();  // J H J
  if (!backend().cholesky_lower(A.data(), n)) return false;  // in place: A's lower part becomes L
  for (int64_t k = 0; k < n; ++k) {
    const double p = A(k, k);
    if (!(p * p > 1e-10 * dmax)) return false;  // numerically singular: U would be noise
  }
  U.resize(n, n);
  backend().lower_triangular_inverse(A.data(), n, U.data());  // L⁻¹
  U.reverseInPlace();  // J L⁻¹ J: upper
  return U.allFinite();
}

bool gptq_inverse_cholesky(const MatD& H, MatD& U) {
  MatD A = H;
  return inverse_cholesky_inplace(A, U);
}

// The GPTQ machinery (methods.md#gptq) shared by gptq() and gptq_on_grid(). fixed = nullptr:
// gptq()'s own grid (per-channel or static groups fit up front, dynamic groups fit lazily from
// the updated W); otherwise every column is rounded on *fixed (never refit), column col in
// group g_idx[col].
static GptqResult gptq_impl(const char* fn, const LayerProblem& lp, const GridSpec& spec, const Grid* fixed,
                            const GptqOptions& opt, const SolverLog& log) {
  const Tensor& W = lp.W;
  const Tensor& Sigma = lp.sigma;
  spec.validate();
  if (opt.blocksize < 1) fail(fn, ": blocksize must be >= 1, got ", opt.blocksize);
  if (!(opt.percdamp >= 0) || !std::isfinite(opt.percdamp)) fail(fn, ": percdamp must be >= 0, got ", opt.percdamp);
  if (opt.max_damp_tries < 0) fail(fn, ": max_damp_tries must be >= 0, got ", opt.max_damp_tries);
  const int64_t r = W.size(0), c = W.size(1);
  const int64_t G = spec.group > 0 ? spec.group : c;
  const bool grouped = spec.group > 0;
  // Columns fitted together: a group, or a K-quant super-block of several groups (methods.md#kquant-grids).
  const int64_t Gf = spec.kind == GridKind::KQuant ? (int64_t)kKQuantSuper : G;
  // static_groups with a per-channel grid is a no-op (the per-row grid is already fit up front).
  const bool stat = grouped && opt.static_groups;
  const bool dynamic = !fixed && grouped && !stat;  // groups fit lazily inside the column loop

  // Per-channel grid: fit from W before the dead-column fix (as the reference's first find_params).
  const std::vector<float> imp = sigma_diag(Sigma);  // column importances for spec.importance
  Grid grid = fixed ? *fixed : grouped ? grid_new(spec, r, c) : grid_fit(W, spec, imp.data());

  // Dead inputs (methods.md#dead-inputs): Σ_jj = 0 → H_jj = 1, W[:, j] = 0.
  const auto S = Sigma.cmat();
  std::vector<char> dead((size_t)c, 0);
  for (int64_t j = 0; j < c; ++j) dead[(size_t)j] = S(j, j) == 0.f;
  auto hdiag = [&](int64_t j) { return dead[(size_t)j] ? 1.0 : (double)S(j, j); };
  Tensor W0 = W.clone();  // row-major original with dead columns zeroed
  {
    auto M = W0.mat();
    for (int64_t j = 0; j < c; ++j)
      if (dead[(size_t)j]) M.col(j).setZero();
  }
  // static_groups: every group's params from the original (unpermuted, dead-zeroed) W, up front.
  if (stat && !fixed) grid = grid_fit(W0, spec, imp.data());

  // act_order: perm = stable argsort(diag H, descending); processing position p holds column perm[p].
  std::vector<int64_t> perm((size_t)c);
  std::iota(perm.begin(), perm.end(), 0);
  if (opt.act_order) std::stable_sort(perm.begin(), perm.end(), [&](int64_t a, int64_t b) { return hdiag(a) > hdiag(b); });

  // Damped H and its inverse factor (methods.md#gptq-cholesky): H = P(Σ, dead fixed)Pᵀ +
  // percdamp·mean(diag H)·I (mean over the permuted diagonal, as the reference damps after
  // permuting), U = upper Cholesky of H⁻¹ in f64.
  // Cholesky failure: percdamp ×10 (0 → 1e-4) and retry, logged; H is rebuilt from Σ each try.
  double mean_diag = 0;
  for (int64_t p = 0; p < c; ++p) mean_diag += hdiag(perm[p]);
  mean_diag /= (double)c;
  double pd = opt.percdamp;
  MatD Ud;
  for (int t = 0;; ++t) {
    // Filled as H(q, p) = Σ(perm[p], perm[q]) (reads Σ by rows, writes H by columns); the LLT
    // reads H's upper triangle = Σ's lower triangle, as torch.linalg.cholesky.
    MatD H(c, c);
    for (int64_t p = 0; p < c; ++p)
      for (int64_t q = 0; q < c; ++q) H(q, p) = p == q ? hdiag(perm[p]) + pd * mean_diag : (double)S(perm[p], perm[q]);
    if (inverse_cholesky_inplace(H, Ud)) break;
    if (t >= opt.max_damp_tries)
      fail(fn, ": Sigma ", shape_str(Sigma.shape()), " (W ", shape_str(W.shape()), ") is not positive definite even with percdamp ",
           pd, " after ", t, " damping escalations");
    pd = pd > 0 ? pd * 10 : 1e-4;
    if (log) log("damping", "Cholesky failed; retrying with percdamp " + std::to_string(pd));
  }
  const MatF U = Ud.cast<float>();
  Ud.resize(0, 0);

  // Working weight, column-major, processing order.
  MatF Wp(r, c);
  {
    const auto M = W0.cmat();
    for (int64_t p = 0; p < c; ++p) Wp.col(p) = M.col(perm[p]);
  }

  // Group used by processing position p; g_idx (original column → group) follows it.
  std::vector<int64_t> gsel((size_t)c, 0);
  for (int64_t p = 0; p < c; ++p) gsel[(size_t)p] = fixed ? grid.g_idx[(size_t)perm[p]] : stat ? perm[p] / G : p / G;
  if (dynamic)
    for (int64_t p = 0; p < c; ++p) grid.g_idx[(size_t)perm[p]] = (int32_t)(p / G);

  GptqResult res;
  res.percdamp_used = pd;
  res.q.codes = Tensor::empty({r, c}, DType::U8);
  uint8_t* codes = res.q.codes.data<uint8_t>();
  const int64_t B = opt.blocksize;
  MatF E(r, std::min(B, c));
  std::vector<double> loss;  // per row chunk of the backend: a deterministic sum

  for (int64_t i1 = 0; i1 < c; i1 += B) {
    const int64_t i2 = std::min(c, i1 + B);
    // Dynamic groups (methods.md#gptq-groups): the reference fits the group starting at column j
    // from W[:, j:j+g], i.e. the weights as of the start of this block (updates of earlier blocks
    // only; earlier columns of this block live in W1). W does not change inside a block, so every
    // group starting in [i1, i2) is fit here, before the block is touched. For g < B the later
    // groups of a block therefore see partially stale weights — reproduced on purpose.
    if (dynamic)
      for (int64_t p = i1; p < i2; ++p)
        if (p % Gf == 0) {
          // The group's columns as a Tensor: [w, r] storage (= column-major [r, w]) viewed transposed.
          const int64_t w = std::min(Gf, c - p);
          Tensor blk = Tensor::empty({w, r});
          std::copy(Wp.col(p).data(), Wp.col(p).data() + w * r, blk.f32());
          std::vector<float> impp((size_t)w);  // the group's importances in processing order
          for (int64_t k = 0; k < w; ++k) impp[(size_t)k] = imp[(size_t)perm[p + k]];
          grid_fit_group(grid, p / Gf, blk.t(), impp.data());
        }

    // The block's columns with the in-block error feedback, then the lazy-batch update of the
    // later columns (docs/methods.md#gptq-update): the backend's GPTQ kernel.
    GptqBlock kb;
    kb.W = Wp.data();
    kb.rows = r;
    kb.cols = c;
    kb.U = U.data();
    kb.i1 = i1;
    kb.i2 = i2;
    kb.grid = &grid;
    kb.perm = perm.data();
    kb.group = gsel.data();
    kb.codes = codes;
    kb.E = E.data();
    kb.loss = &loss;
    kb.stochastic = opt.stochastic;
    kb.stochastic_key = opt.stochastic ? layer_key(opt.seed, lp.block, lp.name.c_str()) : 0;
    backend().gptq_block(kb);
  }
  res.proxy_loss = std::accumulate(loss.begin(), loss.end(), 0.0) / 2;
  res.q.grid = std::move(grid);
  return res;
}

GptqResult gptq(const Tensor& W, const Tensor& Sigma, const GridSpec& spec, const GptqOptions& opt, const SolverLog& log) {
  return gptq_impl("gptq", LayerProblem::make(W, Sigma, {}, 0, "", "gptq"), spec, nullptr, opt, log);
}

GptqResult gptq(const LayerProblem& p, const GridSpec& spec, const GptqOptions& opt, const SolverLog& log) {
  return gptq_impl("gptq", p, spec, nullptr, opt, log);
}

GptqResult gptq_on_grid(const Tensor& W, const Tensor& Sigma, const Grid& grid, const GptqOptions& opt, const SolverLog& log) {
  const char* fn = "gptq_on_grid";
  if (!W.defined() || W.dim() != 2) fail(fn, ": expected a 2-d weight, got ", W.defined() ? shape_str(W.shape()) : std::string("undefined"));
  return gptq_on_grid(LayerProblem::make(W, Sigma, {}, 0, "", fn), grid, opt, log);
}

GptqResult gptq_on_grid(const LayerProblem& p, const Grid& grid, const GptqOptions& opt, const SolverLog& log) {
  const char* fn = "gptq_on_grid";
  const Tensor& W = p.W;
  if (!W.defined() || W.dim() != 2) fail(fn, ": expected a 2-d weight, got ", W.defined() ? shape_str(W.shape()) : std::string("undefined"));
  if (grid.rows != W.size(0) || grid.cols != W.size(1))
    fail(fn, ": the grid is [", grid.rows, ", ", grid.cols, "] but W is ", shape_str(W.shape()));
  const size_t np = (size_t)(grid.nrowgroups() * grid.ngroups);
  if (grid.ngroups < 1 || grid.scale.size() != np || grid.zero.size() != np || grid.g_idx.size() != (size_t)grid.cols)
    fail(fn, ": the grid's parameter arrays do not match its shape");
  for (int32_t g : grid.g_idx)
    if (g < 0 || g >= grid.ngroups) fail(fn, ": g_idx holds group ", g + 1, " outside 1..", grid.ngroups, " (1-based)");
  return gptq_impl(fn, p, grid.spec, &grid, opt, log);
}

}  // namespace qf
