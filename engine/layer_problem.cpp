#include "layer_problem.h"

#include <Eigen/Dense>
#include <algorithm>
#include <cmath>

namespace qf {

using MatD = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic>;  // column-major f64

static void check_2d_f32(const char* fn, const char* name, const Tensor& t) {
  if (!t.defined()) fail(fn, ": ", name, " is undefined");
  if (t.dim() != 2) fail(fn, ": ", name, " must be 2-d, got ", shape_str(t.shape()));
  if (t.dtype() != DType::F32) fail(fn, ": ", name, " must be f32, got ", dtype_name(t.dtype()));
  if (t.size(0) == 0 || t.size(1) == 0) fail(fn, ": ", name, " is empty ", shape_str(t.shape()));
}

static void check_finite(const char* fn, const char* name, const Tensor& t) {
  const auto M = t.cmat();
  for (int64_t i = 0; i < M.rows(); ++i)
    for (int64_t j = 0; j < M.cols(); ++j)
      if (!std::isfinite(M(i, j))) fail(fn, ": NaN/Inf in ", name, " at (", i, ", ", j, ")");
}

void check_layer_problem(const char* fn, const Tensor& W, const Tensor& Sigma) {
  check_2d_f32(fn, "W", W);
  check_2d_f32(fn, "Sigma", Sigma);
  const int64_t c = W.size(1);
  if (Sigma.size(0) != c || Sigma.size(1) != c)
    fail(fn, ": Sigma is ", shape_str(Sigma.shape()), " but W has ", c, " columns (W is ", shape_str(W.shape()), ")");
  check_finite(fn, "W", W);
  check_finite(fn, "Sigma", Sigma);
  // Σ = XXᵀ: symmetric (within f32 accumulation noise) with a non-negative diagonal.
  const auto S = Sigma.cmat();
  float amax = 0.f;
  for (int64_t i = 0; i < c; ++i)
    for (int64_t j = 0; j < c; ++j) amax = std::max(amax, std::fabs(S(i, j)));
  const float tol = 1e-4f * amax;
  for (int64_t i = 0; i < c; ++i) {
    if (S(i, i) < 0.f) fail(fn, ": Sigma has a negative diagonal entry ", S(i, i), " at (", i, ", ", i, "); not a Gram matrix");
    for (int64_t j = i + 1; j < c; ++j)
      if (std::fabs(S(i, j) - S(j, i)) > tol)
        fail(fn, ": Sigma is not symmetric: (", i, ", ", j, ") = ", S(i, j), " but (", j, ", ", i, ") = ", S(j, i));
  }
}

// f = tr(E Σ Eᵀ), E = W − Ŵ, and tr(W Σ Wᵀ), both as Σ_i e_i Σ e_iᵀ in f64 over row chunks.
Objective objective(const Tensor& W, const Tensor& What, const Tensor& Sigma) {
  const char* fn = "objective";
  check_layer_problem(fn, W, Sigma);
  check_2d_f32(fn, "What", What);
  if (What.shape() != W.shape()) fail(fn, ": What is ", shape_str(What.shape()), " but W is ", shape_str(W.shape()));
  check_finite(fn, "What", What);
  const int64_t r = W.size(0), c = W.size(1);
  const MatD S = Sigma.cmat().cast<double>();
  const auto A = W.cmat();
  const auto B = What.cmat();
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(r, (int64_t)(1 << 22) / c));  // ~32 MB of f64 per operand
  double num = 0, den = 0;
  MatD X(2 * chunk, c), XS(2 * chunk, c);
  for (int64_t i0 = 0; i0 < r; i0 += chunk) {
    const int64_t n = std::min(chunk, r - i0);
    X.resize(2 * n, c);
    X.topRows(n) = A.middleRows(i0, n).cast<double>() - B.middleRows(i0, n).cast<double>();  // E rows, f64
    X.bottomRows(n) = A.middleRows(i0, n).cast<double>();
    XS.noalias() = X * S;
    num += XS.topRows(n).cwiseProduct(X.topRows(n)).sum();
    den += XS.bottomRows(n).cwiseProduct(X.bottomRows(n)).sum();
  }
  Objective o;
  o.value = num;
  o.relative = den != 0 ? num / den : 0.0;
  return o;
}

Tensor damp_sigma(const Tensor& Sigma, double percdamp, std::vector<int64_t>* dead) {
  const char* fn = "damp_sigma";
  check_2d_f32(fn, "Sigma", Sigma);
  if (Sigma.size(0) != Sigma.size(1)) fail(fn, ": Sigma must be square, got ", shape_str(Sigma.shape()));
  if (!(percdamp >= 0) || !std::isfinite(percdamp)) fail(fn, ": percdamp must be >= 0, got ", percdamp);
  Tensor H = Sigma.clone();
  auto M = H.mat();
  const int64_t c = M.rows();
  if (dead) dead->clear();
  // §1 dead inputs: Σ_jj = 0 → Σ_jj = 1 (the caller zeroes W[:, j]).
  double tr = 0;
  for (int64_t j = 0; j < c; ++j) {
    if (M(j, j) == 0.f) {
      M(j, j) = 1.f;
      if (dead) dead->push_back(j);
    }
    tr += M(j, j);
  }
  // §1 damping: λ = percdamp·mean(diag Σ) (after the dead fix, as the reference).
  const double lambda = percdamp * tr / (double)c;
  for (int64_t j = 0; j < c; ++j) M(j, j) = (float)((double)M(j, j) + lambda);
  return H;
}

}  // namespace qf
