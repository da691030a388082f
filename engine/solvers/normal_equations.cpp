#include "solvers/normal_equations.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace qf {

using MatD = Eigen::MatrixXd;
using VecD = Eigen::VectorXd;

// (methods.md#decoupleq-float, #refit-scales)
bool solve_normal_equations(const MatD& M, const VecD& b, VecD& theta, bool* damped) {
  const int64_t k = M.rows();
  theta.setConstant(k, std::numeric_limits<double>::quiet_NaN());
  *damped = false;
  double dmax = 0;
  for (int64_t q = 0; q < k; ++q) dmax = std::max(dmax, M(q, q));
  std::vector<int64_t> act;
  for (int64_t q = 0; q < k; ++q)
    if (M(q, q) > 1e-13 * dmax && M(q, q) > 0) act.push_back(q);
  const int64_t m = (int64_t)act.size();
  if (m == 0) return true;
  VecD d(m), bt(m);
  MatD A(m, m);
  for (int64_t x = 0; x < m; ++x) d(x) = 1 / std::sqrt(M(act[x], act[x]));
  for (int64_t x = 0; x < m; ++x) {
    bt(x) = d(x) * b(act[x]);
    for (int64_t y = 0; y < m; ++y) A(x, y) = d(x) * M(act[x], act[y]) * d(y);
  }
  double lambda = 0;
  for (int tries = 0; tries < 8; ++tries) {
    MatD Ad = A;
    Ad.diagonal().array() += lambda;
    Eigen::LLT<MatD> llt(Ad);
    bool ok = llt.info() == Eigen::Success;
    if (ok) {
      const MatD& L = llt.matrixLLT();
      for (int64_t x = 0; x < m && ok; ++x) ok = L(x, x) * L(x, x) > 1e-10 * (1 + lambda);
    }
    if (ok) {
      const VecD y = llt.solve(bt);
      if (y.allFinite()) {
        for (int64_t x = 0; x < m; ++x) theta(act[x]) = d(x) * y(x);
        *damped = lambda > 0;
        return true;
      }
    }
    lambda = lambda > 0 ? lambda * 10 : 0.01;
  }
  return false;
}


}  // namespace qf
