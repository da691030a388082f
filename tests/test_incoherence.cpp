// QuIP incoherence processing (docs/methods.md#quip) and the transforms it rests on
// (methods.md#transforms): the randomized Hadamard and butterfly transforms are orthogonal and
// their fast forms equal dense f64 constructions; every transform direction (W·T, O·W, W·T⁻¹,
// O⁻¹·W, T·Σ·Tᵀ, T·x) equals the dense product; the transformed problem equals its dense f64
// construction; quantizing in the transformed basis and undoing equals the dense fake-quant
// reference and keeps the layer objective; μ-incoherence drops on a layer with outliers; seeds are
// deterministic, distinct per layer and thread-count independent; storage and errors.
#include <doctest/doctest.h>
#include <omp.h>

#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/linalg.h"
#include "core/rng.h"
#include "formats/export.h"
#include "formats/loader.h"
#include "formats/loader_qforge.h"
#include "formats/safetensors.h"
#include "layer_problems.h"
#include "scratch_dir.h"
#include "quant/incoherence.h"
#include "quant/storage.h"
#include "solvers/gptq.h"
#include "solvers/rtn.h"
#include "solvers/solver.h"

using namespace qf;
using Eigen::MatrixXd;
using Eigen::VectorXd;
using test::to_md;
using test::to_tensor;

namespace {

double max_abs(const MatrixXd& A) { return A.cwiseAbs().maxCoeff(); }
double rel_err(const MatrixXd& A, const MatrixXd& B) { return max_abs(A - B) / std::max(1e-30, max_abs(B)); }

// QuIP's butterfly, densely in f64 from its plan (linalg.h's formula, independently of
// random_butterfly and random_butterfly_matrix): T = P_out·(Q_a ⊗ Q_b)·P_in, (P x)_i = x_perm[i].
MatrixXd butterfly_f64(int64_t n, uint64_t seed) {
  const RandomButterfly p = random_butterfly_plan(n, seed);
  MatrixXd K(n, n), Pin = MatrixXd::Zero(n, n), Pout = MatrixXd::Zero(n, n);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) K(i, j) = p.A(i / p.b, j / p.b) * p.B(i % p.b, j % p.b);
  for (int64_t i = 0; i < n; ++i) {
    Pin(i, p.perm_in[(size_t)i]) = 1;
    Pout(i, p.perm_out[(size_t)i]) = 1;
  }
  return Pout * K * Pin;
}

// A transform as a dense f64 matrix (none: the identity of size n_none).
MatrixXd dense_of(const LinearTransform& t, int64_t n_none = 0) {
  const int64_t n = t.none() ? n_none : t.n;
  MatrixXd T = MatrixXd::Zero(n, n);
  VectorXd d = VectorXd::Ones(n);
  for (size_t i = 0; i < t.diag.size(); ++i) d((int64_t)i) = t.diag[i];
  switch (t.kind) {
    case TransformKind::None: return MatrixXd::Identity(n, n);
    case TransformKind::Permutation:
      for (int64_t c = 0; c < n; ++c) T(c, t.perm[(size_t)c]) = 1;
      return T;
    case TransformKind::Diagonal: return d.asDiagonal();
    case TransformKind::Hadamard: return to_md(random_hadamard_matrix(n, t.seed)) * d.asDiagonal();
    case TransformKind::Butterfly: return butterfly_f64(n, t.seed) * d.asDiagonal();
    case TransformKind::Dense: return to_md(t.dense);
  }
  return T;
}

Tensor randn(int64_t r, int64_t c, uint64_t seed) {
  Rng g(seed);
  Tensor t = Tensor::empty({r, c});
  for (int64_t i = 0; i < r * c; ++i) t.f32()[i] = (float)g.normal();
  return t;
}

std::vector<float> rand_diag(int64_t n, uint64_t seed) {
  Rng g(seed);
  std::vector<float> d((size_t)n);
  for (auto& x : d) x = (float)(0.25 + 2 * g.uniform()) * (g.uniform() < 0.5 ? -1.f : 1.f);
  return d;
}

LinearTransform seeded(TransformKind k, int64_t n, uint64_t seed, std::vector<float> diag = {}) {
  LinearTransform t;
  t.kind = k;
  t.n = n;
  t.seed = seed;
  t.diag = std::move(diag);
  return t;
}

}  // namespace

TEST_CASE("randomized Hadamard and butterfly transforms: orthogonal to 1e-6, fast = dense, any n = 2^k·m") {
  for (int64_t n : {1, 2, 7, 64, 97, 172, 576, 1536}) {
    CAPTURE(n);
    const uint64_t seed = 1000 + (uint64_t)n;
    const MatrixXd I = MatrixXd::Identity(n, n);
    const MatrixXd H = to_md(random_hadamard_matrix(n, seed));
    CHECK(max_abs(H.transpose() * H - I) <= 1e-6);
    const MatrixXd B = butterfly_f64(n, seed);
    CHECK(max_abs(B.transpose() * B - I) <= 1e-12);
    const Tensor Bf = random_butterfly_matrix(n, seed);
    CHECK(max_abs(to_md(Bf) - B) <= 1e-7);  // f32 entries of the same products
    CHECK(max_abs(to_md(Bf).transpose() * to_md(Bf) - I) <= 1e-6);
    const RandomButterfly p = random_butterfly_plan(n, seed);
    CHECK(p.a * p.b == n);
    CHECK(p.a <= p.b);
    for (int64_t a = p.a + 1; a * a <= n; ++a) CHECK(n % a != 0);  // a is the largest divisor ≤ √n
    // The fast transforms against the dense matrices: X·Tᵀ (forward on rows) and X·T (inverse).
    const Tensor X = randn(5, n, seed + 1);
    const MatrixXd Xd = to_md(X);
    CHECK(rel_err(to_md(random_butterfly(X, seed)), Xd * B.transpose()) <= 1e-5);
    CHECK(rel_err(to_md(random_butterfly(X, seed, true)), Xd * B) <= 1e-5);
    CHECK(rel_err(to_md(random_hadamard(X, seed)), Xd * H.transpose()) <= 1e-5);
    // along dim 0 too
    CHECK(rel_err(to_md(random_butterfly(X.t().contiguous(), seed, false, 0)), B * Xd.transpose()) <= 1e-5);
  }
  CHECK(random_butterfly_plan(576, 3).a == 24);
  CHECK(random_butterfly_plan(1536, 3).a == 32);
  CHECK(random_butterfly_plan(172, 3).b == 43);
  CHECK(random_butterfly_plan(97, 3).a == 1);  // a prime: one dense random orthogonal factor
  // Deterministic in the seed, different across seeds.
  CHECK(max_abs(to_md(random_butterfly_matrix(64, 5)) - to_md(random_butterfly_matrix(64, 5))) == 0);
  CHECK(max_abs(to_md(random_butterfly_matrix(64, 5)) - to_md(random_butterfly_matrix(64, 6))) > 0.01);
  CHECK_THROWS_WITH_AS(random_butterfly(randn(2, 8, 1), random_butterfly_plan(9, 1)), doctest::Contains("does not match the transform's n = 9"), Error);
  CHECK_THROWS_WITH_AS(random_butterfly_plan(0, 1), doctest::Contains("random_butterfly: n must be >= 1"), Error);
}

TEST_CASE("transforms: W·T, O·W, W·T⁻¹, O⁻¹·W, T·Σ·Tᵀ and T·x equal the dense f64 products, every kind") {
  const int64_t n = 36;  // 4·9: the Hadamard's odd factor is a dense 9×9; butterfly 6×6
  std::vector<std::pair<const char*, LinearTransform>> ts;
  ts.push_back({"hadamard", seeded(TransformKind::Hadamard, n, 11)});
  ts.push_back({"hadamard + diag", seeded(TransformKind::Hadamard, n, 12, rand_diag(n, 1))});
  ts.push_back({"butterfly", seeded(TransformKind::Butterfly, n, 13)});
  ts.push_back({"butterfly + diag", seeded(TransformKind::Butterfly, n, 14, rand_diag(n, 2))});
  {
    LinearTransform t;
    t.kind = TransformKind::Diagonal, t.n = n, t.diag = rand_diag(n, 3);
    ts.push_back({"diag", t});
    LinearTransform p;
    p.kind = TransformKind::Permutation, p.n = n;
    for (int64_t i = 0; i < n; ++i) p.perm.push_back((int32_t)((7 * i + 3) % n));
    ts.push_back({"perm", p});
    LinearTransform dn;
    dn.kind = TransformKind::Dense, dn.n = n, dn.dense = randn(n, n, 4);
    ts.push_back({"dense", dn});
  }
  const Tensor Wi = randn(7, n, 21), Wo = randn(n, 5, 22);
  const test::Problem P = test::scaled_problem(2, n, 23, 80, 0.6);
  const Tensor x = randn(1, n, 24).view({n});
  for (auto& [name, t] : ts) {
    CAPTURE(name);
    t.validate("test");
    const MatrixXd T = dense_of(t), Ti = T.inverse();
    CHECK(rel_err(to_md(transform_apply_input(t, Wi)), to_md(Wi) * T) <= 1e-5);
    CHECK(rel_err(to_md(transform_apply_output(t, Wo)), T * to_md(Wo)) <= 1e-5);
    CHECK(rel_err(to_md(transform_apply_input_inverse(t, Wi)), to_md(Wi) * Ti) <= 1e-4);
    CHECK(rel_err(to_md(transform_apply_output_inverse(t, Wo)), Ti * to_md(Wo)) <= 1e-4);
    const Tensor G = transform_gram(t, P.S);
    CHECK(rel_err(to_md(G), T * to_md(P.S) * T.transpose()) <= 1e-5);
    CHECK(max_abs(to_md(G) - to_md(G).transpose()) == 0);  // exactly symmetric
    CHECK(rel_err(to_md(transform_vector(t, x).view({n, 1})), T * to_md(x.view({n, 1}))) <= 1e-5);
    // Round trips.
    CHECK(rel_err(to_md(transform_apply_input(t, transform_apply_input_inverse(t, Wi))), to_md(Wi)) <= 1e-4);
    CHECK(rel_err(to_md(transform_apply_output_inverse(t, transform_apply_output(t, Wo))), to_md(Wo)) <= 1e-4);
  }
  CHECK_THROWS_WITH_AS(transform_apply_input_inverse(ts[0].second, Wo), doctest::Contains("input transform of size 36 on a weight of shape [36, 5]"), Error);
  CHECK_THROWS_WITH_AS(transform_gram(ts[0].second, Wi), doctest::Contains("must be [36, 36], got [7, 36]"), Error);
}

TEST_CASE("seeded transforms with a diagonal: storage 64 + 32·n bits, validation") {
  CHECK(seeded(TransformKind::Hadamard, 100, 1).storage_bits() == 64);
  CHECK(seeded(TransformKind::Butterfly, 100, 1).storage_bits() == 64);
  CHECK(seeded(TransformKind::Hadamard, 100, 1, std::vector<float>(100, 0.5f)).storage_bits() == 64 + 32 * 100);
  CHECK(seeded(TransformKind::Butterfly, 100, 1, std::vector<float>(100, 0.5f)).storage_bits() == 64 + 32 * 100);
  CHECK_THROWS_WITH_AS(seeded(TransformKind::Hadamard, 4, 1, {1, 2, 3}).validate("x"), doctest::Contains("x: the diagonal has 3 entries, expected 4"), Error);
  CHECK_THROWS_WITH_AS(seeded(TransformKind::Butterfly, 4, 1, {1, 2, 0, 3}).validate("x"), doctest::Contains("diagonal entry 3 is 0"), Error);
  TransformKind k;
  CHECK(transform_kind_from_name("butterfly", &k));
  CHECK(k == TransformKind::Butterfly);
  CHECK(std::string(transform_kind_name(TransformKind::Butterfly)) == "butterfly");

  // A quantized linear with QuIP transforms on both sides of a [48, 36] weight: the hand formula.
  QuantizedLinear q;
  GridSpec sp;
  sp.bits = 3;
  q.grid = grid_fit(randn(48, 36, 5), sp);
  q.codes = Tensor::empty({48, 36}, DType::U8);
  q.input = seeded(TransformKind::Hadamard, 36, 7, std::vector<float>(36, 2.f));
  q.output = seeded(TransformKind::Butterfly, 48, 8);
  const StorageBits b = storage_bits(q);
  CHECK(b.transform == (64 + 32 * 36) + 64);
  CHECK(b.codes == 3.0 * 48 * 36);
  CHECK(b.params == 32.0 * 48);  // asymmetric per-channel: scale + zero per row
}

TEST_CASE("incoherence: W′ = Uᵀ·W·diag(s)·Vᵀ, Σ′ = T·Σ·Tᵀ, μ′ = T·μ against a dense f64 construction") {
  const int64_t r = 40, c = 36;
  test::Problem P = test::scaled_problem(r, c, 31, 100, 0.7);
  Tensor mu = randn(1, c, 32).view({c});
  const LayerProblem lp = LayerProblem::make(P.W, P.S, mu, 100, "attn_in");
  for (TransformKind kind : {TransformKind::Hadamard, TransformKind::Butterfly})
    for (IncoherenceSides sides : {IncoherenceSides::Both, IncoherenceSides::Input, IncoherenceSides::Output})
      for (bool rescale : {true, false}) {
        CAPTURE(transform_kind_name(kind));
        CAPTURE(incoherence_sides_name(sides));
        CAPTURE(rescale);
        IncoherenceOptions o;
        o.seed = 777;
        o.kind = kind;
        o.sides = sides;
        o.rescale = rescale;
        const IncoherenceResult res = incoherence(lp, o);
        // s by the formula, in f64.
        const MatrixXd W = to_md(P.W), S = to_md(P.S);
        VectorXd s = VectorXd::Ones(c);
        if (rescale)
          for (int64_t j = 0; j < c; ++j) s(j) = std::pow(S(j, j) / S.cwiseAbs().maxCoeff() / W.col(j).squaredNorm(), 0.25);
        const bool in_rot = sides != IncoherenceSides::Output, out_rot = sides != IncoherenceSides::Input;
        const MatrixXd V = in_rot ? (kind == TransformKind::Hadamard ? to_md(random_hadamard_matrix(c, res.input_seed)) : butterfly_f64(c, res.input_seed))
                                  : MatrixXd::Identity(c, c);
        const MatrixXd U = out_rot ? (kind == TransformKind::Hadamard ? to_md(random_hadamard_matrix(r, res.output_seed)) : butterfly_f64(r, res.output_seed))
                                   : MatrixXd::Identity(r, r);
        const MatrixXd T = V * s.cwiseInverse().asDiagonal();
        CHECK(rel_err(dense_of(res.input, c), T) <= 1e-6);
        CHECK(res.input_seed == (in_rot ? incoherence_side_seed(777, false) : 0));
        CHECK(res.output_seed == (out_rot ? incoherence_side_seed(777, true) : 0));
        CHECK(res.input.kind == (in_rot ? kind : rescale ? TransformKind::Diagonal : TransformKind::None));
        CHECK(res.output.kind == (out_rot ? kind : TransformKind::None));
        CHECK(rel_err(to_md(res.problem.W), U.transpose() * W * s.asDiagonal() * V.transpose()) <= 1e-5);
        CHECK(rel_err(to_md(res.problem.sigma), T * S * T.transpose()) <= 1e-5);
        CHECK(rel_err(to_md(res.problem.mu.view({c, 1})), T * to_md(mu.view({c, 1}))) <= 1e-5);
        CHECK(res.problem.tokens == 100);
        CHECK(res.problem.site == "attn_in");
        if (rescale) {
          CHECK(res.stats.scale_min == doctest::Approx(s.minCoeff()).epsilon(1e-12));
          CHECK(res.stats.scale_max == doctest::Approx(s.maxCoeff()).epsilon(1e-12));
        }
      }
}

TEST_CASE("quantizing in the transformed basis then undoing = the dense fake-quant reference; the objective is kept") {
  const int64_t r = 48, c = 172;  // 172 = 4·43: neither side a power of two
  const test::Problem P = test::scaled_problem(r, c, 41, 400, 0.8);
  const LayerProblem lp = LayerProblem::make(P.W, P.S);
  for (TransformKind kind : {TransformKind::Hadamard, TransformKind::Butterfly})
    for (IncoherenceSides sides : {IncoherenceSides::Both, IncoherenceSides::Input, IncoherenceSides::Output}) {
      CAPTURE(transform_kind_name(kind));
      CAPTURE(incoherence_sides_name(sides));
      IncoherenceOptions o;
      o.seed = 5;
      o.kind = kind;
      o.sides = sides;
      const IncoherenceResult res = incoherence(lp, o);
      GridSpec sp;
      sp.bits = 3;
      GptqResult g = gptq(res.problem, sp);
      QuantizedLinear q = g.q;
      q.input = res.input;
      q.output = res.output;
      const MatrixXd What = to_md(q.dequantize_basis());
      const MatrixXd ref = dense_of(q.output, r) * What * dense_of(q.input, c);  // O·Ŵ′·T in f64
      const Tensor Weff = q.dequantize();
      CHECK(rel_err(to_md(Weff), ref) <= 1e-5);
      // tr((W − W_eff)Σ(W − W_eff)ᵀ) = tr((W′ − Ŵ′)Σ′(W′ − Ŵ′)ᵀ) to f32 precision.
      const double f = objective(lp, Weff).value, fp = objective(res.problem, q.dequantize_basis()).value;
      CHECK(f == doctest::Approx(fp).epsilon(1e-4));
      CHECK(f > 0);
    }
}

TEST_CASE("incoherence measures: the formulas, and μ drops on a layer with outlier columns and inputs") {
  // μ(W) = max|W_ij|·√(rows·cols)/‖W‖_F: 1 for a constant matrix, √(rows·cols) for a single spike.
  CHECK(mu_incoherence(Tensor::full({4, 9}, -2.f)) == doctest::Approx(1.0));
  Tensor spike = Tensor::zeros({4, 9});
  spike.set({2, 3}, 5.f);
  CHECK(mu_incoherence(spike) == doctest::Approx(6.0));
  // μ(Σ): identity-like eigenvectors (a diagonal Σ with distinct entries) → √n; sigma_diag_ratio.
  Tensor D = Tensor::zeros({16, 16});
  for (int64_t i = 0; i < 16; ++i) D.set({i, i}, (float)(i + 1));
  CHECK(mu_eigen_incoherence(D) == doctest::Approx(4.0));
  CHECK(sigma_diag_ratio(D) == doctest::Approx(16.0 / 8.5));

  // A layer with three outlier weight columns (×30) and two outlier input features (std 20).
  const int64_t r = 64, c = 128, N = 600;
  Rng g(99);
  Tensor W = randn(r, c, 98);
  for (int64_t col : {3, 50, 77})
    for (int64_t i = 0; i < r; ++i) W.set({i, col}, 30.f * W.get({i, col}));
  MatrixXd X(c, N);
  for (int64_t i = 0; i < c; ++i)
    for (int64_t k = 0; k < N; ++k) X(i, k) = (i == 10 || i == 20 ? 20.0 : 1.0) * g.normal();
  const MatrixXd S = X * X.transpose();
  const LayerProblem lp = LayerProblem::make(W, to_tensor(0.5 * (S + S.transpose())));
  IncoherenceOptions o;
  o.seed = 3;
  o.measure_sigma = true;
  const IncoherenceResult res = incoherence(lp, o);
  const IncoherenceStats& st = res.stats;
  MESSAGE("mu_W " << st.mu_w_before << " -> " << st.mu_w_after << ", diag ratio " << st.sigma_diag_before << " -> "
                  << st.sigma_diag_after << ", mu_Sigma " << st.mu_sigma_before << " -> " << st.mu_sigma_after);
  CHECK(st.mu_w_before == doctest::Approx(mu_incoherence(W)));
  CHECK(st.mu_w_after == doctest::Approx(mu_incoherence(res.problem.W)));
  CHECK(st.mu_w_after < st.mu_w_before / 3);
  CHECK(st.sigma_diag_after < st.sigma_diag_before / 10);
  CHECK(st.mu_sigma_after < st.mu_sigma_before / 2);
  CHECK(std::isnan(incoherence(lp, IncoherenceOptions{}).stats.mu_sigma_after));  // not measured by default

  // What it is for: at 2 bits per channel GPTQ in the incoherent basis beats GPTQ on W itself.
  GridSpec sp;
  sp.bits = 2;
  const double plain = objective(lp, gptq(lp, sp).q.dequantize()).value;
  QuantizedLinear q = gptq(res.problem, sp).q;
  q.input = res.input, q.output = res.output;
  const double quip = objective(lp, q.dequantize()).value;
  MESSAGE("2-bit objective: gptq " << plain << ", quip+gptq " << quip);
  CHECK(quip < plain);
}

TEST_CASE("incoherence seeds: per layer, deterministic, below 2^63; dead inputs; thread count; errors") {
  // The hand formula of quip_layer_seed.
  auto sm = [](uint64_t a) { return splitmix64(a); };
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char ch : std::string("down")) h = (h ^ ch) * 0x100000001b3ull;
  CHECK(quip_layer_seed(42, 3, "down") == sm(sm(sm(42) ^ 3ull) ^ h));
  CHECK(quip_layer_seed(42, 3, "down") != quip_layer_seed(42, 4, "down"));
  CHECK(quip_layer_seed(42, 3, "down") != quip_layer_seed(42, 3, "up"));
  CHECK(quip_layer_seed(42, 3, "down") != quip_layer_seed(43, 3, "down"));
  uint64_t x = 1234;
  const uint64_t a = splitmix64(x) >> 1, b = splitmix64(x) >> 1;
  CHECK(incoherence_side_seed(1234, false) == a);
  CHECK(incoherence_side_seed(1234, true) == b);
  for (uint64_t s : {0ull, 1ull, ~0ull}) {
    CHECK(incoherence_side_seed(s, false) < (1ull << 63));
    CHECK(incoherence_side_seed(s, true) < (1ull << 63));
    CHECK(incoherence_side_seed(s, false) != incoherence_side_seed(s, true));
  }

  // Dead inputs: their columns are zeroed before rotating, counted; the objective ignores them.
  test::Problem P = test::scaled_problem(24, 64, 51, 160, 0.7);
  for (int64_t k = 0; k < 64; ++k) P.S.set({9, k}, 0.f), P.S.set({k, 9}, 0.f);
  const LayerProblem lp = LayerProblem::make(P.W, P.S);
  IncoherenceOptions o;
  o.seed = 17;
  const IncoherenceResult r1 = incoherence(lp, o);
  CHECK(r1.stats.dead_inputs == 1);
  Tensor Wz = P.W.clone();
  for (int64_t i = 0; i < 24; ++i) Wz.set({i, 9}, 0.f);
  const MatrixXd back = dense_of(r1.output, 24) * to_md(r1.problem.W) * dense_of(r1.input, 64);  // O·W′·T = W with column 9 zeroed
  CHECK(rel_err(back, to_md(Wz)) <= 1e-5);
  CHECK(r1.input.diag[9] == 1.f);  // s = 1 for a dead input

  // Bit-identical on a rerun and on any thread count.
  const test::Problem Q = test::scaled_problem(300, 576, 52, 800, 0.7);
  const LayerProblem lq = LayerProblem::make(Q.W, Q.S);
  const int nt = omp_get_max_threads();
  omp_set_num_threads(1);
  const IncoherenceResult one = incoherence(lq, o);
  omp_set_num_threads(std::max(2, nt));
  const IncoherenceResult many = incoherence(lq, o), again = incoherence(lq, o);
  omp_set_num_threads(nt);
  for (const IncoherenceResult* other : {&many, &again}) {
    CHECK(std::memcmp(one.problem.W.f32(), other->problem.W.f32(), sizeof(float) * one.problem.W.numel()) == 0);
    CHECK(std::memcmp(one.problem.sigma.f32(), other->problem.sigma.f32(), sizeof(float) * one.problem.sigma.numel()) == 0);
    CHECK(one.input.diag == other->input.diag);
  }
  o.seed = 18;
  CHECK(incoherence(lq, o).input_seed != one.input_seed);

  o.kind = TransformKind::Dense;
  CHECK_THROWS_WITH_AS(incoherence(lp, o), doctest::Contains("incoherence: kind must be hadamard or butterfly, got dense"), Error);
  IncoherenceSides sd;
  CHECK(incoherence_sides_from_name("output", &sd));
  CHECK(sd == IncoherenceSides::Output);
  CHECK_FALSE(incoherence_sides_from_name("rows", &sd));
}

TEST_CASE("qforge format: QuIP transforms round-trip bit-exactly as version 2; a version-1 file cannot claim them") {
  const std::string dir = qf_test::scratch_dir("incoherence");
  Model m = load_model(resolve_model_files(std::string(QF_SHARED_DIR) + "/models/stories260K"));
  GridSpec sp;
  sp.bits = 4;
  // Block 2's q: a Hadamard with a diagonal on the input, a butterfly on the output; block 3's down:
  // both butterflies with a diagonal — from incoherence() on a synthetic Σ.
  for (auto [b, name, kind] : {std::tuple<int, const char*, TransformKind>{1, "q", TransformKind::Hadamard}, {2, "down", TransformKind::Butterfly}}) {
    Linear& l = m.block_mut(b).linear(name);
    const int64_t c = l.in_features();
    const test::Problem P = test::scaled_problem(1, c, 60 + b, 2 * c, 0.7);
    IncoherenceOptions o;
    o.seed = quip_layer_seed(0, b + 1, name);
    o.kind = kind;
    const IncoherenceResult res = incoherence(LayerProblem::make(l.weight, P.S), o);
    QuantizedLinear q = gptq(res.problem, sp).q;
    q.input = res.input;
    q.output = kind == TransformKind::Hadamard ? seeded(TransformKind::Butterfly, l.out_features(), res.output_seed) : res.output;
    l.weight = q.dequantize();
    l.quant = std::make_shared<const QuantizedLinear>(std::move(q));
  }
  const std::string path = dir + "/quip.safetensors";
  save_qforge(m, nullptr, path);
  std::map<std::string, std::string> md;
  REQUIRE(safetensors_peek_metadata(path, &md));
  CHECK(md["qforge_format"] == "2");
  const Model r = load_qforge(path);
  for (auto [b, name] : {std::pair<int, const char*>{1, "q"}, {2, "down"}}) {
    const Linear& a = m.block(b).linear(name);
    const Linear& l = r.block(b).linear(name);
    REQUIRE(l.quant);
    CHECK(std::memcmp(a.weight.contiguous().f32(), l.weight.contiguous().f32(), sizeof(float) * a.weight.numel()) == 0);
    CHECK(l.quant->input.kind == a.quant->input.kind);
    CHECK(l.quant->input.seed == a.quant->input.seed);
    CHECK(l.quant->input.diag == a.quant->input.diag);
    CHECK(l.quant->output.kind == TransformKind::Butterfly);
    CHECK(l.quant->output.seed == a.quant->output.seed);
    CHECK(l.quant->output.diag.empty());
  }
  // Exports that store plain codes refuse them, naming block and linear.
  CHECK_THROWS_WITH_AS(save_model(m, nullptr, dir + "/x.gguf", {"gguf", "Q8_0"}),
                       doctest::Contains("block 2 linear 'q' is quantized with an input hadamard transform"), Error);
  CHECK_THROWS_WITH_AS(save_model(m, nullptr, dir + "/x-gptq", {"gptq", ""}), doctest::Contains("block 2 linear 'q'"), Error);

  // The same file relabelled version 1 is refused where it holds what only version 2 has.
  std::string bytes = qf_test::read_bytes(path);
  const size_t h = bytes.find("\\\"qforge_format\\\":2"), mdp = bytes.find("\"qforge_format\":\"2\"");
  REQUIRE(h != std::string::npos);
  REQUIRE(mdp != std::string::npos);
  bytes[h + std::string("\\\"qforge_format\\\":").size()] = '1';
  bytes[mdp + std::string("\"qforge_format\":\"").size()] = '1';
  qf_test::write_bytes(dir + "/v1.safetensors", bytes);
  CHECK_THROWS_WITH_AS(load_qforge(dir + "/v1.safetensors"), doctest::Contains("needs qforge_format 2, the file says 1"), Error);

  // Without a diagonal or a butterfly the file stays version 1 (older readers read it).
  Model m1 = load_model(resolve_model_files(std::string(QF_SHARED_DIR) + "/models/stories260K"));
  Linear& l = m1.block_mut(0).linear("o");
  QuantizedLinear q = rtn(random_hadamard(l.weight, 9), sp);
  q.input = seeded(TransformKind::Hadamard, l.in_features(), 9);
  l.weight = q.dequantize();
  l.quant = std::make_shared<const QuantizedLinear>(std::move(q));
  save_qforge(m1, nullptr, dir + "/had.safetensors");
  REQUIRE(safetensors_peek_metadata(dir + "/had.safetensors", &md));
  CHECK(md["qforge_format"] == "1");
  CHECK(load_qforge(dir + "/had.safetensors").block(0).linear("o").quant->input.seed == 9);
}

TEST_CASE("the preprocessing registry: \"quip\" = incoherence() with the layer's seed, common info fields, errors") {
  const test::Problem P = test::scaled_problem(16, 48, 71, 120, 0.7);
  LayerProblem lp = LayerProblem::make(P.W, P.S, {}, 120, "ffn_in");
  lp.block = 3, lp.name = "up";
  GridSpec sp;
  const PreprocessResult r = preprocess_layer("quip", lp, sp, {{"seed", 11}, {"kind", "butterfly"}});
  IncoherenceOptions o;
  o.seed = quip_layer_seed(11, 3, "up");
  o.kind = TransformKind::Butterfly;
  const IncoherenceResult ref = incoherence(lp, o);
  CHECK(std::memcmp(r.problem.W.f32(), ref.problem.W.f32(), sizeof(float) * ref.problem.W.numel()) == 0);
  CHECK(std::memcmp(r.problem.sigma.f32(), ref.problem.sigma.f32(), sizeof(float) * ref.problem.sigma.numel()) == 0);
  CHECK(r.input.kind == TransformKind::Butterfly);
  CHECK(r.input.seed == ref.input.seed);
  CHECK(r.input.diag == ref.input.diag);
  CHECK(r.output.seed == ref.output.seed);
  CHECK(r.problem.block == 3);
  CHECK(r.problem.name == "up");
  CHECK(r.problem.site == "ffn_in");
  CHECK(r.info["preprocess"] == "quip");
  CHECK(r.info["seconds"].get<double>() >= 0);
  CHECK(r.info["input_seed"].get<int64_t>() == (int64_t)ref.input_seed);
  CHECK(r.info["mu_w_after"].get<double>() == doctest::Approx(ref.stats.mu_w_after));
  CHECK(r.info["transform_bits"].get<double>() == 64 + 32 * 48 + 64);
  CHECK(r.info["options"]["sides"] == "both");
  CHECK(find_preprocess("quip").options.size() == 5);
  CHECK_THROWS_WITH_AS(preprocess_layer("awq", lp, sp), doctest::Contains("unknown preprocessing step 'awq' (known: magr, quip)"), Error);
  CHECK_THROWS_WITH_AS(preprocess_layer("quip", lp, sp, {{"kind", "dense"}}), doctest::Contains("quip: option 'kind' must be one of hadamard, butterfly"), Error);
  CHECK_THROWS_WITH_AS(preprocess_layer("quip", lp, sp, {{"seeds", 1}}), doctest::Contains("quip: unknown option 'seeds'"), Error);
}
