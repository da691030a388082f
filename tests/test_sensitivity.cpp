// CVXQ's sensitivity statistics (sensitivity.h): the PCA basis against the covariance computed by
// hand, the squared-gradient means against per-position backward passes on the full window and
// against finite differences, group_mean against brute force, determinism and bad input.
#include <doctest/doctest.h>
#include <omp.h>

#include <Eigen/Dense>
#include <cmath>
#include <cstring>

#include "model/backward.h"
#include "solvers/cvxq.h"
#include "model/forward.h"
#include "calib/sensitivity.h"
#include "tiny_model.h"

using namespace qf;
using qf::test::tiny_model;

static std::vector<int32_t> random_tokens(uint64_t seed, int n, int vocab) {
  Rng rng(seed);
  std::vector<int32_t> t((size_t)n);
  for (auto& x : t) x = (int32_t)rng.randint(0, vocab - 1);
  return t;
}

// hn = rmsnorm(h_L) for tokens [B·T], by the forward pieces.
static Tensor final_hidden(const Model& m, const std::vector<int32_t>& tok, int B, int T) {
  Tensor x = embed(m, tok);
  for (int l = 0; l < m.n_blocks(); ++l) x = block_forward(m, l, x, B, T);
  Tensor hn;
  rmsnorm(x, m.final_norm, m.cfg.norm_eps, hn);
  return hn;
}

TEST_CASE("hidden_pca: orthonormal eigenvectors of the centred hidden-state covariance") {
  const Model m = tiny_model(21);
  const int B = 5, T = 8, D = m.cfg.dim;
  const std::vector<int32_t> tok = random_tokens(3, B * T, m.cfg.vocab_size);
  std::vector<int> seen;
  const HiddenPca p = hidden_pca(m, tok, B, T, 6, /*chunk=*/2,  // chunks of 2 windows: 2 + 2 + 1
                                 [&](int done, int total, double) { seen.push_back(done * 100 + total); });
  CHECK(seen == std::vector<int>{205, 405, 505});  // progress after every chunk: (done, total)
  REQUIRE(p.components.shape() == Shape{6, D});
  CHECK(p.tokens == B * T);
  // The covariance by hand, in f64.
  const Tensor hn = final_hidden(m, tok, B, T);
  Eigen::MatrixXd H(B * T, D);
  for (int i = 0; i < B * T; ++i)
    for (int d = 0; d < D; ++d) H(i, d) = hn.f32()[i * D + d];
  const Eigen::RowVectorXd mu = H.colwise().mean();
  const Eigen::MatrixXd Hc = H.rowwise() - mu;
  const Eigen::MatrixXd C = Hc.transpose() * Hc / (double)(B * T);
  CHECK(p.total_variance == doctest::Approx(C.trace()).epsilon(1e-6));
  Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> es(C);
  for (int k = 0; k < 6; ++k) {
    Eigen::VectorXd v(D);
    for (int d = 0; d < D; ++d) v[d] = p.components.f32()[k * D + d];
    CHECK(v.norm() == doctest::Approx(1.0).epsilon(1e-5));
    CHECK(p.eigenvalues[k] == doctest::Approx(es.eigenvalues()[D - 1 - k]).epsilon(1e-6));
    CHECK((C * v - p.eigenvalues[k] * v).norm() <= 1e-5 * es.eigenvalues().maxCoeff());  // an eigenvector
    if (k > 0) CHECK(p.eigenvalues[k] <= p.eigenvalues[k - 1]);
    Eigen::Index imax;
    v.cwiseAbs().maxCoeff(&imax);
    CHECK(v[imax] > 0);  // sign convention
  }
  CHECK_THROWS_WITH_AS(hidden_pca(m, tok, B, T, D + 1), doctest::Contains("components must be in 1..16"), Error);
  CHECK_THROWS_WITH_AS(hidden_pca(m, tok, B, T - 1, 2), doctest::Contains("is not nwin·T"), Error);
}

// dz/dW of every linear for z = Σ_b v·hn[b, t] over the FULL windows (no prefix truncation).
static std::vector<std::vector<Tensor>> full_window_grads(const Model& m, const std::vector<int32_t>& tok, int B, int T,
                                                          const float* v, const std::vector<int>& ts) {
  const int D = m.cfg.dim;
  std::vector<std::vector<Tensor>> out(m.n_blocks());
  model_backward_from_hidden(
      m, tok, B, T,
      [&](const Tensor& hn) {
        Tensor d = Tensor::zeros(hn.shape());
        for (int b = 0; b < B; ++b)
          for (int t : ts) std::memcpy(d.f32() + ((int64_t)b * T + t) * D, v, sizeof(float) * D);
        return d;
      },
      [](int) { return BlockGradRequest::all(); },
      [&](int l, BlockGrads& g) {
        for (const Tensor& dW : g.dW) out[l].push_back(dW.clone());
      });
  return out;
}

TEST_CASE("gradient_statistics: the mean of squared per-position gradients, prefixes = full windows") {
  const Model m = tiny_model(22);
  const int nwin = 3, T = 8, D = m.cfg.dim;
  const std::vector<int32_t> tok = random_tokens(5, nwin * T, m.cfg.vocab_size);
  const HiddenPca p = hidden_pca(m, tok, nwin, T, 2);
  GradStatsOptions o;
  o.stride = 3;  // positions 2 and 5 of each window (prefixes of 3 and 6 tokens)
  o.iters = 4;   // windows 0, 1, 2, 0; components 0, 1, 0, 1
  const GradStats gs = gradient_statistics(m, tok, nwin, T, p, o);
  CHECK(gs.iters == 4);
  CHECK(gs.samples == 8);
  // Brute force: one full-window backward per (iteration, position), squared, averaged.
  std::vector<std::vector<std::vector<double>>> want(m.n_blocks());
  for (int it = 0; it < 4; ++it) {
    const int w = it % nwin;
    const std::vector<int32_t> win(tok.begin() + w * T, tok.begin() + (w + 1) * T);
    for (int t : {2, 5}) {
      const auto g = full_window_grads(m, win, 1, T, p.components.f32() + (it % 2) * D, {t});
      for (int l = 0; l < m.n_blocks(); ++l) {
        want[l].resize(g[l].size());
        for (size_t j = 0; j < g[l].size(); ++j) {
          want[l][j].resize((size_t)g[l][j].numel(), 0.0);
          for (int64_t e = 0; e < g[l][j].numel(); ++e) want[l][j][(size_t)e] += std::pow((double)g[l][j].f32()[e], 2) / 8;
        }
      }
    }
  }
  double worst = 0;
  for (int l = 0; l < m.n_blocks(); ++l)
    for (size_t j = 0; j < 7; ++j) {
      REQUIRE(gs.g2[l][j].numel() == (int64_t)want[l][j].size());
      double scale = 0;
      for (double x : want[l][j]) scale = std::max(scale, x);
      REQUIRE(scale > 0);
      for (int64_t e = 0; e < gs.g2[l][j].numel(); ++e)
        worst = std::max(worst, std::abs(gs.g2[l][j].f32()[e] - want[l][j][(size_t)e]) / scale);
    }
  CHECK(worst < 1e-4);

  // joint_positions: one backward of z_2 + z_5, squared.
  o.joint_positions = true;
  o.iters = 1;
  const GradStats gj = gradient_statistics(m, tok, nwin, T, p, o);
  CHECK(gj.samples == 1);
  const std::vector<int32_t> win0(tok.begin(), tok.begin() + T);
  const auto g = full_window_grads(m, win0, 1, T, p.components.f32(), {2, 5});
  for (int64_t e = 0; e < g[1][6].numel(); ++e)
    CHECK(gj.g2[1][6].f32()[e] == doctest::Approx(std::pow(g[1][6].f32()[e], 2)).epsilon(1e-4).scale(1e-9));
}

TEST_CASE("gradient_statistics: finite differences of z on one weight") {
  // Independent of the backward code: z(W) = v·hn_t by the forward, central differences in W.
  Model m = tiny_model(23);
  const int T = 8, D = m.cfg.dim;
  const std::vector<int32_t> tok = random_tokens(7, T, m.cfg.vocab_size);
  const HiddenPca p = hidden_pca(m, tok, 1, T, 1);
  GradStatsOptions o;
  o.stride = 8;  // t = 7 only
  const GradStats gs = gradient_statistics(m, tok, 1, T, p, o);
  auto z = [&]() {
    const Tensor hn = final_hidden(m, tok, 1, T);
    double s = 0;
    for (int d = 0; d < D; ++d) s += (double)p.components.f32()[d] * hn.f32()[7 * D + d];
    return s;
  };
  for (auto [l, j, e] : {std::tuple{0, 0, 5}, std::tuple{1, 3, 17}, std::tuple{0, 6, 40}, std::tuple{1, 4, 3}}) {
    float* w = m.blocks[l].linears[j].weight.f32() + e;
    const float w0 = *w, h = 1e-2f;
    *w = w0 + h;
    const double zp = z();
    *w = w0 - h;
    const double zm = z();
    *w = w0;
    const double fd = (zp - zm) / (2.0 * h);
    CHECK(std::sqrt((double)gs.g2[l][j].f32()[e]) == doctest::Approx(std::abs(fd)).epsilon(2e-2).scale(1e-4));
  }
}

TEST_CASE("gradient_statistics: bit-identical for any thread count; bad input") {
  const Model m = tiny_model(24);
  const int nwin = 4, T = 8;
  const std::vector<int32_t> tok = random_tokens(9, nwin * T, m.cfg.vocab_size);
  const HiddenPca p = hidden_pca(m, tok, nwin, T, 3);
  GradStatsOptions o;
  o.batch = 2;
  o.stride = 4;
  o.iters = 5;  // 5 iterations × 2 positions: passes of two prefix lengths interleave across threads
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  const GradStats a = gradient_statistics(m, tok, nwin, T, p, o);
  CHECK(a.iters == 5);
  CHECK(a.samples == 10);
  // Threads sharing each pass's loops (1 pass at a time) and whole passes in parallel (2, 3, 4
  // at once; the sums take the passes in order): the same bits.
  for (int threads : {2, 3, 4})
    for (int concurrent : {1, 0}) {
      CAPTURE(threads);
      CAPTURE(concurrent);
      omp_set_num_threads(threads);
      GradStatsOptions oc = o;
      oc.max_concurrent_passes = concurrent;
      std::vector<int> seen;
      const GradStats b = gradient_statistics(m, tok, nwin, T, p, oc, [&](int done, int, double) { seen.push_back(done); });
      CHECK(seen == std::vector<int>{1, 2, 3, 4, 5});  // progress once per iteration, in order
      CHECK(b.samples == a.samples);
      for (int l = 0; l < m.n_blocks(); ++l)
        for (size_t j = 0; j < 7; ++j)
          CHECK(std::memcmp(a.g2[l][j].f32(), b.g2[l][j].f32(), sizeof(float) * a.g2[l][j].numel()) == 0);
      // An error in one pass (here the progress callback's) reaches the caller; no thread hangs.
      CHECK_THROWS_WITH_AS(gradient_statistics(m, tok, nwin, T, p, oc,
                                               [](int done, int, double) {
                                                 if (done == 2) fail("stop at iteration 2");
                                               }),
                           doctest::Contains("stop at iteration 2"), Error);
    }
  omp_set_num_threads(saved);
  o.iters = 0;

  o.batch = 5;
  CHECK_THROWS_WITH_AS(gradient_statistics(m, tok, nwin, T, p, o), doctest::Contains("batch must be in 1..4"), Error);
  o.batch = 1;
  o.stride = 0;
  CHECK_THROWS_WITH_AS(gradient_statistics(m, tok, nwin, T, p, o), doctest::Contains("stride must be >= 1"), Error);
  o.stride = 4;
  HiddenPca bad = p;
  bad.components = Tensor::zeros({2, 5});
  CHECK_THROWS_WITH_AS(gradient_statistics(m, tok, nwin, T, bad, o), doctest::Contains("PCA basis must be [k, 16]"), Error);
}

TEST_CASE("group_mean: brute force over (row group × column group)") {
  Rng rng(31);
  const Tensor M = qf::test::randn_tensor(rng, {7, 10}, 1.0);
  const std::vector<int32_t> rg = {2, 0, 1, 0, 2, 1, 0};
  const std::vector<double> g = group_mean(M, rg, 3, 4);  // columns 0-3, 4-7, 8-9
  REQUIRE(g.size() == 9);
  for (int k = 0; k < 3; ++k)
    for (int c = 0; c < 3; ++c) {
      double s = 0;
      int n = 0;
      for (int i = 0; i < 7; ++i)
        for (int j = 4 * c; j < std::min(10, 4 * c + 4); ++j)
          if (rg[i] == k) s += M.f32()[i * 10 + j], ++n;
      CHECK(g[(size_t)(k * 3 + c)] == doctest::Approx(s / n).epsilon(1e-12));
    }
  const std::vector<double> per_row = group_mean(M, {}, 0, -1);  // each row its own, whole rows
  const std::vector<double> rm = row_means(M);
  for (int i = 0; i < 7; ++i) CHECK(per_row[(size_t)i] == doctest::Approx(rm[(size_t)i]).epsilon(1e-12));
  CHECK_THROWS_WITH_AS(group_mean(M, {0, 1}, 2, 1), doctest::Contains("row_group has 2 entries"), Error);
}
