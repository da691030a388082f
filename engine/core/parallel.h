// qforge — when a loop is worth waking the OpenMP team for.
//
// Idle OpenMP threads sleep by default (passive wait, engine/core/omp_wait.h), and waking them costs
// tens of microseconds per parallel region on a 2-core VM: a region with less work than that
// runs faster on the calling thread alone (a stories260K backward pass is hundreds of tiny
// regions). Loops therefore carry `if (qf::worth_parallel(work))` with `work` their rough count
// of multiply-adds or element updates. Every loop's chunking is fixed, so it gives the same
// bits on one thread or many: the threshold changes speed, never results.
#pragma once
#include <cstdint>

namespace qf {

constexpr int64_t kParallelMinWork = int64_t(1) << 18;  // ≈ 100 µs of scalar work
constexpr bool worth_parallel(int64_t work) { return work >= kParallelMinWork; }
// A streaming loop (an add, a rotation, a square per element: vectorized, memory-bound) does
// an element several times faster than a scalar multiply-add, so it needs 4× the elements.
constexpr bool worth_parallel_stream(int64_t elements) { return elements >= 4 * kParallelMinWork; }

}  // namespace qf
