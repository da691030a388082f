// qforge — the CPU backend's GEMM chunking (cpu_backend.h: gemm_rows, gemm_tn).
//
// Every chunk is one GEMM whose shape depends only on the operands, never on the thread count,
// so results are bit-identical for 1 or N threads. A product with fewer than 2^18
// multiply-adds runs on the calling thread (worth_parallel, core/parallel.h); the bits are the
// same either way.
#pragma once
#include <cstdint>

namespace qf::cpu {

constexpr int64_t kGemmRowChunk = 64;  // rows of y per GEMM in gemm_rows
constexpr int64_t kGemmOutChunk = 32;  // rows of c per GEMM in gemm_tn

}  // namespace qf::cpu
