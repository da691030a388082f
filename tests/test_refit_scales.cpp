// Scale refit for fixed codes (solvers/refit_scales.h, docs/methods.md#refit-scales): the scales
// equal a dense f64 least-squares solve per row; the objective never rises and matches the
// returned weight's; codes, zeros and outliers are kept; fp16 scales stay fp16; refusals.
#include <doctest/doctest.h>

#include <Eigen/Dense>
#include <cmath>

#include "core/half.h"
#include "layer_problems.h"
#include "solvers/gptq.h"
#include "solvers/quantease_outliers.h"
#include "solvers/refit_scales.h"

using namespace qf;

static GridSpec spec_of(int bits, bool sym, int64_t group) {
  GridSpec s;
  s.bits = bits;
  s.sym = sym;
  s.group = group;
  return s;
}

TEST_CASE("refit_scales: each row's scales are the dense least-squares solution; the objective falls") {
  const test::Problem pr = test::scaled_problem(6, 40, 3, 200, 0.4);
  const LayerProblem p = LayerProblem::make(pr.W, pr.S);
  for (bool sym : {false, true})
    for (int64_t group : {(int64_t)-1, (int64_t)8, (int64_t)12}) {
      const GridSpec sp = spec_of(3, sym, group);
      const QuantizedLinear q = gptq(p, sp).q;
      const RefitResult r = refit_scales(p, q);
      CHECK(r.q.codes.to_vector() == q.codes.to_vector());
      CHECK(r.q.grid.zero == q.grid.zero);
      CHECK(r.objective_after <= r.objective_before);
      CHECK(r.objective_after == doctest::Approx(objective(p, r.q.dequantize()).value).epsilon(1e-5));
      CHECK(r.objective_before == doctest::Approx(objective(p, q.dequantize()).value).epsilon(1e-5));
      INFO("sym ", sym, " group ", group, ": objective ", r.objective_before, " -> ", r.objective_after);
      CHECK(r.objective_after < 0.999 * r.objective_before);  // GPTQ's min/max scales are not the LS ones
      // Brute force: the design D [c × ng] of row i, s = (DᵀΣD)⁻¹ DᵀΣ w.
      const Eigen::MatrixXd S = test::to_md(pr.S), W = test::to_md(pr.W);
      const int64_t ng = q.grid.ngroups, c = 40;
      const uint8_t* cp = q.codes.data<uint8_t>();
      for (int64_t i = 0; i < 6; ++i) {
        Eigen::MatrixXd D = Eigen::MatrixXd::Zero(c, ng);
        for (int64_t j = 0; j < c; ++j) {
          const int64_t k = q.grid.g_idx[(size_t)j];
          D(j, k) = (double)cp[i * c + j] - (double)q.grid.z(i, k);
        }
        const Eigen::VectorXd s = (D.transpose() * S * D).ldlt().solve(D.transpose() * S * W.row(i).transpose());
        for (int64_t k = 0; k < ng; ++k) CHECK(r.q.grid.s(i, k) == doctest::Approx(s(k)).epsilon(1e-4));
      }
    }
}

TEST_CASE("refit_scales: fp16 scales stay fp16-exact, outliers are kept, bad grids are refused") {
  const test::Problem pr = test::scaled_problem(16, 64, 8, 300, 0.3);
  const LayerProblem p = LayerProblem::make(pr.W, pr.S);
  GridSpec sp = spec_of(4, false, 32);
  sp.f16_scales = true;
  const RefitResult r = refit_scales(p, gptq(p, sp).q);
  CHECK(r.objective_after < r.objective_before);
  CHECK(r.rows_improved > 0);
  for (float s : r.q.grid.scale) {
    CHECK(f16_to_f32(f32_to_f16(s)) == s);
    CHECK(s > 0.f);
  }
  for (size_t k = 0; k < r.q.grid.scale.size(); ++k) {
    const float m = r.q.grid.scale[k] * r.q.grid.zero[k];  // Q4_1's min −s·z stays fp16-exact
    CHECK(f16_to_f32(f32_to_f16(m)) == m);
  }
  // symmetric llamacpp mapping: negative scales are refitted too
  GridSpec sl = spec_of(4, true, 32);
  sl.mapping = GridMapping::Llamacpp;
  sl.f16_scales = true;
  const RefitResult rl = refit_scales(p, gptq(p, sl).q);
  CHECK(rl.objective_after < rl.objective_before);
  // outliers: kept as they are, the dense part refitted against W − H
  OutlierOptions oo;
  oo.ratio = 0.02;
  oo.iters = 3;
  const QuantizedLinear qo = quantease_outliers(p, spec_of(3, false, -1), oo).q;
  REQUIRE(qo.outliers.nnz() > 0);
  const RefitResult ro = refit_scales(p, qo);
  CHECK(ro.q.outliers.val == qo.outliers.val);
  CHECK(ro.objective_after <= ro.objective_before);
  CHECK(ro.objective_after == doctest::Approx(objective(p, ro.q.dequantize()).value).epsilon(1e-5));
  // refusals
  QuantizedLinear bad = gptq(p, spec_of(3, false, -1)).q;
  bad.grid.spec.float_zero = true;
  CHECK_THROWS_WITH_AS(refit_scales(p, bad), doctest::Contains("integer zeros"), Error);
  const test::Problem small = test::scaled_problem(16, 32, 9, 100, 0.3);
  CHECK_THROWS_WITH_AS(refit_scales(LayerProblem::make(small.W, small.S), r.q), doctest::Contains("does not match W"), Error);
}
