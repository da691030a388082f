// qforge — outlier-aware QuantEase (docs/methods.md#outliers):
//   min ‖(W − Ŵ − Hs) X‖²  over Ŵ on the grid and Hs with ‖Hs‖₀ ≤ s,
// alternating one CD sweep on Ŵ (target W − Hs, methods.md#cd-update) with one
// iterative-hard-thresholding step on Hs. Implemented from the formulas, not from
// quantease_outlier.py (which never writes Ŵ; methods.md#outliers-caveat).
#include "solvers/quantease_outliers.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "solvers/quantease.h"
#include "core/rng.h"

namespace qf {

namespace {

// A grid from per-(row, group) ranges [rows × ngroups, row-major]; each range is widened to hold 0
// (methods.md#grid).
Grid grid_from_ranges(const GridSpec& spec, int64_t rows, int64_t cols, const std::vector<float>& xmin,
                      const std::vector<float>& xmax) {
  Grid g = grid_new(spec, rows, cols);
  for (size_t k = 0; k < g.scale.size(); ++k)
    grid_params_from_range(std::min(0.f, xmin[k]), std::max(0.f, xmax[k]), g.maxq(), spec.sym, &g.scale[k], &g.zero[k], spec.mapping);
  return g;
}

// Unstructured (methods.md#outlier-grid): per (row, group) range with the n = round(width·ratio/2)
// smallest and n largest values excluded: xmin = sorted[n], xmax = sorted[width − 1 − n] (per
// channel: width = cols).
Grid trimmed_grid(const Tensor& W, const GridSpec& spec, double ratio) {
  const int64_t r = W.size(0), c = W.size(1);
  Grid g = grid_new(spec, r, c);
  const int64_t G = g.group_size();
  std::vector<float> lo(g.scale.size()), hi(g.scale.size());
  const Tensor Wc = W.contiguous();
  const float* M = Wc.f32();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < r; ++i) {
    std::vector<float> v;
    for (int64_t k = 0; k < g.ngroups; ++k) {
      const int64_t c0 = k * G, width = std::min(G, c - c0);
      const int64_t n = std::min((int64_t)std::llround((double)width * ratio / 2.0), (width - 1) / 2);
      v.assign(M + i * c + c0, M + i * c + c0 + width);
      std::nth_element(v.begin(), v.begin() + n, v.end());
      lo[(size_t)(i * g.ngroups + k)] = v[(size_t)n];
      std::nth_element(v.begin(), v.begin() + (width - 1 - n), v.end());
      hi[(size_t)(i * g.ngroups + k)] = v[(size_t)(width - 1 - n)];
    }
  }
  return grid_from_ranges(spec, r, c, lo, hi);
}

// Structured (methods.md#outlier-grid): per (row, group) min/max over the columns that
// are not outliers.
Grid support_grid(const Tensor& W, const GridSpec& spec, const std::vector<char>& outlier_col) {
  const int64_t r = W.size(0), c = W.size(1);
  Grid g = grid_new(spec, r, c);
  std::vector<float> lo(g.scale.size(), 0.f), hi(g.scale.size(), 0.f);
  const auto M = W.cmat();
  for (int64_t i = 0; i < r; ++i)
    for (int64_t j = 0; j < c; ++j) {
      if (outlier_col[(size_t)j]) continue;
      const size_t k = (size_t)(i * g.ngroups + g.g_idx[j]);
      lo[k] = std::min(lo[k], M(i, j));
      hi[k] = std::max(hi[k], M(i, j));
    }
  return grid_from_ranges(spec, r, c, lo, hi);
}

// P_k: keep the k largest |entries| of H (structured: the k columns of largest L2 norm), zero the
// rest. Ties go to the smaller (row-major) index, so exactly k survive.
void project_topk(MatRM& H, int64_t k, bool structured) {
  if (structured) {
    const int64_t c = H.cols();
    std::vector<double> norm((size_t)c);
    for (int64_t j = 0; j < c; ++j) norm[(size_t)j] = H.col(j).cast<double>().squaredNorm();
    std::vector<int64_t> idx((size_t)c);
    std::iota(idx.begin(), idx.end(), 0);
    std::stable_sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) { return norm[(size_t)a] > norm[(size_t)b]; });
    for (int64_t t = k; t < c; ++t) H.col(idx[(size_t)t]).setZero();
    return;
  }
  const int64_t n = H.size();
  float* h = H.data();
  if (k >= n) return;
  if (k == 0) {
    H.setZero();
    return;
  }
  std::vector<float> a((size_t)n);
  for (int64_t t = 0; t < n; ++t) a[(size_t)t] = std::fabs(h[t]);
  std::nth_element(a.begin(), a.begin() + (k - 1), a.end(), std::greater<float>());
  const float thr = a[(size_t)(k - 1)];  // the k-th largest |h|
  int64_t above = 0;
  for (int64_t t = 0; t < n; ++t) above += std::fabs(h[t]) > thr;
  int64_t ties = k - above;  // entries equal to thr still to keep, in index order
  for (int64_t t = 0; t < n; ++t) {
    const float m = std::fabs(h[t]);
    if (m > thr) continue;
    if (m == thr && ties > 0) {
      --ties;
      continue;
    }
    h[t] = 0.f;
  }
}

void check_same_shape(const char* fn, const char* name, const Tensor& A, int64_t r, int64_t c) {
  if (!A.defined() || A.dim() != 2 || A.size(0) != r || A.size(1) != c || A.dtype() != DType::F32)
    fail(fn, ": ", name, " must be f32 ", shape_str({r, c}), ", got ",
         A.defined() ? shape_str(A.shape()) + " " + dtype_name(A.dtype()) : std::string("undefined"));
  for (float v : A.contiguous().to_vector())
    if (!std::isfinite(v)) fail(fn, ": ", name, " has a non-finite entry");
}

}  // namespace

double lambda_max(const Tensor& Sigma, int iters) {
  const char* fn = "lambda_max";
  if (!Sigma.defined() || Sigma.dim() != 2 || Sigma.size(0) != Sigma.size(1) || Sigma.dtype() != DType::F32)
    fail(fn, ": expected a square f32 matrix, got ", Sigma.defined() ? shape_str(Sigma.shape()) : std::string("undefined"));
  if (iters < 1) fail(fn, ": iters must be >= 1, got ", iters);
  const Tensor Sc = Sigma.contiguous();
  const int64_t n = Sc.size(0);
  const float* S = Sc.f32();
  for (int64_t k = 0; k < n * n; ++k)
    if (!std::isfinite(S[k])) fail(fn, ": Sigma has a non-finite entry");
  // Power iteration in f64 from a fixed pseudo-random start (never orthogonal to the top
  // eigenvector in practice, unlike the all-ones vector); λ = Rayleigh quotient vᵀΣv.
  Eigen::VectorXd v(n), y(n);
  Rng rng(0x9e3779b9ull);
  for (int64_t i = 0; i < n; ++i) v(i) = rng.normal();
  v.normalize();
  double lam = 0;
  for (int it = 0; it < iters; ++it) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      const float* row = S + i * n;
      double acc = 0;
      for (int64_t j = 0; j < n; ++j) acc += (double)row[j] * v(j);
      y(i) = acc;
    }
    const double lam_new = v.dot(y), ny = y.norm();
    if (ny == 0) return 0.0;
    v = y / ny;
    const bool done = it > 0 && std::fabs(lam_new - lam) <= 1e-13 * std::fabs(lam_new);
    lam = lam_new;
    if (done) break;
  }
  return lam;
}

void iht_step(const Tensor& W, const Tensor& Sigma, const Tensor& What, Tensor& Hs, const IhtOptions& opt) {
  iht_step(LayerProblem::make(W, Sigma, {}, 0, "", "iht_step"), What, Hs, opt);
}

void iht_step(const LayerProblem& p, const Tensor& What, Tensor& Hs, const IhtOptions& opt) {
  const char* fn = "iht_step";
  const Tensor& W = p.W;
  const Tensor& Sigma = p.sigma;
  const int64_t r = W.size(0), c = W.size(1);
  check_same_shape(fn, "What", What, r, c);
  check_same_shape(fn, "Hs", Hs, r, c);
  const int64_t kmax = opt.structured ? c : r * c;
  if (opt.k < 0 || opt.k > kmax)
    fail(fn, ": k = ", opt.k, " must be in 0..", kmax, opt.structured ? " (columns)" : " (entries)");
  if (!(opt.alpha > 0) || !std::isfinite(opt.alpha)) fail(fn, ": alpha must be > 0, got ", opt.alpha);
  if (!(opt.lambda_max >= 0) || !std::isfinite(opt.lambda_max)) fail(fn, ": lambda_max must be >= 0, got ", opt.lambda_max);
  const double lam = opt.lambda_max > 0 ? opt.lambda_max : lambda_max(Sigma);

  // Step 2, IHT (methods.md#iht): R = (Ŵ + Hs − W) Σ;  Hs ← P_k(Hs − η R),  η = α / (2 λmax(Σ)).  (Σ = 0: no gradient step.)
  MatRM H = Hs.cmat();
  if (lam > 0) {
    const MatRM D = What.cmat() + H - W.cmat();
    const MatRM R = D * Sigma.contiguous().cmat();
    H -= (float)(opt.alpha / (2.0 * lam)) * R;
  }
  project_topk(H, opt.k, opt.structured);
  Hs.mat() = H;
}

OutlierResult quantease_outliers(const Tensor& W, const Tensor& Sigma, const GridSpec& spec, const OutlierOptions& opt,
                                 const SolverLog& log) {
  return quantease_outliers(LayerProblem::make(W, Sigma, {}, 0, "", "quantease_outliers"), spec, opt, log);
}

OutlierResult quantease_outliers(const LayerProblem& p, const GridSpec& spec, const OutlierOptions& opt, const SolverLog& log) {
  const char* fn = "quantease_outliers";
  const Tensor& Wc = p.W;  // contiguous, validated once (LayerProblem)
  const Tensor& Sc = p.sigma;
  if (!(opt.ratio >= 0 && opt.ratio < 1)) fail(fn, ": ratio must be in [0, 1), got ", opt.ratio);
  if (opt.iters < 1) fail(fn, ": iters must be >= 1, got ", opt.iters);
  if (!(opt.alpha > 0) || !std::isfinite(opt.alpha)) fail(fn, ": alpha must be > 0, got ", opt.alpha);
  if (opt.continuous_every < 0) fail(fn, ": continuous_every must be >= 0, got ", opt.continuous_every);
  spec.validate();
  // An allocated grid (methods.md#allocated-grids: row clusters, mixed bits, companded) has no
  // "trimmed per-row range"; it is fitted by its own rule on the Ŵ the sweeps start from (W with
  // the initial outliers zeroed), so the outliers still leave its ranges. Structured outliers keep
  // the grid of methods.md#outlier-grid.
  const bool allocated = spec.kind != GridKind::Uniform || spec.mixed_bits() || !spec.row_group.empty();
  if (allocated && opt.structured)
    fail(fn, ": structured outliers refresh §5's per-row min-max grid; got ", spec.str(),
         " (use unstructured outliers with mixed bits, row groups or companded grids)");
  if (!allocated && spec.importance != GridImportance::None)
    fail(fn, ": grid importance '", grid_importance_name(spec.importance), "' does not apply to the outlier grid (the trimmed / non-outlier ",
         "min-max range, docs/methods.md#outlier-grid); give importance only with allocated grids");
  if (spec.mse && log) log("mse_ignored", "the outlier grid uses the trimmed / non-outlier min-max range (docs/methods.md#outlier-grid), no MSE search");
  const int64_t r = Wc.size(0), c = Wc.size(1);

  // Budget (methods.md#outliers): s entries (unstructured) or s whole input columns (structured).
  const int64_t s = opt.structured ? std::llround((double)c * opt.ratio) : std::llround((double)r * (double)c * opt.ratio);
  // Init: Hs = the s largest |w| (structured: s largest-norm columns), Ŵ = W with those zeroed.
  Tensor Hs = Tensor::empty({r, c});
  {
    MatRM H = Wc.cmat();
    project_topk(H, s, opt.structured);
    Hs.mat() = H;
  }
  Tensor What = Tensor::empty({r, c});
  What.mat() = Wc.cmat() - Hs.cmat();

  auto outlier_cols = [&]() {
    std::vector<char> m((size_t)c, 0);
    const auto H = Hs.cmat();
    for (int64_t j = 0; j < c; ++j) m[(size_t)j] = !H.col(j).isZero(0);
    return m;
  };
  Grid grid = opt.structured ? support_grid(Wc, spec, outlier_cols())
              : allocated    ? grid_fit(What, spec, sigma_diag(Sc).data())
                             : trimmed_grid(Wc, spec, opt.ratio);

  IhtOptions io;
  io.k = s;
  io.alpha = opt.alpha;
  io.structured = opt.structured;
  io.lambda_max = lambda_max(Sc);
  if (log) log("lambda_max", std::to_string(io.lambda_max) + ", outlier budget " + std::to_string(s) + (opt.structured ? " columns" : " entries"));

  OutlierResult res;
  Tensor T = Tensor::empty({r, c}), Wsum = Tensor::empty({r, c});
  for (int it = 1; it <= opt.iters; ++it) {
    // Structured: the grid follows the current outlier columns (refreshed after each IHT step,
    // i.e. before the next sweep, so the last sweep's grid is the one returned).
    if (opt.structured && it > 1) grid = support_grid(Wc, spec, outlier_cols());
    // 1. CD sweep on Ŵ with target W − Hs; the sweep schedule of methods.md#quantease-schedule
    //    (continuous on 1, 4, 7, … ≤ iters − 5).
    CdSweepOptions so;
    so.continuous = continuous_sweep(it, opt.iters, opt.continuous_every);
    T.mat() = Wc.cmat() - Hs.cmat();
    cd_sweep(p, T, What, grid, so);
    // 2. IHT step on Hs.
    iht_step(p, What, Hs, io);
    Wsum.mat() = What.cmat() + Hs.cmat();
    res.objective.push_back(objective(p, Wsum).value);
    if (log) log("iter", "it=" + std::to_string(it) + (so.continuous ? " continuous" : " quantized") +
                             " objective=" + std::to_string(res.objective.back()));
  }

  res.q = quantize_to_grid(What, grid);
  const float* h = Hs.f32();
  for (int64_t i = 0; i < r; ++i)
    for (int64_t j = 0; j < c; ++j)
      if (h[i * c + j] != 0.f) {
        res.q.outliers.row.push_back((int32_t)i);
        res.q.outliers.col.push_back((int32_t)j);
        res.q.outliers.val.push_back(h[i * c + j]);
      }
  return res;
}

}  // namespace qf
