#include "grid.h"

#include <cmath>
#include <sstream>

namespace qf {

void GridSpec::validate() const {
  if (bits < 1 || bits > 8) fail("grid: bits must be in 1..8, got ", bits);
  if (group == 0 || group < -1) fail("grid: group must be -1 (per channel) or >= 1, got ", group);
  if (mse) {
    if (!(maxshrink > 0.f && maxshrink <= 1.f)) fail("grid: maxshrink must be in (0, 1], got ", maxshrink);
    if (grid_points < 1) fail("grid: grid_points must be >= 1, got ", grid_points);
    if (!(norm > 0.f) || !std::isfinite(norm)) fail("grid: norm must be > 0, got ", norm);
  }
}

std::string GridSpec::str() const {
  std::ostringstream o;
  o << bits << "-bit " << (sym ? "sym" : "asym") << " " << (group > 0 ? "g" + std::to_string(group) : std::string("per-channel"));
  if (mse) o << " mse";
  return o.str();
}

Grid grid_new(const GridSpec& spec, int64_t rows, int64_t cols) {
  spec.validate();
  if (rows <= 0 || cols <= 0) fail("grid: weight shape [", rows, ", ", cols, "] is empty");
  Grid g;
  g.spec = spec;
  g.rows = rows;
  g.cols = cols;
  const int64_t G = g.group_size();
  g.ngroups = (cols + G - 1) / G;
  g.scale.assign((size_t)(rows * g.ngroups), 1.f);
  g.zero.assign((size_t)(rows * g.ngroups), 0.f);
  g.g_idx.resize((size_t)cols);
  for (int64_t c = 0; c < cols; ++c) g.g_idx[c] = (int32_t)(c / G);
  return g;
}

// (scale, zero) from a range, §1 (f32 like the reference Quantizer).
void grid_params_from_range(float xmin, float xmax, int maxq, bool sym, float* scale, float* zero) {
  if (sym) {
    xmax = std::max(std::fabs(xmin), xmax);
    if (xmin < 0) xmin = -xmax;
  }
  if (xmin == 0.f && xmax == 0.f) {
    xmin = -1.f;
    xmax = 1.f;
  }
  *scale = (xmax - xmin) / (float)maxq;
  *zero = sym ? (float)(maxq + 1) / 2.f : std::nearbyint(-xmin / *scale);
}

void grid_fit_group(Grid& grid, int64_t g, const Tensor& block) {
  if (block.dim() != 2 || block.size(0) != grid.rows)
    fail("grid: group block ", shape_str(block.shape()), " does not have ", grid.rows, " rows");
  if (g < 0 || g >= grid.ngroups) fail("grid: group ", g, " out of range (", grid.ngroups, " groups)");
  const auto B = block.cmat();
  const int maxq = grid.maxq();
  const GridSpec& sp = grid.spec;
  for (int64_t r = 0; r < grid.rows; ++r) {
    float xmin = 0.f, xmax = 0.f;  // range always contains 0
    for (int64_t c = 0; c < B.cols(); ++c) {
      const float x = B(r, c);
      if (!std::isfinite(x)) fail("grid: non-finite weight at row ", r, ", column ", c, " of group ", g);
      xmin = std::min(xmin, x);
      xmax = std::max(xmax, x);
    }
    float scale, zero;
    grid_params_from_range(xmin, xmax, maxq, sp.sym, &scale, &zero);
    if (sp.mse) {
      // Shrink search: keep the p minimizing Σ|Q(x) − x|^norm (ties keep the larger range).
      double best = INFINITY;
      const int steps = (int)(sp.maxshrink * (float)sp.grid_points);
      for (int i = 0; i < steps; ++i) {
        const float p = 1.f - (float)i / (float)sp.grid_points;
        const float xmin1 = p * xmin, xmax1 = p * xmax;
        float s1, z1;
        grid_params_from_range(xmin1, xmax1, maxq, sp.sym, &s1, &z1);
        if (sp.sym) z1 = zero;
        double err = 0;
        for (int64_t c = 0; c < B.cols(); ++c) {
          const float x = B(r, c);
          float q = std::nearbyint(x / s1) + z1;
          q = q < 0.f ? 0.f : q > (float)maxq ? (float)maxq : q;
          err += std::pow((double)std::fabs(s1 * (q - z1) - x), (double)sp.norm);
        }
        if (err < best) {
          best = err;
          scale = s1;
          zero = z1;
        }
      }
    }
    grid.scale[r * grid.ngroups + g] = scale;
    grid.zero[r * grid.ngroups + g] = zero;
  }
}

Grid grid_fit(const Tensor& W, const GridSpec& spec) {
  if (W.dim() != 2) fail("grid: expected a 2-d weight, got ", shape_str(W.shape()));
  Grid g = grid_new(spec, W.size(0), W.size(1));
  const int64_t G = g.group_size();
  for (int64_t k = 0; k < g.ngroups; ++k) {
    const int64_t c0 = k * G;
    grid_fit_group(g, k, W.cols(c0, std::min(G, g.cols - c0)));
  }
  return g;
}

void grid_quantize_col(const Grid& grid, int64_t col, const float* x, int64_t xs, float* out, int64_t os) {
  const int64_t g = grid.g_idx[col];
  for (int64_t r = 0; r < grid.rows; ++r) out[r * os] = grid.quantize(x[r * xs], r, g);
}

Tensor QuantizedLinear::dequantize() const {
  Tensor W = Tensor::empty({grid.rows, grid.cols});
  const uint8_t* c = codes.data<uint8_t>();
  float* w = W.f32();
  for (int64_t r = 0; r < grid.rows; ++r)
    for (int64_t j = 0; j < grid.cols; ++j) {
      const int64_t g = grid.g_idx[j];
      w[r * grid.cols + j] = grid.s(r, g) * ((float)c[r * grid.cols + j] - grid.z(r, g));
    }
  for (int64_t k = 0; k < outliers.nnz(); ++k) w[(int64_t)outliers.row[k] * grid.cols + outliers.col[k]] += outliers.val[k];
  return W;
}

QuantizedLinear quantize_to_grid(const Tensor& W, const Grid& grid) {
  if (W.dim() != 2 || W.size(0) != grid.rows || W.size(1) != grid.cols)
    fail("quantize: weight ", shape_str(W.shape()), " does not match the grid's [", grid.rows, ", ", grid.cols, "]");
  QuantizedLinear q;
  q.grid = grid;
  q.codes = Tensor::empty({grid.rows, grid.cols}, DType::U8);
  uint8_t* c = q.codes.data<uint8_t>();
  const Tensor Wc = W.contiguous();
  const float* w = Wc.f32();
  for (int64_t r = 0; r < grid.rows; ++r)
    for (int64_t j = 0; j < grid.cols; ++j) c[r * grid.cols + j] = (uint8_t)grid.code(w[r * grid.cols + j], r, grid.g_idx[j]);
  return q;
}

}  // namespace qf
