// qforge — the CPU backend's chunked GEMMs (backend.h gemm_rows, gemm_tn; chunking in gemm.h).
#include "backend/cpu/gemm.h"

#include <algorithm>

#include "backend/cpu/cpu_backend.h"
#include "core/parallel.h"
#include "core/tensor.h"

namespace qf::cpu {

using CMap = Eigen::Map<const MatRM>;
using Map = Eigen::Map<MatRM>;

void CpuBackend::gemm_rows(const float* x, int64_t rows, const float* w, int64_t w_rows, int64_t w_cols,
                           bool w_transposed, float* y, bool accumulate) {
  const int64_t k = w_transposed ? w_cols : w_rows, m = w_transposed ? w_rows : w_cols;
  CMap Wm(w, w_rows, w_cols);
  const int64_t nchunks = (rows + kGemmRowChunk - 1) / kGemmRowChunk;
#pragma omp parallel for schedule(dynamic) if (worth_parallel(rows * w_rows * w_cols))
  for (int64_t c = 0; c < nchunks; ++c) {
    const int64_t r0 = c * kGemmRowChunk, nr = std::min(kGemmRowChunk, rows - r0);
    CMap X(x + r0 * k, nr, k);
    Map Y(y + r0 * m, nr, m);
    if (w_transposed) {
      if (accumulate) Y.noalias() += X * Wm.transpose();
      else Y.noalias() = X * Wm.transpose();
    } else {
      if (accumulate) Y.noalias() += X * Wm;
      else Y.noalias() = X * Wm;
    }
  }
}

// One GEMM per kGemmOutChunk rows of c, each reducing over all rows; a chunk's column sums of a
// (the bias gradient) run on the thread that did its GEMM.
void CpuBackend::gemm_tn(const float* a, int64_t rows, int64_t a_cols, const float* b, int64_t b_cols, float* c,
                         bool accumulate, float* a_colsum, int64_t work) {
  if (work < 0) work = rows * a_cols * b_cols;
  CMap A(a, rows, a_cols), B(b, rows, b_cols);
  Map C(c, a_cols, b_cols);
  const int64_t nchunks = (a_cols + kGemmOutChunk - 1) / kGemmOutChunk;
#pragma omp parallel for schedule(dynamic) if (worth_parallel(work))
  for (int64_t ch = 0; ch < nchunks; ++ch) {
    const int64_t c0 = ch * kGemmOutChunk, nc = std::min(kGemmOutChunk, a_cols - c0);
    if (accumulate) C.middleRows(c0, nc).noalias() += A.middleCols(c0, nc).transpose() * B;
    else C.middleRows(c0, nc).noalias() = A.middleCols(c0, nc).transpose() * B;
    if (a_colsum)
      for (int64_t o = c0; o < c0 + nc; ++o) {
        double s = 0;
        for (int64_t n = 0; n < rows; ++n) s += a[n * a_cols + o];
        a_colsum[o] = (float)s;
      }
  }
}

}  // namespace qf::cpu
