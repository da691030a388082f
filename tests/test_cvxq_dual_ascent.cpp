// Bit allocation by dual ascent (docs/methods.md#dual-ascent): target reached, Lagrangian
// optimality against brute force, clamps, and bad input.
#include <doctest/doctest.h>

#include <cmath>
#include <functional>
#include <limits>

#include "solvers/cvxq_dual_ascent.h"
#include "core/error.h"
#include "core/rng.h"

using namespace qf;

// Modelled distortion Σ n_g 2^(score_g − 2 B_g).
static double distortion(const std::vector<double>& s, const std::vector<double>& n, const std::vector<int>& b) {
  double d = 0;
  for (size_t g = 0; g < s.size(); ++g) d += n[g] * std::exp2(s[g] - 2.0 * b[g]);
  return d;
}

TEST_CASE("dual ascent hits the target rate within 0.01 bit on many groups") {
  Rng rng(11);
  std::vector<double> s(5000), n(5000);
  for (size_t g = 0; g < s.size(); ++g) {
    s[g] = -20 + 12 * rng.uniform();  // log2 σ² + log2 G², spread like real layers
    n[g] = 1 + rng.randint(0, 63);
  }
  for (double target : {2.0, 2.5, 3.0, 4.25}) {
    DualAscentOptions o;
    o.target_bits = target;
    const DualAscentResult r = dual_ascent(s, n, o);
    CHECK(r.converged);
    CHECK(std::fabs(r.rate - target) <= 0.01);
    CHECK(r.rate == doctest::Approx(allocation_rate(r.bits, n)).epsilon(1e-12));
    MESSAGE("target ", target, ": rate ", r.rate, " after ", r.steps, " ascent + ", r.bisections, " bisection steps");
    // Higher score never gets fewer bits.
    for (size_t a = 0; a < s.size(); ++a)
      for (size_t b = a + 1; b < std::min(s.size(), a + 50); ++b)
        if (s[a] > s[b]) CHECK(r.bits[a] >= r.bits[b]);
  }
}

TEST_CASE("the allocation at the final lambda is optimal for its own budget (brute force)") {
  Rng rng(3);
  for (int trial = 0; trial < 20; ++trial) {
    const int G = 5, bmax = 4;
    std::vector<double> s(G), n(G);
    for (int g = 0; g < G; ++g) {
      s[g] = 8 * rng.uniform();
      n[g] = (double)rng.randint(1, 4);
    }
    DualAscentOptions o;
    o.target_bits = 1 + 2 * rng.uniform();
    o.bmax = bmax;
    o.tol = 0.3;  // few groups: rates are coarse
    const DualAscentResult r = dual_ascent(s, n, o);
    double budget = 0;
    for (int g = 0; g < G; ++g) budget += n[g] * r.bits[g];
    const double best = distortion(s, n, r.bits);
    // Every integer allocation in [0, bmax]^G with at most the same total bits is no better.
    std::vector<int> b(G, 0);
    std::function<void(int)> rec = [&](int g) {
      if (g == G) {
        double used = 0;
        for (int k = 0; k < G; ++k) used += n[k] * b[k];
        if (used <= budget + 1e-9) CHECK(best <= distortion(s, n, b) * (1 + 1e-12));
        return;
      }
      for (int v = 0; v <= bmax; ++v) {
        b[g] = v;
        rec(g + 1);
      }
    };
    rec(0);
  }
}

TEST_CASE("clamps, -inf scores and the closed form at a fixed lambda") {
  // ½(score − log2λ) rounded: scores 10, 7, 3, -1 at log2λ = 1 → 4.5→4 (half to even), 3, 1, -1→0.
  const std::vector<double> s = {10, 7, 3, -1, -std::numeric_limits<double>::infinity()};
  CHECK(allocate_bits(s, 1.0, 0, 8) == std::vector<int>{4, 3, 1, 0, 0});
  CHECK(allocate_bits(s, 1.0, 2, 3) == std::vector<int>{3, 3, 2, 2, 2});
  CHECK(allocation_rate({4, 3, 1, 0}, {1, 1, 2, 4}) == doctest::Approx(9.0 / 8.0));
}

TEST_CASE("a target no lambda can reach is reported, not faked") {
  DualAscentOptions o;
  o.target_bits = 2.5;  // one group: the rate jumps from 2 to 3
  const DualAscentResult r = dual_ascent({5.0}, {100.0}, o);
  CHECK_FALSE(r.converged);
  CHECK((r.rate == 2.0 || r.rate == 3.0));
}

TEST_CASE("bad input is a clear error") {
  DualAscentOptions o;
  o.target_bits = 9;
  CHECK_THROWS_WITH_AS(dual_ascent({1, 2}, {1, 1}, o), doctest::Contains("target_bits 9 is outside [bmin, bmax] = [0, 8]"), Error);
  o.target_bits = 3;
  CHECK_THROWS_WITH_AS(dual_ascent({}, {}, o), doctest::Contains("no groups"), Error);
  CHECK_THROWS_WITH_AS(dual_ascent({1, 2}, {1, 0}, o), doctest::Contains("group 2 has size 0"), Error);
  CHECK_THROWS_WITH_AS(dual_ascent({1, NAN}, {1, 1}, o), doctest::Contains("group 2 has score nan"), Error);
  CHECK_THROWS_WITH_AS(dual_ascent({1, 2}, {1}, o), doctest::Contains("2 scores but 1 group sizes"), Error);
  o.bmin = 5;
  o.bmax = 4;
  CHECK_THROWS_WITH_AS(dual_ascent({1}, {1}, o), doctest::Contains("bmin <= bmax"), Error);
}
