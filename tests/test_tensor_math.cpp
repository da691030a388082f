// Elementwise math (engine/core/tensor_math): every op against an f64 reference computed element
// by element with explicit broadcast indexing; broadcasting edge cases, non-contiguous views,
// NaN/inf, empty tensors, dtypes, in-place aliasing, thread-count independence and named errors.
#include <doctest/doctest.h>
#include <omp.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <limits>

#include "core/rng.h"
#include "core/tensor.h"
#include "core/tensor_math.h"

using namespace qf;

static Tensor randn(const Shape& s, uint64_t seed) {
  Rng r(seed);
  Tensor t = Tensor::empty(s);
  for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = (float)r.normal();
  return t;
}

// The element of `t` (any shape) at output multi-index `idx` of `out` under numpy broadcasting.
static double bget(const Tensor& t, const Shape& out, const std::vector<int64_t>& idx) {
  std::vector<int64_t> ti(t.dim());
  for (int i = 0; i < t.dim(); ++i) {
    const int od = (int)out.size() - t.dim() + i;
    ti[i] = t.size(i) == 1 ? 0 : idx[od];
  }
  return t.get(ti.data(), (int)ti.size());
}

// Calls fn(idx) over every multi-index of `s` in row-major order.
static void each(const Shape& s, const std::function<void(const std::vector<int64_t>&)>& fn) {
  int64_t n = 1;
  for (int64_t x : s) n *= x;
  std::vector<int64_t> idx(s.size(), 0);
  for (int64_t k = 0; k < n; ++k) {
    fn(idx);
    for (int d = (int)s.size() - 1; d >= 0; --d) {
      if (++idx[d] < s[d]) break;
      idx[d] = 0;
    }
  }
}

static bool same_float(double want, float got, double rtol) {
  if (std::isnan(want)) return std::isnan(got);
  if (std::isinf(want)) return got == (float)want;
  return std::fabs((double)got - want) <= rtol * std::max(1.0, std::fabs(want));
}

static const std::function<double(double)> kUnaryRef[] = {
    [](double x) { return std::fabs(x); },
    [](double x) { return x > 0 ? 1.0 : x < 0 ? -1.0 : x; },
    [](double x) { return std::sqrt(x); },
    [](double x) { return 1 / std::sqrt(x); },
    [](double x) { return std::exp(x); },
    [](double x) { return std::log(x); },
    [](double x) { return std::floor(x); },
    [](double x) { return std::ceil(x); },
    [](double x) { return std::nearbyint(x); },
    [](double x) { return -x; },
    [](double x) { return x * x; },
    [](double x) { return 1 / x; },
    [](double x) { return 1 / (1 + std::exp(-x)); },
    [](double x) { return std::tanh(x); },
};

TEST_CASE("unary ops match an f64 reference, on views, in place and out of place") {
  // Values with every special case: ±0, halves (round to even), negatives (sqrt/log NaN), inf, NaN.
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<float> vals = {0.f, -0.f, 0.5f, 1.5f, 2.5f, -2.5f, -1.f, 3.f, 1e-3f, 80.f, -80.f, inf, -inf, nan, 0.25f, 7.75f};
  Tensor base = Tensor::from_data({4, 4}, vals);
  for (int op = 0; op <= (int)UnaryOp::Tanh; ++op) {
    CAPTURE(unary_name((UnaryOp)op));
    // Contiguous inputs take Eigen's vectorized kernels for exp/log/tanh/sigmoid.
    const Tensor rc = unary(base, (UnaryOp)op);
    for (int64_t i = 0; i < base.numel(); ++i) {
      INFO(std::string(unary_name((UnaryOp)op)), "(", vals[(size_t)i], ") = ", rc.f32()[i]);
      CHECK(same_float(kUnaryRef[op]((double)vals[(size_t)i]), rc.f32()[i], 1e-6));
    }
    Tensor ip = base.clone();
    unary_(ip, (UnaryOp)op);
    CHECK(std::memcmp(ip.raw(), rc.raw(), 4 * ip.numel()) == 0);
    const Tensor view = base.t();  // non-contiguous: the generic loop
    const Tensor r = unary(view, (UnaryOp)op);
    CHECK(r.shape() == view.shape());
    CHECK(r.is_contiguous());
    each(view.shape(), [&](const std::vector<int64_t>& idx) {
      const double want = kUnaryRef[op]((double)view.get(idx.data(), 2));
      CHECK(same_float(want, r.get(idx.data(), 2), 1e-6));
    });
    Tensor copy = base.clone();
    Tensor tv = copy.t();
    unary_(tv, (UnaryOp)op);  // in place through the transposed view
    each(tv.shape(), [&](const std::vector<int64_t>& idx) {
      const float a = tv.get(idx.data(), 2), b = r.get(idx.data(), 2);
      CHECK((a == b || (std::isnan(a) && std::isnan(b))));
    });
  }
  // Round is half to even; sign keeps the sign of zero.
  const Tensor rr = unary(Tensor::from_data({4}, {0.5f, 1.5f, 2.5f, -0.5f}), UnaryOp::Round);
  CHECK(rr.to_vector() == std::vector<float>{0.f, 2.f, 2.f, -0.f});
  CHECK(std::signbit(unary(Tensor::from_data({1}, {-0.f}), UnaryOp::Sign).item()));
}

TEST_CASE("broadcast shapes follow numpy's rule") {
  CHECK(broadcast_shapes({4, 1}, {3}, "t") == Shape{4, 3});
  CHECK(broadcast_shapes({}, {2, 3}, "t") == Shape{2, 3});
  CHECK(broadcast_shapes({2, 1, 3}, {5, 1}, "t") == Shape{2, 5, 3});
  CHECK(broadcast_shapes({0, 3}, {1, 3}, "t") == Shape{0, 3});
  CHECK(broadcast_shapes({0}, {1}, "t") == Shape{0});
  CHECK_THROWS_WITH_AS(broadcast_shapes({2, 3}, {2}, "add"),
                       doctest::Contains("add: shapes [2, 3] and [2] do not broadcast"), Error);
  CHECK_THROWS_AS(broadcast_shapes({0}, {2}, "add"), Error);  // 0 vs 2: neither is 1
}

TEST_CASE("binary ops and comparisons broadcast, against an f64 reference") {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  struct Case {
    Shape a, b;
  };
  const Case cases[] = {{{3, 4}, {3, 4}}, {{3, 4}, {4}},      {{3, 4}, {3, 1}},    {{1, 4}, {3, 1}},
                        {{2, 3, 4}, {3, 1}}, {{}, {2, 2}},     {{5}, {}},          {{2, 1, 3}, {1, 4, 1}}};
  int seed = 1;
  for (const Case& c : cases) {
    Tensor a = randn(c.a, seed++), b = randn(c.b, seed++);
    if (a.numel() > 2) a.f32()[1] = nan;  // NaN propagates through arithmetic, compares false
    if (b.numel() > 3) b.f32()[2] = 0.f;  // division by zero
    for (int op = 0; op <= (int)BinaryOp::Or; ++op) {
      const BinaryOp bop = (BinaryOp)op;
      CAPTURE(binary_name(bop));
      CAPTURE(shape_str(c.a));
      CAPTURE(shape_str(c.b));
      const Tensor r = binary(a, b, bop);
      const Shape out = broadcast_shapes(c.a, c.b, "t");
      CHECK(r.shape() == out);
      CHECK(r.dtype() == (binary_is_mask(bop) ? DType::U8 : DType::F32));
      each(out, [&](const std::vector<int64_t>& idx) {
        const double x = bget(a, out, idx), y = bget(b, out, idx);
        double want = 0;
        switch (bop) {
          case BinaryOp::Add: want = (float)x + (float)y; break;
          case BinaryOp::Sub: want = (float)x - (float)y; break;
          case BinaryOp::Mul: want = (float)x * (float)y; break;
          case BinaryOp::Div: want = (float)x / (float)y; break;
          case BinaryOp::Pow: want = std::pow(x, y); break;
          case BinaryOp::Min: want = (std::isnan(x) || std::isnan(y)) ? NAN : std::min(x, y); break;
          case BinaryOp::Max: want = (std::isnan(x) || std::isnan(y)) ? NAN : std::max(x, y); break;
          case BinaryOp::Eq: want = x == y; break;
          case BinaryOp::Ne: want = x != y; break;
          case BinaryOp::Lt: want = x < y; break;
          case BinaryOp::Le: want = x <= y; break;
          case BinaryOp::Gt: want = x > y; break;
          case BinaryOp::Ge: want = x >= y; break;
          case BinaryOp::And: want = x != 0 && y != 0; break;
          case BinaryOp::Or: want = x != 0 || y != 0; break;
        }
        CHECK(same_float(want, r.get(idx.data(), (int)idx.size()), 1e-6));
      });
    }
  }
}

TEST_CASE("scalars on either side, dtypes read as f32, masks as operands") {
  const Tensor a = Tensor::from_data({3}, {1.f, 2.f, 4.f});
  CHECK(binary(a, 2.f, BinaryOp::Div).to_vector() == std::vector<float>{0.5f, 1.f, 2.f});
  CHECK(binary(2.f, a, BinaryOp::Div).to_vector() == std::vector<float>{2.f, 1.f, 0.5f});
  CHECK(binary(2.f, a, BinaryOp::Pow).to_vector() == std::vector<float>{2.f, 4.f, 16.f});
  const Tensor m = binary(a, 1.5f, BinaryOp::Gt);
  CHECK(m.dtype() == DType::U8);
  CHECK(binary(m, a, BinaryOp::Mul).to_vector() == std::vector<float>{0.f, 2.f, 4.f});  // a u8 mask times f32
  const Tensor h = a.to(DType::F16);
  CHECK(binary(h, a, BinaryOp::Sub).to_vector() == std::vector<float>{0.f, 0.f, 0.f});
}

TEST_CASE("in place: broadcast into the destination's shape, through views, with aliasing") {
  Tensor w = randn({4, 6}, 7);
  const Tensor w0 = w.clone();
  const Tensor col = randn({4, 1}, 8);
  binary_(w, col, BinaryOp::Div);  // per-row scale
  for (int64_t i = 0; i < 4; ++i)
    for (int64_t j = 0; j < 6; ++j) CHECK(w.get({i, j}) == w0.get({i, j}) / col.get({i, 0}));
  // The destination may not grow.
  Tensor col2 = col.clone();
  CHECK_THROWS_WITH_AS(binary_(col2, w, BinaryOp::Add),
                       doctest::Contains("in place, the result must keep the shape [4, 1]"), Error);
  // Masks have no in-place form; non-f32 destinations are refused by name.
  Tensor u = binary(w, 0.f, BinaryOp::Gt);
  CHECK_THROWS_WITH_AS(binary_(u, w, BinaryOp::Add), doctest::Contains("in-place math needs an f32 tensor, got u8"), Error);
  CHECK_THROWS_WITH_AS(binary_(w, w, BinaryOp::Lt), doctest::Contains("no in-place form"), Error);
  // a += aᵀ on a square matrix: the operand overlaps the destination in another order, so it is
  // staged; the result is symmetric and equals a0 + a0ᵀ.
  Tensor s = randn({5, 5}, 9);
  const Tensor s0 = s.clone();
  binary_(s, s.t(), BinaryOp::Add);
  for (int64_t i = 0; i < 5; ++i)
    for (int64_t j = 0; j < 5; ++j) CHECK(s.get({i, j}) == s0.get({i, j}) + s0.get({j, i}));
  // In place through a non-contiguous destination writes only the view.
  Tensor big = Tensor::zeros({3, 4});
  Tensor cols = big.cols(1, 2);
  binary_(cols, 5.f, BinaryOp::Add);
  CHECK(big.to_vector() == std::vector<float>{0, 5, 5, 0, 0, 5, 5, 0, 0, 5, 5, 0});
}

TEST_CASE("where, clamp, isnan/isfinite, logical ops, any/all") {
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  const Tensor x = Tensor::from_data({2, 3}, {-2.f, 0.5f, nan, inf, -inf, 3.f});
  const Tensor m = binary(x, 0.f, BinaryOp::Gt);  // NaN compares false
  CHECK(m.to_vector() == std::vector<float>{0, 1, 0, 1, 0, 1});
  const Tensor w = where(m, x, Tensor::from_data({3}, {10.f, 20.f, 30.f}));  // broadcast row
  CHECK(w.to_vector() == std::vector<float>{10.f, 0.5f, 30.f, inf, 20.f, 3.f});
  CHECK(where(Tensor::from_data({1}, {nan}), 1.f, 2.f).item() == 1.f);  // NaN in a mask is nonzero: true
  const Tensor c = clamp(x, -1.f, 1.f);
  const std::vector<float> cv = c.to_vector();
  CHECK(cv[0] == -1.f);
  CHECK(cv[1] == 0.5f);
  CHECK(std::isnan(cv[2]));
  CHECK(cv[3] == 1.f);
  CHECK(cv[4] == -1.f);
  CHECK_THROWS_WITH_AS(clamp(x, 2.f, 1.f), doctest::Contains("clamp: lower bound 2 is above upper bound 1"), Error);
  CHECK_THROWS_AS(clamp(x, nan, 1.f), Error);
  CHECK(isnan_mask(x).to_vector() == std::vector<float>{0, 0, 1, 0, 0, 0});
  CHECK(isfinite_mask(x).to_vector() == std::vector<float>{1, 1, 0, 0, 0, 1});
  CHECK(logical_not(m).to_vector() == std::vector<float>{1, 0, 1, 0, 1, 0});
  CHECK(any_nonzero(m));
  CHECK(!all_nonzero(m));
  CHECK(all_nonzero(isfinite_mask(Tensor::from_data({2}, {1.f, 2.f}))));
  CHECK(!any_nonzero(Tensor::empty({0})));
  CHECK(all_nonzero(Tensor::empty({0})));
}

TEST_CASE("empty tensors pass through; undefined ones are named errors") {
  const Tensor e = Tensor::empty({0, 4});
  CHECK(unary(e, UnaryOp::Exp).shape() == Shape{0, 4});
  CHECK(binary(e, Tensor::from_data({4}, {1, 2, 3, 4}), BinaryOp::Add).shape() == Shape{0, 4});
  CHECK(where(e, 1.f, 2.f).shape() == Shape{0, 4});
  CHECK_THROWS_WITH_AS(unary(Tensor(), UnaryOp::Exp), doctest::Contains("exp: tensor is undefined"), Error);
}

TEST_CASE("large broadcasts give the same bits on one thread or many") {
  const Tensor a = randn({257, 3001}, 11), col = randn({257, 1}, 12), row = randn({3001}, 13);
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  const Tensor r1 = binary(binary(a, col, BinaryOp::Mul), row, BinaryOp::Add);
  const Tensor u1 = unary(a.t(), UnaryOp::Exp);
  omp_set_num_threads(std::max(2, omp_get_num_procs()));
  const Tensor r2 = binary(binary(a, col, BinaryOp::Mul), row, BinaryOp::Add);
  const Tensor u2 = unary(a.t(), UnaryOp::Exp);
  omp_set_num_threads(saved);
  CHECK(std::memcmp(r1.raw(), r2.raw(), r1.numel() * 4) == 0);
  CHECK(std::memcmp(u1.raw(), u2.raw(), u1.numel() * 4) == 0);
  // And the values: spot-check against the f64 reference.
  for (int64_t i : {0, 100, 256})
    for (int64_t j : {0, 17, 3000})
      CHECK(same_float((double)a.get({i, j}) * col.get({i, 0}) + row.get({j}), r1.get({i, j}), 1e-6));
}
