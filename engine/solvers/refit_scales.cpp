#include "solvers/refit_scales.h"

#include <Eigen/Dense>
#include <cmath>
#include <vector>

#include "solvers/normal_equations.h"

namespace qf {

using MatD = Eigen::MatrixXd;
using RowMatD = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using VecD = Eigen::VectorXd;

RefitResult refit_scales(const LayerProblem& p, const QuantizedLinear& q) {
  const char* fn = "refit_scales";
  const Grid& g = q.grid;
  const int64_t r = p.W.size(0), c = p.W.size(1);
  if (g.rows != r || g.cols != c || q.codes.dim() != 2 || q.codes.size(0) != r || q.codes.size(1) != c)
    fail(fn, ": the quantized linear [", g.rows, ", ", g.cols, "] does not match W ", shape_str(p.W.shape()));
  if (q.has_transforms())  // the refit's least squares are in the codes' basis (methods.md#transforms)
    fail(fn, ": the quantized linear carries transforms; refit it in its transformed basis (the problem its solver saw) before attaching them");
  if (g.spec.kind != GridKind::Uniform || g.spec.float_zero)
    fail(fn, ": needs a uniform grid with integer zeros, got ", g.spec.str(), " (decoupleQ refits its float zeros itself)");
  if (!g.spec.row_group.empty() || g.spec.mixed_bits())
    fail(fn, ": needs one scale per (row, group) at one bit width, got ", g.spec.str());
  const int64_t ng = g.ngroups;
  const Tensor codes = q.codes.contiguous();
  const uint8_t* cp = codes.data<uint8_t>();

  // T = codes − zeros, the design's nonzeros; Y = (W − H)Σ (Σ symmetric), f64.
  RowMatD T(r, c), Wt = p.W.cmat().cast<double>();
  for (int64_t k = 0; k < q.outliers.nnz(); ++k) Wt(q.outliers.row[(size_t)k], q.outliers.col[(size_t)k]) -= (double)q.outliers.val[(size_t)k];
  for (int64_t i = 0; i < r; ++i)
    for (int64_t j = 0; j < c; ++j) T(i, j) = (double)cp[i * c + j] - (double)g.z(i, g.g_idx[(size_t)j]);
  const MatD S = p.sigma.cmat().cast<double>();
  const RowMatD Y = Wt * S;
  // M_i(g, h) = Σ_{j∈g} T_ij (T_i,h-cols Σ_{h-cols, :})_j — one GEMM per group h (a group's
  // columns may be anywhere: g_idx).
  std::vector<std::vector<int64_t>> cols((size_t)ng);
  for (int64_t j = 0; j < c; ++j) cols[(size_t)g.g_idx[(size_t)j]].push_back(j);
  std::vector<MatD> M((size_t)r, MatD::Zero(ng, ng));
  for (int64_t h = 0; h < ng; ++h) {
    const std::vector<int64_t>& hc = cols[(size_t)h];
    if (hc.empty()) continue;
    RowMatD Th(r, (int64_t)hc.size());
    MatD Sh((int64_t)hc.size(), c);
    for (size_t k = 0; k < hc.size(); ++k) {
      Th.col((int64_t)k) = T.col(hc[k]);
      Sh.row((int64_t)k) = S.row(hc[k]);
    }
    const RowMatD Q = Th * Sh;
    for (int64_t i = 0; i < r; ++i)
      for (int64_t j = 0; j < c; ++j) M[(size_t)i](g.g_idx[(size_t)j], h) += T(i, j) * Q(i, j);
  }
  RefitResult res;
  res.q = q;
  Grid& out = res.q.grid;
  const int maxq = g.maxq();
  // (w − h − ŵ) Σ (…)ᵀ of row i with group scales sc, f64 (ŵ as Grid::value computes it).
  auto row_loss = [&](int64_t i, const std::vector<float>& sc) {
    VecD e(c);
    for (int64_t j = 0; j < c; ++j) {
      const int64_t k = g.g_idx[(size_t)j];
      e(j) = Wt(i, j) - (double)uniform_value((float)cp[i * c + j], sc[(size_t)k], g.z(i, k));
    }
    return e.dot(S * e);
  };
  VecD b(ng), theta;
  std::vector<float> cur((size_t)ng), cand((size_t)ng);
  for (int64_t i = 0; i < r; ++i) {
    b.setZero();
    for (int64_t j = 0; j < c; ++j) b(g.g_idx[(size_t)j]) += T(i, j) * Y(i, j);
    for (int64_t k = 0; k < ng; ++k) cur[(size_t)k] = g.s(i, k);
    bool damped = false;
    const double before = row_loss(i, cur);
    res.objective_before += before;
    double after = before;
    if (solve_normal_equations(M[(size_t)i], b, theta, &damped)) {
      res.rows_damped += damped;
      cand = cur;
      bool ok = true;
      for (int64_t k = 0; k < ng && ok; ++k) {
        if (std::isnan(theta(k))) continue;  // a group the loss does not see: keep its scale
        float s = (float)theta(k);
        if (g.spec.f16_scales) ok = grid_scale_f16(s, maxq, g.spec.sym, &s);
        ok = ok && std::isfinite(s) && s != 0.f && (g.spec.sym || s > 0.f);
        cand[(size_t)k] = s;
      }
      if (ok) {
        const double l = row_loss(i, cand);
        if (l < before) {
          for (int64_t k = 0; k < ng; ++k) out.scale[out.pidx(i, k)] = cand[(size_t)k];
          after = l;
          ++res.rows_improved;
        }
      }
    }
    res.objective_after += after;
  }
  return res;
}

}  // namespace qf
