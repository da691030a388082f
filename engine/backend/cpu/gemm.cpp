// qforge — the CPU backend's chunked GEMMs (backend.h gemm_rows, gemm_tn and their batches;
// chunking in gemm.h). A single product is a batch of one, so both give the same bits.
#include "backend/cpu/gemm.h"

#include <algorithm>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "core/parallel.h"
#include "core/tensor.h"

namespace qf::cpu {

using CMap = Eigen::Map<const MatRM>;
using Map = Eigen::Map<MatRM>;

namespace {

// y rows [r0, r0 + nr) of one job.
void gemm_rows_chunk(const GemmRowsJob& j, int64_t r0, int64_t nr) {
  const int64_t k = j.w_transposed ? j.w_cols : j.w_rows, m = j.w_transposed ? j.w_rows : j.w_cols;
  CMap Wm(j.w, j.w_rows, j.w_cols);
  CMap X(j.x + r0 * k, nr, k);
  Map Y(j.y + r0 * m, nr, m);
  if (j.w_transposed) {
    if (j.accumulate) Y.noalias() += X * Wm.transpose();
    else Y.noalias() = X * Wm.transpose();
  } else {
    if (j.accumulate) Y.noalias() += X * Wm;
    else Y.noalias() = X * Wm;
  }
}

// c rows [c0, c0 + nc) of one job; the chunk's column sums of a (the bias gradient) run on the
// thread that did its GEMM.
void gemm_tn_chunk(const GemmTnJob& j, int64_t rows, int64_t c0, int64_t nc) {
  CMap A(j.a, rows, j.a_cols), B(j.b, rows, j.b_cols);
  Map C(j.c, j.a_cols, j.b_cols);
  if (j.accumulate) C.middleRows(c0, nc).noalias() += A.middleCols(c0, nc).transpose() * B;
  else C.middleRows(c0, nc).noalias() = A.middleCols(c0, nc).transpose() * B;
  if (j.a_colsum)
    for (int64_t o = c0; o < c0 + nc; ++o) {
      double s = 0;
      for (int64_t n = 0; n < rows; ++n) s += j.a[n * j.a_cols + o];
      j.a_colsum[o] = (float)s;
    }
}

}  // namespace

void CpuBackend::gemm_rows(const float* x, int64_t rows, const float* w, int64_t w_rows, int64_t w_cols,
                           bool w_transposed, float* y, bool accumulate) {
  const GemmRowsJob j{x, w, w_rows, w_cols, w_transposed, y, accumulate};
  gemm_rows_batch(rows, &j, 1);
}

// One task per kGemmRowChunk rows; a task runs every job on its rows in job order, so jobs that
// accumulate into one y add up in the same order as separate calls.
void CpuBackend::gemm_rows_batch(int64_t rows, const GemmRowsJob* jobs, int n_jobs) {
  int64_t work = 0;
  for (int i = 0; i < n_jobs; ++i) work += rows * jobs[i].w_rows * jobs[i].w_cols;
  const int64_t nchunks = (rows + kGemmRowChunk - 1) / kGemmRowChunk;
#pragma omp parallel for schedule(dynamic) if (worth_parallel(work))
  for (int64_t c = 0; c < nchunks; ++c) {
    const int64_t r0 = c * kGemmRowChunk, nr = std::min(kGemmRowChunk, rows - r0);
    for (int i = 0; i < n_jobs; ++i) gemm_rows_chunk(jobs[i], r0, nr);
  }
}

void CpuBackend::gemm_tn(const float* a, int64_t rows, int64_t a_cols, const float* b, int64_t b_cols, float* c,
                         bool accumulate, float* a_colsum, int64_t work) {
  if (work < 0) work = rows * a_cols * b_cols;
  const GemmTnJob j{a, a_cols, b, b_cols, c, accumulate, a_colsum};
  const int64_t nchunks = (a_cols + kGemmOutChunk - 1) / kGemmOutChunk;
#pragma omp parallel for schedule(dynamic) if (worth_parallel(work))
  for (int64_t ch = 0; ch < nchunks; ++ch)
    gemm_tn_chunk(j, rows, ch * kGemmOutChunk, std::min(kGemmOutChunk, a_cols - ch * kGemmOutChunk));
}

// One task per (job, kGemmOutChunk rows of its c): the same GEMMs as separate gemm_tn calls.
void CpuBackend::gemm_tn_batch(int64_t rows, const GemmTnJob* jobs, int n_jobs) {
  std::vector<int64_t> first(n_jobs + 1, 0);  // first task of each job
  int64_t work = 0;
  for (int i = 0; i < n_jobs; ++i) {
    first[i + 1] = first[i] + (jobs[i].a_cols + kGemmOutChunk - 1) / kGemmOutChunk;
    work += rows * jobs[i].a_cols * jobs[i].b_cols;
  }
#pragma omp parallel for schedule(dynamic) if (worth_parallel(work))
  for (int64_t t = 0; t < first[n_jobs]; ++t) {
    const int i = int(std::upper_bound(first.begin(), first.end(), t) - first.begin()) - 1;
    const int64_t c0 = (t - first[i]) * kGemmOutChunk;
    gemm_tn_chunk(jobs[i], rows, c0, std::min(kGemmOutChunk, jobs[i].a_cols - c0));
  }
}

}  // namespace qf::cpu
