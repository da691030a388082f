// qforge tests — the layer problem is made once (quant/layer_problem.h): validated once, Σ kept
// as given, and trusted by every solver that takes it.
#include <doctest/doctest.h>

#include <cmath>

#include "layer_problems.h"
#include "quant/layer_problem.h"
#include "solvers/decoupleq.h"
#include "solvers/gptq.h"
#include "solvers/quantease.h"
#include "solvers/quantease_outliers.h"

using namespace qf;
using namespace qf::test;

namespace {
std::vector<float> bits(const Tensor& t) { return t.contiguous().to_vector(); }
GridSpec spec3() {
  GridSpec s;
  s.bits = 3;
  s.group = 16;
  return s;
}
}  // namespace

TEST_CASE("LayerProblem::make validates once and keeps Σ as given") {
  const Problem P = scaled_problem(24, 40, 3, 80, 0.5);
  const LayerProblem p = LayerProblem::make(P.W, P.S, {}, 80, "attn_in", "t");
  CHECK(p.sigma.same_storage(P.S));  // no copy
  CHECK(p.tokens == 80);
  CHECK(p.site == "attn_in");
  Tensor A = P.S.clone();  // asymmetric within the 1e-4·max tolerance: accepted, kept as given
  A.set({2, 9}, A.get({2, 9}) + 1e-6f * std::abs(A.get({2, 9})) + 1e-3f);
  const LayerProblem q = LayerProblem::make(P.W, A, {}, 0, "", "t");
  CHECK(q.sigma.same_storage(A));
  // the Tensor form of a solver equals its LayerProblem form, bit for bit
  CHECK(bits(gptq(P.W, A, spec3()).q.dequantize()) == bits(gptq(q, spec3()).q.dequantize()));
  Tensor Z = Tensor::empty(P.W.shape());
  CHECK(objective(P.W, Z, A).value == objective(q, Z).value);
  CHECK_THROWS_WITH_AS(LayerProblem::make(P.W, P.S, Tensor::empty({39}), 0, "", "t"), doctest::Contains("t: mu must be [40]"), Error);
  CHECK_THROWS_WITH_AS(LayerProblem::make(P.W, P.S, {}, -1, "", "t"), doctest::Contains("t: tokens must be >= 0"), Error);
  Tensor N = P.S.clone();
  N.set({0, 4}, NAN);
  CHECK_THROWS_WITH_AS(LayerProblem::make(P.W, N, {}, 0, "", "t"), doctest::Contains("t: NaN/Inf in Sigma at (1, 5) (1-based)"), Error);
}

TEST_CASE("every solver's Tensor form equals its LayerProblem form bit for bit") {
  const Problem P = scaled_problem(40, 48, 5, 96, 0.5);
  const LayerProblem p = LayerProblem::make(P.W, P.S);
  QuantEaseOptions qo;
  qo.iters = 4;
  qo.init = "gptq";
  CHECK(bits(quantease(P.W, P.S, spec3(), qo).q.dequantize()) == bits(quantease(p, spec3(), qo).q.dequantize()));
  OutlierOptions oo;
  oo.iters = 3;
  oo.ratio = 0.02;
  const OutlierResult a = quantease_outliers(P.W, P.S, spec3(), oo), b = quantease_outliers(p, spec3(), oo);
  CHECK(bits(a.q.dequantize()) == bits(b.q.dequantize()));
  CHECK(a.objective == b.objective);
  AltMinOptions ao;
  ao.iters = 2;
  CHECK(bits(alt_min(P.W, P.S, spec3(), ao).q.dequantize()) == bits(alt_min(p, spec3(), ao).q.dequantize()));
  Tensor W1 = P.W.clone(), W2 = P.W.clone();
  const Grid g = grid_fit(P.W, spec3());
  CHECK(cd_sweep(P.W, P.S, W1, g) == cd_sweep(p, p.W, W2, g));
  CHECK(bits(W1) == bits(W2));
  CHECK_THROWS_WITH_AS(cd_sweep(p, Tensor::empty({40, 47}), W2, g), doctest::Contains("cd_sweep: the target must be f32 [40, 48]"), Error);
}
