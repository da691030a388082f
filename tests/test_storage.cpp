// Realized storage accounting (storage.h) against hand counts: per-channel and grouped uniform
// grids, row clusters with mixed bits and pruned groups, outliers, unquantized linears and biases.
#include <string>
#include <doctest/doctest.h>

#include "quant/grid.h"
#include "core/rng.h"
#include "quant/storage.h"
#include "tiny_model.h"

using namespace qf;

static Tensor random_weight(uint64_t seed, int64_t r, int64_t c) {
  Rng rng(seed);
  return qf::test::randn_tensor(rng, {r, c}, 1.0);
}

TEST_CASE("storage_bits: uniform grids are bits + 32 bits per (row, group)") {
  const Tensor W = random_weight(1, 6, 40);
  GridSpec s;
  s.bits = 3;
  QuantizedLinear q = quantize_to_grid(W, grid_fit(W, s));
  StorageBits b = storage_bits(q);
  CHECK(b.weights == 240);
  CHECK(b.codes == 720);
  CHECK(b.params == 6 * 32);
  CHECK(b.side == 0);
  CHECK(b.per_weight() == doctest::Approx(3 + 32.0 / 40));
  s.group = 16;  // groups of 16, 16, 8 columns
  q = quantize_to_grid(W, grid_fit(W, s));
  b = storage_bits(q);
  CHECK(b.params == 6 * 3 * 32);
  CHECK(b.per_weight() == doctest::Approx(3 + 6 * 3 * 32.0 / 240));
  // symmetric: the zero is fixed by the bits, only the fp16 scale is stored (Q4_0 g32: 4.5 bits)
  s.sym = true;
  s.bits = 4;
  s.group = 32;
  const Tensor W64 = random_weight(2, 4, 64);
  b = storage_bits(quantize_to_grid(W64, grid_fit(W64, s)));
  CHECK(b.params == 4 * 2 * 16);
  CHECK(b.per_weight() == doctest::Approx(4.5));
  s.float_zero = true;  // decoupleQ-style free (s, z): both stored
  b = storage_bits(quantize_to_grid(W64, grid_fit(W64, s)));
  CHECK(b.params == 4 * 2 * 32);
  s.float_zero = false;
  s.sym = false;
  s.bits = 3;
  s.group = 16;
  // outliers: 48 bits each (COO)
  q.outliers.row = {0, 4};
  q.outliers.col = {3, 7};
  q.outliers.val = {1.f, -2.f};
  CHECK(storage_bits(q).outliers == 2 * 48);
}

TEST_CASE("storage_bits: row clusters × columns with mixed bits and pruned groups") {
  const Tensor W = random_weight(2, 5, 3);
  GridSpec s;
  s.group = 1;
  s.row_group = {0, 1, 2, 1, 0};  // clusters of 2, 2, 1 rows
  s.nrowgroups = 3;
  s.group_bits = {2, 0, 4, 3, 3, 1, 0, 8, 2};  // [cluster, column]
  const QuantizedLinear q = quantize_to_grid(W, grid_fit(W, s));
  const StorageBits b = storage_bits(q);
  const int rows_in[3] = {2, 2, 1};
  double codes = 0, params = 0;
  int64_t pruned = 0;
  for (int k = 0; k < 3; ++k)
    for (int c = 0; c < 3; ++c) {
      const int bits = s.group_bits[(size_t)(k * 3 + c)];
      codes += bits * rows_in[k];
      params += bits == 0 ? 16 : 32;
      if (bits == 0) pruned += rows_in[k];
    }
  CHECK(b.codes == codes);
  CHECK(b.params == params);
  CHECK(b.pruned == pruned);
  CHECK(b.side == 9 * 4 + 5 * 2);  // 4-bit depth per group, ⌈log2 3⌉ = 2 bits of cluster index per row
}

TEST_CASE("model_storage: quantized linears, unquantized ones by what they hold, biases") {
  Model m = qf::test::tiny_model(3);
  const StorageBits fp = model_storage(m);
  int64_t n = 0;
  for (const Block& b : m.blocks)
    for (const Linear& l : b.linears) n += l.weight.numel();
  CHECK(fp.weights == n);
  // Random f32 weights are not f16-representable: 32 bits each, not the 16 an "fp16" label claimed.
  CHECK(fp.per_weight() == doctest::Approx(32.0));
  CHECK(std::string(fp.unquantized_dtype()) == "f32");
  Linear& q = m.blocks[1].linears[4];
  GridSpec s;
  s.bits = 2;
  q.quant = std::make_shared<QuantizedLinear>(quantize_to_grid(q.weight, grid_fit(q.weight, s)));
  q.bias = Tensor::zeros({q.out_features()});
  const StorageBits b = model_storage(m);
  const double want = 32.0 * (n - q.weight.numel()) + 2.0 * q.weight.numel() + 32.0 * q.out_features() + 16.0 * q.out_features();
  CHECK(b.total() == doctest::Approx(want));
  // An f32 weight whose values are all exact in f16 (e.g. loaded from an F16 file) counts 16 bits,
  // one stored as bf16 too; both f16 and f32 linears present: "mixed".
  Linear& h = m.blocks[0].linears[0];
  h.weight = h.weight.to(DType::F16).to(DType::F32);
  const StorageBits hs = unquantized_bits(h.weight);
  CHECK(hs.unquantized == 16.0 * (double)h.weight.numel());
  CHECK(std::string(hs.unquantized_dtype()) == "f16");
  const StorageBits bs = unquantized_bits(m.blocks[0].linears[1].weight.to(DType::BF16));
  CHECK(bs.unquantized == 16.0 * (double)bs.weights);
  CHECK(std::string(bs.unquantized_dtype()) == "bf16");
  CHECK(std::string(model_storage(m).unquantized_dtype()) == "mixed");
  CHECK(model_storage(m).total() == doctest::Approx(want - 16.0 * (double)h.weight.numel()));
}
