#include "formats/kquant_blocks.h"

#include <vector>

#include "formats/dtypes.h"
#include "formats/quant_blocks.h"

namespace qf {

void check_kquant_encodable(const QuantizedLinear& q, const std::string& dtype, const std::string& what) {
  KQuantType t;
  if (!kquant_from_name(dtype, &t)) fail(what, ": '", dtype, "' is not a K-quant type");
  const Grid& g = q.grid;
  const std::string fix = "; export gguf F16 or F32 instead";
  if (g.spec.kind != GridKind::KQuant || g.spec.ktype != t)
    fail(what, ": grid ", g.spec.str(), " is not a ", dtype, " grid (quantize with ktype=", dtype, ")", fix);
  if (q.outliers.nnz() > 0) fail(what, ": has ", q.outliers.nnz(), " sparse outliers, which ", dtype, " blocks cannot store", fix);
  if ((int64_t)g.g_idx.size() != g.cols) fail(what, ": grid g_idx has ", g.g_idx.size(), " entries for ", g.cols, " columns");
  for (int64_t c = 0; c < g.cols; ++c)
    if (g.g_idx[c] != c / g.spec.group)
      fail(what, ": column ", c + 1, " is in group ", g.g_idx[c] + 1, " (act-order g_idx); ", dtype, " sub-blocks are consecutive columns", fix);
  const size_t nsb = (size_t)(g.rows * (g.cols / kKQuantSuper)), np = (size_t)(g.rows * g.ngroups);
  if (g.cols % kKQuantSuper || g.kq_d.size() != nsb || g.kq_dmin.size() != nsb || g.kq_sc.size() != np || g.kq_mn.size() != np)
    fail(what, ": the ", dtype, " grid's stored integers do not match its shape [", g.rows, ", ", g.cols, "]");
  if (q.codes.dtype() != DType::U8 || q.codes.dim() != 2 || q.codes.size(0) != g.rows || q.codes.size(1) != g.cols)
    fail(what, ": codes tensor ", shape_str(q.codes.shape()), " does not match the grid [", g.rows, ", ", g.cols, "]");
}

void encode_kquant_row(const QuantizedLinear& q, int64_t row, const std::string& dtype, uint8_t* dst, const std::string& what) {
  const Grid& g = q.grid;
  const KQuantLayout& L = kquant_layout(g.spec.ktype);
  const DTypeTraits& t = *dtype_by_name(L.name);
  const SuperblockPack pack = superblock_packer(L.name);
  if (!pack || t.block_elems != kKQuantSuper) fail(what, ": no packer for ", L.name);
  const Tensor codes = q.codes.contiguous();
  const uint8_t* c = codes.data<uint8_t>() + row * g.cols;
  const int ns = L.nsub(), maxq = (1 << L.bits) - 1;
  const int64_t nsb = g.cols / kKQuantSuper;
  std::vector<int> qv(kKQuantSuper), sc((size_t)ns), mn((size_t)ns);
  std::vector<float> y(kKQuantSuper);
  for (int64_t b = 0; b < nsb; ++b) {
    for (int i = 0; i < kKQuantSuper; ++i) {
      qv[i] = c[b * kKQuantSuper + i];
      if (qv[i] > maxq) fail(what, ": code ", qv[i], " at row ", row + 1, ", column ", b * kKQuantSuper + i + 1, " exceeds ", L.name, "'s ", maxq);
    }
    const size_t p0 = (size_t)(row * g.ngroups + b * ns);
    for (int k = 0; k < ns; ++k) sc[k] = g.kq_sc[p0 + k], mn[k] = g.kq_mn[p0 + k];
    const size_t sb = (size_t)(row * nsb + b);
    uint8_t* blk = dst + b * t.block_bytes;
    pack(qv.data(), sc.data(), mn.data(), g.kq_d[sb], g.kq_dmin[sb], blk);
    // What llama.cpp decodes must be what qforge evaluated.
    t.to_f32(blk, y.data(), kKQuantSuper);
    for (int i = 0; i < kKQuantSuper; ++i) {
      const int64_t col = b * kKQuantSuper + i;
      const float want = g.value(qv[i], row, g.g_idx[col]);
      if (!(y[i] == want))
        fail(what, ": ", L.name, " super-block at row ", row + 1, ", column ", col + 1, " decodes to ", y[i], ", the grid gives ", want,
             " (d ", g.kq_d[sb], " not an fp16 value?)");
    }
  }
}

template <KQuantType T>
static void quantize_row_ref(const float* src, uint8_t* dst, int64_t n) {
  const KQuantLayout& L = kquant_layout(T);
  const DTypeTraits& t = *dtype_by_name(L.name);
  const SuperblockPack pack = superblock_packer(L.name);
  const int ns = L.nsub();
  std::vector<int> q(kKQuantSuper), sc((size_t)ns), mn((size_t)ns);
  for (int64_t b = 0; b < n / kKQuantSuper; ++b) {
    const float* x = src + b * kKQuantSuper;
    float d, dmin;
    kquant_fit_superblock(L, x, nullptr, &d, &dmin, sc.data(), mn.data());
    for (int i = 0; i < kKQuantSuper; ++i) {
      const int k = i / L.sub;
      q[i] = kquant_code(L, x[i], d * (float)sc[k], L.has_min() ? dmin * (float)mn[k] : (float)L.zero);
    }
    pack(q.data(), sc.data(), mn.data(), d, dmin, dst + b * t.block_bytes);
  }
}
void quantize_row_q2_k_ref(const float* s, uint8_t* d, int64_t n) { quantize_row_ref<KQuantType::Q2_K>(s, d, n); }
void quantize_row_q3_k_ref(const float* s, uint8_t* d, int64_t n) { quantize_row_ref<KQuantType::Q3_K>(s, d, n); }
void quantize_row_q4_k_ref(const float* s, uint8_t* d, int64_t n) { quantize_row_ref<KQuantType::Q4_K>(s, d, n); }
void quantize_row_q5_k_ref(const float* s, uint8_t* d, int64_t n) { quantize_row_ref<KQuantType::Q5_K>(s, d, n); }
void quantize_row_q6_k_ref(const float* s, uint8_t* d, int64_t n) { quantize_row_ref<KQuantType::Q6_K>(s, d, n); }

}  // namespace qf
