// CVXQ's layer pieces (docs/methods.md#cvxq): row clustering, group spread, bias correction —
// against hand values and the defining property.
#include <doctest/doctest.h>

#include <cmath>

#include "solvers/cvxq.h"
#include "core/error.h"
#include "core/rng.h"

using namespace qf;

TEST_CASE("row_clusters: equal consecutive chunks of the score order") {
  // scores of rows 0..6; order by score: 3(−5) 1(0) 5(1) 0(2) 6(2) 2(7) 4(9)
  const std::vector<double> s = {2, 0, 7, -5, 9, 1, 2};
  // 7 rows into 3 clusters: sizes 3, 2, 2 → {3, 1, 5}, {0, 6}, {2, 4}
  CHECK(row_clusters(s, 3) == std::vector<int32_t>{1, 0, 2, 0, 2, 0, 1});
  CHECK(row_clusters(s, 1) == std::vector<int32_t>(7, 0));
  CHECK(row_clusters(s, 7) == std::vector<int32_t>{3, 1, 5, 0, 6, 2, 4});
  CHECK_THROWS_WITH_AS(row_clusters(s, 8), doctest::Contains("nclusters must be in 1..7"), Error);
  CHECK_THROWS_WITH_AS(row_clusters({1, NAN}, 1), doctest::Contains("score of row 2 is NaN"), Error);
}

TEST_CASE("group_spread: mean squared deviation from the group median") {
  // rows {0, 2} pooled, groups of 2 columns: group 0 of row group 0 = {1, 2, 5, 9}: lower median 2,
  // deviations² {1, 0, 9, 49} → 59/4.
  const Tensor W = Tensor::from_data({3, 4}, {1, 2, 3, 3,  //
                                              0, 0, 1, -1,  //
                                              5, 9, 3, 3});
  const std::vector<double> s = group_spread(W, {0, 1, 0}, 2, 2);
  REQUIRE(s.size() == 4);
  CHECK(s[0] == doctest::Approx(59.0 / 4));
  CHECK(s[1] == doctest::Approx(0.0));        // {3, 3, 3, 3}
  CHECK(s[2] == doctest::Approx(0.0));        // {0, 0}: median 0
  CHECK(s[3] == doctest::Approx(2.0));        // {1, −1}: lower median −1 → {4, 0}/2
  const std::vector<double> rows = row_log2_variance(W);
  CHECK(rows[0] == doctest::Approx(std::log2(0.6875)));  // var{1,2,3,3} = 11/16
  CHECK(std::isinf(row_log2_variance(Tensor::from_data({1, 3}, {2, 2, 2}))[0]));
}

TEST_CASE("bias correction keeps the mean layer output on the calibration inputs") {
  Rng g(4);
  const int64_t r = 5, c = 7, N = 50;
  Tensor W = Tensor::empty({r, c}), What = Tensor::empty({r, c}), X = Tensor::empty({N, c}), b = Tensor::empty({r});
  for (int64_t k = 0; k < r * c; ++k) {
    W.f32()[k] = (float)g.normal();
    What.f32()[k] = W.f32()[k] + 0.1f * (float)g.normal();
  }
  for (int64_t k = 0; k < N * c; ++k) X.f32()[k] = 0.5f + (float)g.normal();  // nonzero mean
  for (int64_t k = 0; k < r; ++k) b.f32()[k] = (float)g.normal();
  Tensor mu = Tensor::empty({c});
  for (int64_t j = 0; j < c; ++j) {
    double s = 0;
    for (int64_t t = 0; t < N; ++t) s += X.f32()[t * c + j];
    mu.f32()[j] = (float)(s / N);
  }
  for (bool with_bias : {true, false}) {
    const Tensor b2 = bias_correction(W, What, mu, with_bias ? b : Tensor());
    for (int64_t i = 0; i < r; ++i) {
      double before = 0, after = 0;
      for (int64_t t = 0; t < N; ++t) {
        double y = with_bias ? b.f32()[i] : 0.0, yq = b2.f32()[i];
        for (int64_t j = 0; j < c; ++j) {
          y += (double)W.f32()[i * c + j] * X.f32()[t * c + j];
          yq += (double)What.f32()[i * c + j] * X.f32()[t * c + j];
        }
        before += y / N;
        after += yq / N;
      }
      CHECK(after == doctest::Approx(before).epsilon(1e-5));
    }
  }
  CHECK_THROWS_WITH_AS(bias_correction(W, What, Tensor::empty({3}), b), doctest::Contains("μ_x has 3 entries, the layer has 7 inputs"), Error);
}
