#include "formats/quant_blocks.h"

#include <cmath>
#include <cstring>
#include <vector>

#include "core/error.h"
#include "core/half.h"
#include "formats/dtypes.h"

namespace qf {

static float rd_f16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return f16_to_f32(h);
}
static void wr_f16(uint8_t* p, float v) {
  const uint16_t h = f32_to_f16(v);
  std::memcpy(p, &h, 2);
}
static bool f16_exact(float v) { return f16_to_f32(f32_to_f16(v)) == v; }
static uint32_t rd_u32(const uint8_t* p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }

bool quant_block_info(const std::string& t, int64_t* be, int64_t* bb) {
  const DTypeTraits* d = dtype_by_name(t);
  if (!d || !d->is_block() || !d->to_f32) return false;
  if (be) *be = d->block_elems;
  if (bb) *bb = d->block_bytes;
  return true;
}

// ---- dequantize ---------------------------------------------------------------------------

static void deq_q8_0(const uint8_t* b, float* y) {
  const float d = rd_f16(b);
  for (int j = 0; j < 32; ++j) y[j] = (float)(int8_t)b[2 + j] * d;
}

static void deq_q4_0(const uint8_t* b, float* y) {
  const float d = rd_f16(b);
  for (int j = 0; j < 16; ++j) {
    y[j] = (float)((b[2 + j] & 0xF) - 8) * d;
    y[j + 16] = (float)((b[2 + j] >> 4) - 8) * d;
  }
}

static void deq_q4_1(const uint8_t* b, float* y) {
  const float d = rd_f16(b), m = rd_f16(b + 2);
  for (int j = 0; j < 16; ++j) {
    y[j] = (float)(b[4 + j] & 0xF) * d + m;
    y[j + 16] = (float)(b[4 + j] >> 4) * d + m;
  }
}

// Q5_0 / Q5_1: 5-bit q of element j = low nibble as Q4_0 (byte j%16, high nibble for j >= 16),
// 5th bit = bit j of the little-endian u32 qh.
static int q5_code(uint32_t qh, const uint8_t* qs, int j) {
  return ((qs[j % 16] >> (j < 16 ? 0 : 4)) & 0xF) | (int)((qh >> j) & 1) << 4;
}

static void deq_q5_0(const uint8_t* b, float* y) {
  const float d = rd_f16(b);
  const uint32_t qh = rd_u32(b + 2);
  for (int j = 0; j < 32; ++j) y[j] = (float)(q5_code(qh, b + 6, j) - 16) * d;
}

static void deq_q5_1(const uint8_t* b, float* y) {
  const float d = rd_f16(b), m = rd_f16(b + 2);
  const uint32_t qh = rd_u32(b + 4);
  for (int j = 0; j < 32; ++j) y[j] = (float)q5_code(qh, b + 8, j) * d + m;
}

// The K types below compute x = (d·sc)·q − dmin·mn as ggml does. Every product of an fp16 by
// these small integers is exact in f32, so a compiler's fused multiply-add gives the same bits.

// Q2_K and Q3_K share the 2-bit plane order: element i = 128h + 32k + l (half h, quarter k,
// l < 32) is bits 2k..2k+1 of qs[32h + l], in sub-block 8h + 2k + l/16 of 16 elements.
static int k2_bits(const uint8_t* qs, int i) { return (qs[32 * (i / 128) + i % 32] >> (2 * (i % 128 / 32))) & 3; }
static int k2_sub(int i) { return 8 * (i / 128) + 2 * (i % 128 / 32) + i % 32 / 16; }

// Q2_K: scales[16] (low nibble scale, high nibble min per sub-block), qs[64], fp16 d, dmin.
static void deq_q2_k(const uint8_t* b, float* y) {
  const uint8_t* sc = b;
  const uint8_t* qs = b + 16;
  const float d = rd_f16(b + 80), dmin = rd_f16(b + 82);
  for (int i = 0; i < 256; ++i) {
    const uint8_t s = sc[k2_sub(i)];
    const float dl = d * (float)(s & 0xF), ml = dmin * (float)(s >> 4);
    y[i] = dl * (float)k2_bits(qs, i) - ml;
  }
}

// Q3_K sub-block k (0..15) scale, 6 bits: low 4 bits = nibble k/8 of byte k%8, high 2 bits =
// bits 2·(k/4) of byte 8 + k%4; stored with offset 32.
static int q3k_scale(const uint8_t* s, int k) {
  return (((s[k % 8] >> (4 * (k / 8))) & 0xF) | (((s[8 + k % 4] >> (2 * (k / 4))) & 3) << 4)) - 32;
}

// Q3_K: hmask[32], qs[64], scales[12], fp16 d. Element i's high bit: bit 4h + k of hmask[l]
// (i = 128h + 32k + l); value = 2 low bits − 4 when that bit is clear, so −4..3.
static void deq_q3_k(const uint8_t* b, float* y) {
  const uint8_t* hm = b;
  const uint8_t* qs = b + 32;
  const uint8_t* sc = b + 96;
  const float d = rd_f16(b + 108);
  for (int i = 0; i < 256; ++i) {
    const int h = i / 128, k = i % 128 / 32, l = i % 32;
    const int v = k2_bits(qs, i) - ((hm[l] >> (4 * h + k)) & 1 ? 0 : 4);
    const float dl = d * (float)q3k_scale(sc, k2_sub(i));
    y[i] = dl * (float)v;
  }
}

// Sub-block k (0..7) of a Q4_K super-block: 6-bit scale and min from the 12 packed bytes.
// k < 4: low 6 bits of bytes k (scale) and k+4 (min). k >= 4: the nibbles of byte k+4 give
// the low 4 bits, the top 2 bits of bytes k−4 (scale) and k (min) the high 2 bits.
static void q4k_scale_min(const uint8_t* s, int k, int* sc, int* mn) {
  if (k < 4) {
    *sc = s[k] & 63;
    *mn = s[k + 4] & 63;
  } else {
    *sc = (s[k + 4] & 0xF) | ((s[k - 4] >> 6) << 4);
    *mn = (s[k + 4] >> 4) | ((s[k] >> 6) << 4);
  }
}

static void deq_q4_k(const uint8_t* b, float* y) {
  const float d = rd_f16(b), dmin = rd_f16(b + 2);
  const uint8_t* scales = b + 4;
  const uint8_t* qs = b + 16;
  // Four 64-element chunks; each uses 32 bytes: low nibbles = first 32, high = next 32.
  for (int c = 0; c < 4; ++c) {
    int sc0, mn0, sc1, mn1;
    q4k_scale_min(scales, 2 * c, &sc0, &mn0);
    q4k_scale_min(scales, 2 * c + 1, &sc1, &mn1);
    const float d0 = d * (float)sc0, m0 = dmin * (float)mn0;
    const float d1 = d * (float)sc1, m1 = dmin * (float)mn1;
    for (int l = 0; l < 32; ++l) y[64 * c + l] = d0 * (float)(qs[32 * c + l] & 0xF) - m0;
    for (int l = 0; l < 32; ++l) y[64 * c + 32 + l] = d1 * (float)(qs[32 * c + l] >> 4) - m1;
  }
}

// Q5_K: Q4_K's fields plus qh[32] before qs: element 64c + 32t + l has the nibble t of
// qs[32c + l] and its 5th bit at bit 2c + t of qh[l].
static void deq_q5_k(const uint8_t* b, float* y) {
  const float d = rd_f16(b), dmin = rd_f16(b + 2);
  const uint8_t* scales = b + 4;
  const uint8_t* qh = b + 16;
  const uint8_t* qs = b + 48;
  for (int c = 0; c < 4; ++c)
    for (int t = 0; t < 2; ++t) {
      int sc, mn;
      q4k_scale_min(scales, 2 * c + t, &sc, &mn);
      const float d1 = d * (float)sc, m1 = dmin * (float)mn;
      for (int l = 0; l < 32; ++l) {
        const int q = ((qs[32 * c + l] >> (4 * t)) & 0xF) | ((qh[l] >> (2 * c + t)) & 1) << 4;
        y[64 * c + 32 * t + l] = d1 * (float)q - m1;
      }
    }
}

static void deq_q6_k(const uint8_t* b, float* y) {
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const int8_t* sc = (const int8_t*)(b + 192);
  const float d = rd_f16(b + 208);
  // Two 128-element halves, each with 64 ql bytes, 32 qh bytes and 8 scales. Element
  // l + 32·k (k = 0..3) of a half: low 4 bits from ql[l] / ql[l+32] (low nibble for k = 0, 1,
  // high for k = 2, 3), high 2 bits from qh[l] at bit 2k; scale sc[l/16 + 2k].
  for (int h = 0; h < 2; ++h) {
    for (int l = 0; l < 32; ++l) {
      const int q0 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
      const int q1 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
      const int q2 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
      const int q3 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
      const int is = l / 16;
      y[l] = d * (float)sc[is + 0] * (float)q0;
      y[l + 32] = d * (float)sc[is + 2] * (float)q1;
      y[l + 64] = d * (float)sc[is + 4] * (float)q2;
      y[l + 96] = d * (float)sc[is + 6] * (float)q3;
    }
    y += 128;
    ql += 64;
    qh += 32;
    sc += 8;
  }
}

// IQ4_NL / IQ4_XS (docs/formats.md, "Non-linear 4-bit blocks"): each 4-bit code indexes a fixed
// table of 16 signed levels instead of being the level itself. Every value is fp16 d × (IQ4_XS: a
// 6-bit sub-block scale − 32, in −32..31) × a level (|·| ≤ 127): at most 11 + 5 + 7 = 23
// significant bits, so each product is exact in f32 and the order of the multiplications (or a
// fused multiply-add) cannot change a bit.
static const int8_t kIQ4Levels[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

// 16 bytes of codes for 32 elements: byte j holds element j (low nibble) and j + 16 (high), as Q4_0.
static void deq_iq4_codes(const uint8_t* qs, float d, float* y) {
  for (int j = 0; j < 16; ++j) {
    y[j] = d * (float)kIQ4Levels[qs[j] & 0xF];
    y[j + 16] = d * (float)kIQ4Levels[qs[j] >> 4];
  }
}

// IQ4_NL: fp16 d, u8 qs[16].
static void deq_iq4_nl(const uint8_t* b, float* y) { deq_iq4_codes(b + 2, rd_f16(b), y); }

// IQ4_XS: fp16 d, u16 scales_h (LE), u8 scales_l[4], u8 qs[128]; 8 sub-blocks of 32. Sub-block k's
// 6-bit scale: low 4 bits = nibble k%2 of scales_l[k/2], high 2 bits = bits 2k..2k+1 of scales_h;
// stored with offset 32. Sub-block k's codes are qs[16k..16k+16), laid out as one IQ4_NL block.
static void deq_iq4_xs(const uint8_t* b, float* y) {
  const float d = rd_f16(b);
  const unsigned sh = (unsigned)b[2] | (unsigned)b[3] << 8;
  const uint8_t* sl = b + 4;
  const uint8_t* qs = b + 8;
  for (int k = 0; k < 8; ++k) {
    const int ls = ((sl[k / 2] >> (4 * (k % 2))) & 0xF) | (int)((sh >> (2 * k)) & 3) << 4;
    deq_iq4_codes(qs + 16 * k, d * (float)(ls - 32), y + 32 * k);
  }
}

// Row functions of the type table: n / block_elems blocks.
template <void (*F)(const uint8_t*, float*), int64_t E, int64_t B>
static void deq_row(const uint8_t* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n / E; ++i) F(src + i * B, dst + i * E);
}
void dequantize_row_q8_0(const uint8_t* s, float* d, int64_t n) { deq_row<deq_q8_0, 32, 34>(s, d, n); }
void dequantize_row_q4_0(const uint8_t* s, float* d, int64_t n) { deq_row<deq_q4_0, 32, 18>(s, d, n); }
void dequantize_row_q4_1(const uint8_t* s, float* d, int64_t n) { deq_row<deq_q4_1, 32, 20>(s, d, n); }
void dequantize_row_q5_0(const uint8_t* s, float* d, int64_t n) { deq_row<deq_q5_0, 32, 22>(s, d, n); }
void dequantize_row_q5_1(const uint8_t* s, float* d, int64_t n) { deq_row<deq_q5_1, 32, 24>(s, d, n); }
void dequantize_row_q2_k(const uint8_t* s, float* d, int64_t n) { deq_row<deq_q2_k, 256, 84>(s, d, n); }
void dequantize_row_q3_k(const uint8_t* s, float* d, int64_t n) { deq_row<deq_q3_k, 256, 110>(s, d, n); }
void dequantize_row_q4_k(const uint8_t* s, float* d, int64_t n) { deq_row<deq_q4_k, 256, 144>(s, d, n); }
void dequantize_row_q5_k(const uint8_t* s, float* d, int64_t n) { deq_row<deq_q5_k, 256, 176>(s, d, n); }
void dequantize_row_q6_k(const uint8_t* s, float* d, int64_t n) { deq_row<deq_q6_k, 256, 210>(s, d, n); }
void dequantize_row_iq4_nl(const uint8_t* s, float* d, int64_t n) { deq_row<deq_iq4_nl, 32, 18>(s, d, n); }
void dequantize_row_iq4_xs(const uint8_t* s, float* d, int64_t n) { deq_row<deq_iq4_xs, 256, 136>(s, d, n); }

void dequantize_blocks(const std::string& dtype, const uint8_t* src, int64_t n, float* dst) {
  const DTypeTraits* d = dtype_by_name(dtype);
  if (!d || !d->is_block() || !d->to_f32) fail("quantized block type '", dtype, "' is not supported");
  if (n % d->block_elems) fail("dequantize ", dtype, ": ", n, " elements is not a whole number of blocks of ", d->block_elems);
  d->to_f32(src, dst, n);
}

// ---- reference quantizers (llama.cpp quantize_row_*_ref, no imatrix) -------------------------

static void ref_q8_0(const float* x, uint8_t* b) {
  float amax = 0.f;
  for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[j]));
  const float d = amax / 127.f, id = d != 0.f ? 1.f / d : 0.f;
  wr_f16(b, d);
  for (int j = 0; j < 32; ++j) b[2 + j] = (uint8_t)(int8_t)std::round(x[j] * id);  // round: half away from zero
}

static void ref_q4_0(const float* x, uint8_t* b) {
  float amax = 0.f, max = 0.f;  // max: the signed value of largest magnitude (first on ties)
  for (int j = 0; j < 32; ++j)
    if (amax < std::fabs(x[j])) {
      amax = std::fabs(x[j]);
      max = x[j];
    }
  const float d = max / -8.f, id = d != 0.f ? 1.f / d : 0.f;
  wr_f16(b, d);
  for (int j = 0; j < 16; ++j) {
    const int q0 = std::min(15, (int)(int8_t)(x[j] * id + 8.5f));  // truncation, as the reference
    const int q1 = std::min(15, (int)(int8_t)(x[j + 16] * id + 8.5f));
    b[2 + j] = (uint8_t)(q0 | (q1 << 4));
  }
}

static void ref_q4_1(const float* x, uint8_t* b) {
  float min = x[0], max = x[0];
  for (int j = 1; j < 32; ++j) {
    min = std::min(min, x[j]);
    max = std::max(max, x[j]);
  }
  const float d = (max - min) / 15.f, id = d != 0.f ? 1.f / d : 0.f;
  wr_f16(b, d);
  wr_f16(b + 2, min);
  for (int j = 0; j < 16; ++j) {
    const int q0 = std::min(15, (int)(int8_t)((x[j] - min) * id + 0.5f));
    const int q1 = std::min(15, (int)(int8_t)((x[j + 16] - min) * id + 0.5f));
    b[4 + j] = (uint8_t)(q0 | (q1 << 4));
  }
}

// Q5_0 / Q5_1 as Q4_0 / Q4_1 with 32 levels; the blocks are written by the grid packers below.
static void ref_q5_0(const float* x, uint8_t* b) {
  float amax = 0.f, max = 0.f;
  for (int j = 0; j < 32; ++j)
    if (amax < std::fabs(x[j])) {
      amax = std::fabs(x[j]);
      max = x[j];
    }
  const float d = max / -16.f, id = d != 0.f ? 1.f / d : 0.f;
  int v[32];
  for (int j = 0; j < 32; ++j) v[j] = std::min(31, (int)(int8_t)(x[j] * id + 16.5f)) - 16;
  pack_block_q5_0(v, d, 0.f, b);
}

static void ref_q5_1(const float* x, uint8_t* b) {
  float min = x[0], max = x[0];
  for (int j = 1; j < 32; ++j) {
    min = std::min(min, x[j]);
    max = std::max(max, x[j]);
  }
  const float d = (max - min) / 31.f, id = d != 0.f ? 1.f / d : 0.f;
  int q[32];
  for (int j = 0; j < 32; ++j) q[j] = std::min(31, (int)(int8_t)((x[j] - min) * id + 0.5f));
  pack_block_q5_1(q, d, min, b);
}

template <void (*F)(const float*, uint8_t*), int64_t B>
static void ref_row(const float* src, uint8_t* dst, int64_t n) {
  for (int64_t i = 0; i < n / 32; ++i) F(src + 32 * i, dst + B * i);
}
void quantize_row_q8_0_ref(const float* s, uint8_t* d, int64_t n) { ref_row<ref_q8_0, 34>(s, d, n); }
void quantize_row_q4_0_ref(const float* s, uint8_t* d, int64_t n) { ref_row<ref_q4_0, 18>(s, d, n); }
void quantize_row_q4_1_ref(const float* s, uint8_t* d, int64_t n) { ref_row<ref_q4_1, 20>(s, d, n); }
void quantize_row_q5_0_ref(const float* s, uint8_t* d, int64_t n) { ref_row<ref_q5_0, 22>(s, d, n); }
void quantize_row_q5_1_ref(const float* s, uint8_t* d, int64_t n) { ref_row<ref_q5_1, 24>(s, d, n); }

static bool has_ref_quantizer(const DTypeTraits& t) { return t.is_block() && t.from_f32; }

void quantize_blocks_ref(const std::string& dtype, const float* src, int64_t n, uint8_t* dst) {
  const DTypeTraits* d = dtype_by_name(dtype);
  if (!d || !has_ref_quantizer(*d))
    fail("quantize: type '", dtype, "' has no reference quantizer here (", dtype_names(has_ref_quantizer), ")");
  if (n % d->block_elems) fail("quantize ", dtype, ": ", n, " elements is not a whole number of blocks of ", d->block_elems);
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(src[i])) fail("quantize ", dtype, ": non-finite value at element ", i);
  d->from_f32(src, dst, n);
}

// ---- exact encoders from a grid ---------------------------------------------------------------

void pack_block_q8_0(const int* v, float d, float, uint8_t* blk) {
  wr_f16(blk, d);
  for (int j = 0; j < 32; ++j) blk[2 + j] = (uint8_t)(int8_t)v[j];
}
void pack_block_q4_0(const int* v, float d, float, uint8_t* blk) {
  wr_f16(blk, d);
  for (int j = 0; j < 16; ++j) blk[2 + j] = (uint8_t)((v[j] + 8) | ((v[j + 16] + 8) << 4));
}
void pack_block_q4_1(const int* v, float d, float m, uint8_t* blk) {
  wr_f16(blk, d);
  wr_f16(blk + 2, m);
  for (int j = 0; j < 16; ++j) blk[4 + j] = (uint8_t)(v[j] | (v[j + 16] << 4));
}

// Q5 codes 0..31: low nibbles as Q4_0 into qs[16], the 5th bits into the little-endian u32 qh.
static void put_q5(const int* q, uint8_t* qh, uint8_t* qs) {
  uint32_t h = 0;
  for (int j = 0; j < 32; ++j) h |= (uint32_t)((q[j] >> 4) & 1) << j;
  for (int k = 0; k < 4; ++k) qh[k] = (uint8_t)(h >> (8 * k));
  for (int j = 0; j < 16; ++j) qs[j] = (uint8_t)((q[j] & 0xF) | ((q[j + 16] & 0xF) << 4));
}
void pack_block_q5_0(const int* v, float d, float, uint8_t* blk) {
  int q[32];
  for (int j = 0; j < 32; ++j) q[j] = v[j] + 16;
  wr_f16(blk, d);
  put_q5(q, blk + 2, blk + 6);
}
void pack_block_q5_1(const int* v, float d, float m, uint8_t* blk) {
  wr_f16(blk, d);
  wr_f16(blk + 2, m);
  put_q5(v, blk + 4, blk + 8);
}

// ---- exact K-quant super-block packers (the inverses of deq_q*_k) ------------------------------

// Range checks, all done before a packer writes anything: the 256 codes, then the nsub
// sub-block scales or mins (`what`). Elements and sub-blocks are named 1-based, as elsewhere.
static void check_codes(const char* type, const int* q, int lo, int hi) {
  for (int i = 0; i < 256; ++i)
    if (q[i] < lo || q[i] > hi) fail(type, " super-block: code ", q[i], " of element ", i + 1, " (of 256) is outside ", lo, "..", hi);
}
static void check_subs(const char* type, const char* what, const int* v, int nsub, int lo, int hi) {
  for (int k = 0; k < nsub; ++k)
    if (v[k] < lo || v[k] > hi)
      fail(type, " super-block: ", what, " ", v[k], " of sub-block ", k + 1, " (of ", nsub, ") is outside ", lo, "..", hi);
}

// Q2_K / Q3_K 2-bit planes (k2_bits): the low 2 bits of element i = 128h + 32k + l go to bits
// 2k..2k+1 of qs[32h + l].
static void put_k2_bits(const int* q, uint8_t* qs) {
  std::memset(qs, 0, 64);
  for (int i = 0; i < 256; ++i) qs[32 * (i / 128) + i % 32] |= (uint8_t)((q[i] & 3) << (2 * (i % 128 / 32)));
}

// Q4_K / Q5_K: the 8 6-bit scale/min pairs into 12 bytes (q4k_scale_min's inverse). Sub-blocks
// 0..3 fill the low 6 bits of bytes j (scale) and j+4 (min); sub-block j+4 puts its low 4 bits
// in byte j+8 (scale low nibble, min high nibble) and its top 2 bits in bits 6..7 of bytes j, j+4.
static void put_q4k_scales(const int* sc, const int* mn, uint8_t* s) {
  for (int j = 0; j < 4; ++j) {
    s[j] = (uint8_t)(sc[j] | (sc[j + 4] >> 4) << 6);
    s[j + 4] = (uint8_t)(mn[j] | (mn[j + 4] >> 4) << 6);
    s[j + 8] = (uint8_t)((sc[j + 4] & 0xF) | (mn[j + 4] & 0xF) << 4);
  }
}

void pack_superblock_q2_k(const int* q, const int* sc, const int* mn, float d, float dmin, uint8_t* blk) {
  check_codes("Q2_K", q, 0, 3);
  check_subs("Q2_K", "scale", sc, 16, 0, 15);
  check_subs("Q2_K", "min", mn, 16, 0, 15);
  for (int k = 0; k < 16; ++k) blk[k] = (uint8_t)(sc[k] | mn[k] << 4);
  put_k2_bits(q, blk + 16);
  wr_f16(blk + 80, d);
  wr_f16(blk + 82, dmin);
}

void pack_superblock_q3_k(const int* q, const int* sc, const int*, float d, float, uint8_t* blk) {
  check_codes("Q3_K", q, 0, 7);
  check_subs("Q3_K", "scale", sc, 16, -32, 31);
  // Element 32j + l (j = 4h + k): bit j of hmask[l] is the code's bit 2 (set: no −4).
  for (int l = 0; l < 32; ++l) {
    uint8_t m = 0;
    for (int j = 0; j < 8; ++j) m |= (uint8_t)((q[32 * j + l] >> 2) << j);
    blk[l] = m;
  }
  put_k2_bits(q, blk + 32);
  // Scale k + 32 (0..63): low 4 bits in nibble k/8 of byte k%8, high 2 bits at bit 2·(k/4) of
  // byte 8 + k%4.
  uint8_t* s = blk + 96;
  std::memset(s, 0, 12);
  for (int k = 0; k < 16; ++k) {
    const int u = sc[k] + 32;
    s[k % 8] |= (uint8_t)((u & 0xF) << (4 * (k / 8)));
    s[8 + k % 4] |= (uint8_t)((u >> 4) << (2 * (k / 4)));
  }
  wr_f16(blk + 108, d);
}

void pack_superblock_q4_k(const int* q, const int* sc, const int* mn, float d, float dmin, uint8_t* blk) {
  check_codes("Q4_K", q, 0, 15);
  check_subs("Q4_K", "scale", sc, 8, 0, 63);
  check_subs("Q4_K", "min", mn, 8, 0, 63);
  wr_f16(blk, d);
  wr_f16(blk + 2, dmin);
  put_q4k_scales(sc, mn, blk + 4);
  // 64-element chunk c: its first 32 codes in the low nibbles of qs[32c..32c+32), the next 32 high.
  for (int c = 0; c < 4; ++c)
    for (int l = 0; l < 32; ++l) blk[16 + 32 * c + l] = (uint8_t)(q[64 * c + l] | q[64 * c + 32 + l] << 4);
}

void pack_superblock_q5_k(const int* q, const int* sc, const int* mn, float d, float dmin, uint8_t* blk) {
  check_codes("Q5_K", q, 0, 31);
  check_subs("Q5_K", "scale", sc, 8, 0, 63);
  check_subs("Q5_K", "min", mn, 8, 0, 63);
  wr_f16(blk, d);
  wr_f16(blk + 2, dmin);
  put_q4k_scales(sc, mn, blk + 4);
  uint8_t* qh = blk + 16;
  uint8_t* qs = blk + 48;
  // Element 32j + l (j = 2c + t): 5th bit at bit j of qh[l], low 4 bits in nibble t of qs[32c + l].
  for (int l = 0; l < 32; ++l) {
    uint8_t h = 0;
    for (int j = 0; j < 8; ++j) h |= (uint8_t)((q[32 * j + l] >> 4) << j);
    qh[l] = h;
  }
  for (int c = 0; c < 4; ++c)
    for (int l = 0; l < 32; ++l) qs[32 * c + l] = (uint8_t)((q[64 * c + l] & 0xF) | (q[64 * c + 32 + l] & 0xF) << 4);
}

void pack_superblock_q6_k(const int* q, const int* sc, const int*, float d, float, uint8_t* blk) {
  check_codes("Q6_K", q, 0, 63);
  check_subs("Q6_K", "scale", sc, 16, -128, 127);
  uint8_t* ql = blk;
  uint8_t* qh = blk + 128;
  // Half h, element x[32k] = q[128h + 32k + l]: low nibbles of k = 0, 1 in ql[64h + l] and
  // ql[64h + 32 + l], of k = 2, 3 the high nibbles of the same bytes; bits 4..5 of code k at
  // bit 2k of qh[32h + l].
  for (int h = 0; h < 2; ++h)
    for (int l = 0; l < 32; ++l) {
      const int* x = q + 128 * h + l;
      ql[64 * h + l] = (uint8_t)((x[0] & 0xF) | (x[64] & 0xF) << 4);
      ql[64 * h + 32 + l] = (uint8_t)((x[32] & 0xF) | (x[96] & 0xF) << 4);
      qh[32 * h + l] = (uint8_t)((x[0] >> 4) | (x[32] >> 4) << 2 | (x[64] >> 4) << 4 | (x[96] >> 4) << 6);
    }
  for (int k = 0; k < 16; ++k) blk[192 + k] = (uint8_t)(int8_t)sc[k];
  wr_f16(blk + 208, d);
}

SuperblockPack superblock_packer(const std::string& dtype) {
  if (dtype == "Q2_K") return pack_superblock_q2_k;
  if (dtype == "Q3_K") return pack_superblock_q3_k;
  if (dtype == "Q4_K") return pack_superblock_q4_k;
  if (dtype == "Q5_K") return pack_superblock_q5_k;
  if (dtype == "Q6_K") return pack_superblock_q6_k;
  return nullptr;
}

static bool grid_encodable(const DTypeTraits& t) { return t.grid.cols > 0; }

// The row of a type with an exact encoder from a grid.
static const DTypeTraits& encodable(const std::string& dtype, const std::string& what) {
  const DTypeTraits* d = dtype_by_name(dtype);
  if (!d || !grid_encodable(*d)) fail(what, ": no exact encoding into GGUF type '", dtype, "' (", dtype_names(grid_encodable), ")");
  return *d;
}

void check_grid_encodable(const QuantizedLinear& q, const std::string& dtype, const std::string& what) {
  const DTypeTraits& t = encodable(dtype, what);
  const GridFit& fit = t.grid;
  const int64_t bc = fit.cols;
  const Grid& g = q.grid;
  const std::string fix = "; export gguf F16 or F32 instead";
  if (q.outliers.nnz() > 0)
    fail(what, ": has ", q.outliers.nnz(), " sparse outliers, which ", dtype, " blocks cannot store", fix);
  if (g.cols % bc) fail(what, ": ", g.cols, " input columns is not a multiple of the ", dtype, " block size ", bc, fix);
  if ((int64_t)g.g_idx.size() != g.cols) fail(what, ": grid g_idx has ", g.g_idx.size(), " entries for ", g.cols, " columns");
  // Each block stores one scale: all its columns must share one group.
  for (int64_t c0 = 0; c0 < g.cols; c0 += bc)
    for (int64_t c = c0; c < c0 + bc; ++c)
      if (g.g_idx[c] != g.g_idx[c0])
        fail(what, ": columns ", c0 + 1, "..", c0 + bc, " (one ", dtype, " block) span groups ", g.g_idx[c0] + 1, " and ", g.g_idx[c] + 1,
             " (grid ", g.spec.str(), g.spec.group > 0 && g.spec.group % bc == 0 ? ", act-order g_idx" : "",
             "); GGUF blocks need groups of a multiple of ", bc, " columns in natural order", fix);
  if (g.spec.kind != GridKind::Uniform)
    fail(what, ": a companded (non-uniform) grid (", g.spec.str(), ") cannot be stored in ", dtype, " blocks", fix);
  // Another type of this block width that holds codes 0..maxq with zero z (for the hint).
  auto type_for = [&](float z, int maxq) -> const DTypeTraits* {
    for (const DTypeTraits& o : dtype_table())
      if (&o != &t && o.grid.cols == bc && (o.grid.stores_min ? maxq <= o.grid.hi : -(int)z >= o.grid.lo && maxq - (int)z <= o.grid.hi))
        return &o;
    return nullptr;
  };
  // Per (row, group): row groups share params (Grid::s/z index them), bits may vary per group.
  for (int64_t r = 0; r < g.rows; ++r)
    for (int64_t k = 0; k < g.ngroups; ++k) {
      const float s = g.s(r, k), z = g.z(r, k);
      const int bits = g.bits_at(r, k), maxq = (1 << bits) - 1;
      const std::string at = " at row " + std::to_string(r + 1) + ", group " + std::to_string(k + 1);
      if (bits == 0) fail(what, ": group pruned to its median (0 bits)", at, " has no ", dtype, " encoding", fix);
      if (fit.stores_min && maxq > fit.hi)
        fail(what, ": ", bits, "-bit codes", at, " do not fit ", dtype, "'s ", fit.max_bits(false), "-bit codes", fix);
      if (!(std::isfinite(s) && z == std::nearbyint(z) && std::fabs(z) <= 256.f))
        fail(what, ": grid scale ", s, " / zero ", z, at, " is not a finite scale with an integer zero");
      // The codes 0..maxq minus the zero must land in the block's signed range.
      const int lo = fit.lo, hi = fit.hi;
      if (!fit.stores_min && (-(int)z < lo || maxq - (int)z > hi)) {
        const DTypeTraits* alt = type_for(z, maxq);
        const std::string hint = !alt ? "" : alt->grid.stores_min ? std::string(" (asymmetric grids export as ") + alt->name + ")"
                                                                  : std::string(" (") + alt->name + " stores these codes)";
        fail(what, ": zero ", z, at, " with codes 0..", maxq, " (grid ", g.spec.str(), ") gives values outside ", dtype, "'s ", lo, "..",
             hi, hint, fix);
      }
      if (!f16_exact(s))
        fail(what, ": scale ", s, at, " is not representable in fp16; re-fit the grid with fp16 scales or export gguf F16");
      if (fit.stores_min) {
        // Stored min m = −s·z. s has 11 significant bits and |z| <= 256, so s·z is exact in
        // f32; it must also be exact in fp16, and then q·d + m = s·(q − z) exactly in f32.
        const float m = -(s * z);
        if (!f16_exact(m))
          fail(what, ": ", dtype, " min −scale·zero = ", m, at, " (scale ", s, ", zero ", z,
               ") is not representable in fp16; re-fit the grid with fp16 scales and mins or export gguf F16");
      }
    }
  if (q.codes.dtype() != DType::U8 || q.codes.dim() != 2 || q.codes.size(0) != g.rows || q.codes.size(1) != g.cols)
    fail(what, ": codes tensor ", shape_str(q.codes.shape()), " does not match the grid [", g.rows, ", ", g.cols, "]");
}

void encode_grid_row(const QuantizedLinear& q, int64_t row, const std::string& dtype, uint8_t* dst, const std::string& what) {
  const DTypeTraits& t = encodable(dtype, what);
  const GridFit& fit = t.grid;
  const int64_t bc = fit.cols, bb = t.block_bytes;
  const Grid& g = q.grid;
  const Tensor codes = q.codes.contiguous();
  const uint8_t* c = codes.data<uint8_t>() + row * g.cols;
  std::vector<int> qv((size_t)bc);
  std::vector<float> y((size_t)bc);
  for (int64_t b = 0; b < g.cols / bc; ++b) {
    const int64_t grp = g.g_idx[bc * b];
    const float s = g.s(row, grp), z = g.z(row, grp);
    const int maxq = g.maxq_at(row, grp);
    uint8_t* blk = dst + b * bb;
    for (int64_t j = 0; j < bc; ++j) {
      const int code = c[bc * b + j];
      if (code > maxq) fail(what, ": code ", code, " at row ", row + 1, ", column ", bc * b + j + 1, " exceeds the grid's maxq ", maxq);
      qv[j] = fit.stores_min ? code : code - (int)z;
    }
    fit.pack(qv.data(), s, -(s * z), blk);
    // The point of an exact encoder: what a GGUF reader decodes is what qforge evaluated.
    t.to_f32(blk, y.data(), bc);
    for (int64_t j = 0; j < bc; ++j) {
      const float want = g.value(c[bc * b + j], row, grp);
      if (!(y[j] == want))
        fail(what, ": ", dtype, " block at row ", row + 1, ", column ", bc * b + j + 1, " decodes to ", y[j], ", the grid gives ", want,
             " (not exactly representable)");
    }
  }
}

}  // namespace qf
