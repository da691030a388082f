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
// keep (OWQ, methods.md#owq-gptq): columns processed last and never rounded; their values after
// the error feedback go to *kept. Empty or null: plain GPTQ.
static GptqResult gptq_impl(const char* fn, const LayerProblem& lp, const GridSpec& spec, const Grid* fixed,
                            const GptqOptions& opt, const SolverLog& log, const std::vector<int64_t>* keep = nullptr,
                            Tensor* kept = nullptr) {
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

  // Kept columns (OWQ): nk of them occupy the last processing positions [nq, c).
  const int64_t nk = keep ? (int64_t)keep->size() : 0, nq = c - nk;
  std::vector<char> is_kept((size_t)c, 0);
  if (nk > 0) {
    if (fixed) fail(fn, ": kept columns need a grid fitted by GPTQ, not a fixed grid");
    if (spec.kind != GridKind::Uniform || spec.float_zero || spec.mixed_bits() || !spec.row_group.empty())
      fail(fn, ": kept full-precision columns need a uniform grid with integer zeros and no allocation (their codes ",
           "decode to 0), got ", spec.str());
    if (nq < 1) fail(fn, ": ", nk, " kept columns of a ", shape_str(W.shape()), " weight leave no column to quantize");
    for (int64_t j : *keep) {
      if (j < 0 || j >= c) fail(fn, ": kept column ", j + 1, " is outside 1..", c);
      if (is_kept[(size_t)j]) fail(fn, ": kept column ", j + 1, " is listed twice");
      is_kept[(size_t)j] = 1;
    }
  }
  // The columns of M that are not kept, as a Tensor [r, n] (a copy), with their importances.
  auto unkept_cols = [&](const Tensor& M, int64_t c0, int64_t c1, const std::vector<float>& impv, std::vector<float>& impo) {
    std::vector<int64_t> cols;
    for (int64_t j = c0; j < c1; ++j)
      if (!is_kept[(size_t)j]) cols.push_back(j);
    impo.clear();
    if (cols.empty()) {  // a group of kept columns only: fitted on one zero column (the range (−1, 1))
      impo.push_back(0.f);
      return Tensor::zeros({r, 1});
    }
    Tensor out = Tensor::empty({r, (int64_t)cols.size()});
    auto O = out.mat();
    const auto Mm = M.cmat();
    for (size_t k = 0; k < cols.size(); ++k) {
      O.col((int64_t)k) = Mm.col(cols[k]);
      impo.push_back(impv[(size_t)cols[k]]);
    }
    return out;
  };

  // Per-channel grid: fit from W before the dead-column fix (as the reference's first find_params);
  // with kept columns, from the other columns only.
  const std::vector<float> imp = sigma_diag(Sigma);  // column importances for spec.importance
  Grid grid = fixed ? *fixed : grouped ? grid_new(spec, r, c) : nk == 0 ? grid_fit(W, spec, imp.data()) : grid_new(spec, r, c);
  if (!fixed && !grouped && nk > 0) {
    std::vector<float> impo;
    const Tensor blk = unkept_cols(W, 0, c, imp, impo);
    grid_fit_group(grid, 0, blk, impo.data());
  }

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
  // static_groups: every group's params from the original (unpermuted, dead-zeroed) W, up front
  // (with kept columns: from each group's other columns).
  if (stat && !fixed && nk == 0) grid = grid_fit(W0, spec, imp.data());
  if (stat && !fixed && nk > 0)
    for (int64_t k = 0; k < grid.ngroups; ++k) {
      std::vector<float> impo;
      const Tensor blk = unkept_cols(W0, k * G, std::min(c, (k + 1) * G), imp, impo);
      grid_fit_group(grid, k, blk, impo.data());
    }

  // act_order: perm = stable argsort(diag H, descending); processing position p holds column perm[p].
  // Kept columns go last, in the order given (methods.md#owq-gptq).
  std::vector<int64_t> perm;
  perm.reserve((size_t)c);
  for (int64_t j = 0; j < c; ++j)
    if (!is_kept[(size_t)j]) perm.push_back(j);
  if (opt.act_order) std::stable_sort(perm.begin(), perm.end(), [&](int64_t a, int64_t b) { return hdiag(a) > hdiag(b); });
  if (nk > 0) perm.insert(perm.end(), keep->begin(), keep->end());

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

  // Only the first nq positions are rounded; the block GEMM still updates every later column,
  // the kept tail included (methods.md#owq-gptq).
  for (int64_t i1 = 0; i1 < nq; i1 += B) {
    const int64_t i2 = std::min(nq, i1 + B);
    // Dynamic groups (methods.md#gptq-groups): the reference fits the group starting at column j
    // from W[:, j:j+g], i.e. the weights as of the start of this block (updates of earlier blocks
    // only; earlier columns of this block live in W1). W does not change inside a block, so every
    // group starting in [i1, i2) is fit here, before the block is touched. For g < B the later
    // groups of a block therefore see partially stale weights — reproduced on purpose.
    if (dynamic)
      for (int64_t p = i1; p < i2; ++p)
        if (p % Gf == 0) {
          // The group's columns as a Tensor: [w, r] storage (= column-major [r, w]) viewed transposed.
          const int64_t w = std::min(Gf, nq - p);  // never the kept tail
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
  if (nk > 0) {
    // Dynamic groups made only of kept positions were never fitted: fit them on a zero column
    // (the range (−1, 1)) so every cell holds a valid grid.
    if (dynamic)
      for (int64_t p = ((nq + Gf - 1) / Gf) * Gf; p < c; p += Gf) {
        const float zero_importance = 0.f;
        grid_fit_group(grid, p / Gf, Tensor::zeros({r, 1}), &zero_importance);
      }
    // The kept columns' values after the error feedback, and their codes: the code of 0, whose
    // value is exactly 0 on a uniform grid with an integer zero in 0..maxq.
    if (kept) *kept = Tensor::empty({r, nk});
    for (int64_t k = 0; k < nk; ++k) {
      const int64_t p = nq + k, col = perm[(size_t)p];
      const int64_t g = grid.g_idx[(size_t)col];
      for (int64_t i = 0; i < r; ++i) {
        const int q0 = grid.code(0.f, i, g);
        if (grid.value(q0, i, g) != 0.f) fail(fn, ": the grid cannot represent 0 at row ", i + 1, ", column ", col + 1);
        codes[i * c + col] = (uint8_t)q0;
        if (kept) kept->f32()[i * nk + k] = Wp(i, p);
      }
    }
  }
  res.q.grid = std::move(grid);
  return res;
}

GptqResult gptq(const Tensor& W, const Tensor& Sigma, const GridSpec& spec, const GptqOptions& opt, const SolverLog& log) {
  return gptq_impl("gptq", LayerProblem::make(W, Sigma, {}, 0, "", "gptq"), spec, nullptr, opt, log);
}

GptqResult gptq(const LayerProblem& p, const GridSpec& spec, const GptqOptions& opt, const SolverLog& log) {
  return gptq_impl("gptq", p, spec, nullptr, opt, log);
}

GptqResult gptq_keep_columns(const LayerProblem& p, const GridSpec& spec, const std::vector<int64_t>& keep, Tensor* kept,
                             const GptqOptions& opt, const SolverLog& log) {
  return gptq_impl("gptq", p, spec, nullptr, opt, log, &keep, kept);
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
