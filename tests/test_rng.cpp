// The run-owned RNG: reference outputs, reproducibility, and distribution checks.
#include <doctest/doctest.h>

#include <cmath>
#include <vector>

#include "core/rng.h"

using namespace qf;

TEST_CASE("splitmix64 reference values") {
  // First outputs of splitmix64 from state 0 (Vigna's reference implementation).
  uint64_t x = 0;
  CHECK(splitmix64(x) == 0xe220a8397b1dcdafull);
  CHECK(splitmix64(x) == 0x6e789e6aa1b965f4ull);
  CHECK(splitmix64(x) == 0x06c45d188009454full);
}

TEST_CASE("same seed, same stream; different seeds differ") {
  Rng a(42), b(42), c(43);
  bool all_same = true, any_diff = false;
  for (int i = 0; i < 1000; ++i) {
    const uint64_t x = a.next_u64();
    all_same &= x == b.next_u64();
    any_diff |= x != c.next_u64();
  }
  CHECK(all_same);
  CHECK(any_diff);
}

TEST_CASE("uniform, randint and normal have the right moments") {
  Rng g(7);
  const int n = 200000;
  double s = 0, s2 = 0;
  for (int i = 0; i < n; ++i) {
    const double u = g.uniform();
    REQUIRE(u >= 0.0);
    REQUIRE(u < 1.0);
    s += u;
    s2 += u * u;
  }
  CHECK(std::abs(s / n - 0.5) < 0.005);
  CHECK(std::abs(s2 / n - s * s / n / n - 1.0 / 12) < 0.002);

  // randint: every value of [3, 9] hit, chi-square well inside its 7-bin range
  std::vector<int> cnt(7, 0);
  for (int i = 0; i < 70000; ++i) {
    const int64_t v = g.randint(3, 9);
    REQUIRE(v >= 3);
    REQUIRE(v <= 9);
    cnt[v - 3]++;
  }
  double chi2 = 0;
  for (int c : cnt) chi2 += (c - 10000.0) * (c - 10000.0) / 10000.0;
  CHECK(chi2 < 30.0);  // 6 dof: p(chi2 > 30) < 1e-4
  CHECK(g.randint(5, 5) == 5);
  CHECK_THROWS_WITH_AS(g.randint(2, 1), doctest::Contains("empty range"), Error);

  double m = 0, v = 0;
  for (int i = 0; i < n; ++i) {
    const double z = g.normal();
    m += z;
    v += z * z;
  }
  CHECK(std::abs(m / n) < 0.01);
  CHECK(std::abs(v / n - 1.0) < 0.015);
}
