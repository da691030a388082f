// The quantization grid (docs/methods.md#grid) and RTN (methods.md#rtn): hand-computed fits and
// codes, half-to-even rounding, the all-zero / all-positive / sym conventions, clamping, ragged
// groups, the mse search, quantize_to_grid round trips and spec errors.
#include <doctest/doctest.h>

#include <cmath>
#include <vector>

#include "quant/grid.h"
#include "core/half.h"
#include "core/rng.h"
#include "solvers/rtn.h"

using namespace qf;

namespace {

GridSpec spec_of(int bits, bool sym = false, int64_t group = -1, bool mse = false) {
  GridSpec s;
  s.bits = bits;
  s.sym = sym;
  s.group = group;
  s.mse = mse;
  return s;
}

Tensor random_w(int64_t r, int64_t c, uint64_t seed, bool heavy = false) {
  Rng g(seed);
  Tensor W = Tensor::empty({r, c});
  float* w = W.f32();
  for (int64_t k = 0; k < r * c; ++k) {
    double v = g.normal();
    if (heavy) v /= std::sqrt(std::max(g.uniform(), 1e-3));
    w[k] = (float)v;
  }
  return W;
}

// Σ_j |Q(x_j) − x_j|^norm of row r (group 0), in f64 like the fit.
double row_err(const Grid& g, const Tensor& W, int64_t r, double norm) {
  double e = 0;
  for (int64_t j = 0; j < W.size(1); ++j) {
    const float x = W.get({r, j});
    e += std::pow(std::fabs((double)g.quantize(x, r, 0) - (double)x), norm);
  }
  return e;
}

}  // namespace

TEST_CASE("2-bit asym by hand: row {-1, 0.5, 2} — round(x/scale) half to even, then + zero") {
  // Fit on {-1, 0.5, 2}; then a few more values quantized on that grid.
  const Tensor W = Tensor::from_data({1, 3}, {-1.f, 0.5f, 2.f});
  const Grid g = grid_fit(W, spec_of(2));
  // maxq = 3, scale = (2 − (−1))/3 = 1, zero = round(1/1) = 1.
  CHECK(g.maxq() == 3);
  CHECK(g.ngroups == 1);
  CHECK(g.s(0, 0) == 1.f);
  CHECK(g.z(0, 0) == 1.f);
  // codes: round(−1) + 1 = 0; round(0.5) = 0 (half to even) + 1 = 1; round(2) + 1 = 3.
  const QuantizedLinear q = rtn(W, spec_of(2));
  CHECK(q.codes.dtype() == DType::U8);
  const uint8_t* c = q.codes.data<uint8_t>();
  CHECK(c[0] == 0);
  CHECK(c[1] == 1);
  CHECK(c[2] == 3);
  CHECK(q.dequantize().to_vector() == std::vector<float>{-1.f, 0.f, 2.f});
  // 1.5 → round(1.5) = 2 → code 3 → 2;  2.5 → round(2.5) = 2 → code 3 → 2;  −0.5 → −0 → code 1 → 0.
  CHECK(g.code(1.5f, 0, 0) == 3);
  CHECK(g.code(2.5f, 0, 0) == 3);
  CHECK(g.code(-0.5f, 0, 0) == 1);
  CHECK(g.quantize(-0.5f, 0, 0) == 0.f);
  CHECK(g.code(0.49f, 0, 0) == 1);
  CHECK(g.code(0.51f, 0, 0) == 2);
}

TEST_CASE("all-zero row → range (−1, 1); all-positive row keeps xmin = 0") {
  const Tensor W = Tensor::from_data({3, 3}, {0.f, 0.f, 0.f, 1.f, 2.f, 3.f, 0.5f, 3.f, 3.f});
  const Grid g = grid_fit(W, spec_of(4));
  // row 0: (−1, 1): scale = 2/15, zero = round(1/scale): in f32 1/(2/15) = 7.4999995 → 7 (as the
  // reference's f32 torch.round; exact arithmetic would give the tie 7.5 → 8).
  CHECK(g.s(0, 0) == 2.f / 15.f);
  CHECK(1.f / (2.f / 15.f) < 7.5f);
  CHECK(g.z(0, 0) == 7.f);
  // row 1: xmin = min(0, 1) = 0, xmax = 3: scale = 3/15 = 0.2, zero = 0.
  CHECK(g.s(1, 0) == 3.f / 15.f);
  CHECK(g.z(1, 0) == 0.f);
  const Tensor D = rtn(W, spec_of(4)).dequantize();
  for (int64_t j = 0; j < 3; ++j) CHECK(D.get({0, j}) == 0.f);  // 0 is always representable
  const Grid g2 = grid_fit(W, spec_of(2));
  CHECK(g2.s(0, 0) == 2.f / 3.f);
  CHECK(g2.z(0, 0) == (1.f / (2.f / 3.f) == 1.5f ? 2.f : 1.f));  // round(1/(2/3)): f32 gives exactly 1.5 → 2 (to even)
  CHECK(g2.s(1, 0) == 1.f);
  CHECK(g2.z(1, 0) == 0.f);
  const QuantizedLinear q2 = rtn(W, spec_of(2));
  const std::vector<float> d2 = q2.dequantize().to_vector();
  CHECK(d2[3] == 1.f);
  CHECK(d2[4] == 2.f);
  CHECK(d2[5] == 3.f);
  CHECK(d2[6] == 0.f);  // 0.5 → round(0.5) = 0
}

TEST_CASE("values outside the fitted range clamp to the ends of the grid") {
  const Tensor W = Tensor::from_data({1, 2}, {-1.f, 2.f});
  const Grid g = grid_fit(W, spec_of(2));  // scale 1, zero 1: values {−1, 0, 1, 2}
  CHECK(g.code(5.f, 0, 0) == 3);
  CHECK(g.quantize(5.f, 0, 0) == 2.f);
  CHECK(g.code(-7.f, 0, 0) == 0);
  CHECK(g.quantize(-7.f, 0, 0) == -1.f);
  const Tensor X = Tensor::from_data({1, 2}, {100.f, -100.f});
  CHECK(quantize_to_grid(X, g).dequantize().to_vector() == std::vector<float>{2.f, -1.f});
  const Tensor Y = Tensor::from_data({1, 2}, {0.7f, -1.2f});
  CHECK(quantize_to_grid(Y, g).dequantize().to_vector() == std::vector<float>{1.f, -1.f});
  std::vector<float> x(1), out(1);
  x[0] = 9.f;
  grid_quantize_col(g, 1, x.data(), 1, out.data(), 1);
  CHECK(out[0] == 2.f);
}

TEST_CASE("sym: zero = (maxq+1)/2, range [−(maxq+1)/2, (maxq−1)/2]·scale") {
  const Tensor W = Tensor::from_data({2, 2}, {-7.5f, 1.f, 1.f, 3.f});
  const Grid g = grid_fit(W, spec_of(4, true));
  // row 0: xmax = max(|−7.5|, 1) = 7.5, xmin = −7.5: scale = 15/15 = 1, zero = 8: values −8 … 7.
  CHECK(g.z(0, 0) == 8.f);
  CHECK(g.s(0, 0) == 1.f);
  CHECK(g.code(-7.5f, 0, 0) == 0);  // round(−7.5) = −8 (to even) + 8
  CHECK(g.quantize(-7.5f, 0, 0) == -8.f);
  CHECK(g.code(7.5f, 0, 0) == 15);  // round(7.5) = 8 → 16 clamps to 15: +7.5 is not representable
  CHECK(g.quantize(7.5f, 0, 0) == 7.f);
  CHECK(g.quantize(6.5f, 0, 0) == 6.f);   // to even
  CHECK(g.quantize(-0.5f, 0, 0) == 0.f);  // −0 → code 8
  // row 1 all positive: xmin stays 0 (only negated when < 0), scale = 3/15, zero still 8 — the
  // reference Quantizer's behaviour: the top half of the row clamps at 7·scale.
  CHECK(g.z(1, 0) == 8.f);
  CHECK(g.s(1, 0) == 3.f / 15.f);
  CHECK(g.quantize(3.f, 1, 0) == 7.f * (3.f / 15.f));
  CHECK(grid_fit(W, spec_of(3, true)).z(0, 0) == 4.f);
  CHECK(grid_fit(W, spec_of(8, true)).z(0, 0) == 128.f);
}

// llama.cpp's Q4_0 / Q5_0 / Q8_0 reference quantizers, written from their definitions
// (docs/methods.md#grid-mappings): per block, m = the value of largest magnitude; below 8 bits
// d = m / −2^(b−1) and q = min(maxq, (int)(x/d + 2^(b−1) + ½)); Q8_0 d = |m| / 127, q = round(x/d).
// Returns q + offset (the unsigned code), like our grid's.
static std::vector<int> llamacpp_ref_codes(const std::vector<float>& x, int bits) {
  float amax = 0.f, m = 0.f;
  for (float v : x)
    if (std::fabs(v) > amax) amax = std::fabs(v), m = v;
  std::vector<int> q;
  if (bits == 8) {
    const float d = amax / 127.f, id = d ? 1.f / d : 0.f;
    for (float v : x) q.push_back((int)std::round(v * id) + 128);
    return q;
  }
  const float half = (float)(1 << (bits - 1));
  const float d = m / -half, id = d ? 1.f / d : 0.f;
  for (float v : x) q.push_back(std::min((1 << bits) - 1, (int)(v * id + half + 0.5f)));
  return q;
}

TEST_CASE("mapping llamacpp: the codes of llama.cpp's Q4_0 / Q5_0 / Q8_0 reference quantizers, the signed extreme exact") {
  for (int bits : {4, 5, 8}) {
    GridSpec sp = spec_of(bits, true, 32);
    sp.mapping = GridMapping::Llamacpp;
    const Tensor W = random_w(64, 128, 40 + bits, true);
    const QuantizedLinear q = rtn(W, sp);
    const uint8_t* c = q.codes.data<uint8_t>();
    int64_t differ = 0, near_tie = 0;
    for (int64_t r = 0; r < 64; ++r)
      for (int64_t k = 0; k < 4; ++k) {
        std::vector<float> x;
        for (int64_t j = 0; j < 32; ++j) x.push_back(W.get({r, 32 * k + j}));
        const std::vector<int> ref = llamacpp_ref_codes(x, bits);
        const float s = q.grid.s(r, k);
        for (int64_t j = 0; j < 32; ++j) {
          // Division (ours) and multiplication by 1/d (llama.cpp's) may round a tie either way.
          const double t = (double)x[(size_t)j] / (double)s;
          const bool tie = std::fabs(t - std::floor(t) - 0.5) < 1e-5;
          near_tie += tie;
          if (c[r * 128 + 32 * k + j] != ref[(size_t)j] && !tie) ++differ;
        }
        // The signed extreme lands on a grid value exactly (below 8 bits: code 0).
        float amax = 0.f, m = 0.f;
        for (float v : x)
          if (std::fabs(v) > amax) amax = std::fabs(v), m = v;
        CHECK(q.grid.quantize(m, r, k) == m);
        if (bits < 8) CHECK(q.grid.code(m, r, k) == 0);
        CHECK(q.grid.z(r, k) == (float)(1 << (bits - 1)));
      }
    CHECK(differ == 0);
    CHECK(near_tie < 10);
  }
}

TEST_CASE("mapping llamacpp has a smaller round-to-nearest error than the GPTQ mapping at 4 bits, g32") {
  const Tensor W = random_w(256, 256, 7, true);
  GridSpec a = spec_of(4, true, 32), b = a;
  b.mapping = GridMapping::Llamacpp;
  auto err = [&](const GridSpec& sp) {
    const Tensor D = rtn(W, sp).dequantize();
    double e = 0, n = 0;
    for (int64_t i = 0; i < W.numel(); ++i) {
      e += std::pow((double)D.f32()[i] - (double)W.f32()[i], 2);
      n += std::pow((double)W.f32()[i], 2);
    }
    return std::sqrt(e / n);
  };
  const double eg = err(a), el = err(b);
  MESSAGE("relative RTN error: gptq mapping ", eg, ", llamacpp mapping ", el);
  CHECK(el < 0.95 * eg);
}

TEST_CASE("mapping llamacpp: fp16 scales keep their sign; quantize_to_grid round trip; spec errors") {
  GridSpec sp = spec_of(4, true, 32);
  sp.mapping = GridMapping::Llamacpp;
  sp.f16_scales = true;
  const Tensor W = random_w(8, 64, 3);
  const QuantizedLinear q = rtn(W, sp);
  int neg = 0;
  for (float s : q.grid.scale) {
    neg += s < 0.f;
    CHECK(f16_to_f32(f32_to_f16(s)) == s);
  }
  CHECK(neg > 0);  // a group whose extreme is positive has a negative scale
  const QuantizedLinear q2 = quantize_to_grid(q.dequantize(), q.grid);
  CHECK(q2.codes.to_vector() == q.codes.to_vector());
  CHECK(q.grid.spec.str().find("llamacpp") != std::string::npos);
  GridSpec bad = spec_of(4, false, 32);
  bad.mapping = GridMapping::Llamacpp;
  CHECK_THROWS_WITH_AS(grid_fit(W, bad), doctest::Contains("give sym = true"), Error);
  GridMapping m;
  CHECK(grid_mapping_from_name("llamacpp", &m));
  CHECK(m == GridMapping::Llamacpp);
  CHECK(!grid_mapping_from_name("q4_0", &m));
}

// Σ_j w_j (x_j − Q(x_j))² of row r over its groups (f64).
static double weighted_err(const Grid& g, const Tensor& W, const std::vector<float>& w, int64_t r) {
  double e = 0;
  for (int64_t j = 0; j < W.size(1); ++j) {
    const float x = W.get({r, j});
    const double d = (double)g.quantize(x, r, g.g_idx[(size_t)j]) - (double)x;
    e += (double)w[(size_t)j] * d * d;
  }
  return e;
}

TEST_CASE("importance search: never a larger weighted error than min/max, much smaller when a few columns dominate") {
  Rng rng(5);
  for (int bits : {2, 3, 4, 8})
    for (bool sym : {true, false})
      for (bool f16 : {false, true})
        for (GridImportance imp : {GridImportance::Diag, GridImportance::DiagX}) {
          const Tensor W = random_w(16, 96, 100 + bits, true);
          std::vector<float> w(96);
          for (float& v : w) v = (float)std::exp(3.0 * rng.normal());  // importances spread over e^±9
          GridSpec a = spec_of(bits, sym, 32), b = a;
          a.f16_scales = b.f16_scales = f16;
          if (sym) a.mapping = b.mapping = GridMapping::Llamacpp;
          b.importance = imp;
          const Grid ga = grid_fit(W, a), gb = grid_fit(W, b, w.data());
          // The weights the search minimized (diag_x: × √(σ² + x²) per cell).
          double ea = 0, eb = 0;
          for (int64_t r = 0; r < 16; ++r) {
            std::vector<float> ww = w;
            if (imp == GridImportance::DiagX)
              for (int64_t k = 0; k < 3; ++k) {
                double ss = 0;
                for (int64_t j = 32 * k; j < 32 * k + 32; ++j) ss += std::pow((double)W.get({r, j}), 2);
                for (int64_t j = 32 * k; j < 32 * k + 32; ++j)
                  ww[(size_t)j] = (float)((double)w[(size_t)j] * std::sqrt(ss / 32 + std::pow((double)W.get({r, j}), 2)));
              }
            const double ra = weighted_err(ga, W, ww, r), rb = weighted_err(gb, W, ww, r);
            CHECK(rb <= ra * (1 + 1e-6) + 1e-30);
            ea += ra, eb += rb;
          }
          if (bits <= 4) {
            INFO("bits ", bits, " sym ", sym, " f16 ", f16, " ", grid_importance_name(imp), ": ", eb / ea);
            CHECK(eb < 0.9 * ea);
          }
          if (f16)
            for (float sc : gb.scale) CHECK(f16_to_f32(f32_to_f16(sc)) == sc);
          if (!sym)
            for (float z : gb.zero) CHECK((z == std::nearbyint(z) && z >= 0 && z <= (float)((1 << bits) - 1)));
        }
}

TEST_CASE("importance search: equal weights match or beat min/max on plain squared error; errors name what is missing") {
  const Tensor W = random_w(32, 64, 9, true);
  std::vector<float> one(64, 1.f);
  GridSpec a = spec_of(3, false, 32), b = a;
  b.importance = GridImportance::Diag;
  double ea = 0, eb = 0;
  const Grid ga = grid_fit(W, a), gb = grid_fit(W, b, one.data());
  for (int64_t r = 0; r < 32; ++r) ea += weighted_err(ga, W, one, r), eb += weighted_err(gb, W, one, r);
  MESSAGE("3-bit asym g32, unit importances: squared error / min-max's = ", eb / ea);
  CHECK(eb < 0.95 * ea);
  CHECK_THROWS_WITH_AS(grid_fit(W, b), doctest::Contains("needs the columns' importances"), Error);
  std::vector<float> bad = one;
  bad[40] = -1.f;
  CHECK_THROWS_WITH_AS(grid_fit(W, b, bad.data()), doctest::Contains("importance of column 9 of group 2"), Error);
  GridSpec c = b;
  c.mse = true;
  CHECK_THROWS_WITH_AS(grid_fit(W, c, one.data()), doctest::Contains("importance and mse"), Error);
  c = b;
  c.float_zero = true;
  CHECK_THROWS_WITH_AS(grid_fit(W, c, one.data()), doctest::Contains("integer zero"), Error);
  CHECK(b.str().find("importance-diag") != std::string::npos);
  // All-zero importances (dead inputs): the min/max grid.
  std::vector<float> zero(64, 0.f);
  const Grid gz = grid_fit(W, b, zero.data());
  CHECK(gz.scale == ga.scale);
  CHECK(gz.zero == ga.zero);
}

TEST_CASE("ragged last group: 172 columns, group 32 → 6 groups, the last 12 wide; each column uses its group") {
  const Tensor W = random_w(5, 172, 7);
  for (bool sym : {false, true}) {
    const GridSpec sp = spec_of(3, sym, 32);
    const Grid g = grid_fit(W, sp);
    CHECK(g.ngroups == 6);
    CHECK(g.group_size() == 32);
    for (int64_t j = 0; j < 172; ++j) CHECK(g.g_idx[j] == j / 32);
    const Tensor D = rtn(W, sp).dequantize();
    for (int64_t k = 0; k < 6; ++k) {
      const int64_t c0 = k * 32, w = std::min<int64_t>(32, 172 - c0);
      if (k == 5) CHECK(w == 12);
      // Group k's params = a per-channel fit of its own columns; RTN of the slice alone matches.
      const Tensor slice = W.cols(c0, w);
      const Grid gs = grid_fit(slice, spec_of(3, sym));
      const Tensor Ds = rtn(slice, spec_of(3, sym)).dequantize();
      for (int64_t r = 0; r < 5; ++r) {
        CHECK(g.s(r, k) == gs.s(r, 0));
        CHECK(g.z(r, k) == gs.z(r, 0));
        for (int64_t j = 0; j < w; ++j) CHECK(D.get({r, c0 + j}) == Ds.get({r, j}));
      }
    }
    // A group fitted elsewhere would give visibly different values for some column.
    const Tensor Dpc = rtn(W, spec_of(3, sym)).dequantize();
    CHECK(Dpc.to_vector() != D.to_vector());
  }
}

TEST_CASE("mse search: never a larger Σ|Q(x) − x|^2.4 than min/max; an outlier shrinks the range") {
  for (uint64_t seed = 1; seed <= 4; ++seed)
    for (bool sym : {false, true})
      for (int bits : {2, 3, 4}) {
        const Tensor W = random_w(8, 64, seed, seed % 2 == 0);
        const Grid g0 = grid_fit(W, spec_of(bits, sym));
        const Grid g1 = grid_fit(W, spec_of(bits, sym, -1, true));
        for (int64_t r = 0; r < 8; ++r) {
          CHECK(row_err(g1, W, r, 2.4) <= row_err(g0, W, r, 2.4));
          CHECK(g1.s(r, 0) <= g0.s(r, 0));  // p ≤ 1
        }
      }
  // 63 small values and one at 50: min/max spends the grid on the outlier; mse clips it.
  std::vector<float> v(64);
  Rng rng(3);
  for (auto& x : v) x = (float)(0.5 * rng.normal());
  v[17] = 50.f;
  const Tensor W = Tensor::from_data({1, 64}, v);
  const Grid g0 = grid_fit(W, spec_of(3));
  const Grid g1 = grid_fit(W, spec_of(3, false, -1, true));
  CHECK(g1.s(0, 0) < g0.s(0, 0));
  CHECK(row_err(g1, W, 0, 2.4) < row_err(g0, W, 0, 2.4));
  // A moderate outlier (3 among values in ±1) is clipped: the range shrinks by > 10 %.
  std::vector<float> u(64);
  for (auto& x : u) x = (float)(2 * rng.uniform() - 1);
  u[5] = 3.f;
  const Tensor U = Tensor::from_data({1, 64}, u);
  const float s0 = grid_fit(U, spec_of(3)).s(0, 0), s1 = grid_fit(U, spec_of(3, false, -1, true)).s(0, 0);
  MESSAGE("mse scale / min-max scale: single 50 outlier ", g1.s(0, 0) / g0.s(0, 0), ", moderate outlier ", s1 / s0);
  CHECK(s1 < 0.9f * s0);
  CHECK(spec_of(3, false, 128, true).str() == "3-bit asym g128 mse");
}

TEST_CASE("quantize_to_grid(RTN Ŵ) reproduces the codes and Ŵ bitwise") {
  for (int bits : {1, 2, 3, 4, 8})
    for (bool sym : {false, true})
      for (int64_t group : {(int64_t)-1, (int64_t)16, (int64_t)50})
        for (bool mse : {false, true}) {
          const GridSpec sp = spec_of(bits, sym, group, mse);
          const Tensor W = random_w(6, 100, 11 + bits, true);
          const QuantizedLinear q = rtn(W, sp);
          const Tensor D = q.dequantize();
          const QuantizedLinear q2 = quantize_to_grid(D, q.grid);
          CHECK(q2.codes.to_vector() == q.codes.to_vector());
          CHECK(q2.dequantize().to_vector() == D.to_vector());
          // RTN really is the nearest grid value: no code ±1 is closer.
          int worse = 0;
          const uint8_t* c = q.codes.data<uint8_t>();
          for (int64_t r = 0; r < 6; ++r)
            for (int64_t j = 0; j < 100; ++j) {
              const int64_t k = q.grid.g_idx[j];
              const float x = W.get({r, j}), s = q.grid.s(r, k), z = q.grid.z(r, k);
              const float d0 = std::fabs(s * ((float)c[r * 100 + j] - z) - x);
              for (int dq : {-1, 1}) {
                const int cq = c[r * 100 + j] + dq;
                if (cq < 0 || cq > q.grid.maxq()) continue;
                if (std::fabs(s * ((float)cq - z) - x) < d0 - 1e-3f * s) ++worse;  // ties (x/s = k + ½) excluded
              }
            }
          CHECK(worse == 0);
        }
}

TEST_CASE("bad specs and weights are errors naming the field") {
  const Tensor W = random_w(2, 8, 1);
  GridSpec s = spec_of(0);
  CHECK_THROWS_WITH_AS(grid_fit(W, s), doctest::Contains("bits"), Error);
  s.bits = 9;
  CHECK_THROWS_WITH_AS(rtn(W, s), doctest::Contains("bits must be in 1..8, got 9"), Error);
  s = spec_of(4, false, 0);
  CHECK_THROWS_WITH_AS(grid_fit(W, s), doctest::Contains("group"), Error);
  s.group = -2;
  CHECK_THROWS_WITH_AS(rtn(W, s), doctest::Contains("group must be -1"), Error);
  s = spec_of(4, false, -1, true);
  s.maxshrink = 0.f;
  CHECK_THROWS_WITH_AS(grid_fit(W, s), doctest::Contains("maxshrink"), Error);
  s = spec_of(4, false, -1, true);
  s.grid_points = 0;
  CHECK_THROWS_WITH_AS(grid_fit(W, s), doctest::Contains("grid_points"), Error);
  Tensor Wn = W.clone();
  Wn.set({1, 5}, NAN);
  CHECK_THROWS_WITH_AS(rtn(Wn, spec_of(4)), doctest::Contains("non-finite weight at row 2, column 6 of group 1 (1-based"), Error);
  Wn.set({1, 5}, INFINITY);
  CHECK_THROWS_WITH_AS(grid_fit(Wn, spec_of(4, false, 4)), doctest::Contains("non-finite"), Error);
  CHECK_THROWS_WITH_AS(rtn(Tensor::empty({8}), spec_of(4)), doctest::Contains("2-d"), Error);
  const Grid g = grid_fit(W, spec_of(4));
  CHECK_THROWS_WITH_AS(quantize_to_grid(random_w(3, 8, 2), g), doctest::Contains("does not match"), Error);
}
