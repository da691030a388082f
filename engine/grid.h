// qforge — uniform affine quantization grids and the quantized linear (algorithms.md §1).
//
// A grid assigns every (row, group) of a weight W [rows, cols] a scale and an integer zero:
//   code = clamp(round(x/scale) + zero, 0, maxq),   value = scale·(code − zero),
// maxq = 2^bits − 1, round = half to even, all in f32 exactly as the GPTQ Quantizer.
// Fitting per (row, group): xmin = min(0, min x), xmax = max(0, max x) (0 always inside);
// both 0 → (−1, +1); sym: xmax = max(|xmin|, xmax), xmin = −xmax if xmin < 0, zero = (maxq+1)/2;
// else zero = round(−xmin/scale). mse: shrink the range by p = 1 − i/grid_points,
// i < maxshrink·grid_points, keeping per row the p with the least Σ|Q(x) − x|^norm.
// Groups are `group` consecutive input columns (−1: one group per row); the last group may
// be ragged. g_idx maps each column to its group (identity order unless a solver permutes).
#pragma once
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "tensor.h"

namespace qf {

struct GridSpec {
  int bits = 4;
  bool sym = false;
  int64_t group = -1;  // columns per group; -1 = per channel (whole row)
  bool mse = false;
  float maxshrink = 0.8f;
  int grid_points = 100;
  float norm = 2.4f;
  void validate() const;  // bits 1..8, group -1 or >= 1, sane mse settings
  std::string str() const;  // "4-bit asym g128 mse"
};

struct Grid {
  GridSpec spec;
  int64_t rows = 0, cols = 0, ngroups = 0;
  std::vector<float> scale, zero;  // [rows × ngroups], row-major
  std::vector<int32_t> g_idx;      // [cols]: group of each column
  int maxq() const { return (1 << spec.bits) - 1; }
  int64_t group_size() const { return spec.group > 0 ? spec.group : cols; }
  float s(int64_t r, int64_t g) const { return scale[r * ngroups + g]; }
  float z(int64_t r, int64_t g) const { return zero[r * ngroups + g]; }
  // Nearest representable value / its code for x in (row r, group g).
  int code(float x, int64_t r, int64_t g) const {
    const float q = std::nearbyint(x / s(r, g)) + z(r, g);
    return q < 0.f ? 0 : q > (float)maxq() ? maxq() : (int)q;
  }
  float quantize(float x, int64_t r, int64_t g) const { return s(r, g) * ((float)code(x, r, g) - z(r, g)); }
};

// (scale, zero) of one (row, group) from its range [xmin, xmax] (the caller makes it hold 0).
void grid_params_from_range(float xmin, float xmax, int maxq, bool sym, float* scale, float* zero);
// An empty grid for W's shape (params unset; groups contiguous).
Grid grid_new(const GridSpec& spec, int64_t rows, int64_t cols);
// Fits group g's (scale, zero) for every row from block = the group's columns of some matrix.
void grid_fit_group(Grid& grid, int64_t g, const Tensor& block);
// Fits every group from W (2-d f32).
Grid grid_fit(const Tensor& W, const GridSpec& spec);
// Quantizes column `col` of every row: out[r] = Q_{r, g_idx[col]}(x[r]); x, out strided by stride.
void grid_quantize_col(const Grid& grid, int64_t col, const float* x, int64_t xs, float* out, int64_t os);

// Sparse full-precision additions (outliers) to a quantized weight.
struct SparseEntries {
  std::vector<int32_t> row, col;
  std::vector<float> val;
  int64_t nnz() const { return (int64_t)val.size(); }
};

// Integer codes + grid + optional outliers; dequantizes exactly to scale·(code − zero) + outliers.
struct QuantizedLinear {
  Grid grid;
  Tensor codes;  // u8 [rows, cols]
  SparseEntries outliers;
  Tensor dequantize() const;  // f32 [rows, cols]
};

// Codes of a weight already on the grid (or rounded onto it): What → QuantizedLinear.
QuantizedLinear quantize_to_grid(const Tensor& W, const Grid& grid);

}  // namespace qf
