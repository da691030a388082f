// qforge — the Thrust-OMP backend: the device code of device_backend.inl compiled by g++ for
// Thrust's OpenMP device system, with Eigen behind the dense-LA seam and host memory as device
// memory (docs/architecture.md#backends). It runs everywhere, so every CI run tests the device
// code against the CPU backend (tests/test_backend_ops.cpp, tests/test_backend_parity.cpp).
//
// Determinism: the functors are independent per index (device_backend.inl) and every dense
// product here is split into fixed column blocks, each one single-threaded Eigen call inside an
// OpenMP loop, so the bits do not depend on the thread count.
#define THRUST_DEVICE_SYSTEM THRUST_DEVICE_SYSTEM_OMP
#define QF_DEV_NS thrust_omp
#define QF_DEV_NAME "thrust-omp"
#define QF_EXEC thrust::omp::par

#include <thrust/system/omp/execution_policy.h>

#include <Eigen/Dense>
#include <cstdlib>
#include <cstring>
#include <string>

#include "backend/thrust/device.h"

namespace qf::thrust_omp {

void* raw_alloc(size_t bytes) {
  void* p = std::aligned_alloc(64, (bytes + 63) & ~size_t(63));
  if (!p) throw std::runtime_error("thrust-omp: out of memory allocating " + std::to_string(bytes) + " bytes");
  return p;
}
void raw_free(void* p) { std::free(p); }
void copy_to_device(void* dst, const void* src, size_t bytes) { std::memcpy(dst, src, bytes); }
void copy_to_host(void* dst, const void* src, size_t bytes) { std::memcpy(dst, src, bytes); }
void copy_on_device(void* dst, const void* src, size_t bytes) { std::memcpy(dst, src, bytes); }
void synchronize() {}
bool zero_copy() { return true; }
BlockCache& block_cache() {
  static BlockCache c;
  return c;
}

namespace dla {

namespace {
using MatF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic>;  // column-major
using MatD = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic>;
using CMapF = Eigen::Map<const MatF, 0, Eigen::OuterStride<>>;
using MapF = Eigen::Map<MatF, 0, Eigen::OuterStride<>>;
constexpr int64_t kColBlock = 64;  // columns of C per single-threaded product
// Below this many multiply-adds a product is a plain loop on the calling thread (Eigen's lazy
// product is not used: its vectorized and peeled coefficients sum in an order that depends on the
// output's alignment); above, its column blocks run inside an active OpenMP region, where Eigen
// never threads a product itself (its blocking would depend on the thread count).
constexpr int64_t kSmall = int64_t(1) << 15;

// C[:, j0:j0+nc] of one sgemm.
void sgemm_cols(bool ta, bool tb, int64_t m, int64_t nc, int64_t k, float alpha, const float* A, int64_t lda,
                const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  CMapF Am(A, ta ? k : m, ta ? m : k, Eigen::OuterStride<>(lda));
  CMapF Bm(B, tb ? nc : k, tb ? k : nc, Eigen::OuterStride<>(ldb));
  MapF Cm(C, m, nc, Eigen::OuterStride<>(ldc));
  if (beta == 0.f) Cm.setZero();
  else if (beta != 1.f) Cm *= beta;
  if (k == 0) return;
  if (m * nc * k < kSmall) {  // plain loops: each c_ij summed over l in order, whatever the alignment
    for (int64_t j = 0; j < nc; ++j)
      for (int64_t i = 0; i < m; ++i) {
        float acc = 0.f;
        for (int64_t l = 0; l < k; ++l) acc += (ta ? Am(l, i) : Am(i, l)) * (tb ? Bm(j, l) : Bm(l, j));
        Cm(i, j) += alpha * acc;
      }
    return;
  }
  if (!ta && !tb) Cm.noalias() += alpha * (Am * Bm);
  else if (ta && !tb) Cm.noalias() += alpha * (Am.transpose() * Bm);
  else if (!ta && tb) Cm.noalias() += alpha * (Am * Bm.transpose());
  else Cm.noalias() += alpha * (Am.transpose() * Bm.transpose());
}
}  // namespace

void sgemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* A, int64_t lda, const float* B,
           int64_t ldb, float beta, float* C, int64_t ldc) {
  if (m * n * k < kSmall) return sgemm_cols(ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
  const int64_t nblk = (n + kColBlock - 1) / kColBlock;
#pragma omp parallel for schedule(dynamic)
  for (int64_t bj = 0; bj < nblk; ++bj) {
    const int64_t j0 = bj * kColBlock, nc = std::min(kColBlock, n - j0);
    // op(B)'s columns j0.. : B's columns (no transpose) or rows (transpose)
    const float* Bj = tb ? B + j0 : B + j0 * ldb;
    sgemm_cols(ta, tb, m, nc, k, alpha, A, lda, Bj, ldb, beta, C + j0 * ldc, ldc);
  }
}

void sgemm_batched(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* const* A, int64_t lda,
                   const float* const* B, int64_t ldb, float beta, float* const* C, int64_t ldc, int batch) {
#pragma omp parallel for schedule(dynamic)
  for (int i = 0; i < batch; ++i) sgemm_cols(ta, tb, m, n, k, alpha, A[i], lda, B[i], ldb, beta, C[i], ldc);
}

void ssyrk_lower(int64_t n, int64_t k, const float* A, int64_t lda, float* C, int64_t ldc) {
  const int64_t nblk = (n + kColBlock - 1) / kColBlock;
#pragma omp parallel for schedule(dynamic)
  for (int64_t bj = 0; bj < nblk; ++bj) {
    const int64_t j0 = bj * kColBlock, nc = std::min(kColBlock, n - j0);
    // C[j0:, j0:j0+nc] = A[j0:, :]·A[j0:j0+nc, :]ᵀ (the lower part of this column block)
    CMapF Am(A, n, k, Eigen::OuterStride<>(lda));
    MapF Cm(C + j0 * ldc + j0, n - j0, nc, Eigen::OuterStride<>(ldc));
    Cm.noalias() = Am.middleRows(j0, n - j0) * Am.middleRows(j0, nc).transpose();
  }
}

// Eigen's blocked LLT (the CPU backend's), run by one thread of an active region so that its
// inner products are never threaded (lda = n here).
bool dpotrf_lower(double* A, int64_t n, int64_t lda) {
  bool ok = false;
#pragma omp parallel
#pragma omp single
  {
    Eigen::Map<MatD> Am(A, n, n);
    Eigen::LLT<Eigen::Ref<MatD>> llt(Am);  // in place: A's lower part becomes L
    ok = llt.info() == Eigen::Success;
  }
  return ok;
}

void dtrsm_lower(int64_t m, int64_t nrhs, const double* A, int64_t lda, double* B, int64_t ldb) {
  Eigen::Map<const MatD, 0, Eigen::OuterStride<>> L(A, m, m, Eigen::OuterStride<>(lda));
  const int64_t nblk = (nrhs + 31) / 32;
#pragma omp parallel for schedule(dynamic)
  for (int64_t bj = 0; bj < nblk; ++bj) {
    const int64_t j0 = bj * 32, nc = std::min<int64_t>(32, nrhs - j0);
    Eigen::Map<MatD, 0, Eigen::OuterStride<>> X(B + j0 * ldb, m, nc, Eigen::OuterStride<>(ldb));
    L.triangularView<Eigen::Lower>().solveInPlace(X);
  }
}

}  // namespace dla
}  // namespace qf::thrust_omp

#include "backend/thrust/device_backend.inl"

namespace qf::thrust_omp {

Backend* device_backend(std::string*) {
  static DeviceBackend b;
  return &b;
}

}  // namespace qf::thrust_omp
