// qforge — llama.cpp's K-quant super-block grids as qforge grids (docs/methods.md#kquant-grids).
//
// A K-quant row is cut into super-blocks of 256 columns, each into sub-blocks of 16 or 32. A
// super-block stores fp16 d (and dmin); a sub-block k small integers sc_k (and mn_k); a weight an
// unsigned code q. The value (computed as ggml computes it, two separately rounded f32 products
// that are exact here, then one subtraction):
//   Q2_K, Q4_K, Q5_K   x = (d·sc_k)·q − dmin·mn_k
//   Q3_K, Q6_K         x = (d·sc_k)·(q − zero),  zero 4 / 32, sc_k signed
// As a qforge Grid (GridKind::KQuant): groups are the sub-blocks; scale = d·sc_k; zero = dmin·mn_k
// (the subtracted min: value = scale·code − zero) or the integer zero; the stored integers live in
// Grid::kq_*. Every solver that rounds through Grid::code/value works on such a grid unchanged; a
// fit covers a whole super-block (grid_fit_group's unit g is super-block g).
#pragma once
#include <cstdint>
#include <string>

namespace qf {

enum class KQuantType : uint8_t { None, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K };

constexpr int kKQuantSuper = 256;  // columns per super-block (QK_K)

struct KQuantLayout {
  KQuantType type;
  const char* name;   // the GGML type name, "Q4_K"
  int bits;           // code bits
  int sub;            // columns per sub-block
  int sc_lo, sc_hi;   // sub-block scale integers
  int mn_hi;          // sub-block mins 0..mn_hi; 0 = no mins (value = scale·(code − zero))
  int zero;           // the integer zero of the types without mins
  double bpw;         // bits per weight of the block type (its bytes × 8 / 256)
  bool has_min() const { return mn_hi > 0; }
  int nsub() const { return kKQuantSuper / sub; }
};

const KQuantLayout& kquant_layout(KQuantType t);  // t != None
// "Q2_K".."Q6_K" (case-insensitive); false otherwise.
bool kquant_from_name(const std::string& name, KQuantType* t);

// Fits one super-block of one row: x[256] the weights, w[256] their importances or nullptr.
// w == nullptr reproduces llama.cpp's reference quantizer (quantize_row_q*_K_ref, no imatrix):
// per sub-block the weighted least-squares scale (and min) search, then the sub-block scales
// (and mins) rounded onto d·sc with d = max / sc_hi. With importances, the same search under
// those weights, then a search over (d, dmin) around that mapping and over each sub-block's
// (sc, mn) ±1, each candidate scored by Σ w·(x − Q(x))² with the codes recomputed; the
// unweighted reference result is a candidate too, so the weighted error never exceeds it.
// Outputs d, dmin (fp16-exact; dmin = 0 for types without mins), sc[nsub], mn[nsub].
void kquant_fit_superblock(const KQuantLayout& L, const float* x, const float* w, float* d, float* dmin, int* sc, int* mn);

// The grid's per-weight rounding and value for one sub-block with scale s = d·sc and
// z = dmin·mn (min types) or the integer zero.
inline float kquant_value(const KQuantLayout& L, int code, float s, float z) {
  return L.has_min() ? s * (float)code - z : s * (float)(code - (int)z);
}
int kquant_code(const KQuantLayout& L, float x, float s, float z);

}  // namespace qf
