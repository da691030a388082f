// One choice per item under a total cost (docs/methods.md#type-allocation): against brute force
// on small problems (Everett's theorem for the Lagrangian choice; the greedy fill never worse and
// within budget), a convex case where the result is the optimum, and bad input.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>

#include "solvers/choice_allocation.h"
#include "core/error.h"
#include "core/rng.h"

using namespace qf;

using Table = std::vector<std::vector<double>>;

// The least distortion over all assignments with total cost <= budget (exhaustive).
static double brute_force(const Table& D, const Table& C, double budget) {
  double best = INFINITY;
  std::vector<size_t> t(D.size(), 0);
  for (;;) {
    double d = 0, c = 0;
    for (size_t i = 0; i < D.size(); ++i) { d += D[i][t[i]]; c += C[i][t[i]]; }
    if (c <= budget && d < best) best = d;
    size_t i = 0;
    while (i < D.size() && ++t[i] == D[i].size()) t[i++] = 0;
    if (i == D.size()) return best;
  }
}

// Storage-type-like items: costs as bytes of 2..8-bit types (+ block overhead), distortion ~
// sensitivity · 2^(−2b) with noise, so the choices are not exactly convex.
static void random_problem(Rng& rng, int items, Table& D, Table& C) {
  D.assign((size_t)items, {});
  C.assign((size_t)items, {});
  const double bits[] = {2.625, 3.4375, 4.5, 5.5, 6.5625, 8.5};
  for (int i = 0; i < items; ++i) {
    const double n = 256.0 * (1 + rng.randint(0, 7)), sens = std::exp2(-4 + 8 * rng.uniform());
    const int k = 2 + rng.randint(0, 4);
    for (int t = 0; t < k; ++t) {
      C[(size_t)i].push_back(n * bits[t] / 8);
      D[(size_t)i].push_back(n * sens * std::exp2(-2 * bits[t]) * (0.5 + rng.uniform()));
    }
  }
}

TEST_CASE("the Lagrangian choice is optimal for its own cost; the fill stays in budget and never loses") {
  Rng rng(5);
  int optimal = 0, cases = 0;
  for (int rep = 0; rep < 200; ++rep) {
    Table D, C;
    random_problem(rng, 3 + rng.randint(0, 3), D, C);
    double cmin = 0, cmax = 0;
    for (size_t i = 0; i < C.size(); ++i) {
      cmin += *std::min_element(C[i].begin(), C[i].end());
      cmax += *std::max_element(C[i].begin(), C[i].end());
    }
    const double budget = cmin + rng.uniform() * (cmax - cmin);
    const ChoiceAllocation r = allocate_choices(D, C, budget);
    CHECK(r.cost <= budget);
    CHECK(r.distortion <= r.lagrangian_distortion);
    // Everett: nothing as cheap as the Lagrangian choice has lower distortion.
    CHECK(brute_force(D, C, r.lagrangian_cost) >= r.lagrangian_distortion * (1 - 1e-12));
    const double opt = brute_force(D, C, budget);
    CHECK(r.distortion >= opt * (1 - 1e-12));
    ++cases;
    if (r.distortion <= opt * (1 + 1e-12)) ++optimal;
    double d = 0, c = 0;
    for (size_t i = 0; i < D.size(); ++i) { d += D[i][(size_t)r.choice[i]]; c += C[i][(size_t)r.choice[i]]; }
    CHECK(d == doctest::Approx(r.distortion).epsilon(1e-12));
    CHECK(c == doctest::Approx(r.cost).epsilon(1e-12));
  }
  MESSAGE(optimal, " of ", cases, " random budgets at the exhaustive optimum");
  CHECK(optimal >= cases * 8 / 10);  // measured: see the message
}

TEST_CASE("convex choices with equal items: the result is the exhaustive optimum") {
  // Identical items, distortion 4^-b: the best use of a budget of k extra bits is any k upgrades.
  Table D(5), C(5);
  for (int i = 0; i < 5; ++i)
    for (int b = 2; b <= 5; ++b) { D[(size_t)i].push_back(std::exp2(-2.0 * b)); C[(size_t)i].push_back(b); }
  for (double budget : {10.0, 12.0, 13.0, 17.0, 25.0}) {
    const ChoiceAllocation r = allocate_choices(D, C, budget);
    CHECK(r.distortion == doctest::Approx(brute_force(D, C, budget)).epsilon(1e-12));
    CHECK(r.cost <= budget);
  }
  // Everything fits at the least distortion: λ = 0.
  const ChoiceAllocation all = allocate_choices(D, C, 100);
  CHECK(all.lambda == 0);
  for (int c : all.choice) CHECK(c == 3);
}

TEST_CASE("bad input: a clear error") {
  Table D = {{1, 0.5}}, C = {{2, 4}};
  CHECK_THROWS_WITH_AS(allocate_choices(D, C, 1.5), doctest::Contains("below the cheapest choice"), Error);
  CHECK_THROWS_WITH_AS(allocate_choices({{1, NAN}}, C, 5), doctest::Contains("item 1 choice 2: distortion"), Error);
  CHECK_THROWS_WITH_AS(allocate_choices(D, {{2, 0}}, 5), doctest::Contains("item 1 choice 2: cost 0"), Error);
  CHECK_THROWS_WITH_AS(allocate_choices({{1}, {}}, {{1}, {}}, 5), doctest::Contains("item 2 has no choices"), Error);
  CHECK_THROWS_WITH_AS(allocate_choices({}, {}, 5), doctest::Contains("no items"), Error);
}
