// qforge tests — random layer problems (W, Σ) for solver tests, with Eigen f64 conversions.
#pragma once
#include <Eigen/Dense>
#include <cmath>

#include "core/rng.h"
#include "core/tensor.h"

namespace qf::test {

inline Tensor to_tensor(const Eigen::MatrixXd& M) {
  Tensor t = Tensor::empty({M.rows(), M.cols()});
  t.mat() = M.cast<float>();
  return t;
}
inline Eigen::MatrixXd to_md(const Tensor& t) { return t.cmat().cast<double>(); }

struct Problem {
  Tensor W, S;
};

// W [r, c] normal; Σ = X Xᵀ with correlated inputs X = A·Z, A = I + corr·randn/√c, Z [c, N] with
// per-input scales in [0.3, 2.3): a full, well-conditioned Σ, far from diagonal, with a spread
// diagonal (so act-order really permutes).
inline Problem scaled_problem(int64_t r, int64_t c, uint64_t seed, int64_t N, double corr) {
  Rng g(seed);
  Eigen::MatrixXd W(r, c), A = Eigen::MatrixXd::Identity(c, c), Z(c, N);
  for (int64_t i = 0; i < r; ++i)
    for (int64_t j = 0; j < c; ++j) W(i, j) = g.normal();
  for (int64_t i = 0; i < c; ++i)
    for (int64_t j = 0; j < c; ++j) A(i, j) += corr * g.normal() / std::sqrt((double)c);
  for (int64_t i = 0; i < c; ++i) {
    const double s = 0.3 + 2 * g.uniform();
    for (int64_t j = 0; j < N; ++j) Z(i, j) = s * g.normal();
  }
  const Eigen::MatrixXd X = A * Z;
  Eigen::MatrixXd S = X * X.transpose();
  S = 0.5 * (S + S.transpose()).eval();
  return {to_tensor(W), to_tensor(S)};
}

}  // namespace qf::test
