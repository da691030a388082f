#include "storage.h"

#include <algorithm>
#include <cmath>

namespace qf {

StorageBits& StorageBits::operator+=(const StorageBits& o) {
  codes += o.codes;
  params += o.params;
  side += o.side;
  outliers += o.outliers;
  fp16 += o.fp16;
  weights += o.weights;
  pruned += o.pruned;
  return *this;
}

StorageBits storage_bits(const QuantizedLinear& q) {
  const Grid& g = q.grid;
  StorageBits s;
  s.weights = g.rows * g.cols;
  const int64_t nrg = g.nrowgroups(), G = g.group_size();
  std::vector<int64_t> rows_in((size_t)nrg, g.spec.row_group.empty() ? 1 : 0);
  for (int32_t k : g.spec.row_group) ++rows_in[(size_t)k];
  for (int64_t k = 0; k < nrg; ++k)
    for (int64_t c = 0; c < g.ngroups; ++c) {
      const int64_t ncols = std::min(G, g.cols - c * G), n = rows_in[(size_t)k] * ncols;
      const int bits = g.spec.group_bits.empty() ? g.spec.bits : g.spec.group_bits[(size_t)(k * g.ngroups + c)];
      s.codes += (double)bits * n;
      s.params += bits == 0 ? 16 : 32;
      if (bits == 0) s.pruned += n;
      if (g.spec.mixed_bits()) s.side += 4;
    }
  if (!g.spec.row_group.empty() && nrg > 1) s.side += (double)g.rows * std::ceil(std::log2((double)nrg));
  s.outliers = 48.0 * (double)q.outliers.nnz();
  return s;
}

StorageBits model_storage(const Model& m) {
  StorageBits t;
  for (int l = 0; l < m.n_blocks(); ++l) {
    for (const Linear& lin : m.block(l).linears) {
      if (lin.quant) {
        t += storage_bits(*lin.quant);
      } else {
        StorageBits f;
        f.weights = lin.weight.numel();
        f.fp16 = 16.0 * (double)f.weights;
        t += f;
      }
      if (lin.bias.defined()) t.params += 16.0 * (double)lin.bias.numel();  // e.g. added by bias correction
    }
    m.release_block(l);
  }
  return t;
}

}  // namespace qf
