// qforge — uniform affine quantization grids and the quantized linear (docs/methods.md#grid).
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
//
// Allocations (methods.md#allocated-grids): rows may be pooled into row groups (CVXQ's row
// clusters: params are shared by all rows of a row group), and bits may differ per
// (row group, column group). A 0-bit group is pruned: every weight becomes the group's median,
// stored in `zero`.
//
// Companded grids (methods.md#compand, kind = compand): per (row group, group) a Laplace CDF F with
// location μ = median + bias·s·2^mult and scale b = (3/√2)·s·2^mult (s = RMS around the median);
// the 2^B levels are F⁻¹((k + ½)/2^B). code() returns the *nearest* level (for the CD step's exact
// coordinate minimiser on a non-uniform grid); CVXQ assigns the F-cell instead, which differs only
// near cell edges and is never closer.
#pragma once
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "quant/kquant.h"

namespace qf {

// Uniform: scale·(code − zero); Compand: Laplace quantiles; KQuant: llama.cpp's K-quant super-block
// layouts (quant/kquant.h, methods.md#kquant-grids).
enum class GridKind : uint8_t { Uniform, Compand, KQuant };

// How a group's range becomes (scale, zero) on a symmetric uniform grid (methods.md#grid-mappings):
//   Gptq      the GPTQ reference: scale = 2·max|x| / maxq, zero = (maxq + 1)/2 (the largest positive
//             weight is clipped to 7/8 of its value at 4 bits; the step is max|x| / 7.5),
//   Llamacpp  llama.cpp's reference block mappings: below 8 bits the signed extreme m (the value of
//             largest magnitude) lands on code 0: scale = m / −2^(bits−1), zero = 2^(bits−1) (Q4_0,
//             Q5_0: the step is max|x| / 8, the scale is negative when m > 0); at 8 bits Q8_0's
//             scale = max|x| / 127, zero = 128.
enum class GridMapping : uint8_t { Gptq, Llamacpp };

// Column importances in the fit (methods.md#grid-importance): None fits from the values alone;
// Diag weighs each value's squared error by its column's Σ_jj (what llama.cpp's imatrix holds);
// DiagX by Σ_jj·√(σ² + x²) (llama.cpp's weighting, σ² the cell's mean x²). Both search the
// scale (and zero) by weighted least squares; the caller must supply the importances.
enum class GridImportance : uint8_t { None, Diag, DiagX };

struct GridSpec {
  int bits = 4;
  bool sym = false;
  GridMapping mapping = GridMapping::Gptq;  // symmetric grids only (validate)
  int64_t group = -1;  // columns per group; -1 = per channel (whole row)
  bool mse = false;
  GridImportance importance = GridImportance::None;  // uniform grids; not with mse (validate)
  float maxshrink = 0.8f;
  int grid_points = 100;
  float norm = 2.4f;
  // Scales rounded to fp16 after fitting (uniform grids), and for asymmetric grids of ≤ 5 bits to
  // fewer mantissa bits so that scale·zero is fp16-exact too: such grids map exactly onto GGUF
  // Q8_0/Q4_0/Q4_1/Q5_0/Q5_1 blocks and lose nothing in GPTQ's fp16 scales.
  bool f16_scales = false;
  GridKind kind = GridKind::Uniform;
  // KQuant grids: the layout (bits, group = its sub-block, sym = no mins and f16_scales follow from
  // it: grid_spec_kquant fills them).
  KQuantType ktype = KQuantType::None;
  float compand_mult = 0.f;      // log2 multiplier of the Laplace scale
  float compand_bias = 0.f;      // location shift, in units of s·2^mult
  bool compand_search = false;   // per group: mult ∈ {−2, −1.875, …, 2}, then bias over the same grid (MSE)
  // decoupleQ's scale/offset form Ŵ = s·w_int + z (methods.md#decoupleq-form): the zero may be any
  // float (value = scale·(code − zero), zero = −z/s), so the nearest code is round(x/scale + zero).
  // Exports to GGUF and GPTQ refuse such grids; the qforge format keeps them exactly.
  bool float_zero = false;
  // Allocation (optional). row_group[r] = row group of row r (0-based; empty: each row its own);
  // group_bits[rg·ngroups + g] overrides `bits` (empty: `bits` everywhere; 0 = pruned to the median).
  std::vector<int32_t> row_group;
  int64_t nrowgroups = 0;
  std::vector<uint8_t> group_bits;
  void validate() const;  // bits 1..8 (0..8 in group_bits), group -1 or >= 1, sane mse/compand settings
  void validate_layout(int64_t rows, int64_t ngroups) const;  // allocation sizes against a weight
  bool mixed_bits() const { return !group_bits.empty(); }
  double mean_bits(int64_t rows, int64_t cols) const;  // average bits per weight (codes only)
  std::string str() const;  // "4-bit asym g128 mse", "compand 2.51-bit mixed g1 rowgroups 9"
};

// Laplace compander pieces (f64 inside, f32 out).
float compand_level(int k, float mu, float b, int bits);   // F⁻¹((k + ½)/2^bits)
int compand_code(float x, float mu, float b, int bits);    // index of the nearest level (ties: lower)

// The uniform grid's rounding rule (docs/methods.md#grid), stated once: the code of x on (scale s,
// zero z) is round(x/s) + z clamped to [0, maxq] (round half to even); with a float zero
// (decoupleQ's free offsets, GridSpec::float_zero) round(x/s + z). Returned as a float (an
// integer value) so hot loops can form the value s·(code − z) without a conversion.
inline float uniform_code(float x, float s, float z, float maxq, bool float_zero = false) {
  const float q = float_zero ? std::nearbyint(x / s + z) : std::nearbyint(x / s) + z;
  return q < 0.f ? 0.f : q > maxq ? maxq : q;
}
inline float uniform_value(float code, float s, float z) { return s * (code - z); }

struct Grid {
  GridSpec spec;
  int64_t rows = 0, cols = 0, ngroups = 0;
  // [row groups × ngroups], row-major. Uniform: scale and (integer-valued) zero; compand: Laplace
  // scale b and location μ; a 0-bit group: zero = its single value.
  std::vector<float> scale, zero;
  std::vector<int32_t> g_idx;      // [cols]: group of each column
  // KQuant: the stored integers behind scale/zero (scale = d·sc, zero = dmin·mn or the type's
  // zero), per row: kq_d, kq_dmin [rows × cols/256], kq_sc, kq_mn [rows × ngroups].
  std::vector<float> kq_d, kq_dmin;
  std::vector<int16_t> kq_sc, kq_mn;
  int64_t group_size() const { return spec.group > 0 ? spec.group : cols; }
  // Columns fitted together (grid_fit_group's unit): a K-quant super-block, else a group.
  int64_t fit_cols() const { return spec.kind == GridKind::KQuant ? kKQuantSuper : group_size(); }
  int64_t nrowgroups() const { return spec.row_group.empty() ? rows : spec.nrowgroups; }
  int64_t rg(int64_t r) const { return spec.row_group.empty() ? r : spec.row_group[(size_t)r]; }
  size_t pidx(int64_t r, int64_t g) const { return (size_t)(rg(r) * ngroups + g); }
  int bits_at(int64_t r, int64_t g) const { return spec.group_bits.empty() ? spec.bits : spec.group_bits[pidx(r, g)]; }
  int maxq_at(int64_t r, int64_t g) const { return (1 << bits_at(r, g)) - 1; }
  int maxq() const { return (1 << spec.bits) - 1; }  // the uniform-bits maximum code
  bool fast_uniform() const { return spec.kind == GridKind::Uniform && spec.group_bits.empty() && !spec.float_zero; }
  float s(int64_t r, int64_t g) const { return scale[pidx(r, g)]; }
  float z(int64_t r, int64_t g) const { return zero[pidx(r, g)]; }
  // Code of the nearest representable value of x in (row r, group g), and a code's value.
  int code(float x, int64_t r, int64_t g) const {
    const size_t p = pidx(r, g);
    if (fast_uniform()) return (int)uniform_code(x, scale[p], zero[p], (float)maxq());
    const int b = bits_at(r, g);
    if (b == 0) return 0;
    if (spec.kind == GridKind::Compand) return compand_code(x, zero[p], scale[p], b);
    if (spec.kind == GridKind::KQuant) return kquant_code(kquant_layout(spec.ktype), x, scale[p], zero[p]);
    return (int)uniform_code(x, scale[p], zero[p], (float)((1 << b) - 1), spec.float_zero);
  }
  float value(int code, int64_t r, int64_t g) const {
    const size_t p = pidx(r, g);
    if (fast_uniform()) return uniform_value((float)code, scale[p], zero[p]);
    const int b = bits_at(r, g);
    if (b == 0) return zero[p];
    if (spec.kind == GridKind::Compand) return compand_level(code, zero[p], scale[p], b);
    if (spec.kind == GridKind::KQuant) return kquant_value(kquant_layout(spec.ktype), code, scale[p], zero[p]);
    return uniform_value((float)code, scale[p], zero[p]);
  }
  float quantize(float x, int64_t r, int64_t g) const { return value(code(x, r, g), r, g); }
  // Unbiased stochastic rounding (docs/methods.md#stochastic-rounding): one of the two grid values
  // around x — the one beyond the nearest with probability (x − v₀)/(v₁ − v₀) — so E[value] = x
  // inside the grid's range; beyond the range, the nearest (clamped) code. u: uniform in [0, 1).
  int stochastic_code(float x, int64_t r, int64_t g, double u) const {
    const int q0 = code(x, r, g);
    const float v0 = value(q0, r, g);
    if (x == v0) return q0;
    const int mq = maxq_at(r, g);
    for (int d = -1; d <= 1; d += 2) {  // the neighbour on x's side of v0 (grids may decrease in the code)
      const int q1 = q0 + d;
      if (q1 < 0 || q1 > mq) continue;
      const float v1 = value(q1, r, g);
      if ((double)(v1 - v0) * (double)(x - v0) <= 0) continue;
      const double p = (double)(x - v0) / (double)(v1 - v0);
      return p >= 1 ? q1 : u < p ? q1 : q0;
    }
    return q0;
  }
};

// (scale, zero) of one (row, group) from its range [xmin, xmax] (the caller makes it hold 0).
// maxq = 0 (a 0-bit group) is the caller's business: such groups hold their median in zero.
void grid_params_from_range(float xmin, float xmax, int maxq, bool sym, float* scale, float* zero,
                            GridMapping mapping = GridMapping::Gptq);
// "gptq" | "llamacpp"; from_name returns false for an unknown name.
const char* grid_mapping_name(GridMapping m);
bool grid_mapping_from_name(const std::string& name, GridMapping* m);
// The scale f16_scales stores for s (methods.md#grid): fp16, and for asymmetric grids of ≤ 5 bits
// rounded further so that scale·zero is fp16-exact; false when fp16 cannot hold it (0, inf, or a
// non-positive asymmetric scale).
bool grid_scale_f16(float s, int maxq, bool sym, float* out);
// A K-quant grid spec: bits, group (the sub-block), sym (no mins) and f16_scales of the layout.
GridSpec grid_spec_kquant(KQuantType t, GridImportance importance = GridImportance::None);
// Sets super-block sb of row r of a K-quant grid from its stored integers (scale/zero follow).
void kquant_set_superblock(Grid& g, int64_t r, int64_t sb, float d, float dmin, const int* sc, const int* mn);
// An empty grid for W's shape (params unset; groups contiguous).
Grid grid_new(const GridSpec& spec, int64_t rows, int64_t cols);
// Fits group g's (scale, zero) for every row from block = the group's columns of some matrix;
// for a K-quant grid unit g is super-block g (Grid::fit_cols() = 256 columns, several groups).
// importance: the block's columns' importances (block.size(1) values, e.g. diag Σ), required
// when spec.importance is set, unused otherwise (solvers pass diag Σ always).
void grid_fit_group(Grid& grid, int64_t g, const Tensor& block, const float* importance = nullptr);
// Fits every group from W (2-d f32).
Grid grid_fit(const Tensor& W, const GridSpec& spec, const float* importance = nullptr);  // W.size(1) importances
// "none" | "diag" | "diag_x"; from_name returns false for an unknown name.
const char* grid_importance_name(GridImportance m);
bool grid_importance_from_name(const std::string& name, GridImportance* m);
// Quantizes column `col` of every row: out[r] = Q_{r, g_idx[col]}(x[r]); x, out strided by stride.
void grid_quantize_col(const Grid& grid, int64_t col, const float* x, int64_t xs, float* out, int64_t os);

// Sparse full-precision additions (outliers) to a quantized weight.
struct SparseEntries {
  std::vector<int32_t> row, col;
  std::vector<float> val;
  int64_t nnz() const { return (int64_t)val.size(); }
};

// A linear map around the quantized weight (methods.md#transforms): a quantized linear with an
// input transform T and an output transform O computes y = O·(Ŵ·(T·x)), so its effective weight
// is O·Ŵ·T, where Ŵ = grid values + outliers is what the codes hold. Kinds:
//   Permutation  (T x)_c = x_perm[c]             (perm 0-based, a permutation of 0..n−1)
//   Diagonal     (T x)_c = d_c·x_c               (d finite and nonzero: AWQ-style scales)
//   Hadamard     T = R·diag(d), R the randomized Hadamard transform of size n drawn from `seed`
//                (core/linalg.h, random_hadamard): orthogonal, rebuilt from 8 bytes
//   Butterfly    T = R·diag(d), R QuIP's Kronecker random orthogonal transform drawn from `seed`
//                (core/linalg.h, random_butterfly; methods.md#quip)
//   Dense        T a given [n, n] matrix (a random orthogonal one, QuIP's U/V …)
// The seeded kinds (Hadamard, Butterfly) may carry a diagonal d applied first (`diag`, empty:
// none, i.e. d = 1): QuIP's input transform V·diag(1/s) (methods.md#quip).
// Storage counts what the qforge format keeps: 32 bits per permutation or diagonal entry,
// 64 bits for a seed (+ 32 per entry of a seeded kind's diagonal), 32·n² for a dense matrix.
enum class TransformKind : uint8_t { None, Permutation, Diagonal, Hadamard, Dense, Butterfly };
const char* transform_kind_name(TransformKind k);  // "none", "perm", "diag", "hadamard", "dense", "butterfly"
bool transform_kind_from_name(const std::string& name, TransformKind* k);
struct LinearTransform {
  TransformKind kind = TransformKind::None;
  int64_t n = 0;
  std::vector<int32_t> perm;
  std::vector<float> diag;  // Diagonal: d; Hadamard/Butterfly: the diagonal applied first (empty: none)
  uint64_t seed = 0;
  Tensor dense;  // f32 [n, n], contiguous
  bool none() const { return kind == TransformKind::None; }
  bool seeded() const { return kind == TransformKind::Hadamard || kind == TransformKind::Butterfly; }
  double storage_bits() const;
  // Checks the parameters (sizes, a true permutation, finite nonzero scales, a finite matrix);
  // errors begin with `what`.
  void validate(const std::string& what) const;
};
// W·T (input transform: on columns, W [rows, n]) and O·W (output transform: on rows, W [n, cols]).
Tensor transform_apply_input(const LinearTransform& t, const Tensor& W);
Tensor transform_apply_output(const LinearTransform& t, const Tensor& W);
// The other direction: W·T⁻¹ and O⁻¹·W (a dense transform by an LU solve; an error when singular).
// A solver given the problem W′ = O⁻¹·W·T⁻¹, Σ′ = T·Σ·Tᵀ, μ′ = T·μ returns Ŵ′ with O·Ŵ′·T ≈ W.
Tensor transform_apply_input_inverse(const LinearTransform& t, const Tensor& W);
Tensor transform_apply_output_inverse(const LinearTransform& t, const Tensor& W);
// T·Σ·Tᵀ for Σ [n, n] (made exactly symmetric), and T·x for x [n].
Tensor transform_gram(const LinearTransform& t, const Tensor& Sigma);
Tensor transform_vector(const LinearTransform& t, const Tensor& x);

// Integer codes + grid + optional outliers (+ optional transforms); dequantizes exactly to
// O·(scale·(code − zero) + outliers)·T.
struct QuantizedLinear {
  Grid grid;
  Tensor codes;  // u8 [rows, cols]
  SparseEntries outliers;
  LinearTransform input, output;  // none unless a method quantizes in a transformed basis
  bool has_transforms() const { return !input.none() || !output.none(); }
  Tensor dequantize() const;  // f32 [rows, cols]: the effective weight
  Tensor dequantize_basis() const;  // the grid values + outliers alone (the transformed basis)
};

// Codes of a weight already on the grid (or rounded onto it): What → QuantizedLinear.
QuantizedLinear quantize_to_grid(const Tensor& W, const Grid& grid);

// A grid from given parameters (a Lua solver's own scales and zeros, methods.md#grid): scale and
// zero are [row groups × ngroups] row-major, g_idx the 0-based group of every column (empty:
// contiguous groups). Every parameter is checked against what the grid can represent and what
// its spec promises, naming the 1-based (row group, group): uniform scales finite and nonzero
// (negative only with the llamacpp mapping, which stores them so), integer zeros in 0..maxq
// (any finite zero with float_zero), fp16-exact scales under f16_scales; compand scales > 0;
// 0-bit groups a finite value in zero. K-quant grids hold sub-block integers and are refused.
Grid grid_from_params(const GridSpec& spec, int64_t rows, int64_t cols, std::vector<float> scale, std::vector<float> zero,
                      std::vector<int32_t> g_idx = {});
// A QuantizedLinear from a grid and integer codes [rows, cols] (any dtype, integer values in
// 0..maxq of each weight's group; 0 for a 0-bit group) and optional outliers: the honest result
// of a solver that chose its own codes. Errors name the 1-based row and column.
QuantizedLinear qlinear_from_codes(const Grid& grid, const Tensor& codes, SparseEntries outliers = {});

}  // namespace qf
