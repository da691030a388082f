#include "quant/storage.h"

#include <algorithm>
#include <cmath>

#include "core/half.h"

namespace qf {

StorageBits& StorageBits::operator+=(const StorageBits& o) {
  codes += o.codes;
  params += o.params;
  side += o.side;
  outliers += o.outliers;
  transform += o.transform;
  unquantized += o.unquantized;
  weights += o.weights;
  pruned += o.pruned;
  unq_f16 += o.unq_f16;
  unq_bf16 += o.unq_bf16;
  unq_f32 += o.unq_f32;
  return *this;
}

const char* StorageBits::unquantized_dtype() const {
  const int kinds = (unq_f16 > 0) + (unq_bf16 > 0) + (unq_f32 > 0);
  if (kinds == 0) return "none";
  if (kinds > 1) return "mixed";
  return unq_f16 ? "f16" : unq_bf16 ? "bf16" : "f32";
}

StorageBits unquantized_bits(const Tensor& weight) {
  StorageBits s;
  s.weights = weight.numel();
  bool f16 = weight.dtype() == DType::F16, bf16 = weight.dtype() == DType::BF16;
  if (weight.dtype() == DType::F32) {  // f32 in memory: 16 bits only if nothing would be lost
    const Tensor w = weight.contiguous();
    const float* p = w.f32();
    f16 = bf16 = true;
    for (int64_t i = 0; i < s.weights && (f16 || bf16); ++i) {
      if (f16 && f16_to_f32(f32_to_f16(p[i])) != p[i]) f16 = false;
      if (bf16 && bf16_to_f32(f32_to_bf16(p[i])) != p[i]) bf16 = false;
    }
  }
  if (f16) s.unq_f16 = s.weights;
  else if (bf16) s.unq_bf16 = s.weights;
  else s.unq_f32 = s.weights;
  s.unquantized = (f16 || bf16 ? 16.0 : 32.0) * (double)s.weights;
  return s;
}

StorageBits storage_bits(const QuantizedLinear& q) {
  const Grid& g = q.grid;
  StorageBits s;
  s.weights = g.rows * g.cols;
  s.transform = q.input.storage_bits() + q.output.storage_bits();
  if (g.spec.kind == GridKind::KQuant) {  // the block type's bytes: codes, then d, dmin and the sub-block integers
    const KQuantLayout& L = kquant_layout(g.spec.ktype);
    s.codes = (double)L.bits * (double)s.weights;
    s.params = (L.bpw - L.bits) * (double)s.weights;
    s.outliers = 48.0 * (double)q.outliers.nnz();
    return s;
  }
  const int64_t nrg = g.nrowgroups(), G = g.group_size();
  std::vector<int64_t> rows_in((size_t)nrg, g.spec.row_group.empty() ? 1 : 0);
  for (int32_t k : g.spec.row_group) ++rows_in[(size_t)k];
  // A symmetric uniform grid's zero is 2^(bits−1), fixed by its bits: only the scale is stored
  // (GGUF Q4_0/Q8_0 hold d alone; GPTQ's sym checkpoints pack a constant zero nobody needs).
  const bool zero_implied = g.spec.sym && g.spec.kind == GridKind::Uniform && !g.spec.float_zero;
  for (int64_t k = 0; k < nrg; ++k)
    for (int64_t c = 0; c < g.ngroups; ++c) {
      const int64_t ncols = std::min(G, g.cols - c * G), n = rows_in[(size_t)k] * ncols;
      const int bits = g.spec.group_bits.empty() ? g.spec.bits : g.spec.group_bits[(size_t)(k * g.ngroups + c)];
      s.codes += (double)bits * n;
      s.params += bits == 0 || zero_implied ? 16 : 32;
      if (bits == 0) s.pruned += n;
      if (g.spec.mixed_bits()) s.side += 4;
    }
  if (!g.spec.row_group.empty() && nrg > 1) s.side += (double)g.rows * std::ceil(std::log2((double)nrg));
  // Column outliers (OWQ's weak columns, docs/methods.md#owq-storage): a column with an outlier in
  // every row whose codes all decode to 0 is a dense fp16 column and its 16-bit index; its codes
  // carry nothing and are not counted. Every other outlier is a COO entry of 48 bits.
  const std::vector<int64_t> cols = column_outliers(q);
  int64_t in_cols = 0;
  for (int64_t j : cols) {
    for (int64_t r = 0; r < g.rows; ++r) s.codes -= g.bits_at(r, g.g_idx[(size_t)j]);
    in_cols += g.rows;
  }
  s.outliers = 48.0 * (double)(q.outliers.nnz() - in_cols) + (16.0 * (double)g.rows + 16.0) * (double)cols.size();
  return s;
}

std::vector<int64_t> column_outliers(const QuantizedLinear& q) {
  const Grid& g = q.grid;
  const SparseEntries& o = q.outliers;
  std::vector<int64_t> out;
  if (o.nnz() < g.rows || !q.codes.defined()) return out;
  std::vector<int64_t> per((size_t)g.cols, 0);
  for (int64_t k = 0; k < o.nnz(); ++k)
    if (o.col[(size_t)k] >= 0 && o.col[(size_t)k] < g.cols) ++per[(size_t)o.col[(size_t)k]];
  std::vector<int64_t> cand;
  for (int64_t j = 0; j < g.cols; ++j)
    if (per[(size_t)j] == g.rows) cand.push_back(j);
  if (cand.empty()) return out;
  // Every row exactly once (no duplicate entries), and codes that decode to 0 in every row.
  std::vector<int64_t> slot((size_t)g.cols, -1);
  for (size_t k = 0; k < cand.size(); ++k) slot[(size_t)cand[k]] = (int64_t)k;
  std::vector<std::vector<char>> seen(cand.size(), std::vector<char>((size_t)g.rows, 0));
  std::vector<char> ok(cand.size(), 1);
  for (int64_t k = 0; k < o.nnz(); ++k) {
    const int64_t j = o.col[(size_t)k], r = o.row[(size_t)k];
    if (j < 0 || j >= g.cols || slot[(size_t)j] < 0 || r < 0 || r >= g.rows) continue;
    char& s = seen[(size_t)slot[(size_t)j]][(size_t)r];
    if (s) ok[(size_t)slot[(size_t)j]] = 0;
    s = 1;
  }
  const uint8_t* codes = q.codes.data<uint8_t>();
  for (size_t k = 0; k < cand.size(); ++k) {
    if (!ok[k]) continue;
    const int64_t j = cand[k], grp = g.g_idx[(size_t)j];
    bool zero = true;
    for (int64_t r = 0; r < g.rows && zero; ++r) zero = g.value(codes[r * g.cols + j], r, grp) == 0.f;
    if (zero) out.push_back(j);
  }
  return out;
}

StorageBits linear_storage(const Linear& lin) {
  StorageBits t = lin.quant ? storage_bits(*lin.quant) : unquantized_bits(lin.weight);
  if (lin.bias.defined()) t.params += 16.0 * (double)lin.bias.numel();  // e.g. added by bias correction
  return t;
}

StorageBits model_storage(const Model& m) {
  StorageBits t;
  for (int l = 0; l < m.n_blocks(); ++l) {
    for (const Linear& lin : m.block(l).linears) t += linear_storage(lin);
    m.release_block(l);
  }
  return t;
}

}  // namespace qf
