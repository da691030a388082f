// qforge — llama.cpp/GGML quantized block formats (docs/formats.md, "Exports": gguf): sizes,
// dequantize, quantize.
//
// Block layouts (little endian, fp16 = IEEE half):
//   Q8_0 32 weights: fp16 d, int8 qs[32]                       x = d·q
//   Q4_0 32 weights: fp16 d, u8 qs[16] (low nibbles 0..15, high 16..31)   x = d·(q − 8)
//   Q4_1 32 weights: fp16 d, fp16 m, u8 qs[16]                  x = d·q + m
//   Q5_0 32 weights: fp16 d, u8 qh[4] (5th bits, LE u32), u8 qs[16] (as Q4_0)   x = d·(q − 16)
//   Q5_1 32 weights: fp16 d, fp16 m, u8 qh[4], u8 qs[16]         x = d·q + m
//   Q2_K 256 weights: u8 scales[16] (4-bit scale | 4-bit min << 4 per 16), u8 qs[64],
//        fp16 d, fp16 dmin                                      x = d·sc·q − dmin·mn, q 2-bit
//   Q3_K 256 weights: u8 hmask[32], u8 qs[64], u8 scales[12] (16 packed 6-bit scales,
//        offset 32), fp16 d                                     x = d·sc·q, q = 2 bits − 4·!hbit
//   Q4_K 256 weights: fp16 d, fp16 dmin, u8 scales[12] (8 packed 6-bit scale/min pairs),
//        u8 qs[128]                                             x = d·sc·q − dmin·mn
//   Q5_K 256 weights: as Q4_K with u8 qh[32] (5th bits) before qs    x = d·sc·q − dmin·mn
//   Q6_K 256 weights: u8 ql[128], u8 qh[64], int8 scales[16], fp16 d   x = d·sc·(q − 32)
//   IQ4_NL 32 weights: fp16 d, u8 qs[16] (nibbles as Q4_0)      x = d·L[q], L the 16 fixed levels
//        −127 −104 −83 −65 −49 −35 −22 −10 1 13 25 38 53 69 89 113 (read only: no quantizer here)
//   IQ4_XS 256 weights: fp16 d, u16 scales_h, u8 scales_l[4], u8 qs[128]: 8 sub-blocks of 32,
//        6-bit scales (offset 32), each sub-block's codes as one IQ4_NL block   x = d·(sc − 32)·L[q]
//
// Two ways in: the reference quantizers (what llama.cpp's quantize does from f32, no imatrix)
// and exact encoders of a QuantizedLinear whose grid maps onto the block type. The exact
// encoders never re-round: a grid that does not map (block spanning two groups, codes out
// of the block's range, a scale or min not representable in fp16, outliers) is an error.
#pragma once
#include <cstdint>
#include <string>

#include "quant/grid.h"

namespace qf {

// The sizes and functions below are rows of the storage-type table (formats/dtypes.h).

// Elements per block and bytes per block of a GGML type name; false if `dtype` is not a
// block-quantized type qforge can dequantize.
bool quant_block_info(const std::string& dtype, int64_t* block_elems, int64_t* block_bytes);
// Dequantizes n elements (n a multiple of the block size) from src into dst.
void dequantize_blocks(const std::string& dtype, const uint8_t* src, int64_t n, float* dst);

// llama.cpp's reference quantizers (quantize_row_*_ref) for Q8_0, Q4_0, Q4_1, Q5_0, Q5_1: codes
// from the f32 scale, stored scale rounded to fp16. n a multiple of 32; dst holds n/32 blocks.
void quantize_blocks_ref(const std::string& dtype, const float* src, int64_t n, uint8_t* dst);

// The table's row functions (n a multiple of the type's block size).
void dequantize_row_q8_0(const uint8_t* src, float* dst, int64_t n);
void dequantize_row_q4_0(const uint8_t* src, float* dst, int64_t n);
void dequantize_row_q4_1(const uint8_t* src, float* dst, int64_t n);
void dequantize_row_q5_0(const uint8_t* src, float* dst, int64_t n);
void dequantize_row_q5_1(const uint8_t* src, float* dst, int64_t n);
void dequantize_row_q2_k(const uint8_t* src, float* dst, int64_t n);
void dequantize_row_q3_k(const uint8_t* src, float* dst, int64_t n);
void dequantize_row_q4_k(const uint8_t* src, float* dst, int64_t n);
void dequantize_row_q5_k(const uint8_t* src, float* dst, int64_t n);
void dequantize_row_q6_k(const uint8_t* src, float* dst, int64_t n);
void dequantize_row_iq4_nl(const uint8_t* src, float* dst, int64_t n);
void dequantize_row_iq4_xs(const uint8_t* src, float* dst, int64_t n);
void quantize_row_q8_0_ref(const float* src, uint8_t* dst, int64_t n);
void quantize_row_q4_0_ref(const float* src, uint8_t* dst, int64_t n);
void quantize_row_q4_1_ref(const float* src, uint8_t* dst, int64_t n);
void quantize_row_q5_0_ref(const float* src, uint8_t* dst, int64_t n);
void quantize_row_q5_1_ref(const float* src, uint8_t* dst, int64_t n);
// One 32-element block from its stored integers (GridFit::pack): Q8_0, Q4_0 and Q5_0 take
// code − zero (m unused), Q4_1 and Q5_1 the codes and the min m.
void pack_block_q8_0(const int* v, float d, float m, uint8_t* blk);
void pack_block_q4_0(const int* v, float d, float m, uint8_t* blk);
void pack_block_q4_1(const int* v, float d, float m, uint8_t* blk);
void pack_block_q5_0(const int* v, float d, float m, uint8_t* blk);
void pack_block_q5_1(const int* v, float d, float m, uint8_t* blk);

// One K-quant super-block (256 weights) from its integers, the inverse of dequantize_row_q*_k:
// q[256] the stored codes (Q2_K 0..3, Q3_K 0..7 meaning q−4, Q4_K 0..15, Q5_K 0..31, Q6_K 0..63
// meaning q−32); sc[nsub] the sub-block scales as integers (Q2_K 0..15, Q3_K −32..31, Q4_K/Q5_K
// 0..63, Q6_K −128..127); mn[nsub] the sub-block mins (Q2_K 0..15, Q4_K/Q5_K 0..63; unused by
// Q3_K/Q6_K, may be null there); d, dmin the super-block scales, stored as fp16 rounded to
// nearest even (dmin unused by Q3_K/Q6_K).
// Sub-block k holds elements [k·sub, (k+1)·sub), sub = 16 (Q2_K, Q3_K, Q6_K: nsub 16) or
// 32 (Q4_K, Q5_K: nsub 8). The block decodes to x_i = (d·sc_k)·q_i − dmin·mn_k (Q2_K, Q4_K,
// Q5_K), (d·sc_k)·(q_i − 4) (Q3_K), (d·sc_k)·(q_i − 32) (Q6_K).
// Every byte of blk is written. An integer out of its range fails (qf::Error naming the type,
// the 1-based element or sub-block, and the value) before anything is written.
void pack_superblock_q2_k(const int* q, const int* sc, const int* mn, float d, float dmin, uint8_t* blk);
// Q3_K: hmask[32] (bit 4h+k of byte l set when code >= 4), the 2-bit planes, scales + 32.
void pack_superblock_q3_k(const int* q, const int* sc, const int* mn, float d, float dmin, uint8_t* blk);
// Q4_K: 12 packed bytes of 6-bit scale/min pairs, codes as nibbles (64-element chunks).
void pack_superblock_q4_k(const int* q, const int* sc, const int* mn, float d, float dmin, uint8_t* blk);
// Q5_K: as Q4_K, the 5th code bits in qh[32] (bit 2c+t of byte l for element 64c + 32t + l).
void pack_superblock_q5_k(const int* q, const int* sc, const int* mn, float d, float dmin, uint8_t* blk);
// Q6_K: low nibbles in ql[128], high 2 bits in qh[64], int8 scales.
void pack_superblock_q6_k(const int* q, const int* sc, const int* mn, float d, float dmin, uint8_t* blk);

// The packer of a K type name ("Q2_K".."Q6_K"), nullptr for any other name.
using SuperblockPack = void (*)(const int* q, const int* sc, const int* mn, float d, float dmin, uint8_t* blk);
SuperblockPack superblock_packer(const std::string& dtype);

// Exact encoding of a quantized linear as Q8_0 | Q4_0 | Q4_1 | Q5_0 | Q5_1 rows.
// check_grid_encodable: the grid-level conditions, cheap, before anything is written:
//   a uniform grid (not companded), no outliers; cols a multiple of 32 and every 32-column
//   block inside one group (group a multiple of 32, or a g_idx that keeps blocks whole); per
//   (row, group) at least 1 bit (no pruned groups), an integer zero with code − zero in the
//   block's range for all codes 0..maxq (Q8_0 [−128, 127], Q4_0 [−8, 7], Q5_0 [−16, 15], Q4_1
//   codes 0..15, Q5_1 0..31), the scale (and for Q4_1/Q5_1 the min −scale·zero) exact in fp16. Row groups and per-group bits
//   are fine when every group passes.
// `what` names the linear ("block 3 linear 'q'") in errors.
void check_grid_encodable(const QuantizedLinear& q, const std::string& dtype, const std::string& what);
// Encodes row `row` of q into cols/32 blocks at dst and checks that they dequantize to exactly
// q's values (fails otherwise). Call check_grid_encodable first.
void encode_grid_row(const QuantizedLinear& q, int64_t row, const std::string& dtype, uint8_t* dst, const std::string& what);

}  // namespace qf
