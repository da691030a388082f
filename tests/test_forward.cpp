// Forward pass: primitive ops on hand-checked cases, the whole model against llama2.c's
// golden logits, and invariances (batching, thread count, observers).
#include <doctest/doctest.h>
#include <omp.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "eval/eval.h"
#include "model/forward.h"
#include "formats/loader.h"

using namespace qf;

static const std::string kShared = QF_SHARED_DIR;

static nlohmann::json golden() {
  std::ifstream f(kShared + "/reference/golden/stories260K.json");
  REQUIRE(f.good());
  return nlohmann::json::parse(f);
}

static const Model& stories() {
  static Model m = load_model(resolve_model_files(kShared + "/models/stories260K"));
  return m;
}

TEST_CASE("rmsnorm matches the closed form") {
  Tensor x = Tensor::from_data({2, 4}, {1, 2, 3, 4, -2, 0, 0, 2});
  Tensor g = Tensor::from_data({4}, {1, 0.5f, 2, 1});
  Tensor out;
  rmsnorm(x, g, 1e-5f, out);
  const double r0 = 1.0 / std::sqrt((1 + 4 + 9 + 16) / 4.0 + 1e-5), r1 = 1.0 / std::sqrt(8 / 4.0 + 1e-5);
  const double want[8] = {1 * r0, 2 * 0.5 * r0, 3 * 2 * r0, 4 * r0, -2 * r1, 0, 0, 2 * r1};
  for (int i = 0; i < 8; ++i) CHECK(out.f32()[i] == doctest::Approx(want[i]).epsilon(1e-6));
}

TEST_CASE("rope rotates pairs by position times frequency, both layouts") {
  // one head of dim 4, T = 3: position p rotates pair i by p·θ^(−2i/4)
  std::vector<float> vals(12);
  for (int i = 0; i < 12; ++i) vals[i] = 0.1f * (float)(i + 1);
  for (bool inter : {true, false}) {
    Tensor x = Tensor::from_data({3, 4}, vals);
    rope(x, 1, 4, 3, 10000.f, inter);
    for (int p = 0; p < 3; ++p)
      for (int i = 0; i < 2; ++i) {
        const double ang = p * std::pow(10000.0, -2.0 * i / 4.0);
        const int a = inter ? 2 * i : i, b = inter ? 2 * i + 1 : i + 2;
        const double x0 = vals[p * 4 + a], x1 = vals[p * 4 + b];
        CHECK(x.get({p, a}) == doctest::Approx(x0 * std::cos(ang) - x1 * std::sin(ang)).epsilon(1e-5));
        CHECK(x.get({p, b}) == doctest::Approx(x0 * std::sin(ang) + x1 * std::cos(ang)).epsilon(1e-5));
      }
  }
}

TEST_CASE("attention equals a brute-force causal softmax, with grouped kv heads") {
  // T = 300 spans three query blocks of the blocked kernel
  const int B = 2, T = 300, H = 4, KVH = 2, hd = 3;
  std::vector<float> qv(B * T * H * hd), kv(B * T * KVH * hd), vv(B * T * KVH * hd);
  uint32_t s = 12345;
  auto rnd = [&] { s = s * 1664525u + 1013904223u; return (float)((s >> 8) & 0xffff) / 65536.f - 0.5f; };
  for (auto* v : {&qv, &kv, &vv})
    for (auto& e : *v) e = 2 * rnd();
  Tensor q = Tensor::from_data({B * T, H * hd}, qv), k = Tensor::from_data({B * T, KVH * hd}, kv),
         v = Tensor::from_data({B * T, KVH * hd}, vv), out;
  attention(q, k, v, B, T, H, KVH, hd, out);
  double maxerr = 0;
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h)
      for (int i = 0; i < T; ++i) {
        const int kh = h / (H / KVH);
        std::vector<double> w(i + 1);
        double mx = -1e30, sum = 0;
        for (int j = 0; j <= i; ++j) {
          double d = 0;
          for (int c = 0; c < hd; ++c) d += (double)qv[(b * T + i) * H * hd + h * hd + c] * kv[(b * T + j) * KVH * hd + kh * hd + c];
          w[j] = d / std::sqrt((double)hd);
          mx = std::max(mx, w[j]);
        }
        for (auto& e : w) { e = std::exp(e - mx); sum += e; }
        for (int c = 0; c < hd; ++c) {
          double o = 0;
          for (int j = 0; j <= i; ++j) o += w[j] / sum * vv[(b * T + j) * KVH * hd + kh * hd + c];
          maxerr = std::max(maxerr, std::abs(o - out.get({b * T + i, h * hd + c})));
        }
      }
  CHECK(maxerr < 1e-6);
}

TEST_CASE("forward pass reproduces llama2.c golden logits (max abs error <= 1e-4)") {
  const auto g = golden();
  std::vector<int32_t> ids = g["encodings"][0]["ids"].get<std::vector<int32_t>>();
  const auto& want = g["logits"];
  REQUIRE(want.size() == ids.size());
  const Model& m = stories();
  Tensor logits = forward(m, ids, 1, (int)ids.size());
  REQUIRE(logits.shape() == Shape{(int64_t)ids.size(), 512});
  double maxerr = 0;
  for (size_t t = 0; t < ids.size(); ++t)
    for (int j = 0; j < 512; ++j) maxerr = std::max(maxerr, std::abs((double)want[t][j].get<double>() - logits.get({(int64_t)t, j})));
  MESSAGE("max abs logit error vs golden: " << maxerr);
  CHECK(maxerr <= 1e-4);
}

TEST_CASE("batched windows equal separate forwards; thread count does not change a bit") {
  const Model& m = stories();
  const auto g = golden();
  std::vector<int32_t> a = g["encodings"][0]["ids"].get<std::vector<int32_t>>();
  std::vector<int32_t> b = g["encodings"][1]["ids"].get<std::vector<int32_t>>();
  a.resize(12);
  b.resize(12);
  std::vector<int32_t> ab = a;
  ab.insert(ab.end(), b.begin(), b.end());
  Tensor la = forward(m, a, 1, 12), lb = forward(m, b, 1, 12), lab = forward(m, ab, 2, 12);
  CHECK(std::memcmp(la.f32(), lab.f32(), 12 * 512 * 4) == 0);
  CHECK(std::memcmp(lb.f32(), lab.f32() + 12 * 512, 12 * 512 * 4) == 0);

  const int nt = omp_get_max_threads();
  omp_set_num_threads(1);
  Tensor l1 = forward(m, ab, 2, 12);
  omp_set_num_threads(std::max(nt, 2));
  Tensor l2 = forward(m, ab, 2, 12);
  omp_set_num_threads(nt);
  CHECK(std::memcmp(l1.f32(), l2.f32(), 24 * 512 * 4) == 0);
}

TEST_CASE("block observer sees each linear's input; block_forward composes to forward") {
  const Model& m = stories();
  const std::vector<int32_t> ids = {1, 403, 407, 261, 378, 432, 383, 286};
  Tensor x = embed(m, ids);
  std::vector<Site> seen;
  Tensor ffn_mid;
  Tensor x1 = block_forward(m, 0, x, 1, 8, [&](const SiteKey& k, const Tensor& t) {
    const Site s = k.site;
    CHECK(k.expert == -1);
    seen.push_back(s);
    if (s == Site::FfnMid) ffn_mid = t.clone();
    const int64_t want = s == Site::FfnMid ? m.cfg.hidden_dim : m.cfg.dim;
    CHECK(t.shape() == Shape{8, want});
  });
  CHECK(seen == std::vector<Site>{Site::AttnIn, Site::AttnOut, Site::FfnIn, Site::FfnMid});
  // The block output's FFN part must equal down(observed input): recompute it from the observation.
  for (int l = 1; l < m.cfg.n_layers; ++l) x1 = block_forward(m, l, x1, 1, 8);
  Tensor full = forward(m, ids, 1, 8);
  Tensor viaBlocks = head_forward(m, x1);
  CHECK(std::memcmp(full.f32(), viaBlocks.f32(), 8 * 512 * 4) == 0);
  REQUIRE(ffn_mid.defined());
}

TEST_CASE("changing a weight changes the logits; the clone is independent") {
  Model m = stories().clone();
  const std::vector<int32_t> ids = {1, 403, 407, 261};
  Tensor before = forward(m, ids, 1, 4);
  m.blocks[0].linear("wq").weight.select(0, 0).fill_(0.f);  // alias of q
  CHECK(m.blocks[0].linear("q").weight.get({0, 5}) == 0.f);
  CHECK(stories().blocks[0].linear("q").weight.get({0, 5}) != 0.f);
  Tensor after = forward(m, ids, 1, 4);
  CHECK(std::memcmp(before.f32(), after.f32(), 4 * 512 * 4) != 0);
  // position 0 attends only to itself: q changes cannot alter its output (softmax over one key)
  CHECK(std::memcmp(before.f32(), after.f32(), 512 * 4) == 0);
}

TEST_CASE("perplexity protocol: window count, scored tokens, bad options") {
  const Model& m = stories();
  std::vector<int32_t> toks(2000);
  for (size_t i = 0; i < toks.size(); ++i) toks[i] = (int32_t)(3 + (i * 7919) % 500);
  toks[0] = 1;
  PplOptions o;
  o.seqlen = 256;
  PplResult r = perplexity(m, toks, o);
  CHECK(r.windows == 7);
  CHECK(r.tokens_scored == 7 * 255);
  CHECK(r.ppl > 1.0);
  CHECK(std::abs(std::log(r.ppl) - r.nll) < 1e-12);
  CHECK(r.protocol.find("256-token windows") != std::string::npos);
  // batch size must not change the result
  o.batch = 3;
  PplResult r3 = perplexity(m, toks, o);
  o.batch = 1;
  PplResult r1 = perplexity(m, toks, o);
  CHECK(r3.nll == r1.nll);
  CHECK(r.nll == doctest::Approx(r1.nll).epsilon(1e-12));
  // brute force: mean NLL from full logits of window 2
  o = PplOptions{};
  o.seqlen = 256;
  o.max_windows = 1;
  std::vector<int32_t> w(toks.begin(), toks.begin() + 256);
  Tensor lg = forward(m, w, 1, 256);
  double nll = 0;
  for (int t = 0; t < 255; ++t) {
    double mx = -1e30, se = 0;
    for (int j = 0; j < 512; ++j) mx = std::max(mx, (double)lg.get({t, j}));
    for (int j = 0; j < 512; ++j) se += std::exp(lg.get({t, j}) - mx);
    nll += std::log(se) + mx - lg.get({t, w[t + 1]});
  }
  CHECK(perplexity(m, toks, o).nll == doctest::Approx(nll / 255).epsilon(1e-9));

  o.seqlen = 1;
  CHECK_THROWS_WITH_AS(perplexity(m, toks, o), doctest::Contains("too short"), Error);
  o.seqlen = 4096;
  CHECK_THROWS_WITH_AS(perplexity(m, toks, o), doctest::Contains("exceeds the model's context length 512"), Error);
  o.seqlen = 512;
  CHECK_THROWS_WITH_AS(perplexity(m, std::vector<int32_t>(toks.begin(), toks.begin() + 300), o),
                       doctest::Contains("fewer than one window"), Error);
  toks[5] = 9999;
  o.seqlen = 256;
  CHECK_THROWS_WITH_AS(perplexity(m, toks, o), doctest::Contains("token id 9999 at position 6"), Error);
  // Blocks are numbered from 1 in messages (index 5 of a 5-block model is block 6).
  CHECK_THROWS_WITH_AS(m.block(5), doctest::Contains("block 6 out of range (the model has 5 blocks, numbered from 1)"), Error);
  const Tensor x = embed(m, std::vector<int32_t>(toks.begin(), toks.begin() + 4));
  CHECK_THROWS_WITH_AS(block_forward(m, 5, x, 1, 4), doctest::Contains("block 6 out of range (model has 5 blocks, numbered from 1)"), Error);
}
