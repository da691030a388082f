// qforge — realized storage of a quantized model: bits per weight including the overhead of
// scales, zeros, bit-depth side information, row-cluster indices and outliers (the honest rate
// the CVXQ evidence compares at; codes-only rates flatter small groups).
//
// Accounting (per quantized linear, the deployable convention of GPTQ/GGUF/CVXQ):
//   codes     Σ over groups of bits × weights (0-bit groups store no codes);
//   params    32 bits (fp16 scale + fp16 zero/offset) per (row group, column group); 16 for a
//             0-bit group (its median only) and for a symmetric uniform grid (its zero is fixed
//             by its bits: the scale alone is stored, as GGUF Q4_0/Q8_0 do);
//   side      4 bits per group when bit depths vary (0..8), plus ⌈log2 nrowgroups⌉ per row when
//             rows are clustered;
//   outliers  48 bits per entry (fp16 value + 16-bit row and column indices, COO); a column
//             outlier — an entry in every row of an input column whose codes all decode to 0
//             (OWQ's weak columns, docs/methods.md#owq-storage) — is a dense fp16 column: 16 bits
//             per row + a 16-bit column index, and that column's codes are not counted;
//   transform the input/output transforms as the qforge format keeps them (methods.md#transforms):
//             32 bits per permutation or diagonal entry, 64 per Hadamard seed, 32·n² per dense matrix;
// linears without codes ("unquantized") count what they hold: 16 bits per weight when stored as
// f16/bf16 or when every f32 value is exactly representable in f16 (or bf16), else 32 (f32);
// a bias adds 16 bits per output to params.
#pragma once
#include <cstdint>
#include <vector>

#include "model/model.h"

namespace qf {

struct StorageBits {
  double codes = 0, params = 0, side = 0, outliers = 0, transform = 0, unquantized = 0;
  int64_t weights = 0;
  int64_t pruned = 0;  // weights in 0-bit groups
  int64_t unq_f16 = 0, unq_bf16 = 0, unq_f32 = 0;  // weights of unquantized linears by the dtype counted
  double total() const { return codes + params + side + outliers + transform + unquantized; }
  // "none", "f16", "bf16", "f32", or "mixed" (unquantized linears of several dtypes).
  const char* unquantized_dtype() const;
  double per_weight() const { return weights ? total() / (double)weights : 0.0; }
  StorageBits& operator+=(const StorageBits& o);
};

StorageBits storage_bits(const QuantizedLinear& q);
// The column outliers of q (uniform grids): input columns holding exactly one outlier in every row
// and codes that decode to 0 in every row, increasing.
std::vector<int64_t> column_outliers(const QuantizedLinear& q);
// An unquantized weight: 16 bits per weight if it is (or is exactly representable as) f16 or bf16, else 32.
StorageBits unquantized_bits(const Tensor& weight);
// One block linear as model_storage counts it: its codes or its unquantized weight, plus its bias.
StorageBits linear_storage(const Linear& lin);
// Every block linear of the model (not the embedding, norms or classifier).
StorageBits model_storage(const Model& m);

}  // namespace qf
