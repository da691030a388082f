// qforge — the CPU backend's chunked GEMMs (gemm.h).
#include "backend/cpu/gemm.h"

#include <algorithm>

#include "core/parallel.h"
#include "core/tensor.h"

namespace qf::cpu {

using CMap = Eigen::Map<const MatRM>;
using Map = Eigen::Map<MatRM>;

void gemm_rows_chunked(const float* x, int64_t rows, const float* w, int64_t w_rows, int64_t w_cols, bool w_transposed,
                       float* y, bool accumulate) {
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

void gemm_tn_out_chunked(const float* a, int64_t rows, int64_t a_cols, const float* b, int64_t b_cols, float* c,
                         bool accumulate, const std::function<void(int64_t c0, int64_t nc)>& per_chunk, int64_t work) {
  if (work < 0) work = rows * a_cols * b_cols;
  CMap A(a, rows, a_cols), B(b, rows, b_cols);
  Map C(c, a_cols, b_cols);
  const int64_t nchunks = (a_cols + kGemmOutChunk - 1) / kGemmOutChunk;
#pragma omp parallel for schedule(dynamic) if (worth_parallel(work))
  for (int64_t ch = 0; ch < nchunks; ++ch) {
    const int64_t c0 = ch * kGemmOutChunk, nc = std::min(kGemmOutChunk, a_cols - c0);
    if (accumulate) C.middleRows(c0, nc).noalias() += A.middleCols(c0, nc).transpose() * B;
    else C.middleRows(c0, nc).noalias() = A.middleCols(c0, nc).transpose() * B;
    if (per_chunk) per_chunk(c0, nc);
  }
}

}  // namespace qf::cpu
