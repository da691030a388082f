// qforge — device-resident timings of the device backends' kernels (bench/bench_device.cpp,
// scripts/device_check.sh): operands are placed on the device once, so the times are the
// kernels' own, without the per-op staging the Backend interface implies (docs/device.md).
#pragma once
#include <cstdint>
#include <string>

#include "backend/backend.h"

namespace qf {

struct DeviceBench {
  // Seconds per f32 GEMM C[m, n] = A[m, k]·B[k, n] on device-resident operands (one warm-up).
  double (*gemm_seconds)(int64_t m, int64_t n, int64_t k, int reps);
  // `sweeps` CD sweeps of sw's problem staged once; returns their seconds, *df the summed change.
  double (*cd_sweeps)(const CdSweep& sw, int sweeps, double* df);
  // GPTQ of W (column-major [rows, cols], natural order, quantized in place to its grid values)
  // against H (f64 column-major [cols, cols], damped): the inverse factor on the device (Cholesky
  // and triangular inverse, *sec_factor) and every block of `block` columns (*sec_blocks). codes
  // row-major [rows, cols]. false when H is not positive definite.
  bool (*gptq)(float* W, int64_t rows, int64_t cols, const double* H, int64_t block, const Grid& grid, uint8_t* codes,
               double* sec_factor, double* sec_blocks);
  // Seconds to accumulate Σ = XᵀX (f64) over n tokens of width c generated on the device.
  double (*gram_seconds)(int64_t n, int64_t c);
};

// The timings of a device backend by name ("thrust-omp", "cuda"); nullptr when not built.
const DeviceBench* device_bench(const std::string& name);

}  // namespace qf
