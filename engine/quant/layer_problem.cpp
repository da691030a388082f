#include "quant/layer_problem.h"

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
      if (!std::isfinite(M(i, j))) fail(fn, ": NaN/Inf in ", name, " at (", i + 1, ", ", j + 1, ") (1-based)");
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
  for (int64_t i = 0; i < c; ++i)
    if (S(i, i) < 0.f)
      fail(fn, ": Sigma has a negative diagonal entry ", S(i, i), " at (", i + 1, ", ", i + 1, ") (1-based); not a Gram matrix");
  const int64_t T = 64;  // tiles: S(j, i) is read column-wise
  for (int64_t i0 = 0; i0 < c; i0 += T)
    for (int64_t j0 = i0; j0 < c; j0 += T)
      for (int64_t i = i0; i < std::min(c, i0 + T); ++i)
        for (int64_t j = std::max(j0, i + 1); j < std::min(c, j0 + T); ++j)
          if (std::fabs(S(i, j) - S(j, i)) > tol)
            fail(fn, ": Sigma is not symmetric: (", i + 1, ", ", j + 1, ") = ", S(i, j), " but (", j + 1, ", ", i + 1, ") = ",
                 S(j, i), " (1-based)");
}

// Σ_i x_i S x_iᵀ for a symmetric S from the blocks on and above the diagonal only (half the
// flops of X·S): per column block K, ⟨X_K S_KK, X_K⟩ + 2⟨X_{<K} S_{<K,K}, X_K⟩, summed in f64.
template <class Mat>
static double quad_form_sym(const Mat& X, const Mat& S) {
  const int64_t c = S.rows(), b = 1024;
  double acc = 0;
  Mat P;
  for (int64_t k0 = 0; k0 < c; k0 += b) {
    const int64_t w = std::min(b, c - k0);
    const auto XK = X.middleCols(k0, w);
    P.noalias() = XK * S.block(k0, k0, w, w);
    acc += P.cwiseProduct(XK).template cast<double>().sum();
    if (k0 == 0) continue;
    P.noalias() = X.leftCols(k0) * S.block(0, k0, k0, w);
    acc += 2 * P.cwiseProduct(XK).template cast<double>().sum();
  }
  return acc;
}

// f = tr(E Σ Eᵀ), E = W − Ŵ: f64 throughout (E exact in f64), with Σ's symmetric part
// (Σ + Σᵀ)/2 — the same quadratic form exactly. The normalizer tr(W Σ Wᵀ) only scales
// `relative`: f32 products with f64 sums (~1e-6 relative). Row chunks bound the memory.
LayerProblem LayerProblem::make(Tensor W, Tensor sigma, Tensor mu, int64_t tokens, std::string site, const char* fn) {
  check_layer_problem(fn, W, sigma);
  if (mu.defined() && (mu.dim() != 1 || mu.size(0) != W.size(1)))
    fail(fn, ": mu must be [", W.size(1), "] (one mean per input column), got ", shape_str(mu.shape()));
  if (tokens < 0) fail(fn, ": tokens must be >= 0, got ", tokens);
  LayerProblem p;
  p.W = W.contiguous();
  p.sigma = sigma.contiguous();
  p.mu = std::move(mu);
  p.tokens = tokens;
  p.site = std::move(site);
  return p;
}

void set_cross_statistics(LayerProblem& p, Tensor cross, Tensor sigma_fp, const char* fn) {
  const int64_t c = p.W.size(1);
  for (auto [name, t] : {std::pair<const char*, Tensor*>{"cross", &cross}, {"sigma_fp", &sigma_fp}}) {
    if (!t->defined() || t->dim() != 2 || t->dtype() != DType::F32 || t->size(0) != c || t->size(1) != c)
      fail(fn, ": ", name, " must be f32 [", c, ", ", c, "], got ", t->defined() ? shape_str(t->shape()) : std::string("none"));
    check_finite(fn, name, *t);
  }
  p.cross = cross.contiguous();
  p.sigma_fp = sigma_fp.contiguous();
}

Objective mismatched_objective(const LayerProblem& p, const Tensor& What) {
  const char* fn = "mismatched_objective";
  if (!p.cross.defined() || !p.sigma_fp.defined()) fail(fn, ": the problem has no cross statistics (cross, sigma_fp)");
  check_2d_f32(fn, "What", What);
  if (What.shape() != p.W.shape()) fail(fn, ": What is ", shape_str(What.shape()), " but W is ", shape_str(p.W.shape()));
  const Eigen::MatrixXd W = p.W.contiguous().cmat().cast<double>(), Q = What.contiguous().cmat().cast<double>();
  const Eigen::MatrixXd G = p.cross.cmat().cast<double>(), F = p.sigma_fp.cmat().cast<double>(), H = p.sigma.cmat().cast<double>();
  const double ww = (W * F).cwiseProduct(W).sum(), wq = (W * G).cwiseProduct(Q).sum(), qq = (Q * H).cwiseProduct(Q).sum();
  Objective o;
  o.value = std::max(0.0, ww - 2 * wq + qq);
  o.relative = ww > 0 ? o.value / ww : 0;
  return o;
}

Objective objective(const Tensor& W, const Tensor& What, const Tensor& Sigma) {
  return objective(LayerProblem::make(W, Sigma, {}, 0, "", "objective"), What);
}

Objective objective(const LayerProblem& p, const Tensor& What) {
  const char* fn = "objective";
  const Tensor& W = p.W;
  const Tensor& Sigma = p.sigma;
  check_2d_f32(fn, "What", What);
  if (What.shape() != W.shape()) fail(fn, ": What is ", shape_str(What.shape()), " but W is ", shape_str(W.shape()));
  check_finite(fn, "What", What);
  const int64_t r = W.size(0), c = W.size(1);
  MatD S = Sigma.cmat().cast<double>();
  S = (0.5 * (S + S.transpose())).eval();  // quad_form_sym needs exact symmetry; Σ is symmetric within the tolerance
  const Eigen::MatrixXf Sf = S.cast<float>();
  const auto A = W.cmat();
  const auto B = What.cmat();
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(r, (int64_t)(1 << 24) / c));  // ≤ 128 MB of f64
  double num = 0, den = 0;
  MatD E;
  Eigen::MatrixXf Wf;
  for (int64_t i0 = 0; i0 < r; i0 += chunk) {
    const int64_t n = std::min(chunk, r - i0);
    E = A.middleRows(i0, n).cast<double>() - B.middleRows(i0, n).cast<double>();
    num += quad_form_sym(E, S);
    Wf = A.middleRows(i0, n);
    den += quad_form_sym(Wf, Sf);
  }
  Objective o;
  o.value = num;
  o.relative = den != 0 ? num / den : 0.0;
  return o;
}

Tensor shrink_sigma(const Tensor& Sigma, double alpha) {
  if (!(alpha >= 0 && alpha <= 1)) fail("shrink_sigma: alpha must be in [0, 1], got ", alpha);
  if (Sigma.dim() != 2 || Sigma.size(0) != Sigma.size(1)) fail("shrink_sigma: expected a square 2-d Σ, got ", shape_str(Sigma.shape()));
  Tensor out = Sigma.contiguous().clone();
  auto M = out.mat();
  const float keep = (float)(1 - alpha);
  for (int64_t i = 0; i < M.rows(); ++i)
    for (int64_t j = 0; j < M.cols(); ++j)
      if (i != j) M(i, j) *= keep;
  return out;
}

std::vector<float> sigma_diag(const Tensor& Sigma) {
  const auto S = Sigma.cmat();
  std::vector<float> d((size_t)S.rows());
  for (int64_t j = 0; j < S.rows(); ++j) d[(size_t)j] = S(j, j);
  return d;
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
  // Dead inputs (docs/methods.md#dead-inputs): Σ_jj = 0 → Σ_jj = 1 (the caller zeroes W[:, j]).
  double tr = 0;
  for (int64_t j = 0; j < c; ++j) {
    if (M(j, j) == 0.f) {
      M(j, j) = 1.f;
      if (dead) dead->push_back(j);
    }
    tr += M(j, j);
  }
  // Damping (methods.md#damping): λ = percdamp·mean(diag Σ) (after the dead fix, as the reference).
  const double lambda = percdamp * tr / (double)c;
  for (int64_t j = 0; j < c; ++j) M(j, j) = (float)((double)M(j, j) + lambda);
  return H;
}

}  // namespace qf
