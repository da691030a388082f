#include "quant/grid.h"

#include <algorithm>
#include <cmath>
#include <sstream>

#include "core/half.h"

namespace qf {

void GridSpec::validate() const {
  if (bits < 1 || bits > 8) fail("grid: bits must be in 1..8, got ", bits);
  if (group == 0 || group < -1) fail("grid: group must be -1 (per channel) or >= 1, got ", group);
  for (size_t k = 0; k < group_bits.size(); ++k)
    if (group_bits[k] > 8) fail("grid: allocated bits must be in 0..8, got ", (int)group_bits[k], " at group ", k + 1);
  if (!row_group.empty() && nrowgroups < 1) fail("grid: row_group is set but nrowgroups = ", nrowgroups);
  if (kind == GridKind::KQuant) {
    if (ktype == KQuantType::None) fail("grid: kind kquant needs a K-quant type (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)");
    const KQuantLayout& L = kquant_layout(ktype);
    if (bits != L.bits || group != L.sub || sym == L.has_min() || !f16_scales)
      fail("grid: a ", L.name, " grid has ", L.bits, "-bit codes in sub-blocks of ", L.sub, ", ", L.has_min() ? "with mins" : "symmetric",
           ", fp16 super-block scales (got ", bits, " bits, group ", group, sym ? ", sym" : ", asym", f16_scales ? "" : ", no f16_scales", ")");
    if (mse || float_zero || mapping != GridMapping::Gptq || !group_bits.empty() || !row_group.empty())
      fail("grid: a ", L.name, " grid is fitted as the format stores it: mse, float_zero, mapping, alloc and row_groups do not apply");
    if (importance == GridImportance::DiagX) fail("grid: K-quant grids take importance none or diag");
  } else if (ktype != KQuantType::None) {
    fail("grid: a K-quant type is given for a kind other than kquant");
  }
  if (kind == GridKind::Compand) {
    if (f16_scales) fail("grid: f16_scales applies to uniform grids");
    if (float_zero) fail("grid: float_zero applies to uniform grids");
    if (mse) fail("grid: mse (clip search) applies to uniform grids; a companded grid searches with compand_search");
    if (!std::isfinite(compand_mult) || !std::isfinite(compand_bias)) fail("grid: compand_mult and compand_bias must be finite");
  }
  if (mapping == GridMapping::Llamacpp) {
    if (!sym) fail("grid: mapping llamacpp is llama.cpp's symmetric block mapping (Q4_0, Q5_0, Q8_0): give sym = true");
    if (kind != GridKind::Uniform || float_zero) fail("grid: mapping llamacpp applies to uniform grids with an integer zero");
  }
  if (importance != GridImportance::None && kind != GridKind::KQuant) {
    if (kind != GridKind::Uniform || float_zero) fail("grid: importance applies to uniform grids with an integer zero");
    if (mse) fail("grid: importance and mse are two range searches: give one");
  }
  if (mse) {
    if (!(maxshrink > 0.f && maxshrink <= 1.f)) fail("grid: maxshrink must be in (0, 1], got ", maxshrink);
    if (grid_points < 1) fail("grid: grid_points must be >= 1, got ", grid_points);
    if (!(norm > 0.f) || !std::isfinite(norm)) fail("grid: norm must be > 0, got ", norm);
  }
}

void GridSpec::validate_layout(int64_t rows, int64_t ngroups) const {
  int64_t nrg = rows;
  if (!row_group.empty()) {
    if ((int64_t)row_group.size() != rows) fail("grid: row_group has ", row_group.size(), " entries, the weight has ", rows, " rows");
    for (size_t r = 0; r < row_group.size(); ++r)
      if (row_group[r] < 0 || row_group[r] >= nrowgroups)
        fail("grid: row ", r + 1, " is in row group ", row_group[r] + 1, ", outside 1..", nrowgroups);
    nrg = nrowgroups;
  }
  if (!group_bits.empty() && (int64_t)group_bits.size() != nrg * ngroups)
    fail("grid: the bit allocation has ", group_bits.size(), " entries, expected ", nrg, " row groups × ", ngroups, " column groups = ", nrg * ngroups);
}

double GridSpec::mean_bits(int64_t rows, int64_t cols) const {
  if (group_bits.empty()) return bits;
  const int64_t G = group > 0 ? group : cols, ng = (cols + G - 1) / G;
  const int64_t nrg = row_group.empty() ? rows : nrowgroups;
  std::vector<int64_t> rows_in((size_t)nrg, row_group.empty() ? 1 : 0);
  for (int32_t k : row_group) ++rows_in[(size_t)k];
  double total = 0;
  for (int64_t k = 0; k < nrg; ++k)
    for (int64_t g = 0; g < ng; ++g) total += (double)group_bits[(size_t)(k * ng + g)] * rows_in[(size_t)k] * std::min(G, cols - g * G);
  return total / ((double)rows * cols);
}

std::string GridSpec::str() const {
  std::ostringstream o;
  if (kind == GridKind::KQuant) {
    o << kquant_layout(ktype).name;
    if (importance != GridImportance::None) o << " importance-" << grid_importance_name(importance);
    return o.str();
  }
  if (group_bits.empty()) o << bits << "-bit ";
  else o << "mixed-bit ";
  if (kind == GridKind::Compand) o << "compand";
  else o << (sym ? "sym" : "asym");
  o << " " << (group > 0 ? "g" + std::to_string(group) : std::string("per-channel"));
  if (!row_group.empty()) o << " rowgroups " << nrowgroups;
  if (mapping != GridMapping::Gptq) o << " " << grid_mapping_name(mapping);
  if (mse) o << " mse";
  if (importance != GridImportance::None) o << " importance-" << grid_importance_name(importance);
  if (f16_scales) o << " f16-scales";
  if (float_zero) o << " float-zero";
  return o.str();
}

// Laplace(μ, b): F(x) = ½e^{(x−μ)/b} (x < μ), 1 − ½e^{−(x−μ)/b} (x ≥ μ).
static double laplace_cdf(double x, double mu, double b) {
  const double t = (x - mu) / b;
  return t < 0 ? 0.5 * std::exp(t) : 1.0 - 0.5 * std::exp(-t);
}
static double laplace_icdf(double u, double mu, double b) {
  return u < 0.5 ? mu + b * std::log(2.0 * u) : mu - b * std::log(2.0 * (1.0 - u));
}

float compand_level(int k, float mu, float b, int bits) {
  if (!(b > 0.f)) return mu;  // a constant group: every level is μ
  const double n = std::ldexp(1.0, bits);
  return (float)laplace_icdf((k + 0.5) / n, mu, b);
}

int compand_code(float x, float mu, float b, int bits) {
  if (!(b > 0.f)) return 0;
  const int n = 1 << bits;
  int k = (int)std::floor(laplace_cdf(x, mu, b) * n);
  k = std::min(std::max(k, 0), n - 1);
  // x lies in F-cell k; the nearest level is level k or a neighbour (levels are increasing and
  // each lies inside its own cell).
  int best = k;
  float bd = std::fabs(x - compand_level(k, mu, b, bits));
  for (int j : {k - 1, k + 1}) {
    if (j < 0 || j >= n) continue;
    const float d = std::fabs(x - compand_level(j, mu, b, bits));
    if (d < bd || (d == bd && j < best)) {
      best = j;
      bd = d;
    }
  }
  return best;
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
  spec.validate_layout(rows, g.ngroups);
  g.scale.assign((size_t)(g.nrowgroups() * g.ngroups), 1.f);
  g.zero.assign((size_t)(g.nrowgroups() * g.ngroups), 0.f);
  g.g_idx.resize((size_t)cols);
  for (int64_t c = 0; c < cols; ++c) g.g_idx[c] = (int32_t)(c / G);
  if (spec.kind == GridKind::KQuant) {
    const KQuantLayout& L = kquant_layout(spec.ktype);
    if (cols % kKQuantSuper)
      fail("grid: ", L.name, " needs rows of a multiple of ", kKQuantSuper, " weights; this weight has ", cols,
           " input columns (llama.cpp stores such tensors in another type: choose a 32-block grid for this linear)");
    const size_t nsb = (size_t)(rows * (cols / kKQuantSuper));
    g.kq_d.assign(nsb, 0.f);
    g.kq_dmin.assign(nsb, 0.f);
    g.kq_sc.assign((size_t)(rows * g.ngroups), 0);
    g.kq_mn.assign((size_t)(rows * g.ngroups), 0);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t k = 0; k < g.ngroups; ++k) g.scale[(size_t)(r * g.ngroups + k)] = 0.f, g.zero[(size_t)(r * g.ngroups + k)] = L.has_min() ? 0.f : (float)L.zero;
  }
  return g;
}

GridSpec grid_spec_kquant(KQuantType t, GridImportance importance) {
  const KQuantLayout& L = kquant_layout(t);
  GridSpec s;
  s.kind = GridKind::KQuant;
  s.ktype = t;
  s.bits = L.bits;
  s.group = L.sub;
  s.sym = !L.has_min();
  s.f16_scales = true;
  s.importance = importance;
  s.validate();
  return s;
}

void kquant_set_superblock(Grid& g, int64_t r, int64_t sb, float d, float dmin, const int* sc, const int* mn) {
  const KQuantLayout& L = kquant_layout(g.spec.ktype);
  const int ns = L.nsub();
  const size_t q = (size_t)(r * (g.cols / kKQuantSuper) + sb);
  g.kq_d[q] = d;
  g.kq_dmin[q] = dmin;
  for (int k = 0; k < ns; ++k) {
    const size_t p = (size_t)(r * g.ngroups + sb * ns + k);
    g.kq_sc[p] = (int16_t)sc[k];
    g.kq_mn[p] = (int16_t)mn[k];
    g.scale[p] = d * (float)sc[k];  // ggml's d·sc (exact: 11 × 8 significant bits)
    g.zero[p] = L.has_min() ? dmin * (float)mn[k] : (float)L.zero;
  }
}

const char* grid_mapping_name(GridMapping m) { return m == GridMapping::Llamacpp ? "llamacpp" : "gptq"; }
bool grid_mapping_from_name(const std::string& name, GridMapping* m) {
  if (name == "gptq") *m = GridMapping::Gptq;
  else if (name == "llamacpp") *m = GridMapping::Llamacpp;
  else return false;
  return true;
}

const char* grid_importance_name(GridImportance m) {
  return m == GridImportance::Diag ? "diag" : m == GridImportance::DiagX ? "diag_x" : "none";
}
bool grid_importance_from_name(const std::string& name, GridImportance* m) {
  if (name == "none") *m = GridImportance::None;
  else if (name == "diag") *m = GridImportance::Diag;
  else if (name == "diag_x") *m = GridImportance::DiagX;
  else return false;
  return true;
}

// (scale, zero) from a range, docs/methods.md#grid (f32 like the reference Quantizer).
void grid_params_from_range(float xmin, float xmax, int maxq, bool sym, float* scale, float* zero, GridMapping mapping) {
  if (sym && mapping == GridMapping::Llamacpp) {
    // The signed extreme (the range holds 0); an all-zero group gets any scale: that of m = 1.
    float m = -xmin > xmax ? xmin : xmax;
    if (m == 0.f) m = 1.f;
    const float half = (float)(maxq + 1) / 2.f;
    if (maxq == 255) *scale = std::fabs(m) / 127.f;  // Q8_0: amax / 127, codes 1..255 around 128
    else *scale = m / -half;                          // Q4_0 / Q5_0: m on code 0
    *zero = half;
    return;
  }
  if (sym) {
    xmax = std::max(std::fabs(xmin), xmax);
    if (xmin < 0) xmin = -xmax;
  }
  if (xmin == 0.f && xmax == 0.f) {
    xmin = -1.f;
    xmax = 1.f;
  }
  *scale = (xmax - xmin) / (float)maxq;
  // The zero rule, not the code rule (uniform_code): no clamp, and no "+ 0" (which would turn the
  // −0 of a row with xmin = 0 into +0, changing the stored bytes).
  *zero = sym ? (float)(maxq + 1) / 2.f : std::nearbyint(-xmin / *scale);
}

// Median (the lower middle for an even count, as torch.median) of v; reorders v.
static float median_of(std::vector<float>& v) {
  const size_t k = (v.size() - 1) / 2;
  std::nth_element(v.begin(), v.begin() + (ptrdiff_t)k, v.end());
  return v[k];
}

// Uniform (scale, zero) of one cell's values (methods.md#grid): min/max range holding 0,
// optional MSE shrink.
static void fit_uniform(const std::vector<float>& v, int maxq, const GridSpec& sp, float* scale, float* zero) {
  float xmin = 0.f, xmax = 0.f;  // range always contains 0
  for (float x : v) {
    xmin = std::min(xmin, x);
    xmax = std::max(xmax, x);
  }
  grid_params_from_range(xmin, xmax, maxq, sp.sym, scale, zero, sp.mapping);
  if (!sp.mse) return;
  // Shrink search: keep the p minimizing Σ|Q(x) − x|^norm (ties keep the larger range).
  const float zero0 = *zero;
  double best = INFINITY;
  const int steps = (int)(sp.maxshrink * (float)sp.grid_points);
  for (int i = 0; i < steps; ++i) {
    const float p = 1.f - (float)i / (float)sp.grid_points;
    float s1, z1;
    grid_params_from_range(p * xmin, p * xmax, maxq, sp.sym, &s1, &z1, sp.mapping);
    if (sp.sym) z1 = zero0;
    double err = 0;
    for (float x : v) {
      const float q = uniform_code(x, s1, z1, (float)maxq);
      err += std::pow((double)std::fabs(uniform_value(q, s1, z1) - x), (double)sp.norm);
    }
    if (err < best) {
      best = err;
      *scale = s1;
      *zero = z1;
    }
  }
}

static float round_scale_f16(float s, int maxq, bool sym);

// Importance-weighted (scale, zero) search of one cell (methods.md#grid-importance): from the
// mapping's min/max params, candidate grids — scales s0·n/(n + i/10), i = −9 … 9 (n = (maxq+1)/2)
// for symmetric grids; ranges [a·xmin, b·xmax], a, b ∈ {1, 0.95, …, 0.7}, for asymmetric ones —
// each gives codes; for those codes the weighted least-squares scale (asym: scale and offset, the
// zero then rounded and the scale refitted) is computed, rounded to fp16 when the spec says so,
// and scored by E = Σ w·(x − Q(x))² with the codes recomputed at it (what RTN on the grid gives).
// The min/max grid is a candidate too, so the search never returns a larger E than it.
static void fit_uniform_weighted(const std::vector<float>& v, const std::vector<float>& w, int maxq, const GridSpec& sp,
                                 float* scale, float* zero) {
  float xmin = 0.f, xmax = 0.f;
  for (float x : v) {
    xmin = std::min(xmin, x);
    xmax = std::max(xmax, x);
  }
  grid_params_from_range(xmin, xmax, maxq, sp.sym, scale, zero, sp.mapping);
  auto err = [&](float s, float z) {
    double e = 0;
    for (size_t j = 0; j < v.size(); ++j) {
      const double d = (double)uniform_value(uniform_code(v[j], s, z, (float)maxq), s, z) - (double)v[j];
      e += (double)w[j] * d * d;
    }
    return e;
  };
  // The weighted LS scale for the codes at (s, z), zero kept: Σ w x (q − z) / Σ w (q − z)².
  auto ls_scale = [&](float s, float z, float* out) {
    double num = 0, den = 0;
    for (size_t j = 0; j < v.size(); ++j) {
      const double t = (double)uniform_code(v[j], s, z, (float)maxq) - (double)z;
      num += (double)w[j] * (double)v[j] * t;
      den += (double)w[j] * t * t;
    }
    if (!(den > 0) || num == 0) return false;
    *out = (float)(num / den);
    return std::isfinite(*out);
  };
  float bs = sp.f16_scales ? round_scale_f16(*scale, maxq, sp.sym) : *scale, bz = *zero;
  double best = err(bs, bz);
  auto consider = [&](float s, float z) {
    if (s == 0.f || !std::isfinite(s)) return;
    if (sp.f16_scales && !grid_scale_f16(s, maxq, sp.sym, &s)) return;  // a candidate fp16 cannot hold
    const double e = err(s, z);
    if (e < best) best = e, bs = s, bz = z;
  };
  if (sp.sym) {
    const float n = (float)(maxq + 1) / 2.f;
    for (int i = -9; i <= 9; ++i) {
      float s1;
      if (ls_scale(*scale * n / (n + 0.1f * (float)i), *zero, &s1)) consider(s1, *zero);
    }
  } else {
    for (int a = 0; a <= 6; ++a)
      for (int b = 0; b <= 6; ++b) {
        float sc, zc;
        grid_params_from_range((1.f - 0.05f * (float)a) * xmin, (1.f - 0.05f * (float)b) * xmax, maxq, false, &sc, &zc);
        consider(sc, zc);
        // LS of value = s·q + m over (s, m) for these codes; then z = round(−m/s) and s refitted.
        double sw = 0, sq = 0, sqq = 0, sx = 0, sqx = 0;
        for (size_t j = 0; j < v.size(); ++j) {
          const double q = (double)uniform_code(v[j], sc, zc, (float)maxq), x = v[j], ww = w[j];
          sw += ww, sq += ww * q, sqq += ww * q * q, sx += ww * x, sqx += ww * q * x;
        }
        const double det = sw * sqq - sq * sq;
        float z1 = zc;
        if (det > 0) {
          const double s = (sw * sqx - sq * sx) / det, m = (sx - s * sq) / sw;
          if (s > 0 && std::isfinite(s) && std::isfinite(m)) z1 = (float)std::clamp(std::nearbyint(-m / s), 0.0, (double)maxq);
        }
        float s1;
        if (ls_scale(sc, z1, &s1) && s1 > 0.f) consider(s1, z1);
      }
  }
  *scale = bs;
  *zero = bz;
}

// Companded (b, μ) of one cell (methods.md#compand): median m, RMS s around it; optional search of
// the scale multiplier, then of the location bias, each over {−2, −1.875, …, 2} by squared error.
static void fit_compand(std::vector<float>& v, int bits, const GridSpec& sp, float* b_out, float* mu_out) {
  std::vector<float> tmp = v;
  const float m = median_of(tmp);
  double ss = 0;
  for (float x : v) ss += ((double)x - m) * ((double)x - m);
  const double s = std::sqrt(ss / (double)v.size());
  auto params = [&](double mult, double bias, float* b, float* mu) {
    const double sc = s * std::exp2(mult);
    *b = (float)(3.0 / std::sqrt(2.0) * sc);
    *mu = (float)(m + bias * sc);
  };
  auto sq_err = [&](float b, float mu) {
    double e = 0;
    for (float x : v) {
      const double d = (double)x - compand_level(compand_code(x, mu, b, bits), mu, b, bits);
      e += d * d;
    }
    return e;
  };
  double mult = sp.compand_mult, bias = sp.compand_bias;
  if (sp.compand_search && s > 0) {
    for (int pass = 0; pass < 2; ++pass) {  // pass 0: mult (bias fixed), pass 1: bias (mult fixed)
      double best = INFINITY, arg = pass == 0 ? mult : bias;
      for (int i = 0; i <= 32; ++i) {
        const double t = -2.0 + 0.125 * i;
        float b, mu;
        params(pass == 0 ? t : mult, pass == 0 ? bias : t, &b, &mu);
        const double e = sq_err(b, mu);
        if (e < best) {
          best = e;
          arg = t;
        }
      }
      (pass == 0 ? mult : bias) = arg;
    }
  }
  params(mult, bias, b_out, mu_out);
}

// Rounds a fitted uniform scale for f16_scales (see GridSpec): to fp16, and for asymmetric grids
// to 11 − ⌈log₂(maxq + 1)⌉ significant bits so that scale·zero (zero ≤ maxq) is fp16-exact —
// up to 5 bits (the Q4_1 and Q5_1 cases: 7 and 6 significant bits); wider asymmetric grids would
// lose too much scale precision.
bool grid_scale_f16(float s, int maxq, bool sym, float* out) {
  float r = f16_to_f32(f32_to_f16(s));
  if (!sym && maxq <= 31) {  // Q4_1's / Q5_1's m = −scale·zero must be fp16 too
    int e;
    const double m = std::frexp((double)r, &e);
    const int bits = std::max(1, 11 - (int)std::ceil(std::log2((double)maxq + 1)));
    r = f16_to_f32(f32_to_f16((float)std::ldexp(std::nearbyint(std::ldexp(m, bits)), e - bits)));
  }
  *out = r;
  // A llamacpp-mapped symmetric grid may have a negative scale (the signed extreme on code 0).
  return (sym ? r != 0.f : r > 0.f) && std::isfinite(r);
}

static float round_scale_f16(float s, int maxq, bool sym) {
  float r;
  if (!grid_scale_f16(s, maxq, sym, &r)) fail("grid: scale ", s, " is not representable in fp16 (f16_scales)");
  return r;
}

static void fit_cell(std::vector<float>& v, const std::vector<float>& w, int bits, const GridSpec& sp, float* scale, float* zero) {
  if (v.empty()) return;  // a row group with no rows: params unused
  if (bits == 0) {        // pruned: every weight becomes the median
    *scale = 0.f;
    *zero = median_of(v);
    return;
  }
  if (sp.kind == GridKind::Compand) {
    fit_compand(v, bits, sp, scale, zero);
  } else if (sp.importance != GridImportance::None) {
    fit_uniform_weighted(v, w, (1 << bits) - 1, sp, scale, zero);  // fp16 rounding inside
  } else {
    fit_uniform(v, (1 << bits) - 1, sp, scale, zero);
    if (sp.f16_scales) *scale = round_scale_f16(*scale, (1 << bits) - 1, sp.sym);
  }
}

void grid_fit_group(Grid& grid, int64_t g, const Tensor& block, const float* importance) {
  if (block.dim() != 2 || block.size(0) != grid.rows)
    fail("grid: group block ", shape_str(block.shape()), " does not have ", grid.rows, " rows");
  if (g < 0 || g >= (grid.cols + grid.fit_cols() - 1) / grid.fit_cols()) fail("grid: group ", g + 1, " out of range (", grid.ngroups, " groups, numbered from 1)");
  const auto B = block.cmat();
  for (int64_t r = 0; r < grid.rows; ++r)
    for (int64_t c = 0; c < B.cols(); ++c)
      if (!std::isfinite(B(r, c))) fail("grid: non-finite weight at row ", r + 1, ", column ", c + 1, " of group ", g + 1, " (1-based; the column counted within the group)");
  // One cell per (row group, g): a row's values in column order, rows of a row group pooled.
  const GridImportance imp = grid.spec.importance;
  if (imp != GridImportance::None) {
    if (!importance) fail("grid: importance '", grid_importance_name(imp), "' needs the columns' importances (diag Σ); this caller has none");
    for (int64_t c = 0; c < B.cols(); ++c)
      if (!(importance[c] >= 0.f) || !std::isfinite(importance[c]))
        fail("grid: importance of column ", c + 1, " of group ", g + 1, " is ", importance[c], " (1-based; must be finite and >= 0)");
  }
  if (grid.spec.kind == GridKind::KQuant) {  // unit g = super-block g (methods.md#kquant-grids)
    const KQuantLayout& L = kquant_layout(grid.spec.ktype);
    if (g >= grid.cols / kKQuantSuper || B.cols() != kKQuantSuper)
      fail("grid: ", L.name, " super-block ", g + 1, " needs ", kKQuantSuper, " columns, got ", B.cols());
    std::vector<float> x(kKQuantSuper), w(kKQuantSuper);
    std::vector<int> sc((size_t)L.nsub()), mn((size_t)L.nsub());
    for (int64_t r = 0; r < grid.rows; ++r) {
      for (int64_t c = 0; c < kKQuantSuper; ++c) x[c] = B(r, c), w[c] = imp != GridImportance::None ? importance[c] : 0.f;
      float d, dmin;
      kquant_fit_superblock(L, x.data(), imp != GridImportance::None ? w.data() : nullptr, &d, &dmin, sc.data(), mn.data());
      kquant_set_superblock(grid, r, g, d, dmin, sc.data(), mn.data());
    }
    return;
  }
  const int64_t nrg = grid.nrowgroups();
  std::vector<std::vector<float>> cells((size_t)nrg), weights((size_t)nrg);
  for (int64_t r = 0; r < grid.rows; ++r) {
    std::vector<float>& v = cells[(size_t)grid.rg(r)];
    for (int64_t c = 0; c < B.cols(); ++c) v.push_back(B(r, c));
    if (imp != GridImportance::None)
      for (int64_t c = 0; c < B.cols(); ++c) weights[(size_t)grid.rg(r)].push_back(importance[c]);
  }
  if (imp == GridImportance::DiagX)  // × √(σ² + x²), σ² the cell's mean square (llama.cpp: the row's)
    for (int64_t k = 0; k < nrg; ++k) {
      const std::vector<float>& v = cells[(size_t)k];
      double ss = 0;
      for (float x : v) ss += (double)x * x;
      const double s2 = v.empty() ? 0.0 : ss / (double)v.size();
      for (size_t j = 0; j < v.size(); ++j) weights[(size_t)k][j] *= (float)std::sqrt(s2 + (double)v[j] * v[j]);
    }
  for (int64_t k = 0; k < nrg; ++k) {
    const size_t p = (size_t)(k * grid.ngroups + g);
    const int bits = grid.spec.group_bits.empty() ? grid.spec.bits : grid.spec.group_bits[p];
    fit_cell(cells[(size_t)k], weights[(size_t)k], bits, grid.spec, &grid.scale[p], &grid.zero[p]);
  }
}

Grid grid_fit(const Tensor& W, const GridSpec& spec, const float* importance) {
  if (W.dim() != 2) fail("grid: expected a 2-d weight, got ", shape_str(W.shape()));
  Grid g = grid_new(spec, W.size(0), W.size(1));
  const int64_t G = g.fit_cols();
  for (int64_t k = 0; k * G < g.cols; ++k) {
    const int64_t c0 = k * G;
    grid_fit_group(g, k, W.cols(c0, std::min(G, g.cols - c0)), importance ? importance + c0 : nullptr);
  }
  return g;
}

void grid_quantize_col(const Grid& grid, int64_t col, const float* x, int64_t xs, float* out, int64_t os) {
  const int64_t g = grid.g_idx[col];
  for (int64_t r = 0; r < grid.rows; ++r) out[r * os] = grid.quantize(x[r * xs], r, g);
}

Tensor QuantizedLinear::dequantize() const {
  if (!has_transforms()) return dequantize_basis();
  Tensor W = dequantize_basis();
  if (!input.none()) W = transform_apply_input(input, W);
  if (!output.none()) W = transform_apply_output(output, W);
  return W;
}

Tensor QuantizedLinear::dequantize_basis() const {
  Tensor W = Tensor::empty({grid.rows, grid.cols});
  const uint8_t* c = codes.data<uint8_t>();
  float* w = W.f32();
  for (int64_t r = 0; r < grid.rows; ++r)
    for (int64_t j = 0; j < grid.cols; ++j) w[r * grid.cols + j] = grid.value(c[r * grid.cols + j], r, grid.g_idx[j]);
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

namespace qf {

Grid grid_from_params(const GridSpec& spec, int64_t rows, int64_t cols, std::vector<float> scale, std::vector<float> zero,
                      std::vector<int32_t> g_idx) {
  if (spec.kind == GridKind::KQuant)
    fail("grid_from: K-quant grids hold integer sub-block scales and mins with fp16 super-block scales; fit them with "
         "qf.fit_grid (or qf.rtn) instead");
  Grid g = grid_new(spec, rows, cols);
  const size_t np = (size_t)(g.nrowgroups() * g.ngroups);
  if (scale.size() != np || zero.size() != np)
    fail("grid_from: scales and zeros must hold ", g.nrowgroups(), " row groups × ", g.ngroups, " groups = ", np,
         " values each, got ", scale.size(), " and ", zero.size());
  if (!g_idx.empty()) {
    if ((int64_t)g_idx.size() != cols) fail("grid_from: g_idx has ", g_idx.size(), " entries, the weight has ", cols, " columns");
    for (int64_t c = 0; c < cols; ++c)
      if (g_idx[c] < 0 || g_idx[c] >= g.ngroups)
        fail("grid_from: g_idx of column ", c + 1, " is ", g_idx[c] + 1, ", outside 1..", g.ngroups);
    g.g_idx = std::move(g_idx);
  }
  for (int64_t rg = 0; rg < g.nrowgroups(); ++rg)
    for (int64_t k = 0; k < g.ngroups; ++k) {
      const size_t p = (size_t)(rg * g.ngroups + k);
      const float s = scale[p], z = zero[p];
      const int bits = spec.group_bits.empty() ? spec.bits : spec.group_bits[p], maxq = (1 << bits) - 1;
      auto where = [&] { return "row group " + std::to_string(rg + 1) + ", group " + std::to_string(k + 1); };
      if (!std::isfinite(z)) fail("grid_from: zero at ", where(), " is not finite (", z, ")");
      if (bits == 0) continue;  // pruned: zero holds the group's value
      if (!std::isfinite(s) || s == 0.f) fail("grid_from: scale at ", where(), " is ", s, " (must be finite and nonzero)");
      if (spec.kind == GridKind::Compand) {
        if (s < 0.f) fail("grid_from: compand scale at ", where(), " is ", s, " (the Laplace scale must be > 0)");
        continue;
      }
      if (s < 0.f && !(spec.sym && spec.mapping == GridMapping::Llamacpp))
        fail("grid_from: scale at ", where(), " is negative (", s, "); only the llamacpp mapping stores negative scales");
      if (!spec.float_zero && (z != std::nearbyint(z) || z < 0.f || z > (float)maxq))
        fail("grid_from: zero at ", where(), " is ", z, "; a ", bits, "-bit grid needs an integer in 0..", maxq,
             " (qf.grid{..., float_zero = true} for decoupleQ's free offsets)");
      if (spec.f16_scales) {
        float h = 0.f;
        if (!grid_scale_f16(s, maxq, spec.sym, &h) || h != s)
          fail("grid_from: scale at ", where(), " is ", s, ", not what f16_scales stores (", h,
               "): round it first, or drop f16_scales from the spec");
      }
    }
  g.scale = std::move(scale);
  g.zero = std::move(zero);
  return g;
}

QuantizedLinear qlinear_from_codes(const Grid& grid, const Tensor& codes, SparseEntries outliers) {
  if (!codes.defined() || codes.dim() != 2 || codes.size(0) != grid.rows || codes.size(1) != grid.cols)
    fail("qlinear: codes ", codes.defined() ? shape_str(codes.shape()) : std::string("(undefined)"),
         " do not match the grid's [", grid.rows, ", ", grid.cols, "]");
  const std::vector<float> v = codes.to_vector();
  QuantizedLinear q;
  q.grid = grid;
  q.codes = Tensor::empty({grid.rows, grid.cols}, DType::U8);
  uint8_t* out = q.codes.data<uint8_t>();
  for (int64_t r = 0; r < grid.rows; ++r)
    for (int64_t c = 0; c < grid.cols; ++c) {
      const float x = v[(size_t)(r * grid.cols + c)];
      const int64_t g = grid.g_idx[(size_t)c];
      const int maxq = grid.spec.kind == GridKind::KQuant ? (1 << grid.spec.bits) - 1 : grid.maxq_at(r, g);
      if (!(x == std::nearbyint(x) && x >= 0.f && x <= (float)maxq))
        fail("qlinear: code at row ", r + 1, ", column ", c + 1, " is ", x, "; its group holds integers 0..", maxq);
      out[r * grid.cols + c] = (uint8_t)x;
    }
  for (int64_t k = 0; k < outliers.nnz(); ++k) {
    if (outliers.row[k] < 0 || outliers.row[k] >= grid.rows || outliers.col[k] < 0 || outliers.col[k] >= grid.cols)
      fail("qlinear: outlier ", k + 1, " at (", outliers.row[k] + 1, ", ", outliers.col[k] + 1, ") is outside the weight");
    if (!std::isfinite(outliers.val[k])) fail("qlinear: outlier ", k + 1, " is not finite");
  }
  q.outliers = std::move(outliers);
  return q;
}

}  // namespace qf
