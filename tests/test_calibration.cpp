// Calibration: seeded windows, deterministic f64 Gram accumulation, and the sequential
// block pipeline (quantized-prefix and full-precision chains).
#include <doctest/doctest.h>
#include <omp.h>

#include <cstring>

#include "calib/calibration.h"
#include "model/forward.h"
#include "formats/loader.h"

using namespace qf;

static const Model& stories() {
  static Model m = load_model(resolve_model_files(std::string(QF_SHARED_DIR) + "/models/stories260K"));
  return m;
}

static std::vector<int32_t> fake_tokens(int n) {
  std::vector<int32_t> t(n);
  for (int i = 0; i < n; ++i) t[i] = 3 + (i * 7919 + i / 5) % 509;
  return t;
}

TEST_CASE("windows: seeded, inside the range, exact slices; errors") {
  const auto toks = fake_tokens(5000);
  CalibWindowsOptions o;
  o.nsamples = 16;
  o.seqlen = 64;
  o.seed = 3;
  o.begin = 1000;
  o.end = 3000;
  std::vector<int64_t> off, off2;
  auto w = draw_windows(toks, o, &off);
  auto w2 = draw_windows(toks, o, &off2);
  CHECK(w == w2);
  REQUIRE(off.size() == 16);
  for (size_t s = 0; s < off.size(); ++s) {
    CHECK(off[s] >= 1000);
    CHECK(off[s] + 64 <= 3000);
    CHECK(std::equal(w.begin() + s * 64, w.begin() + (s + 1) * 64, toks.begin() + off[s]));
  }
  o.seed = 4;
  CHECK(draw_windows(toks, o) != w);
  o.end = 1050;
  CHECK_THROWS_WITH_AS(draw_windows(toks, o), doctest::Contains("fewer than one window of 64"), Error);
  o.end = 6000;
  CHECK_THROWS_WITH_AS(draw_windows(toks, o), doctest::Contains("not inside the 5000 tokens"), Error);
  o.end = -1;
  o.nsamples = 0;
  CHECK_THROWS_WITH_AS(draw_windows(toks, o), doctest::Contains("nsamples"), Error);
}

TEST_CASE("Gram accumulation equals XᵀX in f64 and does not depend on the thread count") {
  const int64_t N = 1300, c = 150;  // ragged token chunks and row blocks
  Tensor X = Tensor::empty({N, c});
  Rng g(11);
  for (int64_t i = 0; i < N * c; ++i) X.f32()[i] = (float)g.normal();
  Eigen::MatrixXd want = X.cmat().cast<double>().transpose() * X.cmat().cast<double>();
  const int nt = omp_get_max_threads();
  Eigen::MatrixXd S1 = Eigen::MatrixXd::Zero(c, c), S2 = Eigen::MatrixXd::Zero(c, c);
  omp_set_num_threads(1);
  accumulate_gram(S1, X);
  omp_set_num_threads(std::max(2, nt));
  accumulate_gram(S2, X);
  omp_set_num_threads(nt);
  CHECK((S1 - want).cwiseAbs().maxCoeff() / want.cwiseAbs().maxCoeff() < 1e-6);
  CHECK(std::memcmp(S1.data(), S2.data(), sizeof(double) * c * c) == 0);
  Eigen::MatrixXd bad = Eigen::MatrixXd::Zero(c + 1, c + 1);
  CHECK_THROWS_WITH_AS(accumulate_gram(bad, X), doctest::Contains("150 features"), Error);
}

TEST_CASE("capture: Σ of each site is XᵀX of that site's activation") {
  const Model& m = stories();
  CalibWindowsOptions o;
  o.nsamples = 4;
  o.seqlen = 32;
  const auto windows = draw_windows(fake_tokens(2000), o);
  Calibration cal(m, windows, 4, 32);
  auto st = cal.capture(m);
  REQUIRE(st.size() == 4);
  CHECK(st[Site::AttnIn].tokens == 128);
  CHECK(st[Site::AttnIn].sum.rows() == 64);
  CHECK(st[Site::FfnMid].sum.rows() == 172);
  // exactly symmetric (an in-place A = (A + Aᵀ)/2 would not be: it reads entries it already wrote)
  for (const auto& [site, s] : st) CHECK((s.sum - s.sum.transpose()).cwiseAbs().maxCoeff() == 0.0);
  // attn_in = RMSNorm(block input) with the block's gain
  Tensor xn;
  rmsnorm(embed(m, windows), m.blocks[0].attn_norm, m.cfg.norm_eps, xn);
  Eigen::MatrixXd want = xn.cmat().cast<double>().transpose() * xn.cmat().cast<double>();
  CHECK((st[Site::AttnIn].sum - want).cwiseAbs().maxCoeff() / want.cwiseAbs().maxCoeff() < 1e-6);
  // the mean Σ/tokens, as an f32 value (what the removed SiteStats::mean() held)
  const float mean35 = (float)(st[Site::AttnIn].sum(3, 5) / (double)st[Site::AttnIn].tokens);
  CHECK(mean35 == doctest::Approx(want(3, 5) / 128).epsilon(1e-5));
  // a subset of sites
  auto only = cal.capture(m, {Site::AttnOut});
  CHECK(only.size() == 1);
  CHECK(only.count(Site::AttnOut) == 1);
}

TEST_CASE("pipeline: unchanged weights keep both chains equal and reproduce the forward pass") {
  const Model& m = stories();
  CalibWindowsOptions o;
  o.nsamples = 3;
  o.seqlen = 40;
  o.seed = 9;
  const auto windows = draw_windows(fake_tokens(3000), o);
  Calibration cal(m, windows, 3, 40);
  for (int b = 0; b < cal.nblocks(); ++b) {
    CHECK(cal.block() == b);
    cal.capture(m);
    cal.advance(m);
    CHECK(std::memcmp(cal.inputs().f32(), cal.fp_inputs().f32(), (size_t)cal.tokens() * 64 * 4) == 0);
  }
  Tensor logits = head_forward(m, cal.inputs());
  Tensor want = forward(m, windows, 3, 40);
  CHECK(std::memcmp(logits.f32(), want.f32(), (size_t)want.numel() * 4) == 0);
  CHECK_THROWS_WITH_AS(cal.capture(m), doctest::Contains("all 5 blocks are done"), Error);
}

TEST_CASE("pipeline: a changed block changes the quantized-prefix chain only") {
  Model m = stories().clone();
  CalibWindowsOptions o;
  o.nsamples = 2;
  o.seqlen = 32;
  const auto windows = draw_windows(fake_tokens(1000), o);
  Calibration cal(m, windows, 2, 32);
  cal.capture(m);  // FP outputs of block 0 taken here
  Tensor fp_out = block_forward(m, 0, embed(m, windows), 2, 32);
  m.blocks[0].linear("down").weight.fill_(0.f);  // "quantize" block 0 badly
  cal.advance(m);
  CHECK(std::memcmp(cal.fp_inputs().f32(), fp_out.f32(), (size_t)fp_out.numel() * 4) == 0);
  CHECK(std::memcmp(cal.inputs().f32(), fp_out.f32(), (size_t)fp_out.numel() * 4) != 0);
  Tensor q_out = block_forward(m, 0, embed(m, windows), 2, 32);
  CHECK(std::memcmp(cal.inputs().f32(), q_out.f32(), (size_t)q_out.numel() * 4) == 0);
  CHECK(cal.memory_bytes() == 2 * 64 * 64 * 4);
}

TEST_CASE("pipeline: fp_chain=false gives the same quantized-prefix chain and Σ, without the FP chain") {
  Model m = stories().clone();
  CalibWindowsOptions o;
  o.nsamples = 2;
  o.seqlen = 32;
  o.seed = 5;
  const auto windows = draw_windows(fake_tokens(1000), o);
  Calibration with(m, windows, 2, 32), without(m, windows, 2, 32, /*fp_chain=*/false);
  CHECK(with.fp_chain());
  CHECK_FALSE(without.fp_chain());
  for (int b = 0; b < 2; ++b) {
    auto a = with.capture(m), c = without.capture(m);
    for (auto& [site, st] : a) CHECK(st.sum == c.at(site).sum);
    CHECK_FALSE(without.fp_outputs().defined());
    m.blocks[b].linear("up").weight.rows(0, 8).fill_(0.f);  // a change: the chains would now differ
    with.advance(m);
    without.advance(m);
    CHECK(std::memcmp(with.inputs().f32(), without.inputs().f32(), (size_t)with.tokens() * 64 * 4) == 0);
    CHECK_FALSE(without.fp_inputs().defined());
  }
  CHECK(without.memory_bytes() == 2 * 32 * 64 * 4);
  CHECK(with.memory_bytes() == 2 * 2 * 32 * 64 * 4);
}

TEST_CASE("capture_cross, true-sequential: X from the block's full-precision copy, X̃ from the partly quantized block") {
  Model m = stories().clone();
  CalibWindowsOptions o;
  o.nsamples = 2;
  o.seqlen = 32;
  const auto windows = draw_windows(fake_tokens(1000), o);
  Calibration cal(m, windows, 2, 32);
  const auto first = cal.capture_cross(m);  // block 0 still full precision: copied here
  // The first stage is "quantized" (badly), then o's site is captured again.
  m.blocks[0].linear("v").weight.fill_(0.01f);
  const auto later = cal.capture_cross(m, {Site::AttnOut});
  REQUIRE(later.count(Site::AttnOut) == 1);
  const CrossStats& a = first.at(Site::AttnOut);
  const CrossStats& b = later.at(Site::AttnOut);
  CHECK((b.fp - a.fp).cwiseAbs().maxCoeff() == 0.0);  // X: the full-precision block, bit for bit
  CHECK((b.q.sum - a.q.sum).cwiseAbs().maxCoeff() > 1e-3 * a.q.sum.cwiseAbs().maxCoeff());  // X̃ sees the new v
  // X̃ is what capture() gives with the current weights; G = Xᵀ X̃ from the two activations.
  const auto plain = cal.capture(m, {Site::AttnOut});
  CHECK((plain.at(Site::AttnOut).sum - b.q.sum).cwiseAbs().maxCoeff() == 0.0);
  const Tensor xq = cal.activations(m, Site::AttnOut, 0, 2, false);
  Model fp = stories().clone();  // the unchanged weights: the full-precision chain's block
  const Tensor xf = cal.activations(fp, Site::AttnOut, 0, 2, true);
  const Eigen::MatrixXd G = xf.cmat().cast<double>().transpose() * xq.cmat().cast<double>();
  CHECK((G - b.cross).cwiseAbs().maxCoeff() <= 1e-4 * G.cwiseAbs().maxCoeff());
  // The next block starts from a fresh copy.
  cal.advance(m);
  const auto next = cal.capture_cross(m, {Site::AttnIn});
  CHECK(next.at(Site::AttnIn).fp.rows() == m.cfg.dim);
}
