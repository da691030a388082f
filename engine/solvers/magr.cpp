// MagR, docs/methods.md#magr: proximal gradient on
//   F(W′) = ½·tr((W′ − W) Σ (W′ − W)ᵀ)/λ + α·Σ_cells ‖W′_cell‖∞,   λ = λmax(Σ),
// one step:  V = W′ − (W′ − W)Σ/λ,  W′ ← prox_{α‖·‖∞}(V) cell by cell (methods.md#magr-prox).
// F separates over rows, so each fixed chunk of rows runs every iteration on its own (f64
// GEMM against the symmetric part of Σ): the bits do not depend on the thread count.
#include "solvers/magr.h"

#include <Eigen/Dense>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <limits>
#include <string>

#include "core/error.h"
#include "solvers/quantease_outliers.h"  // lambda_max

namespace qf {

namespace {

using MatRMd = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

constexpr int64_t kMagrRowChunk = 32;  // rows per independent chunk (fixed: the bits never depend on threads)

// θ of the ℓ1-ball projection (methods.md#magr-prox): with u = |v| sorted descending and c_j its
// prefix sums, ρ = the largest j with u_j > (c_j − z)/j, θ = (c_ρ − z)/ρ. Requires ‖v‖₁ > z > 0.
double l1_threshold(const double* v, int64_t n, double z, std::vector<double>& u) {
  u.resize((size_t)n);
  for (int64_t i = 0; i < n; ++i) u[(size_t)i] = std::fabs(v[i]);
  std::sort(u.begin(), u.end(), std::greater<double>());
  double cum = 0, theta = 0;
  for (int64_t j = 0; j < n; ++j) {
    cum += u[(size_t)j];
    const double t = (cum - z) / (double)(j + 1);
    if (u[(size_t)j] > t) theta = t;
  }
  return std::max(theta, 0.0);
}

double abs_sum(const double* v, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += std::fabs(v[i]);
  return s;
}

void check_radius(const char* fn, const char* what, double r) {
  if (!(r >= 0) || !std::isfinite(r)) fail(fn, ": ", what, " must be a finite number >= 0, got ", r);
}

}  // namespace

double project_l1_ball(const double* v, int64_t n, double radius, double* out) {
  check_radius("project_l1_ball", "radius", radius);
  if (n < 0) fail("project_l1_ball: negative length ", n);
  if (abs_sum(v, n) <= radius) {
    if (out != v) std::copy(v, v + n, out);
    return 0.0;
  }
  if (radius == 0) {
    double m = 0;
    for (int64_t i = 0; i < n; ++i) m = std::max(m, std::fabs(v[i]));
    for (int64_t i = 0; i < n; ++i) out[i] = 0.0;
    return m;
  }
  std::vector<double> u;
  const double theta = l1_threshold(v, n, radius, u);
  for (int64_t i = 0; i < n; ++i) out[i] = std::copysign(std::max(std::fabs(v[i]) - theta, 0.0), v[i]);
  return theta;
}

// Moreau: prox_{τ‖·‖∞}(v) = v − Proj_{τB₁}(v); coordinatewise that is v_i − sign(v_i)·max(|v_i| − θ, 0)
// = sign(v_i)·min(|v_i|, θ), computed in the second form (no cancellation).
static double prox_linf_buf(const double* v, int64_t n, double tau, double* out, std::vector<double>& u) {
  if (tau == 0) {
    if (out != v) std::copy(v, v + n, out);
    return std::numeric_limits<double>::infinity();
  }
  const double theta = abs_sum(v, n) <= tau ? 0.0 : l1_threshold(v, n, tau, u);
  for (int64_t i = 0; i < n; ++i) out[i] = std::copysign(std::min(std::fabs(v[i]), theta), v[i]);
  return theta;
}

double prox_linf(const double* v, int64_t n, double tau, double* out) {
  check_radius("prox_linf", "tau", tau);
  if (n < 0) fail("prox_linf: negative length ", n);
  std::vector<double> u;
  return prox_linf_buf(v, n, tau, out, u);
}

MagrResult magr(const LayerProblem& p, const MagrOptions& opt, const SolverLog& log) {
  const char* fn = "magr";
  const auto t0 = std::chrono::steady_clock::now();
  if (!(opt.alpha >= 0) || !std::isfinite(opt.alpha)) fail(fn, ": option 'alpha' must be a finite number >= 0, got ", opt.alpha);
  if (opt.iters < 0) fail(fn, ": option 'iters' must be an integer >= 0, got ", opt.iters);
  if (opt.group == 0 || opt.group < -1) fail(fn, ": option 'group' must be -1 (per row) or >= 1, got ", opt.group);
  const Tensor& W = p.W;
  const int64_t r = W.size(0), c = W.size(1);
  const int64_t G = opt.group > 0 ? std::min(opt.group, c) : c;
  const int64_t ngroups = (c + G - 1) / G;

  MagrResult res;
  res.lambda_max = lambda_max(p.sigma);
  const double lam = res.lambda_max;
  const bool run = lam > 0;  // Σ = 0: every W′ has the same (zero) quadratic term; W is kept
  if (!run && log) log("sigma_zero", "Sigma is zero: W is returned unchanged");
  const int iters = run ? opt.iters : 0;
  res.iters = iters;

  // The symmetric part of Σ in f64 (the objective's convention, methods.md#objective).
  Eigen::MatrixXd S = p.sigma.cmat().cast<double>();
  S = (0.5 * (S + S.transpose())).eval();
  const MatRMd W0 = W.cmat().cast<double>();
  MatRMd Wh = W0;
  const double alpha = opt.alpha;

  const int64_t nch = (r + kMagrRowChunk - 1) / kMagrRowChunk;
  // F per chunk and iteration (iters + 1 values each), added in chunk order afterwards.
  std::vector<double> Fch((size_t)(nch * (iters + 1)), 0.0);
  // Always a parallel region (as the backend's kernels): Eigen then never splits a chunk's GEMM
  // itself, so every chunk is the same computation for 1 or N threads.
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t ch = 0; ch < nch; ++ch) {
    const int64_t r0 = ch * kMagrRowChunk, nr = std::min(kMagrRowChunk, r - r0);
    std::vector<double> u;
    MatRMd E(nr, c), Gr(nr, c);
    auto linf_sum = [&](const MatRMd& M) {  // Σ over the chunk's cells of max |·|
      double s = 0;
      for (int64_t i = 0; i < nr; ++i)
        for (int64_t k = 0; k < ngroups; ++k) {
          const int64_t a = k * G, b = std::min(c, a + G);
          double m = 0;
          for (int64_t j = a; j < b; ++j) m = std::max(m, std::fabs(M(i, j)));
          s += m;
        }
      return s;
    };
    for (int it = 0; it <= iters; ++it) {
      auto Wc = Wh.middleRows(r0, nr);
      E = Wc - W0.middleRows(r0, nr);
      if (run) Gr.noalias() = E * S;  // ∇ of the quadratic term is E·Σ/λ
      else Gr.setZero();
      // F(W′) at the current iterate, from the same product as the gradient.
      Fch[(size_t)(ch * (iters + 1) + it)] = (run ? 0.5 * E.cwiseProduct(Gr).sum() / lam : 0.0) + alpha * linf_sum(Wc);
      if (it == iters) break;
      // Gradient step, then the prox of α‖·‖∞ on every (row, group) cell (step 1 in normalised units).
      Wc -= Gr / lam;
      for (int64_t i = 0; i < nr; ++i)
        for (int64_t k = 0; k < ngroups; ++k) {
          const int64_t a = k * G, n = std::min(c, a + G) - a;
          double* seg = Wc.row(i).data() + a;
          prox_linf_buf(seg, n, alpha, seg, u);
        }
    }
  }
  res.objective.assign((size_t)(iters + 1), 0.0);
  for (int64_t ch = 0; ch < nch; ++ch)
    for (int it = 0; it <= iters; ++it) res.objective[(size_t)it] += Fch[(size_t)(ch * (iters + 1) + it)];

  res.W = Tensor::empty({r, c});
  res.W.mat() = Wh.cast<float>();
  const Objective o = objective(p, res.W);
  res.fidelity = o.value;
  res.relative = o.relative;

  // ℓ∞ ratios of the f32 result: per row, and per (row, group) cell.
  {
    const auto A = W.cmat();
    const auto B = res.W.cmat();
    double row_sum = 0, cell_sum = 0;
    for (int64_t i = 0; i < r; ++i) {
      double ra = 0, rb = 0;
      for (int64_t k = 0; k < ngroups; ++k) {
        const int64_t a = k * G, b = std::min(c, a + G);
        double ma = 0, mb = 0;
        for (int64_t j = a; j < b; ++j) ma = std::max(ma, (double)std::fabs(A(i, j))), mb = std::max(mb, (double)std::fabs(B(i, j)));
        cell_sum += ma > 0 ? mb / ma : 1.0;
        ra = std::max(ra, ma), rb = std::max(rb, mb);
      }
      row_sum += ra > 0 ? rb / ra : 1.0;
    }
    res.linf_ratio = row_sum / (double)r;
    res.linf_group_ratio = cell_sum / (double)(r * ngroups);
  }
  res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (log)
    log("summary", "lambda_max " + std::to_string(lam) + ", F " + std::to_string(res.objective.front()) + " -> " +
                    std::to_string(res.objective.back()) + ", linf ratio " + std::to_string(res.linf_ratio));
  return res;
}

}  // namespace qf
