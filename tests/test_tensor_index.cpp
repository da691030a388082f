// engine/core/tensor_index: reductions (var, std, cumsum), sorting and selection, constructors and
// indexing — hand-computed values, strided inputs, NaN and ties, errors, and the same bits for any
// thread count.
#include <doctest/doctest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>

#include "core/rng.h"
#include "core/tensor_index.h"

using namespace qf;

static const float kNaN = std::numeric_limits<float>::quiet_NaN();

static Tensor vec(std::vector<float> v) { return Tensor::from_data({(int64_t)v.size()}, v); }
static std::vector<int32_t> ints(const Tensor& t) {
  std::vector<int32_t> r;
  for (float v : t.to_vector()) r.push_back((int32_t)v);
  return r;
}
static bool same_bits(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && a.dtype() == b.dtype() &&
         std::memcmp(a.raw(), b.raw(), (size_t)a.numel() * dtype_size(a.dtype())) == 0;
}
static Tensor randn(Rng& g, const Shape& s) {
  Tensor t = Tensor::empty(s);
  for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = (float)g.normal();
  return t;
}

TEST_CASE("var and std: two f64 passes, unbiased or not, NaN for one value") {
  const Tensor a = Tensor::from_data({2, 4}, {1, 2, 3, 4, 2, 2, 2, 2});
  CHECK(var_dim(a, 1).to_vector() == std::vector<float>{(float)(5.0 / 3.0), 0.f});
  CHECK(var_dim(a, 1, false, false).to_vector() == std::vector<float>{1.25f, 0.f});
  CHECK(std_dim(a, 1, true, false).shape() == Shape{2, 1});
  CHECK(std_dim(a, 1, true, false).to_vector()[0] == (float)std::sqrt(1.25));
  CHECK(var_dim(a.t(), 0).to_vector() == var_dim(a, 1).to_vector());  // strided
  CHECK(var_all(a) == doctest::Approx(5.5 / 7.0).epsilon(1e-15));
  CHECK(std::isnan(var_dim(Tensor::from_data({1, 1}, {3}), 1).to_vector()[0]));
  CHECK(var_dim(vec({1e4f + 1, 1e4f + 2, 1e4f + 3}), 0).item() == 1.f);
  CHECK_THROWS_WITH_AS(var_dim(Tensor::empty({2, 0}), 1), "var: dimension 2 of shape [2, 0] is empty", Error);
  CHECK_THROWS_WITH_AS(var_all(Tensor::empty({0})), "var: empty tensor", Error);
}

TEST_CASE("cumsum and cumprod along any dim of a strided tensor") {
  const Tensor a = Tensor::from_data({2, 3}, {1, 2, 3, 4, 5, 6});
  CHECK(cumsum(a, 1).to_vector() == std::vector<float>{1, 3, 6, 4, 9, 15});
  CHECK(cumsum(a, 0).to_vector() == std::vector<float>{1, 2, 3, 5, 7, 9});
  CHECK(cumsum(a.t(), 1).to_vector() == std::vector<float>{1, 5, 2, 7, 3, 9});
  CHECK(cumprod(a, 1).to_vector() == std::vector<float>{1, 2, 6, 4, 20, 120});
  CHECK(cumsum(vec({1e8f, 1, -1e8f}), 0).to_vector() == std::vector<float>{1e8f, (float)(1e8 + 1), 1});
  CHECK(cumsum(Tensor::empty({3, 0}), 1).shape() == Shape{3, 0});
}

TEST_CASE("sort: stable, NaN largest, descending, strided") {
  ValuesIndices r = sort(vec({3, 1, 2, 1, kNaN, 0}), 0);
  std::vector<float> v = r.values.to_vector();
  CHECK(std::vector<float>(v.begin(), v.end() - 1) == std::vector<float>{0, 1, 1, 2, 3});
  CHECK(std::isnan(v.back()));
  CHECK(ints(r.indices) == std::vector<int32_t>{5, 1, 3, 2, 0, 4});
  r = sort(vec({3, 1, 2, 1, kNaN, 0}), 0, true);
  CHECK(ints(r.indices) == std::vector<int32_t>{4, 0, 2, 1, 3, 5});
  const Tensor m = Tensor::from_data({2, 3}, {5, 1, 4, 2, 6, 0});
  r = sort(m.t(), 1);  // [3, 2] view: rows (5,2), (1,6), (4,0)
  CHECK(r.values.to_vector() == std::vector<float>{2, 5, 1, 6, 0, 4});
  CHECK(ints(r.indices) == std::vector<int32_t>{1, 0, 0, 1, 1, 0});
  r = sort(m, 0, true);
  CHECK(r.values.to_vector() == std::vector<float>{5, 6, 4, 2, 1, 0});
  CHECK(r.indices.dtype() == DType::I32);
}

TEST_CASE("topk, kthvalue, median, quantile") {
  ValuesIndices r = topk(vec({1, 5, 3, 5, kNaN, 2}), 3, 0);
  CHECK(std::isnan(r.values.to_vector()[0]));
  CHECK(ints(r.indices) == std::vector<int32_t>{4, 1, 3});
  r = topk(vec({1, 5, 3, 5, 0, 2}), 3, 0, true, false);
  CHECK(ints(r.indices) == std::vector<int32_t>{1, 2, 3});
  r = topk(vec({1, 5, 3, 5, 0, 2}), 2, 0, false);
  CHECK(r.values.to_vector() == std::vector<float>{0, 1});
  CHECK_THROWS_WITH_AS(topk(vec({1, 2}), 3, 0), "topk: k = 3 out of range for dimension 1 of size 2 (valid: 0..2)", Error);
  r = kthvalue(Tensor::from_data({1, 4}, {5, 1, 4, 1}), 2, 1);
  CHECK(r.values.to_vector() == std::vector<float>{1});
  CHECK(ints(r.indices) == std::vector<int32_t>{3});
  CHECK_THROWS_WITH_AS(kthvalue(vec({1, 2}), 0, 0), "kthvalue: k = 0 out of range for dimension 1 of size 2 (valid: 1..2)",
                       Error);
  r = median_dim(Tensor::from_data({2, 4}, {4, 1, 3, 2, 1, 1, 1, 0}), 1);
  CHECK(r.values.to_vector() == std::vector<float>{2, 1});
  CHECK(ints(r.indices) == std::vector<int32_t>{3, 0});  // row 2: the first 1 in the stable order
  CHECK(median_all(vec({4, 1, 3, 2})) == 2);
  CHECK(std::isnan(median_all(vec({4, kNaN, 3}))));
  CHECK(quantile_all(vec({1, 2, 3, 4}), {0.5, 0.25, 0, 1}) == std::vector<double>{2.5, 1.75, 1, 4});
  CHECK(std::isnan(quantile_all(vec({1, kNaN}), {0.5})[0]));
  const Tensor q = quantile_dim(Tensor::from_data({2, 4}, {1, 2, 3, 4, 10, 20, 30, 40}), {0, 0.5, 1}, 1);
  CHECK(q.shape() == Shape{3, 2});
  CHECK(q.to_vector() == std::vector<float>{1, 10, 2.5, 25, 4, 40});
  CHECK_THROWS_WITH_AS(quantile_all(vec({1}), {1.5}), "quantile: probability 1.5 out of range (valid: 0..1)", Error);
}

TEST_CASE("the same bits on 1 and 2 threads (large inputs take the parallel path)") {
  Rng g(3);
  const Tensor big = randn(g, {384, 1024});
  big.f32()[5] = kNaN;
  const Tensor view = big.t();  // strided
  const int nt = omp_get_max_threads();
  std::vector<Tensor> out[2];
  for (int pass = 0; pass < 2; ++pass) {
    omp_set_num_threads(pass == 0 ? 1 : 2);
    out[pass] = {var_dim(big, 1),          std_dim(view, 1),           cumsum(view, 1),
                 cumprod(big, 0),          sort(big, 1).values,       sort(view, 1, true).indices,
                 topk(view, 7, 1).indices, topk(big, 9, 1, false, false).values,
                 kthvalue(big, 100, 1).indices, median_dim(view, 1).values, quantile_dim(big, {0.1, 0.9}, 1)};
  }
  omp_set_num_threads(nt);
  for (size_t i = 0; i < out[0].size(); ++i) {
    CAPTURE(i);
    CHECK(same_bits(out[0][i], out[1][i]));
  }
}

TEST_CASE("constructors: eye, arange (numpy lengths), linspace") {
  CHECK(eye(2, 3).to_vector() == std::vector<float>{1, 0, 0, 0, 1, 0});
  CHECK(arange_int(1, 11, 3).to_vector() == std::vector<float>{1, 4, 7, 10});
  CHECK(arange_int(5, 0, -2).to_vector() == std::vector<float>{5, 3, 1});
  CHECK(arange_int(3, 1, 1).numel() == 0);
  CHECK(arange(1, 1.3, 0.1).numel() == 4);  // numpy: ceil(0.30000000000000004 / 0.1)
  CHECK(arange(0, 0.3, 0.1).numel() == 3);
  CHECK(arange(0, 1, 0.25).to_vector() == std::vector<float>{0, 0.25, 0.5, 0.75});
  CHECK_THROWS_WITH_AS(arange_int(0, 5, 0), "arange: step must not be 0", Error);
  CHECK_THROWS_WITH_AS(arange_int(0, int64_t(1) << 40, 1), doctest::Contains("(at most 2^31)"), Error);
  CHECK_THROWS_WITH_AS(arange(0, INFINITY, 1), doctest::Contains("arguments must be finite"), Error);
  CHECK(linspace(0, 1, 5).to_vector() == std::vector<float>{0, 0.25, 0.5, 0.75, 1});
  CHECK(linspace(2, 3, 1).to_vector() == std::vector<float>{2});
  CHECK(linspace(2, 3, 0).numel() == 0);
}

TEST_CASE("randint and randperm are defined from Rng draws") {
  Rng a(11), b(11);
  const Tensor r = randint(a, -2, 2, {3, 4});
  CHECK(r.dtype() == DType::I32);
  for (int32_t v : ints(r)) CHECK(v == (int32_t)b.randint(-2, 2));
  Rng c(5), d(5);
  const Tensor p = randperm(c, 20);
  std::vector<int32_t> want(20);
  std::iota(want.begin(), want.end(), 0);
  for (int64_t i = 19; i >= 1; --i) std::swap(want[(size_t)i], want[(size_t)d.randint(0, i)]);
  CHECK(ints(p) == want);
  CHECK_THROWS_WITH_AS(randint(a, 0, int64_t(1) << 33, {1}), doctest::Contains("does not fit in i32"), Error);
}

TEST_CASE("cat and stack keep the dtype and take views") {
  const Tensor a = Tensor::from_data({2, 2}, {1, 2, 3, 4});
  CHECK(cat({a, a.t()}, 1).to_vector() == std::vector<float>{1, 2, 1, 3, 3, 4, 2, 4});
  CHECK(cat({a, Tensor::from_data({1, 2}, {5, 6})}, 0).shape() == Shape{3, 2});
  CHECK(cat({a.to(DType::I32), a.to(DType::I32)}, 0).dtype() == DType::I32);
  CHECK(stack({a, a.t()}, 2).to_vector() == std::vector<float>{1, 1, 2, 3, 3, 2, 4, 4});
  CHECK_THROWS_WITH_AS(cat({a, Tensor::empty({1, 3})}, 0),
                       "cat: tensor 2 has shape [1, 3], tensor 1 has [2, 2] (sizes must match except in dimension 1)", Error);
  CHECK_THROWS_WITH_AS(stack({a, a.to(DType::F16)}, 0), "stack: tensor 2 has dtype f16, tensor 1 has f32", Error);
}

TEST_CASE("indexing: index_select, gather, scatter, fills, permute, flip, inverse permutations") {
  const Tensor a = Tensor::from_data({2, 3}, {1, 2, 3, 4, 5, 6});
  CHECK(index_select(a, 1, vec({2, 0, 2})).to_vector() == std::vector<float>{3, 1, 3, 6, 4, 6});
  CHECK(index_select(a.t(), 0, vec({1}), 0).to_vector() == std::vector<float>{2, 5});
  CHECK(index_select(a, 0, vec({2}), 1).to_vector() == std::vector<float>{4, 5, 6});
  CHECK_THROWS_WITH_AS(index_select(a, 1, vec({3})), "index_select: index 3 out of range for dimension 2 of size 3 (valid: 0..2)",
                       Error);
  CHECK_THROWS_WITH_AS(index_select(a, 1, vec({0}), 1),
                       "index_select: index 0 out of range for dimension 2 of size 3 (valid: 1..3)", Error);
  CHECK(gather(a, 1, Tensor::from_data({2, 2}, {2, 0, 1, 1})).to_vector() == std::vector<float>{3, 1, 5, 5});
  Tensor z = Tensor::zeros({2, 4});
  scatter_(z, 1, Tensor::from_data({2, 2}, {0, 2, 3, 3}), Tensor::from_data({2, 3}, {10, 20, 99, 30, 40, 99}));
  CHECK(z.to_vector() == std::vector<float>{10, 0, 20, 0, 0, 0, 0, 40});
  Tensor s = Tensor::zeros({3});
  scatter_add_(s, 0, vec({0, 2, 0, 0}), vec({1, 2, 3, 4}));
  CHECK(s.to_vector() == std::vector<float>{8, 0, 2});
  Tensor m = a.clone();
  masked_fill_(m, Tensor::from_data({2, 3}, {1, 0, 0, 0, kNaN, 0}), -1);
  CHECK(m.to_vector() == std::vector<float>{-1, 2, 3, 4, -1, 6});
  index_fill_(m, 1, vec({2}), 0);
  CHECK(m.to_vector() == std::vector<float>{-1, 2, 0, 4, -1, 0});
  Tensor x = Tensor::empty({2, 3, 4});
  for (int64_t i = 0; i < x.numel(); ++i) x.f32()[i] = (float)i;
  const Tensor p = permute(x, {2, 0, 1});
  CHECK(p.shape() == Shape{4, 2, 3});
  CHECK(p.same_storage(x));
  CHECK(p.get({3, 1, 2}) == x.get({1, 2, 3}));
  CHECK_THROWS_WITH_AS(permute(x, {0, 0, 1}), "permute: dimension 1 repeated (expected a permutation of 1..3)", Error);
  CHECK(flip(a, 1).to_vector() == std::vector<float>{3, 2, 1, 6, 5, 4});
  CHECK(flip(a.t(), 0).to_vector() == std::vector<float>{3, 6, 2, 5, 1, 4});
  CHECK(ints(invert_permutation(vec({2, 0, 1}))) == std::vector<int32_t>{1, 2, 0});
  CHECK(ints(invert_permutation(vec({3, 1, 2}), 1)) == std::vector<int32_t>{2, 3, 1});
  CHECK_THROWS_WITH_AS(invert_permutation(vec({0, 0})), "invert_permutation: value 0 appears at positions 0 and 1 (not a permutation)",
                       Error);
  CHECK_THROWS_WITH_AS(index_values(vec({0.5f}), "gather"), doctest::Contains("gather: the index tensor holds a non-integer value 0.5"),
                       Error);
}
