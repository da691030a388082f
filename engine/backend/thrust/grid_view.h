// qforge — a grid as the device code reads it (docs/architecture.md#backends): flat arrays and
// the rounding rule of docs/methods.md#grid, usable in __host__ __device__ code. Only uniform
// grids (any bits, allocations with row groups, per-group bits and pruned groups, float zeros)
// have a view; companded and K-quant grids, whose levels need f64 special functions or
// llama.cpp's tables, are run by the CPU backend (the device backends fall back op by op).
#pragma once
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define QF_HD __host__ __device__
#else
#define QF_HD
#endif

namespace qf {

struct Grid;

struct GridView {
  const float* scale = nullptr;      // [row groups × ngroups]
  const float* zero = nullptr;
  const int32_t* g_idx = nullptr;    // [cols]
  const int32_t* row_group = nullptr;  // [rows] or null (each row its own)
  const uint8_t* group_bits = nullptr; // [row groups × ngroups] or null (bits everywhere)
  int64_t rows = 0, cols = 0, ngroups = 0, nrowgroups = 0;
  int bits = 4;
  bool float_zero = false;

  QF_HD int64_t pidx(int64_t r, int64_t g) const { return (row_group ? row_group[r] : r) * ngroups + g; }
  // round half to even, as std::nearbyint in the default rounding mode (quant/grid.h uniform_code)
  static QF_HD float rint_even(float x) {
#if defined(__CUDA_ARCH__)
    return rintf(x);
#else
    return std::nearbyint(x);
#endif
  }
  // code = clamp(round(x/s) + z, 0, maxq) (float zero: round(x/s + z)); a 0-bit group: code 0
  QF_HD int code(float x, int64_t r, int64_t g) const {
    const int64_t p = pidx(r, g);
    const int b = group_bits ? group_bits[p] : bits;
    if (b == 0) return 0;
    const float s = scale[p], z = zero[p], maxq = (float)((1 << b) - 1);
    const float q = float_zero ? rint_even(x / s + z) : rint_even(x / s) + z;
    return (int)(q < 0.f ? 0.f : q > maxq ? maxq : q);
  }
  QF_HD float value(int code, int64_t r, int64_t g) const {
    const int64_t p = pidx(r, g);
    if (group_bits && group_bits[p] == 0) return zero[p];
    return scale[p] * ((float)code - zero[p]);
  }
  QF_HD float quantize(float x, int64_t r, int64_t g) const { return value(code(x, r, g), r, g); }
};

// The view of g with host pointers into it; false for grids the device code does not run
// (companded, K-quant).
bool grid_view(const Grid& g, GridView* v);

}  // namespace qf
