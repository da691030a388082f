// qforge — the CPU backend's GEMMs: Eigen products over fixed chunks spread over OpenMP threads.
//
// Every chunk is one GEMM whose shape depends only on the operands, never on the thread count,
// so results are bit-identical for 1 or N threads. A product with fewer than 2^18
// multiply-adds runs on the calling thread (worth_parallel, core/parallel.h); the bits are the
// same either way. All matrices are contiguous row-major f32.
#pragma once
#include <cstdint>
#include <functional>

namespace qf::cpu {

constexpr int64_t kGemmRowChunk = 64;  // rows of y per GEMM in gemm_rows_chunked
constexpr int64_t kGemmOutChunk = 32;  // rows of c per GEMM in gemm_tn_out_chunked

// y = x · op(w), or y += x · op(w) when accumulate, one GEMM per kGemmRowChunk rows of x and y.
// w is [w_rows, w_cols]; op(w) = wᵀ when w_transposed (x [rows, w_cols], y [rows, w_rows]: a
// linear layer's x Wᵀ), else w (x [rows, w_rows], y [rows, w_cols]). y is written, not
// allocated. Threads when worth_parallel(rows · w_rows · w_cols).
void gemm_rows_chunked(const float* x, int64_t rows, const float* w, int64_t w_rows, int64_t w_cols, bool w_transposed,
                       float* y, bool accumulate);

// c = aᵀ · b, or c += aᵀ · b when accumulate: a [rows, a_cols], b [rows, b_cols], c [a_cols,
// b_cols], one GEMM per kGemmOutChunk rows of c, each reducing over all rows (a weight
// gradient dyᵀx). per_chunk(c0, nc), when given, runs after the GEMM of c's rows [c0, c0 + nc)
// on the same thread. Threads when worth_parallel(work); work < 0 means rows · a_cols · b_cols.
void gemm_tn_out_chunked(const float* a, int64_t rows, int64_t a_cols, const float* b, int64_t b_cols, float* c,
                         bool accumulate, const std::function<void(int64_t c0, int64_t nc)>& per_chunk = nullptr,
                         int64_t work = -1);

}  // namespace qf::cpu
