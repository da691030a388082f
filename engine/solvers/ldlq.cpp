// LDLQ, docs/methods.md#ldlq (QuIP, arXiv 2307.13304): rounding with linear feedback from the
// unit-triangular factor of H = M·D·Mᵀ. Written from the factorization, not from gptq.cpp: the
// two share only the grid, the dead-input rule and the damping rule (methods.md#damping).
#include "solvers/ldlq.h"

#include <Eigen/Cholesky>
#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/parallel.h"

namespace qf {

using MatD = Eigen::MatrixXd;
using VecD = Eigen::VectorXd;

bool udu_factor(const MatD& H, MatD& M, VecD& D) {
  const int64_t n = H.rows();
  if (n == 0 || H.cols() != n) return false;
  const double dmax = H.diagonal().maxCoeff();
  const MatD R = H.reverse();  // J·H·J
  Eigen::LLT<MatD> llt(R);
  if (llt.info() != Eigen::Success) return false;
  MatD L = llt.matrixL();
  const VecD dl = L.diagonal();
  for (int64_t k = 0; k < n; ++k)
    if (!(dl(k) * dl(k) > 1e-10 * dmax)) return false;  // numerically singular
  L = L * dl.cwiseInverse().asDiagonal();  // unit lower: J·H·J = L·diag(dl²)·Lᵀ
  M = L.reverse();                          // J·L·J: unit upper
  M.diagonal().setOnes();                   // exactly (x·(1/x) may round off 1)
  D = dl.array().square().matrix().reverse();
  return M.allFinite() && D.allFinite();
}

static LdlqResult ldlq_impl(const LayerProblem& lp, const GridSpec& spec, const LdlqOptions& opt, const SolverLog& log) {
  const char* fn = "ldlq";
  const Tensor& W = lp.W;
  const Tensor& Sigma = lp.sigma;
  spec.validate();
  if (opt.blocksize < 1) fail(fn, ": blocksize must be >= 1, got ", opt.blocksize);
  if (!(opt.percdamp >= 0) || !std::isfinite(opt.percdamp)) fail(fn, ": percdamp must be >= 0, got ", opt.percdamp);
  if (opt.max_damp_tries < 0) fail(fn, ": max_damp_tries must be >= 0, got ", opt.max_damp_tries);
  const int64_t r = W.size(0), c = W.size(1);
  const bool grouped = spec.group > 0;
  const int64_t G = grouped ? spec.group : c;
  const int64_t Gf = spec.kind == GridKind::KQuant ? (int64_t)kKQuantSuper : G;  // columns fitted together
  const bool stat = grouped && opt.static_groups;
  const bool dynamic = grouped && !stat;

  // Grids as gptq() forms them (methods.md#gptq-groups): per channel from W before the dead fix,
  // static groups from the dead-zeroed W up front, dynamic groups at their first column below.
  const std::vector<float> imp = sigma_diag(Sigma);
  Grid grid = grouped ? grid_new(spec, r, c) : grid_fit(W, spec, imp.data());
  const auto S = Sigma.cmat();
  std::vector<char> dead((size_t)c, 0);
  for (int64_t j = 0; j < c; ++j) dead[(size_t)j] = S(j, j) == 0.f;  // methods.md#dead-inputs
  auto hdiag = [&](int64_t j) { return dead[(size_t)j] ? 1.0 : (double)S(j, j); };
  Tensor W0 = W.clone();
  {
    auto Mw = W0.mat();
    for (int64_t j = 0; j < c; ++j)
      if (dead[(size_t)j]) Mw.col(j).setZero();
  }
  if (stat) grid = grid_fit(W0, spec, imp.data());

  std::vector<int64_t> perm((size_t)c);
  std::iota(perm.begin(), perm.end(), 0);
  if (opt.act_order) std::stable_sort(perm.begin(), perm.end(), [&](int64_t a, int64_t b) { return hdiag(a) > hdiag(b); });

  // H = P·(Σ, dead fixed, symmetric part)·Pᵀ + λI, λ = percdamp·mean diag (methods.md#damping);
  // ×10 on a failed factorization (0 → 1e-4), logged.
  double mean_diag = 0;
  for (int64_t p = 0; p < c; ++p) mean_diag += hdiag(perm[p]);  // in processing order, as gptq()
  mean_diag /= (double)c;
  double pd = opt.percdamp;
  MatD M;
  VecD D;
  for (int t = 0;; ++t) {
    MatD H(c, c);
    for (int64_t p = 0; p < c; ++p)
      for (int64_t q = 0; q < c; ++q)
        H(p, q) = p == q ? hdiag(perm[p]) + pd * mean_diag : 0.5 * ((double)S(perm[p], perm[q]) + (double)S(perm[q], perm[p]));
    if (udu_factor(H, M, D)) break;
    if (t >= opt.max_damp_tries)
      fail(fn, ": Sigma ", shape_str(Sigma.shape()), " (W ", shape_str(W.shape()), ") is not positive definite even with percdamp ",
           pd, " after ", t, " damping escalations");
    pd = pd > 0 ? pd * 10 : 1e-4;
    if (log) log("damping", "LDL factorization failed; retrying with percdamp " + std::to_string(pd));
  }

  // Row-major f64, processing order: the weights and the errors E = W − Ŵ of the columns done.
  MatD Wp(c, r), E = MatD::Zero(c, r);  // stored transposed (column i = row i of W): a row is contiguous
  {
    const float* w0 = W0.f32();
    for (int64_t i = 0; i < r; ++i)
      for (int64_t p = 0; p < c; ++p) Wp(p, i) = w0[i * c + perm[p]];
  }
  std::vector<int64_t> gsel((size_t)c, 0);
  for (int64_t p = 0; p < c; ++p) gsel[(size_t)p] = stat ? perm[p] / G : grouped ? p / G : 0;
  if (dynamic)
    for (int64_t p = 0; p < c; ++p) grid.g_idx[(size_t)perm[p]] = (int32_t)(p / G);

  LdlqResult res;
  res.percdamp_used = pd;
  res.q.codes = Tensor::empty({r, c}, DType::U8);
  res.target = Tensor::empty({r, c});
  uint8_t* codes = res.q.codes.data<uint8_t>();
  float* target = res.target.f32();
  constexpr int64_t kRowChunk = 16;
  const int64_t nchunks = (r + kRowChunk - 1) / kRowChunk;

  for (int64_t k = 0; k < c; ++k) {
    if (dynamic && k % Gf == 0) {
      // The group's columns as GPTQ sees them at the start of k's block [i1, …): W plus the
      // feedback of the columns before i1 only. With A = [0, i1), C = [i1, k + w): the least-squares
      // continuation of the errors E_A onto C is E_A·M_{A,C}·M_{C,C}⁻¹ (methods.md#ldlq).
      const int64_t w = std::min(Gf, c - k), i1 = k / opt.blocksize * opt.blocksize, nc = k + w - i1;
      MatD X;
      if (i1 > 0) X = M.block(i1, i1, nc, nc).triangularView<Eigen::UnitUpper>().solve<Eigen::OnTheRight>(M.block(0, i1, i1, nc));
      Tensor blk = Tensor::empty({r, w});
      float* b = blk.f32();
#pragma omp parallel for schedule(static) if (worth_parallel(r * i1 * w))
      for (int64_t ch = 0; ch < nchunks; ++ch)
        for (int64_t i = ch * kRowChunk; i < std::min(r, (ch + 1) * kRowChunk); ++i)
          for (int64_t j = 0; j < w; ++j) {
            double v = Wp(k + j, i);
            for (int64_t a = 0; a < i1; ++a) v += E(a, i) * X(a, k - i1 + j);
            b[i * w + j] = (float)v;
          }
      std::vector<float> impp((size_t)w);
      for (int64_t j = 0; j < w; ++j) impp[(size_t)j] = imp[(size_t)perm[k + j]];
      grid_fit_group(grid, k / Gf, blk, impp.data());
    }
    // ŵ_k = Q(w_k + E_{:, <k}·M_{<k, k}) for every row.
    const double* mk = M.col(k).data();
    const int64_t g = gsel[(size_t)k], col = perm[k];
#pragma omp parallel for schedule(static) if (worth_parallel(r * k))
    for (int64_t ch = 0; ch < nchunks; ++ch)
      for (int64_t i = ch * kRowChunk; i < std::min(r, (ch + 1) * kRowChunk); ++i) {
        const double* e = E.col(i).data();
        double acc[4] = {0, 0, 0, 0};  // a fixed summation order: the same bits on any thread count
        int64_t p = 0;
        for (; p + 4 <= k; p += 4)
          for (int u = 0; u < 4; ++u) acc[u] += e[p + u] * mk[p + u];
        for (; p < k; ++p) acc[0] += e[p] * mk[p];
        const double t = Wp(k, i) + ((acc[0] + acc[1]) + (acc[2] + acc[3]));
        const int code = grid.code((float)t, i, g);
        codes[i * c + col] = (uint8_t)code;
        target[i * c + col] = (float)t;
        E(k, i) = Wp(k, i) - (double)grid.value(code, i, g);
      }
  }
  res.q.grid = std::move(grid);
  return res;
}

LdlqResult ldlq(const LayerProblem& p, const GridSpec& spec, const LdlqOptions& opt, const SolverLog& log) {
  return ldlq_impl(p, spec, opt, log);
}

LdlqResult ldlq(const Tensor& W, const Tensor& Sigma, const GridSpec& spec, const LdlqOptions& opt, const SolverLog& log) {
  return ldlq_impl(LayerProblem::make(W, Sigma, {}, 0, "", "ldlq"), spec, opt, log);
}

}  // namespace qf
