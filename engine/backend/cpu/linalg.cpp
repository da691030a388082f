// qforge — the CPU backend's f64 statistics and dense solves: Gram accumulation, Cholesky and
// the triangular inverse (backend.h).
#include <Eigen/Dense>
#include <algorithm>

#include "backend/cpu/cpu_backend.h"
#include "core/tensor.h"

namespace qf::cpu {

using MatD = Eigen::MatrixXd;

// Tokens in blocks of kTok, Σ's rows in blocks of kRows: each (token block, row block) is one
// f32 GEMM over ≤ 512 tokens added into Σ in f64, token blocks in order, so the sum does not
// depend on the thread count.
void CpuBackend::gram_accumulate(const float* x, int64_t N, int64_t c, double* S_, double* xsum_) {
  constexpr int64_t kTok = 512, kRows = 64;
  using CMap = Eigen::Map<const MatRM>;
  Eigen::Map<MatD> S(S_, c, c);
  const int64_t nrb = (c + kRows - 1) / kRows;
  for (int64_t t0 = 0; t0 < N; t0 += kTok) {
    const int64_t nt = std::min(kTok, N - t0);
    CMap Xc(x + t0 * c, nt, c);
#pragma omp parallel for schedule(dynamic)
    for (int64_t rb = 0; rb < nrb; ++rb) {
      const int64_t r0 = rb * kRows, nr = std::min(kRows, c - r0);
      MatRM G = Xc.middleCols(r0, nr).transpose() * Xc;  // [nr, c], f32 over ≤ 512 tokens
      S.middleRows(r0, nr) += G.cast<double>();
    }
  }
  if (xsum_) {
    Eigen::Map<Eigen::VectorXd> xsum(xsum_, c);
    for (int64_t i = 0; i < N; ++i)  // sequential f64 sum: deterministic
      xsum += Eigen::Map<const Eigen::VectorXf>(x + i * c, c).cast<double>();
  }
}

bool CpuBackend::cholesky_lower(double* A_, int64_t n) {
  Eigen::Map<MatD> A(A_, n, n);
  Eigen::LLT<Eigen::Ref<MatD>> llt(A);  // in place: A's lower part becomes L
  return llt.info() == Eigen::Success;
}

// L⁻¹ by column blocks: block [k0, k0+b) of L⁻¹ is zero above row k0 and solves the trailing
// system L[k0:, k0:]·X = I[k0:, k0:k0+b] (n³/3 flops instead of n³; blocks are independent).
void CpuBackend::lower_triangular_inverse(const double* A_, int64_t n, double* X_) {
  Eigen::Map<const MatD> A(A_, n, n);
  Eigen::Map<MatD> U(X_, n, n);
  U.setZero();
  const int64_t nb = 128, nblk = (n + nb - 1) / nb;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t k = 0; k < nblk; ++k) {
    const int64_t k0 = k * nb, b = std::min(nb, n - k0), m = n - k0;
    auto X = U.block(k0, k0, m, b);
    X.topRows(b).setIdentity();
    A.block(k0, k0, m, m).triangularView<Eigen::Lower>().solveInPlace(X);
  }
}

}  // namespace qf::cpu
