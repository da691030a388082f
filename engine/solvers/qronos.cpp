// Qronos and GPFQ, docs/methods.md#qronos. Small solves and the two closed-form steps in f64; the
// diffusion of step 3 is GPTQ's on a fixed grid (gptq_on_grid, f32 like GPTQ).
#include "solvers/qronos.h"

#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>

#include "core/rng.h"
#include "solvers/gptq.h"
#include "solvers/quantease_outliers.h"  // lambda_max

namespace qf {

using MatD = Eigen::MatrixXd;

namespace {

// What both methods share: the grid fitted from W, the processing order, the damped H and G in
// that order, and W in that order (f64).
struct Prepared {
  Grid grid;
  std::vector<int64_t> perm;  // processing position p holds column perm[p]
  MatD Hd, Gd, Wp;
  double lambda = 0;
  uint64_t key = 0;  // stochastic draws of the steps this file rounds itself
};

Prepared prepare(const char* fn, const LayerProblem& p, const GridSpec& spec, const QronosOptions& opt, double lambda_scale) {
  spec.validate();
  if (!p.cross.defined())
    fail(fn, ": the problem has no cross statistics G = sum x x~^T (capture them with cal:capture{cross = true}, docs/methods.md#qronos)");
  if (opt.blocksize < 1) fail(fn, ": blocksize must be >= 1, got ", opt.blocksize);
  if (!(opt.percdamp >= 0) || !std::isfinite(opt.percdamp)) fail(fn, ": percdamp must be >= 0, got ", opt.percdamp);
  if (!(opt.lambda_damp >= 0) || !std::isfinite(opt.lambda_damp)) fail(fn, ": lambda_damp must be >= 0, got ", opt.lambda_damp);
  const int64_t c = p.W.size(1);
  Prepared P;
  const std::vector<float> imp = sigma_diag(p.sigma);
  P.grid = grid_fit(p.W, spec, imp.data());  // every group from the original W, up front
  const auto H = p.sigma.cmat();
  const auto G = p.cross.cmat();
  std::vector<char> dead((size_t)c, 0);
  double mean_diag = 0;
  for (int64_t j = 0; j < c; ++j) {
    dead[(size_t)j] = H(j, j) == 0.f;
    mean_diag += dead[(size_t)j] ? 1.0 : (double)H(j, j);
  }
  mean_diag /= (double)c;
  P.perm.resize((size_t)c);
  std::iota(P.perm.begin(), P.perm.end(), 0);
  auto hdiag = [&](int64_t j) { return dead[(size_t)j] ? 1.0 : (double)H(j, j); };
  if (opt.act_order) std::stable_sort(P.perm.begin(), P.perm.end(), [&](int64_t a, int64_t b) { return hdiag(a) > hdiag(b); });
  P.lambda = lambda_scale * (opt.percdamp * mean_diag + (opt.lambda_damp > 0 ? opt.lambda_damp * lambda_max(p.sigma) : 0.0));
  P.Hd.resize(c, c);
  P.Gd.resize(c, c);
  for (int64_t b = 0; b < c; ++b)
    for (int64_t a = 0; a < c; ++a) {
      const int64_t i = P.perm[(size_t)a], j = P.perm[(size_t)b];
      P.Hd(a, b) = a == b ? hdiag(i) + P.lambda : (double)H(i, j);
      P.Gd(a, b) = (double)G(i, j) + (a == b ? P.lambda : 0.0);
    }
  const auto W = p.W.cmat();
  P.Wp.resize(p.W.size(0), c);
  for (int64_t a = 0; a < c; ++a)
    for (int64_t i = 0; i < p.W.size(0); ++i) P.Wp(i, a) = (double)W(i, P.perm[(size_t)a]);
  P.key = opt.stochastic ? layer_key(opt.seed ^ 0x51706f6e6f73ull, p.block, p.name.c_str()) : 0;
  return P;
}

// Code of x in (row i, the group of original column col): nearest, or stochastic (keyed by i, col).
int round_code(const Prepared& P, const QronosOptions& opt, double x, int64_t i, int64_t col) {
  const int64_t g = P.grid.g_idx[(size_t)col];
  const float xf = (float)x;
  return opt.stochastic ? P.grid.stochastic_code(xf, i, g, counter_uniform(P.key, (uint64_t)(i * P.grid.cols + col)))
                        : P.grid.code(xf, i, g);
}

}  // namespace

QronosResult qronos(const LayerProblem& p, const GridSpec& spec, const QronosOptions& opt, const SolverLog& log) {
  const char* fn = "qronos";
  const int64_t r = p.W.size(0), c = p.W.size(1);
  // (H+λI)⁻¹ in f64; a failed factorization escalates λ (×10, from 1e-4·mean diag when 0), logged.
  Prepared P;
  Eigen::LLT<MatD> llt;
  double scale = 1;
  for (int t = 0;; ++t) {
    P = prepare(fn, p, spec, opt, scale);
    if (t > 0 && P.lambda == 0) {
      QronosOptions o2 = opt;
      o2.percdamp = 1e-4;
      P = prepare(fn, p, spec, o2, scale);
    }
    llt.compute(P.Hd);
    if (llt.info() == Eigen::Success) break;
    if (t >= opt.max_damp_tries) fail(fn, ": H + lambda I is not positive definite (lambda ", P.lambda, ") after ", t, " escalations");
    scale *= 10;
    if (log) log("damping", "Cholesky failed; retrying with lambda x" + std::to_string(scale));
  }
  QronosResult res;
  res.lambda = P.lambda;
  res.q.codes = Tensor::empty({r, c}, DType::U8);
  uint8_t* codes = res.q.codes.data<uint8_t>();
  const int64_t col0 = P.perm[0];

  // Step 1 (correct the past): column 1 against the original W of every column.
  Eigen::VectorXd u = P.Wp * P.Gd.col(0);
  if (c > 1) u.noalias() -= P.Wp.rightCols(c - 1) * P.Hd.col(0).tail(c - 1);
  u /= P.Hd(0, 0);
  Eigen::VectorXd v1(r);
  const int64_t g0 = P.grid.g_idx[(size_t)col0];
  for (int64_t i = 0; i < r; ++i) {
    const int q = round_code(P, opt, u(i), i, col0);
    codes[i * c + col0] = (uint8_t)q;
    v1(i) = P.grid.value(q, i, g0);
  }
  res.first_value = u.cwiseAbs().mean();
  if (c > 1) {
    // Step 2 (shape the future): the later columns' least-squares optimum given q₁, with the
    // trailing inverse ((H+λI)_{2:,2:})⁻¹ = Hinv_{2:,2:} − Hinv_{2:,1} Hinv_{1,2:} / Hinv_11.
    const MatD Hinv = llt.solve(MatD::Identity(c, c));
    const MatD Tinv = Hinv.bottomRightCorner(c - 1, c - 1) -
                      Hinv.col(0).tail(c - 1) * Hinv.row(0).tail(c - 1) / Hinv(0, 0);
    MatD rhs = P.Wp * P.Gd.rightCols(c - 1);
    rhs.noalias() -= v1 * P.Hd.row(0).tail(c - 1);
    const MatD V = rhs * Tinv;
    // Step 3: GPTQ's diffusion of V on (H+λI)_{2:,2:} (already damped: percdamp 0), on the grid
    // fitted in prepare(), columns in processing order.
    Tensor Vt = Tensor::empty({r, c - 1});
    Tensor Ht = Tensor::empty({c - 1, c - 1});
    Vt.mat() = V.cast<float>();
    Ht.mat() = P.Hd.bottomRightCorner(c - 1, c - 1).cast<float>();
    Grid sub = P.grid;
    sub.cols = c - 1;
    sub.g_idx.resize((size_t)(c - 1));
    for (int64_t a = 1; a < c; ++a) sub.g_idx[(size_t)(a - 1)] = P.grid.g_idx[(size_t)P.perm[(size_t)a]];
    LayerProblem tail = LayerProblem::make(Vt, Ht, {}, p.tokens, p.site, fn);
    tail.block = p.block;
    tail.name = p.name;
    GptqOptions go;
    go.blocksize = opt.blocksize;
    go.percdamp = 0;
    go.act_order = false;
    go.stochastic = opt.stochastic;
    go.seed = opt.seed;
    go.max_damp_tries = opt.max_damp_tries;
    const GptqResult gr = gptq_on_grid(tail, sub, go, log);
    const uint8_t* tc = gr.q.codes.data<uint8_t>();
    for (int64_t a = 1; a < c; ++a)
      for (int64_t i = 0; i < r; ++i) codes[i * c + P.perm[(size_t)a]] = tc[i * (c - 1) + (a - 1)];
  }
  res.q.grid = std::move(P.grid);
  return res;
}

QronosResult gpfq(const LayerProblem& p, const GridSpec& spec, const QronosOptions& opt, const SolverLog&) {
  const char* fn = "gpfq";
  const int64_t r = p.W.size(0), c = p.W.size(1);
  const Prepared P = prepare(fn, p, spec, opt, 1.0);
  QronosResult res;
  res.lambda = P.lambda;
  res.q.codes = Tensor::empty({r, c}, DType::U8);
  uint8_t* codes = res.q.codes.data<uint8_t>();
  MatD Qv = MatD::Zero(r, c);  // the chosen values, processing order
  const int64_t B = opt.blocksize;
  for (int64_t b0 = 0; b0 < c; b0 += B) {
    const int64_t nb = std::min(B, c - b0);
    // The past's contribution to the block: Σ_{k<b0} (w_k G_kt − q_k H_kt) for every t in the block.
    MatD A = MatD::Zero(r, nb);
    if (b0 > 0) {
      A.noalias() += P.Wp.leftCols(b0) * P.Gd.block(0, b0, b0, nb);
      A.noalias() -= Qv.leftCols(b0) * P.Hd.block(0, b0, b0, nb);
    }
    for (int64_t j = 0; j < nb; ++j) {
      const int64_t t = b0 + j, col = P.perm[(size_t)t];
      Eigen::VectorXd a = A.col(j);
      for (int64_t k = b0; k < t; ++k) a += P.Wp.col(k) * P.Gd(k, t) - Qv.col(k) * P.Hd(k, t);
      const Eigen::VectorXd x = (P.Gd(t, t) * P.Wp.col(t) + a) / P.Hd(t, t);
      const int64_t g = P.grid.g_idx[(size_t)col];
      for (int64_t i = 0; i < r; ++i) {
        const int q = round_code(P, opt, x(i), i, col);
        codes[i * c + col] = (uint8_t)q;
        Qv(i, t) = P.grid.value(q, i, g);
      }
    }
  }
  res.q.grid = P.grid;
  return res;
}

}  // namespace qf
