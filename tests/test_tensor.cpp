// Tensor core: views share storage, strides, copies, dtype conversions (exact values),
// Eigen maps, and clear errors.
#include <doctest/doctest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>

#include "core/half.h"
#include "core/rng.h"
#include "core/tensor.h"

using namespace qf;

static Tensor iota(const Shape& s) {
  Tensor t = Tensor::empty(s);
  for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = (float)i;
  return t;
}

TEST_CASE("row and column slices are views that share storage") {
  Tensor a = iota({4, 5});
  Tensor r = a.rows(1, 2);
  Tensor c = a.cols(3, 2);
  CHECK(r.shape() == Shape{2, 5});
  CHECK(c.shape() == Shape{4, 2});
  CHECK(r.same_storage(a));
  CHECK(!c.is_contiguous());
  CHECK(r.is_contiguous());
  CHECK(c.get({2, 1}) == 14.f);  // a[2][4]
  c.set({0, 0}, -1.f);
  CHECK(a.get({0, 3}) == -1.f);
  r.fill_(7.f);
  CHECK(a.get({1, 0}) == 7.f);
  CHECK(a.get({2, 4}) == 7.f);
  CHECK(a.get({3, 0}) == 15.f);
  // a column of a row slice
  Tensor rc = a.rows(2, 2).cols(1, 1);
  rc.fill_(0.5f);
  CHECK(a.get({3, 1}) == 0.5f);
  CHECK(a.get({1, 1}) == 7.f);
}

TEST_CASE("select, transpose, view, contiguous") {
  Tensor a = iota({2, 3, 4});
  Tensor s = a.select(1, 2);  // [2, 4]
  CHECK(s.shape() == Shape{2, 4});
  CHECK(s.get({1, 3}) == 23.f);
  Tensor t = a.select(0, 1).t();  // [4, 3]
  CHECK(t.get({3, 2}) == 23.f);
  CHECK(!t.is_contiguous());
  Tensor tc = t.contiguous();
  CHECK(tc.is_contiguous());
  CHECK(!tc.same_storage(a));
  CHECK(tc.to_vector() == std::vector<float>{12, 16, 20, 13, 17, 21, 14, 18, 22, 15, 19, 23});
  Tensor v = a.view({6, -1});
  CHECK(v.shape() == Shape{6, 4});
  CHECK(v.same_storage(a));
  CHECK(v.get({5, 3}) == 23.f);
  CHECK_THROWS_WITH_AS(t.view({12}), doctest::Contains("not contiguous"), Error);
  CHECK_THROWS_WITH_AS(a.view({5, -1}), doctest::Contains("cannot view"), Error);
}

TEST_CASE("clone and copy_ are deep; copy_ between overlapping views is correct") {
  Tensor a = iota({3, 3});
  Tensor b = a.clone();
  b.set({0, 0}, 100.f);
  CHECK(a.get({0, 0}) == 0.f);
  // copy the transpose into itself: a := aᵀ (overlap through the same storage)
  a.copy_(a.t());
  CHECK(a.to_vector() == std::vector<float>{0, 3, 6, 1, 4, 7, 2, 5, 8});
  CHECK_THROWS_WITH_AS(a.copy_(iota({2, 3})), doctest::Contains("shape mismatch"), Error);
}

TEST_CASE("f16 and bf16 conversions round to nearest even, exactly") {
  CHECK(f16_to_f32(f32_to_f16(1.0f / 3.0f)) == 0.333251953125f);
  CHECK(f16_to_f32(f32_to_f16(65504.f)) == 65504.f);
  CHECK(std::isinf(f16_to_f32(f32_to_f16(65520.f))));  // halfway to 65536 rounds to even = inf
  CHECK(f16_to_f32(f32_to_f16(65519.f)) == 65504.f);
  CHECK(f16_to_f32(f32_to_f16(5.9604644775390625e-8f)) == 5.9604644775390625e-8f);  // smallest subnormal
  CHECK(f16_to_f32(f32_to_f16(2.98e-8f)) == 0.f);                                   // below half of it
  CHECK(f16_to_f32(f32_to_f16(1.00048828125f)) == 1.0f);        // 1 + ulp/2: tie -> even (1.0)
  CHECK(f16_to_f32(f32_to_f16(1.00146484375f)) == 1.001953125f); // 1 + 3·ulp/2: tie -> even (1 + 2 ulp)
  CHECK(f16_to_f32(f32_to_f16(-2.5f)) == -2.5f);
  CHECK(std::isnan(f16_to_f32(f32_to_f16(std::numeric_limits<float>::quiet_NaN()))));
  CHECK(bf16_to_f32(f32_to_bf16(1.0f / 3.0f)) == 0.333984375f);
  CHECK(bf16_to_f32(f32_to_bf16(1.00390625f)) == 1.0f);  // tie -> even
  CHECK(bf16_to_f32(f32_to_bf16(1.01171875f)) == 1.015625f);  // tie -> even (up)
  // every f16 bit pattern survives f16 -> f32 -> f16 (except NaN payloads)
  int bad = 0;
  for (uint32_t h = 0; h < 65536; ++h) {
    if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff)) continue;
    if (f32_to_f16(f16_to_f32((uint16_t)h)) != h) ++bad;
  }
  CHECK(bad == 0);
}

TEST_CASE("dtype conversion of tensors: storage types, saturation, NaN refused") {
  Tensor a = Tensor::from_data({5}, {-300.f, -1.5f, 0.5f, 2.5f, 300.f});
  CHECK(a.to(DType::I8).to_vector() == std::vector<float>{-128, -2, 0, 2, 127});
  CHECK(a.to(DType::U8).to_vector() == std::vector<float>{0, 0, 0, 2, 255});
  CHECK(a.to(DType::I32).to_vector() == std::vector<float>{-300, -2, 0, 2, 300});
  Tensor h = a.to(DType::F16);
  CHECK(h.dtype() == DType::F16);
  CHECK(h.to(DType::F32).to_vector() == a.to_vector());
  CHECK(dtype_size(DType::BF16) == 2);
  Tensor n = Tensor::from_data({1}, {std::nanf("")});
  CHECK_THROWS_WITH_AS(n.to(DType::I8), doctest::Contains("NaN"), Error);
  CHECK_THROWS_WITH_AS(dtype_from_name("f64"), doctest::Contains("unknown dtype 'f64'"), Error);
  // copy_ into a strided f16 view converts element-wise
  Tensor big = Tensor::zeros({2, 4}, DType::F16);
  big.cols(1, 2).copy_(Tensor::from_data({2, 2}, {1, 2, 3, 4}));
  CHECK(big.to_vector() == std::vector<float>{0, 1, 2, 0, 0, 3, 4, 0});
  CHECK_THROWS_WITH_AS(big.f32(), doctest::Contains("dtype f16"), Error);
}

TEST_CASE("Eigen maps see strides and write through") {
  Tensor a = iota({3, 4});
  auto m = a.cols(1, 2).mat();
  CHECK(m.rows() == 3);
  CHECK(m.cols() == 2);
  CHECK(m(2, 1) == 10.f);
  m(0, 0) = 42.f;
  CHECK(a.get({0, 1}) == 42.f);
  auto mt = a.t().cmat();  // transposed view: 4x3
  CHECK(mt(3, 2) == 11.f);
  MatRM prod = a.cmat() * a.t().cmat();  // 3x3 Gram matrix
  double want = 0;
  for (int j = 0; j < 4; ++j) want += (double)a.get({1, j}) * a.get({2, j});
  CHECK(prod(1, 2) == doctest::Approx(want));
}

TEST_CASE("bounds and shape errors name what is wrong") {
  Tensor a = iota({2, 3});
  CHECK_THROWS_WITH_AS(a.get({2, 0}), doctest::Contains("index 2 out of bounds for dimension 0 of size 2"), Error);
  CHECK_THROWS_WITH_AS(a.get({0}), doctest::Contains("expected 2 indices"), Error);
  CHECK_THROWS_WITH_AS(a.narrow(1, 2, 2), doctest::Contains("out of bounds"), Error);
  CHECK_THROWS_WITH_AS(a.select(2, 0), doctest::Contains("dimension 2 out of range"), Error);
  CHECK_THROWS_WITH_AS(Tensor::from_data({2, 2}, {1, 2, 3}), doctest::Contains("needs 4 values"), Error);
  CHECK_THROWS_WITH_AS(Tensor::empty({-1, 2}), doctest::Contains("negative"), Error);
  CHECK_THROWS_WITH_AS(Tensor::empty({1ll << 40, 1ll << 30}), doctest::Contains("too many elements"), Error);
  CHECK_THROWS_WITH_AS(a.item(), doctest::Contains("has 6 elements"), Error);
  Tensor u;
  CHECK_THROWS_WITH_AS(u.clone(), doctest::Contains("undefined"), Error);
  auto st = Storage::alloc(16);
  CHECK_THROWS_WITH_AS(Tensor::wrap(st, DType::F32, {5}), doctest::Contains("exceeds its storage"), Error);
}

#include "core/tensor_ops.h"

TEST_CASE("tensor_ops: elementwise on strided views, aliasing, reductions, matmul") {
  Tensor a = iota({2, 3});
  Tensor c = a.cols(1, 2);  // {1,2},{4,5}
  apply_(c, BinOp::Mul, 2.f);
  CHECK(a.to_vector() == std::vector<float>{0, 2, 4, 3, 8, 10});
  apply_(c, BinOp::Add, Tensor::from_data({2, 2}, {1, 1, 1, 1}), -3.f);
  CHECK(a.to_vector() == std::vector<float>{0, -1, 1, 3, 5, 7});
  Tensor sq = iota({2, 2});
  apply_(sq, BinOp::Sub, sq.t());  // aliasing: x - xᵀ
  CHECK(sq.to_vector() == std::vector<float>{0, -1, 1, 0});
  CHECK_THROWS_WITH_AS(apply_(a, BinOp::Div, iota({3, 2})), doctest::Contains("div: shape mismatch [2, 3] vs [3, 2]"), Error);
  Tensor h = a.to(DType::F16);
  CHECK_THROWS_WITH_AS(apply_(h, BinOp::Add, 1.f), doctest::Contains("dtype f16"), Error);
  TensorStats s = tensor_stats(Tensor::from_data({2}, {3, -4}));
  CHECK(s.norm() == 5.0);
  CHECK(s.mean() == -0.5);
  CHECK(s.absmax == 4.0);
  CHECK(s.min == -4.f);
  Tensor m = matmul(Tensor::from_data({2, 3}, {1, 2, 3, 4, 5, 6}), iota({3, 2}).t().t());
  CHECK(m.to_vector() == std::vector<float>{16, 22, 34, 49});
  CHECK_THROWS_WITH_AS(matmul(iota({2, 3}), iota({2, 3})), doctest::Contains("cannot multiply [2, 3] by [2, 3]"), Error);
}

// ---- reductions along a dimension (tensor_ops.h) ----
// f64 reference by element access: fold along d at every output position, row-major.
static std::vector<double> ref_reduce(const Tensor& t, int d, const std::function<double(const std::vector<double>&)>& op) {
  Shape os = t.shape();
  os.erase(os.begin() + d);
  int64_t n = 1;
  for (int64_t s : os) n *= s;
  std::vector<double> out;
  std::vector<int64_t> oi(os.size(), 0);
  for (int64_t k = 0; k < n; ++k) {
    std::vector<double> vals;
    for (int64_t i = 0; i < t.size(d); ++i) {
      std::vector<int64_t> idx(oi);
      idx.insert(idx.begin() + d, i);
      vals.push_back(t.get(idx.data(), (int)idx.size()));
    }
    out.push_back(op(vals));
    for (int q = (int)os.size() - 1; q >= 0; --q) {
      if (++oi[q] < os[q]) break;
      oi[q] = 0;
    }
  }
  return out;
}

static std::vector<float> rounded(const std::vector<double>& v) { return std::vector<float>(v.begin(), v.end()); }

TEST_CASE("reductions along a dim match an f64 reference on strided views, bit for bit") {
  Rng g(5);
  Tensor base = Tensor::empty({4, 5, 6});
  for (int64_t i = 0; i < base.numel(); ++i) base.f32()[i] = (float)g.normal();
  const Tensor views[] = {base, base.transpose(0, 2), base.narrow(1, 1, 3), base.select(2, 4), base.to(DType::F16)};
  for (const Tensor& t : views) {
    for (int d = 0; d < t.dim(); ++d) {
      CAPTURE(shape_str(t.shape()));
      CAPTURE(d);
      auto sum = [](const std::vector<double>& v) { double s = 0; for (double x : v) s += x; return s; };
      // Same order along d, one f64 accumulator, one rounding: exactly the reference.
      CHECK(sum_dim(t, d).to_vector() == rounded(ref_reduce(t, d, sum)));
      CHECK(mean_dim(t, d).to_vector() == rounded(ref_reduce(t, d, [&](const std::vector<double>& v) { return sum(v) / (double)v.size(); })));
      CHECK(norm_dim(t, 2, d).to_vector() == rounded(ref_reduce(t, d, [](const std::vector<double>& v) {
              double s = 0; for (double x : v) s += x * x; return std::sqrt(s); })));
      CHECK(norm_dim(t, 3, d).to_vector() == rounded(ref_reduce(t, d, [](const std::vector<double>& v) {
              double s = 0; for (double x : v) s += std::pow(std::fabs(x), 3.0); return std::pow(s, 1.0 / 3); })));
      const ArgExtremum mx = max_dim(t, d), mn = min_dim(t, d);
      CHECK(mx.indices.dtype() == DType::I32);
      CHECK(mx.values.to_vector() == rounded(ref_reduce(t, d, [](const std::vector<double>& v) { return *std::max_element(v.begin(), v.end()); })));
      CHECK(mx.indices.to_vector() == rounded(ref_reduce(t, d, [](const std::vector<double>& v) { return (double)(std::max_element(v.begin(), v.end()) - v.begin()); })));
      CHECK(mn.indices.to_vector() == rounded(ref_reduce(t, d, [](const std::vector<double>& v) { return (double)(std::min_element(v.begin(), v.end()) - v.begin()); })));
      Shape kept = t.shape();
      kept[d] = 1;
      CHECK(sum_dim(t, d, true).shape() == kept);
      CHECK(max_dim(t, d, true).indices.shape() == kept);
    }
  }
}

TEST_CASE("reductions along a dim do not depend on the thread count") {
  Rng g(9);
  Tensor t = Tensor::empty({517, 1031});
  for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = (float)g.normal();
  const int saved = omp_get_max_threads();
  std::vector<std::vector<float>> runs[2];
  for (int r = 0; r < 2; ++r) {
    omp_set_num_threads(r == 0 ? 1 : 7);
    for (int d = 0; d < 2; ++d) {
      runs[r].push_back(sum_dim(t, d).to_vector());
      runs[r].push_back(norm_dim(t.t(), 2, d).to_vector());
      runs[r].push_back(max_dim(t, d).indices.to_vector());
    }
  }
  omp_set_num_threads(saved);
  CHECK(runs[0] == runs[1]);
}

TEST_CASE("reductions along a dim: ties, NaN, empty dims, errors") {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const Tensor ties = Tensor::from_data({2, 3}, {1, 3, 3, 2, 1, 1});
  CHECK(max_dim(ties, 1).indices.to_vector() == std::vector<float>{1, 0});  // first index
  CHECK(min_dim(ties, 1).indices.to_vector() == std::vector<float>{0, 1});
  const Tensor n = Tensor::from_data({2, 3}, {1, nan, 5, 2, 3, nan});
  const ArgExtremum mx = max_dim(n, 1);
  CHECK(std::isnan(mx.values.to_vector()[0]));
  CHECK(std::isnan(mx.values.to_vector()[1]));
  CHECK(mx.indices.to_vector() == std::vector<float>{1, 2});
  CHECK(std::isnan(tensor_stats(n).max));  // the old code skipped NaN here (max 5)
  CHECK(std::isnan(tensor_stats(n).min));
  const Tensor e = Tensor::empty({3, 0});
  CHECK(sum_dim(e, 1).to_vector() == std::vector<float>{0, 0, 0});
  CHECK(norm_dim(e, 2, 1).to_vector() == std::vector<float>{0, 0, 0});
  CHECK_THROWS_WITH_AS(mean_dim(e, 1), doctest::Contains("mean: dimension 2 of shape [3, 0] is empty"), Error);
  CHECK_THROWS_WITH_AS(max_dim(e, 1), doctest::Contains("max: dimension 2 of shape [3, 0] is empty"), Error);
  CHECK_THROWS_WITH_AS(sum_dim(ties, 2), doctest::Contains("sum: dimension 3 out of range for a 2-d tensor"), Error);
  CHECK_THROWS_WITH_AS(norm_dim(ties, 0, 0), doctest::Contains("norm: p must be > 0"), Error);
  CHECK(norm_all(ties, 1) == 11.0);
  CHECK(norm_all(ties, std::numeric_limits<double>::infinity()) == 3.0);
  CHECK(norm_dim(Tensor::from_data({3}, {1, -4, 2}), std::numeric_limits<double>::infinity(), 0).item() == 4.f);
}
